-- Runs the worked example of docs/plugins.md (the api_key plugin) against the spec given in
-- docs/testing-plugins.md, so the two pages cannot drift from the code.
local function block(path, first_line)
  local f = assert(io.open(path, "rb"))
  local text = f:read("*a")
  f:close()
  for code in text:gmatch("```lua\n(.-)```") do
    if code:sub(1, #first_line) == first_line then return code end
  end
  error(path .. ": no lua block starting with " .. first_line)
end

require "proxy.test"
local plugin_code = block("docs/plugins.md", "-- plugins/api_key.lua")
local spec_code = block("docs/testing-plugins.md", "-- spec/plugins/api_key_spec.lua")
package.preload.api_key = function() return assert(loadstring(plugin_code, "=docs/plugins.md"))() end

-- The spec block calls describe() at its top level, like a spec file: give it this file's
-- environment, where busted put describe/it/assert.
local chunk = assert(loadstring(spec_code, "=docs/testing-plugins.md"))
setfenv(chunk, getfenv(1))
chunk()

-- The shared-dict example: the plugin of docs/lua-api.md under the spec of
-- docs/testing-plugins.md.
local limit_code = block("docs/lua-api.md", "-- plugins/per_ip_limit.lua")
local limit_spec = block("docs/testing-plugins.md", "-- spec/plugins/per_ip_limit_spec.lua")
package.preload.per_ip_limit = function()
  return assert(loadstring(limit_code, "=docs/lua-api.md"))()
end
local limit_chunk = assert(loadstring(limit_spec, "=docs/testing-plugins.md"))
setfenv(limit_chunk, getfenv(1))
limit_chunk()
