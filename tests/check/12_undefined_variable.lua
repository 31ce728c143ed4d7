-- expect: W113 5
local P = { name = "m12", priority = 1, schema = { fields = {} } }

function P.request(req)
  if reqest:path() == "/health" then return req:respond(200, "ok") end
end

return P
