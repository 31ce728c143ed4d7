local data = require "luaproxy.config_data"
local config = require "luaproxy.config"

local dir = os.tmpname()
os.remove(dir)
os.execute("mkdir -p '" .. dir .. "'")

local function file(name, text)
  local p = dir .. "/" .. name
  local f = assert(io.open(p, "wb"))
  f:write(text)
  f:close()
  return p
end

local LUA_EQUIVALENT = {
  workers = 2,
  listen = { { address = "127.0.0.1:8080" } },
  upstreams = { app = { targets = { "127.0.0.1:9001", { address = "127.0.0.1:9002", weight = 2 } } } },
  routes = {
    { match = { prefix = "/api/", host = "*.example.com" }, upstream = "app", strip_prefix = true },
    { match = { prefix = "/" }, handler = "myscript" },
  },
}

local JSON = [[
{
  "workers": 2,
  "listen": [ { "address": "127.0.0.1:8080" } ],
  "upstreams": { "app": { "targets": [ "127.0.0.1:9001", { "address": "127.0.0.1:9002", "weight": 2 } ] } },
  "routes": [
    { "match": { "prefix": "/api/", "host": "*.example.com" }, "upstream": "app", "strip_prefix": true },
    { "match": { "prefix": "/" }, "handler": "myscript", "plugins": null }
  ]
}
]]

local YAML = [[
# the same config in YAML
workers: 2
listen:
  - address: "127.0.0.1:8080"
upstreams:
  app:
    targets:
      - "127.0.0.1:9001"
      - address: "127.0.0.1:9002"
        weight: 2
routes:
  - match: { prefix: /api/, host: "*.example.com" }
    upstream: app
    strip_prefix: true
  - match:
      prefix: /
    handler: myscript
    plugins: ~
]]

