return {
  listen = { { address = "127.0.0.1:8080" } },
  upstreams = { app = { targets = { "127.0.0.1:9001" } } },
  cache = { zones = { hot = { memory = "64m", max_object_size = "1m" } } },
  routes = {
    { match = { prefix = "/reports/" }, upstream = "app",
      plugins = { {
        name = "cache", zone = "hot",
        default_ttl = { [200] = 10 },      -- the origin sends no Cache-Control
        lock = true,                       -- the default: concurrent misses wait for one
        lock_timeout = 10,                 -- longer than the origin's slowest answer
        stale_while_revalidate = 30,       -- at expiry one background refresh, no stampede
      } } },
  },
}
