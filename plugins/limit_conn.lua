-- limit_conn: at most `max` requests in flight at once per key (client address, consumer,
-- header, route or a Lua function), counted in a shared dict by every worker of the
-- process. A request takes its slot in the request phase and gives it back in the log
-- phase, which runs however the request ends: answered, refused, failed upstream, timed
-- out, or abandoned by its client. Docs: docs/plugins/limit_conn.md.
local limit_key = require "luaproxy.limit_key"
local format = string.format
local pairs = pairs

local P = {
  name = "limit_conn",
  priority = 901, -- just before rate_limit: a refused request takes no rate token
}

local fields = {
  max = { type = "integer", required = true, min = 1,
          description = "requests allowed in flight at once per key" },
  id = { type = "string", pattern = "^[%w_%-%.:]+$",
         description = "counter namespace; instances with the same id (and limit_by) share "
           .. "counts. Default: this entry's place in the config" },
  dict = { type = "string", default = "limit_conn", pattern = "^[%w_]+$",
           description = "the shared dict (declared in the config's `shared`) that counts" },
  status = { type = "integer", default = 503, min = 400, max = 599,
             description = "status of a refused request (nginx's limit_conn_status: 503; "
               .. "429 is the other usual choice)" },
  message = { type = "string", default = "too many requests in flight\n",
              description = "body of a refused request (text/plain)" },
  dry_run = { type = "boolean", default = false,
              description = "refuse nothing: log what would have been refused" },
}
for k, v in pairs(limit_key.fields) do fields[k] = v end
P.schema = { fields = fields, custom = limit_key.check }

function P.compile(conf, where)
  local c = limit_key.compile_entry(conf, where, "limit_conn")
  c.metric_label = conf.id or where or "limit_conn"
  return c
end

local function dict_of(conf) return limit_key.dict(conf, "limit_conn") end

local m_requests -- decisions on GET /metrics (docs/metrics.md)

function P.init_worker(conf)
  dict_of(conf)
  -- Declared by every entry's init_worker: a name declared again is the same metric.
  m_requests = proxy.metrics.counter("limit_conn_requests_total",
    "Decisions of the limit_conn plugin, by limit and result.", { "limit", "result" })
end

function P.request(req, conf)
  local d = dict_of(conf)
  local key = conf.ns .. conf.keyfn(req)
  local n, err = d:incr(key, 1, 0)
  if not n then
    -- The dict is full of counts in use: let the request through uncounted rather than
    -- refuse everyone (and say so).
    proxy.log.warn("limit_conn: " .. tostring(err))
    return
  end
  if n > conf.max then
    d:incr(key, -1, 0)
    if m_requests then m_requests:inc(1, conf.metric_label, conf.dry_run and "dry_run" or "refused") end
    if conf.dry_run then
      proxy.log.info(format("limit_conn: would refuse %s (dry run)", key))
      req.ctx.conn_limited = true
      return
    end
    req.ctx.conn_limited = true
    return req:respond(conf.status, conf.message, { ["Content-Type"] = "text/plain" })
  end
  -- The dict and key are kept with the request: a reload in between must give the slot
  -- back where it was taken.
  req.ctx[conf.ctx_key] = key
  req.ctx[conf] = d
  if m_requests then m_requests:inc(1, conf.metric_label, "allowed") end
end

function P.log(req, conf)
  local ctx = req.ctx
  local key = ctx[conf.ctx_key]
  if key then
    ctx[conf.ctx_key] = nil
    local d = ctx[conf]
    local n = d:incr(key, -1, 0)
    -- Below 0: the count was evicted while this request held it (a dict too small for
    -- its keys) and came back from 0. Bring it back to 0 rather than let the key get a
    -- slot more than `max` from now on.
    if n and n < 0 then d:incr(key, -n, 0) end
  end
end

return P
