return {
  listen = { { address = "127.0.0.1:8080" } },
  upstreams = {
    standard = { targets = { "127.0.0.1:9001" } },
    premium = { targets = { "127.0.0.1:9002" } },
  },
  routes = {
    { match = { prefix = "/" }, upstream = "standard",
      plugins = {
        -- Verifies the token (401 without a valid one) and puts its "plan" claim in X-Plan;
        -- a client's own X-Plan is always replaced or removed, so it cannot be forged.
        { name = "jwt", algorithms = { "HS256" }, required_claims = { "exp" },
          keys = { { kid = "shop", alg = "HS256", secret = "change-me-to-32-random-bytes!!!" } },
          claim_headers = { ["X-Plan"] = "plan" } },
        -- Then routes on it: the router runs after authentication (priority 2000 < 2450).
        { name = "router",
          rules = { { headers = { ["X-Plan"] = "premium" }, upstream = "premium" } } },
      } },
  },
}
