-- req:log_field(name, value): the argument checks and the value's encoding, one copy for
-- the engine's handle (luaproxy.request) and the proxy.test double. The engine keeps the
-- fields in C (engine/logfield.c) with the same limits.
local phases = require "luaproxy.phases"

local type, format, floor, huge = type, string.format, math.floor, math.huge

local M = {
  NAME_MAX = 64,       -- bytes of a name (LP_LOG_FIELD_NAME_MAX)
  VALUE_MAX = 2048,    -- bytes of a value (LP_LOG_FIELD_VALUE_MAX)
  BYTES_MAX = 8192,    -- bytes of a request's fields, names included, 4 more each
  MAX_FIELDS = 16,     -- log.max_fields' default
  -- kinds (LP_LOGF_* in engine/logfield.h)
  UNSET = 0, STRING = 1, NUMBER = 2, BOOL = 3,
}

-- name, value -> kind, text. Raises for a bad name or a value of another type (programmer
-- errors); a value too long is an expected failure the callers report with nil, message.
function M.encode(name, value)
  if type(name) ~= "string" or #name == 0 or #name > M.NAME_MAX or name:find("[^%w_]") then
    phases.raise(format("req:log_field(): the name must be 1 to %d letters, digits or '_', got %s",
      M.NAME_MAX, type(name) == "string" and format("%q", name) or type(name)), 3)
  end
  local t = type(value)
  if value == nil then return M.UNSET, "" end
  if t == "string" then return M.STRING, value end
  if t == "boolean" then return M.BOOL, value and "true" or "false" end
  if t == "number" then
    -- JSON has no NaN or infinity: they are logged as null.
    if value ~= value or value == huge or value == -huge then return M.NUMBER, "null" end
    if value == floor(value) and value > -2^53 and value < 2^53 then
      return M.NUMBER, format("%d", value)
    end
    return M.NUMBER, format("%.17g", value)
  end
  phases.raise("req:log_field(): the value must be a string, a number, a boolean or nil, got "
    .. t, 3)
end

M.ETOOMANY = "too many log fields for this request (log.max_fields)"
M.ETOOLONG = format("log field value longer than %d bytes", M.VALUE_MAX)
M.ENOROOM = format("no room left for log fields (%d bytes a request)", M.BYTES_MAX)

return M
