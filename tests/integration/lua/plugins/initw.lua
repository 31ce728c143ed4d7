-- Test fixture: init_worker runs once per worker before traffic; the request phase
-- reports what it left behind (and how many times it ran) in X-Init-Worker.
local state = { runs = 0 }
local P = {
  name = "initw",
  priority = 20,
  schema = { fields = { value = { type = "string", default = "warm", description = "marker" } } },
}
function P.init_worker(conf)
  state.runs = state.runs + 1
  state.value = conf.value .. "@" .. tostring(proxy.worker_id())
end
function P.request(req, conf)
  req:set_header("X-Init-Worker", tostring(state.value) .. " runs=" .. state.runs)
end
return P
