-- Maintenance: the allow-listed networks reach the site; everybody else gets a 503 page.
-- Edit ALLOW (or set MAINTENANCE = false) and reload: `luaproxy -s reload -c proxy.lua`.
local MAINTENANCE = true
local ALLOW = { "10.0.0.0/8", "192.168.0.0/16" } -- the office, the VPN

local PAGE = "<!doctype html><title>Maintenance</title><h1>Back at 14:00 UTC</h1>\n"

local routes = {
  { name = "site", match = { prefix = "/" }, upstream = "app" },
}
if MAINTENANCE then
  routes = {
    { name = "health", match = { path = "/health" }, upstream = "app" },
    { name = "allowed", match = { cidr = ALLOW }, upstream = "app" },
    { name = "maintenance", handler = function(req)
        return req:respond(503, PAGE, { ["Content-Type"] = "text/html",
          ["Retry-After"] = "600", ["Cache-Control"] = "no-store" })
      end },
  }
end

return {
  listen = { { address = "127.0.0.1:8080" } },
  upstreams = { app = { targets = { "127.0.0.1:9001" } } },
  routes = routes,
}
