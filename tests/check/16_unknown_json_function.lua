-- expect: LP03 5
local P = { name = "m16", priority = 1, schema = { fields = {} } }

function P.request(req)
  local body = proxy.json.parse(req:body(65536) or "{}")
  req.ctx.body = body
end

return P
