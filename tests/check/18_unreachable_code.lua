-- expect: W511 6
local P = { name = "m18", priority = 1, schema = { fields = {} } }

function P.request(req)
  do return req:respond(403, "denied") end
  req:set_header("X-Never", "1")
end

return P
