-- request_id: gives every request an id, passes it upstream in a header, keeps it in
-- req.ctx.request_id (what req:var("request_id") and $request_id read) and echoes it on the
-- response. Docs: docs/plugins/request_id.md.
local bit = require "bit"

local band, bor, bxor, lshift, rshift, rol, tobit =
  bit.band, bit.bor, bit.bxor, bit.lshift, bit.rshift, bit.rol, bit.tobit
local find, byte, format = string.find, string.byte, string.format

local P = {
  name = "request_id",
  priority = 3000, -- first, so every other plugin (and their logs) sees the id
  schema = {
    fields = {
      header = {
        type = "string", default = "X-Request-Id", pattern = "^[%w!#$%%&'*+%-.^_`|~]+$",
        description = "request header carrying the id upstream (and on the response when echo is on)",
      },
      generate = {
        type = "string", default = "uuid4", one_of = { "uuid4", "hex" },
        description = "id format: uuid4 (random UUID version 4) or hex (32 random hex digits)",
      },
      trust_incoming = {
        type = "boolean", default = true,
        description = "keep a valid id the client sent (1..200 characters of letters, digits, - _ . :)",
      },
      echo = {
        type = "boolean", default = true,
        description = "also set the header on the response sent to the client",
      },
    },
  },
}

-- xoshiro128** on 32-bit words, seeded once per worker (each worker loads its own copy of
-- this module) from /dev/urandom: ids stay unique across workers and restarts, and a draw
-- costs a few bit operations instead of a syscall.
local s0, s1, s2, s3

local function seed()
  local f = io.open("/dev/urandom", "rb")
  local b = f and f:read(16)
  if f then f:close() end
  if b and #b == 16 then
    local function word(i)
      local w1, w2, w3, w4 = byte(b, i, i + 3)
      return bor(lshift(w1, 24), lshift(w2, 16), lshift(w3, 8), w4)
    end
    s0, s1, s2, s3 = word(1), word(5), word(9), word(13)
  else
    -- No /dev/urandom (chroot): time, CPU clock and a heap address, mixed by the warm-up.
    local addr = tonumber((tostring({}):match("0x(%x+)")) or "0", 16) or 0
    s0 = tobit(os.time())
    s1 = tobit(os.clock() * 1e9)
    s2 = tobit(addr % 4294967296)
    s3 = tobit(0x9e3779b9)
  end
  if s0 == 0 and s1 == 0 and s2 == 0 and s3 == 0 then s0 = 1 end
end

local function next32()
  local result = tobit(rol(tobit(s1 * 5), 7) * 9)
  local t = lshift(s1, 9)
  s2 = bxor(s2, s0)
  s3 = bxor(s3, s1)
  s1 = bxor(s1, s2)
  s0 = bxor(s0, s3)
  s2 = bxor(s2, t)
  s3 = rol(s3, 11)
  return result
end

seed()
for _ = 1, 8 do next32() end

-- For specs: the generator state, to check the algorithm against reference values.
P._prng = { next32 = next32, set = function(a, b, c, d) s0, s1, s2, s3 = a, b, c, d end, seed = seed }

-- string.format compiles in LuaJIT traces (bit.tohex does not: 4x slower here). Every
-- argument is a 16-bit half-word, so %x never sees a negative number.
local function uuid4()
  local a, b, c, d = next32(), next32(), next32(), next32()
  return format("%04x%04x-%04x-%04x-%04x-%04x%04x%04x",
    rshift(a, 16), band(a, 0xffff), rshift(b, 16), bor(band(b, 0x0fff), 0x4000),
    bor(band(rshift(c, 16), 0x3fff), 0x8000), band(c, 0xffff), rshift(d, 16), band(d, 0xffff))
end

local function hex()
  local a, b, c, d = next32(), next32(), next32(), next32()
  return format("%04x%04x%04x%04x%04x%04x%04x%04x", rshift(a, 16), band(a, 0xffff),
    rshift(b, 16), band(b, 0xffff), rshift(c, 16), band(c, 0xffff), rshift(d, 16), band(d, 0xffff))
end

P.uuid4, P.hex = uuid4, hex

local function valid(id)
  local n = #id
  return n >= 1 and n <= 200 and not find(id, "[^%w%-_.:]")
end
P.valid = valid

function P.compile(conf)
  return {
    header = conf.header,
    trust_incoming = conf.trust_incoming,
    echo = conf.echo,
    gen = conf.generate == "hex" and hex or uuid4,
  }
end

function P.request(req, conf)
  local id
  if conf.trust_incoming then
    id = req:header(conf.header)
    if id ~= nil and not valid(id) then id = nil end
  end
  if id == nil then id = conf.gen() end
  -- Set even when kept: with several incoming ids the upstream sees exactly this one.
  req:set_header(conf.header, id)
  req.ctx.request_id = id
end

function P.response(req, conf)
  if conf.echo then
    local id = req.ctx.request_id
    if id ~= nil then req:set_resp_header(conf.header, id) end
  end
end

return P
