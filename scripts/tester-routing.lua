-- tester-routing.lua: testers reach the canary, everybody else the stable release.
--
--   request header `X-Tester: yes`  -> canary (api-2, 127.0.0.1:9003)
--   anything else                   -> stable (api-1, 127.0.0.1:9002)
--   /web/...                        -> the web service (9001), for everybody, "/web" removed
--
-- The upstream also learns who is a tester: the proxy adds `X-Tester-Route: canary`
-- (or `stable`) to the request it forwards, from a small handler (see the second route).
--
-- Try it with the demo origins:
--   build/luaproxy -c scripts/tester-routing.lua
--   curl -si http://127.0.0.1:8080/ | grep -i x-origin-id                     # api-1
--   curl -si -H 'X-Tester: yes' http://127.0.0.1:8080/ | grep -i x-origin-id  # api-2
--   curl -s -H 'X-Tester: yes' http://127.0.0.1:8080/headers                  # X-Tester-Route
--
-- Two ways to write the same thing are shown: the `router` plugin (declarative rules,
-- docs/plugins/router.md) and a handler function (any Lua you like, docs/lua-api.md).
-- Pick one; this config uses both so you can compare.
return {
  workers = 2,
  listen = { { address = "127.0.0.1:8080" } },

  upstreams = {
    web = { targets = { "127.0.0.1:9001" } },
    stable = { targets = { "127.0.0.1:9002" } },
    canary = { targets = { "127.0.0.1:9003" } },
  },

  routes = {
    -- Plain route: no Lua at all.
    { match = { prefix = "/web/" }, upstream = "web", strip_prefix = true },

    {
      match = { prefix = "/" },
      -- 1. The declarative way: a router rule on a header, everything else to the
      --    default. Header names match without regard to case; the value must be exactly
      --    "yes".
      plugins = {
        {
          name = "router",
          rules = {
            { headers = { ["X-Tester"] = "yes" }, upstream = "canary" },
          },
          default_upstream = "stable",
        },
      },
      -- 2. The programmable way: a handler runs after every plugin's request phase (so
      --    it sees the router's choice) and may change anything the router did. This one
      --    only reports the choice upstream; replacing the router with it would be:
      --      if req:header("X-Tester") == "yes" then req:set_upstream("canary")
      --      else req:set_upstream("stable") end
      handler = function(req)
        local chosen = req:upstream_name()             -- "canary" or "stable"
        req:set_header("X-Tester-Route", chosen or "none")
      end,
    },
  },

  log = { access = "-" },
}
