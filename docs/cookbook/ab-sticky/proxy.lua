return {
  listen = { { address = "127.0.0.1:8080" } },
  upstreams = {
    checkout_a = { targets = { "127.0.0.1:9001" } },
    checkout_b = { targets = { "127.0.0.1:9002" } },
  },
  routes = {
    { match = { prefix = "/checkout/" }, upstream = "checkout_a",
      plugins = { { name = "ab", sticky = "cookie", cookie = "exp_checkout",
                    cookie_ttl = 30 * 86400, response_header = "X-Arm",
                    arms = { { name = "a", upstream = "checkout_a", weight = 50 },
                             { name = "b", upstream = "checkout_b", weight = 50 } } } } },
  },
}
