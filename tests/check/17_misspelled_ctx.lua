-- expect: LP01 5
local P = { name = "m17", priority = 1, schema = { fields = {} } }

function P.request(req)
  req.cxt.user = req:header("X-User")
end

return P
