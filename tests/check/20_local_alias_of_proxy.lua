-- expect: LP03 7
local proxy = require "proxy"

local P = { name = "m20", priority = 1, schema = { fields = {} } }

function P.request(req)
  proxy.upsteam("api"):add_target(req:header("X-Target"))
end

return P
