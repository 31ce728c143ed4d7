return {
  listen = { { address = "127.0.0.1:8080" } },
  upstreams = { app = { targets = { "127.0.0.1:9001" } } },
  plugins = { { name = "slow_log", threshold = 0.25 } },
  routes = { { match = { prefix = "/" }, upstream = "app" } },
}
