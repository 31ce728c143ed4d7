-- The bundled demo: one web service and an API served by two weighted targets.
-- Started by `./dev demo` (scripts/demo.sh), which also starts the three demo origins.
return {
  workers = 2,
  listen = { { address = "127.0.0.1:8080" } },
  -- the admin API and its live status page: http://127.0.0.1:9901/
  admin = { address = "127.0.0.1:9901" },
  upstreams = {
    web = { targets = { "127.0.0.1:9001" } },
    -- api-2 gets two requests for every one of api-1 (smooth weighted round robin)
    api = { targets = { "127.0.0.1:9002", { address = "127.0.0.1:9003", weight = 2 } } },
  },
  routes = {
    -- /api/fixed?size=3 reaches the API as /fixed?size=3
    { match = { prefix = "/api/" }, upstream = "api", strip_prefix = true },
    { match = { prefix = "/" }, upstream = "web" },
  },
  log = { access = "-" },
}
