-- expect: W122 5
local P = { name = "m19", priority = 1, schema = { fields = {} } }

function P.init_worker()
  proxy.config.workers = 1
end

return P
