local T = require "proxy.test"
local request_limits = require "request_limits"

describe("request_limits plugin", function()
  before_each(function() T.reset() end)

  it("answers 405 with Allow for a method not in the list", function()
    local conf = { methods = { "get", "HEAD", "GET" } }
    assert.is_false(T.run(request_limits, conf, { method = "GET" }).responded)
    local res = T.run(request_limits, conf, { method = "POST" })
    assert.equal(405, res.status)
    assert.equal("GET, HEAD", res.headers["Allow"])
    -- GET allows HEAD.
    conf = { methods = { "GET", "post" } }
    assert.is_false(T.run(request_limits, conf, { method = "HEAD" }).responded)
    assert.equal("GET, HEAD, POST", T.run(request_limits, conf, { method = "PUT" }).headers["Allow"])
  end)

  it("answers 414 for a long target and 431 for too many header lines", function()
    local conf = { max_uri_length = 10, max_headers = 2 }
    assert.is_false(T.run(request_limits, conf, { uri = "/123456789" }).responded)
    assert.equal(414, T.run(request_limits, conf, { uri = "/123456789?" }).status)
    assert.equal(431, T.run(request_limits, conf,
      { headers = { A = "1", B = "2", C = "3" } }).status)
    assert.is_false(T.run(request_limits, conf, { headers = { A = { "1", "2" } } }).responded)
  end)

  it("sets the route's body limit, which the engine checks as the request phase ends", function()
    local res = T.run(request_limits, { max_body_size = 100 },
      { method = "POST", headers = { ["Content-Length"] = "101" } })
    assert.equal(100, res.max_body_size)
    assert.equal(413, res.status)
    res = T.run(request_limits, { max_body_size = 100 },
      { method = "POST", headers = { ["Content-Length"] = "100" } })
    assert.is_false(res.responded)
  end)

  it("rejects bad settings with the key path", function()
    assert.error_matches(function() T.run(request_limits, { methods = {} }) end, "methods", 1, true)
    assert.error_matches(function() T.run(request_limits, { max_headers = 0 }) end,
      "max_headers", 1, true)
  end)
end)
