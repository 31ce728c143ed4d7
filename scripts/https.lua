-- https.lua: the demo behind HTTPS. Plain HTTP on :8080 only redirects to https://; :8443
-- serves TLS with the demo certificate, sends HSTS, and routes by the name the client
-- asked for (SNI):
--
--   api.localhost  -> the API (127.0.0.1:9002 and :9003, round robin)
--   anything else  -> the web service (127.0.0.1:9001)
--
-- Try it (`./dev demo scripts/https.lua` makes the self-signed demo certificate in
-- scripts/certs/ first; -k because nothing trusts it):
--   curl -i http://127.0.0.1:8080/x                       # 301 to https://127.0.0.1:8443/x
--   curl -ki https://127.0.0.1:8443/                      # web, with Strict-Transport-Security
--   curl -ki --resolve api.localhost:8443:127.0.0.1 https://api.localhost:8443/
--                                                         # X-Origin-Id: api-1 or api-2
--   curl -k https://127.0.0.1:8443/tls                    # what req:tls() sees, as JSON
--   openssl s_client -connect 127.0.0.1:8443 -servername api.localhost </dev/null
--
-- With your own certificate, point cert and key at it (a list under `certificates` serves
-- several names, RSA and ECDSA side by side); see docs/tls.md.
local cjson = require "cjson"

return {
  workers = 2,
  listen = {
    { address = "127.0.0.1:8080" },
    { address = "127.0.0.1:8443",
      tls = { cert = "certs/demo.pem", key = "certs/demo.key" } },
  },
  upstreams = {
    web = { targets = { "127.0.0.1:9001" } },
    api = { targets = { "127.0.0.1:9002", "127.0.0.1:9003" } },
  },
  plugins = {
    { name = "router", rules = {
        { sni = "api.localhost", upstream = "api" },
    } },
    -- HSTS goes out on https responses only (never over plain HTTP).
    { name = "headers", hsts = { max_age = 300 } },
  },
  routes = {
    { match = { prefix = "/tls" }, handler = function(req)
        req:respond(200, cjson.encode(req:tls() or { plain_http = true }) .. "\n",
                    { ["Content-Type"] = "application/json" })
      end },
    -- Plain HTTP goes to https:// (301 for GET and HEAD, 308 otherwise). On port 443 the
    -- redirect plugin's `https = true` does this; the demo's port is 8443, so a handler.
    { match = { prefix = "/" }, upstream = "web", handler = function(req)
        if req:scheme() == "http" then
          local host = req:host()
          if host == "" then host = "127.0.0.1" end
          local m = req:method()
          req:redirect("https://" .. host .. ":8443" .. req:uri(),
                       (m == "GET" or m == "HEAD") and 301 or 308)
        end
      end },
  },
  log = { access = "-", format = "$remote_addr $scheme $ssl_protocol $ssl_server_name "
                                .. "\"$request\" $status upstream=$upstream_addr" },
}
