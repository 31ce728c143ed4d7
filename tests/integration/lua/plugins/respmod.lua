-- Test fixture: response phase rewrites (status, set/add/clear response headers) and
-- reads the response (status, resp_header, upstream_addr) into X-Resp-Seen.
local P = {
  name = "respmod",
  priority = 700,
  schema = {
    fields = {
      status = { type = "integer", default = 0, description = "new status (0 keeps)" },
    },
  },
}
function P.response(req, conf)
  local seen = string.format("status=%s origin=%s addr=%s", tostring(req:status()),
    tostring(req:resp_header("x-origin-id")), tostring(req:upstream_addr()))
  if conf.status ~= 0 then req:set_status(conf.status) end
  req:set_resp_header("X-Resp-Seen", seen)
  req:set_resp_header("X-Origin-Id", "replaced")
  req:clear_resp_header("X-Conn-Id")
  req:add_resp_header("X-Multi", "one")
  req:add_resp_header("X-Multi", "two")
end
return P
