-- expect: LP04 5
local P = { name = "m06", priority = 1, schema = { fields = {} } }

function P.request(req)
  if ngx.var.host == "old.example.com" then return req:redirect("https://new.example.com/") end
end

return P
