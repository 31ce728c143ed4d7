-- routing-script.lua: routing decided by a Lua module, scripts/lib/pick_backend.lua.
--
--   /api/...  -> one of the API backends, chosen by lib/pick_backend.lua:
--                  header `X-Backend: api1` or `api2`   -> that backend (explicit choice)
--                  else header `X-User-Id: <anything>`  -> a hash of it: a user always
--                                                          lands on the same backend
--                  else                                 -> a hash of the client address
--                "/api" is removed from the path: /api/headers reaches it as /headers
--   anything else -> the web service
--
-- Try it with the demo origins:
--   build/luaproxy -c scripts/routing-script.lua
--   curl -si -H 'X-Backend: api2' http://127.0.0.1:8080/api/ | grep -i x-origin-id   # api-2
--   curl -si -H 'X-User-Id: 42' http://127.0.0.1:8080/api/ | grep -i x-origin-id     # always the same
--   curl -s  -H 'X-User-Id: 42' http://127.0.0.1:8080/api/headers     # see X-Picked-By
--
-- Why a module: a handler can be written inline in the config (see maintenance.lua), but
-- once it grows, a module is easier to read, to reuse in several configs and to test
-- with proxy.test (docs/testing-plugins.md). `handler = "lib.pick_backend"` is looked up
-- like `require` would, first next to this config file (lib/pick_backend.lua), then in
-- the scripts/ directory of the luaproxy installation.
return {
  workers = 2,
  listen = { { address = "127.0.0.1:8080" } },

  upstreams = {
    web = { targets = { "127.0.0.1:9001" } },
    -- The module knows these two names (its BACKENDS list). A name it sets that does not
    -- exist here fails the request with 500, so keep the two in step.
    api1 = { targets = { "127.0.0.1:9002" } },
    api2 = { targets = { "127.0.0.1:9003" } },
  },

  routes = {
    {
      match = { prefix = "/api/" },
      strip_prefix = true,
      -- No `upstream`: the handler always chooses one.
      handler = "lib.pick_backend",
    },
    { match = { prefix = "/" }, upstream = "web" },
  },

  log = { access = "-" },
}
