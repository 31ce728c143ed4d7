-- expect: W111 5
local P = { name = "m02", priority = 1, schema = { fields = {} } }

function P.request(req)
  hits = (req.ctx.hits or 0) + 1
end

return P
