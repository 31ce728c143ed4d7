-- Test fixture: chooses an upstream (req:set_upstream) in the request or upstream phase.
local P = {
  name = "pick",
  priority = 450,
  schema = {
    fields = {
      upstream = { type = "string", required = true, description = "upstream name" },
      in_phase = { type = "string", default = "request", one_of = { "request", "upstream" },
                   description = "phase that calls set_upstream" },
    },
  },
}
function P.request(req, conf)
  if conf.in_phase == "request" then req:set_upstream(conf.upstream) end
end
function P.upstream(req, conf)
  if conf.in_phase == "upstream" then req:set_upstream(conf.upstream) end
  req:set_header("X-Upstream-Phase-Saw", req:upstream_name() or "none")
end
return P
