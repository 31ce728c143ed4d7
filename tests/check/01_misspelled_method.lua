-- expect: LP01 5
local P = { name = "m01", priority = 1, schema = { fields = {} } }

function P.request(req)
  if req:heder("X-Debug") then req:set_header("X-Seen", "1") end
end

return P
