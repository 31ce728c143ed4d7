local T = require "proxy.test"
local cors = require "cors"

local function preflight(conf, headers)
  headers = headers or {}
  headers["Access-Control-Request-Method"] = headers["Access-Control-Request-Method"] or "PUT"
  return T.run(cors, conf, { method = "OPTIONS", uri = "/api", headers = headers })
end

local function get(conf, headers, resp)
  return T.run(cors, conf, { method = "GET", uri = "/api", headers = headers or {} }, resp)
end

describe("cors plugin: preflight", function()
  before_each(function() T.reset() end)

  it("answers locally with 204 and the configured headers", function()
    local res = preflight({ origins = { "https://app.example.com" }, methods = { "GET", "PUT" },
      allow_headers = { "X-Token", "Content-Type" }, max_age = 3600, credentials = true },
      { Origin = "https://app.example.com", ["Access-Control-Request-Headers"] = "x-token" })
    assert.is_true(res.responded)
    assert.equal(204, res.status)
    assert.equal("", res.body)
    local h = res.headers
    assert.equal("https://app.example.com", h["access-control-allow-origin"])
    assert.equal("true", h["access-control-allow-credentials"])
    assert.equal("GET, PUT", h["access-control-allow-methods"])
    assert.equal("X-Token, Content-Type", h["access-control-allow-headers"])
    assert.equal("3600", h["access-control-max-age"])
    assert.equal("Origin", h["vary"])
  end)

  it("echoes the requested headers when allow_headers is unset, and varies on them", function()
    local res = preflight(nil, { Origin = "https://a.test",
      ["Access-Control-Request-Headers"] = "X-A, content-type" })
    assert.equal("*", res.headers["access-control-allow-origin"])
    assert.equal("X-A, content-type", res.headers["access-control-allow-headers"])
    assert.equal("Access-Control-Request-Headers", res.headers["vary"])
    -- Not tokens: not echoed.
    res = preflight(nil, { Origin = "https://a.test",
      ["Access-Control-Request-Headers"] = "X-A, bad header\1" })
    assert.is_nil(res.headers["access-control-allow-headers"])
  end)

  it("answers a refused origin locally, without CORS headers", function()
    local res = preflight({ origins = { "https://app.example.com" } },
      { Origin = "https://evil.example.net" })
    assert.is_true(res.responded)
    assert.equal(204, res.status)
    assert.is_nil(res.headers["access-control-allow-origin"])
    assert.is_nil(res.headers["access-control-allow-methods"])
    assert.matches("Origin", res.headers["vary"])
  end)

  it("lets a plain OPTIONS (no Access-Control-Request-Method) through", function()
    local res = T.run(cors, nil, { method = "OPTIONS", uri = "/", headers = { Origin = "https://x.y" } })
    assert.is_false(res.responded)
    assert.equal("*", res.headers["access-control-allow-origin"])
  end)

  it("never sends * with credentials: echoes the origin", function()
    local res = preflight({ credentials = true }, { Origin = "https://any.test" })
    assert.equal("https://any.test", res.headers["access-control-allow-origin"])
    assert.equal("true", res.headers["access-control-allow-credentials"])
    assert.matches("Origin", res.headers["vary"])
  end)
end)

