-- Test fixture: sleeps (proxy.sleep, which yields) in the phases its config names, and
-- reports the wall time the request spent in the proxy's phases in X-Slept (ms). With
-- `meet`, requests wait (sleeping) in the request phase until that many of this worker's
-- requests have reached it, and X-Met tells how many had when each went on.
local P = {
  name = "sleeper",
  priority = 400,
  schema = {
    fields = {
      request = { type = "number", default = 0, min = 0, description = "seconds in request" },
      upstream = { type = "number", default = 0, min = 0, description = "seconds in upstream" },
      response = { type = "number", default = 0, min = 0, description = "seconds in response" },
      meet = { type = "number", default = 0, min = 0,
               description = "requests to wait for in the request phase (0: none)" },
    },
  },
}

local met = 0 -- this worker's requests that reached the meeting point

function P.request(req, conf)
  req.ctx.sleeper_t0 = proxy.now()
  if conf.meet > 0 then
    met = met + 1
    local deadline = proxy.monotonic() + 60
    while met < conf.meet and proxy.monotonic() < deadline do proxy.sleep(0.01) end
    req.ctx.sleeper_met = met
  end
  if conf.request > 0 then proxy.sleep(conf.request) end
end

function P.upstream(req, conf)
  if conf.upstream > 0 then proxy.sleep(conf.upstream) end
end

function P.response(req, conf)
  if conf.response > 0 then proxy.sleep(conf.response) end
  req:set_resp_header("X-Slept", string.format("%d", (proxy.now() - req.ctx.sleeper_t0) * 1000))
  if req.ctx.sleeper_met then req:set_resp_header("X-Met", tostring(req.ctx.sleeper_met)) end
end

return P
