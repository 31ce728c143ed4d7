-- luaproxy.cache.policy: the RFC 9111 / 9110 / 9211 / 5861 decisions the cache plugin calls.
-- Section numbers are RFC 9111's unless another RFC is named.
local P = require "luaproxy.cache.policy"

local T0 = 1700000000 -- Tue, 14 Nov 2023 22:13:20 GMT
local function D(t) return P.http_date(t) end

-- A meta for a response received at T0 (no request delay) with these headers.
local function meta(h, status, opts, req_t, resp_t)
  return P.meta(status or 200, h, req_t or T0, resp_t or T0, opts)
end

local function eval(h, at, req_h, opts, mopts)
  local m = meta(h, 200, mopts)
  return P.evaluate(m, P.request_directives(req_h or {}), at, opts)
end

describe("luaproxy.cache.policy", function()
  describe("HTTP dates (RFC 9110 §5.6.7)", function()
    it("parses the three formats to the same instant", function()
      assert.equal(784111777, P.parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"))
      assert.equal(784111777, P.parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT", T0))
      assert.equal(784111777, P.parse_http_date("Sun Nov  6 08:49:37 1994"))
      assert.equal(784111777, P.parse_http_date("Sun Nov 06 08:49:37 1994"))
    end)

    it("reads an RFC 850 year more than 50 years ahead as the past century's", function()
      local now = P.parse_http_date("Mon, 01 Jan 2024 00:00:00 GMT")
      assert.equal(P.parse_http_date("Sat, 01 Jan 2050 00:00:00 GMT"),
        P.parse_http_date("Saturday, 01-Jan-50 00:00:00 GMT", now))
      assert.equal(P.parse_http_date("Sun, 01 Jan 1995 00:00:00 GMT"),
        P.parse_http_date("Sunday, 01-Jan-95 00:00:00 GMT", now))
      assert.equal(P.parse_http_date("Fri, 01 Jan 2010 00:00:00 GMT"),
        P.parse_http_date("Friday, 01-Jan-10 00:00:00 GMT", now))
    end)

    it("formats IMF-fixdate and round-trips", function()
      assert.equal("Thu, 01 Jan 1970 00:00:00 GMT", P.http_date(0))
      assert.equal("Tue, 14 Nov 2023 22:13:20 GMT", P.http_date(T0))
      assert.equal("Tue, 29 Feb 2000 12:00:00 GMT", P.http_date(951825600))
      for _, t in ipairs({ 0, 68169600, 951825600, T0, 4102444799, 253402300799 }) do
        assert.equal(t, P.parse_http_date(P.http_date(t)))
      end
      assert.equal(T0, P.parse_http_date(P.http_date(T0 + 0.7)))
    end)

    it("accepts surrounding whitespace and a leap second", function()
      assert.equal(784111777, P.parse_http_date("  Sun, 06 Nov 1994 08:49:37 GMT\t"))
      assert.is_number(P.parse_http_date("Sat, 31 Dec 2016 23:59:60 GMT"))
    end)

    it("refuses invalid dates", function()
      for _, s in ipairs({
        "0", "", "-1", "now", "Thu, 18 Aug 2050 02:01:18 UTC", "Thu, 18 Aug 50 02:01:18 GMT",
        "Thu 18 Aug 2050 02:01:18 GMT", "Thu, 18  Aug  2050 02:01:18 GMT",
        "Thu, 18-Aug-2050 02:01:18 GMT", "Thu, 18 Aug 2050 02.01.18 GMT",
        "Thu, 18 Aug 2050 2:01:18 GMT", "THU, 18 Aug 2050 02:01:18 GMT",
        "Thu, 18 AUG 2050 02:01:18 GMT", "Thu, 18 Aug 2050 02:01:18 gMT",
        "Thu, 31 Feb 2050 02:01:18 GMT", "Thu, 29 Feb 2023 02:01:18 GMT",
        "Thu, 18 Aug 2050 24:00:00 GMT", "Thu, 18 Aug 2050 23:60:00 GMT",
        "Thu, 18 Aug 2050 23:00:61 GMT", "Xyz, 18 Aug 2050 02:01:18 GMT",
        "Thu, 00 Aug 2050 02:01:18 GMT", "Thursday, 18 Aug 2050 02:01:18 GMT",
        "Thu, 18-Aug-50 02:01:18 GMT", "Thu Aug 18 02:01:18 2050 GMT",
        "Sun, 06 Nov 1994 08:49:37 GMT" .. string.rep(" ", 100),
      }) do
        assert.is_nil(P.parse_http_date(s), s)
      end
      assert.is_nil(P.parse_http_date(nil))
      assert.is_nil(P.parse_http_date(12))
      assert.is_number(P.parse_http_date("Tue, 29 Feb 2000 02:01:18 GMT"))
    end)
  end)

  describe("parse_cache_control (§5.2)", function()
    local cc = P.parse_cache_control

    it("reads boolean, token, quoted and numeric directives", function()
      assert.same({ ["no-store"] = true }, cc("no-store"))
      assert.same({ ["max-age"] = 60, public = true }, cc("max-age=60, public"))
      assert.same({ ["max-age"] = 3600 }, cc('max-age="3600"'))
      assert.same({ ["no-cache"] = "Set-Cookie, X-A" }, cc('no-cache="Set-Cookie, X-A"'))
      assert.same({ ext = 'a"b\\c' }, cc('ext="a\\"b\\\\c"'))
      assert.same({ ext = "tok" }, cc("ext=tok"))
      assert.same({ ["max-stale"] = true }, cc("max-stale"))
    end)

    it("lower-cases directive names and keeps values", function()
      assert.same({ ["max-age"] = 5, ["no-cache"] = true, private = "X-Foo" },
        cc('MAX-AGE=5, No-Cache, PRIVATE="X-Foo"'))
    end)

    it("tolerates optional whitespace and empty list members", function()
      assert.same({ ["max-age"] = 5, public = true }, cc("  ,, max-age=5 ,\t, public ,"))
      assert.same({}, cc(""))
      assert.same({}, cc(" , , "))
    end)

    it("keeps the first of duplicate directives (§4.2.1)", function()
      assert.same({ ["max-age"] = 1800 }, cc("max-age=1800, max-age=1"))
      assert.same({ ["max-age"] = 1 }, cc("max-age=1, max-age=1800"))
      assert.same({ ["max-age"] = 1800 }, cc({ "max-age=1800", "max-age=1" }))
    end)

    it("joins several field lines", function()
      assert.same({ ["max-age"] = 5, ["no-cache"] = true }, cc({ "max-age=5", "no-cache" }))
    end)

    it("does not look inside quoted strings", function()
      assert.same({ extension = "max-age=3600", ["max-age"] = 1 },
        cc('extension="max-age=3600", max-age=1'))
      assert.same({ ["max-age"] = 1, extension = "max-age=3600, public" },
        cc('max-age=1, extension="max-age=3600, public"'))
    end)

    it("turns delta-seconds into numbers, leading zeros allowed, clamped to 2^31", function()
      assert.equal(3600, cc("max-age=003600")["max-age"])
      assert.equal(0, cc("max-age=0")["max-age"])
      assert.equal(0, cc("max-age=0000")["max-age"])
      assert.equal(2147483648, cc("max-age=2147483648")["max-age"])
      assert.equal(2147483648, cc("max-age=99999999999999999999999")["max-age"])
      assert.equal(2147483647, cc("s-maxage=2147483647")["s-maxage"])
      for _, d in ipairs({ "s-maxage", "min-fresh", "max-stale", "stale-while-revalidate",
        "stale-if-error" }) do
        assert.equal(7, cc(d .. "=7")[d])
      end
    end)

    it("keeps invalid numeric values as strings", function()
      for _, v in ipairs({ "-1", "3600.0", "3600.5", "a3600", "3600a", "'3600'", "+5", "0x10" }) do
        assert.equal(v, cc("max-age=" .. v)["max-age"], v)
      end
      assert.equal("", cc('max-age=""')["max-age"])
    end)

    it("keeps a malformed member's name with the invalid value ''", function()
      assert.equal("", cc("max-age =3600")["max-age"])
      assert.equal("", cc("max-age= 3600")["max-age"])
      assert.equal("", cc("max-age=3600 3600, public")["max-age"])
      assert.is_true(cc("max-age=3600 3600, public").public)
      assert.equal("", cc('no-cache="unterminated, max-age=5')["no-cache"])
      assert.is_nil(cc('no-cache="unterminated, max-age=5')["max-age"])
      assert.equal("", cc("no-store junk")["no-store"])
    end)

    it("skips members that do not start with a token", function()
      assert.same({ public = true }, cc('"quoted, still", =5, public'))
      assert.same({ ["max-age"] = 2 }, cc("@@@, max-age=2"))
    end)

    it("ignores what is not a string", function()
      assert.same({}, cc(nil))
      assert.same({}, cc(5))
      assert.same({ public = true }, cc({ "public", 7 }))
    end)

    it("stays linear on thousands of directives and huge values", function()
      local parts = {}
      for i = 1, 20000 do parts[i] = "x-ext" .. i .. "=" .. i end
      parts[#parts + 1] = "no-store"
      local t0 = os.clock()
      local r = cc(table.concat(parts, ", "))
      assert.is_true(r["no-store"])
      assert.equal(5, r["x-ext5"] and 5)
      local big = 'a="' .. string.rep("x,", 200000) .. '", max-age=9'
      assert.equal(9, cc(big)["max-age"])
      assert.equal(9, cc(string.rep(" ", 300000) .. "max-age=9")["max-age"])
      assert.equal("", cc("max-age=5" .. string.rep(" ", 300000) .. "x")["max-age"])
      local unterminated = 'a="' .. string.rep("\\x", 200000)
      assert.same({ a = "" }, cc(unterminated))
      assert.is_true(os.clock() - t0 < 2)
    end)
  end)

  describe("field_names", function()
    it("lower-cases and splits the names of a qualified directive", function()
      assert.same({ "set-cookie", "x-a" }, P.field_names("Set-Cookie, X-A"))
      assert.same({ "a" }, P.field_names("  a ,, "))
      assert.same({}, P.field_names(true))
    end)
  end)

  describe("request_directives (§5.2.1)", function()
    local rd = P.request_directives

    it("reads each directive", function()
      local d = rd({ ["cache-control"] = "no-store, no-cache, only-if-cached, max-age=5, " ..
        "max-stale=10, min-fresh=3, stale-if-error=20" })
      assert.is_true(d.no_store)
      assert.is_true(d.no_cache)
      assert.is_true(d.only_if_cached)
      assert.equal(5, d.max_age)
      assert.equal(10, d.max_stale)
      assert.equal(3, d.min_fresh)
      assert.equal(20, d.stale_if_error)
    end)

    it("has nothing set for a plain request", function()
      local d = rd({})
      assert.is_false(d.no_store)
      assert.is_false(d.no_cache)
      assert.is_false(d.only_if_cached)
      assert.is_nil(d.max_age)
      assert.is_nil(d.max_stale)
      assert.is_nil(d.min_fresh)
      assert.same({}, rd(nil).cc)
    end)

    it("max-stale without a value accepts any staleness", function()
      assert.is_true(rd({ ["cache-control"] = "max-stale" }).max_stale)
      assert.is_nil(rd({ ["cache-control"] = "max-stale=abc" }).max_stale)
    end)

    it("reads an invalid max-age as 0 and ignores an invalid min-fresh", function()
      assert.equal(0, rd({ ["cache-control"] = "max-age=abc" }).max_age)
      assert.equal(0, rd({ ["cache-control"] = "max-age" }).max_age)
      assert.is_nil(rd({ ["cache-control"] = "min-fresh=-1" }).min_fresh)
    end)

    it("honours Pragma: no-cache only without Cache-Control (§5.4)", function()
      assert.is_true(rd({ pragma = "no-cache" }).no_cache)
      assert.is_true(rd({ pragma = "foo, No-Cache" }).no_cache)
      assert.is_true(rd({ pragma = { "foo", "no-cache" } }).no_cache)
      assert.is_false(rd({ pragma = "no-cache", ["cache-control"] = "max-age=10" }).no_cache)
      assert.is_false(rd({ pragma = "no-cache-x" }).no_cache)
    end)
  end)

  describe("freshness_lifetime (§4.2.1)", function()
    local fl = P.freshness_lifetime

    it("prefers s-maxage in a shared cache, then max-age, then Expires", function()
      local h = { ["cache-control"] = "s-maxage=10, max-age=20", expires = D(T0 + 30), date = D(T0) }
      assert.same({ 10, "s-maxage" }, { fl(200, h) })
      assert.same({ 20, "max-age" }, { fl(200, h, { shared = false }) })
      h["cache-control"] = "max-age=20"
      assert.same({ 20, "max-age" }, { fl(200, h) })
      h["cache-control"] = nil
      assert.same({ 30, "expires" }, { fl(200, h) })
    end)

    it("ignores Expires when max-age is present, even max-age=0 (§5.3)", function()
      assert.same({ 0, "max-age" },
        { fl(200, { ["cache-control"] = "max-age=0", expires = D(T0 + 100), date = D(T0) }) })
    end)

    it("reads an invalid max-age or s-maxage as stale (§4.2.1)", function()
      assert.same({ 0, "max-age (invalid)" }, { fl(200, { ["cache-control"] = "max-age=1.5" }) })
      assert.same({ 0, "max-age (invalid)" }, { fl(200, { ["cache-control"] = "max-age" }) })
      assert.same({ 0, "s-maxage (invalid)" },
        { fl(200, { ["cache-control"] = "s-maxage=x, max-age=60" }) })
      assert.same({ 60, "max-age" },
        { fl(200, { ["cache-control"] = "s-maxage=x, max-age=60" }, { shared = false }) })
    end)

    it("computes Expires minus Date, never negative", function()
      assert.same({ 100, "expires" }, { fl(200, { expires = D(T0 + 100), date = D(T0) }) })
      assert.same({ 0, "expires" }, { fl(200, { expires = D(T0 - 100), date = D(T0) }) })
      assert.same({ 100, "expires" },
        { fl(200, { expires = D(T0 + 100), date = "Sunday, 14-Nov-23 22:13:20 GMT" }) })
    end)

    it("uses the time received when Date is absent or invalid", function()
      assert.same({ 50, "expires" }, { fl(200, { expires = D(T0 + 100) }, { response_time = T0 + 50 }) })
      assert.same({ 50, "expires" },
        { fl(200, { expires = D(T0 + 100), date = "garbage" }, { response_time = T0 + 50 }) })
      assert.same({ 0, "expires (no date)" }, { fl(200, { expires = D(T0 + 100) }) })
    end)

    it("reads an invalid Expires, 0 above all, as already expired (§5.3)", function()
      for _, v in ipairs({ "0", "-1", "never", "", "Thu, 18 Aug 2050 02:01:18 UTC" }) do
        assert.same({ 0, "expires (invalid)" }, { fl(200, { expires = v, date = D(T0) }) }, v)
      end
    end)

    it("uses the first of several Expires lines", function()
      assert.same({ 100, "expires" },
        { fl(200, { expires = { D(T0 + 100), D(T0 + 9000) }, date = D(T0) }) })
    end)

    it("gives nothing without freshness information, heuristic off by default", function()
      assert.same({ nil, "none" }, { fl(200, { ["last-modified"] = D(T0 - 1000), date = D(T0) }) })
      assert.same({ nil, "none" }, { fl(200, {}) })
    end)

    it("applies a per-status default TTL when nothing explicit is given", function()
      local o = { default_ttl = { [200] = 600, [404] = 30 } }
      assert.same({ 600, "default_ttl" }, { fl(200, {}, o) })
      assert.same({ 30, "default_ttl" }, { fl(404, {}, o) })
      assert.same({ nil, "none" }, { fl(302, {}, o) })
      assert.same({ 5, "max-age" }, { fl(200, { ["cache-control"] = "max-age=5" }, o) })
    end)

    it("applies heuristic freshness when enabled: 10% of Date - Last-Modified, capped", function()
      local h = { ["last-modified"] = D(T0 - 1000), date = D(T0) }
      assert.same({ 100, "heuristic" }, { fl(200, h, { heuristic = true }) })
      assert.same({ 500, "heuristic" }, { fl(200, h, { heuristic = 0.5 }) })
      assert.same({ 50, "heuristic" }, { fl(200, h, { heuristic = { fraction = 0.5, max = 50 } }) })
      local old = { ["last-modified"] = D(T0 - 1e8), date = D(T0) }
      assert.same({ 86400, "heuristic" }, { fl(200, old, { heuristic = true }) })
    end)

    it("uses heuristics only for heuristically cacheable statuses or public (§4.2.2)", function()
      local h = { ["last-modified"] = D(T0 - 1000), date = D(T0) }
      for _, s in ipairs({ 200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501 }) do
        assert.same({ 100, "heuristic" }, { fl(s, h, { heuristic = true }) }, s)
      end
      for _, s in ipairs({ 201, 302, 303, 307, 400, 403, 500, 502, 503 }) do
        assert.same({ nil, "none" }, { fl(s, h, { heuristic = true }) }, s)
      end
      h["cache-control"] = "public"
      assert.same({ 100, "heuristic" }, { fl(302, h, { heuristic = true }) })
    end)

    it("no heuristic when Last-Modified is invalid or not before Date", function()
      assert.same({ nil, "none" },
        { fl(200, { ["last-modified"] = "0", date = D(T0) }, { heuristic = true }) })
      assert.same({ nil, "none" },
        { fl(200, { ["last-modified"] = D(T0 + 10), date = D(T0) }, { heuristic = true }) })
    end)
  end)

  describe("storable (§3)", function()
    local function st(status, rs, rq, opts, method)
      return P.storable(method or "GET", status, rq or {}, rs, opts)
    end
    local MA = { ["cache-control"] = "max-age=60" }

    it("stores GET responses with explicit freshness", function()
      assert.same({ true, "max-age" }, { st(200, MA) })
      assert.same({ true, "expires" }, { st(200, { expires = D(T0) }) })
      assert.same({ true, "s-maxage" }, { st(200, { ["cache-control"] = "s-maxage=5" }) })
      assert.same({ true, "public" }, { st(200, { ["cache-control"] = "public" }) })
    end)

    it("stores only GET (HEAD is answered from GET entries)", function()
      for _, m in ipairs({ "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "FOO" }) do
        assert.same({ false, "method" }, { st(200, MA, {}, nil, m) }, m)
      end
      assert.equal("GET", P.lookup_method("GET"))
      assert.equal("GET", P.lookup_method("HEAD"))
      assert.is_nil(P.lookup_method("POST"))
    end)

    it("stores any final status with explicit freshness, but not 1xx, 206, 304", function()
      for _, s in ipairs({ 200, 201, 302, 303, 307, 400, 403, 500, 502, 503, 599, 999 }) do
        assert.is_true((st(s, MA)), s)
      end
      assert.same({ false, "status" }, { st(100, MA) })
      assert.same({ false, "status" }, { st(199, MA) })
      assert.same({ false, "status" }, { st(1000, MA) })
      assert.same({ false, "partial content" }, { st(206, MA) })
      assert.same({ false, "not modified" }, { st(304, MA) })
    end)

    it("stores heuristically cacheable statuses that have a validator or heuristic freshness", function()
      for _, s in ipairs({ 200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501 }) do
        assert.same({ true, "cacheable status" }, { st(s, { etag = '"a"' }) }, s)
        assert.same({ false, "no freshness and no validator" }, { st(s, {}) }, s)
      end
      assert.same({ true, "cacheable status" }, { st(200, { ["last-modified"] = D(T0) }) })
      assert.same({ true, "cacheable status" },
        { st(200, { ["last-modified"] = D(T0 - 100), date = D(T0) }, {}, { heuristic = true }) })
    end)

    it("does not store other statuses without explicit freshness", function()
      for _, s in ipairs({ 201, 302, 303, 307, 400, 403, 500, 502, 503 }) do
        assert.same({ false, "no explicit freshness" }, { st(s, { etag = '"a"' }) }, s)
      end
    end)

    it("stores a status given a default TTL", function()
      assert.same({ true, "default_ttl" }, { st(302, {}, {}, { default_ttl = { [302] = 60 } }) })
    end)

    it("restricts to the configured statuses, as a set or a list", function()
      assert.same({ false, "status not allowed" }, { st(404, MA, {}, { statuses = { 200 } }) })
      assert.is_true((st(200, MA, {}, { statuses = { 200, 301 } })))
      assert.is_true((st(301, MA, {}, { statuses = { [301] = true } })))
      assert.same({ false, "status not allowed" }, { st(404, MA, {}, { statuses = { [200] = true } }) })
    end)

    it("refuses no-store in the response or the request (§5.2.2.5, §5.2.1.5)", function()
      assert.same({ false, "no-store" }, { st(200, { ["cache-control"] = "max-age=60, no-store" }) })
      assert.same({ false, "no-store" }, { st(200, { ["cache-control"] = "public, NO-STORE" }) })
      assert.same({ false, "no-store" }, { st(200, { ["cache-control"] = { "max-age=60", "no-store" } }) })
      assert.same({ false, "request no-store" }, { st(200, MA, { ["cache-control"] = "no-store" }) })
    end)

    it("refuses a response to a GET with content (RFC 9110 §9.3.1: not part of the key)", function()
      assert.same({ false, "request content" }, { st(200, MA, { ["content-length"] = "4" }) })
      assert.same({ false, "request content" }, { st(200, MA, { ["transfer-encoding"] = "chunked" }) })
      assert.same({ false, "request content" }, { st(200, MA, { ["content-length"] = { "0", "4" } }) })
      assert.is_true((st(200, MA, { ["content-length"] = "0" })))
    end)

    it("must-understand: ignores no-store for understood statuses only (§5.2.2.3)", function()
      local h = { ["cache-control"] = "must-understand, no-store, max-age=60" }
      assert.same({ true, "max-age" }, { st(200, h) })
      assert.same({ false, "must-understand" }, { st(299, h) })
      assert.same({ false, "must-understand" },
        { st(599, { ["cache-control"] = "must-understand, max-age=60" }) })
    end)

    it("refuses private in a shared cache only; a qualified private is stored (§5.2.2.7)", function()
      assert.same({ false, "private" }, { st(200, { ["cache-control"] = "private, max-age=60" }) })
      assert.same({ false, "private" }, { st(200, { ["cache-control"] = "Private" }) })
      assert.same({ true, "private" }, { st(200, { ["cache-control"] = "private" }, {}, { shared = false }) })
      assert.is_true((st(200, { ["cache-control"] = 'private="x-user", max-age=60' })))
      assert.same({ false, "private" }, { st(200, { ["cache-control"] = 'private="", max-age=60' }) })
    end)

    it("refuses responses to Authorization unless public, s-maxage or must-revalidate (§3.5)", function()
      local auth = { authorization = "Bearer x" }
      assert.same({ false, "authorization" }, { st(200, MA, auth) })
      assert.is_true((st(200, { ["cache-control"] = "max-age=60, public" }, auth)))
      assert.is_true((st(200, { ["cache-control"] = "s-maxage=60" }, auth)))
      assert.is_true((st(200, { ["cache-control"] = "max-age=60, must-revalidate" }, auth)))
      assert.same({ false, "authorization" },
        { st(200, { ["cache-control"] = "max-age=60, proxy-revalidate" }, auth) })
      assert.is_true((st(200, MA, auth, { shared = false })))
    end)

    it("refuses Set-Cookie responses unless configured", function()
      local h = { ["cache-control"] = "max-age=60", ["set-cookie"] = "a=b" }
      assert.same({ false, "set-cookie" }, { st(200, h) })
      assert.is_true((st(200, h, {}, { cache_set_cookie = true })))
      assert.is_true((st(200, h, {}, { cache_set_cookie = "strip" })))
    end)

    it("stores a Set-Cookie response whose no-cache= or private= names the cookie (§3.1)", function()
      local h = { ["cache-control"] = 'max-age=60, no-cache="Set-Cookie"', ["set-cookie"] = "a=b" }
      assert.is_true((st(200, h)))
      assert.is_nil(P.stored_headers(h)["set-cookie"])
      h["cache-control"] = 'max-age=60, private="x, set-cookie"'
      assert.is_true((st(200, h)))
      assert.is_nil(P.stored_headers(h)["set-cookie"])
      assert.same({ false, "set-cookie" }, { st(200, h, {}, { shared = false }) })
      h["cache-control"] = 'max-age=60, no-cache="x"'
      assert.same({ false, "set-cookie" }, { st(200, h) })
    end)

    it("refuses Vary: * and huge Vary lists", function()
      assert.same({ false, "vary" }, { st(200, { ["cache-control"] = "max-age=60", vary = "*" }) })
      assert.same({ false, "vary" },
        { st(200, { ["cache-control"] = "max-age=60", vary = { "accept", "*" } }) })
      local names = {}
      for i = 1, 65 do names[i] = "x-h" .. i end
      assert.same({ false, "vary" },
        { st(200, { ["cache-control"] = "max-age=60", vary = table.concat(names, ",") }) })
      assert.is_true((st(200, { ["cache-control"] = "max-age=60", vary = "accept-encoding" })))
    end)

    it("stores no-cache responses (they are revalidated on use)", function()
      assert.is_true((st(200, { ["cache-control"] = "no-cache, max-age=60" })))
      assert.is_true((st(200, { ["cache-control"] = "no-cache", etag = '"x"' })))
    end)

    it("accepts nil header tables", function()
      assert.same({ false, "no freshness and no validator" }, { P.storable("GET", 200, nil, nil) })
    end)
  end)

  describe("stored_headers (§3.1)", function()
    it("drops Connection, the fields it lists and hop-by-hop and proxy fields", function()
      local h = P.stored_headers({
        connection = "a, B", a = "1", b = "2", c = "3", ["keep-alive"] = "timeout=5",
        ["transfer-encoding"] = "chunked", upgrade = "x", ["proxy-connection"] = "x", te = "x",
        ["proxy-authenticate"] = "Basic", ["proxy-authentication-info"] = "x",
        ["content-type"] = "text/plain", ["set-cookie"] = "a=b",
        ["www-authenticate"] = "Basic",
      })
      assert.same({ c = "3", ["content-type"] = "text/plain", ["set-cookie"] = "a=b",
        ["www-authenticate"] = "Basic" }, h)
    end)

    it("drops the fields named by no-cache=, and by private= in a shared cache", function()
      local src = { ["cache-control"] = 'no-cache="A, b", private="c", max-age=60',
        a = "1", b = "2", c = "3", d = "4" }
      assert.same({ ["cache-control"] = src["cache-control"], d = "4" }, P.stored_headers(src))
      assert.same({ ["cache-control"] = src["cache-control"], c = "3", d = "4" },
        P.stored_headers(src, { shared = false }))
    end)

    it("says when it drops only the fields never stored (stores_all_fields)", function()
      assert.is_true(P.stores_all_fields({ ["content-type"] = "a", upgrade = "x",
        ["cache-control"] = "max-age=5, no-cache, private", ["set-cookie"] = "a=b" }))
      assert.is_true(P.stores_all_fields({}, { cache_set_cookie = "strip" }))
      assert.is_false(P.stores_all_fields({ connection = "close" }))
      assert.is_false(P.stores_all_fields({ ["cache-control"] = 'no-cache="a"' }))
      assert.is_false(P.stores_all_fields({ ["cache-control"] = 'private="a"' }))
      assert.is_true(P.stores_all_fields({ ["cache-control"] = 'private="a"' }, { shared = false }))
      assert.is_false(P.stores_all_fields({ ["set-cookie"] = "a=b" }, { cache_set_cookie = "strip" }))
    end)

    it("drops Set-Cookie when configured to strip it", function()
      assert.same({ x = "1" }, P.stored_headers({ ["set-cookie"] = { "a=1", "b=2" }, x = "1" },
        { cache_set_cookie = "strip" }))
    end)

    it("copies list values rather than sharing them", function()
      local src = { x = { "1", "2" } }
      local out = P.stored_headers(src)
      assert.same(src, out)
      assert.are_not.equal(src.x, out.x)
    end)
  end)

  describe("Age (§5.1) and current_age (§4.2.3)", function()
    it("reads the first member of the first line, and ignores invalid values", function()
      assert.equal(7200, P.age_value({ age = "7200" }))
      assert.equal(7200, P.age_value({ age = "7200, 0" }))
      assert.equal(0, P.age_value({ age = "0,7200" }))
      assert.equal(7200, P.age_value({ age = { "7200", "0" } }))
      assert.equal(2147483648, P.age_value({ age = "99999999999999" }))
      assert.equal(5, P.age_value({ age = " 5 " }))
      for _, v in ipairs({ "abc", "-7200", "7200.0", "", "1e3" }) do
        assert.is_nil(P.age_value({ age = v }), v)
      end
      assert.is_nil(P.age_value({}))
    end)

    it("follows the §4.2.3 formula", function()
      local m = { date = T0 - 10, age_value = 5, request_time = T0 - 2, response_time = T0 }
      -- apparent 10, corrected age 5 + 2 = 7, initial 10, resident 30
      assert.equal(40, P.current_age(m, T0 + 30))
      m.age_value = 20
      assert.equal(52, P.current_age(m, T0 + 30))
    end)

    it("never lets a Date in the future make the age negative", function()
      assert.equal(3, P.current_age({ date = T0 + 1000, age_value = 0, request_time = T0,
        response_time = T0 }, T0 + 3))
    end)

    it("works without Date and Age", function()
      assert.equal(7, P.current_age({ request_time = T0, response_time = T0 }, T0 + 7))
    end)

    it("formats the Age header as whole seconds", function()
      assert.equal("40", P.age_header(40.9))
      assert.equal("0", P.age_header(-3))
      assert.equal("2147483648", P.age_header(1e12))
    end)
  end)

  describe("meta", function()
    it("records what the store keeps beside an entry", function()
      local m = P.meta(200, { date = D(T0 - 5), age = "3", ["cache-control"] =
        "max-age=60, stale-while-revalidate=30, stale-if-error=300", etag = '"e"',
        ["last-modified"] = D(T0 - 100) }, T0 - 1, T0)
      assert.equal(T0 - 5, m.date)
      assert.equal(3, m.age_value)
      assert.equal(T0 - 1, m.request_time)
      assert.equal(T0, m.response_time)
      assert.equal(60, m.ttl)
      assert.equal("max-age", m.ttl_source)
      assert.equal(30, m.stale_while_revalidate)
      assert.equal(300, m.stale_if_error)
      assert.is_false(m.must_revalidate)
      assert.is_false(m.no_cache)
      assert.equal('"e"', m.etag)
      assert.equal(D(T0 - 100), m.last_modified)
    end)

    it("marks must-revalidate, and in a shared cache proxy-revalidate and s-maxage", function()
      assert.is_true(meta({ ["cache-control"] = "max-age=5, must-revalidate" }).must_revalidate)
      assert.is_true(meta({ ["cache-control"] = "max-age=5, proxy-revalidate" }).must_revalidate)
      assert.is_true(meta({ ["cache-control"] = "s-maxage=5" }).must_revalidate)
      assert.is_false(meta({ ["cache-control"] = "max-age=5, proxy-revalidate" }, 200,
        { shared = false }).must_revalidate)
      assert.is_false(meta({ ["cache-control"] = "s-maxage=5, max-age=5" }, 200,
        { shared = false }).must_revalidate)
    end)

    it("marks an unqualified no-cache only", function()
      assert.is_true(meta({ ["cache-control"] = "no-cache" }).no_cache)
      assert.is_true(meta({ ["cache-control"] = "no-cache=" }).no_cache)
      assert.is_false(meta({ ["cache-control"] = 'no-cache="set-cookie", max-age=5' }).no_cache)
    end)

    it("computes Expires against the time received when Date is missing", function()
      local m = P.meta(200, { expires = D(T0 + 100) }, T0, T0 + 10)
      assert.equal(90, m.ttl)
    end)

    it("ignores invalid staleness windows", function()
      local m = meta({ ["cache-control"] = "max-age=5, stale-while-revalidate=x, stale-if-error" })
      assert.is_nil(m.stale_while_revalidate)
      assert.is_nil(m.stale_if_error)
    end)
  end)

  describe("evaluate (§4, §4.2.4, RFC 5861)", function()
    it("serves fresh entries and reports age and ttl left", function()
      local dec, d = eval({ ["cache-control"] = "max-age=60" }, T0 + 10)
      assert.equal("fresh", dec)
      assert.equal(10, d.age)
      assert.equal(60, d.ttl)
      assert.equal(50, d.left)
      assert.equal(0, d.staleness)
    end)

    it("answers as fresh_plain says for a request without directives", function()
      for _, h in ipairs({ { ["cache-control"] = "max-age=60" }, { ["cache-control"] = "no-cache" },
          { ["cache-control"] = "max-age=60, must-revalidate" }, { age = "100", ["cache-control"] = "max-age=60" },
          { ["cache-control"] = "s-maxage=5, stale-while-revalidate=60" }, {} }) do
        for _, at in ipairs({ T0, T0 + 4, T0 + 59, T0 + 60, T0 + 61 }) do
          local m = meta(h, 200)
          assert.equal(P.evaluate(m, P.request_directives({}), at) == "fresh",
            P.fresh_plain(m, at) == true)
        end
      end
    end)

    it("is stale once age reaches the lifetime", function()
      assert.equal("revalidate", (eval({ ["cache-control"] = "max-age=60" }, T0 + 60)))
      assert.equal("fresh", (eval({ ["cache-control"] = "max-age=60" }, T0 + 59)))
    end)

    it("counts the upstream Age header", function()
      assert.equal("revalidate", (eval({ ["cache-control"] = "max-age=3600", age = "7200",
        date = D(T0) }, T0)))
      assert.equal("fresh", (eval({ ["cache-control"] = "max-age=3600", age = "abc",
        date = D(T0) }, T0)))
      assert.equal("fresh", (eval({ ["cache-control"] = "max-age=3600", age = "0, 7200",
        date = D(T0) }, T0)))
      assert.equal("revalidate", (eval({ ["cache-control"] = "max-age=3600",
        age = { "7200", "0" }, date = D(T0) }, T0)))
    end)

    it("counts apparent age from an old Date", function()
      assert.equal("revalidate", (eval({ ["cache-control"] = "max-age=3600", date = D(T0 - 7200) }, T0)))
    end)

    it("treats Expires in the past and invalid Expires as stale", function()
      assert.equal("revalidate", (eval({ expires = D(T0 - 1), date = D(T0) }, T0)))
      assert.equal("revalidate", (eval({ expires = "0", date = D(T0) }, T0)))
      assert.equal("fresh", (eval({ expires = D(T0 + 100), date = D(T0) }, T0 + 50)))
    end)

    it("always revalidates a response with no-cache (§5.2.2.4)", function()
      local dec, d = eval({ ["cache-control"] = "no-cache, max-age=3600" }, T0)
      assert.equal("revalidate", dec)
      assert.equal("response no-cache", d.why)
      assert.is_false(d.stale_if_error)
      assert.equal("fresh", (eval({ ["cache-control"] = 'no-cache="x", max-age=3600' }, T0)))
    end)

    it("honours request no-cache and Pragma (§5.2.1.4)", function()
      local h = { ["cache-control"] = "max-age=3600" }
      assert.equal("revalidate", (eval(h, T0, { ["cache-control"] = "no-cache" })))
      assert.equal("revalidate", (eval(h, T0, { pragma = "no-cache" })))
      assert.equal("fresh", (eval(h, T0, { pragma = "no-cache", ["cache-control"] = "max-stale" })))
    end)

    it("honours request max-age, including max-age=0 (§5.2.1.1)", function()
      local h = { ["cache-control"] = "max-age=3600" }
      assert.equal("fresh", (eval(h, T0 + 10, { ["cache-control"] = "max-age=10" })))
      assert.equal("revalidate", (eval(h, T0 + 11, { ["cache-control"] = "max-age=10" })))
      assert.equal("revalidate", (eval(h, T0 + 1, { ["cache-control"] = "max-age=0" })))
      assert.equal("revalidate", (eval(h, T0 + 1, { ["cache-control"] = "max-age=x" })))
      -- max-age bounds the age even when max-stale accepts stale responses
      assert.equal("revalidate", (eval({ ["cache-control"] = "max-age=10" }, T0 + 20,
        { ["cache-control"] = "max-age=15, max-stale" })))
    end)

    it("honours request min-fresh (§5.2.1.3)", function()
      local h = { ["cache-control"] = "max-age=100" }
      assert.equal("fresh", (eval(h, T0 + 50, { ["cache-control"] = "min-fresh=50" })))
      assert.equal("revalidate", (eval(h, T0 + 51, { ["cache-control"] = "min-fresh=50" })))
      -- a stale entry is never fresh for N more seconds: revalidated, whatever a
      -- stale-while-revalidate window (the response's or the plugin's) or max-stale allows
      -- (new-user trial: a stale-while-revalidate route served stale for min-fresh=10)
      local swr = { ["cache-control"] = "max-age=100, stale-while-revalidate=1000" }
      assert.equal("stale_while_revalidate", (eval(swr, T0 + 150)))
      local dec, d = eval(swr, T0 + 150, { ["cache-control"] = "min-fresh=10" })
      assert.equal("revalidate", dec)
      assert.equal("request min-fresh", d.why)
      assert.equal("stale", d.fwd)
      assert.equal("revalidate", (eval(h, T0 + 150, { ["cache-control"] = "min-fresh=10" },
        { stale_while_revalidate = 1000 })))
      assert.equal("revalidate", (eval(h, T0 + 150,
        { ["cache-control"] = "min-fresh=10, max-stale=1000" })))
    end)

    it("serves stale within request max-stale (§5.2.1.2)", function()
      local h = { ["cache-control"] = "max-age=10" }
      assert.equal("stale_ok", (eval(h, T0 + 20, { ["cache-control"] = "max-stale=10" })))
      assert.equal("revalidate", (eval(h, T0 + 21, { ["cache-control"] = "max-stale=10" })))
      assert.equal("stale_ok", (eval(h, T0 + 1e6, { ["cache-control"] = "max-stale" })))
    end)

    it("never serves stale under must-revalidate, proxy-revalidate or s-maxage (§4.2.4)", function()
      for _, cc in ipairs({ "max-age=10, must-revalidate", "max-age=10, proxy-revalidate",
        "s-maxage=10", "max-age=10, must-revalidate, stale-while-revalidate=100, stale-if-error=100" }) do
        local dec, d = eval({ ["cache-control"] = cc }, T0 + 20, { ["cache-control"] = "max-stale" })
        assert.equal("revalidate", dec, cc)
        assert.is_false(d.stale_if_error, cc)
      end
      -- a private cache ignores proxy-revalidate
      assert.equal("stale_ok", (eval({ ["cache-control"] = "max-age=10, proxy-revalidate" }, T0 + 20,
        { ["cache-control"] = "max-stale" }, nil, { shared = false })))
    end)

    it("serves stale while revalidating within the window (RFC 5861 §3)", function()
      local h = { ["cache-control"] = "max-age=10, stale-while-revalidate=20" }
      assert.equal("fresh", (eval(h, T0 + 5)))
      assert.equal("stale_while_revalidate", (eval(h, T0 + 30)))
      assert.equal("revalidate", (eval(h, T0 + 31)))
      assert.equal("revalidate", (eval(h, T0 + 15, { ["cache-control"] = "no-cache" })))
    end)

    it("grants configured staleness windows beyond the response's", function()
      local h = { ["cache-control"] = "max-age=10" }
      assert.equal("stale_while_revalidate", (eval(h, T0 + 50, {}, { stale_while_revalidate = 60 })))
      local _, d = eval(h, T0 + 50, {}, { stale_if_error = 60 })
      assert.is_true(d.stale_if_error)
      _, d = eval(h, T0 + 71, {}, { stale_if_error = 60 })
      assert.is_false(d.stale_if_error)
    end)

    it("reports whether stale-if-error allows serving on an upstream failure (RFC 5861 §4)", function()
      local _, d = eval({ ["cache-control"] = "max-age=10, stale-if-error=60" }, T0 + 70)
      assert.is_true(d.stale_if_error)
      _, d = eval({ ["cache-control"] = "max-age=10, stale-if-error=60" }, T0 + 71)
      assert.is_false(d.stale_if_error)
      _, d = eval({ ["cache-control"] = "max-age=10" }, T0 + 20, { ["cache-control"] = "stale-if-error=30" })
      assert.is_true(d.stale_if_error)
      _, d = eval({ ["cache-control"] = "max-age=10" }, T0 + 20)
      assert.is_false(d.stale_if_error)
    end)

    it("says whether the entry may be served stale when the origin is unreachable (§4.2.4)", function()
      local _, d = eval({ ["cache-control"] = "max-age=10" }, T0 + 1e6)
      assert.is_true(d.stale_if_disconnected)
      for _, cc in ipairs({ "max-age=10, must-revalidate", "max-age=10, proxy-revalidate",
        "s-maxage=10", "max-age=10, no-cache" }) do
        _, d = eval({ ["cache-control"] = cc }, T0 + 20)
        assert.is_false(d.stale_if_disconnected, cc)
      end
      _, d = eval({ ["cache-control"] = "max-age=10, proxy-revalidate" }, T0 + 20, {}, nil, { shared = false })
      assert.is_true(d.stale_if_disconnected)
    end)

    it("answers a miss under only-if-cached when the entry cannot be used (§5.2.1.7)", function()
      local dec, d = P.evaluate(nil, P.request_directives({ ["cache-control"] = "only-if-cached" }), T0)
      assert.equal("miss", dec)
      assert.is_true(d.only_if_cached)
      local h = { ["cache-control"] = "max-age=10" }
      dec, d = eval(h, T0 + 20, { ["cache-control"] = "only-if-cached" })
      assert.equal("miss", dec)
      assert.is_true(d.only_if_cached)
      assert.equal("fresh", (eval(h, T0 + 5, { ["cache-control"] = "only-if-cached" })))
      assert.equal("stale_ok", (eval(h, T0 + 20, { ["cache-control"] = "only-if-cached, max-stale" })))
      assert.equal("miss", (eval(h, T0 + 5, { ["cache-control"] = "only-if-cached, no-cache" })))
    end)

    it("gives the RFC 9211 fwd value of each refusal", function()
      local h = { ["cache-control"] = "max-age=100" }
      assert.equal("request", select(2, eval(h, T0, { ["cache-control"] = "no-cache" })).fwd)
      assert.equal("request", select(2, eval(h, T0 + 5, { ["cache-control"] = "max-age=1" })).fwd)
      assert.equal("request", select(2, eval(h, T0, { ["cache-control"] = "min-fresh=1000" })).fwd)
      assert.equal("stale", select(2, eval(h, T0 + 200)).fwd)
      assert.equal("stale", select(2, eval(h, T0 + 200, { ["cache-control"] = "no-cache" })).fwd)
      assert.equal("stale", select(2, eval(h, T0 + 200, { ["cache-control"] = "max-age=5" })).fwd)
      assert.equal("stale", select(2, eval({ ["cache-control"] = "no-cache" }, T0)).fwd)
      assert.equal("uri-miss", select(2, P.evaluate(nil, {}, T0)).fwd)
      assert.is_nil(select(2, eval(h, T0)).fwd)
    end)

    it("is a plain miss without an entry", function()
      local dec, d = P.evaluate(nil, {}, T0)
      assert.equal("miss", dec)
      assert.is_nil(d.only_if_cached)
    end)

    it("revalidates entries with no freshness information", function()
      assert.equal("revalidate", (eval({ etag = '"x"' }, T0)))
    end)
  end)

  describe("secondary_key (§4.1)", function()
    local sk = P.secondary_key

    it("is false for Vary: *", function()
      assert.is_false(sk("*", {}))
      assert.is_false(sk("accept, *", {}))
      assert.is_false(sk({ "accept", " * " }, {}))
    end)

    it("is the empty string without names", function()
      assert.equal("", sk("", {}))
      assert.equal("", sk(" , ", {}))
      assert.equal("", sk(nil, {}))
    end)

    it("does not depend on name case, order, duplicates or whitespace in Vary", function()
      local rq = { ["accept-encoding"] = "gzip", ["accept-language"] = "en" }
      local k = sk("Accept-Encoding, Accept-Language", rq)
      assert.equal(k, sk("accept-language,ACCEPT-ENCODING", rq))
      assert.equal(k, sk({ "Accept-Language", "accept-encoding, Accept-Language" }, rq))
      assert.equal(k, sk("  accept-encoding ,\taccept-language  ", rq))
    end)

    it("distinguishes values", function()
      assert.are_not.equal(sk("accept-encoding", { ["accept-encoding"] = "gzip" }),
        sk("accept-encoding", { ["accept-encoding"] = "br" }))
      assert.are_not.equal(sk("accept", { accept = "a" }), sk("accept", { accept = "A" }))
    end)

    it("tells an absent field from an empty one", function()
      local absent, empty = sk("x-a", {}), sk("x-a", { ["x-a"] = "" })
      assert.are_not.equal(absent, empty)
      assert.are_not.equal(absent, sk("x-a", { ["x-a"] = "-" }))
    end)

    it("combines field lines and drops optional whitespace and empty members", function()
      local k = sk("accept-encoding", { ["accept-encoding"] = "gzip,br" })
      assert.equal(k, sk("accept-encoding", { ["accept-encoding"] = { "gzip", "br" } }))
      assert.equal(k, sk("accept-encoding", { ["accept-encoding"] = "  gzip ,\tbr " }))
      assert.equal(k, sk("accept-encoding", { ["accept-encoding"] = "gzip, , br," }))
      assert.are_not.equal(k, sk("accept-encoding", { ["accept-encoding"] = "br, gzip" }))
    end)

    it("ignores the case of values defined case-insensitive, only those", function()
      assert.equal(sk("accept-encoding", { ["accept-encoding"] = "gzip, br" }),
        sk("accept-encoding", { ["accept-encoding"] = "GZIP, Br" }))
      assert.equal(sk("accept-language", { ["accept-language"] = "en-US" }),
        sk("accept-language", { ["accept-language"] = "en-us" }))
      assert.are_not.equal(sk("x-a", { ["x-a"] = "A" }), sk("x-a", { ["x-a"] = "a" }))
    end)

    it("keeps commas and spaces inside quoted strings", function()
      assert.are_not.equal(sk("x", { x = '"a , b"' }), sk("x", { x = '"a,b"' }))
      assert.equal(sk("x", { x = '"a , b" , c' }), sk("x", { x = '"a , b",c' }))
    end)

    it("cannot be confused by values that look like key syntax", function()
      local a = sk("x-a, x-b", { ["x-a"] = "1\nx-b:1:2" })
      local b = sk("x-a, x-b", { ["x-a"] = "1", ["x-b"] = "2" })
      assert.are_not.equal(a, b)
      assert.are_not.equal(sk("x-a, x-b", { ["x-a"] = "1:-" }), sk("x-a, x-b", { ["x-a"] = "1" }))
    end)

    it("bounds the number of names", function()
      local names = {}
      for i = 1, 64 do names[i] = "x-h" .. i end
      assert.is_string(sk(table.concat(names, ","), {}))
      names[65] = "x-h65"
      assert.is_false(sk(table.concat(names, ","), {}))
      assert.is_string(sk(table.concat(names, ","), {}, 100))
      -- duplicates do not count
      assert.is_string(sk(string.rep("accept,", 10000), {}))
    end)

    it("stays linear on huge request values", function()
      local t0 = os.clock()
      local v = string.rep(" ", 200000) .. "a" .. string.rep(" , ", 100000) .. "b"
      assert.equal(sk("x", { x = "a,b" }), sk("x", { x = v }))
      sk("x", { x = '"' .. string.rep("\\,", 200000) })
      assert.is_true(os.clock() - t0 < 2)
    end)
  end)

  describe("conditional (RFC 9110 §13.2.2)", function()
    local ST = { etag = '"v1"', ["last-modified"] = "Sun, 06 Nov 1994 08:49:37 GMT",
      date = "Mon, 07 Nov 1994 08:49:37 GMT" }
    local function c(rq, method, st) return P.conditional(method or "GET", rq, st or ST) end

    it("answers nothing without preconditions", function()
      assert.is_nil(c({}))
    end)

    it("If-None-Match: 304 on a weak match for GET and HEAD, 412 otherwise", function()
      assert.equal(304, c({ ["if-none-match"] = '"v1"' }))
      assert.equal(304, c({ ["if-none-match"] = 'W/"v1"' }))
      assert.equal(304, c({ ["if-none-match"] = '"x", "v1"' }))
      assert.equal(304, c({ ["if-none-match"] = { '"x"', '"v1"' } }))
      assert.equal(304, c({ ["if-none-match"] = "*" }))
      assert.equal(304, c({ ["if-none-match"] = '"v1"' }, "HEAD"))
      assert.equal(412, c({ ["if-none-match"] = '"v1"' }, "POST"))
      assert.is_nil(c({ ["if-none-match"] = '"v2"' }))
      assert.is_nil(c({ ["if-none-match"] = "v1" }))
      assert.equal(304, c({ ["if-none-match"] = '"v1"' }, "GET", { etag = 'W/"v1"' }))
      assert.is_nil(c({ ["if-none-match"] = '"v1"' }, "GET", {}))
    end)

    it("entity-tags may hold commas", function()
      assert.equal(304, c({ ["if-none-match"] = '"a,b"' }, "GET", { etag = '"a,b"' }))
      assert.is_nil(c({ ["if-none-match"] = '"a", "b"' }, "GET", { etag = '"a,b"' }))
    end)

    it("If-None-Match takes precedence over If-Modified-Since", function()
      assert.is_nil(c({ ["if-none-match"] = '"v2"', ["if-modified-since"] = ST.date }))
    end)

    it("If-Modified-Since: 304 when not modified since, for GET and HEAD only", function()
      assert.equal(304, c({ ["if-modified-since"] = ST["last-modified"] }))
      assert.equal(304, c({ ["if-modified-since"] = ST.date }))
      assert.is_nil(c({ ["if-modified-since"] = "Sat, 05 Nov 1994 08:49:37 GMT" }))
      assert.is_nil(c({ ["if-modified-since"] = ST.date }, "POST"))
      assert.is_nil(c({ ["if-modified-since"] = "garbage" }))
      assert.is_nil(c({ ["if-modified-since"] = { ST.date, ST.date } }))
    end)

    it("If-Modified-Since uses Date without Last-Modified (RFC 9111 §4.3.2)", function()
      local st = { date = "Mon, 07 Nov 1994 08:49:37 GMT" }
      assert.equal(304, c({ ["if-modified-since"] = st.date }, "GET", st))
      assert.is_nil(c({ ["if-modified-since"] = "Sun, 06 Nov 1994 08:49:37 GMT" }, "GET", st))
      assert.equal(304, P.conditional("GET", { ["if-modified-since"] = st.date }, {}, T0 - T0 + 784198177))
    end)

    it("If-Match: strong comparison, 412 when it fails", function()
      assert.is_nil(c({ ["if-match"] = '"v1"' }))
      assert.is_nil(c({ ["if-match"] = "*" }))
      assert.equal(412, c({ ["if-match"] = 'W/"v1"' }))
      assert.equal(412, c({ ["if-match"] = '"v2"' }))
      assert.equal(412, c({ ["if-match"] = '"v1"' }, "GET", { etag = 'W/"v1"' }))
      assert.equal(412, c({ ["if-match"] = '"v1"' }, "GET", {}))
      assert.equal(412, c({ ["if-match"] = '"v2"', ["if-none-match"] = '"v1"' }))
      assert.equal(304, c({ ["if-match"] = '"v1"', ["if-none-match"] = '"v1"' }))
    end)

    it("If-Unmodified-Since: 412 when modified after, ignored with If-Match or when invalid", function()
      assert.equal(412, c({ ["if-unmodified-since"] = "Sat, 05 Nov 1994 08:49:37 GMT" }))
      assert.is_nil(c({ ["if-unmodified-since"] = ST["last-modified"] }))
      assert.is_nil(c({ ["if-unmodified-since"] = "Sat, 05 Nov 1994 08:49:37 GMT", ["if-match"] = '"v1"' }))
      assert.is_nil(c({ ["if-unmodified-since"] = "junk" }))
      assert.is_nil(c({ ["if-unmodified-since"] = "Sat, 05 Nov 1994 08:49:37 GMT" }, "GET", { etag = '"v1"' }))
    end)
  end)

  describe("validators (RFC 9111 §4.3.1)", function()
    it("gives If-None-Match and If-Modified-Since from the stored validators", function()
      assert.same({ ["if-none-match"] = '"a"', ["if-modified-since"] = "Sun, 06 Nov 1994 08:49:37 GMT" },
        P.validators({ etag = '"a"', ["last-modified"] = "Sun, 06 Nov 1994 08:49:37 GMT" }))
      assert.same({ ["if-none-match"] = 'W/"a"' }, P.validators({ etag = 'W/"a"' }))
      assert.same({}, P.validators({ etag = "bare", ["last-modified"] = "0" }))
      assert.same({}, P.validators(nil))
      assert.same({ ["if-none-match"] = '"a"' }, P.validators({ etag = { '"a"', '"b"' } }))
    end)
  end)

  describe("forward_headers (§4.3.1, §4.3.2)", function()
    it("removes the client's preconditions and Range on a miss", function()
      assert.same({ ["if-none-match"] = false, range = false, ["if-modified-since"] = false },
        P.forward_headers({ ["if-none-match"] = '"a"', range = "bytes=0-1",
          ["if-modified-since"] = "x", accept = "*/*" }))
      assert.same({}, P.forward_headers({ accept = "*/*" }))
      assert.same({}, P.forward_headers(nil))
    end)

    it("sends the stored entry's validators instead of the client's", function()
      local lm = "Sun, 06 Nov 1994 08:49:37 GMT"
      assert.same({ ["if-none-match"] = '"s"', ["if-modified-since"] = lm, ["if-match"] = false,
        ["if-range"] = false, ["if-unmodified-since"] = false },
        P.forward_headers({ ["if-none-match"] = '"c"', ["if-match"] = '"c"', ["if-range"] = '"c"',
          ["if-unmodified-since"] = lm }, { etag = '"s"', ["last-modified"] = lm }))
      assert.same({ ["if-none-match"] = false }, P.forward_headers({ ["if-none-match"] = '"c"' }, {}))
    end)
  end)

  describe("updates (§4.3.4)", function()
    local LM = "Sun, 06 Nov 1994 08:49:37 GMT"
    it("matches a strong entity-tag strongly", function()
      assert.is_true(P.updates({ etag = '"a"' }, { etag = '"a"' }))
      assert.is_false(P.updates({ etag = '"a"' }, { etag = '"b"' }))
      assert.is_false(P.updates({ etag = 'W/"a"' }, { etag = '"a"' }))
      assert.is_false(P.updates({}, { etag = '"a"' }))
    end)

    it("matches a weak entity-tag weakly", function()
      assert.is_true(P.updates({ etag = 'W/"a"' }, { etag = 'W/"a"' }))
      assert.is_true(P.updates({ etag = '"a"' }, { etag = 'W/"a"' }))
      assert.is_false(P.updates({ etag = '"b"' }, { etag = 'W/"a"' }))
    end)

    it("without an entity-tag, compares Last-Modified", function()
      assert.is_true(P.updates({ ["last-modified"] = LM }, { ["last-modified"] = LM }))
      assert.is_false(P.updates({ ["last-modified"] = LM }, { ["last-modified"] = "Mon, 07 Nov 1994 08:49:37 GMT" }))
      assert.is_false(P.updates({}, { ["last-modified"] = LM }))
      assert.is_false(P.updates({ ["last-modified"] = "0" }, { ["last-modified"] = "0" }))
    end)

    it("a 304 without validators updates", function()
      assert.is_true(P.updates({ etag = '"a"' }, { date = LM }))
      assert.is_true(P.updates(nil, nil))
    end)
  end)

  describe("merge_304 (§3.2, §4.3.4)", function()
    local STORED = { ["content-type"] = "text/plain", ["content-length"] = "5", etag = '"a"',
      ["cache-control"] = "max-age=1", date = D(T0), ["test-header"] = "A", age = "3",
      vary = "accept" }

    it("replaces fields the 304 carries and keeps the others", function()
      local out = P.merge_304(STORED, { ["cache-control"] = "max-age=3600", date = D(T0 + 10),
        ["test-header"] = "B", ["content-type"] = "text/plain;charset=utf-8",
        ["x-new"] = "1", expires = D(T0 + 20), ["content-location"] = "/bar" })
      assert.equal("max-age=3600", out["cache-control"])
      assert.equal(D(T0 + 10), out.date)
      assert.equal("B", out["test-header"])
      assert.equal("text/plain;charset=utf-8", out["content-type"])
      assert.equal("1", out["x-new"])
      assert.equal(D(T0 + 20), out.expires)
      assert.equal("/bar", out["content-location"])
      assert.equal('"a"', out.etag)
      assert.equal("5", out["content-length"])
    end)

    it("keeps stored fields a 304 omits", function()
      local out = P.merge_304(STORED, { date = D(T0 + 10) })
      assert.equal("A", out["test-header"])
      assert.equal("max-age=1", out["cache-control"])
    end)

    it("keeps the stored body's coding and digests over a 304's", function()
      local out = P.merge_304({ ["content-encoding"] = "gzip", ["content-md5"] = "a", x = "1" },
        { ["content-encoding"] = "br", ["content-md5"] = "b", ["content-digest"] = "sha-256=:x:",
          x = "2" })
      assert.equal("gzip", out["content-encoding"])
      assert.equal("a", out["content-md5"])
      assert.is_nil(out["content-digest"])
      assert.equal("2", out.x)
    end)

    it("never takes Content-Length, Content-Range, Vary or hop-by-hop fields from a 304", function()
      local out = P.merge_304(STORED, { ["content-length"] = "0", ["content-range"] = "bytes 0-0/5",
        vary = "*", connection = "x-hop", ["x-hop"] = "1", ["transfer-encoding"] = "chunked",
        ["keep-alive"] = "timeout=1", ["proxy-authenticate"] = "Basic" })
      assert.equal("5", out["content-length"])
      assert.is_nil(out["content-range"])
      assert.equal("accept", out.vary)
      assert.is_nil(out.connection)
      assert.is_nil(out["x-hop"])
      -- a field the 304's Connection lists is not taken, and the stored one stays
      out = P.merge_304({ ["x-e2e"] = "stored" }, { connection = "x-e2e", ["x-e2e"] = "hop" })
      assert.equal("stored", out["x-e2e"])
      assert.is_nil(out["transfer-encoding"])
      assert.is_nil(out["keep-alive"])
      assert.is_nil(out["proxy-authenticate"])
    end)

    it("takes Age from the 304, or drops it", function()
      assert.is_nil(P.merge_304(STORED, { date = D(T0) }).age)
      assert.equal("7", P.merge_304(STORED, { age = "7" }).age)
    end)

    it("stamps a Date when the 304 has none and a clock is given", function()
      assert.equal(D(T0 + 99), P.merge_304(STORED, {}, { now = T0 + 99 }).date)
      assert.equal(D(T0), P.merge_304(STORED, {}).date)
    end)

    it("stores Set-Cookie from a 304 only when configured; the client still gets it", function()
      local out, client = P.merge_304(STORED, { ["set-cookie"] = "a=c" })
      assert.is_nil(out["set-cookie"])
      assert.same({ ["set-cookie"] = "a=c" }, client)
      out, client = P.merge_304(STORED, { ["set-cookie"] = "a=c" }, { cache_set_cookie = true })
      assert.equal("a=c", out["set-cookie"])
      assert.same({}, client)
      out, client = P.merge_304(STORED, { ["set-cookie"] = "a=c" }, { cache_set_cookie = "strip" })
      assert.is_nil(out["set-cookie"])
      assert.same({ ["set-cookie"] = "a=c" }, client)
    end)

    it("drops the fields the new directives exclude", function()
      local out = P.merge_304(STORED, { ["cache-control"] = 'max-age=60, no-cache="test-header"' })
      assert.is_nil(out["test-header"])
      out = P.merge_304({ x = "1", ["cache-control"] = 'private="x", max-age=5' }, { date = D(T0) })
      assert.is_nil(out.x)
    end)

    it("does not modify its inputs", function()
      local st = { a = { "1", "2" }, b = "x" }
      local out = P.merge_304(st, { b = "y" })
      out.a[3] = "3"
      assert.same({ a = { "1", "2" }, b = "x" }, st)
    end)
  end)

  describe("parse_range (RFC 9110 §14)", function()
    local function r(v, len, if_range, st, opts) return P.parse_range(v, len or 1000, if_range, st, opts) end

    it("serves the whole without a Range or with another unit", function()
      assert.is_nil(r(nil))
      assert.is_nil(r("items=0-5"))
      assert.is_nil(r("bytes 0-5"))
    end)

    it("reads the three forms, clamping to the length", function()
      assert.same({ { 0, 499 } }, r("bytes=0-499"))
      assert.same({ { 500, 999 } }, r("bytes=500-"))
      assert.same({ { 900, 999 } }, r("bytes=-100"))
      assert.same({ { 0, 999 } }, r("bytes=-5000"))
      assert.same({ { 990, 999 } }, r("bytes=990-5000"))
      assert.same({ { 0, 0 } }, r("BYTES=0-0"))
      assert.same({ { 5, 9 } }, r("bytes = 5-9"))
    end)

    it("accepts several ranges, coalescing overlapping or adjacent ones in order", function()
      assert.same({ { 0, 9 }, { 500, 509 } }, r("bytes=500-509, 0-9"))
      assert.same({ { 0, 20 } }, r("bytes=0-10,5-20"))
      assert.same({ { 0, 20 } }, r("bytes=0-10,11-20"))
      assert.same({ { 0, 10 }, { 60, 120 } }, r("bytes=0-10,60-120"))
      assert.same({ { 0, 1 }, { 5, 6 } }, r("bytes=0-1,5-6"))
      assert.same({ { 0, 10 }, { 100, 120 } }, r("bytes=100-120,0-10"))
      assert.same({ { 0, 10 }, { 200, 210 } }, r("bytes=0-10, , 200-210,"))
    end)

    it("drops unsatisfiable members and answers 416 when none is left", function()
      assert.same({ { 0, 9 } }, r("bytes=0-9, 2000-3000"))
      assert.equal("unsatisfiable", r("bytes=1000-"))
      assert.equal("unsatisfiable", r("bytes=1000-2000, 5000-"))
      assert.equal("unsatisfiable", r("bytes=-0"))
      assert.equal("unsatisfiable", r("bytes=0-5", 0))
    end)

    it("serves an empty representation whole for a suffix range", function()
      assert.is_nil(r("bytes=-5", 0))
    end)

    it("ignores an invalid Range field", function()
      for _, v in ipairs({ "bytes=", "bytes=-", "bytes=5-1", "bytes=a-b", "bytes=1-2-3",
        "bytes=0-5, x", "bytes=--5", "bytes=0 -5" }) do
        assert.is_nil(r(v), v)
      end
    end)

    it("handles positions beyond 2^31 and absurdly long numbers", function()
      assert.same({ { 3000000000, 3999999999 } }, r("bytes=3000000000-", 4000000000))
      assert.equal("unsatisfiable", r("bytes=" .. string.rep("9", 40) .. "-"))
      assert.same({ { 0, 999 } }, r("bytes=0-" .. string.rep("9", 40)))
    end)

    it("refuses too many ranges: the whole is served (§14.2 denial of service)", function()
      local parts = {}
      for i = 1, 17 do parts[i] = (i * 200) .. "-" .. (i * 200 + 1) end
      assert.is_nil(r("bytes=" .. table.concat(parts, ","), 100000))
      parts[17] = nil
      assert.equal(16, #r("bytes=" .. table.concat(parts, ","), 100000))
      assert.is_nil(r("bytes=0-1,300-301,600-601", 100000, nil, nil, { max_ranges = 2 }))
      -- many overlapping ranges coalesce into one
      local same = {}
      for i = 1, 16 do same[i] = "0-999" end
      assert.same({ { 0, 999 } }, r("bytes=" .. table.concat(same, ",")))
    end)

    it("stops early on a huge list of unsatisfiable members", function()
      local t0 = os.clock()
      assert.is_nil(r("bytes=" .. string.rep("5000-6000,", 100000)))
      assert.is_true(os.clock() - t0 < 1)
    end)

    it("applies If-Range with a strong entity-tag (§13.1.5)", function()
      local st = { etag = '"v1"' }
      assert.same({ { 0, 9 } }, r("bytes=0-9", 1000, '"v1"', st))
      assert.is_nil(r("bytes=0-9", 1000, '"v2"', st))
      assert.is_nil(r("bytes=0-9", 1000, 'W/"v1"', st))
      assert.is_nil(r("bytes=0-9", 1000, '"v1"', { etag = 'W/"v1"' }))
      assert.is_nil(r("bytes=0-9", 1000, '"v1"', {}))
      assert.is_nil(r("bytes=0-9", 1000, { '"v1"', '"v1"' }, st))
    end)

    it("applies If-Range with a date equal to a strong Last-Modified", function()
      local lm = "Sun, 06 Nov 1994 08:49:37 GMT"
      local st = { ["last-modified"] = lm, date = "Mon, 07 Nov 1994 08:49:37 GMT" }
      assert.same({ { 0, 9 } }, r("bytes=0-9", 1000, lm, st))
      assert.is_nil(r("bytes=0-9", 1000, "Mon, 07 Nov 1994 08:49:37 GMT", st))
      assert.is_nil(r("bytes=0-9", 1000, lm, { ["last-modified"] = lm, date = lm }))
      assert.is_nil(r("bytes=0-9", 1000, lm, { ["last-modified"] = lm }))
      assert.is_nil(r("bytes=0-9", 1000, "garbage", st))
    end)
  end)

  describe("invalidations (§4.4)", function()
    local K = { scheme = "http", host = "example.com", path = "/a/b?q=1" }
    local inv = P.invalidations

    it("invalidates nothing for safe methods or error statuses", function()
      for _, m in ipairs({ "GET", "HEAD", "OPTIONS", "TRACE" }) do
        assert.same({}, (inv(m, 200, K, {})))
      end
      for _, s in ipairs({ 100, 400, 404, 500, 503 }) do
        assert.same({}, (inv("POST", s, K, {})), s)
      end
    end)

    it("invalidates the target URI for unsafe and unknown methods with 2xx/3xx", function()
      for _, m in ipairs({ "POST", "PUT", "DELETE", "PATCH", "FOO" }) do
        assert.same({ "http://example.com/a/b?q=1" }, (inv(m, 200, K, {})), m)
      end
      assert.same({ "http://example.com/a/b?q=1" }, (inv("POST", 303, K, {})))
    end)

    it("adds same-origin Location and Content-Location, resolved", function()
      local uris, parts = inv("POST", 201, K, { location = "/new", ["content-location"] = "c?x=1" })
      assert.same({ "http://example.com/a/b?q=1", "http://example.com/new", "http://example.com/a/c?x=1" }, uris)
      assert.same({ scheme = "http", host = "example.com", path = "/new" }, parts[2])
      assert.same({ "http://example.com/a/b?q=1", "http://example.com/x" },
        (inv("PUT", 200, K, { location = "HTTP://Example.COM:80/x#frag" })))
      assert.same({ "http://example.com/a/b?q=1", "http://example.com/x" },
        (inv("PUT", 200, K, { location = "//example.com/x" })))
      assert.same({ "http://example.com/a/b?q=1", "http://example.com/c" },
        (inv("PUT", 200, K, { location = "../c" })))
      assert.same({ "http://example.com/a/b?q=1", "http://example.com/a/b?z" },
        (inv("PUT", 200, K, { location = "?z" })))
    end)

    it("never invalidates another origin", function()
      for _, loc in ipairs({ "http://evil.example/a", "https://example.com/a", "http://example.com:8080/a",
        "//evil.example/a", "ftp://example.com/a", "javascript:alert(1)", "http:///x" }) do
        assert.same({ "http://example.com/a/b?q=1" }, (inv("POST", 200, K, { location = loc })), loc)
      end
    end)

    it("normalises default ports and host case, and does not repeat URIs", function()
      local k = { scheme = "https", host = "Example.com:443", path = "/p" }
      assert.same({ "https://example.com/p" },
        (inv("DELETE", 204, k, { location = "https://example.com/p", ["content-location"] = "/p" })))
    end)
  end)

  describe("cache_status (RFC 9211)", function()
    local cs = P.cache_status
    it("formats hits and forwards", function()
      assert.equal("luaproxy; hit; ttl=30", cs({ hit = true, ttl = 30 }))
      assert.equal("luaproxy; fwd=miss; stored", cs({ fwd = "miss", stored = true }))
      assert.equal("luaproxy; fwd=stale; fwd-status=304; ttl=60",
        cs({ fwd = "stale", fwd_status = 304, ttl = 60.7 }))
      assert.equal("luaproxy; fwd=bypass", cs({ fwd = "bypass" }))
      assert.equal("luaproxy; fwd=uri-miss; collapsed", cs({ fwd = "uri-miss", collapsed = true }))
      assert.equal("luaproxy; hit; ttl=-5", cs({ hit = true, ttl = -5 }))
      assert.equal("luaproxy", cs({}))
    end)

    it("gives hit precedence over fwd", function()
      assert.equal("luaproxy; hit", cs({ hit = true, fwd = "miss" }))
    end)

    it("quotes names, keys and details that are not tokens", function()
      assert.equal('"my cache"; hit', cs({ cache = "my cache", hit = true }))
      assert.equal('luaproxy; fwd=miss; key="GET http://a/\\"x\\""', cs({ fwd = "miss", key = 'GET http://a/"x"' }))
      assert.equal('luaproxy; hit; detail="a b"', cs({ hit = true, detail = "a b" }))
      assert.equal("luaproxy; hit; detail=mem", cs({ hit = true, detail = "mem" }))
      assert.equal('luaproxy; fwd=miss; key="a?b"', cs({ fwd = "miss", key = "a\nb" }))
    end)

    it("appends to the upstream's Cache-Status", function()
      assert.equal("origin; fwd=miss, luaproxy; hit", cs({ hit = true, prior = " origin; fwd=miss " }))
      assert.equal("a, b, luaproxy; hit", cs({ hit = true, prior = { "a", "b" } }))
      assert.equal("luaproxy; hit", cs({ hit = true, prior = "  " }))
    end)
  end)

  describe("purity", function()
    it("sets no globals", function()
      local before = {}
      for k in pairs(_G) do before[k] = true end
      package.loaded["luaproxy.cache.policy"] = nil
      local Q = require "luaproxy.cache.policy"
      Q.storable("GET", 200, {}, { ["cache-control"] = "max-age=5" })
      Q.evaluate(Q.meta(200, {}, T0, T0), Q.request_directives({}), T0)
      for k in pairs(_G) do assert.is_true(before[k] ~= nil, k) end
    end)
  end)
end)
