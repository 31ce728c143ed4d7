-- expect: W211 5
local P = { name = "m13", priority = 1, schema = { fields = {} } }

function P.request(req)
  local tenant = req:header("X-Tenant")
  req:set_header("X-A", "1")
end

return P
