-- expect: LP03 5
local P = { name = "m09", priority = 1, schema = { fields = {} } }

function P.request(req)
  proxy.log.warning("slow client ", req:client_ip())
end

return P
