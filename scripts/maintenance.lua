-- maintenance.lua: the site is down for maintenance. Every request gets a friendly
-- "503 Service Unavailable" page with `Retry-After`, answered by the proxy itself, except:
--
--   /health                             -> still reaches the web service (127.0.0.1:9001),
--                                          so load balancers and monitors see the real
--                                          state of the application
--   header `X-Maintenance-Bypass: <key>` -> reaches the web service as usual, so the team
--                                          can check the site before opening it again
--
-- Try it with the demo origins:
--   build/luaproxy -c scripts/maintenance.lua
--   curl -i http://127.0.0.1:8080/                  # 503, Retry-After: 600, the HTML page
--   curl -i http://127.0.0.1:8080/health            # from the web service (X-Origin-Id: web;
--                                                   # the demo origin has no /health: 404)
--   curl -i -H 'X-Maintenance-Bypass: let-me-in' http://127.0.0.1:8080/   # the site
--
-- To end the maintenance, serve the usual config again (or remove the handler).

-- Settings, in one place. Everything at the top of a config file runs once, when the
-- config is loaded (in each worker), not per request.
local RETRY_AFTER = 600                 -- seconds; browsers and crawlers read Retry-After
local BYPASS_KEY = "let-me-in"          -- value of X-Maintenance-Bypass that skips the page;
                                        -- change it, and set it to nil to allow nobody

-- The page, built once. Keep it self-contained (no images or CSS from the site: the
-- site is what is down).
local PAGE = [[
<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Back soon</title></head>
<body style="font-family: sans-serif; max-width: 36em; margin: 4em auto; line-height: 1.5">
<h1>We'll be back soon</h1>
<p>We are making a few improvements and will be back in about ten minutes.
Thank you for your patience!</p>
</body>
</html>
]]

-- Response headers of the maintenance answer. A table built once and reused: the
-- handler must not change it.
local HEADERS = {
  ["Content-Type"] = "text/html; charset=utf-8",
  ["Retry-After"] = tostring(RETRY_AFTER),
  ["Cache-Control"] = "no-store",       -- do not let caches keep the maintenance page
}

return {
  workers = 2,
  listen = { { address = "127.0.0.1:8080" } },

  upstreams = {
    web = { targets = { "127.0.0.1:9001" } },
  },

  routes = {
    {
      match = { prefix = "/" },
      upstream = "web",   -- where /health and bypassed requests go
      -- The handler runs for every request on this route, before it goes upstream.
      -- Returning without answering lets the request continue to `upstream`;
      -- req:respond() answers it here (and ends the handler).
      handler = function(req)
        if req:path() == "/health" then return end
        if BYPASS_KEY and req:header("X-Maintenance-Bypass") == BYPASS_KEY then return end
        return req:respond(503, PAGE, HEADERS)
      end,
    },
  },

  log = { access = "-" },
}