describe("luaproxy.config_data", function()
  lazy_teardown(function() os.execute("rm -rf '" .. dir .. "'") end)

  it("chooses the format by extension, case-insensitively", function()
    assert.equal("json", data.format("/etc/x/proxy.json"))
    assert.equal("json", data.format("proxy.JSON"))
    assert.equal("yaml", data.format("proxy.yaml"))
    assert.equal("yaml", data.format("proxy.yml"))
    assert.is_nil(data.format("proxy.lua"))
    assert.is_nil(data.format("json"))
    assert.is_nil(data.format("proxy.json.lua"))
  end)

  it("decodes JSON and YAML into the table a Lua config returns, nulls as absent keys", function()
    local want = assert(config.check(LUA_EQUIVALENT))
    local j = assert(data.load(file("c.json", JSON)))
    local y = assert(data.load(file("c.yaml", YAML)))
    assert.same(LUA_EQUIVALENT, j)
    assert.same(LUA_EQUIVALENT, y)
    assert.same(want, assert(config.check(j)))
    assert.same(want, assert(config.check(y)))
  end)

  it("reads unquoted YAML scalars by the YAML 1.2 core schema", function()
    local t = assert(data.load(file("core.yaml", table.concat({
      "a: yes", "b: off", "c: 8:30", "d: true", "e: FALSE", "f: 12", "g: 0x1f", "h: 0o17",
      "i: 1.5", "j: 1e3", "k: ~", "l: null", "m: 1_000", "n: '12'", "o: 0b11", "p: -3", "",
    }, "\n"))))
    assert.same({ a = "yes", b = "off", c = "8:30", d = true, e = false, f = 12, g = 31,
                  h = 15, i = 1.5, j = 1000, m = "1_000", n = "12", o = "0b11", p = -3 }, t)
  end)

  it("YAML anchors and aliases share a block", function()
    local t = assert(data.load(file("anchors.yaml",
      "base: &b { upstream: app }\nroutes:\n  - *b\n  - *b\n")))
    assert.equal("app", t.routes[1].upstream)
    assert.equal("app", t.routes[2].upstream)
  end)

  it("skips a UTF-8 byte order mark", function()
    local t = assert(data.load(file("bom.json", "\239\187\191{\"workers\": 3}")))
    assert.equal(3, t.workers)
  end)

  it("names the file, line and column of a JSON syntax error", function()
    local p = file("bad.json", '{\n  "workers": 1\n  "routes": []\n}\n')
    local t, err = data.load(p)
    assert.is_nil(t)
    assert.matches("^" .. p:gsub("%p", "%%%0") .. ":3:3: invalid JSON: ", err)
  end)

  it("names the file, line and column of a YAML syntax error", function()
    local p = file("bad.yaml", "workers: 1\nroutes: [\n  {a: 1}\nlisten: 2\n")
    local t, err = data.load(p)
    assert.is_nil(t)
    assert.matches(p:gsub("%p", "%%%0") .. ":%d+:%d+: invalid YAML: ", err)
  end)

  it("refuses what is not one mapping", function()
    local _, e0 = data.load(file("seq.yaml", "- 1\n- 2\n"))
    assert.matches("must hold a YAML mapping, got a sequence", e0, 1, true)
    local _, e1 = data.load(file("list.json", "[1, 2]"))
    assert.matches("must hold a JSON object, got an array", e1, 1, true)
    local _, e2 = data.load(file("null.json", "null"))
    assert.matches("must hold a JSON object, got null", e2, 1, true)
    local _, e3 = data.load(file("two.yaml", "a: 1\n---\nb: 2\n"))
    assert.matches("2 YAML documents", e3, 1, true)
    local _, e4 = data.load(file("empty.yaml", ""))
    assert.matches("no YAML document", e4, 1, true)
    local _, e5 = data.load(file("scalar.yaml", "hello\n"))
    assert.matches("must hold a YAML mapping, got string", e5, 1, true)
    local _, e6 = data.load(file("deep.json", string.rep("[", 500) .. string.rep("]", 500)))
    assert.matches("invalid JSON", e6, 1, true)
  end)

  it("refuses a null in a list, naming the key path", function()
    local _, err = data.load(file("n.json", '{"routes": [{"match": {"prefix": "/"}}, null]}'))
    assert.matches("n.json: routes[2]: null is not allowed in a list", err, 1, true)
    local _, err2 = data.load(file("n.yaml", "listen:\n  - address: ':1'\n  - ~\n"))
    assert.matches("n.yaml: listen[2]: null is not allowed in a list", err2, 1, true)
  end)

  it("says when the file cannot be read", function()
    local _, err = data.load(dir .. "/missing.json")
    assert.matches("cannot open .*missing.json", err)
  end)

  it("schema errors in a data config read as a Lua config's", function()
    local t = assert(data.load(file("s.json",
      '{"listen": [{"address": ":0"}], "routes": [{"upstream": "nope"}]}')))
    local ok, err = config.check(t)
    assert.is_nil(ok)
    assert.equal('routes[1].upstream: no upstream named "nope"', err)
  end)

  it("loader returns a chunk for the engine, like loadfile", function()
    local chunk = assert(data.loader(file("c2.json", JSON)))
    assert.equal(2, chunk().workers)
    local none, err = data.loader(file("c3.json", "{"))
    assert.is_nil(none)
    assert.matches("invalid JSON", err, 1, true)
  end)

  it("adds the alternatives to LuaJIT's constant-limit error, and only to it", function()
    local msg = "/etc/big.lua:100007: main function has more than 65536 constants"
    local hint = data.limit_hint(msg)
    assert.matches(msg, hint, 1, true)
    assert.matches("JSON or YAML", hint, 1, true)
    assert.matches("build the table in a loop", hint, 1, true)
    assert.equal("x.lua:1: unexpected symbol", data.limit_hint("x.lua:1: unexpected symbol"))
  end)

  it("a literal table over the limit fails to load in LuaJIT, and the loop form does not", function()
    local parts = { "return { routes = {" }
    for i = 1, 70000 do parts[#parts + 1] = string.format('{ prefix = "/r%d/" },', i) end
    parts[#parts + 1] = "} }"
    local f, err = loadstring(table.concat(parts, "\n"), "=big")
    assert.is_nil(f)
    assert.matches("has more than 65536 constants", err, 1, true)
    assert.matches("JSON or YAML", data.limit_hint(err), 1, true)
    local loop = assert(loadstring([[local r = {}
      for i = 1, 70000 do r[i] = { prefix = "/r" .. i .. "/" } end
      return { routes = r }]]))
    assert.equal(70000, #loop().routes)
  end)
end)
