return {
  listen = {
    { address = "127.0.0.1:8080" },
    { address = "127.0.0.1:8443", tls = { cert = "certs/shop.pem", key = "certs/shop.key" } },
  },
  upstreams = { app = { targets = { "127.0.0.1:9001" } } },
  plugins = {
    -- Plain http: a redirect to https, nothing else (301 for GET/HEAD, 308 for the rest).
    { name = "redirect", https = true },
    -- https: HSTS (never sent over http) and the usual hardening headers.
    { name = "headers",
      hsts = { max_age = 31536000, include_subdomains = true },
      response = { set = {
        ["X-Content-Type-Options"] = "nosniff",
        ["X-Frame-Options"] = "DENY",
        ["Referrer-Policy"] = "strict-origin-when-cross-origin",
        ["Content-Security-Policy"] = "default-src 'self'",
      }, remove = { "Server", "X-Powered-By" } } },
  },
  routes = { { match = { prefix = "/" }, upstream = "app" } },
}
