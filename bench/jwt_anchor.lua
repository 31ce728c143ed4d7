-- luacheck: globals ngx
-- The nginx + Lua anchor of the jwt benchmarks (bench/scenarios.py, `jwt-*`): the JWT
-- verification an OpenResty user writes with lua-resty-core and OpenSSL through the FFI,
-- doing what the jwt plugin does for these tokens: split the compact form, decode the JOSE
-- header and the claims (cached by their text, as the plugin does), check alg and kid, verify the signature
-- (HS256: a keyed EVP_MAC context made once and re-initialised per token, the fastest way
-- OpenSSL 3 offers, as the plugin's engine/crypto.c does; RS256: EVP_DigestVerify with an
-- EVP_PKEY read once), decode the claims, check exp and nbf, set X-Consumer-Id from sub and
-- remove the Authorization header. Loaded by init_by_lua_block (scenarios.py inlines it):
-- no double braces in this file (the bench's templates use them as placeholders).
local ffi = require "ffi"
local base64 = require "ngx.base64" -- lua-resty-core
local cjson = require "cjson.safe"

ffi.cdef [[
typedef struct ossl_param_st {
  const char *key; unsigned int data_type; void *data; size_t data_size; size_t return_size;
} OSSL_PARAM;
void *EVP_MAC_fetch(void *libctx, const char *algorithm, const char *properties);
void *EVP_MAC_CTX_new(void *mac);
int EVP_MAC_init(void *ctx, const unsigned char *key, size_t keylen, const OSSL_PARAM params[]);
int EVP_MAC_update(void *ctx, const unsigned char *data, size_t datalen);
int EVP_MAC_final(void *ctx, unsigned char *out, size_t *outl, size_t outsize);
int CRYPTO_memcmp(const void *a, const void *b, size_t len);
void *BIO_new_mem_buf(const void *buf, int len);
int BIO_free(void *a);
void *PEM_read_bio_PUBKEY(void *bp, void **x, void *cb, void *u);
void *EVP_MD_CTX_new(void);
void EVP_MD_CTX_free(void *ctx);
const void *EVP_sha256(void);
int EVP_DigestVerifyInit(void *ctx, void **pctx, const void *type, void *e, void *pkey);
int EVP_DigestVerify(void *ctx, const unsigned char *sig, size_t siglen,
                     const unsigned char *tbs, size_t tbslen);
]]

-- nginx links libcrypto; load it by name in case its symbols are not global.
local ok, C = pcall(ffi.load, "crypto")
if not ok then C = ffi.load("libcrypto.so.3") end

local decode_b64url, decode_json = base64.decode_base64url, cjson.decode
local find, sub = string.find, string.sub
local ngx_time = ngx.time

local M = {}

local OSSL_PARAM_UTF8_STRING = 4
local UNMODIFIED = ffi.cast("size_t", -1)

-- HS256: one keyed context for the worker.
local function hmac_new(secret)
  local mac = C.EVP_MAC_fetch(nil, "HMAC", nil)
  local ctx = C.EVP_MAC_CTX_new(mac)
  local name = ffi.new("char[7]", "SHA256")
  local params = ffi.new("OSSL_PARAM[2]")
  params[0].key = "digest"
  params[0].data_type = OSSL_PARAM_UTF8_STRING
  params[0].data = name
  params[0].data_size = 6
  params[0].return_size = UNMODIFIED
  assert(C.EVP_MAC_init(ctx, secret, #secret, params) == 1)
  return { ctx = ctx, name = name, params = params }
end

local macbuf = ffi.new("unsigned char[64]")
local maclen = ffi.new("size_t[1]")

local function hs256_verify(h, input, sig)
  local ctx = h.ctx
  if C.EVP_MAC_init(ctx, nil, 0, nil) ~= 1 or C.EVP_MAC_update(ctx, input, #input) ~= 1
    or C.EVP_MAC_final(ctx, macbuf, maclen, 64) ~= 1 then
    return false
  end
  return #sig == 32 and maclen[0] == 32 and C.CRYPTO_memcmp(macbuf, sig, 32) == 0
end

local function pkey_new(pem)
  local bio = C.BIO_new_mem_buf(pem, #pem)
  local k = C.PEM_read_bio_PUBKEY(bio, nil, nil, nil)
  C.BIO_free(bio)
  assert(k ~= nil, "bad PEM")
  return k
end

local function rs256_verify(pkey, input, sig)
  local md = C.EVP_MD_CTX_new()
  local r = C.EVP_DigestVerifyInit(md, nil, C.EVP_sha256(), nil, pkey) == 1
    and C.EVP_DigestVerify(md, sig, #sig, input, #input) == 1
  C.EVP_MD_CTX_free(md)
  return r
end

local keys = {}
function M.setup(hs_secret, rs_pem)
  keys.hs = { alg = "HS256", hmac = hmac_new(hs_secret) }
  keys.rs = { alg = "RS256", pkey = pkey_new(rs_pem) }
end

local header_cache, header_n = {}, 0
local claims_cache, claims_n = {}, 0

local function deny(desc)
  ngx.header["WWW-Authenticate"] = 'Bearer error="invalid_token", error_description="'
    .. desc .. '"'
  return ngx.exit(401)
end

-- dry: check only, change no header (bench/auth_loop.py times the check alone: a request's
-- header store is bounded in luaproxy, so its loop cannot set headers a million times).
function M.access(dry)
  local h = ngx.var.http_authorization
  if not h or sub(h, 1, 7) ~= "Bearer " then return deny("no token") end
  local token = sub(h, 8)
  if #token > 8192 then return deny("token too large") end
  local d1 = find(token, ".", 1, true)
  local d2 = d1 and find(token, ".", d1 + 1, true)
  if not d2 or find(token, ".", d2 + 1, true) then return deny("not three segments") end
  local htext = sub(token, 1, d1 - 1)
  local jh = header_cache[htext]
  if not jh then
    local raw = decode_b64url(htext)
    jh = raw and decode_json(raw)
    if type(jh) ~= "table" or type(jh.alg) ~= "string" then return deny("bad header") end
    if header_n >= 256 then header_cache, header_n = {}, 0 end
    header_cache[htext] = jh
    header_n = header_n + 1
  end
  local key = keys[jh.kid]
  if not key then return deny("unknown kid") end
  if key.alg ~= jh.alg then return deny("algorithm not allowed for the key") end
  local sig = decode_b64url(sub(token, d2 + 1))
  if not sig then return deny("bad signature encoding") end
  local input = sub(token, 1, d2 - 1)
  local good
  if key.hmac then good = hs256_verify(key.hmac, input, sig)
  else good = rs256_verify(key.pkey, input, sig) end
  if not good then return deny("bad signature") end
  -- Decoded claims of verified tokens by their text, as the plugin keeps them.
  local ptext = sub(token, d1 + 1, d2 - 1)
  local claims = claims_cache[ptext]
  if not claims then
    local raw = decode_b64url(ptext)
    claims = raw and decode_json(raw)
    if type(claims) ~= "table" then return deny("bad payload") end
    if claims_n >= 1024 then claims_cache, claims_n = {}, 0 end
    claims_cache[ptext] = claims
    claims_n = claims_n + 1
  end
  local now = ngx_time()
  if claims.exp ~= nil and (type(claims.exp) ~= "number" or now >= claims.exp) then
    return deny("token expired")
  end
  if claims.nbf ~= nil and (type(claims.nbf) ~= "number" or now < claims.nbf) then
    return deny("token not valid yet")
  end
  local subj = claims.sub
  if type(subj) ~= "string" then return deny("no sub claim") end
  ngx.ctx.jwt_claims = claims
  if dry then return end
  ngx.req.clear_header("Authorization")
  ngx.req.set_header("X-Consumer-Id", subj)
end

return M
