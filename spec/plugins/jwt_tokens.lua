-- Test helper for the jwt specs (not a spec itself): makes keys and signs tokens with the
-- openssl command line, so that tokens come from another implementation than the one
-- checking them. Keys are made once per run, in a temporary directory.
local cjson = require "cjson"

local H = {}

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

function H.b64url(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local v = a * 65536 + (b or 0) * 256 + (c or 0)
    local n = c and 4 or b and 3 or 2
    for k = 1, n do
      local idx = math.floor(v / 2 ^ (18 - 6 * (k - 1))) % 64
      out[#out + 1] = B64:sub(idx + 1, idx + 1)
    end
  end
  return table.concat(out)
end

local function sh(cmd)
  local p = assert(io.popen(cmd .. " 2>/dev/null", "r"))
  local out = p:read("*a")
  p:close()
  return out
end

local function write(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end
H.read = read

H.dir = os.tmpname()
os.remove(H.dir)
assert(os.execute("mkdir -p " .. H.dir))

-- name -> { priv = path, pub = path }
H.keys = {}
local function genkey(name, args)
  local priv, pub = H.dir .. "/" .. name .. ".pem", H.dir .. "/" .. name .. ".pub.pem"
  sh("openssl genpkey " .. args .. " -out " .. priv)
  sh("openssl pkey -in " .. priv .. " -pubout -out " .. pub)
  H.keys[name] = { priv = priv, pub = pub, pub_pem = read(pub) }
end
genkey("rsa", "-algorithm RSA -pkeyopt rsa_keygen_bits:2048")
genkey("rsa2", "-algorithm RSA -pkeyopt rsa_keygen_bits:2048")
genkey("p256", "-algorithm EC -pkeyopt ec_paramgen_curve:P-256")
genkey("p384", "-algorithm EC -pkeyopt ec_paramgen_curve:P-384")
genkey("ed", "-algorithm ED25519")

-- The DER of an ECDSA signature as JWS's raw r || s of `size` bytes each.
local function der_to_raw(der, size)
  local pos = 3
  if der:byte(2) > 0x80 then pos = pos + (der:byte(2) - 0x80) end
  local function int()
    assert(der:byte(pos) == 0x02)
    local len = der:byte(pos + 1)
    local v = der:sub(pos + 2, pos + 1 + len)
    pos = pos + 2 + len
    v = v:gsub("^%z+", "")
    return string.rep("\0", size - #v) .. v
  end
  local r = int()
  local s = int()
  return r .. s
end

local MD = { ["256"] = "-sha256", ["384"] = "-sha384", ["512"] = "-sha512" }

-- A signature of input with alg and key (a key name of H.keys, or an HMAC secret).
function H.signature(alg, key, input)
  local inp = H.dir .. "/input"
  write(inp, input)
  local bits = alg:match("%d+")
  local md = MD[bits or ""]
  local kind = alg:sub(1, 2)
  if kind == "HS" then
    local hex = key:gsub(".", function(c) return string.format("%02x", c:byte()) end)
    return sh("openssl dgst " .. md .. " -mac HMAC -macopt hexkey:" .. hex .. " -binary " .. inp)
  elseif kind == "RS" then
    return sh("openssl dgst " .. md .. " -sign " .. H.keys[key].priv .. " -binary " .. inp)
  elseif kind == "PS" then
    return sh("openssl dgst " .. md .. " -sign " .. H.keys[key].priv
      .. " -sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:digest -binary " .. inp)
  elseif kind == "ES" then
    local der = sh("openssl dgst " .. md .. " -sign " .. H.keys[key].priv .. " -binary " .. inp)
    return der_to_raw(der, bits == "256" and 32 or 48)
  elseif alg == "EdDSA" then
    return sh("openssl pkeyutl -sign -rawin -inkey " .. H.keys[key].priv .. " -in " .. inp)
  end
  error("unknown alg " .. alg)
end

-- A compact JWS: header table (alg filled in), claims table.
function H.token(alg, key, claims, header)
  header = header or {}
  header.alg = header.alg or alg
  local input = H.b64url(cjson.encode(header)) .. "." .. H.b64url(cjson.encode(claims))
  return input .. "." .. H.b64url(H.signature(alg, key, input))
end

-- The JWK of a public key of H.keys.
function H.jwk(name, kid, alg)
  local k = H.keys[name]
  local der = sh("openssl pkey -pubin -in " .. k.pub .. " -outform DER")
  local j = { kid = kid, alg = alg, use = "sig" }
  if name:find("^rsa") then
    local hex = sh("openssl rsa -pubin -in " .. k.pub .. " -modulus -noout"):match("Modulus=(%x+)")
    local n = hex:gsub("%x%x", function(x) return string.char(tonumber(x, 16)) end)
    j.kty, j.n, j.e = "RSA", H.b64url(n), "AQAB"
  elseif name == "ed" then
    j.kty, j.crv, j.x = "OKP", "Ed25519", H.b64url(der:sub(-32))
  else
    local size = name == "p256" and 32 or 48
    local pt = der:sub(-(2 * size))
    j.kty, j.crv = "EC", name == "p256" and "P-256" or "P-384"
    j.x, j.y = H.b64url(pt:sub(1, size)), H.b64url(pt:sub(size + 1))
  end
  return j
end

function H.cleanup() os.execute("rm -rf " .. H.dir) end

return H
