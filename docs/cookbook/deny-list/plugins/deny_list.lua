-- deny_list: refuses requests whose key (the client address, or a header) is in a shared
-- dict; the dict is changed at run time through deny_admin's endpoint, for every worker at
-- once, without a reload. Entries may expire by themselves (a TTL).
local P = {
  name = "deny_list",
  priority = 2900,
  schema = {
    fields = {
      dict = { type = "string", default = "deny", description = "the shared dict holding the list" },
      by = { type = "string", default = "ip",
             description = "\"ip\" (the client address) or a request header name" },
      status = { type = "integer", default = 403, min = 400, max = 599,
                 description = "the answer's status" },
    },
  },
}

function P.request(req, conf)
  local key = conf.by == "ip" and req:client_ip() or req:header(conf.by)
  if key and proxy.shared[conf.dict]:get(key) then
    return req:respond(conf.status, "denied\n", { ["Content-Type"] = "text/plain" })
  end
end

return P
