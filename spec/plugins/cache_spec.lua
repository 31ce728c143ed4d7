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
    assert.matches("fwd=uri%-miss", first.headers["Cache-Status"])
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

  it("serves hits on one entry the same fields each time, whatever ran between them", function()
    -- A hit copies the head's served fields built once per head (plugins/cache.lua
    -- served_list): a Range answer or a conditional one must not change what later hits get.
    run(nil, { uri = "/h" }, fresh("hello", { ETag = '"e1"', ["X-Multi"] = { "a", "b" } }))
    local function fields(r)
      local out = {}
      for k, v in pairs(r.headers) do
        local l = k:lower()
        if l ~= "age" and l ~= "cache-status" and l ~= "content-range" then out[l] = v end
      end
      return out
    end
    local one = run(nil, { uri = "/h" })
    local ranged = run(nil, { uri = "/h", headers = { Range = "bytes=1-2" } })
    assert.equal(206, ranged.status)
    assert.equal("el", ranged.body)
    local cond = run(nil, { uri = "/h", headers = { ["If-None-Match"] = '"e1"' } })
    assert.equal(304, cond.status)
    local two = run(nil, { uri = "/h" })
    assert.same(fields(one), fields(two))
    assert.same({ "a", "b" }, fields(two)["x-multi"])
    -- The hit's Cache-Status is what the policy module makes of it.
    local policy = require "luaproxy.cache.policy"
    local ttl = tonumber(two.headers["cache-status"]:match("ttl=(%-?%d+)"))
    assert.equal(policy.cache_status { hit = true, ttl = ttl }, two.headers["cache-status"])
  end)

  it("keeps a hit's request directives per request (Cache-Control, Pragma)", function()
    run(nil, { uri = "/d" }, fresh("d1"))
    assert.matches("; hit", run(nil, { uri = "/d" }).headers["cache-status"])
    local nc = run(nil, { uri = "/d", headers = { Pragma = "no-cache" } }, fresh("d2"))
    assert.equal("d2", nc.body)
    local ma = run(nil, { uri = "/d", headers = { ["Cache-Control"] = "no-cache" } }, fresh("d3"))
    assert.equal("d3", ma.body)
    assert.matches("; hit", run(nil, { uri = "/d" }).headers["cache-status"])
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

  it("bypasses when cache_key returns nil or false: nothing looked up, nothing stored", function()
    -- The site's rule says "no key" for requests with a Cookie: they must not share the
    -- default key's entry (Bob served Alice's page).
    for _, none in ipairs({ "nil", "false" }) do
      T.reset()
      T.cache_zones { z = {} }
      local conf = { cache_key = function(req)
        if req:header("Cookie") then
          if none == "nil" then return nil end
          return false
        end
        return "k:" .. req:path()
      end }
      local alice = run(conf, { uri = "/me", headers = { Cookie = "user=alice" } }, fresh("alice"))
      assert.equal("alice", alice.body)
      assert.equal("luaproxy; fwd=bypass; fwd-status=200", alice.headers["Cache-Status"])
      local z = T.cache_zone("z")
      assert.is_nil(next(z.entries), none)
      local bob = run(conf, { uri = "/me", headers = { Cookie = "user=bob" } }, fresh("bob"))
      assert.equal("bob", bob.body)
      assert.equal("luaproxy; fwd=bypass; fwd-status=200", bob.headers["Cache-Status"])
      assert.is_nil(next(z.entries), none)
      assert.equal(2, z.counts.bypass)
    end
  end)

  it("bypasses the lookup on req:cache_bypass() and stores nothing on req:cache_no_store()", function()
    run(nil, { uri = "/b" }, fresh("old"))
    local bypass = { name = "bypass", priority = 100,
      request = function(req) req:cache_bypass() end }
    local r = T.run_chain({ { bypass }, { cache, { zone = "z" } } },
      { uri = "/b", headers = { Host = "example.com" } }, fresh("new"))
    assert.equal("new", r.body)
    assert.matches("fwd=bypass", r.headers["Cache-Status"])
    -- fwd-status is an upstream's status only: not the proxy's own 502 after a try got no
    -- answer (the same test as a miss's, from_upstream_of)
    local function bypassed(answer, failure)
      return T.run_chain({ { bypass }, { cache, { zone = "z" } } },
        { uri = "/b", headers = { Host = "example.com" }, last_failure = failure }, answer)
    end
    assert.equal("luaproxy; fwd=bypass", bypassed({ status = 502, body = "proxy's own" },
      { "connect", nil, "127.0.0.1:9" }).headers["Cache-Status"])
    assert.equal("luaproxy; fwd=bypass; fwd-status=502",
      bypassed({ status = 502, body = "upstream's" }).headers["Cache-Status"])
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

  it("stores a new variant under the Vary value sent upstream, not the client's", function()
    -- A plugin after the cache sets Accept-Language from a cookie. On a vary-miss the lookup
    -- read the client's value; the variant must be stored under the one the origin saw.
    local lang = { name = "lang", priority = 10, request = function(req)
      local l = (req:header("Cookie") or ""):match("lang=(%a+)")
      if l then req:set_header("Accept-Language", l) end
    end }
    local function get(al, cookie, answer)
      return T.run_chain({ { cache, { zone = "z" } }, { lang } }, { uri = "/lv",
        headers = { Host = "example.com", ["Accept-Language"] = al, Cookie = cookie } }, answer)
    end
    local function page(l) return fresh(l, { Vary = "Accept-Language" }) end
    assert.equal("fr", get("fr", nil, page("fr")).body) -- uri-miss
    local v = get("de", "lang=en", page("en")) -- vary-miss: the origin saw "en"
    assert.equal("en", v.body)
    assert.matches("fwd=vary%-miss", v.headers["Cache-Status"])
    local de = get("de", nil, page("de"))
    assert.equal("de", de.body)
    assert.matches("fwd=vary%-miss", de.headers["Cache-Status"])
    local en = get("en", nil, { status = 500, body = "must not be asked" })
    assert.equal("en", en.body)
    assert.matches("; hit", en.headers["Cache-Status"])
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

  it("answers several ranges with multipart/byteranges, each part with its type and range", function()
    run(nil, { uri = "/m" }, fresh("0123456789", { ["Content-Type"] = "text/plain" }))
    local r = run(nil, { uri = "/m", headers = { Range = "bytes=0-1,5-6" } })
    assert.equal(206, r.status)
    local ct = r.headers["Content-Type"] or r.headers["content-type"]
    local boundary = ct:match("^multipart/byteranges; boundary=(%S+)$")
    assert.is_string(boundary)
    assert.equal("\r\n--" .. boundary .. "\r\nContent-Type: text/plain\r\n"
      .. "Content-Range: bytes 0-1/10\r\n\r\n01"
      .. "\r\n--" .. boundary .. "\r\nContent-Type: text/plain\r\n"
      .. "Content-Range: bytes 5-6/10\r\n\r\n56"
      .. "\r\n--" .. boundary .. "--\r\n", r.body)
    -- Overlapping ranges coalesce: one part, a plain 206.
    local one = run(nil, { uri = "/m", headers = { Range = "bytes=0-5,3-9" } })
    assert.equal(206, one.status)
    assert.equal("0123456789", one.body)
    assert.equal("bytes 0-9/10", one.headers["Content-Range"] or one.headers["content-range"])
    -- More than 16 ranges: the whole 200.
    local many = {}
    for i = 0, 16 do many[#many + 1] = (i * 2) .. "-" .. (i * 2) end
    run(nil, { uri = "/m40" }, fresh(string.rep("x", 40)))
    local whole = run(nil, { uri = "/m40", headers = { Range = "bytes=" .. table.concat(many, ",") } })
    assert.equal(200, whole.status)
    local none = run(nil, { uri = "/m", headers = { Range = "bytes=20-30,40-" } })
    assert.equal(416, none.status)
    assert.equal("bytes */10", none.headers["Content-Range"] or none.headers["content-range"])
  end)

  it("fills a cold Range or conditional request with the whole representation", function()
    local r = run(nil, { uri = "/cold", headers = { Range = "bytes=0-1", ["If-None-Match"] = '"x"',
      ["If-Modified-Since"] = date(proxy_now() - 10) } }, fresh("0123456789", { ETag = '"x"' }))
    assert.is_nil(r.request_headers["Range"] or r.request_headers["range"])
    assert.is_nil(r.request_headers["If-None-Match"] or r.request_headers["if-none-match"])
    assert.is_nil(r.request_headers["If-Modified-Since"] or r.request_headers["if-modified-since"])
    -- No Content-Length from the upstream: the whole 200 answers.
    assert.equal(200, r.status)
    assert.matches("stored", r.headers["Cache-Status"])
    local again = run(nil, { uri = "/cold", headers = { Range = "bytes=0-1" } })
    assert.equal(206, again.status)
    assert.equal("01", again.body)
    assert.equal(304, run(nil, { uri = "/cold", headers = { ["If-None-Match"] = '"x"' } }).status)
  end)

  it("answers a cold Range or conditional request from the whole body it stores", function()
    local body = "0123456789"
    local function whole() return fresh(body, { ETag = '"w"', ["Content-Length"] = "10" }) end
    local r = run(nil, { uri = "/w1", headers = { Range = "bytes=2-4" } }, whole())
    assert.is_nil(r.request_headers["Range"] or r.request_headers["range"])
    assert.equal(206, r.status)
    assert.equal("234", r.body)
    assert.equal("bytes 2-4/10", r.headers["Content-Range"] or r.headers["content-range"])
    assert.equal(body, T.cache_zone("z").entries["GET http://example.com/w1"][""].body)
    local c = run(nil, { uri = "/w2", headers = { ["If-None-Match"] = '"w"' } }, whole())
    assert.equal(304, c.status)
    assert.equal("", c.body)
    assert.equal(body, T.cache_zone("z").entries["GET http://example.com/w2"][""].body)
    local u = run(nil, { uri = "/w3", headers = { Range = "bytes=50-" } }, whole())
    assert.equal(416, u.status)
    assert.equal("bytes */10", u.headers["Content-Range"] or u.headers["content-range"])
    local other = run(nil, { uri = "/w4", headers = { ["If-None-Match"] = '"other"' } }, whole())
    assert.equal(200, other.status)
    assert.equal(body, other.body)
  end)

  it("asks again in full when a 304 carries another ETag, the next target after a refusal", function()
    T.upstream_targets("app", { "10.0.0.1:80", "10.0.0.2:80" })
    T.http_mock("^http://10%.0%.0%.1:80/", function() return nil, "connection refused" end)
    T.http_mock("^http://10%.0%.0%.2:80/", { status = 200, body = "v2-body",
      headers = { ETag = '"v2"', ["Cache-Control"] = "max-age=60", Date = date(proxy_now()) } })
    run(nil, { uri = "/f3", upstream = "app" }, fresh("v1-body", { ETag = '"v1"',
      ["Cache-Control"] = "max-age=0" }))
    local r = run(nil, { uri = "/f3", upstream = "app" }, { status = 304, addr = "10.0.0.1:80",
      headers = { ETag = '"v2"', ["Cache-Control"] = "max-age=60", Date = date(proxy_now()) } })
    assert.equal(200, r.status)
    assert.equal("v2-body", r.body)
    assert.equal('"v2"', r.headers["ETag"] or r.headers["etag"])
    assert.equal(2, #T.http_requests)
    assert.equal("http://10.0.0.2:80/f3", T.http_requests[2].url)
    assert.equal("example.com", T.http_requests[2].headers["host"])
    assert.is_nil(T.http_requests[2].headers["if-none-match"])
    -- Stored: a hit now.
    local hit = run(nil, { uri = "/f3", upstream = "app" })
    assert.equal("v2-body", hit.body)
    assert.matches("; hit", hit.headers["cache-status"])
  end)

  it("stores a full fetch after a 304 under the Vary value it sent, not the client's", function()
    -- A plugin after the cache sets Accept-Language from a cookie; the stale "de" variant is
    -- revalidated with en sent, the 304 names another ETag, and the full response fetched
    -- with en must not become the "de" variant.
    T.upstream_targets("app", { "10.0.0.2:80" })
    T.http_mock("^http://10%.0%.0%.2:80/", function(req)
      local l = req.headers["accept-language"]
      return { status = 200, body = "page-" .. l, headers = { ETag = '"' .. l .. '2"',
        ["Cache-Control"] = "max-age=60", Vary = "Accept-Language", Date = date(proxy_now()) } }
    end)
    local lang = { name = "lang", priority = 10, request = function(req)
      local l = (req:header("Cookie") or ""):match("lang=(%a+)")
      if l then req:set_header("Accept-Language", l) end
    end }
    local function get(cookie, answer)
      return T.run_chain({ { cache, { zone = "z" } }, { lang } }, { uri = "/rv", upstream = "app",
        headers = { Host = "example.com", ["Accept-Language"] = "de", Cookie = cookie } }, answer)
    end
    get(nil, fresh("page-de", { ETag = '"de1"', Vary = "Accept-Language",
      ["Cache-Control"] = "max-age=0" }))
    local r = get("lang=en", { status = 304, addr = "10.0.0.2:80", headers = { ETag = '"en1"',
      ["Cache-Control"] = "max-age=60", Date = date(proxy_now()) } })
    assert.equal("page-en", r.body)
    assert.equal("en", T.http_requests[#T.http_requests].headers["accept-language"])
    local de = get(nil, { status = 200, body = "page-de-new", headers = {
      ["Cache-Control"] = "max-age=60", Vary = "Accept-Language", Date = date(proxy_now()) } })
    assert.equal("page-de-new", de.body) -- the stale "de" variant revalidated, not the English page
  end)

  it("refreshes a key once at a time, also across workers", function()
    T.upstream_targets("app", { "10.0.0.2:80" })
    T.http_mock("^http://10%.0%.0%.2:80/", { status = 200, body = "new",
      headers = { ["Cache-Control"] = "max-age=60", Date = date(proxy_now()) } })
    local swr = { ["Cache-Control"] = "max-age=1, stale-while-revalidate=600", Age = "5" }
    run(nil, { uri = "/swr", upstream = "app" }, fresh("old", swr))
    -- Another worker's refresh runs: its marker is in the zone.
    local key = "GET http://example.com/swr"
    local z = require("proxy").cache.zone("z")
    z:put(key, "\0refreshing", "", 10)
    assert.equal("old", run(nil, { uri = "/swr", upstream = "app" }).body)
    assert.equal(0, #T.http_requests)
    -- It ended (its marker dropped): this worker refreshes, and drops its own marker after.
    z:put(key, "\0refreshing", "", -1)
    assert.equal("old", run(nil, { uri = "/swr", upstream = "app" }).body)
    assert.equal(1, #T.http_requests)
    assert.equal("new", run(nil, { uri = "/swr", upstream = "app" }).body)
    assert.is_nil(cache._refreshing[key])
    assert.is_nil(z:get(T.request({ phase = "request" }), key, "\0refreshing"))
  end)

  it("serves stale over the proxy's own 502 after a try got no answer", function()
    run(nil, { uri = "/f6" }, fresh("old", { ["Cache-Control"] = "max-age=1", Age = "5" }))
    local r = run(nil, { uri = "/f6", last_failure = { "reset", nil, "127.0.0.1:9" } },
      { status = 502, body = "proxy's own" })
    assert.equal(200, r.status)
    assert.equal("old", r.body)
    -- Forwarded (RFC 9211: not a hit), no status came back, RFC 9111 §4.2.4 alone allowed it.
    assert.equal("luaproxy; fwd=stale; ttl=-4; detail=disconnected", r.headers["cache-status"])
    -- The upstream's own 502 is its answer (no stale-if-error).
    local up = run(nil, { uri = "/f6" }, { status = 502, body = "upstream's" })
    assert.equal(502, up.status)
    -- must-revalidate forbids it.
    run(nil, { uri = "/f6m" }, fresh("old", { ["Cache-Control"] = "max-age=1, must-revalidate",
      Age = "5" }))
    local mr = run(nil, { uri = "/f6m", last_failure = { "connect", nil, "127.0.0.1:9" } },
      { status = 502, body = "proxy's own" })
    assert.equal(502, mr.status)
  end)

  it("answers only-if-cached misses with 504", function()
    local r = run(nil, { uri = "/o", headers = { ["Cache-Control"] = "only-if-cached" } })
    assert.equal(504, r.status)
    -- Nothing forwarded, nothing from the cache: neither fwd nor hit.
    assert.equal("luaproxy; detail=only-if-cached", r.headers["cache-status"])
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
    -- Forwarded: fwd=stale with the status the origin gave (RFC 9211), not hit.
    assert.equal("luaproxy; fwd=stale; fwd-status=503; ttl=-4; detail=stale-if-error",
      r.headers["cache-status"])
  end)

  it("says why a response over max_object_size was not stored, and counts it", function()
    T.cache_zones { z = { max_object_size = 4 } }
    local r = run(nil, { uri = "/big" }, fresh("12345", { ["Content-Length"] = "5" }))
    assert.equal("12345", r.body)
    assert.equal("luaproxy; fwd=uri-miss; fwd-status=200; detail=too-large", r.headers["cache-status"])
    assert.equal(1, T.cache_zone("z").counts.abandoned)
    assert.is_nil(T.cache_zone("z").entries["GET http://example.com/big"])
    r = run(nil, { uri = "/small" }, fresh("1234", { ["Content-Length"] = "4" }))
    assert.equal("luaproxy; fwd=uri-miss; fwd-status=200; stored; ttl=60", r.headers["cache-status"])
  end)

  it("shows ttl and Age in whole seconds: lifetime less the Age sent (RFC 9111 §4.2.3)", function()
    -- The origin's Date has whole seconds: a response a fraction of a second after it is
    -- 0.x seconds old, which is Age 0, and ttl=60 for max-age=60 (not 59).
    T.advance(1.75 - proxy_now() % 1) -- the clock at x.75
    local h = { ["Cache-Control"] = "max-age=60", Date = date(proxy_now()) }
    local r = run(nil, { uri = "/w" }, { status = 200, headers = h, body = "w" })
    assert.equal("luaproxy; fwd=uri-miss; fwd-status=200; stored; ttl=60", r.headers["cache-status"])
    local hit = run(nil, { uri = "/w" })
    assert.equal("0", hit.headers["age"])
    assert.equal("luaproxy; hit; ttl=60", hit.headers["cache-status"])
    run(nil, { uri = "/w0" }, { status = 200, body = "z",
      headers = { ["Cache-Control"] = "max-age=0", ETag = '"z"' } })
    local z = run(nil, { uri = "/w0" }, { status = 304, headers = { ETag = '"z"' } })
    assert.matches("fwd=stale; fwd%-status=304", z.headers["cache-status"])
    assert.matches("ttl=0$", z.headers["cache-status"])
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
    -- Two Vary variants are two responses (the key's Vary marker is not one).
    for _, lang in ipairs({ "fr", "de" }) do
      run(nil, { uri = "/gv", headers = { ["Accept-Language"] = lang } },
        fresh(lang, { Vary = "Accept-Language" }))
    end
    assert.equal(2, require("proxy").cache.purge("z", "GET http://example.com/gv"))
  end)

  it("encodes heads losslessly", function()
    local meta = { status = 200, ttl = 60, etag = '"x"', must_revalidate = false }
    local h = { ["content-type"] = "text/plain", ["set-cookie"] = { "a=1", "b=2" } }
    local m2, h2, c2 = cache._decode(cache._encode(meta, h))
    assert.same(meta, m2)
    assert.same(h, h2)
    assert.same({}, c2)
    -- Field names keep the upstream's case (hits replay it); lookups stay lower-case.
    local _, h3, c3 = cache._decode(cache._encode(meta, h, { ["content-type"] = "Content-Type" }))
    assert.same(h, h3)
    assert.same({ ["content-type"] = "Content-Type" }, c3)
  end)

  it("writes a policy meta's lines as encode does (encode_meta: every key policy.meta sets)", function()
    local policy = require "luaproxy.cache.policy"
    local full = policy.meta(200, { date = "Sun, 06 Nov 1994 08:49:37 GMT", age = "3",
      etag = '"x"', ["last-modified"] = "Sat, 05 Nov 1994 08:49:37 GMT",
      ["cache-control"] = "max-age=60, must-revalidate, stale-while-revalidate=5, stale-if-error=9" },
      784111770.25, 784111777.5, {})
    local bare = policy.meta(404, {}, 1000.5, 1001.25, { default_ttl = { [404] = 10 } })
    for _, meta in ipairs({ full, bare }) do
      local m2 = cache._decode(cache._encode_meta(meta))
      assert.same(meta, m2)
      assert.same(cache._decode(cache._encode(meta, {})), m2)
    end
    assert.equal(13, (function() local n = 0 for _ in pairs(full) do n = n + 1 end return n end)())
  end)

  it("reads every meta number back exactly (integral ones in decimal, times as binary doubles)", function()
    local policy = require "luaproxy.cache.policy"
    -- proxy.now()'s nanosecond fractions, a Lua TTL with a fraction (cache_ttl plus the age),
    -- and integers past 2^31.
    local meta = policy.meta(200, { ["cache-control"] = "max-age=4294967296" },
      1733389012.123456789, 1733389012.987654321, {})
    meta.ttl = 60.000123456789
    local m2 = cache._decode(cache._encode_meta(meta))
    assert.same(meta, m2)
    assert.equal(meta.request_time, m2.request_time)
    assert.equal(meta.response_time, m2.response_time)
    meta.ttl = 4294967296
    local text = cache._encode_meta(meta)
    assert.truthy(text:find("\nn ttl\t4294967296\n", 1, true))
    assert.same(meta, cache._decode(text))
    assert.same(meta, cache._decode(cache._encode(meta, {})))
  end)

  it("decodes heads of its own layout only (an older process's is a miss, never misread)", function()
    local l1 = "L1\nn status\t200\nn request_time\t0x1.9c4d5ep+30\nh content-type\ttext/plain\n"
    assert.is_nil(cache._decode(l1))
    assert.is_nil(cache._decode("L2\n"))
    -- Time bytes that look like lines stay times.
    local meta = { status = 200, request_time = 10 + 2 ^ -42, response_time = 2 ^ 30 + 0.5 }
    local head = cache._encode(meta, { a = "1" })
    local m2, h2 = cache._decode(head)
    assert.same(meta, m2)
    assert.same({ a = "1" }, h2)
    local times = head:sub(3, 18)
    local nl = "\n" .. "h x\t"
    local forged = "L2" .. nl .. times:sub(#nl + 1) .. head:sub(19)
    local m3, h3 = cache._decode(forged)
    assert.same({ a = "1" }, h3)
    assert.equal(200, m3.status)
  end)

  it("stores the fields the engine writes (store_fields) as the general path would", function()
    run(nil, { uri = "/sf" }, { status = 200, headers = { ["cache-control"] = "max-age=60",
      ["content-type"] = "text/plain", upgrade = "h2c", ["x-a"] = { "1", "2" } }, body = "sf" })
    local e = T.cache_zone("z").entries["GET http://example.com/sf"][""]
    local _, h = cache._decode(e.head)
    assert.same({ ["cache-control"] = "max-age=60", ["content-type"] = "text/plain",
      ["x-a"] = { "1", "2" } }, h)
  end)

  it("checks its schema", function()
    assert.has_error(function() T.conf(cache, {}) end)
    assert.has_error(function() T.conf(cache, { zone = "z", cache_set_cookie = "yes" }) end)
    assert.has_error(function() T.conf(cache, { zone = "z", default_ttl = { [99] = 1 } }) end)
    -- statuses the policy never stores are refused, with the reason (new-user trial)
    local ok, err = pcall(T.conf, cache, { zone = "z", statuses = { 200, 206 } })
    assert.is_false(ok)
    assert.matches("206 is never stored", tostring(err))
    assert.has_error(function() T.conf(cache, { zone = "z", statuses = { 304 } }) end)
    assert.has_error(function() T.conf(cache, { zone = "z", default_ttl = { [206] = 5 } }) end)
    local c = T.conf(cache, { zone = "z", default_ttl = { [200] = 10 } })
    assert.equal(10, c._opts.default_ttl[200])
  end)

  it("bounds lifetimes: absurd ones refused or clamped, a hit's ttl= always a number", function()
    -- new-user trial: default_ttl 1/0 or 1e300 and stale_if_error = 1e300 were accepted,
    -- and a hit then said ttl=-9223372036854775808
    for _, bad in ipairs({ { default_ttl = { [200] = 1 / 0 } }, { default_ttl = { [200] = 1e300 } },
      { default_ttl = { [200] = 0 / 0 } }, { stale_if_error = 1e300 },
      { stale_while_revalidate = 1e300 }, { keep = 1e300 }, { lock_timeout = 1e300 } }) do
      bad.zone = "z"
      assert.has_error(function() T.conf(cache, bad) end)
    end
    assert.equal(2147483648, T.conf(cache, { zone = "z", default_ttl = { [200] = 2147483648 } })
      ._opts.default_ttl[200])
    -- req:cache_ttl: over 2^31 is 2^31 (the miss and the hit agree), infinite is an error
    local refused
    local ttl = { name = "ttl", priority = 100, response = function(req)
      refused = not pcall(req.cache_ttl, req, 1 / 0)
      req:cache_ttl(1e19)
    end }
    local miss = T.run_chain({ { ttl }, { cache, { zone = "z" } } },
      { uri = "/big", headers = { Host = "example.com" } }, { status = 200, body = "t" })
    assert.is_true(refused)
    assert.equal("luaproxy; fwd=uri-miss; fwd-status=200; stored; ttl=2147483648",
      miss.headers["Cache-Status"])
    assert.equal("luaproxy; hit; ttl=2147483648", run(nil, { uri = "/big" }).headers["cache-status"])
    -- a head stored with an unbounded TTL (an older process's): the hit's ttl= stays a number
    local meta = { status = 200, request_time = proxy_now(), response_time = proxy_now(),
      age_value = 0, ttl = 1e300, ttl_source = "lua", must_revalidate = false, no_cache = false }
    T.cache_zone("z"):put("GET http://example.com/old", "", cache._encode(meta, {}), 60, "o")
    local old = run(nil, { uri = "/old" })
    assert.equal("o", old.body)
    assert.equal("luaproxy; hit; ttl=1000000000000000", old.headers["cache-status"])
  end)

  it("counts the age from when the request went upstream, not from a lock wait", function()
    -- RFC 9111 §4.2.3 request_time: another fill holds the key's lock and never ends; this
    -- request waits lock_timeout (6 s), then goes upstream itself. The wait is not the
    -- response's age (new-user trial: 10 requests waiting 6 s stored ttl=289 of 300).
    T.cache_zone("z").locks["GET http://example.com/w"] = {} -- another request's fill
    local answer = { status = 200, body = "w",
      headers = { ["Cache-Control"] = "max-age=300", Date = date(proxy_now() + 6) } }
    local r = run({ lock_timeout = 6 }, { uri = "/w" }, answer)
    assert.equal("w", r.body)
    assert.equal("luaproxy; fwd=uri-miss; fwd-status=200; stored; ttl=300", r.headers["Cache-Status"])
    T.cache_zone("z").locks["GET http://example.com/w"] = nil
    local hit = run(nil, { uri = "/w" })
    assert.equal("luaproxy; hit; ttl=300", hit.headers["cache-status"])
    assert.equal("0", hit.headers["age"])
  end)

  it("warns when routes to different upstreams share a zone with the default key", function()
    -- The default key has no upstream in it: a canary route to `beta` and `/` to `stable`
    -- sharing one zone serve each other's entries. Said at load, in the load's warnings.
    local function warnings(routes, plugins)
      package.loaded["luaproxy.runtime"] = nil
      local runtime = require "luaproxy.runtime"
      local cfg = { upstreams = { stable = { targets = { "127.0.0.1:1" } },
        beta = { targets = { "127.0.0.1:2" } } }, cache = { zones = { z = { memory = "1m" } } },
        routes = routes, plugins = plugins }
      local state = assert(runtime.load(cfg, { plugin_path = "plugins/?.lua" }))
      local out = {}
      for _, w in ipairs(state.warnings) do
        if w:find("cache zone", 1, true) then out[#out + 1] = w end
      end
      return out
    end
    local function keyed() return "k" end
    local function route(up, extra, name)
      local plugins = { { name = "cache", zone = "z", cache_key = extra } }
      return { name = name, match = { prefix = "/" }, upstream = up, plugins = plugins }
    end
    local w = warnings { route("beta", nil, "canary"), route("stable") }
    assert.equal(1, #w)
    assert.matches('cache zone "z"', w[1], 1, true)
    assert.matches('routes[1] ("canary") -> upstream "beta"', w[1], 1, true)
    assert.matches('routes[2] -> upstream "stable"', w[1], 1, true)
    assert.matches("Routes sharing a zone", w[1], 1, true)
    -- the same upstream, or keys of the site's own: nothing to say
    assert.same({}, warnings { route("stable"), route("stable") })
    assert.same({}, warnings { route("beta", keyed), route("stable", keyed) })
    -- one route whose upstream a plugin chooses (ab), or a global cache entry
    local ab = { name = "ab", arms = { { name = "a", upstream = "stable", weight = 1 },
      { name = "b", upstream = "beta", weight = 1 } } }
    local one = route("stable")
    table.insert(one.plugins, 1, ab)
    w = warnings { one }
    assert.equal(1, #w)
    assert.matches('one plugin "ab" chooses', w[1], 1, true)
    w = warnings({ { match = { prefix = "/b" }, upstream = "beta" },
      { match = { prefix = "/" }, upstream = "stable" } }, { { name = "cache", zone = "z" } })
    assert.equal(1, #w)
  end)

  describe("with an L2 tier in Redis", function()
    local srv
    local l2 = { redis = { port = 6391 }, ttl_max = 120 }
    before_each(function()
      srv = T.redis_server({ port = 6391 })
      cache._l2_forget_failures()
    end)
    after_each(function() srv:stop() end)

    -- Seconds key has left in the fake Redis (nil: no such key, false: no expiry).
    local function ttl_of(key)
      local e = srv:db(0)[key]
      if not e then return nil end
      return e.expires and (e.expires - srv.now()) or false
    end

    -- Another proxy: the same Redis, an empty zone.
    local function other_proxy() T.cache_zones { z = {} } end

    it("copies a stored answer to Redis, and another proxy's miss is served from it", function()
      local first = run({ l2 = l2 }, { uri = "/a" }, fresh("v1", { ETag = '"e"' }))
      assert.matches("stored", first.headers["Cache-Status"])
      local ttl = ttl_of("luaproxy:cache:z:GET http://example.com/a")
      assert.is_true(ttl > 55 and ttl <= 60, "ttl bounded by the freshness: " .. tostring(ttl))
      other_proxy()
      local second = run({ l2 = l2 }, { uri = "/a" }, { status = 500, body = "must not be asked" })
      assert.is_true(second.responded)
      assert.equal("v1", second.body)
      assert.equal('"e"', second.headers["ETag"])
      assert.matches("; hit; ttl=%d+; detail=l2", second.headers["cache-status"])
      assert.equal(1, T.metric("cache_l2_operations_total", { zone = "z", result = "hit" }))
      assert.equal(1, T.metric("cache_l2_operations_total", { zone = "z", result = "stored" }))
      -- Then a memory hit there (no L2 detail).
      local third = run({ l2 = l2 }, { uri = "/a" }, { status = 500, body = "must not be asked" })
      assert.matches("; hit; ttl=%d+$", third.headers["cache-status"])
    end)

    it("bounds the Redis TTL by ttl_max, and keeps large bodies out", function()
      run({ l2 = { redis = { port = 6391 }, ttl_max = 5 } }, { uri = "/b" }, fresh("v1"))
      assert.equal(5, ttl_of("luaproxy:cache:z:GET http://example.com/b"))
      run({ l2 = { redis = { port = 6391 }, max_object_size = 3 } }, { uri = "/c" },
        fresh("four"))
      assert.is_nil(ttl_of("luaproxy:cache:z:GET http://example.com/c"))
    end)

    it("keeps Vary: a variant is served only to requests it belongs to", function()
      run({ l2 = l2 }, { uri = "/v", headers = { ["Accept-Language"] = "en" } },
        fresh("english", { Vary = "Accept-Language" }))
      other_proxy()
      local fr = run({ l2 = l2 }, { uri = "/v", headers = { ["Accept-Language"] = "fr" } },
        fresh("french", { Vary = "Accept-Language" }))
      assert.equal("french", fr.body)
      assert.matches("fwd=uri%-miss", fr.headers["Cache-Status"])
      other_proxy()
      local en = run({ l2 = l2 }, { uri = "/v", headers = { ["Accept-Language"] = "en" } },
        { status = 500, body = "must not be asked" })
      assert.equal("english", en.body)
      assert.matches("detail=l2", en.headers["cache-status"])
    end)

    it("orphans a varying key's variants when its marker goes (invalidation)", function()
      local en = { ["Accept-Language"] = "en" }
      local fr = { ["Accept-Language"] = "fr" }
      run({ l2 = l2 }, { uri = "/g", headers = en }, fresh("english 1", { Vary = "Accept-Language" }))
      local marker = srv:db(0)["luaproxy:cache:z:GET http://example.com/g"]
      assert.matches("^LPV2\n%x+\nAccept%-Language$", marker.value)
      -- Another proxy stores the fr variant under the same marker (its generation kept).
      other_proxy()
      run({ l2 = l2 }, { uri = "/g", headers = fr }, fresh("french 1", { Vary = "Accept-Language" }))
      assert.equal(marker.value, srv:db(0)["luaproxy:cache:z:GET http://example.com/g"].value)
      other_proxy()
      assert.equal("english 1", run({ l2 = l2 }, { uri = "/g", headers = en },
        { status = 500, body = "must not be asked" }).body)
      -- An unsafe method: the marker goes; the next store makes a new one, and the variants
      -- stored before are not reachable through it.
      run({ l2 = l2 }, { uri = "/g", method = "PUT" }, { status = 204 })
      assert.is_nil(srv:db(0)["luaproxy:cache:z:GET http://example.com/g"])
      other_proxy()
      run({ l2 = l2 }, { uri = "/g", headers = fr }, fresh("french 2", { Vary = "Accept-Language" }))
      assert.are_not.equal(marker.value,
        srv:db(0)["luaproxy:cache:z:GET http://example.com/g"].value)
      other_proxy()
      local r = run({ l2 = l2 }, { uri = "/g", headers = en },
        fresh("english 2", { Vary = "Accept-Language" }))
      assert.equal("english 2", r.body)
      assert.matches("fwd=uri%-miss", r.headers["Cache-Status"])
      other_proxy()
      assert.equal("french 2", run({ l2 = l2 }, { uri = "/g", headers = fr },
        { status = 500, body = "must not be asked" }).body)
    end)

    it("replaces the marker when the Vary field changes", function()
      run({ l2 = l2 }, { uri = "/w", headers = { ["Accept-Language"] = "en" } },
        fresh("by language", { Vary = "Accept-Language" }))
      other_proxy()
      run({ l2 = l2 }, { uri = "/w", headers = { ["Accept-Language"] = "de", Accept = "a/b" } },
        fresh("by type", { Vary = "Accept" }))
      assert.matches("\nAccept$", srv:db(0)["luaproxy:cache:z:GET http://example.com/w"].value)
      other_proxy()
      local r = run({ l2 = l2 }, { uri = "/w", headers = { ["Accept-Language"] = "fr", Accept = "a/b" } },
        { status = 500, body = "must not be asked" })
      assert.equal("by type", r.body)
    end)

    it("deletes an unsafe method's invalidated URIs in Redis too", function()
      run({ l2 = l2 }, { uri = "/u" }, fresh("u"))
      assert.is_not_nil(ttl_of("luaproxy:cache:z:GET http://example.com/u"))
      run({ l2 = l2 }, { uri = "/u", method = "POST" }, { status = 200, body = "posted" })
      assert.is_nil(ttl_of("luaproxy:cache:z:GET http://example.com/u"))
      other_proxy()
      local r = run({ l2 = l2 }, { uri = "/u" }, fresh("u2"))
      assert.equal("u2", r.body)
    end)

    it("skips Redis when it is down: proxied as usual, one log line, counted", function()
      srv:stop()
      for i = 1, 3 do
        local r = run({ l2 = l2 }, { uri = "/d" .. i }, fresh("x" .. i))
        assert.equal("x" .. i, r.body)
      end
      assert.equal(1, #T.log_lines("warn"))
      assert.matches("^cache: Redis L2 127.0.0.1:6391 failed", T.log_lines("warn")[1])
      assert.is_true(T.metric("cache_l2_operations_total", { zone = "z", result = "failed" }) >= 3)
    end)
  end)
end)
