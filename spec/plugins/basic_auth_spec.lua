local T = require "proxy.test"
local basic_auth = require "basic_auth"

local function b64(s)
  local p = assert(io.popen("printf '%s' '" .. s:gsub("'", "'\\''") .. "' | base64 -w0"))
  local out = p:read("*a")
  p:close()
  return out
end

local function sh(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("*a"):gsub("%s+$", "")
  p:close()
  return out
end

local function basic(user, pw) return { Authorization = "Basic " .. b64(user .. ":" .. pw) } end

describe("basic_auth plugin", function()
  local conf = { users = { { username = "ann", password = "s3cr3t" },
                           { username = "bob", hash = sh("openssl passwd -apr1 b0b-pw"),
                             consumer = "robert" } } }
  before_each(function() T.reset() end)

  it("lets a right user and password through, sets the consumer, hides the header", function()
    local res = T.run(basic_auth, conf, { headers = basic("ann", "s3cr3t") })
    assert.is_false(res.responded)
    assert.same({ id = "ann", username = "ann", plugin = "basic_auth" }, res.ctx.consumer)
    assert.equal("ann", res.request_headers["X-Consumer-Id"])
    assert.is_nil(res.request_headers["Authorization"])
    res = T.run(basic_auth, conf, { headers = basic("bob", "b0b-pw") })
    assert.is_false(res.responded)
    assert.equal("robert", res.ctx.consumer.id)
  end)

  it("forwards the header when hide_credentials is false, and can skip the consumer header", function()
    local res = T.run(basic_auth, { users = conf.users, hide_credentials = false, consumer_header = "" },
      { headers = basic("ann", "s3cr3t") })
    assert.equal("Basic " .. b64("ann:s3cr3t"), res.request_headers["Authorization"])
    assert.is_nil(res.request_headers["X-Consumer-Id"])
  end)

  local function refused(headers, reason)
    local res = T.run(basic_auth, conf, { headers = headers, client_ip = "192.0.2.7" })
    assert.is_true(res.responded)
    assert.equal(401, res.status)
    assert.equal('Basic realm="luaproxy", charset="UTF-8"', res.headers["WWW-Authenticate"])
    assert.same({ "basic_auth: refused 192.0.2.7: " .. reason }, T.log_lines("info"))
    T.reset()
    return res
  end

  it("refuses a wrong password and an unknown user alike, logging no credential", function()
    refused(basic("ann", "wrong"), "unknown user or wrong password")
    refused(basic("bob", "wrong"), "unknown user or wrong password")
    refused(basic("nobody", "s3cr3t"), "unknown user or wrong password")
  end)

  it("refuses malformed Authorization headers with 401, never 500", function()
    refused({}, "no credentials")
    refused({ Authorization = b64("ann:s3cr3t") }, "not Basic")              -- no scheme
    refused({ Authorization = "Bearer " .. b64("ann:s3cr3t") }, "not Basic")
    refused({ Authorization = "Basic" }, "not Basic")
    refused({ Authorization = "Basic !!!notbase64" }, "bad base64")
    refused({ Authorization = "Basic " }, "bad base64")
    refused({ Authorization = "Basic " .. b64("annsecret") }, "no colon")
    refused({ Authorization = "Basic " .. string.rep("QUFB", 2000) }, "header too long")
    refused({ Authorization = "Basic " .. b64(":") }, "unknown user or wrong password")
  end)

  it("takes the scheme in any case and a password with colons", function()
    local res = T.run(basic_auth, { users = { { username = "c", password = "a:b:c" } } },
      { headers = { Authorization = "bAsIc  " .. b64("c:a:b:c") } })
    assert.is_false(res.responded)
  end)

  it("replaces a consumer header the client sent, and removes it on a refusal", function()
    local h = basic("ann", "s3cr3t")
    h["X-Consumer-Id"] = "admin"
    assert.equal("ann", T.run(basic_auth, conf, { headers = h }).request_headers["X-Consumer-Id"])
    local req = T.request { headers = { ["X-Consumer-Id"] = "admin" } }
    assert.is_true(T.phase(basic_auth, "request", req, T.conf(basic_auth, conf)))
    assert.is_nil(req:header("X-Consumer-Id"))
    T.finish(req)
  end)

  it("verifies bcrypt, SHA-crypt, apr1 and {SHA} from an htpasswd file", function()
    local dir = os.tmpname()
    local path = dir .. ".htpasswd"
    local f = assert(io.open(path, "w"))
    f:write("# users\n",
      "b:$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW\n", -- "U*U" (OpenBSD's vector)
      "s5:", sh("openssl passwd -5 five"), "\n",
      "s6:", sh("openssl passwd -6 six"), "\n",
      "a:", sh("openssl passwd -apr1 apr"), "\n",
      "s:{SHA}", sh("printf sha | openssl sha1 -binary | base64"), "\n\n")
    f:close()
    local c = { htpasswd = path }
    for user, pw in pairs({ b = "U*U", s5 = "five", s6 = "six", a = "apr", s = "sha" }) do
      assert.is_false(T.run(basic_auth, c, { headers = basic(user, pw) }).responded, user)
      assert.equal(401, T.run(basic_auth, c, { headers = basic(user, pw .. "x") }).status, user)
    end
    os.remove(path)
    os.remove(dir)
  end)

  it("caches a verified hash, not a wrong password, for cache_ttl", function()
    local c = T.conf(basic_auth, { users = { { username = "b",
      hash = "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW" } }, cache_ttl = 60 })
    local function run(pw)
      local req = T.request { headers = basic("b", pw) }
      local responded = T.phase(basic_auth, "request", req, c)
      T.finish(req)
      return responded
    end
    assert.is_false(run("U*U"))
    assert.equal(1, c.cache_n)
    assert.is_true(run("U*V"))
    assert.equal(1, c.cache_n)
    assert.is_false(run("U*U"))
    T.advance(61)
    assert.is_false(run("U*U")) -- verified again after the ttl
  end)

  it("bounds the cache", function()
    local c = T.conf(basic_auth, { users = { { username = "a", hash = sh("openssl passwd -apr1 x") } },
                                  cache_size = 2 })
    for _ = 1, 5 do
      local req = T.request { headers = basic("a", "x") }
      T.phase(basic_auth, "request", req, c)
      T.finish(req)
    end
    assert.is_true(c.cache_n <= 2)
  end)

  it("rejects configs without users, with both or neither password and hash, bad hashes", function()
    assert.error_matches(function() T.run(basic_auth, {}) end, "at least one user", 1, true)
    assert.error_matches(function() T.run(basic_auth, { users = { { username = "a" } } }) end,
      "users[1]: give either password or hash", 1, true)
    assert.error_matches(function()
      T.run(basic_auth, { users = { { username = "a", hash = "plain" } } })
    end, "users[1].hash: unsupported hash", 1, true)
    assert.error_matches(function() T.run(basic_auth, { htpasswd = "/nonexistent/x" }) end,
      "htpasswd: /nonexistent/x", 1, true)
  end)
end)
