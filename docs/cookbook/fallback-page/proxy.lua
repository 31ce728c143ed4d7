return {
  listen = { { address = "127.0.0.1:8080" } },
  upstreams = {
    app = { targets = { "127.0.0.1:9001", "127.0.0.1:9002" }, retries = 1 },
  },
  -- When every target is down (502: refused or reset; 503: none available; 504: timed
  -- out) the visitor gets a page of ours instead of a bare status line.
  error_pages = {
    [502] = { file = "pages/sorry.html", status = 503 },
    [503] = { file = "pages/sorry.html" },
    [504] = { file = "pages/sorry.html", status = 503 },
  },
  routes = {
    { match = { prefix = "/" }, upstream = "app",
      plugins = { { name = "headers", response = { set = { ["Retry-After"] = "30" } } } } },
  },
}
