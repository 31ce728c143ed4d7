-- path-routing.lua: two services behind one address, chosen by the request path.
--
--   /api/...   -> the API service (api-1 and api-2 take turns), "/api" removed:
--                 /api/fixed?size=3 reaches the API as /fixed?size=3
--   /old-api/… -> the API too, through a rewrite with a capture (legacy URLs keep working)
--   anything else -> the web service
--
-- Try it with the demo origins (./dev demo starts them, or scripts/demo.sh):
--   build/luaproxy -t -c scripts/path-routing.lua      # check the config
--   build/luaproxy -c scripts/path-routing.lua         # serve on 127.0.0.1:8080
--   curl -i http://127.0.0.1:8080/                     # X-Origin-Id: web
--   curl -i http://127.0.0.1:8080/api/headers          # X-Origin-Id: api-1 or api-2, url /headers
--   curl -i http://127.0.0.1:8080/old-api/headers      # the same, via the rewrite rule
--
-- Plain `routes` (see scripts/demo.lua) already route by host and prefix. This file does
-- it with the bundled `router` plugin instead, which adds what plain routes cannot:
-- patterns with captures, rewrites, methods, header and query conditions. Its page is
-- docs/plugins/router.md.
return {
  workers = 2,                                   -- worker threads; each has its own Lua VM
  listen = { { address = "127.0.0.1:8080" } },

  -- Upstreams are named groups of targets. Names are what routes and plugins refer to.
  upstreams = {
    web = { targets = { "127.0.0.1:9001" } },
    -- two targets: smooth weighted round robin between them (equal weights here)
    api = { targets = { "127.0.0.1:9002", "127.0.0.1:9003" } },
  },

  routes = {
    {
      -- One catch-all route. It names no `upstream`: the router plugin below chooses one
      -- for every request (a route may leave `upstream` out when Lua picks it).
      match = { prefix = "/" },
      plugins = {
        {
          name = "router",
          -- Rules are tried in order; the first whose conditions all match wins.
          rules = {
            -- prefix + strip_prefix: "/api/x?y=1" goes to the API as "/x?y=1".
            -- Note the trailing slash: prefixes compare bytes, "/api" would also match
            -- "/apix".
            { prefix = "/api/", upstream = "api", strip_prefix = true },
            -- pattern + rewrite: %1 is the first capture. The request's query string is
            -- carried over unless the rewrite brings its own "?...".
            { pattern = "^/old%-api/(.*)$", rewrite = "/%1", upstream = "api" },
          },
          -- Requests that no rule matched.
          default_upstream = "web",
        },
      },
    },
  },

  log = { access = "-" },                        -- access log on stdout
}
