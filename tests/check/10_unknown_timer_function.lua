-- expect: LP03 5
local P = { name = "m10", priority = 1, schema = { fields = {} } }

function P.init_worker()
  proxy.timer.after(1, function() end)
end

return P
