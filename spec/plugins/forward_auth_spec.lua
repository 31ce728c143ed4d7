local T = require "proxy.test"
T.shared_dicts({ fa = "1m" })
local forward_auth = require "forward_auth"

local URL = "http://auth.test/check"

describe("forward_auth plugin", function()
  before_each(function() T.reset() end)
  local conf = { url = URL, upstream_headers = { "X-User", "X-Groups" }, consumer_from = "X-User" }

  it("sends the method, URI, host and chosen headers; a 2xx lets the request through", function()
    T.http_mock(URL, { status = 200, headers = { ["X-User"] = "ann", ["X-Groups"] = "a,b",
                                                 ["X-Other"] = "no" } })
    local res = T.run(forward_auth, conf, { method = "POST", uri = "/orders?id=3",
      headers = { Host = "shop.example", Authorization = "Bearer t", Cookie = "s=1",
                  ["X-Groups"] = "admin", Accept = "text/html" }, client_ip = "192.0.2.4" })
    assert.is_false(res.responded)
    local sent = T.http_requests[1]
    assert.equal("POST", sent.method)
    assert.equal("POST", sent.headers["X-Forwarded-Method"])
    assert.equal("/orders?id=3", sent.headers["X-Forwarded-Uri"])
    assert.equal("shop.example", sent.headers["X-Forwarded-Host"])
    assert.equal("http", sent.headers["X-Forwarded-Proto"])
    assert.equal("192.0.2.4", sent.headers["X-Forwarded-For"])
    assert.equal("Bearer t", sent.headers["Authorization"])
    assert.equal("s=1", sent.headers["Cookie"])
    assert.is_nil(sent.headers["Accept"])
    assert.equal("ann", res.request_headers["X-User"])
    assert.equal("a,b", res.request_headers["X-Groups"]) -- the client's value replaced
    assert.is_nil(res.request_headers["X-Other"])
    assert.same({ id = "ann", plugin = "forward_auth" }, res.ctx.consumer)
    assert.equal("ann", res.request_headers["X-Consumer-Id"])
    assert.is_nil(res.request_headers["Authorization"]) -- hide_credentials
  end)

  it("removes a client's upstream header the service did not send", function()
    T.http_mock(URL, { status = 204 })
    local res = T.run(forward_auth, conf, { headers = { ["X-User"] = "root" } })
    assert.is_false(res.responded)
    assert.is_nil(res.request_headers["X-User"])
    assert.equal("anonymous", res.ctx.consumer.id)
  end)

  it("passes a refusal on with its status, chosen headers and body", function()
    T.http_mock(URL, { status = 401, body = "login first",
      headers = { ["WWW-Authenticate"] = 'Bearer realm="x"', ["Set-Cookie"] = { "a=1", "b=2" },
                  ["X-Secret"] = "s" } })
    local res = T.run(forward_auth, conf, { headers = { ["X-Consumer-Id"] = "root" } })
    assert.is_true(res.responded)
    assert.equal(401, res.status)
    assert.equal("login first", res.body)
    assert.equal('Bearer realm="x"', res.headers["WWW-Authenticate"])
    assert.same({ "a=1", "b=2" }, res.headers["Set-Cookie"])
    assert.is_nil(res.headers["X-Secret"])
    T.http_mock(URL, { status = 302, headers = { Location = "https://login/" } })
    res = T.run(forward_auth, conf, {})
    assert.equal(302, res.status)
    assert.equal("https://login/", res.headers["Location"])
    T.http_mock(URL, { status = 500, body = "oops" })
    assert.equal(500, T.run(forward_auth, conf, {}).status)
  end)

  it("answers 503 (or failure_status) when the service is down, slow or answers junk", function()
    T.http_mock(URL, function() return nil, "connect to auth.test:80: connection refused" end)
    local res = T.run(forward_auth, conf, {})
    assert.equal(503, res.status)
    assert.same({ "forward_auth: http://auth.test/check: connect to auth.test:80: connection refused" },
      T.log_lines("warn"))
    T.http_mock(URL, { delay = 30 })
    assert.equal(503, T.run(forward_auth, conf, {}).status)
    T.http_mock(URL, function() return nil, "invalid response: bad status line" end)
    assert.equal(599, T.run(forward_auth, { url = URL, failure_status = 599 }, {}).status)
  end)

  it("caches verdicts per chosen headers for cache_ttl", function()
    local n = 0
    T.http_mock(URL, function(r)
      n = n + 1
      if r.headers.authorization == "Bearer good" then
        return { status = 200, headers = { ["X-User"] = "ann" } }
      end
      return { status = 403, body = "no" }
    end)
    local c = { url = URL, upstream_headers = { "X-User" }, consumer_from = "X-User",
                cache_dict = "fa", cache_ttl = 10 }
    local good = { uri = "/a", headers = { Authorization = "Bearer good" } }
    assert.equal("ann", T.run(forward_auth, c, good).request_headers["X-User"])
    local res = T.run(forward_auth, c, good)
    assert.equal("ann", res.request_headers["X-User"])
    assert.equal("ann", res.ctx.consumer.id)
    assert.equal(1, n)
    assert.equal(403, T.run(forward_auth, c, { uri = "/a", headers = { Authorization = "Bearer bad" } }).status)
    local r2 = T.run(forward_auth, c, { uri = "/a", headers = { Authorization = "Bearer bad" } })
    assert.equal(403, r2.status)
    assert.equal("no", r2.body)
    assert.equal(2, n)
    T.run(forward_auth, c, { uri = "/b", headers = { Authorization = "Bearer good" } }) -- another URI
    assert.equal(3, n)
    T.advance(11)
    T.run(forward_auth, c, good)
    assert.equal(4, n)
    -- no credential kept in the dict as it came
    for _, k in ipairs(proxy.shared.fa:get_keys(0)) do assert.is_nil(k:find("good", 1, true)) end
  end)

  it("refuses a cache_dict the config does not declare", function()
    assert.error_matches(function() T.run(forward_auth, { url = URL, cache_dict = "nope" }) end,
      "cache_dict: no shared dict nope", 1, true)
  end)

  it("keeps the credentials when hide_credentials is false", function()
    T.http_mock(URL, { status = 200 })
    local res = T.run(forward_auth, { url = URL, hide_credentials = false },
      { headers = { Authorization = "Bearer t" } })
    assert.equal("Bearer t", res.request_headers["Authorization"])
  end)
end)
