-- expect: LP04 5
local P = { name = "m07", priority = 1, schema = { fields = {} } }

function P.request(req)
  local d = ngx.shared.limits
  d:incr(req:client_ip(), 1, 0)
end

return P
