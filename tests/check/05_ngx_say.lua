-- expect: LP04 5
local P = { name = "m05", priority = 1, schema = { fields = {} } }

function P.request(req)
  ngx.say("maintenance")
  return req:respond(503)
end

return P
