-- expect: LP05 4
local P = { name = "m04", priority = 1, schema = { fields = {} } }

function P.header_filter(req)
  req:set_resp_header("X-A", "1")
end

return P
