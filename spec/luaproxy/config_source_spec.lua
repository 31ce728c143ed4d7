local cs = require "luaproxy.config_source"

local function tmpfile(text)
  local p = os.tmpname()
  local f = assert(io.open(p, "wb"))
  f:write(text)
  f:close()
  return p
end

local function boot(extra)
  local t = { listen = { { address = "127.0.0.1:0" } },
              config_source = { etcd = { endpoints = { "http://127.0.0.1:2379" } } } }
  for k, v in pairs(extra or {}) do t[k] = v end
  return t
end

describe("luaproxy.config_source", function()
  it("leaves a config without config_source.etcd alone", function()
    local t = { routes = {} }
    assert.equal(t, cs.merge("/x/p.lua", t, "/nonexistent"))
    assert.is_nil(cs.merge("/x/p.lua", nil))
  end)

  it("names the last good copy next to the bootstrap, or state_file", function()
    assert.equal("/etc/lp/p.lua.etcd.json", cs.state_path("/etc/lp/p.lua", {}))
    assert.equal("/etc/lp/s.json", cs.state_path("/etc/lp/p.lua", { state_file = "s.json" }))
    assert.equal("/var/s.json", cs.state_path("/etc/lp/p.lua", { state_file = "/var/s.json" }))
  end)

  it("serves the bootstrap alone, with no routes, before any document", function()
    local t = cs.merge("/x/p.lua", boot(), "/nonexistent/doc.json")
    assert.same({}, t.routes)
  end)

  it("adds the document's keys the bootstrap does not set", function()
    local doc = tmpfile('{"revision":7,"config":{"listen":[{"address":"0.0.0.0:80"}],'
      .. '"routes":[{"match":{"prefix":"/"},"upstream":"u"}],"upstreams":{"u":{"targets":["h:1"]}}}}')
    local t = assert(cs.merge("/x/p.lua", boot(), doc))
    os.remove(doc)
    assert.equal("127.0.0.1:0", t.listen[1].address) -- the bootstrap's own
    assert.equal("u", t.routes[1].upstream)
    assert.same({ "h:1" }, t.upstreams.u.targets)
  end)

  it("refuses a document that is not one, or sets config_source", function()
    local bad = tmpfile("{not json")
    local t, err = cs.merge("/x/p.lua", boot(), bad)
    os.remove(bad)
    assert.is_nil(t)
    assert.matches("not a config document", err)
    local cs_doc = tmpfile('{"revision":3,"config":{"config_source":{}}}')
    t, err = cs.merge("/x/p.lua", boot(), cs_doc)
    os.remove(cs_doc)
    assert.is_nil(t)
    assert.matches("etcd revision 3: config_source may only be set in the bootstrap", err)
  end)

  it("names the etcd key in errors about the document's keys, not the bootstrap", function()
    local doc = tmpfile('{"revision":9,"key":"/lp/config","config":{"routes":[],'
      .. '"upstreams":{}}}')
    assert(cs.merge("/x/p.lua", boot(), doc))
    os.remove(doc)
    assert.equal('etcd:/lp/config (revision 9): routes[1].upstream: no upstream named "x"',
                 cs.locate("/x/p.lua", '/x/p.lua: routes[1].upstream: no upstream named "x"'))
    assert.equal("etcd:/lp/config (revision 9): upstreams.u: bad",
                 cs.locate("/x/p.lua", "/x/p.lua: upstreams.u: bad"))
    -- the bootstrap's own keys stay the bootstrap's
    assert.equal("/x/p.lua: listen[1].address: bad",
                 cs.locate("/x/p.lua", "/x/p.lua: listen[1].address: bad"))
  end)

  it("serves plugin sources from the document, named by their etcd key", function()
    local doc = tmpfile('{"revision":4,"key":"/lp/config","plugin_prefix":"/lp/plugins/",'
      .. '"plugins":{"hello":"return {}"},"config":{"routes":[]}}')
    local bootstrap = boot()
    assert(cs.merge("/x/p.lua", bootstrap, doc))
    local src, chunk = cs.plugin("hello")
    assert.equal("return {}", src)
    assert.equal("@etcd:/lp/plugins/hello", chunk)
    assert.is_nil(cs.plugin("other"))
    -- A VM that did not merge (a worker's) reads the same document file.
    cs.plugins = nil
    src, chunk = cs.plugin("hello", bootstrap, { config_path = "/x/p.lua", source_doc = doc })
    os.remove(doc)
    assert.equal("return {}", src)
    assert.equal("@etcd:/lp/plugins/hello", chunk)
    cs.plugins = nil
    assert.is_nil(cs.plugin("hello", { routes = {} }, { config_path = "/x/p.lua" }))
  end)

  it("encodes a file for push, refusing functions and bootstraps", function()
    local ok = tmpfile('return { routes = { { match = { prefix = "/" }, upstream = "u" } } }')
    local s = assert(cs.encode_file(ok))
    os.remove(ok)
    assert.equal("u", require("cjson").decode(s).routes[1].upstream)
    local fn = tmpfile("return { routes = {}, x = function() end }")
    local r, err = cs.encode_file(fn)
    os.remove(fn)
    assert.is_nil(r)
    assert.matches("functions", err)
    local b = tmpfile("return { config_source = { etcd = {} } }")
    r, err = cs.encode_file(b)
    os.remove(b)
    assert.is_nil(r)
    assert.matches("bootstrap", err)
  end)
end)
