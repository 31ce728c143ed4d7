-- Cryptography for the authentication plugins (basic_auth, key_auth, jwt, forward_auth):
-- thin Lua over engine/crypto.c (OpenSSL, libxcrypt). Results are values, never errors:
-- every function taking client input returns nil (or false) for bad input.
local ffi = require "ffi"
local C = require "luaproxy.native"
local K = require "luaproxy.ffi"

local ffi_string, ffi_gc = ffi.string, ffi.gc
local tonumber = tonumber

local M = {}

-- Scratch for decodes up to 16 KiB (tokens are bounded well under that by the plugins);
-- larger inputs get a buffer of their own.
local SCRATCH = 16384
local scratch = ffi.new("char[?]", SCRATCH)

local function b64(s, url)
  local n = #s
  local need = n - n % 4 + 3
  local buf = need <= SCRATCH and scratch or ffi.new("char[?]", need)
  local len = tonumber(C.lp_ffi_b64_decode(s, n, url, buf, need))
  if len < 0 then return nil end
  return ffi_string(buf, len)
end

-- base64url without padding (JWS); nil for anything else.
function M.b64url_decode(s) return b64(s, 1) end

-- base64url of s's bytes from..to (no substring made: a token is decoded in place).
local cast, u8p = ffi.cast, ffi.typeof("const char *")
function M.b64url_decode_at(s, from, to)
  local n = to - from + 1
  if n < 0 then return nil end
  local need = n - n % 4 + 3
  local buf = need <= SCRATCH and scratch or ffi.new("char[?]", need)
  local len = tonumber(C.lp_ffi_b64_decode(cast(u8p, s) + (from - 1), n, 1, buf, need))
  if len < 0 then return nil end
  return ffi_string(buf, len)
end
-- Standard base64, padding optional (Basic credentials); nil for anything else.
function M.b64_decode(s) return b64(s, 0) end

local dbuf = ffi.new("char[64]")
-- Raw digest: md 1 (SHA-1), 256, 384, 512.
function M.digest(md, s)
  local n = C.lp_ffi_digest(md, s, #s, dbuf)
  if n < 0 then return nil end
  return ffi_string(dbuf, n)
end

-- Constant-time equality of two strings.
function M.equal(a, b) return C.lp_ffi_ct_equal(a, #a, b, #b) == 1 end

-- A password against an htpasswd-style hash: true, false, or nil, "unsupported hash".
function M.passwd_verify(pw, hash)
  local rc = C.lp_ffi_passwd_verify(pw, #pw, hash, #hash)
  if rc < 0 then return nil, "unsupported or malformed hash" end
  return rc == 1
end

-- The same off the worker's thread (engine/crypto_job.c): the running phase waits, the
-- worker serves other requests meanwhile. Where no task runs, or the engine's library has
-- no jobs (the proxy.test double), the check runs in place. nil, "busy" when the process
-- has too many checks in flight.
local has_jobs = pcall(function() return C.lp_ffi_passwd_job end)
local jobp = ffi.new("void *[1]")
local resp = ffi.new("int[1]")
local wait = require("luaproxy.phases").wait

function M.passwd_verify_async(pw, hash)
  if not has_jobs then return M.passwd_verify(pw, hash) end
  local rc = C.lp_ffi_passwd_job(pw, #pw, hash, #hash, jobp)
  if rc == K.EPHASE then return M.passwd_verify(pw, hash) end
  if rc ~= 0 then return nil, "busy" end
  local job = ffi_gc(jobp[0], C.lp_ffi_passwd_job_free)
  while true do
    local w = C.lp_ffi_passwd_job_wait(job, resp)
    if w == 0 then break end
    if w < 0 then return nil, "busy" end
    wait()
  end
  local r = resp[0]
  if r < 0 then return nil, "unsupported or malformed hash" end
  return r == 1
end

-- Which hash kinds passwd_verify knows, by prefix (for config checks).
function M.hash_kind(hash)
  if hash:find("^%$2[aby]%$%d%d%$") then return "bcrypt" end
  if hash:find("^%$5%$") then return "sha256-crypt" end
  if hash:find("^%$6%$") then return "sha512-crypt" end
  if hash:find("^%$apr1%$") then return "apr1" end
  if hash:find("^%$1%$") then return "md5-crypt" end
  if hash:find("^{SHA}") then return "sha1" end
  return nil
end

-- A keyed HMAC object (md 256/384/512), freed by the garbage collector; nil on error.
function M.hmac(md, key)
  local h = C.lp_ffi_hmac_new(md, key, #key)
  if h == nil then return nil end
  return ffi_gc(h, C.lp_ffi_hmac_free)
end

-- n: how many bytes of data (default all): a token's signing input is its prefix.
function M.hmac_verify(h, data, sig, n)
  return C.lp_ffi_hmac_verify(h, data, n or #data, sig, #sig) == 1
end

local errbuf = ffi.new("char[256]")

local function own(k)
  if k == nil then return nil end
  return ffi_gc(k, C.lp_ffi_pkey_free)
end

-- Public keys (EVP_PKEY, freed by the garbage collector), or nil, "why".
function M.pkey_pem(pem)
  local k = C.lp_ffi_pkey_pem(pem, #pem, errbuf, 256)
  if k == nil then return nil, ffi_string(errbuf) end
  return own(k)
end
function M.pkey_rsa(n, e) return own(C.lp_ffi_pkey_rsa(n, #n, e, #e)) end
function M.pkey_ec(bits, x, y) return own(C.lp_ffi_pkey_ec(bits, x, #x, y, #y)) end
function M.pkey_ed25519(x) return own(C.lp_ffi_pkey_ed25519(x, #x)) end

local KINDS = { [K.PKEY_RSA] = "RSA", [K.PKEY_P256] = "P-256", [K.PKEY_P384] = "P-384",
                [K.PKEY_ED25519] = "Ed25519" }
-- "RSA", "P-256", "P-384", "Ed25519", or nil (a key no JWS algorithm here uses).
function M.pkey_kind(k) return KINDS[C.lp_ffi_pkey_kind(k)] end

function M.pkey_verify(k, md, pss, data, sig, n)
  return C.lp_ffi_pkey_verify(k, md, pss and 1 or 0, data, n or #data, sig, #sig) == 1
end

return M
