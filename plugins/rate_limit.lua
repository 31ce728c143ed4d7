-- rate_limit: at most `rate` requests per `period` per key (client address, consumer,
-- header, route or a Lua function), with a `burst`, decided by GCRA (the generic cell rate
-- algorithm). `local` counts in a shared dict for every worker of the process; `redis`
-- counts in Redis for every instance sharing it, one atomic script per decision. Over the
-- limit: 429 with Retry-After and the IETF draft's RateLimit-Policy / RateLimit headers.
-- Docs: docs/plugins/rate_limit.md.
local limit_key = require "luaproxy.limit_key"
local redis_schema = require "luaproxy.redis"
local redis_health = require "luaproxy.redis_health"
local ceil, floor, min = math.ceil, math.floor, math.min
local format = string.format
local type, tostring, pairs = type, tostring, pairs

local P = {
  name = "rate_limit",
  -- After authentication (whose consumer it may count by), before everything that costs.
  priority = 900,
}

local fields = {
  rate = { type = "number", required = true, min = 1e-6,
           description = "requests allowed per `period` at the steady rate" },
  period = { type = "duration", default = 1, min = 1e-3,
             description = "seconds the `rate` is counted over" },
  burst = { type = "integer", default = 0, min = 0, max = 1e9,
            description = "requests allowed at once beyond the steady rate (nginx's burst "
              .. "with nodelay): a client idle long enough may send burst + 1 together" },
  id = { type = "string", pattern = "^[%w_%-%.:]+$",
         description = "counter namespace and the policy name in the headers; instances "
           .. "with the same id (and limit_by) share counters. Default: this entry's place "
           .. "in the config (routes[2].plugins[1]), and \"default\" in the headers" },
  policy = { type = "string", default = "local", one_of = { "local", "redis" },
             description = "local: a shared dict counts for every worker of this proxy; "
               .. "redis: Redis counts for every proxy sharing it" },
  dict = { type = "string", default = "rate_limit", pattern = "^[%w_]+$",
           description = "the shared dict (declared in the config's `shared`) that local "
             .. "counts go to (also the fallback's when Redis is down)" },
  redis = redis_schema.schema_record {
    description = "the Redis of policy = redis",
    timeout = 100,
    timeout_description = "milliseconds for connect, send and read: a slow Redis must not "
      .. "slow every request down",
    prefix = "luaproxy:rl:", prefix_description = "key prefix",
  },
  fallback = { type = "string", default = "local", one_of = { "local", "allow", "deny" },
               description = "when Redis cannot answer: count locally (in `dict`), let the "
                 .. "request through, or refuse it (`status`)" },
  log_interval = { type = "duration", default = 60, min = 0,
                   description = "seconds between two log lines about Redis failing (per worker)" },
  retry_interval = { type = "duration", default = 1, min = 0,
                     description = "after Redis failed, seconds this worker lets the fallback "
                       .. "decide without asking Redis (a Redis that times out must not add its "
                       .. "timeout to every request); 0 asks Redis for every request" },
  status = { type = "integer", default = 429, min = 400, max = 599,
             description = "status of a refused request" },
  message = { type = "string", default = "too many requests\n",
              description = "body of a refused request (text/plain)" },
  headers = { type = "boolean", default = true,
              description = "send RateLimit-Policy and RateLimit on every response" },
  dry_run = { type = "boolean", default = false,
              description = "refuse nothing: log and count what would have been refused" },
}
for k, v in pairs(limit_key.fields) do fields[k] = v end
P.schema = { fields = fields, custom = limit_key.check }

-- GCRA in Redis: the key holds the theoretical arrival time (TAT) in microseconds of
-- Redis's own clock, so that every proxy sharing it agrees on "now"; it expires when the
-- bucket is full again. Returns { allowed, remaining, retry_after_us, reset_after_us }.
-- Redis >= 5 replicates a script's effects, so reading TIME in it is allowed. A TAT further
-- ahead than this limit allows was made under another one (a reload that raised the rate):
-- it is brought back to now + limit, so the new limit applies at once.
P.REDIS_SCRIPT = [[
local interval, limit, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
if tat > now + limit then
  tat = now + limit
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.max(1, math.ceil(limit / 1000)))
end
local new_tat = tat + cost * interval
if new_tat - limit > now then
  return { 0, 0, new_tat - limit - now, tat - now }
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.max(1, math.ceil((new_tat - now) / 1000)))
return { 1, math.floor((limit - (new_tat - now)) / interval), 0, new_tat - now }
]]
-- SHA-1 of REDIS_SCRIPT for EVALSHA (a spec checks it against the script).
P.REDIS_SCRIPT_SHA1 = "27755782008f09c5dcabe6a35116a47583821972"

