return {
  listen = { { address = "127.0.0.1:8080" } },
  upstreams = {
    stable = { targets = { "127.0.0.1:9001" } },
    canary = { targets = { "127.0.0.1:9002" } },
  },
  routes = {
    { match = { prefix = "/" }, upstream = "stable",
      plugins = { { name = "canary", upstream = "canary", percent = 10 } } },
  },
}
