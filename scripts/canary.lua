-- canary.lua: send about 10% of users to a canary release, and keep each user on the
-- version they got first (a cookie), with a way for testers to pick one.
--
--   stable (90%) -> api-1 (127.0.0.1:9002)
--   canary (10%) -> api-2 (127.0.0.1:9003)
--
-- The first response to a new user carries
--   Set-Cookie: release=<stable|canary>; Path=/; Max-Age=604800; HttpOnly
-- and while the browser sends it back, the user stays on that arm (no new cookie is
-- sent). Every response says which arm answered in `X-Release`.
-- Testers force an arm with the header `X-Release-Arm: canary` or the query argument
-- `?release=canary`; the cookie then moves to that arm, so they stay there.
--
-- Try it with the demo origins:
--   build/luaproxy -c scripts/canary.lua
--   curl -si http://127.0.0.1:8080/ | grep -i -e x-origin-id -e set-cookie -e x-release
--   curl -si -H 'Cookie: release=canary' http://127.0.0.1:8080/ | grep -i x-origin-id  # api-2
--   curl -si 'http://127.0.0.1:8080/?release=canary' | grep -i set-cookie
--   for i in $(seq 100); do curl -s -o /dev/null -D- http://127.0.0.1:8080/; done \
--     | grep -c 'X-Origin-Id: api-2'                                          # about 10
--
-- The `ab` plugin does the work; docs/plugins/ab.md lists every option (weights of 0 to
-- drain an arm, header or IP hashing instead of a cookie, ...).
return {
  workers = 2,
  listen = { { address = "127.0.0.1:8080" } },

  upstreams = {
    stable = { targets = { "127.0.0.1:9002" } },
    canary = { targets = { "127.0.0.1:9003" } },
  },

  routes = {
    {
      match = { prefix = "/" },
      -- Where requests go when the plugin does not choose (it always does here; a
      -- default keeps the route valid and documents the safe choice).
      upstream = "stable",
      plugins = {
        {
          name = "ab",
          arms = {
            -- weights are relative: 90 + 10 = 100, so these read as percentages
            { name = "stable", upstream = "stable", weight = 90 },
            { name = "canary", upstream = "canary", weight = 10 },
          },
          sticky = "cookie",             -- keep each user on their arm with a cookie
          cookie = "release",            -- its name
          cookie_ttl = 7 * 24 * 3600,    -- Max-Age: a week
          override_header = "X-Release-Arm", -- testers: force an arm by header...
          override_query = "release",        -- ...or by query argument
          response_header = "X-Release",     -- tell the client which arm answered
        },
      },
    },
  },

  log = { access = "-" },
}
