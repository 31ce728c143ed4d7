-- expect: LP05 4
local P = { name = "m03", priority = 1, schema = { fields = {} } }

function P.requets(req)
  req:set_header("X-A", "1")
end

return P
