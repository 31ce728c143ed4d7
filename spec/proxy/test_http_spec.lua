-- proxy.test's fake proxy.http (lua/proxy/test_http.lua).
local T = require "proxy.test"
local proxy = T.proxy

describe("proxy.test: proxy.http", function()
  before_each(function() T.reset() end)

  it("answers from a mock by exact URL or by pattern, later mocks first", function()
    T.http_mock("http://auth.local/check?u=1", { status = 200, body = "yes",
      headers = { ["X-Who"] = "ann", ["Set-Cookie"] = { "a", "b" } } })
    T.http_mock("^http://auth%.local/", { status = 403 })
    local res = assert(proxy.http.request { url = "http://auth.local/check", query = { u = 1 } })
    assert.same({ 200, "yes", "ann", "ann" }, { res.status, res.body, res.headers["x-who"], res.headers.X_Who })
    assert.same({ "a", "b" }, res.headers["set-cookie"])
    res = assert(proxy.http.request { url = "http://auth.local/other" })
    assert.same({ 403, "" }, { res.status, res.body })
    assert.equal(2, #T.http_requests)
    assert.equal("http://auth.local/check?u=1", T.http_requests[1].url)
  end)

  it("passes the request to a function mock, which may fail the call", function()
    T.http_mock("http://svc/", function(req)
      if req.method == "POST" then return { status = 201, body = req.body .. "!" } end
      return nil, "connect to svc:80: connection refused"
    end)
    local res = assert(proxy.http.request { method = "post", url = "http://svc/", body = "hi",
      headers = { ["X-A"] = "1" } })
    assert.same({ 201, "hi!" }, { res.status, res.body })
    assert.equal("1", T.http_requests[1].headers["x-a"])
    local r2, err = proxy.http.request { url = "http://svc/" }
    assert.is_nil(r2)
    assert.equal("connect to svc:80: connection refused", err)
  end)

  it("checks arguments like the engine", function()
    T.http_mock("^http://h/", { status = 200 })
    local res, err = proxy.http.request { url = "http://h/", headers = { ["X-A"] = "v\r\nX-B: 1" } }
    assert.is_nil(res)
    assert.truthy(err:find("injection", 1, true))
    res, err = proxy.http.request { url = "ftp://h/" }
    assert.is_nil(res)
    assert.truthy(err:find("scheme", 1, true))
    assert.has_error(function() proxy.http.request { url = "http://h/", body = 1 } end)
    assert.equal(0, #T.http_requests)
    res, err = proxy.http.request { url = "http://nomock.test/" }
    assert.is_nil(res)
    assert.truthy(err:find("no T.http_mock", 1, true))
  end)

  it("streams chunks and times out a slow answer on the fake clock", function()
    T.http_mock("http://big/", { chunks = { "ab", "cd" }, headers = { ["Content-Type"] = "x" } })
    local res = assert(proxy.http.request_stream { url = "http://big/" })
    assert.is_nil(res.body)
    local got = {}
    for c in res:body_reader() do got[#got + 1] = c end
    assert.same({ "ab", "cd" }, got)
    assert.equal("abcd", assert(proxy.http.request { url = "http://big/" }).body)
    T.http_mock("http://slow/", { delay = 5 })
    local t0 = T.now()
    local r, err = proxy.http.request { url = "http://slow/", timeout = 1 }
    assert.is_nil(r)
    assert.equal("timeout reading from slow:80", err)
    assert.equal(t0 + 1, T.now())
    assert(proxy.http.request { url = "http://slow/", timeout = 10 })
    assert.equal(t0 + 6, T.now())
  end)

  it("yields inside a phase, like the engine", function()
    T.http_mock("http://auth/", { status = 204 })
    local plugin = { name = "auth", priority = 1 }
    function plugin.request(req)
      local res, err = proxy.http.request { url = "http://auth/" }
      if not res then return req:respond(503, err) end
      if res.status ~= 204 then return req:respond(403) end
      req:set_header("X-Authed", "1")
    end
    local out = T.run(plugin, {}, { uri = "/" })
    assert.is_false(out.responded)
    assert.equal("1", out.request_headers["X-Authed"])
    T.http_reset()
    out = T.run(plugin, {}, { uri = "/" })
    assert.equal(503, out.status)
  end)
end)
