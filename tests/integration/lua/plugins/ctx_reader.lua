-- Test fixture (priority 50): reads what ctx_writer (priority 300) left in req.ctx and
-- shows it to the upstream (X-Ctx-Seen) and to the client (X-Ctx-Resp, response phase).
local P = { name = "ctx_reader", priority = 50, schema = { fields = {} } }
function P.request(req)
  req:set_header("X-Ctx-Seen", req.ctx.shared_by_writer or "nothing")
end
function P.response(req)
  req:set_resp_header("X-Ctx-Resp", tostring(req.ctx.shared_by_writer) .. "/" ..
                      tostring(req.ctx.handler_was_here))
end
return P
