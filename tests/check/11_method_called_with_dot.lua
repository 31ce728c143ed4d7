-- expect: LP02 5
local P = { name = "m11", priority = 1, schema = { fields = {} } }

function P.request(req)
  local v = req.header("X-Tenant")
  req:set_header("X-Tenant-Seen", v or "-")
end

return P
