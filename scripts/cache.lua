-- cache.lua: a cached API. Responses of /api/ are stored in a memory zone shared by both
-- workers and served from it while fresh; the cache key is a Lua rule: the query is put in
-- a canonical order and tracking arguments (utm_*) are left out, so
-- /api/fixed?b=2&a=1&utm_source=x and /api/fixed?a=1&b=2 share one entry.
--
-- The demo origins send no Cache-Control, so `default_ttl` gives 200 answers 10 seconds of
-- freshness (like nginx's proxy_cache_valid); an origin's own Cache-Control would win.
--
-- Try it with the demo origins (./dev demo scripts/cache.lua):
--   curl -si 'http://127.0.0.1:8080/api/fixed?b=2&a=1' | grep -i cache-status  # fwd=uri-miss; stored
--   curl -si 'http://127.0.0.1:8080/api/fixed?a=1&b=2&utm_source=x' | grep -i -e cache-status -e age
--                                                                             # hit, Age: 0..10
--   curl -s http://127.0.0.1:9901/status | grep -o '"cache":{[^}]*}}'        # hit/miss counts
--   curl -s -X DELETE 'http://127.0.0.1:9901/cache/api?prefix=GET'           # purge them all
--
-- docs/plugins/cache.md lists every option (revalidation, stale-while-revalidate,
-- stale-if-error, Vary, coalescing, purge from Lua with proxy.cache.purge).

-- The key: the default key up to its query (method, scheme, host with the port as sent, and
-- path: a Host naming another port is another key), then the query's arguments as they
-- came, still percent-encoded (so ?a=1%26b%3D2 is one argument and ?a=1&b=2 two, ?a=1%2C2
-- one and ?a=1&a=2 two: never one entry), ordered by name (the values of a repeated name
-- keep their order, which an origin may read), without utm_* ones.
local function api_key(req)
  local base = proxy.cache.zone("api"):default_key(req):match("^[^?]*")
  local args = {}
  for arg in (req:uri():match("%?(.*)$") or ""):gmatch("[^&]+") do
    if not arg:find("^utm_") then
      args[#args + 1] = { name = arg:match("^[^=]*"), i = #args + 1, arg = arg }
    end
  end
  table.sort(args, function(x, y)
    if x.name ~= y.name then return x.name < y.name end
    return x.i < y.i
  end)
  for i, a in ipairs(args) do args[i] = a.arg end
  return base .. "?" .. table.concat(args, "&")
end

return {
  workers = 2,
  listen = { { address = "127.0.0.1:8080" } },
  admin = { address = "127.0.0.1:9901" },

  upstreams = {
    api = { targets = { "127.0.0.1:9002", "127.0.0.1:9003" } },
    web = { targets = { "127.0.0.1:9001" } },
  },

  cache = {
    zones = {
      api = { memory = "64m", max_object_size = "1m" },
    },
  },

  routes = {
    {
      match = { prefix = "/api/" },
      strip_prefix = true,
      upstream = "api",
      plugins = {
        {
          name = "cache",
          zone = "api",
          cache_key = api_key,
          default_ttl = { [200] = 10 },   -- freshness when the origin gives none
          stale_if_error = 60,            -- an origin that fails: the last answer, up to a minute old
          lock_timeout = 2,               -- concurrent misses wait this long for the one fill
        },
      },
    },
    { match = { prefix = "/" }, upstream = "web" },
  },
}
