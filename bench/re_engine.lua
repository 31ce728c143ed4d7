-- A luaproxy config timing proxy.re inside the engine (PCRE2 through ffi.C, the handler
-- under the runaway guard like any user code): bench/README.md, "The cost of a regex".
--   build/luaproxy -c bench/re_engine.lua      (the port is logged: "listening on ...")
--   curl 'http://127.0.0.1:PORT/?kind=find&n=2000000'     (kind: find, refind, re)
return {
  workers = 1,
  listen = { { address = "127.0.0.1:0" } },
  upstreams = { app = { targets = { "127.0.0.1:9" } } },
  lua = { phase_timeout = 30 },
  routes = { { match = { prefix = "/" }, upstream = "app", handler = function(req)
    local n = tonumber(req:query("n")) or 1000000
    local kind = req:query("kind")
    local path = "/users/12345/orders/678"
    local re, find = proxy.re, string.find
    local t0 = proxy.monotonic()
    if kind == "re" then
      for _ = 1, n do re.match(path, [[^/users/(?<u>\d+)/orders/(?<o>\d+)$]], "jo") end
    elseif kind == "refind" then
      for _ = 1, n do re.find(path, [[^/users/(\d+)/orders/(\d+)$]], "jo") end
    else
      for _ = 1, n do find(path, "^/users/(%d+)/orders/(%d+)$") end
    end
    local dt = proxy.monotonic() - t0
    return req:respond(200, string.format("%s %.1f ns/op lib=%s\n", kind, dt / n * 1e9, tostring(re.library)))
  end } },
}
