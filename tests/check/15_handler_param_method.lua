-- expect: LP01 5
local M = {}

function M.handler(r)
  r:set_upsteam("api")
end

return M
