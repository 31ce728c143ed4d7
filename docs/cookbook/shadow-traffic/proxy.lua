return {
  listen = { { address = "127.0.0.1:8080" } },
  upstreams = {
    app = { targets = { "127.0.0.1:9001" } },      -- what clients are answered by
    shadow = { targets = { "127.0.0.1:9002" } },   -- the new version, under real traffic
  },
  routes = {
    { match = { prefix = "/" }, upstream = "app",
      plugins = { {
        name = "mirror", upstream = "shadow",
        percentage = 20,                    -- a fifth of the requests, drawn per request
        predicate = function(req) return req:method() ~= "DELETE" end,
        max_body = 65536,                   -- larger uploads are not copied (counted)
        timeout = 0.5,                      -- a slow shadow costs nothing to the client
        headers = { ["X-Mirrored-By"] = "luaproxy" },
      } } },
  },
}
