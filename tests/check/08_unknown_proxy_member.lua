-- expect: LP03 5
local P = { name = "m08", priority = 1, schema = { fields = {} } }

function P.request(req)
  local d = proxy.sharde.limits
  d:incr(req:client_ip(), 1, 0)
end

return P
