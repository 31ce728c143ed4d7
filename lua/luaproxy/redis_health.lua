-- redis_health: "Redis failed: skip it for a while, and say so once per interval", for the
-- plugins that use a Redis on the request path (rate_limit's counters, cache's L2 tier). A
-- Redis that times out must not add its timeout to every request, and an outage is one event,
-- not a log line per request.
--
-- A tracker is per plugin and per worker VM (no state is shared across workers): its own
-- messages, and its own view of which Redis is down. Within one tracker, failures are
-- remembered by `down_key` (the server, database and credentials: a wrong password in one
-- entry must not make the entries with the right one skip Redis) and logged by `addr` (the
-- server: one line per outage, whichever entries use it).
local format, tostring, concat = string.format, tostring, table.concat

local M = {}

local Tracker = {}
Tracker.__index = Tracker

-- A tracker. Its failures are logged as format(message, addr, err, detail).
function M.new(message)
  return setmetatable({ message = message, next_log = {}, down_until = {} }, Tracker)
end

-- What a failure is about for `opts` (host, port, db, user, password: a redis record of
-- luaproxy.redis.schema_record): the key skip() and failed() go by.
function M.down_key(opts)
  return concat({ opts.host .. ":" .. opts.port, opts.db or 0, opts.user or "",
    opts.password or "" }, "\0")
end

-- true while the Redis of down_key failed less than its retry_interval ago (the caller
-- skips it); the first call past that forgets the failure, so that request asks Redis again.
function Tracker:skip(down_key)
  local down = self.down_until[down_key]
  if not down then return false end
  if proxy.monotonic() < down then return true end
  self.down_until[down_key] = nil
  return false
end

-- Redis failed: skipped for retry_interval seconds, logged (warn) unless this tracker logged
-- about addr less than log_interval seconds ago. detail: the message's third value, if any.
function Tracker:failed(down_key, addr, err, retry_interval, log_interval, detail)
  local now = proxy.monotonic()
  self.down_until[down_key] = now + retry_interval
  if now >= (self.next_log[addr] or 0) then
    self.next_log[addr] = now + log_interval
    proxy.log.warn(format(self.message, addr, tostring(err), tostring(detail)))
  end
end

-- Specs: a fresh worker's view of Redis.
function Tracker:forget()
  self.next_log, self.down_until = {}, {}
end

return M
