local T = require "proxy.test"
local transform = require "transform"
local json = require "cjson"

describe("transform plugin", function()
  before_each(function() T.reset() end)

  it("removes, renames, replaces and adds request headers, in that order", function()
    local res = T.run(transform, { request = { headers = {
      remove = { "X-Gone" },
      rename = { ["X-Old"] = "X-New" },
      replace = { ["X-Keep"] = "r-$client_ip", ["X-Absent"] = "never" },
      add = { ["X-Keep"] = "not-added", ["X-User-Echo"] = "$header_x_user|$consumer_id" },
    } } }, {
      client_ip = "10.1.2.3", ctx = { consumer = { id = "c-42" } },
      headers = { ["X-Gone"] = "1", ["X-Old"] = { "a", "b" }, ["X-Keep"] = "k", ["X-User"] = "ann" },
    })
    local h = res.request_headers
    assert.is_nil(h["x-gone"])
    assert.is_nil(h["x-old"])
    assert.same({ "a", "b" }, h["x-new"])
    assert.equal("r-10.1.2.3", h["x-keep"])
    assert.is_nil(h["x-absent"])
    assert.equal("ann|c-42", h["x-user-echo"])
  end)

  it("changes response headers", function()
    local res = T.run(transform, { response = { headers = {
      remove = { "Server" }, rename = { ["X-Internal"] = "X-Public" },
      replace = { ["Cache-Control"] = "no-store" }, add = { ["X-Via"] = "$host" },
    } } }, { headers = { Host = "example.com" } }, { headers = {
      Server = "x", ["X-Internal"] = "1", ["Cache-Control"] = "max-age=60" } })
    assert.is_nil(res.headers["server"])
    assert.equal("1", res.headers["x-public"])
    assert.equal("no-store", res.headers["cache-control"])
    assert.equal("example.com", res.headers["x-via"])
  end)

  it("changes query arguments, keeping the others as sent", function()
    local res = T.run(transform, { request = { query = {
      remove = { "debug" }, rename = { old = "new" }, replace = { page = "1" },
      add = { src = "$client_ip", page = "9" },
    } } }, { uri = "/p?a=%2Fx&debug=1&old=v&page=5&debug", client_ip = "1.2.3.4" })
    assert.equal("/p?a=%2Fx&new=v&page=1&src=1.2.3.4", res.uri)
  end)

  it("leaves the URI alone when nothing changes", function()
    local res = T.run(transform, { request = { query = { remove = { "zz" } } } }, { uri = "/p?a=1" })
    assert.equal("/p?a=1", res.uri)
  end)

  local function post(body, ct)
    return { method = "POST", uri = "/j",
      headers = { ["Content-Type"] = ct or "application/json", ["Content-Length"] = tostring(#body) },
      body = body, client_ip = "9.9.9.9", ctx = { consumer = { id = 7 } } }
  end

  it("sets, removes and renames request JSON fields by dotted paths, nested", function()
    local res = T.run(transform, { request = { json = {
      remove = { "secret", "items.1", "a.b.gone" },
      rename = { ["a.b.old"] = "a.moved.here" },
      set = { ["meta.by"] = "$client_ip", ["meta.consumer"] = "$consumer_id", ["n"] = 5,
        ["flag"] = true, ["obj"] = { x = 1 }, ["items.0.id"] = "first" },
    } } }, post('{"secret":"s","items":[{"id":1},{"id":2}],"a":{"b":{"old":1,"gone":2}}}'))
    local got = json.decode(res.request_body)
    assert.is_nil(got.secret)
    assert.same({ { id = "first" } }, got.items)
    assert.same({ b = {}, moved = { here = 1 } }, got.a)
    assert.same({ by = "9.9.9.9", consumer = "7" }, got.meta)
    assert.equal(5, got.n)
    assert.is_true(got.flag)
    assert.same({ x = 1 }, got.obj)
  end)

  it("never turns an array into an object: a named field of an array matches nothing", function()
    local conf = { request = { json = { set = { ["meta.by"] = "$client_ip", ["list.x"] = 1 },
                                        remove = { "list.y" } } } }
    local function sent(body) return T.run(transform, conf, post(body)).request_body end
    assert.same({ { password = 1, a = 2 } }, json.decode(sent('[{"password":1,"a":2}]')))
    assert.equal("[]", sent("[]"):gsub("%s", ""))
    local got = json.decode(sent('{"meta":[1,2],"list":[3]}'))
    assert.same({ 1, 2 }, got.meta)
    assert.same({ 3 }, got.list)
  end)

  it("passes malformed JSON, other types and oversized bodies unchanged (logged)", function()
    local conf = { max_body = 20, request = { json = { set = { x = 1 } } } }
    local res = T.run(transform, conf, post('{"broken":'))
    assert.equal('{"broken":', res.request_body)
    assert.matches("passed unchanged", res.logs[1].message)
    res = T.run(transform, conf, post('{"a":1}', "text/plain"))
    assert.equal('{"a":1}', res.request_body)
    local big = '{"a":"' .. string.rep("x", 30) .. '"}'
    res = T.run(transform, conf, post(big))
    assert.equal(big, res.request_body)
    assert.matches("over max_body", res.logs[1].message)
  end)

  it("answers 413 for an oversized request body with on_oversize = reject", function()
    local res = T.run(transform, { max_body = 4, on_oversize = "reject",
      request = { json = { set = { x = 1 } } } }, post('{"a":12345}'))
    assert.equal(413, res.status)
    assert.is_true(res.responded)
  end)

  it("changes response JSON across chunks, once at the end", function()
    local res = T.run(transform, { response = { json = { remove = { "internal" },
      set = { ["wrapped.by"] = "proxy" } } } }, {},
      { headers = { ["Content-Type"] = "application/vnd.api+json; charset=utf-8" },
        body = '{"internal":1,"data":[1,2,3]}', chunk_size = 5 })
    assert.same({ data = { 1, 2, 3 }, wrapped = { by = "proxy" } }, json.decode(res.body))
  end)

  it("passes an oversized response body through whole, in order", function()
    local body = '{"a":"' .. string.rep("y", 100) .. '"}'
    local res = T.run(transform, { max_body = 50, response = { json = { set = { b = 1 } } } }, {},
      { headers = { ["Content-Type"] = "application/json" }, body = body, chunk_size = 16 })
    assert.equal(body, res.body)
  end)

  it("passes a malformed response body unchanged", function()
    local res = T.run(transform, { response = { json = { set = { b = 1 } } } }, {},
      { headers = { ["Content-Type"] = "application/json" }, body = "[1,2", chunk_size = 2 })
    assert.equal("[1,2", res.body)
  end)

  it("refuses empty path segments", function()
    assert.has_error(function() T.conf(transform, { request = { json = { set = { ["a..b"] = 1 } } } }) end)
  end)
end)

describe("transform JSON encoding", function()
  local function run(body)
    local res = T.run(transform, { request = { json = { set = { z = 1 } } } }, {
      method = "POST", headers = { ["Content-Type"] = "application/json" }, body = body })
    return res.request_body
  end

  it("keeps integers up to 2^53 whole and other numbers exact", function()
    local out = run('{"id":1234567890123456,"f":0.1,"big":1e300,"neg":-42,"third":0.3333333333333333}')
    local d = require("cjson").decode(out)
    assert.truthy(out:find('"id":1234567890123456', 1, true))
    assert.truthy(out:find('"f":0.1', 1, true))
    assert.truthy(out:find('"neg":-42', 1, true))
    assert.equal(1e300, d.big)
    assert.equal(0.3333333333333333, d.third)
  end)

  it("writes empty arrays as [] when the document had only empty arrays", function()
    assert.truthy(run('{"list":[],"n":null}'):find('"list":[]', 1, true))
    assert.truthy(run('{"o":{}}'):find('"o":{}', 1, true))
    assert.truthy(run('{"s":"a,\\"b\\"\\n"}'):find('"s":"a,\\"b\\"\\n"', 1, true))
  end)
end)

describe("docs/plugins/transform.md", function()
  it("has a config example the schema accepts, doing what the page says", function()
    local f = assert(io.open("docs/plugins/transform.md", "rb"))
    local code = f:read("*a"):match("```lua\n(.-)```")
    f:close()
    local cfg = assert(loadstring("return {" .. code .. "}", "=docs/plugins/transform.md"))()
    local entry = cfg.plugins[1]
    entry.name = nil
    local res = T.run(transform, entry, {
      method = "POST", uri = "/x?debug=1&q=a", client_ip = "10.0.0.1",
      headers = { ["Content-Type"] = "application/json", ["X-Api-Version"] = "2",
                  ["X-Source"] = "web" },
      body = '{"password":"p","items":[1,2],"user":{"name":"ann"}}',
    }, { headers = { ["Content-Type"] = "application/json", Server = "x" },
         body = '{"internal":true,"ok":1}' })
    assert.equal("/x?query=a&src=web", res.uri)
    assert.equal("2", res.request_headers["accept-version"])
    assert.same({ items = { 2 }, user = { login = "ann" },
      meta = { by = "10.0.0.1", version = 2, tags = { "a" } } },
      require("cjson").decode(res.request_body))
    assert.same({ ok = 1, links = { self = "/x?query=a&src=web" } }, require("cjson").decode(res.body))
    assert.is_nil(res.headers["server"])
    assert.equal("luaproxy", res.headers["x-gateway"])
  end)
end)

describe("transform phases", function()
  it("leaves out the phases its config has no rules for (skip_phases)", function()
    local c = T.conf(transform, { request = { headers = { add = { ["X-A"] = "1" } } } })
    assert.same({ request = false, response = true, response_body = true }, c.skip_phases)
    c = T.conf(transform, { response = { json = { set = { a = 1 } } } })
    assert.same({ request = true, response = false, response_body = false }, c.skip_phases)
  end)
  it("uses its own encoder for a set number cjson would round", function()
    local res = T.run(transform, { request = { json = { set = { id = 1234567890123456 } } } }, {
      method = "POST", headers = { ["Content-Type"] = "application/json" }, body = '{"a":1}' })
    assert.truthy(res.request_body:find('"id":1234567890123456', 1, true))
  end)
end)
