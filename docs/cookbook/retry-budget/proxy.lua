return {
  listen = { { address = "127.0.0.1:8080" } },
  upstreams = {
    -- The route's own upstream, so the retry budget below is this route's alone.
    orders = {
      targets = { "127.0.0.1:9001", "127.0.0.1:9002" },
      retries = 1,                -- one further try, on the other target
      retry_on = { 502, 503 },    -- these answers retry a GET (a failed connect always does)
      retry_budget = 0.1,         -- per worker: retries under 3 + 10 % of the last 10 s of requests
    },
    -- Everything else: no retry at all.
    app = { targets = { "127.0.0.1:9002" }, retries = 0 },
  },
  routes = {
    { name = "orders", match = { prefix = "/orders/" }, upstream = "orders" },
    { name = "app", match = { prefix = "/" }, upstream = "app" },
  },
}
