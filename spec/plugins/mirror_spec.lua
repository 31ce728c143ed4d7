local T = require "proxy.test"
local mirror = require "mirror"

describe("mirror plugin", function()
  before_each(function() T.reset() end)

  local function sent() return T.metric("mirror_requests_total", { outcome = "sent" }) end
  local function drops(reason) return T.metric("mirror_dropped_total", { reason = reason }) end

  it("sends method, URI, headers and body to the URL, and adds configured headers", function()
    T.http_mock("^http://shadow:9000/", { status = 500, body = "ignored" })
    local res = T.run(mirror, { url = "http://shadow:9000/", headers = { ["X-Mirrored-By"] = "lp" } }, {
      method = "POST", uri = "/api/x?a=1", client_ip = "10.0.0.9",
      headers = { Host = "example.com", ["Content-Length"] = "5", ["X-User"] = "ann",
                  Connection = "keep-alive" },
      body = "hello",
    }, { status = 201, body = "main" })
    assert.equal(201, res.status)
    assert.equal("main", res.body)
    assert.equal(1, #T.http_requests)
    local m = T.http_requests[1]
    assert.equal("POST", m.method)
    assert.equal("http://shadow:9000/api/x?a=1", m.url)
    assert.equal("hello", m.body)
    assert.equal("ann", m.headers["x-user"])
    assert.equal("lp", m.headers["x-mirrored-by"])
    assert.equal("example.com", m.headers["host"])
    assert.equal("10.0.0.9", m.headers["x-forwarded-for"])
    assert.is_nil(m.headers["connection"])
    assert.equal(1, sent())
    assert.equal(0, mirror.in_flight())
  end)

  it("rewrites Host to the target with host = target", function()
    T.http_mock("^http://shadow:9000/", { status = 200 })
    T.run(mirror, { url = "http://shadow:9000", host = "target" },
      { headers = { Host = "example.com" } })
    assert.is_nil(T.http_requests[1].headers["host"]) -- proxy.http sets it from the URL
  end)

  it("picks targets of an upstream that are up, round robin", function()
    T.upstream_targets("shadow", { { address = "127.0.0.1:1", state = "up" },
      { address = "127.0.0.1:2", state = "down" }, { address = "127.0.0.1:3", state = "up" } })
    T.http_mock("^http://127%.0%.0%.1", { status = 200 })
    for _ = 1, 4 do T.run(mirror, { upstream = "shadow" }, { uri = "/p" }) end
    local got = {}
    for i, r in ipairs(T.http_requests) do got[i] = r.url end
    assert.same({ "http://127.0.0.1:1/p", "http://127.0.0.1:3/p", "http://127.0.0.1:1/p",
      "http://127.0.0.1:3/p" }, got)
  end)

  it("mirrors nothing at 0 percent, and follows a predicate", function()
    T.http_mock("^http://s/", { status = 200 })
    T.run(mirror, { url = "http://s", percentage = 0 }, {})
    assert.equal(0, #T.http_requests)
    local pred = function(req) return req:header("x-mirror") == "yes" end
    T.run(mirror, { url = "http://s", predicate = pred }, { headers = { ["X-Mirror"] = "no" } })
    assert.equal(0, #T.http_requests)
    T.run(mirror, { url = "http://s", predicate = pred }, { headers = { ["X-Mirror"] = "yes" } })
    assert.equal(1, #T.http_requests)
  end)

  it("drops bodies over max_body, declared or streamed, and counts them", function()
    T.http_mock("^http://s/", { status = 200 })
    T.run(mirror, { url = "http://s", max_body = 4 },
      { method = "POST", headers = { ["Content-Length"] = "5" }, body = "12345" })
    T.run(mirror, { url = "http://s", max_body = 4 },
      { method = "POST", headers = { ["Transfer-Encoding"] = "chunked" }, body = "12345" })
    assert.equal(0, #T.http_requests)
    assert.equal(2, drops("too_large"))
  end)

  it("drops a body the client did not finish", function()
    T.run(mirror, { url = "http://s" }, { method = "POST",
      headers = { ["Content-Length"] = "5" }, body = "12345", body_incomplete = true })
    assert.equal(0, #T.http_requests)
    assert.equal(1, drops("incomplete"))
  end)

  it("counts failures and timeouts, never failing the main request", function()
    local res = T.run(mirror, { url = "http://nomock" }, {}, { status = 200, body = "ok" })
    assert.equal(200, res.status)
    assert.equal(1, T.metric("mirror_requests_total", { outcome = "failed" }))
    T.http_mock("^http://slow/", { status = 200, delay = 5 })
    res = T.run(mirror, { url = "http://slow", timeout = 0.5 }, {}, { status = 200, body = "ok" })
    assert.equal("ok", res.body)
    assert.equal(1, T.metric("mirror_requests_total", { outcome = "timeout" }))
    assert.equal(0, mirror.in_flight())
  end)

  it("drops over max_concurrent rather than queueing", function()
    T.http_mock("^http://slow/", { status = 200, delay = 0.5 })
    local c = T.conf(mirror, { url = "http://slow", max_concurrent = 1 })
    local r1, r2 = T.request({}), T.request({})
    T.phase(mirror, "request", r1, c)
    T.phase(mirror, "request", r2, c)
    r1:set_phase("log")
    r2:set_phase("log")
    -- Both log phases before the first mirror's thread runs (the double runs spawned
    -- threads when the call ends): the second finds the first in flight.
    T.call(function()
      mirror.log(r1, c)
      assert.equal(1, mirror.in_flight())
      mirror.log(r2, c)
    end)
    assert.equal(1, drops("busy"))
    assert.equal(0, mirror.in_flight())
    assert.equal(1, sent())
    assert.equal(1, #T.http_requests)
  end)

  it("refuses a config with both or neither of upstream and url", function()
    assert.has_error(function() T.conf(mirror, {}) end)
    assert.has_error(function() T.conf(mirror, { url = "http://a", upstream = "x" }) end)
    assert.has_error(function() T.conf(mirror, { url = "ftp://a" }) end)
  end)
end)

describe("docs/plugins/mirror.md", function()
  it("has a config example the schema accepts", function()
    local f = assert(io.open("docs/plugins/mirror.md", "rb"))
    local code = f:read("*a"):match("```lua\n(.-)```")
    f:close()
    local cfg = assert(loadstring("return {" .. code .. "}", "=docs/plugins/mirror.md"))()
    local entry = cfg.routes[1].plugins[1]
    entry.name = nil
    local c = T.conf(mirror, entry)
    assert.equal("shadow", c.upstream)
    assert.equal(10, c.percentage)
  end)
end)
