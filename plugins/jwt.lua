-- jwt: verifies JSON Web Tokens (RFC 7519, JWS compact form) with OpenSSL: HS256/384/512,
-- RS256/384/512, PS256/384/512, ES256/384 and EdDSA (Ed25519). Keys from the config (a
-- secret, PEM text or a PEM file) or a JWKS URL fetched with proxy.http, kept in a shared
-- dict, refreshed by a timer and looked up by kid. Checks exp, nbf, iat (with leeway),
-- iss, aud and required claims. Sets req.ctx.consumer and req.ctx.jwt_claims.
-- Every malformed token gets 401 with WWW-Authenticate: Bearer error="invalid_token".
-- Docs: docs/plugins/jwt.md.
local crypto = require "luaproxy.crypto"
local common = require "luaproxy.auth_common"
local cjson = require "cjson.safe"

local find, sub, format, gsub, lower, byte = string.find, string.sub, string.format, string.gsub,
  string.lower, string.byte
local type, pairs, ipairs, tostring = type, pairs, ipairs, tostring
-- A decoder of its own that refuses what RFC 8259 does not allow: cjson's default takes
-- NaN, Infinity and hex numbers, and `"exp": NaN` compares false both ways (never expired).
local strict_json = cjson.new()
strict_json.decode_invalid_numbers(false)
local decode_json = strict_json.decode
local b64url, b64url_at = crypto.b64url_decode, crypto.b64url_decode_at

local P = {
  name = "jwt",
  priority = 2450, -- with the auth plugins: below redirect, above the router
}

