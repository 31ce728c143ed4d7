-- redis-rate-limit.lua: each client address may make LIMIT requests per WINDOW seconds;
-- the counts live in Redis, so every worker (and every luaproxy sharing that Redis) counts
-- together. Over the limit the proxy answers 429 itself, with Retry-After. When Redis is
-- down or slow the requests go through (fail open) and the log says so, at most once per
-- 10 seconds per worker: an outage of the limiter must not become an outage of the site.
--
-- Try it with the demo origins and a Redis on its default port:
--   redis-server --port 6379 --save "" --appendonly no &
--   build/luaproxy -c scripts/redis-rate-limit.lua
--   for i in $(seq 12); do curl -s -o /dev/null -w '%{http_code} ' http://127.0.0.1:8080/; done
--   # 200 (ten times), then 429 429
--   curl -i http://127.0.0.1:8080/     # 429, Retry-After: seconds until the window ends
--
-- The counter is one Redis key per client and window ("ratelimit:IP:WINDOW-NUMBER"):
-- INCR, and EXPIRE so that Redis forgets it after the window, both in one round trip
-- (a pipeline).

-- Settings. Everything at the top of a config file runs once per worker, at load.
local LIMIT = 10                   -- requests per client and window
local WINDOW = 60                  -- seconds
local REDIS = {                    -- proxy.redis.connect's options (docs/lua-api.md)
  host = "127.0.0.1", port = 6379,
  timeout = 100,                   -- ms: a slow Redis must not slow every request down
  -- password = "...", db = 0,
}

local floor, ceil = math.floor, math.ceil

-- Logs why the limit is off, at most once per 10 s in this worker.
local quiet_until = 0
local function limiter_off(err)
  local now = proxy.monotonic()
  if now >= quiet_until then
    quiet_until = now + 10
    proxy.log.warn("rate limit off (requests go through):", err)
  end
  return nil
end

-- Seconds until the client may come back when it is over the limit, else nil.
local function over_limit(req)
  local red, err = proxy.redis.connect(REDIS)
  if not red then return limiter_off(err) end     -- "redis 127.0.0.1:6379: connection refused"
  local now = proxy.now()
  local key = "ratelimit:" .. req:client_ip() .. ":" .. floor(now / WINDOW)
  red:init_pipeline()
  red:incr(key)
  red:expire(key, WINDOW)
  local replies
  replies, err = red:commit_pipeline()
  if not replies then return limiter_off("redis: " .. err) end -- the client closed itself
  red:set_keepalive(60000, 64)                    -- back to the pool for the next request
  local count = replies[1]
  if type(count) ~= "number" then return limiter_off("redis: " .. count[2]) end -- { false, "ERR" }
  if count > LIMIT then return WINDOW - now % WINDOW end
  return nil
end

return {
  listen = { { address = "127.0.0.1:8080" } },
  upstreams = { web = { targets = { "127.0.0.1:9001" } } },
  routes = {
    { match = { prefix = "/" }, upstream = "web",
      -- Runs before the request goes to `web`; answering here ends it.
      handler = function(req)
        local retry = over_limit(req)
        if retry then
          return req:respond(429, "too many requests\n", {
            ["Retry-After"] = ceil(retry), ["Content-Type"] = "text/plain" })
        end
      end },
  },
}
