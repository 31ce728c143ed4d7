-- The argument checks of proxy.shared's methods, as lua-resty-core makes them: one copy for
-- the engine's binding (luaproxy/shared.lua) and the proxy.test double (proxy/test_shared.lua).
local type, tostring, tonumber, error = type, tostring, tonumber, error

local M = {}

-- The key as a string, or nil and the error the method returns.
function M.key(key)
  if type(key) ~= "string" then
    if key == nil then return nil, "nil key" end
    key = tostring(key)
  end
  local n = #key
  if n == 0 then return nil, "empty key" end
  if n > 65535 then return nil, "key too long" end
  return key
end

-- set/add/replace's exptime and flags, defaults filled in; a bad one raises at the line
-- that called the method (M.store <- the binding's store <- the method <- the caller).
function M.store(exptime, flags)
  if exptime == nil then
    exptime = 0
  elseif type(exptime) ~= "number" or exptime < 0 then
    error('bad "exptime" argument', 4)
  end
  if flags == nil then
    flags = 0
  else
    flags = tonumber(flags)
    if not flags or flags < 0 or flags > 4294967295 then error('bad "flags" argument', 4) end
  end
  return exptime, flags
end

-- gcra's rate, period, burst and cost, checked (a bad one raises at the caller's line) and
-- turned into the emission interval (seconds between requests at the steady rate).
function M.gcra(rate, period, burst, cost)
  if type(rate) ~= "number" or not (rate > 0) then error('bad "rate" argument', 3) end
  if period == nil then period = 1 end
  if type(period) ~= "number" or not (period > 0) then error('bad "period" argument', 3) end
  if burst == nil then burst = 0 end
  if type(burst) ~= "number" or not (burst >= 0) then error('bad "burst" argument', 3) end
  if cost == nil then cost = 1 end
  if type(cost) ~= "number" or not (cost >= 0) then error('bad "cost" argument', 3) end
  return period / rate, burst, cost
end

return M
