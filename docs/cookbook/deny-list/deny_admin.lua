-- The deny list's own admin endpoint (a route only the loopback reaches):
--   POST   /_deny/KEY?ttl=SECONDS  adds KEY (ttl 0 or absent: until removed)
--   DELETE /_deny/KEY              removes it
--   GET    /_deny                  lists the keys
local M = {}

function M.handler(req)
  local deny = proxy.shared.deny
  local key = req:path():match("^/_deny/(.+)$")
  local method = req:method()
  if method == "GET" and not key then
    return req:respond(200, proxy.json.encode(deny:get_keys(0)) .. "\n",
      { ["Content-Type"] = "application/json" })
  elseif method == "POST" and key then
    local ok, err = deny:set(key, true, tonumber(req:query("ttl")) or 0)
    return req:respond(ok and 200 or 500, ok and "added\n" or (err .. "\n"))
  elseif method == "DELETE" and key then
    deny:delete(key)
    return req:respond(200, "removed\n")
  end
  return req:respond(405, "use GET /_deny, POST or DELETE /_deny/KEY\n")
end

return M
