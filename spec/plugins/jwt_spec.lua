local T = require "proxy.test"
T.shared_dicts({ jwks = "1m" })
local jwt = require "jwt"
local H = dofile("spec/plugins/jwt_tokens.lua")
local cjson = require "cjson"

local NOW = 1700000000 -- the double's clock at T.reset()

describe("jwt plugin", function()
  setup(function() end)
  teardown(function() H.cleanup() end)
  before_each(function() T.reset() jwt._reset() end)

  local hs = { keys = { { secret = "hmac-secret" } } }
  local claims = { sub = "ann", exp = NOW + 60 }

  local function bearer(tok) return { headers = { Authorization = "Bearer " .. tok } } end

  local function refused(conf, req, desc, keep)
    local res = T.run(jwt, conf, req)
    assert.is_true(res.responded, desc)
    assert.equal(401, res.status, desc)
    if desc then
      assert.equal('Bearer realm="luaproxy", error="invalid_token", error_description="'
        .. desc .. '"', res.headers["WWW-Authenticate"])
      assert.equal(desc, cjson.decode(res.body).error_description)
    end
    if not keep then T.reset() end
    return res
  end

  it("verifies every algorithm against tokens openssl signed", function()
    local cases = {
      { "HS256", "hmac-secret" }, { "HS384", "hmac-secret" }, { "HS512", "hmac-secret" },
      { "RS256", "rsa" }, { "RS384", "rsa" }, { "RS512", "rsa" },
      { "PS256", "rsa" }, { "PS384", "rsa" }, { "PS512", "rsa" },
      { "ES256", "p256" }, { "ES384", "p384" }, { "EdDSA", "ed" },
    }
    for _, c in ipairs(cases) do
      local alg, key = c[1], c[2]
      local conf = alg:find("^HS") and hs or { keys = { { pem = H.keys[key].pub_pem } } }
      local res = T.run(jwt, conf, bearer(H.token(alg, key, claims)))
      assert.is_false(res.responded, alg)
      assert.equal("ann", res.ctx.consumer.id, alg)
      assert.equal("ann", res.ctx.jwt_claims.sub, alg)
      assert.equal("ann", res.request_headers["X-Consumer-Id"], alg)
      assert.is_nil(res.request_headers["Authorization"], alg)
      -- a signature of other bytes fails
      local tok = H.token(alg, key, claims)
      local bad = tok:sub(1, -5) .. (tok:sub(-4, -4) == "A" and "B" or "A") .. tok:sub(-3)
      refused(conf, bearer(bad), "bad signature")
    end
  end)

  it("finds keys by kid, from a PEM file too", function()
    local conf = { keys = { { kid = "r", pem_file = H.keys.rsa.pub },
                            { kid = "e", pem = H.keys.p256.pub_pem } } }
    assert.is_false(T.run(jwt, conf, bearer(H.token("RS256", "rsa", claims, { kid = "r" }))).responded)
    assert.is_false(T.run(jwt, conf, bearer(H.token("ES256", "p256", claims, { kid = "e" }))).responded)
    refused(conf, bearer(H.token("ES256", "p256", claims, { kid = "x" })), "unknown kid")
  end)

  it("refuses an RSA public key used as an HMAC secret (algorithm confusion)", function()
    local conf = { keys = { { kid = "r", pem = H.keys.rsa.pub_pem } } }
    local tok = H.token("HS256", H.keys.rsa.pub_pem, claims, { kid = "r" })
    refused(conf, bearer(tok), "algorithm HS256 not allowed for the key")
    refused(conf, bearer(H.token("HS256", H.keys.rsa.pub_pem, claims)), "no key for algorithm HS256")
    -- a key pinned to one algorithm
    conf = { keys = { { pem = H.keys.rsa.pub_pem, alg = "RS256" } } }
    refused(conf, bearer(H.token("PS256", "rsa", claims)), "no key for algorithm PS256")
  end)

  it("refuses alg none and algorithms not in the list", function()
    local none = H.b64url('{"alg":"none"}') .. "." .. H.b64url(cjson.encode(claims)) .. "."
    refused(hs, bearer(none), "algorithm not supported")
    refused(hs, bearer(none .. "AAAA"), "algorithm not supported")
    refused({ keys = hs.keys, algorithms = { "HS512" } }, bearer(H.token("HS256", "hmac-secret", claims)),
      "algorithm not allowed")
  end)

  it("refuses malformed tokens with 401 invalid_token, never 500", function()
    local good = H.token("HS256", "hmac-secret", claims)
    local h, p, s = good:match("^([^.]+)%.([^.]+)%.([^.]+)$")
    refused(hs, bearer("abc"), "not three segments")
    refused(hs, bearer(h .. "." .. p), "not three segments")
    refused(hs, bearer(good .. ".x"), "not three segments")
    refused(hs, bearer("!!." .. p .. "." .. s), "bad base64url in the header")
    refused(hs, bearer(h .. "=." .. p .. "." .. s), "bad base64url in the header")
    refused(hs, bearer(H.b64url("[1]") .. "." .. p .. "." .. s), "the header is not a JSON object")
    refused(hs, bearer(H.b64url("{nope") .. "." .. p .. "." .. s), "the header is not a JSON object")
    refused(hs, bearer(H.b64url('{"typ":"JWT"}') .. "." .. p .. "." .. s), "the header has no alg")
    refused(hs, bearer(h .. "." .. p .. ".%%%"), "bad base64url in the signature")
    refused(hs, bearer(h .. "." .. p .. "."), "bad base64url in the signature")
    refused(hs, bearer(string.rep("a", 9000)), "token too large")
    -- signed, but the payload is junk
    local input = h .. "." .. H.b64url("not json")
    refused(hs, bearer(input .. "." .. H.b64url(H.signature("HS256", "hmac-secret", input))),
      "the payload is not a JSON object")
    input = h .. ".!!"
    refused(hs, bearer(input .. "." .. H.b64url(H.signature("HS256", "hmac-secret", input))),
      "bad base64url in the payload")
    -- JSON that cjson's default decoder takes and RFC 8259 does not: NaN never expires
    for _, junk in ipairs({ '{"sub":"u","exp":NaN}', '{"sub":"u","nbf":-Infinity}',
                            '{"sub":"u","exp":0x7fffffff}', '{"sub":NaN}' }) do
      input = h .. "." .. H.b64url(junk)
      refused(hs, bearer(input .. "." .. H.b64url(H.signature("HS256", "hmac-secret", input))),
        "the payload is not a JSON object")
    end
    -- Another scheme is no bearer credential: the bare challenge, no error code (RFC 6750)
    for _, v in ipairs({ "Basic " .. good, good }) do
      local res = T.run(jwt, hs, { headers = { Authorization = v } })
      assert.equal(401, res.status)
      assert.equal('Bearer realm="luaproxy"', res.headers["WWW-Authenticate"])
      T.reset()
    end
  end)

  it("answers a request without a token with a bare challenge", function()
    local res = T.run(jwt, hs, {})
    assert.equal(401, res.status)
    assert.equal('Bearer realm="luaproxy"', res.headers["WWW-Authenticate"])
  end)

  it("checks exp, nbf and iat with leeway", function()
    local function tok(c) return bearer(H.token("HS256", "hmac-secret", c)) end
    refused(hs, tok({ sub = "a", exp = NOW - 1 }), "token expired")
    refused(hs, tok({ sub = "a", exp = NOW }), "token expired")
    refused(hs, tok({ sub = "a", exp = "later" }), "exp is not a number")
    refused(hs, tok({ sub = "a", nbf = NOW + 10 }), "token not valid yet")
    refused(hs, tok({ sub = "a", iat = NOW + 10 }), "token issued in the future")
    local lee = { keys = hs.keys, leeway = 30 }
    assert.is_false(T.run(jwt, lee, tok({ sub = "a", exp = NOW - 10 })).responded)
    assert.is_false(T.run(jwt, lee, tok({ sub = "a", nbf = NOW + 10, iat = NOW + 10 })).responded)
    local t = tok({ sub = "a", exp = NOW + 5 })
    assert.is_false(T.run(jwt, hs, t).responded)
    T.advance(6)
    assert.equal(401, T.run(jwt, hs, t).status)
  end)

  it("checks iss, aud (string or list) and required claims", function()
    local c = { keys = hs.keys, issuer = "https://idp", audience = { "api", "web" },
                required_claims = { "exp" } }
    local function tok(x) return bearer(H.token("HS256", "hmac-secret", x)) end
    assert.is_false(T.run(jwt, c, tok({ sub = "a", iss = "https://idp", aud = "api", exp = NOW + 9 })).responded)
    assert.is_false(T.run(jwt, c, tok({ sub = "a", iss = "https://idp", aud = { "x", "web" }, exp = NOW + 9 })).responded)
    refused(c, tok({ sub = "a", iss = "https://evil", aud = "api", exp = NOW + 9 }), "issuer not accepted")
    refused(c, tok({ sub = "a", aud = "api", exp = NOW + 9 }), "issuer not accepted")
    refused(c, tok({ sub = "a", iss = "https://idp", aud = { "x" }, exp = NOW + 9 }), "audience not accepted")
    refused(c, tok({ sub = "a", iss = "https://idp", aud = 5, exp = NOW + 9 }), "audience not accepted")
    refused(c, tok({ sub = "a", iss = "https://idp", aud = "api" }), "missing claim exp")
    refused(hs, tok({ name = "a" }), "no sub claim")
  end)

  it("reads the token from a cookie or a query argument and hides it", function()
    local c = { keys = hs.keys, header = "", cookie = "jwt", query = "access_token" }
    local t = H.token("HS256", "hmac-secret", claims)
    local res = T.run(jwt, c, { headers = { Cookie = "a=1; jwt=" .. t .. "; b=2" } })
    assert.is_false(res.responded)
    assert.equal("a=1; b=2", res.request_headers["Cookie"])
    res = T.run(jwt, c, { uri = "/x?access_token=" .. t .. "&y=1" })
    assert.is_false(res.responded)
    assert.equal("/x?y=1", res.uri)
    res = T.run(jwt, c, { headers = { Cookie = "jwt=" .. t } })
    assert.is_nil(res.request_headers["Cookie"])
    -- another header, raw
    res = T.run(jwt, { keys = hs.keys, header = "X-Token" }, { headers = { ["X-Token"] = t } })
    assert.is_false(res.responded)
  end)

  it("sets headers from claims and removes the client's", function()
    local c = { keys = hs.keys, claim_headers = { ["X-Email"] = "email", ["X-Role"] = "role" } }
    local res = T.run(jwt, c, { headers = { Authorization = "Bearer " .. H.token("HS256", "hmac-secret",
      { sub = "a", email = "a@x" }), ["X-Role"] = "admin" } })
    assert.equal("a@x", res.request_headers["X-Email"])
    assert.is_nil(res.request_headers["X-Role"])
  end)

  it("takes a base64 secret", function()
    local c = { keys = { { secret = "aG1hYy1zZWNyZXQ=", secret_base64 = true } } }
    assert.is_false(T.run(jwt, c, bearer(H.token("HS256", "hmac-secret", claims))).responded)
  end)

  it("rejects bad configs", function()
    assert.error_matches(function() T.run(jwt, {}) end, "keys or jwks_url is needed", 1, true)
    assert.error_matches(function() T.run(jwt, { keys = { { secret = "a", pem = "b" } } }) end,
      "keys[1]: give one of secret, pem, pem_file", 1, true)
    assert.error_matches(function() T.run(jwt, { keys = { { pem = "junk" } } }) end,
      "keys[1]: no PEM public key", 1, true)
    assert.error_matches(function() T.run(jwt, { keys = { { pem = H.keys.rsa.pub_pem, alg = "ES256" } } }) end,
      "keys[1].alg: ES256 needs a P-256 key, this one is RSA", 1, true)
    assert.error_matches(function() T.run(jwt, { keys = { { secret = "a", alg = "RS256" } } }) end,
      "keys[1].alg: RS256 does not take a secret", 1, true)
    assert.error_matches(function() T.run(jwt, { jwks_url = "http://x/", jwks_dict = "nope" }) end,
      "jwks_dict: no shared dict nope", 1, true)
  end)

  describe("JWKS", function()
    local URL = "http://idp.test/jwks"
    local long_claims = { sub = "ann", exp = NOW + 100000 }
    local jwks
    local function serve() T.http_mock(URL, function() return { status = 200, body = jwks } end) end
    before_each(function()
      jwks = cjson.encode({ keys = { H.jwk("rsa", "r1", "RS256"), H.jwk("p256", "e1"),
                                     H.jwk("p384", "e2"), H.jwk("ed", "o1"),
                                     { kty = "oct", k = "c2VjcmV0", kid = "sym" } } })
    end)
    local conf = { jwks_url = URL, jwks_refresh = 60, jwks_min_refresh = 10 }

    it("fetches the keys on first use and verifies RSA, EC and OKP keys by kid", function()
      serve()
      for _, c in ipairs({ { "RS256", "rsa", "r1" }, { "ES256", "p256", "e1" },
                           { "ES384", "p384", "e2" }, { "EdDSA", "ed", "o1" } }) do
        local res = T.run(jwt, conf, bearer(H.token(c[1], c[2], long_claims, { kid = c[3] })))
        assert.is_false(res.responded, c[1])
      end
      assert.equal(1, #T.http_requests)
      assert.equal(jwks, proxy.shared.jwks:get("jwks:" .. URL))
      -- an oct key in a JWKS is never used
      refused(conf, bearer(H.token("HS256", "secret", long_claims, { kid = "sym" })), "unknown kid", true)
    end)

    it("refreshes on its timer and keeps the last good keys when the endpoint fails", function()
      serve()
      local tok = H.token("RS256", "rsa", long_claims, { kid = "r1" })
      assert.is_false(T.run(jwt, conf, bearer(tok)).responded)
      for _, bad in ipairs({ { status = 500, body = "down" }, { status = 200, body = "<html>" },
                             { status = 200, body = '{"keys":[{"kty":"RSA","n":"!!"}]}' },
                             { status = 200, body = '{"keys":"x"}' } }) do
        T.http_reset()
        T.http_mock(URL, bad)
        T.advance(61) -- the refresh timer runs
        assert.equal(1, #T.http_requests)
        local r = T.run(jwt, conf, bearer(tok))
        assert.is_false(r.responded, r.body)
        local warned = T.log_lines("warn")
        assert.truthy(warned[#warned]:find("keeping the last good keys", 1, true))
      end
      T.http_reset()
      T.http_mock(URL, function() return nil, "connect to idp.test:80: connection refused" end)
      T.advance(61)
      assert.is_false(T.run(jwt, conf, bearer(tok)).responded)
    end)

    it("fetches again for an unknown kid, at most every jwks_min_refresh", function()
      serve()
      local tok1 = H.token("RS256", "rsa", long_claims, { kid = "r1" })
      assert.is_false(T.run(jwt, conf, bearer(tok1)).responded)
      local tok2 = H.token("RS256", "rsa2", long_claims, { kid = "r2" })
      refused(conf, bearer(tok2), "unknown kid", true)
      T.advance(11)
      -- rotated: the new key appears
      jwks = cjson.encode({ keys = { H.jwk("rsa2", "r2") } })
      local n = #T.http_requests
      local r = T.run(jwt, conf, bearer(tok2))
      assert.is_false(r.responded, r.body .. n)
      assert.equal(n + 1, #T.http_requests)
      refused(conf, bearer(H.token("RS256", "rsa", long_claims, { kid = "zz" })), "unknown kid", true)
      assert.equal(n + 1, #T.http_requests) -- not again within jwks_min_refresh
    end)

    it("answers 401 (and logs) when the JWKS was never fetched", function()
      T.http_mock(URL, { status = 503 })
      refused(conf, bearer(H.token("RS256", "rsa", long_claims, { kid = "r1" })), "no keys", true)
      T.reset()
      jwt._reset()
      T.http_mock(URL, { status = 200, body = "junk" })
      local res = T.run(jwt, conf, bearer(H.token("RS256", "rsa", long_claims, { kid = "r1" })))
      assert.equal(401, res.status)
      assert.truthy(T.log_lines("warn")[1]:find("not a JWKS", 1, true))
    end)

    it("parses JWKS documents, skipping what it cannot use", function()
      assert.is_nil(jwt.parse_jwks("[]"))
      assert.is_nil(jwt.parse_jwks('{"keys":[]}'))
      assert.is_nil(jwt.parse_jwks('{"keys":[{"kty":"EC","crv":"P-256","x":"AAAA","y":"AAAA"}]}'))
      local bad_point = H.jwk("p256", "e")
      bad_point.y = bad_point.x
      assert.is_nil(jwt.parse_jwks(cjson.encode({ keys = { bad_point } })))
      local enc = H.jwk("rsa", "x")
      enc.use = "enc"
      assert.is_nil(jwt.parse_jwks(cjson.encode({ keys = { enc } })))
      local set = jwt.parse_jwks(cjson.encode({ keys = { enc, H.jwk("ed", "o") } }))
      assert.equal(1, #set.list)
    end)
  end)
end)
