-- Blue (9001) and green (9002) behind one upstream. The switch is the admin API's target
-- state, which survives reloads: disable the idle colour, enable the new one.
return {
  listen = { { address = "127.0.0.1:8080" } },
  admin = { address = "127.0.0.1:9901" },
  upstreams = { app = { targets = { "127.0.0.1:9001", "127.0.0.1:9002" } } },
  routes = { { match = { prefix = "/" }, upstream = "app" } },
}