function P.compile(conf, where)
  local c = limit_key.compile_entry(conf, where, "rate_limit")
  c.metric_label = conf.id or where or "rate_limit"
  c.label = format("%q", conf.id or "default")
  c.policy_header = format("%s;q=%s;w=%d", c.label, tostring(conf.rate), ceil(conf.period))
  c.interval = conf.period / conf.rate
  if conf.policy == "redis" then
    local r = conf.redis
    c.redis_opts = redis_schema.connect_opts(r)
    c.redis_prefix = r.prefix .. c.ns
    c.interval_us = floor(c.interval * 1e6 + 0.5)
    c.limit_us = (conf.burst + 1) * c.interval_us
    c.redis_addr = r.host .. ":" .. r.port
    c.redis_down_key = redis_health.down_key(r)
  end
  return c
end

-- Decisions on GET /metrics (docs/metrics.md), declared once per worker VM.
local m_requests, m_redis_failures

function P.init_worker(conf)
  if conf.policy == "local" or conf.fallback == "local" then limit_key.dict(conf, "rate_limit") end
  -- Declared by every entry's init_worker: a name declared again is the same metric.
  m_requests = proxy.metrics.counter("rate_limit_requests_total",
    "Decisions of the rate_limit plugin, by limit and result.", { "limit", "result" })
  m_redis_failures = proxy.metrics.counter("rate_limit_redis_failures_total",
    "rate_limit decisions Redis could not make (the fallback decided).", { "limit" })
end

local function local_decision(conf, key)
  local ok, remaining, retry, reset = limit_key.dict(conf, "rate_limit"):gcra(conf.ns .. key, conf.rate,
    conf.period, conf.burst, 1)
  if ok == nil then
    -- The dict cannot hold the key ("no memory" with every entry valid): count nothing
    -- rather than refuse everyone.
    proxy.log.warn("rate_limit: " .. tostring(remaining))
    return true, conf.burst, 0, 0
  end
  return ok, remaining, retry, reset
end

-- Redis failing: logged at most once per log_interval per Redis address in this worker
-- (whichever instances use it: an outage is one event), and the fallback decides alone for
-- retry_interval: the first request after it asks Redis again, so the limit is shared again
-- within retry_interval of Redis coming back.
local health = redis_health.new("rate_limit: Redis %s failed (%s); fallback: %s")

-- Specs: a fresh worker's view of Redis.
function P._forget_failures() health:forget() end

local function fallback(conf)
  local fb = conf.fallback
  if fb == "allow" then return true, 0, 0, 0 end
  if fb == "deny" then return false, 0, conf.interval, conf.interval end
  return nil -- local
end

local function redis_failed(conf, err)
  health:failed(conf.redis_down_key, conf.redis_addr, err, conf.retry_interval,
    conf.log_interval, conf.fallback)
  return fallback(conf)
end

local function redis_decision(conf, key)
  if health:skip(conf.redis_down_key) then
    if m_redis_failures then m_redis_failures:inc(1, conf.metric_label) end
    return fallback(conf)
  end
  local red, err = proxy.redis.connect(conf.redis_opts)
  if not red then
    if m_redis_failures then m_redis_failures:inc(1, conf.metric_label) end
    return redis_failed(conf, err)
  end
  local k = conf.redis_prefix .. key
  local res
  res, err = red:evalsha(P.REDIS_SCRIPT_SHA1, 1, k, conf.interval_us, conf.limit_us, 1)
  if res == false and type(err) == "string" and err:find("NOSCRIPT", 1, true) then
    res, err = red:eval(P.REDIS_SCRIPT, 1, k, conf.interval_us, conf.limit_us, 1)
  end
  if type(res) ~= "table" then
    if res == false then red:set_keepalive(60000, conf.redis_opts.pool_size) end
    if m_redis_failures then m_redis_failures:inc(1, conf.metric_label) end
    return redis_failed(conf, tostring(err))
  end
  red:set_keepalive(60000, conf.redis_opts.pool_size)
  return res[1] == 1, res[2], res[3] / 1e6, res[4] / 1e6
end

function P.request(req, conf)
  local key = conf.keyfn(req)
  local ok, remaining, retry, reset
  if conf.policy == "redis" then
    ok, remaining, retry, reset = redis_decision(conf, key)
  end
  if ok == nil then ok, remaining, retry, reset = local_decision(conf, key) end
  if conf.headers then
    req.ctx[conf.ctx_key] = format("%s;r=%d;t=%d", conf.label, min(remaining, conf.rate),
      ceil(reset))
  end
  if ok then
    if m_requests then m_requests:inc(1, conf.metric_label, "allowed") end
    return
  end
  if conf.dry_run then
    if m_requests then m_requests:inc(1, conf.metric_label, "dry_run") end
    proxy.log.info(format("rate_limit: would refuse %s (dry run)", key))
    req.ctx.rate_limited = true
    return
  end
  req.ctx.rate_limited = true
  if m_requests then m_requests:inc(1, conf.metric_label, "refused") end
  req:respond(conf.status, conf.message, {
    ["Content-Type"] = "text/plain",
    ["Retry-After"] = tostring(ceil(retry)),
  })
end

function P.response(req, conf)
  local v = conf.headers and req.ctx[conf.ctx_key]
  if v then
    req:add_resp_header("RateLimit-Policy", conf.policy_header)
    req:add_resp_header("RateLimit", v)
  end
end

return P
