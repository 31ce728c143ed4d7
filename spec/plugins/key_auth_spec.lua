local T = require "proxy.test"
local key_auth = require "key_auth"

describe("key_auth plugin", function()
  local conf = { keys = { k1 = "mobile", k2 = { id = "partner", tier = "gold" } } }
  before_each(function() T.reset() end)

  it("maps a key from the header to its consumer and hides it", function()
    local res = T.run(key_auth, conf, { headers = { ["X-Api-Key"] = "k1" } })
    assert.is_false(res.responded)
    assert.same({ id = "mobile", plugin = "key_auth" }, res.ctx.consumer)
    assert.equal("mobile", res.request_headers["X-Consumer-Id"])
    assert.is_nil(res.request_headers["X-Api-Key"])
    res = T.run(key_auth, conf, { headers = { ["x-api-key"] = "k2" } })
    assert.same({ id = "partner", tier = "gold", plugin = "key_auth" }, res.ctx.consumer)
  end)

  it("tries several headers, then query arguments, and strips the argument", function()
    local c = { keys = conf.keys, header_names = { "X-Key", "apikey" }, query_names = { "api_key" } }
    assert.equal("mobile", T.run(key_auth, c, { headers = { apikey = "k1" } }).ctx.consumer.id)
    local res = T.run(key_auth, c, { uri = "/a?x=1&api_key=k1&y=2&api_key=k9" })
    assert.equal("mobile", res.ctx.consumer.id)
    assert.equal("/a?x=1&y=2", res.uri)
    res = T.run(key_auth, c, { uri = "/a?api_key=k1" })
    assert.equal("/a", res.uri)
    res = T.run(key_auth, { keys = conf.keys, query_names = { "api_key" }, hide_credentials = false },
      { uri = "/a?api_key=k1" })
    assert.equal("/a?api_key=k1", res.uri)
  end)

  it("keeps the key when hide_credentials is false", function()
    local res = T.run(key_auth, { keys = conf.keys, hide_credentials = false },
      { headers = { ["X-Api-Key"] = "k1" } })
    assert.equal("k1", res.request_headers["X-Api-Key"])
  end)

  it("refuses a missing, unknown or huge key with 401, logging no key", function()
    for _, case in ipairs({
      { {}, "no key" },
      { { ["X-Api-Key"] = "nope" }, "unknown key" },
      { { ["X-Api-Key"] = "" }, "unknown key" },
      { { ["X-Api-Key"] = string.rep("k", 300) }, "key too long" },
    }) do
      local res = T.run(key_auth, conf, { headers = case[1], client_ip = "192.0.2.1" })
      assert.equal(401, res.status)
      assert.equal('Key realm="luaproxy"', res.headers["WWW-Authenticate"])
      assert.same({ "key_auth: refused 192.0.2.1: " .. case[2] }, T.log_lines("info"))
      T.reset()
    end
  end)

  it("does not let the client choose the consumer header", function()
    local res = T.run(key_auth, conf, { headers = { ["X-Api-Key"] = "bad", ["X-Consumer-Id"] = "root" } })
    assert.equal(401, res.status)
    assert.is_nil(res.request_headers["X-Consumer-Id"])
  end)

  it("rejects a config without keys or with bad consumers", function()
    assert.error_matches(function() T.run(key_auth, {}) end, "at least one key", 1, true)
    assert.error_matches(function() T.run(key_auth, { keys = { k = { tier = 1 } } }) end,
      "keys: each value is a consumer id", 1, true)
  end)
end)
