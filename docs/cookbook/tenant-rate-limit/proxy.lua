return {
  listen = { { address = "127.0.0.1:8080" } },
  upstreams = { api = { targets = { "127.0.0.1:9001" } } },
  shared = { rate_limit = "10m" },
  routes = {
    -- The premium tenants: their own, larger allowance (each tenant its own bucket).
    { name = "premium", match = { prefix = "/api/", headers = { ["X-Plan"] = "premium" } },
      upstream = "api",
      plugins = { { name = "rate_limit", limit_by = "header", header = "X-Tenant",
                    rate = 100, period = 60, burst = 20, id = "premium" } } },
    -- Everybody else: 5 a minute per tenant; no tenant header at all is one shared bucket.
    { name = "api", match = { prefix = "/api/" }, upstream = "api",
      plugins = { { name = "rate_limit", limit_by = "header", header = "X-Tenant",
                    rate = 5, period = 60, burst = 2, id = "standard" } } },
  },
}