describe("cors plugin: origins", function()
  local function ok(conf, origin)
    local res = get(conf, { Origin = origin })
    return res.headers["access-control-allow-origin"] ~= nil
  end

  it("matches exact origins without regard to case", function()
    local c = { origins = { "https://App.Example.com", "http://localhost:3000", "null" } }
    assert.is_true(ok(c, "https://app.example.com"))
    assert.is_true(ok(c, "http://localhost:3000"))
    assert.is_true(ok(c, "null"))
    assert.is_false(ok(c, "http://localhost:3001"))
    assert.is_false(ok(c, "https://app.example.com.evil.net"))
    assert.is_false(ok(c, "http://app.example.com"))
  end)

  it("matches wildcard subdomains, not the bare domain or look-alikes", function()
    local c = { origins = { "https://*.example.com" } }
    assert.is_true(ok(c, "https://a.example.com"))
    assert.is_true(ok(c, "https://a.b.example.com"))
    assert.is_false(ok(c, "https://example.com"))
    assert.is_false(ok(c, "https://evilexample.com"))
    assert.is_false(ok(c, "http://a.example.com"))
    assert.is_false(ok(c, "https://a.example.com.evil.net"))
    assert.is_false(ok(c, "https://a/b.example.com"))
    assert.is_false(ok(c, "https://.example.com"))
  end)

  it("matches regexes on the whole origin", function()
    local c = { origins = {}, origin_regex = { [[https://(dev|staging)-\d+\.example\.org]] } }
    assert.is_true(ok(c, "https://dev-12.example.org"))
    assert.is_true(ok(c, "HTTPS://STAGING-1.EXAMPLE.ORG"))
    assert.is_false(ok(c, "https://dev-12.example.org.evil.net"))
    assert.is_false(ok(c, "xhttps://dev-1.example.org"))
  end)

  it("refuses huge and garbage origins without failing", function()
    local c = { origins = { "https://*.example.com" }, origin_regex = { ".*" } }
    assert.is_false(ok(c, "https://" .. string.rep("a", 100000) .. ".example.com"))
    assert.is_true(ok(c, "\1\2\3 garbage")) -- the regex allows anything short
    c = { origins = { "https://*.example.com" } }
    assert.is_false(ok(c, "\1\2\3 garbage"))
    assert.is_false(ok(c, ""))
    local res = get({ origins = { "*" } }, { Origin = string.rep("x", 100000) })
    assert.is_nil(res.headers["access-control-allow-origin"])
  end)

  it("refuses bad origin configs", function()
    assert.has_error(function() T.conf(cors, { origins = { "https://a.*.example.com" } }) end)
    assert.has_error(function() T.conf(cors, { origins = { "https://a.com/path" } }) end)
    assert.has_error(function() T.conf(cors, { origin_regex = { "(" } }) end)
  end)
end)

describe("cors plugin: actual requests", function()
  it("adds the origin, credentials and exposed headers", function()
    local res = get({ origins = { "https://a.test" }, credentials = true,
      expose_headers = { "X-Total", "ETag" } }, { Origin = "https://a.test" })
    assert.equal(200, res.status)
    assert.equal("https://a.test", res.headers["access-control-allow-origin"])
    assert.equal("true", res.headers["access-control-allow-credentials"])
    assert.equal("X-Total, ETag", res.headers["access-control-expose-headers"])
    assert.equal("Origin", res.headers["vary"])
  end)

  it("replaces the upstream's own Access-Control-Allow-Origin", function()
    local res = get(nil, { Origin = "https://a.test" },
      { headers = { ["Access-Control-Allow-Origin"] = "https://other" } })
    assert.equal("*", res.headers["access-control-allow-origin"])
  end)

  it("varies on Origin when the answer depends on it, also without CORS headers", function()
    local c = { origins = { "https://a.test" } }
    assert.equal("Origin", get(c, { Origin = "https://b.test" }).headers["vary"])
    assert.is_nil(get(c, { Origin = "https://b.test" }).headers["access-control-allow-origin"])
    assert.equal("Origin", get(c, {}).headers["vary"]) -- no Origin: cached for everyone
    -- "*" without credentials: the same answer for all, no Vary.
    assert.is_nil(get(nil, { Origin = "https://b.test" }).headers["vary"])
  end)

  it("appends Origin to an existing Vary, once", function()
    local c = { origins = { "https://a.test" } }
    local res = get(c, { Origin = "https://a.test" }, { headers = { Vary = "Accept-Encoding" } })
    assert.equal("Accept-Encoding, Origin", res.headers["vary"])
    res = get(c, { Origin = "https://a.test" }, { headers = { Vary = "accept-encoding, ORIGIN" } })
    assert.equal("accept-encoding, ORIGIN", res.headers["vary"])
  end)

  it("decorates other plugins' local answers (a 401 from auth)", function()
    local auth = { name = "auth", priority = 1000, schema = { fields = {} } }
    function auth.request(req) return req:respond(401, "no\n", { ["WWW-Authenticate"] = "Basic" }) end
    local res = T.run_chain({ { cors, { origins = { "https://a.test" } } }, { auth } },
      { headers = { Origin = "https://a.test" } })
    assert.equal(401, res.status)
    assert.equal("https://a.test", res.headers["access-control-allow-origin"])
    assert.equal("Origin", res.headers["vary"])
  end)

  it("works with compression: Vary holds both", function()
    local compression = require "compression"
    local res = T.run_chain({ { cors, { origins = { "https://a.test" } } }, { compression } },
      { headers = { Origin = "https://a.test", ["Accept-Encoding"] = "gzip" } },
      { headers = { ["Content-Type"] = "text/plain" }, body = string.rep("x", 1000) })
    assert.equal("Origin, Accept-Encoding", res.headers["vary"])
    assert.equal("gzip", res.headers["content-encoding"])
  end)
end)