-- What each algorithm needs of a key (RFC 7518 section 3.1; EdDSA: RFC 8037).
local ALGS = {
  HS256 = { kind = "HMAC", md = 256 }, HS384 = { kind = "HMAC", md = 384 },
  HS512 = { kind = "HMAC", md = 512 },
  RS256 = { kind = "RSA", md = 256 }, RS384 = { kind = "RSA", md = 384 },
  RS512 = { kind = "RSA", md = 512 },
  PS256 = { kind = "RSA", md = 256, pss = true }, PS384 = { kind = "RSA", md = 384, pss = true },
  PS512 = { kind = "RSA", md = 512, pss = true },
  ES256 = { kind = "P-256", md = 256 }, ES384 = { kind = "P-384", md = 384 },
  EdDSA = { kind = "Ed25519" },
}
local ALG_NAMES = {}
for k in pairs(ALGS) do ALG_NAMES[#ALG_NAMES + 1] = k end
table.sort(ALG_NAMES)

local function list_of(v)
  if type(v) == "string" then return { v } end
  return v
end

P.schema = {
  fields = common.with_fields({
    keys = {
      type = "array", default = {},
      description = "static keys: { kid =, alg =, secret = (HMAC) | pem = | pem_file = }",
      elements = {
        type = "record",
        fields = {
          kid = { type = "string", description = "key id (the token header's kid); none: the key "
                    .. "is tried for tokens without a kid" },
          alg = { type = "string", one_of = ALG_NAMES,
                  description = "the one algorithm this key accepts (default: every one its "
                    .. "kind allows, among `algorithms`)" },
          secret = { type = "string", secret = true, min = 1, description = "HMAC secret" },
          secret_base64 = { type = "boolean", default = false,
                            description = "secret is base64 (or base64url): decode it first" },
          pem = { type = "string", description = "public key, certificate or private key, PEM" },
          pem_file = { type = "string", description = "a PEM file (relative to the config file), "
                         .. "read when the config loads" },
        },
      },
    },
    jwks_url = { type = "string", pattern = "^https?://",
                 description = "JWKS URL (RSA, EC and OKP keys), fetched with proxy.http" },
    jwks_dict = { type = "string", default = "jwks", pattern = "^[%w_]+$",
                  description = "shared dict (declared in the config's `shared`) holding the "
                    .. "last good JWKS for every worker" },
    jwks_refresh = { type = "duration", default = 300, min = 1,
                     description = "seconds between two fetches of the JWKS" },
    jwks_min_refresh = { type = "duration", default = 30,
                         description = "a token with an unknown kid fetches the JWKS again at "
                           .. "most this often (seconds, per worker)" },
    jwks_timeout = { type = "duration", default = 5, min = 0.001,
                     description = "seconds for each step of a JWKS fetch" },
    jwks_ssl_verify = { type = "boolean", default = true,
                        description = "check the JWKS server's certificate" },
    algorithms = { type = "array", elements = { type = "string", one_of = ALG_NAMES },
                   default = ALG_NAMES,
                   description = "algorithms accepted; \"none\" never is" },
    header = { type = "string", default = "Authorization",
               description = "request header carrying `Bearer <token>` (\"\" for none)" },
    cookie = { type = "string", pattern = "^[!#$%%&'*+.^_`|~%w-]+$",
               description = "cookie carrying the token, tried after the header" },
    query = { type = "string", pattern = "^[%w%-_.~]+$",
              description = "query argument carrying the token, tried last" },
    max_token = { type = "integer", default = 8192, min = 16,
                  description = "longest token accepted (bytes); a longer one is refused" },
    leeway = { type = "duration", default = 0,
               description = "seconds of clock skew allowed for exp, nbf and iat" },
    issuer = { type = "array", elements = { type = "string" }, coerce = list_of,
               description = "accepted `iss` values (a string or a list)" },
    audience = { type = "array", elements = { type = "string" }, coerce = list_of,
                 description = "accepted `aud` values: the token's (a string or a list) must "
                   .. "hold one" },
    required_claims = { type = "array", elements = { type = "string" }, default = {},
                        description = "claims that must be present (\"exp\" for tokens that expire)" },
    consumer_claim = { type = "string", default = "sub",
                       description = "claim whose value is the consumer id" },
    claim_headers = { type = "map", values = { type = "string" }, default = {},
                      description = "request headers set from claims for the upstream: "
                        .. "header name = claim name (strings and numbers; a client's value of "
                        .. "such a header is always replaced or removed)" },
  }),
  custom = function(conf)
    if not conf.jwks_url and #(conf.keys or {}) == 0 then
      return nil, "keys or jwks_url is needed"
    end
    return true
  end,
}

-- ---- keys ----

local function key_alg_ok(key, alg, spec)
  return key.kind == spec.kind and (key.alg == nil or key.alg == alg)
end

-- A key record from a static entry.
local function static_key(k, i)
  local where = format("keys[%d]", i)
  local n = (k.secret and 1 or 0) + (k.pem and 1 or 0) + (k.pem_file and 1 or 0)
  if n ~= 1 then return nil, where .. ": give one of secret, pem, pem_file" end
  if k.secret then
    local secret = k.secret
    if k.secret_base64 then
      secret = crypto.b64_decode(secret) or crypto.b64url_decode(secret)
      if not secret then return nil, where .. ".secret: not base64" end
    end
    if k.alg and ALGS[k.alg].kind ~= "HMAC" then
      return nil, where .. ".alg: " .. k.alg .. " does not take a secret"
    end
    local h = {}
    for _, md in ipairs({ 256, 384, 512 }) do h[md] = crypto.hmac(md, secret) end
    return { kid = k.kid, alg = k.alg, kind = "HMAC", hmac = h }
  end
  local pem = k.pem
  if k.pem_file then
    local path = k.pem_file
    local rt = package.loaded["luaproxy.runtime"]
    if sub(path, 1, 1) ~= "/" and rt and rt.config_dir then path = rt.config_dir .. "/" .. path end
    local f, err = io.open(path, "rb")
    if not f then return nil, where .. ".pem_file: " .. tostring(err) end
    pem = f:read("*a")
    f:close()
  end
  local pk, err = crypto.pkey_pem(pem)
  if not pk then return nil, where .. ": " .. err end
  local kind = crypto.pkey_kind(pk)
  if not kind then return nil, where .. ": not an RSA (>= 1024 bits), P-256, P-384 or Ed25519 key" end
  if k.alg and ALGS[k.alg].kind ~= kind then
    return nil, format("%s.alg: %s needs a %s key, this one is %s", where, k.alg,
      ALGS[k.alg].kind, kind)
  end
  return { kid = k.kid, alg = k.alg, kind = kind, pkey = pk }
end

-- A key record from a JWK (RFC 7517), or nil, "why".
local function jwk_key(j)
  if type(j) ~= "table" then return nil, "not an object" end
  if j.use ~= nil and j.use ~= "sig" then return nil, "use is not sig" end
  local alg = j.alg
  if alg ~= nil and not ALGS[alg] then return nil, "unknown alg" end
  local kid = j.kid
  if kid ~= nil and type(kid) ~= "string" then return nil, "kid is not a string" end
  local function field(name)
    local v = j[name]
    if type(v) ~= "string" then return nil end
    return b64url(v)
  end
  local pk
  if j.kty == "RSA" then
    local n, e = field("n"), field("e")
    pk = n and e and crypto.pkey_rsa(n, e)
  elseif j.kty == "EC" then
    local bits = j.crv == "P-256" and 256 or j.crv == "P-384" and 384
    local x, y = field("x"), field("y")
    pk = bits and x and y and crypto.pkey_ec(bits, x, y)
  elseif j.kty == "OKP" then
    local x = j.crv == "Ed25519" and field("x")
    pk = x and crypto.pkey_ed25519(x)
  else
    return nil, "kty not RSA, EC or OKP"
  end
  if not pk then return nil, "bad key material" end
  local kind = crypto.pkey_kind(pk)
  if not kind then return nil, "unsupported key size or curve" end
  if alg and ALGS[alg].kind ~= kind then return nil, "alg does not fit the key" end
  return { kid = kid, alg = alg, kind = kind, pkey = pk }
end

-- Keys of a JWKS document: { by_kid = {}, list = {} }, or nil, "why" (junk, no usable key).
local function parse_jwks(body)
  local doc = decode_json(body)
  if type(doc) ~= "table" or type(doc.keys) ~= "table" then
    return nil, "not a JWKS (no keys array)"
  end
  local set = { by_kid = {}, list = {} }
  for _, j in ipairs(doc.keys) do
    local k = jwk_key(j)
    if k then
      set.list[#set.list + 1] = k
      if k.kid then set.by_kid[k.kid] = k end
    end
  end
  if #set.list == 0 then return nil, "no usable key" end
  return set
end
P.parse_jwks = parse_jwks

function P.compile(conf)
  common.compile(conf)
  local static = { by_kid = {}, list = {} }
  for i, k in ipairs(conf.keys) do
    local key, err = static_key(k, i)
    if not key then return nil, err end
    static.list[#static.list + 1] = key
    if key.kid then static.by_kid[key.kid] = key end
  end
  conf.static = static
  conf.allowed = {}
  for _, a in ipairs(conf.algorithms) do conf.allowed[a] = true end
  if conf.header == "" then conf.header = nil end
  conf.bearer = conf.header and lower(conf.header) == "authorization"
  conf.iss_set = conf.issuer and {} or nil
  for _, v in ipairs(conf.issuer or {}) do conf.iss_set[v] = true end
  conf.aud_set = conf.audience and {} or nil
  for _, v in ipairs(conf.audience or {}) do conf.aud_set[v] = true end
  conf.claim_list = {}
  for h, c in pairs(conf.claim_headers) do conf.claim_list[#conf.claim_list + 1] = { h, c } end
  conf.challenge = format('Bearer realm="%s"', conf.realm)
  if conf.jwks_url then
    conf.jwks_key = "jwks:" .. conf.jwks_url
    -- Caught when the config loads (`luaproxy -t` too), not when a worker starts.
    if proxy.shared and not proxy.shared[conf.jwks_dict] then
      return nil, "jwks_dict: no shared dict " .. conf.jwks_dict
        .. " (declare it in the config's `shared`)"
    end
  end
  return conf
end

-- ---- JWKS: fetched by one worker at a time, kept in the shared dict, parsed per worker ----

-- Per worker and URL: { body =, set =, forced = monotonic time of the last forced refresh }.
local jwks_state = {}
-- Decoded JOSE headers by their base64url text: tokens of one issuer share a few. And
-- decoded claims of verified tokens (tables shared by the requests of one token: other
-- plugins read req.ctx.jwt_claims, never change it). Per worker, bounded.
local header_cache, header_cache_n = {}, 0
local claims_cache, claims_cache_n = {}, 0
local m_refused -- on GET /metrics

local function dict_of(conf)
  local d = proxy.shared[conf.jwks_dict]
  if not d then error("jwt: jwks_dict: no shared dict " .. conf.jwks_dict
    .. " (declare it in the config's `shared`)", 0) end
  return d
end

local function fetch(conf)
  local res, err = proxy.http.request {
    url = conf.jwks_url, timeout = conf.jwks_timeout, ssl_verify = conf.jwks_ssl_verify,
    headers = { Accept = "application/json" }, max_body = 1048576,
  }
  if not res then return nil, err end
  if res.status ~= 200 then return nil, "status " .. res.status end
  local set, perr = parse_jwks(res.body)
  if not set then return nil, perr end
  return res.body, set
end

-- Brings this worker's keys up to date with the dict, fetching first when the dict's copy is
-- older than jwks_refresh (or `force`). Never raises for the network or the document: a
-- failure keeps the last good keys and is logged.
local function refresh(conf, force)
  local d = dict_of(conf)
  local url = conf.jwks_url
  local st = jwks_state[url]
  if not st then st = { forced = -1e9 } jwks_state[url] = st end
  local key, at_key, lock_key = conf.jwks_key, conf.jwks_key .. ":at", conf.jwks_key .. ":lock"
  local body = d:get(key)
  local at = d:get(at_key) or 0
  if force or not body or proxy.now() - at >= conf.jwks_refresh then
    -- One worker fetches; the lock expires by itself should that worker go away.
    if d:add(lock_key, true, conf.jwks_timeout * 3 + 1) then
      local new, set = fetch(conf)
      if new then
        d:set(key, new)
        d:set(at_key, proxy.now())
        body = new
        st.body, st.set = new, set
      else
        -- Counted as an attempt, so every worker does not retry at once.
        d:set(at_key, proxy.now())
        proxy.log.warn(format("jwt: JWKS %s: %s; %s", url, tostring(set),
          body and "keeping the last good keys" or "no keys yet"))
      end
      d:delete(lock_key)
    end
  end
  if body and body ~= st.body then
    local set, err = parse_jwks(body)
    if set then
      st.body, st.set = body, set
    else
      proxy.log.warn("jwt: JWKS in the shared dict: " .. err)
    end
  end
  return st
end
P.refresh = refresh
-- Forgets this worker's keys (specs: each starts from nothing, as a new worker does).
function P._reset()
  jwks_state = {}
  header_cache, header_cache_n = {}, 0
  claims_cache, claims_cache_n = {}, 0
end

function P.init_worker(conf)
  m_refused = proxy.metrics.counter("jwt_refused_total", "Requests jwt refused, by reason.",
    { "reason" })
  if not conf.jwks_url then return end
  dict_of(conf)
  proxy.timer.at(0, function(premature) if not premature then refresh(conf) end end)
  proxy.timer.every(conf.jwks_refresh, function(premature)
    if not premature then refresh(conf) end
  end)
end

-- ---- tokens ----

local function refuse(req, conf, desc, no_token)
  if m_refused then m_refused:inc(1, no_token and "no token" or "invalid") end
  proxy.log.info(format("jwt: refused %s: %s", req:client_ip(), desc))
  common.clear_consumer(req, conf)
  for i = 1, #conf.claim_list do req:clear_header(conf.claim_list[i][1]) end
  local www
  if no_token then
    www = conf.challenge
  else
    www = format('%s, error="invalid_token", error_description="%s"', conf.challenge, desc)
  end
  return req:respond(401, cjson.encode({ error = no_token and "unauthorized" or "invalid_token",
                                         error_description = desc }) .. "\n",
    { ["WWW-Authenticate"] = www, ["Content-Type"] = "application/json" })
end

local function cookie_value(h, name)
  if not h then return nil end
  local q = gsub(name, "%p", "%%%0")
  local v = h:match("^%s*" .. q .. "=([^;]*)") or h:match(";%s*" .. q .. "=([^;]*)")
  if v then v = gsub(gsub(v, "^%s+", ""), "%s+$", "") end
  return v
end
P.cookie_value = cookie_value

local function drop_cookie(h, name)
  local out = {}
  for part in (h .. ";"):gmatch("([^;]*);") do
    local n = part:match("^%s*([^=]*)=")
    if part:find("%S") and n ~= name then out[#out + 1] = part:gsub("^%s+", "") end
  end
  return table.concat(out, "; ")
end
P.drop_cookie = drop_cookie

-- The token and where it came from ("header", "cookie", "query"), or nil. An
-- Authorization header of another scheme (Basic, for another layer) is no token: the next
-- source is tried, and without one the answer is the bare challenge (RFC 6750 §3.1: no
-- error code when the request has no bearer credentials).
local function token_of(req, conf)
  if conf.header then
    local h = req:header(conf.header)
    if h and conf.bearer then
      -- "Bearer" in any case, then one or more spaces (no pattern on the hot path).
      local scheme = sub(h, 1, 7)
      if scheme ~= "Bearer " and lower(scheme) ~= "bearer " then
        h = nil
      else
        local i = 8
        while byte(h, i) == 32 do i = i + 1 end
        h = sub(h, i)
      end
    end
    if h then
      local last = byte(h, -1)
      if last == 32 or last == 9 then h = gsub(h, "[ \t]+$", "") end
      return h, "header"
    end
  end
  if conf.cookie then
    local v = cookie_value(req:header("Cookie"), conf.cookie)
    if v then return v, "cookie" end
  end
  if conf.query then
    local v = req:query(conf.query)
    if v then return v, "query" end
  end
  return nil
end

-- claims table -> { [consumer claim name] = consumer table }; weak: goes with its claims.
local consumers = setmetatable({}, { __mode = "k" })

local function jose_header(text)
  local h = header_cache[text]
  if h then return h end
  local raw = b64url(text)
  if not raw then return nil, "bad base64url in the header" end
  h = decode_json(raw)
  if type(h) ~= "table" or h[1] ~= nil then return nil, "the header is not a JSON object" end
  if type(h.alg) ~= "string" then return nil, "the header has no alg" end
  if header_cache_n >= 256 then header_cache, header_cache_n = {}, 0 end
  header_cache[text] = h
  header_cache_n = header_cache_n + 1
  return h
end

-- input: the token; n: the length of its signing input (header.payload), a prefix of it.
local function verify_with(key, spec, input, n, sig)
  if spec.kind == "HMAC" then return crypto.hmac_verify(key.hmac[spec.md], input, sig, n) end
  return crypto.pkey_verify(key.pkey, spec.md or 0, spec.pss, input, sig, n)
end

-- Finds the key set's key for a kid (or, without one, tries every key fitting alg).
-- Returns true (verified), false (no key verified it), or nil, why (no key fits).
local function verify_in(set, kid, alg, spec, input, n, sig)
  if not set then return nil, "no keys" end
  if kid ~= nil then
    local k = set.by_kid[kid]
    if not k then return nil, "unknown kid" end
    if not key_alg_ok(k, alg, spec) then return nil, "algorithm " .. alg .. " not allowed for the key" end
    return verify_with(k, spec, input, n, sig)
  end
  local tried = false
  for i = 1, #set.list do
    local k = set.list[i]
    if key_alg_ok(k, alg, spec) then
      tried = true
      if verify_with(k, spec, input, n, sig) then return true end
    end
  end
  if not tried then return nil, "no key for algorithm " .. alg end
  return false
end

local function has(set, v)
  if type(v) == "string" then return set[v] == true end
  if type(v) == "table" then
    for i = 1, #v do
      if type(v[i]) == "string" and set[v[i]] then return true end
    end
  end
  return false
end

local function check_claims(conf, c)
  local now, leeway = proxy.now(), conf.leeway
  local exp, nbf, iat = c.exp, c.nbf, c.iat
  if exp ~= nil then
    if type(exp) ~= "number" then return "exp is not a number" end
    if now >= exp + leeway then return "token expired" end
  end
  if nbf ~= nil then
    if type(nbf) ~= "number" then return "nbf is not a number" end
    if now + leeway < nbf then return "token not valid yet" end
  end
  if iat ~= nil then
    if type(iat) ~= "number" then return "iat is not a number" end
    if now + leeway < iat then return "token issued in the future" end
  end
  if conf.iss_set and not has(conf.iss_set, c.iss) then return "issuer not accepted" end
  if conf.aud_set and not has(conf.aud_set, c.aud) then return "audience not accepted" end
  local req_claims = conf.required_claims
  for i = 1, #req_claims do
    if c[req_claims[i]] == nil then return "missing claim " .. req_claims[i] end
  end
  return nil
end

function P.request(req, conf)
  local token, from = token_of(req, conf)
  if not token then return refuse(req, conf, "no token", true) end
  if #token > conf.max_token then return refuse(req, conf, "token too large") end
  local d1 = find(token, ".", 1, true)
  local d2 = d1 and find(token, ".", d1 + 1, true)
  if not d2 or find(token, ".", d2 + 1, true) then
    return refuse(req, conf, "not three segments")
  end
  local h, herr = jose_header(sub(token, 1, d1 - 1))
  if not h then return refuse(req, conf, herr) end
  local alg = h.alg
  local spec = ALGS[alg]
  if not spec then return refuse(req, conf, "algorithm not supported") end
  if not conf.allowed[alg] then return refuse(req, conf, "algorithm not allowed") end
  if h.crit ~= nil then return refuse(req, conf, "unsupported crit header") end
  local kid = h.kid
  if kid ~= nil and type(kid) ~= "string" then return refuse(req, conf, "kid is not a string") end
  local sig = b64url_at(token, d2 + 1, #token)
  if not sig or sig == "" then return refuse(req, conf, "bad base64url in the signature") end
  -- The signing input is the token's first d2 - 1 bytes: no substring is made.
  local input, n = token, d2 - 1

  local ok, why = verify_in(conf.static, kid, alg, spec, input, n, sig)
  if ok == nil and conf.jwks_url then
    local st = jwks_state[conf.jwks_url]
    ok, why = verify_in(st and st.set, kid, alg, spec, input, n, sig)
    if ok == nil and (why == "unknown kid" or why == "no keys") then
      -- Keys may have rotated (or not been fetched yet): fetch again, at most every
      -- jwks_min_refresh seconds per worker.
      st = st or { forced = -1e9 }
      local now = proxy.monotonic()
      if now - (st.forced or -1e9) >= conf.jwks_min_refresh then
        st = refresh(conf, true)
        st.forced = now
        ok, why = verify_in(st.set, kid, alg, spec, input, n, sig)
      end
    end
  end
  if ok == nil then return refuse(req, conf, why) end
  if not ok then return refuse(req, conf, "bad signature") end

  -- Decoded payloads of verified tokens, by their text: a client sends its token many
  -- times. The checks below still run on every request.
  local ptext = sub(token, d1 + 1, d2 - 1)
  local claims = claims_cache[ptext]
  if not claims then
    local raw = b64url(ptext)
    if not raw then return refuse(req, conf, "bad base64url in the payload") end
    claims = decode_json(raw)
    if type(claims) ~= "table" or claims[1] ~= nil then
      return refuse(req, conf, "the payload is not a JSON object")
    end
    if claims_cache_n >= 1024 then claims_cache, claims_cache_n = {}, 0 end
    claims_cache[ptext] = claims
    claims_cache_n = claims_cache_n + 1
  end
  local cerr = check_claims(conf, claims)
  if cerr then return refuse(req, conf, cerr) end
  -- The consumer of a claims table, made once per table (claims tables are cached).
  local cc = consumers[claims]
  local consumer = cc and cc[conf.consumer_claim]
  if not consumer then
    local id = claims[conf.consumer_claim]
    local tid = type(id)
    if tid ~= "string" and tid ~= "number" then
      return refuse(req, conf, "no " .. conf.consumer_claim .. " claim")
    end
    consumer = { id = tostring(id), plugin = "jwt" }
    if not cc then cc = {} consumers[claims] = cc end
    cc[conf.consumer_claim] = consumer
  end

  if conf.hide_credentials then
    if from == "header" then
      req:clear_header(conf.header)
    elseif from == "cookie" then
      local rest = drop_cookie(req:header("Cookie"), conf.cookie)
      req:set_header("Cookie", rest ~= "" and rest or nil)
    else
      local uri = req:uri()
      local q = find(uri, "?", 1, true)
      local rest = common.strip_arg(sub(uri, q + 1), conf.query)
      req:set_path(rest == "" and sub(uri, 1, q - 1) or sub(uri, 1, q) .. rest)
    end
  end
  req.ctx.jwt_claims = claims
  common.set_consumer(req, conf, consumer)
  for i = 1, #conf.claim_list do
    local hc = conf.claim_list[i]
    local v = claims[hc[2]]
    local tv = type(v)
    if tv == "string" or tv == "number" then
      req:set_header(hc[1], gsub(tostring(v), "%c", ""))
    else
      req:clear_header(hc[1])
    end
  end
end

return P
