-- auth-subrequest.lua: every request is authorised by an HTTP call to an auth service
-- (as nginx's auth_request does), and the verdict is cached in a shared dict, so a
-- client's token costs one call per CACHE_TTL seconds, whichever worker serves it.
--
--   no Authorization header          -> 401, with WWW-Authenticate (the auth service is
--                                       not asked)
--   the auth service answers 2xx     -> the request goes on to the web service, with
--                                       X-User set from the service's X-User header
--   it answers 401 or 403            -> 403 (the denial is cached too, shorter)
--   it is down, slow or answers else -> 503 (FAIL_OPEN = true lets requests through
--                                       unauthenticated instead; pick per service)
--
-- The call: GET AUTH_URL with the client's Authorization header and the original method
-- and URI (X-Original-Method, X-Original-URI), over a pooled keep-alive connection
-- (proxy.http, docs/lua-api.md). The cache key is the Authorization value itself; the
-- dict is shared by the workers and survives reloads (docs/lua-api.md, proxy.shared).
--
-- Try it with the demo origin and any HTTP service on 9100 as the auth service:
--   build/luaproxy -c scripts/auth-subrequest.lua
--   curl -i http://127.0.0.1:8080/                                   # 401
--   curl -i -H 'Authorization: Bearer good' http://127.0.0.1:8080/   # the auth's verdict

local AUTH_URL = "http://127.0.0.1:9100/auth"
local AUTH_TIMEOUT = 1          -- seconds for each of connect, send and read
local CACHE_TTL = 30            -- seconds an allowed token is trusted without asking
local DENY_TTL = 5              -- seconds a denied token is refused without asking
local FAIL_OPEN = false         -- the auth service unreachable: false = 503, true = let in

local cache -- proxy.shared.auth_cache, looked up at the first request of each worker

local DENIED = "-"              -- cached for a denied token (a user name is never "-")

return {
  workers = 2,
  listen = { { address = "127.0.0.1:8080" } },

  shared = { auth_cache = "1m" },

  upstreams = {
    web = { targets = { "127.0.0.1:9001" } },
  },

  routes = {
    {
      match = { prefix = "/" },
      upstream = "web",
      handler = function(req)
        local token = req:header("Authorization")
        if not token then
          return req:respond(401, "credentials required\n",
            { ["WWW-Authenticate"] = 'Bearer realm="example"' })
        end
        cache = cache or proxy.shared.auth_cache
        local user = cache:get(token)
        if user == nil then
          local res, err = proxy.http.request {
            url = AUTH_URL,
            headers = { Authorization = token, ["X-Original-Method"] = req:method(),
                        ["X-Original-URI"] = req:uri() },
            timeout = AUTH_TIMEOUT,
          }
          if not res then
            proxy.log.err("auth service:", err)
            if FAIL_OPEN then return end
            return req:respond(503, "authorization service unavailable\n")
          end
          if res.status >= 200 and res.status < 300 then
            user = res.headers["x-user"] or ""
            if type(user) == "table" then user = user[1] end
            cache:set(token, user, CACHE_TTL)
          elseif res.status == 401 or res.status == 403 then
            user = DENIED
            cache:set(token, user, DENY_TTL)
          else
            proxy.log.err("auth service: status ", res.status)
            if FAIL_OPEN then return end
            return req:respond(503, "authorization service unavailable\n")
          end
        end
        if user == DENIED then return req:respond(403, "forbidden\n") end
        req:set_header("X-User", user)
        req:clear_header("Authorization") -- the web service trusts X-User instead
      end,
    },
  },

  log = { access = "-" },
}
