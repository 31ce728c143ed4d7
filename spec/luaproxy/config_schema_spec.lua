-- The config schema (lua/luaproxy/config_schema.lua), its loader (luaproxy.config), the
-- README table generated from it (luaproxy.schema_doc) and GET /config's redaction
-- (luaproxy.admin).
local schema = require "luaproxy.schema"
local config_schema = require "luaproxy.config_schema"
local config = require "luaproxy.config"
local schema_doc = require "luaproxy.schema_doc"
local admin = require "luaproxy.admin"
local runtime = require "luaproxy.runtime"
local cjson = require "cjson"

local function base(extra)
  local c = {
    listen = { { address = "127.0.0.1:8080" } },
    upstreams = { app = { targets = { "127.0.0.1:9001" } } },
    routes = { { upstream = "app" } },
  }
  for k, v in pairs(extra or {}) do c[k] = v end
  return c
end

describe("luaproxy.config_schema", function()
  it("is a valid schema, every named field described", function()
    local ok, warnings = schema.check_schema(config_schema.schema, "config")
    assert.is_true(ok, warnings)
    assert.same({}, warnings)
  end)

  it("fills the defaults the engine reads", function()
    local c = assert(config.check(base()))
    assert.equal(60, c.timeouts.read)
    assert.equal(16384, c.limits.max_header_size)
    assert.equal("-", c.log.access)
    assert.equal("round_robin", c.upstreams.app.balance)
    assert.same({ address = "127.0.0.1:9001", weight = 1, https = false }, c.upstreams.app.targets[1])
    assert.equal(5, c.upstreams.app.health.passive.failures)
    assert.is_nil(c.upstreams.app.health.active)
    -- No default prefix: prefix, path and regex exclude each other, and a route without
    -- any matches every path (the engine reads it as the prefix "/").
    assert.is_nil(c.routes[1].match.prefix)
  end)

  it("names the key path", function()
    local cases = {
      { { routes = { { upstream = "ap" } } }, 'routes[1].upstream: no upstream named "ap"' },
      { { routes = { { match = { prefix = "/" } } } },
        "routes[1].upstream: required (or a handler or plugins that choose one)" },
      { { listen = {} }, "listen: at least one listener is required" },
      { { listen = { { address = "nohost" } } }, 'listen[1].address: "nohost" has no :port' },
      { { timeouts = { read = -1 } }, "timeouts.read: value -1 is below the minimum 0.001" },
      { { log = { access = true } }, 'log.access: expected a path, "-" (stdout), false or { syslog = "host:port" | "/dev/log", ... }' },
      { { upstreams = { app = { targets = { "https://a:1", "b:2" } } } },
        "upstreams.app.targets: https:// and plain targets cannot share an upstream" },
      { { upstreams = { app = { targets = { "a:1" }, hash_on = "header:" } } },
        'upstreams.app.hash_on: "header:": expected ip, path, header:NAME, cookie:NAME or query:NAME' },
      { { listen = { { address = ":1", tls = { cert = "c.pem" } } } },
        "listen[1].tls: cert and key go together" },
      { { listen = { { address = ":1", tls = { cert = "c", key = "k", verify_client = "optional" } } } },
        "listen[1].tls.verify_client: needs client_ca" },
      { { upstreams = 5 }, "upstreams: expected a map, got number" },
      { { log = { format = "$status", json = true } },
        "log.json: set format (text lines) or json (JSON lines), not both" },
      { { log = { json = {} } }, "log.json: expected at least one member" },
      { { log = { json = { status = 200 } } }, "log.json.status: expected a string, got number" },
      { { log = { json = { [""] = "$status" } } }, "log.json.: length 0 is below the minimum 1" },
      { { log = { json = "$status" } }, "log.json: expected a map, got string" },
      { { log = { json = { s = "a\0b" } } }, "log.json.s: a NUL byte cannot be logged from the config" },
      { { log = { access = { syslog = "nohost" } } }, 'log.access: syslog: "nohost" has no :port' },
      { { log = { access = { syslog = "/dev/log", facility = "local9" } } },
        "log.access: facility: local9 is not a syslog facility (user, daemon, local0-local7...)" },
      { { log = { access = { syslog = "/dev/log", severity = "loud" } } },
        "log.access: severity: loud is not a syslog severity (err, warning, notice, info...)" },
      { { log = { access = { syslog = "/dev/log", app_name = "a b" } } },
        "log.access: app_name: expected printable ASCII without spaces" },
      { { log = { access = { syslog = "/dev/log", port = 1 } } }, "log.access: unknown key port" },
      { { log = { error = false } }, "log.error: the error log cannot be turned off" },
      { { log = { error_format = "xml" } }, 'log.error_format: expected one of "text", "json", got "xml"' },
      { { log = { sample = 1.5 } }, "log.sample: value 1.5 is above the maximum 1" },
    }
    for _, case in ipairs(cases) do
      local ok, err = config.check(base(case[1]))
      assert.is_nil(ok)
      assert.equal(case[2], err)
    end
    assert.equal("(top): the file must return a table, got number", select(2, config.check(5)))
  end)

  it("takes log.json as a map of templates, true for the default members, false for off", function()
    local c = assert(config.check(base({ log = { json = { s = "$status", ua = "$http_user_agent" } } })))
    assert.same({ s = "$status", ua = "$http_user_agent" }, c.log.json)
    assert.is_nil(c.log.format)
    c = assert(config.check(base({ log = { json = true } })))
    assert.equal("$status", c.log.json.status)
    assert.equal("$time_iso8601", c.log.json.time)
    assert.equal("$http_user_agent", c.log.json.user_agent)
    c = assert(config.check(base({ log = { json = false, format = "$status" } })))
    assert.is_nil(c.log.json)
    assert.equal("$status", c.log.format)
  end)

  it("turns http:// and https:// targets into host:port", function()
    local c = assert(config.check(base({ upstreams = { app = { targets = {
      "https://a.example", { address = "https://[::1]:8443/", weight = 2 } } } } })))
    assert.same({ address = "a.example:443", weight = 1, https = true }, c.upstreams.app.targets[1])
    assert.same({ address = "[::1]:8443", weight = 2, https = true }, c.upstreams.app.targets[2])
    c = assert(config.check(base({ upstreams = { app = { targets = { "http://b" } } } })))
    assert.same({ address = "b:80", weight = 1, https = false }, c.upstreams.app.targets[1])
    local _, err = config.check(base({ upstreams = { app = { targets = { "https://a/x" } } } }))
    assert.equal('upstreams.app.targets[1].address: "https://a/x": expected scheme://host[:port] '
      .. "without a path", err)
  end)

  it("checks error_pages: status keys, one of file/body/false, content types by extension", function()
    local c = assert(config.check(base({
      error_pages = { [502] = { file = "p/50x.HTML" }, ["503"] = { body = "b", status = 200 },
                      [504] = { file = "x.json" }, [500] = { file = "x.page" } },
      routes = { { upstream = "app", error_pages = { [404] = false } } },
    })))
    assert.same({ file = "p/50x.HTML", content_type = "text/html; charset=utf-8" },
      c.error_pages[502])
    assert.same({ body = "b", status = 200, content_type = "text/plain; charset=utf-8" },
      c.error_pages[503])
    assert.equal("application/json", c.error_pages[504].content_type)
    assert.equal("text/html; charset=utf-8", c.error_pages[500].content_type)
    assert.same({ builtin = true }, c.routes[1].error_pages[404])
    local cases = {
      { { error_pages = { nope = { body = "x" } } },
        'error_pages.nope: expected an error status 400–599 as the key (`[502] = { ... }`), got "nope"' },
      { { error_pages = { [399] = { body = "x" } } },
        "error_pages.399: expected an error status 400–599 as the key (`[502] = { ... }`), got 399" },
      { { error_pages = { [502] = {} } },
        "error_pages.502: expected file, body, or false (the built-in answer)" },
      { { error_pages = { [502] = { body = "x", file = "y" } } },
        "error_pages.502: file, body and builtin are exclusive" },
      { { error_pages = { [502] = { body = "x", status = 600 } } },
        "error_pages.502.status: value 600 is above the maximum 599" },
      { { routes = { { upstream = "app", error_pages = { [502] = true } } } },
        "routes[1].error_pages.502: expected a record, got boolean" },
    }
    for _, case in ipairs(cases) do
      local ok, err = config.check(base(case[1]))
      assert.is_nil(ok)
      assert.equal(case[2], err)
    end
  end)

  it("accepts tls = true on an upstream and false as off", function()
    local c = assert(config.check(base({ upstreams = { app = { targets = { "a:1" }, tls = true } } })))
    assert.same({ verify = true, min_version = "TLSv1.2" }, c.upstreams.app.tls)
    c = assert(config.check(base({ upstreams = { app = { targets = { "a:1" }, tls = false } } })))
    assert.is_nil(c.upstreams.app.tls)
  end)
end)

