-- mirror: sends a copy of a share of requests (method, URI, headers and body) to another
-- upstream or URL and discards the answers. Docs: docs/plugins/mirror.md.
--
-- The body copy is the engine's (req:tee_body in the request phase): every body span is
-- copied into a buffer the request owns as it streams upstream, so the main request never
-- waits for its whole body, unlike req:body(). The copy is taken out in the log phase (after
-- the client got its last byte) and sent from a proxy.spawn thread over proxy.http: the
-- thread belongs to the worker's generation, not to the request, so the request may end
-- first, a reload keeps it running (its VM lives until its threads end) and a stopping
-- worker cuts it at its drain deadline. Nothing the mirror does can fail or delay the
-- main request: every failure is counted, never raised into it.
local find, lower = string.find, string.lower
local random = math.random
local type, tonumber, pairs, pcall = type, tonumber, pairs, pcall

local P = {
  name = "mirror",
  -- Late in the request phase: requests refused by auth, limits or the WAF (higher
  -- priorities) are not mirrored, and a predicate sees what they set in req.ctx.
  priority = 450,
  schema = {
    fields = {
      upstream = { type = "upstream",
        description = "the upstream to mirror to (its targets, balanced round robin over "
          .. "those up: health applies); give this or url" },
      url = { type = "string", pattern = "^https?://[^/?#]+[^?#]*$",
        description = "the base URL to mirror to (http:// or https://, host, port, an "
          .. "optional path prefix); the request's URI is appended; give this or upstream" },
      percentage = { type = "number", default = 100, min = 0, max = 100,
        description = "share of requests mirrored, in percent" },
      predicate = { type = "function",
        description = "function(req) returning true for requests to mirror (after percentage)" },
      max_body = { type = "integer", default = 1048576, min = 0,
        description = "largest request body mirrored, in bytes; a request with a larger body "
          .. "is not mirrored (counted as dropped, reason too_large)" },
      timeout = { type = "duration", default = 1,
        description = "connect, send and read timeout of a mirrored request, in seconds" },
      max_concurrent = { type = "integer", default = 64, min = 1,
        description = "mirrored requests in flight per worker; more are dropped and counted" },
      host = { type = "string", default = "keep", one_of = { "keep", "target" },
        description = "Host header: the client's (keep) or the mirror target's (target)" },
      headers = { type = "map", default = {},
        keys = { type = "string", pattern = "^[%w!#$%%&'*+%-.^_`|~]+$" },
        values = { type = "string", pattern = "^[^\r\n%z]*$" },
        description = "headers set on mirrored requests, e.g. X-Mirrored-By" },
      ssl_verify = { type = "boolean", default = true,
        description = "check the certificate of an https:// url" },
    },
    custom = function(conf)
      if (conf.upstream == nil) == (conf.url == nil) then
        return nil, "give exactly one of upstream and url"
      end
      return true
    end,
  },
}

-- Hop-by-hop and framing headers the mirror never copies (proxy.http frames the body).
local SKIP = {
  connection = true, ["keep-alive"] = true, ["proxy-connection"] = true, te = true,
  trailer = true, ["transfer-encoding"] = true, upgrade = true, ["content-length"] = true,
  expect = true, host = true, ["proxy-authenticate"] = true, ["proxy-authorization"] = true,
}

