-- Test fixture: sleeps (proxy.sleep, which yields) in the phases its config names, and
-- reports the wall time the request spent in the proxy's phases in X-Slept (ms).
local P = {
  name = "sleeper",
  priority = 400,
  schema = {
    fields = {
      request = { type = "number", default = 0, min = 0, description = "seconds in request" },
      upstream = { type = "number", default = 0, min = 0, description = "seconds in upstream" },
      response = { type = "number", default = 0, min = 0, description = "seconds in response" },
    },
  },
}

function P.request(req, conf)
  req.ctx.sleeper_t0 = proxy.now()
  if conf.request > 0 then proxy.sleep(conf.request) end
end

function P.upstream(req, conf)
  if conf.upstream > 0 then proxy.sleep(conf.upstream) end
end

function P.response(req, conf)
  if conf.response > 0 then proxy.sleep(conf.response) end
  req:set_resp_header("X-Slept", string.format("%d", (proxy.now() - req.ctx.sleeper_t0) * 1000))
end

return P