describe("luaproxy.schema_doc", function()
  it("README's table is the schema's", function()
    local f = assert(io.open("README.md", "rb"))
    local text = f:read("*a")
    f:close()
    assert.equal(text, assert(schema_doc.splice(text, schema_doc.table())))
  end)

  it("notices a table that differs", function()
    local text = "x\n" .. schema_doc.BEGIN .. "\n" .. schema_doc.table() .. schema_doc.END .. "\n"
    assert.equal(text, schema_doc.splice(text, schema_doc.table()))
    local stale = text:gsub("| `timeouts.read` | 60 |", "| `timeouts.read` | 30 |")
    assert.are_not.equal(stale, text)
    assert.are_not.equal(stale, schema_doc.splice(stale, schema_doc.table()))
    assert.is_nil(schema_doc.splice("no markers", schema_doc.table()))
  end)
end)

describe("GET /config redaction", function()
  local dir
  local function write(name, text)
    local f = assert(io.open(dir .. "/" .. name, "wb"))
    f:write(text)
    f:close()
  end

  -- The worked example of docs/plugins.md.
  local function docs_api_key()
    local f = assert(io.open("docs/plugins.md", "rb"))
    local text = f:read("*a")
    f:close()
    for code in text:gmatch("```lua\n(.-)```") do
      if code:find("^%-%- plugins/api_key.lua") then return code end
    end
    error("no api_key example in docs/plugins.md")
  end

  setup(function()
    dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. dir))
    write("api_key.lua", docs_api_key())
    -- A secret whose name gives nothing away: only the schema knows.
    write("vault.lua", [[
return { name = "vault", priority = 1, request = function() end, schema = { fields = {
  upstream_header_value = { type = "string", secret = true, description = "d" },
  label = { type = "string", description = "d" },
} } }]])
  end)

  teardown(function() os.execute("rm -rf " .. dir) end)

  it("hides fields marked secret and keys named like one", function()
    local cfg = base({
      admin = { address = "127.0.0.1:9901" },
      routes = { { upstream = "app", plugins = {
        { name = "api_key", keys = { s3cr3t = "mobile-app" } },
        { name = "vault", upstream_header_value = "hunter2", label = "L" },
        { name = "headers", request = { set = { ["X-Upstream"] = "Bearer zzz" } },
          response = { set = { ["X-Frame-Options"] = "DENY" } } },
        { name = "router", rules = { { prefix = "/a", headers = { ["X-Who"] = "qq9" } } } },
      } } },
      listen = { { address = ":8443", tls = { cert = "c.pem", key = "k.pem" } } },
    })
    assert(config.check(cfg))
    local state, err = runtime.load(cfg, { plugin_path = dir .. "/?.lua;plugins/?.lua",
                                           script_path = dir .. "/?.lua" })
    assert.is_truthy(state, err)
    local json = admin.config_json("/etc/lp/c.lua", cfg)
    for _, secret in ipairs({ "s3cr3t", "hunter2", "Bearer zzz", "qq9", "k.pem" }) do
      assert.is_nil(json:find(secret, 1, true), secret .. " shown in " .. json)
    end
    local out = cjson.decode(json)
    assert.equal("/etc/lp/c.lua", out.path)
    local plugins = out.config.routes[1].plugins
    assert.equal("<redacted>", plugins[1].keys)
    assert.equal("<redacted>", plugins[2].upstream_header_value)
    assert.equal("L", plugins[2].label)
    assert.equal("<redacted>", plugins[3].request.set["X-Upstream"])
    assert.equal("DENY", plugins[3].response.set["X-Frame-Options"])
    assert.equal("c.pem", out.config.listen[1].tls.cert)
    assert.equal("127.0.0.1:9901", out.config.admin.address)
  end)

  it("redacts by key name, case-insensitively", function()
    for _, k in ipairs({ "password", "API_KEY", "keys", "Secret", "auth_token", "privateKey" }) do
      assert.is_true(admin.is_secret(k), k)
    end
    for _, k in ipairs({ "label", "upstream", "timeouts", "keepalive", "name" }) do
      assert.is_false(admin.is_secret(k), k)
    end
  end)
