return {
  listen = { { address = "127.0.0.1:8080" } },
  upstreams = { app = { targets = { "127.0.0.1:9001" } } },
  shared = { deny = "10m" },
  routes = {
    { name = "deny-admin", match = { prefix = "/_deny", cidr = { "127.0.0.1/32", "::1" } },
      handler = "deny_admin" },
    { name = "site", match = { prefix = "/" }, upstream = "app",
      plugins = { { name = "deny_list", by = "X-User-Id" } } },
  },
}
