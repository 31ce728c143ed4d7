-- slow_log: one warning line for each request slower than `threshold` seconds, with what
-- is needed to find out why: the route's upstream, the target that answered, the status,
-- the time until the response head (the upstream's share) and the whole time. The numbers
-- also go to the access log line (`slow_ms`, `head_ms`).
local P = {
  name = "slow_log",
  priority = 5,
  schema = {
    fields = {
      threshold = { type = "number", default = 1, min = 0,
                    description = "seconds from the first byte of the request to the last of the answer" },
    },
  },
}

function P.response(req)
  req.ctx.slow_log_head = proxy.now() -- the response head is ready: the upstream answered
end

function P.log(req, conf)
  local now = proxy.now()
  local start = req:start_time()
  local total = now - start
  if total < conf.threshold then return end
  local head = (req.ctx.slow_log_head or now) - start
  req:log_field("slow_ms", math.floor(total * 1000))
  req:log_field("head_ms", math.floor(head * 1000))
  proxy.log.warn(string.format("slow request: %s %s -> %s (%s) status %d: %.3f s to the "
    .. "response head, %.3f s in all", req:method(), req:uri(), tostring(req:upstream_name()),
    tostring(req:upstream_addr()), req:status(), head, total))
end

return P
