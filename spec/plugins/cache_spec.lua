local T = require "proxy.test"
local cache = require "cache"

local function proxy_now() return require("proxy").now() end

local function date(t) return os.date("!%a, %d %b %Y %H:%M:%S GMT", math.floor(t)) end

-- One request through the plugin; `answer` is the upstream's (proxy.test's T.response spec).
local function run(conf, req, answer)
  conf = conf or {}
  conf.zone = conf.zone or "z"
  req = req or { uri = "/a" }
  req.headers = req.headers or {}
  req.headers.Host = req.headers.Host or "example.com"
  return T.run(cache, conf, req, answer)
end

local function fresh(body, extra)
  local h = { ["Cache-Control"] = "max-age=60", Date = date(proxy_now()) }
  for k, v in pairs(extra or {}) do h[k] = v end
  return { status = 200, headers = h, body = body }
end

describe("cache plugin", function()
  before_each(function()
    T.reset()
    T.cache_zones { z = {} }
  end)

  it("stores a cacheable answer, then serves it with Age and Cache-Status", function()
    local first = run(nil, { uri = "/a" }, fresh("v1"))
    assert.equal("v1", first.body)
    assert.matches("fwd=miss", first.headers["Cache-Status"])
    assert.matches("stored", first.headers["Cache-Status"])
    local z = T.cache_zone("z")
    assert.is_table(z.entries["GET http://example.com/a"])
    local second = run(nil, { uri = "/a" }, { status = 500, body = "must not be asked" })
    assert.is_true(second.responded)
    assert.equal(200, second.status)
    assert.equal("v1", second.body)
    assert.matches("; hit", second.headers["cache-status"])
    assert.equal("0", second.headers["age"])
    assert.equal(1, z.counts.hit)
    assert.equal(1, z.counts.miss)
  end)

  it("keys on host and query", function()
    run(nil, { uri = "/a?x=1" }, fresh("x1"))
    assert.equal("x2", run(nil, { uri = "/a?x=2" }, fresh("x2")).body)
    assert.equal("x1", run(nil, { uri = "/a?x=1" }).body)
    local other = run(nil, { uri = "/a?x=1", headers = { Host = "other.test" } }, fresh("o"))
    assert.equal("o", other.body)
  end)

  it("takes the key from cache_key, and req:set_cache_key() over it", function()
    local conf = { cache_key = function(req) return "k:" .. req:path() end }
    run(conf, { uri = "/p?a=1" }, fresh("one"))
    assert.equal("one", run({ cache_key = conf.cache_key }, { uri = "/p?a=2" }).body)
    local setter = { name = "setter", priority = 100,
      request = function(req) req:set_cache_key("fixed") end }
    T.run_chain({ { setter }, { cache, { zone = "z" } } }, { uri = "/x" }, fresh("fixed1"))
    local r = T.run_chain({ { setter }, { cache, { zone = "z" } } }, { uri = "/y" })
    assert.equal("fixed1", r.body)
  end)

  it("bypasses the lookup on req:cache_bypass() and stores nothing on req:cache_no_store()", function()
    run(nil, { uri = "/b" }, fresh("old"))
    local bypass = { name = "bypass", priority = 100,
      request = function(req) req:cache_bypass() end }
    local r = T.run_chain({ { bypass }, { cache, { zone = "z" } } },
      { uri = "/b", headers = { Host = "example.com" } }, fresh("new"))
    assert.equal("new", r.body)
    assert.matches("fwd=bypass", r.headers["Cache-Status"])
    local nostore = { name = "nostore", priority = 100,
      response = function(req) req:cache_no_store() end }
    local r2 = T.run_chain({ { nostore }, { cache, { zone = "z" } } },
      { uri = "/c", headers = { Host = "example.com" } }, fresh("c"))
    assert.not_matches("stored", r2.headers["Cache-Status"])
    assert.is_nil(T.cache_zone("z").entries["GET http://example.com/c"])
  end)

  it("stores with req:cache_ttl() what has no freshness of its own", function()
    local ttl = { name = "ttl", priority = 100, response = function(req) req:cache_ttl(30) end }
    local r = T.run_chain({ { ttl }, { cache, { zone = "z" } } }, { uri = "/t", headers = { Host = "example.com" } },
      { status = 200, body = "t" })
    assert.matches("stored", r.headers["Cache-Status"])
    assert.equal("t", run(nil, { uri = "/t" }).body)
  end)

  it("does not store no-store, private, or Authorization answers", function()
    run(nil, { uri = "/n" }, fresh("n", { ["Cache-Control"] = "no-store" }))
    run(nil, { uri = "/p" }, fresh("p", { ["Cache-Control"] = "private, max-age=60" }))
    run(nil, { uri = "/auth", headers = { Authorization = "Bearer x" } }, fresh("secret"))
    local e = T.cache_zone("z").entries
    assert.is_nil(e["GET http://example.com/n"])
    assert.is_nil(e["GET http://example.com/p"])
    assert.is_nil(e["GET http://example.com/auth"])
  end)

  it("keeps Vary variants apart", function()
    run(nil, { uri = "/v", headers = { ["Accept-Language"] = "fr" } },
      fresh("fr", { Vary = "Accept-Language" }))
    run(nil, { uri = "/v", headers = { ["Accept-Language"] = "de" } },
      fresh("de", { Vary = "Accept-Language" }))
    assert.equal("fr", run(nil, { uri = "/v", headers = { ["Accept-Language"] = "fr" } }).body)
    assert.equal("de", run(nil, { uri = "/v", headers = { ["Accept-Language"] = "de" } }).body)
  end)

  it("answers HEAD, a range and a matching conditional from the entry", function()
    run(nil, { uri = "/r" }, fresh("0123456789", { ETag = '"e1"' }))
    local head = run(nil, { uri = "/r", method = "HEAD" })
    assert.equal(200, head.status)
    local range = run(nil, { uri = "/r", headers = { Range = "bytes=2-4" } })
    assert.equal(206, range.status)
    assert.equal("234", range.body)
    assert.equal("bytes 2-4/10", range.headers["content-range"])
    local cond = run(nil, { uri = "/r", headers = { ["If-None-Match"] = '"e1"' } })
    assert.equal(304, cond.status)
    assert.equal("", cond.body)
  end)

  it("answers only-if-cached misses with 504", function()
    local r = run(nil, { uri = "/o", headers = { ["Cache-Control"] = "only-if-cached" } })
    assert.equal(504, r.status)
  end)

  it("revalidates a stale entry; a 304 refreshes it and serves the stored body", function()
    run(nil, { uri = "/s" }, fresh("stored", { ["Cache-Control"] = "max-age=1", Age = "5",
      ETag = '"v1"' }))
    local r = run(nil, { uri = "/s" }, { status = 304, headers = { ETag = '"v1"',
      ["Cache-Control"] = "max-age=60", Date = date(proxy_now()) } })
    assert.equal('"v1"', r.request_headers["If-None-Match"] or r.request_headers["if-none-match"])
    assert.equal(200, r.status)
    assert.equal("stored", r.body)
    assert.matches("fwd=stale", r.headers["cache-status"])
    assert.matches("fwd%-status=304", r.headers["cache-status"])
    assert.equal(1, T.cache_zone("z").counts.revalidated)
    -- Fresh again: a hit.
    assert.matches("; hit", run(nil, { uri = "/s" }).headers["cache-status"])
  end)

  it("serves stale on a 5xx within stale-if-error", function()
    run({ stale_if_error = 600 }, { uri = "/e" },
      fresh("old", { ["Cache-Control"] = "max-age=1", Age = "5" }))
    local r = run({ stale_if_error = 600 }, { uri = "/e" }, { status = 503, body = "down" })
    assert.equal(200, r.status)
    assert.equal("old", r.body)
  end)

  it("invalidates the target of an unsafe method", function()
    run(nil, { uri = "/u" }, fresh("u"))
    run(nil, { uri = "/u", method = "POST" }, { status = 200, body = "posted" })
    assert.is_nil(T.cache_zone("z").entries["GET http://example.com/u"])
  end)

  it("purges through proxy.cache.purge", function()
    run(nil, { uri = "/g" }, fresh("g"))
    assert.equal(1, require("proxy").cache.purge("z", "GET http://example.com/g"))
    assert.is_nil(T.cache_zone("z").entries["GET http://example.com/g"])
  end)

  it("encodes heads losslessly", function()
    local meta = { status = 200, ttl = 60, etag = '"x"', must_revalidate = false }
    local h = { ["content-type"] = "text/plain", ["set-cookie"] = { "a=1", "b=2" } }
    local m2, h2 = cache._decode(cache._encode(meta, h))
    assert.same(meta, m2)
    assert.same(h, h2)
  end)

  it("checks its schema", function()
    assert.has_error(function() T.conf(cache, {}) end)
    assert.has_error(function() T.conf(cache, { zone = "z", cache_set_cookie = "yes" }) end)
    assert.has_error(function() T.conf(cache, { zone = "z", default_ttl = { [99] = 1 } }) end)
    local c = T.conf(cache, { zone = "z", default_ttl = { [200] = 10 } })
    assert.equal(10, c._opts.default_ttl[200])
  end)
end)
