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

  it("refuses a duplicate name in a JSON object: file, line, column, key path", function()
    local function err(name, text)
      local t, e = data.load(file(name, text))
      assert.is_nil(t)
      return e
    end
    local p = dir .. "/"
    assert.equal(p .. 'd1.json:3:2: duplicate key "listen" at the top level (first at line 1)',
      err("d1.json", '{"listen": [{"address": ":1"}],\n "routes": [],\n "listen": []}'))
    assert.equal(p .. 'd2.json:3:43: duplicate key "prefix" in routes[2].match (first at line 3)',
      err("d2.json", '{"routes": [\n {"match": {"prefix": "/"}},\n'
        .. ' {"x": [1, {}], "match": {"prefix": "/a", "prefix": "/b"}}]}'))
    -- a list of maps: each map's keys are its own, a repeat within one is refused
    assert.equal(p .. 'd3.json:1:50: duplicate key "address" in listen[2] (first at line 1)',
      err("d3.json", '{"listen": [{"address": ":1"}, {"address": ":2", "address": ":3"}]}'))
    -- names compare decoded: "\u0061" is "a"; quotes, braces and escapes inside strings are text
    assert.equal(p .. 'd4.json:1:35: duplicate key "a" in u (first at line 1)',
      err("d4.json", '{"s": "{[\\",", "u": {"\\u0061": 1, "a": 2}}'))
    -- the same name in sibling objects, or at two depths, is fine
    local t = assert(data.load(file("d5.json",
      '{"a": {"a": 1}, "l": [{"k": 1}, {"k": 2}], "m": {"k": {"k": {}}}, "n": {"k": 3}}')))
    assert.equal(2, t.l[2].k)
  end)

  it("refuses a duplicate key in a YAML mapping: file, line, column, key path", function()
    local function err(name, text)
      local t, e = data.load(file(name, text))
      assert.is_nil(t)
      return e
    end
    local p = dir .. "/"
    assert.equal(p .. 'y1.yaml:3:27: duplicate key "prefix" in routes[1].match (first at line 3)',
      err("y1.yaml", "upstreams: {a: {targets: ['127.0.0.1:1']}}\nroutes:\n"
        .. "  - match: {prefix: /api, prefix: /admin}\n    upstream: a\n"))
    assert.equal(p .. 'y2.yaml:5:1: duplicate key "upstreams" at the top level (first at line 1)',
      err("y2.yaml", "upstreams:\n  a: {targets: ['127.0.0.1:1']}\nroutes:\n"
        .. "  - {match: {prefix: /}, upstream: a}\nupstreams:\n  b: {targets: ['127.0.0.1:1']}\n"))
    assert.equal(p .. 'y3.yaml:5:5: duplicate key "address" in listen[2] (first at line 4)',
      err("y3.yaml", "listen:\n  - address: ':1'\n  - weight: 1\n    address: ':2'\n    address: ':3'\n"))
    -- keys compare as loaded: 404 and 0x194 are one number, '404' is a string
    assert.equal(p .. 'y4.yaml:3:3: duplicate key "404" in error_pages (first at line 2)',
      err("y4.yaml", "error_pages:\n  404: a\n  0x194: b\n"))
    -- a merge key's keys may be overridden; sibling maps share key names
    local t = assert(data.load(file("y5.yaml",
      "b: &b {upstream: x, k: 1}\nr:\n  - <<: *b\n    upstream: y\n  - *b\n  - {'404': 1, 404: 2}\n")))
    assert.equal("y", t.r[1].upstream)
    assert.equal("x", t.r[2].upstream)
  end)

  it("a YAML error at an unquoted [ says to quote it (an IPv6 address)", function()
    local p = file("v6.yaml", "listen:\n  - address: [::1]:8080\n")
    local _, err = data.load(p)
    assert.equal(p .. ":2:14: invalid YAML: did not find expected node content; a value "
      .. 'starting with "[" is a flow sequence: quote it, as an IPv6 address must be '
      .. '(address: "[::1]:8080")', err)
    local t = assert(data.load(file("v6q.yaml", 'listen:\n  - address: "[::1]:8080"\n')))
    assert.equal("[::1]:8080", t.listen[1].address)
  end)

  it("an integer key takes a number with no fraction, however written", function()
    local L = '"listen": [{"address": ":0"}], "routes": [{"match": {"prefix": "/"}, "handler": "h"}]'
    local Y = "listen: [{address: ':0'}]\nroutes: [{match: {prefix: /}, handler: h}]\n"
    local t = assert(data.load(file("int.yaml", Y .. "workers: 2.0\n")))
    assert.equal(2, assert(config.check(t)).workers)
    local e = assert(data.load(file("int2.yaml", Y .. "workers: 1e0\n")))
    assert.equal(1, assert(config.check(e)).workers)
    local j = assert(data.load(file("int.json", "{" .. L .. ', "workers": 2.0}')))
    assert.equal(2, assert(config.check(j)).workers)
    local _, err = config.check(assert(data.load(file("frac.json",
      "{" .. L .. ', "workers": 2.5}'))))
    assert.equal("workers: expected an integer, got 2.5", err)
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

  it("reads YAML in C (engine/yaml_load.c) as lyaml does: values, merges, errors", function()
    -- ctest gives the specs the native library (LP_NATIVE_LIB): the C reader is the one used
    assert.equal("native", data.yaml_reader())
    local cases = {
      "a: 1\nb: [1, 2, {c: ~, d: x}]\ne: &x {f: 1, g: 2}\nh: *x\ni:\n  <<: *x\n  f: 3\n"
        .. "j: 0x1f\nk: 0o17\nl: 1.5e3\nm: .inf\nn: yes\no: '404'\n404: p\np: !!str 12\n"
        .. "q: \"\"\nr:\ns: -12\nt: 8:30\nu: [*x, *x]\nv: |\n  text\nw: 1e0\nx: +1\ny: .5\n"
        .. "z: 1.\nA: !!int '7'\nB: !!bool true\nC: !!null x\nD: 1e\nE: 0b1\nF: True\n",
      "base: &b {a: 1, b: 2}\nother: &o {b: 3, c: 4}\nm:\n  <<: [*b, *o]\n  a: 9\n",
      "m:\n  a: 9\n  <<: {a: 1, z: 2}\n  n: ~\n",
      "a: 1\na: 2\n", "a:\n  - 1\n  - ~\n", "x: *nope\n", "a: b: c\n", "", "# only\n",
      "- 1\n", "hello\n", "a: 1\n---\nb: 2\n", "error_pages:\n  404: a\n  0x194: b\n",
      "k: {a: ~}\n", "k: [{a: 1}, {b: [1, null]}]\n", "listen: [\n  {a: 1}\nworkers: 2\n",
      "a:\n\tb: 1\n", "a: 'x\n", "listen:\n  - address: [::1]:8080\n", "&a x: *b\n",
    }
    for i, text in ipairs(cases) do
      local p = file("same" .. i .. ".yaml", text)
      local t1, e1 = data.load(p)
      data.yaml_reader("lyaml")
      local t2, e2 = data.load(p)
      data.yaml_reader("native")
      assert.same(t2, t1, text)
      assert.equal(e2, e1, text)
    end
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