end)

describe("cache zones in the config", function()
  local function load(zones, zone)
    local cfg = base({ cache = { zones = zones },
      routes = { { upstream = "app", plugins = { { name = "cache", zone = zone } } } } })
    local c, err = config.check(cfg)
    if not c then return nil, err end
    local state, lerr = runtime.load(c, { plugin_path = "plugins/?.lua" })
    if not state then return nil, lerr end
    return c
  end

  it("refuses a cache route naming a zone the config does not declare", function()
    local c, err = load({ api = { memory = "32m" } }, "nope")
    assert.is_nil(c)
    assert.equal('routes[1].plugins[1](cache).zone: no zone "nope" in the config\'s '
      .. 'cache.zones (declared: "api")', err)
    c, err = load(nil, "api")
    assert.is_nil(c)
    assert.matches('zone: no zone "api" in the config\'s cache.zones %(none declared%)', err)
    assert.is_truthy(load({ api = { memory = "32m" } }, "api"))
  end)

  it("refuses a max_object_size larger than memory; the default is at most memory", function()
    local c, err = load({ api = { memory = "32m", max_object_size = "64m" } }, "api")
    assert.is_nil(c)
    assert.equal('cache.zones.api.max_object_size: max_object_size "64m" is larger than '
      .. 'memory "32m", which must hold the largest object (a fill is gathered in memory, '
      .. "also with a disk tier)", err)
    c, err = load({ api = { memory = "32m", max_object_size = "64m",
      disk = { path = "/tmp/x", size = "1g" } } }, "api")
    assert.is_nil(c)
    assert.matches("larger than memory", err)
    c = assert(load({ api = { memory = "32m", max_object_size = "32m" },
      small = { memory = "1m" }, big = { memory = "64m" } }, "api"))
    assert.equal(32 * 1048576, c.cache.zones.api.max_object_size)
    assert.equal(1048576, c.cache.zones.small.max_object_size)
    assert.equal(8 * 1048576, c.cache.zones.big.max_object_size)
  end)

  it("warns of a disk tier smaller than max_object_size (new-user trial)", function()
    local function warned(zones)
      local c = assert(load(zones, "api"))
      package.loaded["luaproxy.runtime"] = nil
      local state = assert(require("luaproxy.runtime").load(c, { plugin_path = "plugins/?.lua" }))
      local out = {}
      for _, w in ipairs(state.warnings) do
        if w:find("disk.size", 1, true) then out[#out + 1] = w end
      end
      return out
    end
    assert.same({ 'cache zone "api": disk.size "1m" is smaller than max_object_size "8m": a '
      .. "response larger than the disk tier, written to it, evicts every file (its own too); "
      .. "make max_object_size at most disk.size" },
      warned({ api = { memory = "32m", max_object_size = "8m", disk = { path = "/tmp/x", size = "1m" } } }))
    -- the default max_object_size (8m, or memory when smaller) counts
    assert.equal(1, #warned({ api = { memory = "32m", disk = { path = "/tmp/x", size = "200k" } } }))
    assert.same({}, warned({ api = { memory = "4m", max_object_size = "2m",
      disk = { path = "/tmp/x", size = "2m" } } }))
    assert.same({}, warned({ api = { memory = "1m", disk = { path = "/tmp/x", size = "2m" } } }))
  end)
end)
