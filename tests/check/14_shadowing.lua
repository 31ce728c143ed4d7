-- expect: W421 6
local P = { name = "m14", priority = 1, schema = { fields = {} } }

function P.request(req)
  local path = req:path()
  for _, path in ipairs({ "/a", "/b" }) do
    if req:path() == path then req:set_header("X-Hit", path) end
  end
  req:set_header("X-Path", path)
end

return P