function P.compile(conf)
  local c = {}
  for k, v in pairs(conf) do c[k] = v end
  if conf.url then
    c.base = (conf.url:gsub("/+$", ""))
  end
  c.keepalive = { idle_timeout = 60, pool_size = conf.max_concurrent }
  c.extra, c.extra_lower = {}, {}
  for name, value in pairs(conf.headers) do
    c.extra[#c.extra + 1] = { name, value }
    c.extra_lower[lower(name)] = true
  end
  return c
end

-- Per worker (this generation's VM): mirrored requests in flight, round-robin position
-- per upstream, and the upstream targets seen at most a second ago.
local inflight = 0
local rr = {}
local targets_cache = {}

local m_requests, m_dropped, m_inflight
function P.init_worker()
  m_requests = proxy.metrics.counter("mirror_requests_total",
    "Mirrored requests that went out, by outcome (sent: an answer came; failed; timeout).",
    { "outcome" })
  m_dropped = proxy.metrics.counter("mirror_dropped_total",
    "Requests chosen for mirroring but not mirrored, by reason (busy: max_concurrent or the "
      .. "worker's thread bound; too_large: body over max_body; incomplete: the client's body "
      .. "did not end; no_target: no target up).", { "reason" })
  m_inflight = proxy.metrics.gauge("mirror_in_flight", "Mirrored requests in flight.")
end

local function dropped(reason)
  if m_dropped then m_dropped:inc(1, reason) end
end

local KEY = "\0mirror" -- req.ctx key of its own: the confs that chose this request

function P.request(req, conf)
  local pct = conf.percentage
  if pct < 100 and (pct <= 0 or random() * 100 >= pct) then return end
  if conf.predicate and not conf.predicate(req) then return end
  -- A protocol upgrade (WebSocket) becomes a tunnel: there is no request to copy.
  if req:header("upgrade") ~= nil then return end
  local cl = req:header("content-length")
  local has_body = req:header("transfer-encoding") ~= nil or (cl ~= nil and cl ~= "0")
  if has_body then
    local n = tonumber(cl)
    if conf.max_body == 0 or (n and n > conf.max_body) then
      return dropped("too_large")
    end
    req:tee_body(conf.max_body)
  end
  local ctx = req.ctx
  local chosen = ctx[KEY]
  if not chosen then chosen = {}; ctx[KEY] = chosen end
  chosen[conf] = has_body
end

-- An "ip:port" of upstream `name` that is up, round robin; nil when none is.
local function pick(name)
  local now = proxy.monotonic()
  local c = targets_cache[name]
  if not c or now - c.at > 1 then
    local list = {}
    for _, t in pairs(proxy.upstream(name):targets()) do
      if t.state == "up" then list[#list + 1] = t.address end
    end
    c = { at = now, list = list }
    targets_cache[name] = c
  end
  local n = #c.list
  if n == 0 then return nil end
  local i = (rr[name] or 0) % n + 1
  rr[name] = i
  return c.list[i]
end

local function finish(outcome)
  inflight = inflight - 1
  if m_inflight then m_inflight:dec(1) end
  if m_requests then m_requests:inc(1, outcome) end
end

-- The spawned thread: one request, its answer read and thrown away (up to 64 KiB, then the
-- connection is closed rather than drained).
local function send(opts)
  local ok, res, err = pcall(proxy.http.request, opts)
  if not ok then
    proxy.log.warn("mirror request failed: " .. tostring(res))
    return finish("failed")
  end
  if not res then
    return finish(find(err, "timeout", 1, true) and "timeout" or "failed")
  end
  local reader, got = res:body_reader(), 0
  while true do
    local chunk, rerr = reader()
    if not chunk then
      if rerr then return finish(find(rerr, "timeout", 1, true) and "timeout" or "failed") end
      break
    end
    got = got + #chunk
    if got > 65536 then res:close(); break end
  end
  finish("sent")
end

local function mirror_one(req, conf, has_body)
  local body
  if has_body then
    local why
    body, why = req:teed_body()
    if not body then return dropped(why == "too large" and "too_large" or "incomplete") end
  end
  if inflight >= conf.max_concurrent then return dropped("busy") end
  local base, addr
  if conf.base then
    base = conf.base
  else
    addr = pick(conf.upstream)
    if not addr then return dropped("no_target") end
    base = "http://" .. addr
  end
  local headers = {}
  local extra_lower = conf.extra_lower
  local xff
  for name, value in pairs(req:headers()) do
    if name == "x-forwarded-for" then
      xff = type(value) == "table" and table.concat(value, ", ") or value
    elseif not SKIP[name] and not extra_lower[name] then
      headers[name] = value
    end
  end
  local ip = req:client_ip()
  headers["X-Forwarded-For"] = xff and (xff .. ", " .. ip) or ip
  if conf.host == "keep" then headers["Host"] = req:header("host") end
  local extra = conf.extra
  for i = 1, #extra do headers[extra[i][1]] = extra[i][2] end
  local opts = {
    method = req:method(), url = base .. req:uri(), headers = headers,
    body = (body ~= nil and body ~= "") and body or nil,
    timeout = conf.timeout, ssl_verify = conf.ssl_verify, stream = true,
    keepalive = conf.keepalive,
  }
  inflight = inflight + 1
  if m_inflight then m_inflight:inc(1) end
  local ok = proxy.spawn(send, opts)
  if not ok then
    -- The worker's bound on running threads (lua.max_running_timers): dropped, not queued.
    inflight = inflight - 1
    if m_inflight then m_inflight:dec(1) end
    return dropped("busy")
  end
end

-- Each instance (global, per route) sends its own copy.
function P.log(req, conf)
  local chosen = req.ctx[KEY]
  local has_body = chosen and chosen[conf]
  if has_body == nil then return end
  mirror_one(req, conf, has_body)
end

-- For specs: this worker's mirrored requests in flight.
function P.in_flight() return inflight end

return P
