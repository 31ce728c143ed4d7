-- lib/pick_backend.lua: a routing handler written as a module (used by
-- scripts/routing-script.lua as `handler = "lib.pick_backend"`).
--
-- It picks one of BACKENDS for each request:
--   1. the request header `X-Backend`, when it names one of them (explicit choice, handy
--      for debugging a single backend);
--   2. else a hash of `X-User-Id`, so one user always reaches the same backend (useful
--      for per-backend caches); the same value always gives the same backend while the
--      BACKENDS list does not change;
--   3. else a hash of the client's IP address.
-- It tells the backend how it was chosen in `X-Picked-By: header|user|ip`.
--
-- A module returns either the handler function itself, or a table with a `handler`
-- field (used here, so the table can also export helpers for tests).
-- The file runs once per worker when the config loads; `handler` runs per request.

local bit = require "bit"               -- LuaJIT's bit operations
local bxor, lshift, tobit = bit.bxor, bit.lshift, bit.tobit
local byte = string.byte

-- Upstream names from the config, in a fixed order (the hash indexes this list).
local BACKENDS = { "api1", "api2" }

-- The same names as a set, for the X-Backend check.
local KNOWN = {}
for _, name in ipairs(BACKENDS) do KNOWN[name] = true end

-- FNV-1a, 32 bits: a small, fast, well-spread string hash. (The `ab` plugin uses the
-- same one for its header stickiness.) The multiplication by the FNV prime 16777619 is
-- written as h * 2^24 + h * 403: Lua numbers are doubles, and h * 16777619 could need
-- more than their 53 bits of precision, while each part here is exact; tobit then
-- keeps the low 32 bits.
local function fnv1a(s)
  local h = tobit(2166136261)
  for i = 1, #s do
    h = bxor(h, byte(s, i))
    h = tobit(lshift(h, 24) + h * 403)
  end
  if h < 0 then h = h + 4294967296 end  -- tobit gives a signed 32-bit number
  return h
end

-- The backend for a string: BACKENDS[hash % n + 1].
local function by_hash(s)
  return BACKENDS[fnv1a(s) % #BACKENDS + 1]
end

local function handler(req)
  local explicit = req:header("X-Backend")
  if explicit and KNOWN[explicit] then
    req:set_upstream(explicit)
    req:set_header("X-Picked-By", "header")
    return
  end
  local user = req:header("X-User-Id")
  if user and user ~= "" then
    req:set_upstream(by_hash(user))
    req:set_header("X-Picked-By", "user")
    return
  end
  req:set_upstream(by_hash(req:client_ip()))
  req:set_header("X-Picked-By", "ip")
end

return {
  handler = handler,
  -- exported for specs (proxy.test) and curious readers
  fnv1a = fnv1a,
  by_hash = by_hash,
  BACKENDS = BACKENDS,
}
