-- Checking a config table, once per start or reload, in the main thread's config VM
-- (engine/config.c evaluates the file and calls these): the whole table against
-- luaproxy.config_schema, with defaults filled in for the engine to read.
local schema = require "luaproxy.schema"
local config_schema = require "luaproxy.config_schema"

local type = type

local M = {}

-- Returns the validated table (a fresh one, defaults filled in) or nil, "key.path: problem".
function M.check(raw)
  if type(raw) ~= "table" then
    return nil, "(top): the file must return a table, got " .. type(raw)
  end
  return schema.validate(config_schema.schema, raw, nil, config_schema.context(raw))
end

return M
