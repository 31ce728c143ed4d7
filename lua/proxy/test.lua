-- proxy.test: a request double for testing plugins under busted, without a proxy.
--
--   local T = require "proxy.test"          -- before requiring the plugin under test
--   local res = T.run(require "headers", { request = { set = { ["X-Env"] = "prod" } } },
--                     { uri = "/a?x=1", headers = { Host = "example.com" } })
--   assert.equal("prod", res.request_headers["X-Env"])
--
-- The double implements every request-handle method of docs/lua-api.md with the engine's
-- semantics and the same phase checks (luaproxy.phases). Phase functions run inside
-- coroutines like in the engine: req:respond() yields a marker and the phase is never
-- resumed, proxy.sleep() yields and is resumed at once with the fake clock advanced.
-- See docs/testing-plugins.md.
local phases = require "luaproxy.phases"
local schema = require "luaproxy.schema"

local check = phases.check
local type, tostring, tonumber, pairs, ipairs, select = type, tostring, tonumber, pairs, ipairs, select
local setmetatable, error, unpack = setmetatable, error, unpack
local find, sub, lower, gsub, char, format = string.find, string.sub, string.lower, string.gsub,
  string.char, string.format
local concat, sort = table.concat, table.sort
local co_create, co_resume, co_yield, co_status, co_running = coroutine.create,
  coroutine.resume, coroutine.yield, coroutine.status, coroutine.running

local T = {}
local init_ran -- see T.reset

-- Resumes a phase's (or timer's) coroutine as the engine does: it is the one coroutine
-- phases.wait lets wait (a wait inside a plugin's own coroutine raises, as in the engine).
local function resume_task(co, ...)
  local rt = package.loaded["luaproxy.runtime"]
  local was = rt and rt.task_co
  if rt then rt.task_co = co end
  local a, b = co_resume(co, ...)
  if rt then rt.task_co = was end
  return a, b
end

-- Markers a phase coroutine yields to the runner.
local RESPONDED = setmetatable({}, { __tostring = function() return "proxy.test: responded" end })
local SLEEP = setmetatable({}, { __tostring = function() return "proxy.test: sleep" end })

-- The coroutine the double is running a phase in (nil outside T.call / T.run).
local running

------------------------------------------------------------------------------------------
-- The fake `proxy` module
------------------------------------------------------------------------------------------
local START = 1700000000.0
local clock = START

-- Log lines recorded by proxy.log.*: { level =, message =, plugin = }.
T.logs = {}
T.config_warnings = {}
local log_tag -- the plugin whose phase is running, for log lines

local fake = { json = require "cjson", config = {}, log = {} }
for _, level in ipairs({ "err", "warn", "notice", "info", "debug" }) do
  fake.log[level] = function(...)
    local n = select("#", ...)
    local parts = {}
    for i = 1, n do parts[i] = tostring((select(i, ...))) end
    T.logs[#T.logs + 1] = { level = level, message = concat(parts, " "), plugin = log_tag }
  end
end
fake.log.error = fake.log.err -- as the engine's proxy.log.error
function fake.now() return clock end
-- The fake clock moves both; only differences of monotonic() mean anything.
function fake.monotonic() return clock - START + 1000 end
function fake.worker_id() return 1 end
function fake.sleep(seconds)
  seconds = tonumber(seconds)
  if not seconds or not (seconds >= 0 and seconds < 1e9) then
    phases.raise("proxy.sleep: expected a number of seconds from 0 to 1e9", 2)
  end
  -- Wait like the engine does (phases.wait), so a sleep where the engine cannot wait
  -- (inside a C call such as a table.sort comparator, or inside the plugin's own
  -- coroutine) fails in the specs too.
  if running then
    local co = co_running()
    local rt = package.loaded["luaproxy.runtime"]
    if co ~= running and not (rt and rt.task_co == co) then
      phases.raise("cannot wait here: inside a coroutine of your own (coroutine.wrap/create);"
        .. " the engine resumes only the phase's, timer's or thread's own coroutine", 2)
    end
    clock = clock + seconds
    phases.wait(SLEEP)
    return
  end
  clock = clock + seconds
end

-- proxy.upstream(name): the targets a spec gave with T.upstream_targets(), changed in
-- place like one worker's set in the engine.
T.upstreams = {}

function T.upstream_targets(name, targets)
  local list = {}
  for i, t in ipairs(targets) do
    if type(t) == "string" then t = { address = t } end
    list[i] = { address = t.address, weight = t.weight or 1, state = t.state or "up" }
  end
  T.upstreams[name] = list
  return list
end

local Upstream = {}
Upstream.__index = Upstream

local function find_target(self, addr)
  for i, t in ipairs(T.upstreams[self.name]) do
    if t.address == addr then return i, t end
  end
end

local function check_target_args(what, addr, weight)
  if type(addr) ~= "string" then
    phases.raise(format("%s(): expected an address \"ip:port\", got %s", what, type(addr)), 3)
  end
  if weight ~= nil and (type(weight) ~= "number" or weight < 1 or weight > 10000
                        or weight % 1 ~= 0) then
    phases.raise(what .. "(): the weight must be a whole number from 1 to 10000", 3)
  end
end

function Upstream:add_target(addr, weight)
  check_target_args("add_target", addr, weight)
  local host, port = addr:match("^%[?([%x:%.]+)%]?:(%d+)$")
  if not host or tonumber(port) < 1 or tonumber(port) > 65535 then
    return nil, "expected an IP address and port, got " .. addr
  end
  local _, t = find_target(self, addr)
  if t then
    t.weight = weight or 1
  else
    local list = T.upstreams[self.name]
    list[#list + 1] = { address = addr, weight = weight or 1, state = "up" }
  end
  return true
end

function Upstream:remove_target(addr)
  check_target_args("remove_target", addr)
  local i = find_target(self, addr)
  if not i then return nil, "no target " .. addr .. " in upstream " .. self.name end
  table.remove(T.upstreams[self.name], i)
  return true
end

function Upstream:set_weight(addr, weight)
  if weight == nil then phases.raise("set_weight(): expected a weight", 2) end
  check_target_args("set_weight", addr, weight)
  local _, t = find_target(self, addr)
  if not t then return nil, "no target " .. addr .. " in upstream " .. self.name end
  t.weight = weight
  return true
end

function Upstream:targets()
  local out = {}
  for i, t in ipairs(T.upstreams[self.name]) do
    out[i] = { address = t.address, weight = t.weight, state = t.state }
  end
  return out
end

function fake.upstream(name)
  if type(name) ~= "string" then phases.raise("proxy.upstream(): expected an upstream name", 2) end
  if not T.upstreams[name] then phases.raise(format("proxy.upstream(): no upstream named %q", name), 2) end
  return setmetatable({ name = name }, Upstream)
end

-- proxy.re is the engine's own module (PCRE2 through the FFI, loaded by name here).
fake.re = require "luaproxy.re"

-- proxy.router is the engine's compiled router (engine/router.c through the FFI, from the
-- lp_native library: luaproxy.native), loaded on first use.
fake.router = setmetatable({}, {
  __index = function(_, k) return require("luaproxy.router")[k] end,
})

-- proxy.tcp(): peers a spec scripts with T.tcp_peer (lua/proxy/test_tcp.lua).
local tcp = require "proxy.test_tcp"
local tcp_owner -- the request (or init_worker) whose phase runs: it owns the sockets made
local INIT_OWNER = setmetatable({}, { __tostring = function() return "init_worker" end })
tcp.init({
  advance = function(seconds) clock = clock + seconds end,
  now = function() return clock end,
  owner = function() return tcp_owner end,
  yield = function() if running and co_running() == running then co_yield(SLEEP) end end,
})
fake.tcp = tcp.tcp
T.tcp_peer = tcp.peer

T.proxy = fake
-- The engine's module wins when present (specs run inside the proxy).
if not package.loaded.proxy then
  package.loaded.proxy = fake
  rawset(_G, "proxy", fake)
end

-- ---- timers and spawned threads, on the fake clock ----
-- Timers run when T.advance() moves the clock past their time, in time order, each in a
-- coroutine of its own like in the engine (they may sleep). Threads from proxy.spawn run
-- when the phase that spawned them ends (T.call) or at the next T.advance().
local timers, spawned, exiting = {}, {}, false
T.max_timers, T.max_running_timers = 1024, 256

local function run_job(job, premature)
  local co = co_create(job.fn)
  local prev = running
  running = co
  local ok, err
  if job.spawn then
    ok, err = resume_task(co, unpack(job, 1, job.n))
  else
    ok, err = resume_task(co, premature, unpack(job, 1, job.n))
  end
  while ok and co_status(co) ~= "dead" do ok, err = resume_task(co) end
  running = prev
  if not ok then
    T.logs[#T.logs + 1] = { level = "err", message = (job.spawn and "proxy.spawn thread"
      or "timer") .. " failed: " .. tostring(err) }
  end
end

local Timer = {}
Timer.__index = Timer
function Timer:cancel()
  local job = self.job
  if job.cancelled or job.done or (job.started and not job.every) then
    return nil, "not pending"
  end
  job.cancelled = true
  return true
end

local function add_timer(what, delay, every, fn, ...)
  delay = tonumber(delay)
  if not delay or not (delay >= 0 and delay < 1e9) then
    phases.raise(what .. ": expected a delay in seconds from 0 to 1e9", 3)
  end
  if every and delay <= 0 then phases.raise(what .. ": the interval must be > 0", 3) end
  if type(fn) ~= "function" then phases.raise(what .. ": expected a function", 3) end
  if exiting then return nil, "process exiting" end
  local pending = 0
  for _, j in ipairs(timers) do if not j.cancelled and not j.done then pending = pending + 1 end end
  if pending >= T.max_timers then return nil, "too many pending timers (lua.max_timers)" end
  local job = { fn = fn, n = select("#", ...), due = clock + delay, every = every and delay,
                seq = #timers + 1, ... }
  timers[#timers + 1] = job
  return setmetatable({ job = job }, Timer)
end

fake.timer = {}
function fake.timer.at(delay, fn, ...) return add_timer("proxy.timer.at", delay, false, fn, ...) end
function fake.timer.every(interval, fn, ...)
  return add_timer("proxy.timer.every", interval, true, fn, ...)
end
function fake.timer.pending_count()
  local n = 0
  for _, j in ipairs(timers) do if not j.cancelled and not j.done then n = n + 1 end end
  return n
end
function fake.timer.running_count() return 0 end
function fake.spawn(fn, ...)
  if type(fn) ~= "function" then phases.raise("proxy.spawn: expected a function", 2) end
  if exiting then return nil, "process exiting" end
  spawned[#spawned + 1] = { fn = fn, n = select("#", ...), spawn = true, ... }
  return true
end
function fake.exiting() return exiting end

-- Runs the threads proxy.spawn queued (the engine runs them once their spawner yields).
function T.run_spawned()
  while #spawned > 0 do
    local job = table.remove(spawned, 1)
    run_job(job)
  end
end

-- The next timer due at or before `limit`.
local function next_due(limit)
  local best
  for _, j in ipairs(timers) do
    if not j.cancelled and not j.done and j.due <= limit and
       (not best or j.due < best.due or (j.due == best.due and j.seq < best.seq)) then
      best = j
    end
  end
  return best
end

-- The fake clock: proxy.now() returns it; proxy.sleep() and T.advance() move it.
function T.now() return clock end
function T.advance(seconds)
  local target = clock + (seconds or 0)
  T.run_spawned()
  while true do
    local job = next_due(target)
    if not job then break end
    if job.due > clock then clock = job.due end
    job.started = true
    run_job(job, false)
    if job.every and not job.cancelled then
      job.due = clock + job.every
    else
      job.done = true
    end
    T.run_spawned()
  end
  if target > clock then clock = target end
end

-- The generation ends (a reload or a shutdown in the engine): every pending timer runs
-- once with premature = true, and new ones are refused ("process exiting").
function T.end_generation()
  exiting = true
  T.run_spawned()
  for _, job in ipairs(timers) do
    if not job.cancelled and not job.done then
      job.done = true
      run_job(job, true)
    end
  end
end

-- Clears the recorded log lines, timers and threads, and puts the clock back to its start.
-- Plugins whose init_worker T.run/T.run_chain ran (once each until T.reset()).
init_ran = setmetatable({}, { __mode = "k" })

function T.reset()
  phases.current_fn = nil
  init_ran = setmetatable({}, { __mode = "k" })
  T.logs = {}
  T.config_warnings = {} -- compile()'s warn(text), in order
  clock = START
  timers, spawned, exiting = {}, {}, false
  tcp.reset()
end

-- Log lines at `level` (all levels when nil), as strings.
function T.log_lines(level)
  local out = {}
  for _, l in ipairs(T.logs) do
    if level == nil or l.level == level then out[#out + 1] = l.message end
  end
  return out
end

------------------------------------------------------------------------------------------
-- Helpers
------------------------------------------------------------------------------------------
local function argerror(method, what, got)
  return format("req:%s(): %s, got %s", method, what, got)
end

local function check_name(method, name)
  if type(name) ~= "string" or name == "" or not find(name, "^[%w!#$%%&'*+%-.^_`|~]+$") then
    phases.raise(argerror(method, "header name must be a non-empty token",
      type(name) == "string" and format("%q", name) or type(name)), 3)
  end
end

local function check_value(method, v)
  local tv = type(v)
  if tv == "number" then return tostring(v) end
  if tv ~= "string" then
    phases.raise(argerror(method, "header value must be a string, a number or a list of them", tv), 4)
  end
  if find(v, "[\r\n%z]") then
    phases.raise(format("req:%s(): header value contains CR, LF or NUL", method), 4)
  end
  return v
end

-- Header lists are arrays of { name, lower-case name, value } in arrival order.
local function h_find(list, lname)
  for i = 1, #list do
    if list[i][2] == lname then return list[i][3] end
  end
  return nil
end

local function h_remove(list, lname)
  local j = 0
  for i = 1, #list do
    local h = list[i]
    list[i] = nil
    if h[2] ~= lname then j = j + 1; list[j] = h end
  end
end

local function h_add(list, method, name, value)
  if type(value) == "table" then
    for i = 1, #value do list[#list + 1] = { name, lower(name), check_value(method, value[i]) } end
  else
    list[#list + 1] = { name, lower(name), check_value(method, value) }
  end
end

-- A table lower-case name -> value (a list when repeated) whose lookups ignore case.
local ci_mt = { __index = function(t, k)
  if type(k) == "string" then return rawget(t, lower(k)) end
end }

local function h_table(list)
  local out = setmetatable({}, ci_mt)
  for i = 1, #list do
    local h = list[i]
    local old = rawget(out, h[2])
    if old == nil then
      out[h[2]] = h[3]
    elseif type(old) == "table" then
      old[#old + 1] = h[3]
    else
      out[h[2]] = { old, h[3] }
    end
  end
  return out
end

local function h_from_spec(spec, method)
  local list = {}
  if spec == nil then return list end
  local names = {}
  for name in pairs(spec) do names[#names + 1] = name end
  sort(names, function(a, b) return tostring(a) < tostring(b) end)
  for _, name in ipairs(names) do
    check_name(method, name)
    h_add(list, method, name, spec[name])
  end
  return list
end

local function unescape(s)
  s = gsub(s, "+", " ")
  return (gsub(s, "%%(%x%x)", function(h) return char(tonumber(h, 16)) end))
end

-- Calls fn(name, value) for each query argument of `query` (without the "?").
local function each_arg(query, fn)
  if query == nil or query == "" then return end
  for pair in string.gmatch(query, "[^&]+") do
    local eq = find(pair, "=", 1, true)
    local name, value
    if eq then
      name, value = sub(pair, 1, eq - 1), sub(pair, eq + 1)
    else
      name, value = pair, ""
    end
    if fn(unescape(name), unescape(value)) then return end
  end
end

-- Like the engine: a local answer is 200..999, a changed status 100..999.
local function check_status(method, status, low)
  if type(status) ~= "number" or status % 1 ~= 0 or status < (low or 100) or status > 999 then
    phases.raise(argerror(method, "status must be an integer " .. (low or 100) .. "..999", tostring(status)), 3)
  end
end

------------------------------------------------------------------------------------------
-- The request handle
------------------------------------------------------------------------------------------
local Req = {}
Req.__index = Req

local function split_uri(uri)
  local q = find(uri, "?", 1, true)
  if q then return sub(uri, 1, q - 1), sub(uri, q + 1) end
  return uri, nil
end

-- The double's trace context (engine/trace.c's lp_trace_start, for a version-00 header).
local match = string.match
local function random_hex(n)
  local t = {}
  for i = 1, n do t[i] = format("%02x", math.random(0, 255)) end
  local s = concat(t)
  if not find(s, "[^0]") then return random_hex(n) end
  return s
end
local function trace_from_spec(spec)
  if spec.trace == false then return false end
  if spec.trace then return spec.trace end
  local tp
  for name, v in pairs(spec.headers or {}) do
    if lower(name) == "traceparent" and type(v) == "string" then tp = v end
  end
  local tid, pid, flags
  if tp then
    tid, pid, flags = match(tp, "^[ \t]*00%-(%x+)%-(%x+)%-(%x%x)[ \t]*$")
    if not tid or #tid ~= 32 or #pid ~= 16 or find(tp, "%u") or not find(tid, "[^0]")
       or not find(pid, "[^0]") then
      tid = nil
    end
  end
  if tid then
    return { trace_id = tid, span_id = random_hex(8), parent_span_id = pid,
             sampled = tonumber(flags, 16) % 2 == 1 }
  end
  return { trace_id = random_hex(16), span_id = random_hex(8), sampled = true }
end

-- Builds a request double. `spec` (all optional):
--   method = "GET", uri = "/", headers = { Name = "v" or { "v1", "v2" } },
--   client_ip = "127.0.0.1", peer_ip = client_ip (the TCP peer: #14), body = "", scheme = "http",
--   http_version = 1.1,
--   tls = { protocol = "TLSv1.3", sni = "example.com", ... } (what req:tls() returns; it also
--   makes scheme "https" unless given),
--   upstreams = { "app", ... } (names req:set_upstream accepts; any name when absent),
--   upstream = "app" (the upstream the config's route chose), ctx = {}, phase = "request",
--   params = { id = "42" } (the config route's captures, for req:param),
--   last_failure = { "connect", nil, "127.0.0.1:9001" } (what req:last_failure() returns in
--   the upstream phase: the retry being simulated; absent: a first try; in the response
--   phase: the failed try before the proxy's own 502/504),
--   trace = { trace_id =, span_id =, parent_span_id =, sampled = } (what req:trace_id() and
--   friends return), or false (tracing off: they return nil); absent: as the engine does
--   with tracing on, a valid version-00 `traceparent` header is continued, else new ids.
function T.request(spec)
  spec = spec or {}
  local uri = spec.uri or "/"
  if type(uri) ~= "string" or sub(uri, 1, 1) ~= "/" then
    phases.raise("proxy.test.request(): uri must start with /", 2)
  end
  local path, query = split_uri(uri)
  local known
  if spec.upstreams then
    known = {}
    for _, name in ipairs(spec.upstreams) do known[name] = true end
  end
  local req = setmetatable({
    ctx = spec.ctx or {},
    _phase = spec.phase or "request",
    _start_time = spec.start_time or clock,
    _method = spec.method or "GET",
    _path = path,
    _query = query,
    _headers = h_from_spec(spec.headers, "request"),
    _client_ip = spec.client_ip or "127.0.0.1",
    _peer_ip = spec.peer_ip or spec.client_ip or "127.0.0.1", -- #14
    _body = spec.body or "",
    _scheme = spec.scheme or (spec.tls and "https" or "http"),
    _tls = spec.tls,
    _http_version = spec.http_version or 1.1,
    _known = known,
    _upstream = spec.upstream,
    _target = nil,
    _status = nil,
    _resp_headers = {},
    _resp_body = nil,
    _responded = false,
    _upstream_addr = nil,
    _last_failure = spec.last_failure,
    _params = spec.params or {},
    _max_log_fields = spec.max_log_fields,
    _trace = trace_from_spec(spec),
    _body_incomplete = spec.body_incomplete,
    _trailers = h_from_spec(spec.trailers, "request"),
    _resp_trailers = {},
  }, Req)
  if spec.upstream and known and not known[spec.upstream] then
    phases.raise("proxy.test.request(): upstream " .. spec.upstream .. " is not in upstreams", 2)
  end
  return req
end

-- Test side: moves the double to phase `p` (one of luaproxy.phases.order).
function Req:set_phase(p)
  if self._phase == phases.ENDED_PHASE then phases.raise(phases.ENDED, 2) end
  for _, name in ipairs(phases.order) do
    if name == p then self._phase = p; return self end
  end
  phases.raise("req:set_phase(): unknown phase " .. tostring(p), 2)
end

function Req:phase() check("phase", self._phase); return self._phase end
function Req:start_time() check("start_time", self._phase); return self._start_time end
function Req:method() check("method", self._phase); return self._method end
-- A capture of the config route (spec.params: { id = "42" }).
function Req:param(name)
  check("param", self._phase)
  if type(name) ~= "string" then phases.raise("req:param(): expected a capture name", 2) end
  return self._params[name]
end
function Req:path() check("path", self._phase); return self._path end

function Req:uri()
  check("uri", self._phase)
  if self._query then return self._path .. "?" .. self._query end
  return self._path
end

function Req:query(name)
  check("query", self._phase)
  if type(name) ~= "string" then phases.raise(argerror("query", "name must be a string", type(name)), 2) end
  local found
  each_arg(self._query, function(n, v)
    if n == name then found = v; return true end
  end)
  return found
end

function Req:args()
  check("args", self._phase)
  local out = {}
  each_arg(self._query, function(n, v)
    local old = out[n]
    if old == nil then
      out[n] = v
    elseif type(old) == "table" then
      old[#old + 1] = v
    else
      out[n] = { old, v }
    end
  end)
  return out
end

function Req:header(name)
  check("header", self._phase)
  if type(name) ~= "string" then phases.raise(argerror("header", "name must be a string", type(name)), 2) end
  return h_find(self._headers, lower(name))
end

function Req:headers()
  check("headers", self._phase)
  return h_table(self._headers)
end

function Req:header_count()
  check("header_count", self._phase)
  return #self._headers
end

function Req:header_list(names, values)
  check("header_list", self._phase)
  local list = self._headers
  for i = 1, #list do names[i], values[i] = list[i][2], list[i][3] end
  return #list
end

function Req:host()
  check("host", self._phase)
  local h = h_find(self._headers, "host")
  if h == nil or h == "" then return "" end
  h = lower(h)
  if sub(h, 1, 1) == "[" then
    local close = find(h, "]", 1, true)
    return close and sub(h, 1, close) or h
  end
  return (gsub(h, ":%d*$", ""))
end

function Req:scheme() check("scheme", self._phase); return self._scheme end
function Req:client_ip() check("client_ip", self._phase); return self._client_ip end
function Req:peer_ip() check("peer_ip", self._phase); return self._peer_ip end
function Req:tls()
  check("tls", self._phase)
  if not self._tls then return nil end
  local t = {}
  for k, v in pairs(self._tls) do t[k] = v end
  return t
end
function Req:http_version() check("http_version", self._phase); return self._http_version end
function Req:upstream_name() check("upstream_name", self._phase); return self._upstream end
function Req:trace_id()
  check("trace_id", self._phase)
  return self._trace and self._trace.trace_id or nil
end
function Req:span_id()
  check("span_id", self._phase)
  return self._trace and self._trace.span_id or nil
end
function Req:parent_span_id()
  check("parent_span_id", self._phase)
  return self._trace and self._trace.parent_span_id or nil
end
function Req:trace_sampled()
  check("trace_sampled", self._phase)
  if not self._trace then return nil end
  return self._trace.sampled and true or false
end

local VARS = {
  client_ip = function(r) return r._client_ip end,
  peer_ip = function(r) return r._peer_ip end, -- #14
  realip_remote_addr = function(r) return r._peer_ip end,
  host = function(r) return Req.host(r) end,
  method = function(r) return r._method end,
  path = function(r) return r._path end,
  uri = function(r) return Req.uri(r) end,
  scheme = function(r) return r._scheme end,
  request_id = function(r) return r.ctx.request_id end,
  upstream = function(r) return r._upstream end,
  status = function(r) return r._status and tostring(r._status) end, -- a string, like every variable
  ssl_protocol = function(r) return r._tls and r._tls.protocol end,
  ssl_cipher = function(r) return r._tls and r._tls.cipher end,
  ssl_server_name = function(r) return r._tls and r._tls.sni and lower(r._tls.sni) end,
}

function Req:var(name)
  check("var", self._phase)
  local f = VARS[name]
  if f == nil then return nil end
  return (f(self)) -- exactly one value, like the engine
end

function Req:set_header(name, value)
  check("set_header", self._phase)
  check_name("set_header", name)
  local lname = lower(name)
  h_remove(self._headers, lname)
  if value ~= nil then h_add(self._headers, "set_header", name, value) end
end

function Req:add_header(name, value)
  check("add_header", self._phase)
  check_name("add_header", name)
  if value == nil then phases.raise(argerror("add_header", "value must not be nil", "nil"), 2) end
  h_add(self._headers, "add_header", name, value)
end

function Req:clear_header(name)
  check("clear_header", self._phase)
  check_name("clear_header", name)
  h_remove(self._headers, lower(name))
end

-- Replaces the whole request target, like the engine: "/p" sends no query, "/p?x=1" sends
-- that one. To keep the query, append it (see req:uri()).
function Req:set_path(uri)
  check("set_path", self._phase)
  if type(uri) ~= "string" or sub(uri, 1, 1) ~= "/" then
    phases.raise(argerror("set_path", "path must be a string starting with /",
      type(uri) == "string" and format("%q", uri) or type(uri)), 2)
  end
  if find(uri, "[%z\1-\32\127]") then
    phases.raise(format("req:set_path(%q): must start with / and hold no spaces or controls", uri), 2)
  end
  self._path, self._query = split_uri(uri)
end

-- The query sent upstream ("" removes it); the path stays.
function Req:set_query(q)
  check("set_query", self._phase)
  if type(q) ~= "string" then phases.raise("req:set_query(): expected a string", 2) end
  if find(q, "[%z\1-\32\127#]") then
    phases.raise(format("req:set_query(%q): must hold no spaces, controls or #", q), 2)
  end
  self._query = q ~= "" and q or nil
end

function Req:set_upstream(name)
  check("set_upstream", self._phase)
  if type(name) ~= "string" then
    phases.raise(argerror("set_upstream", "name must be a string", type(name)), 2)
  end
  if self._known and not self._known[name] then
    phases.raise(format("req:set_upstream(): no upstream named %q", name), 2)
  end
  self._upstream = name
  self._target = nil
end

-- An IP address (names would need DNS, which the engine does not do here), like the engine.
local function is_ip(host)
  local a, b, c, d = string.match(host, "^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  if a then
    return tonumber(a) < 256 and tonumber(b) < 256 and tonumber(c) < 256 and tonumber(d) < 256
  end
  return find(host, ":", 1, true) ~= nil and find(host, "^[%x:%.]+$") ~= nil
end

function Req:set_target(host, port)
  check("set_target", self._phase)
  port = tonumber(port)
  if type(host) ~= "string" or not is_ip(host) or not port or port % 1 ~= 0 or port < 1
     or port > 65535 then
    phases.raise(format("req:set_target(%s, %s): expected an IP address and a port", tostring(host),
      tostring(port)), 2)
  end
  self._target = (find(host, ":", 1, true) and "[" .. host .. "]" or host) .. ":" .. port
end

-- The engine's hash policy would use this key; the double records it.
-- The response cache (plugins/cache.lua): what plugins tell it about this request.
function Req:set_cache_key(key)
  check("set_cache_key", self._phase)
  if type(key) ~= "string" or key == "" then phases.raise("req:set_cache_key(): expected a string", 2) end
  self._cache_key = key
end

function Req:cache_bypass() check("cache_bypass", self._phase); self._cache_bypass = true end
function Req:cache_no_store() check("cache_no_store", self._phase); self._cache_no_store = true end

function Req:cache_ttl(seconds) -- as lua/luaproxy/request.lua's: 2^31 at most, finite
  check("cache_ttl", self._phase)
  if type(seconds) ~= "number" or not (seconds >= 0 and seconds < 1 / 0) then
    phases.raise("req:cache_ttl(): expected seconds (a finite number >= 0)", 2)
  end
  self._cache_ttl = seconds > 2147483648 and 2147483648 or seconds
end

function Req:cache_options()
  check("cache_options", self._phase)
  return { key = self._cache_key, bypass = self._cache_bypass or false,
           no_store = self._cache_no_store or false, ttl = self._cache_ttl }
end

function Req:set_hash_key(key)
  check("set_hash_key", self._phase)
  if type(key) ~= "string" then phases.raise("req:set_hash_key(): expected a string", 2) end
  self._hash_key = key
end

-- The engine would check the body against this limit when the request phase ends; the
-- double records it (res.max_body_size).
function Req:set_max_body_size(n)
  check("set_max_body_size", self._phase)
  if type(n) ~= "number" or n < 0 or n ~= n or n % 1 ~= 0 then
    phases.raise("req:set_max_body_size(): expected a whole number of bytes >= 0", 2)
  end
  self._max_body_size = n
end

-- req:log_field(): the double keeps the fields (the engine's limits; log.max_fields from
-- spec.max_log_fields, default 16); the test reads them with req:log_fields().
local log_field = require "luaproxy.log_field"
function Req:log_field(name, value)
  check("log_field", self._phase)
  local kind, text = log_field.encode(name, value)
  local f = self._log_fields
  if not f then f = { order = {}, values = {}, bytes = 0 }; self._log_fields = f end
  local old = f.values[name]
  if kind == log_field.UNSET then
    if old ~= nil then
      f.values[name] = nil
      f.bytes = f.bytes - (4 + #name + #old[2])
      for i, n in ipairs(f.order) do if n == name then table.remove(f.order, i) break end end
    end
    return true
  end
  if #text > log_field.VALUE_MAX then return nil, log_field.ETOOLONG end
  if old == nil and #f.order >= (self._max_log_fields or log_field.MAX_FIELDS) then
    return nil, log_field.ETOOMANY .. " or " .. log_field.ENOROOM
  end
  local bytes = f.bytes - (old and 4 + #name + #old[2] or 0) + 4 + #name + #text
  if bytes > log_field.BYTES_MAX then return nil, log_field.ETOOMANY .. " or " .. log_field.ENOROOM end
  if old == nil then f.order[#f.order + 1] = name end
  f.values[name] = { kind, text, value }
  f.bytes = bytes
  return true
end

-- Test side: the fields set so far, name -> value as given (numbers stay numbers).
function Req:log_fields()
  local out = {}
  local f = self._log_fields
  if f then for _, n in ipairs(f.order) do out[n] = f.values[n][3] end end
  return out
end

-- Why the previous try failed (kind, status, address), nil on the first try.
function Req:last_failure()
  check("last_failure", self._phase)
  local f = self._last_failure
  if not f then return nil end
  return f[1], f[2], f[3]
end

function Req:body(max_bytes)
  check("body", self._phase)
  max_bytes = tonumber(max_bytes)
  if not max_bytes or not (max_bytes >= 0 and max_bytes <= 2 ^ 53) then
    phases.raise("req:body(): expected a maximum size in bytes (0 to 2^53)", 2)
  end
  if #self._body > max_bytes then return nil, "too large" end
  return self._body
end

-- Request body copy and replacement, as the engine's (engine/req_body.c): the double has
-- the whole body at once, so the copy is the body when it fits (spec.body_incomplete = true
-- plays a client that went away before its body ended).
function Req:tee_body(max_bytes)
  check("tee_body", self._phase)
  max_bytes = tonumber(max_bytes)
  if not max_bytes or not (max_bytes >= 1 and max_bytes <= 2 ^ 53) then
    phases.raise("req:tee_body(): expected a maximum size in bytes (1 to 2^53)", 2)
  end
  if self._tee_max == nil then self._tee_max = max_bytes end
end

function Req:teed_body()
  check("teed_body", self._phase)
  if not self._tee_max then return nil, "not asked" end
  if #self._body > self._tee_max then return nil, "too large" end
  if self._body_incomplete then return nil, "incomplete" end
  return self._body
end

-- Trailer fields (spec.trailers of T.request: the client's; of T.response: the
-- upstream's), as tables like req:headers(). The engine has the upstream's only from the
-- body's end on (response_body's eof call, log); the double gives them in every phase
-- that may ask.
function Req:trailers()
  check("trailers", self._phase)
  return h_table(self._trailers)
end

function Req:resp_trailers()
  check("resp_trailers", self._phase)
  return h_table(self._resp_trailers)
end

-- Records the body sent upstream (res.request_body); the client's body is unchanged.
function Req:set_body(body)
  check("set_body", self._phase)
  if type(body) ~= "string" then phases.raise("req:set_body(): expected a string", 2) end
  self._new_body = body
end

-- Ends the running phase like the engine: yield a marker the runner never resumes.
local function finish(req, method)
  if running == nil or co_running() ~= running then
    phases.raise("req:" .. method .. "() ends the phase: run the phase with proxy.test's T.run, "
      .. "T.call or T.phase, not as a plain function call", 3)
  end
  req._responded = true
  co_yield(RESPONDED)
end

local function set_local(req, method, status, body, headers)
  req._compress = nil -- a new answer: its own decision, as lp__resp_begin
  req._length_unknown = nil
  req._status = status
  req._resp_body = body ~= nil and tostring(body) or ""
  req._resp_headers = h_from_spec(headers, method)
  req._upstream_addr = nil
end

function Req:respond(status, body, headers)
  check("respond", self._phase)
  check_status("respond", status, 200)
  if headers ~= nil and type(headers) ~= "table" then
    phases.raise(argerror("respond", "headers must be a table or nil", type(headers)), 2)
  end
  set_local(self, "respond", status, body, headers)
  finish(self, "respond")
end

local REDIRECT = { [301] = true, [302] = true, [303] = true, [307] = true, [308] = true }

function Req:redirect(url, status)
  check("redirect", self._phase)
  if type(url) ~= "string" or url == "" then
    phases.raise(argerror("redirect", "url must be a non-empty string", type(url)), 2)
  end
  status = status or 302
  if not REDIRECT[status] then
    phases.raise(argerror("redirect", "status must be 301, 302, 303, 307 or 308", tostring(status)), 2)
  end
  set_local(self, "redirect", status, nil, { Location = url })
  finish(self, "redirect")
end

function Req:status() check("status", self._phase); return self._status end

function Req:set_status(code)
  check("set_status", self._phase)
  check_status("set_status", code)
  self._status = code
end

function Req:resp_header(name)
  check("resp_header", self._phase)
  if type(name) ~= "string" then
    phases.raise(argerror("resp_header", "name must be a string", type(name)), 2)
  end
  return h_find(self._resp_headers, lower(name))
end

function Req:resp_headers()
  check("resp_headers", self._phase)
  return h_table(self._resp_headers)
end

function Req:set_resp_header(name, value)
  check("set_resp_header", self._phase)
  check_name("set_resp_header", name)
  h_remove(self._resp_headers, lower(name))
  if value ~= nil then h_add(self._resp_headers, "set_resp_header", name, value) end
end

function Req:add_resp_header(name, value)
  check("add_resp_header", self._phase)
  check_name("add_resp_header", name)
  if value == nil then phases.raise(argerror("add_resp_header", "value must not be nil", "nil"), 2) end
  h_add(self._resp_headers, "add_resp_header", name, value)
end

function Req:clear_resp_header(name)
  check("clear_resp_header", self._phase)
  check_name("clear_resp_header", name)
  h_remove(self._resp_headers, lower(name))
end

function Req:upstream_addr() check("upstream_addr", self._phase); return self._upstream_addr end

-- req:compress(): the same checks as the engine; the double does not compress, it records
-- the decision (T.run's result `compress = { coding =, level = }`). The body's length is
-- known unless the response spec says `length_unknown = true` (chunked from the upstream).
local ZIP_LEVELS = { gzip = { 1, 9, 6 }, br = { 0, 11, 4 } }
function Req:compress(coding, level, min_length)
  check("compress", self._phase)
  local lv = ZIP_LEVELS[coding]
  if not lv then phases.raise('req:compress(): coding must be "gzip" or "br"', 2) end
  if level == nil then level = lv[3] end
  if type(level) ~= "number" or level % 1 ~= 0 or level < lv[1] or level > lv[2] then
    phases.raise(format("req:compress(): %s level must be a whole number from %d to %d", coding,
      lv[1], lv[2]), 2)
  end
  min_length = min_length or 0
  if type(min_length) ~= "number" or not (min_length >= 0) then
    phases.raise("req:compress(): min_length must be a number of bytes (0 or more)", 2)
  end
  if not self._length_unknown and #(self._resp_body or "") < min_length then
    self._compress = nil
    return false
  end
  self._compress = { coding = coding, level = level }
  return true
end

T.Req = Req

------------------------------------------------------------------------------------------
-- Simulated upstream answer
------------------------------------------------------------------------------------------

-- Gives `req` the upstream's answer and moves it to the response phase. `spec`:
--   status = 200, headers = { Name = "v" or list }, body = "" (string or list of chunks),
--   length_unknown = true (the upstream sent no Content-Length: req:compress() ignores
--   its min_length),
--   addr = "127.0.0.1:9000" (req:upstream_addr(); the target when one was set),
--   trailers = { ["grpc-status"] = "0" } (req:resp_trailers()).
function T.response(req, spec)
  spec = spec or {}
  local status = spec.status or 200
  check_status("response", status)
  req._status = status
  req._resp_headers = h_from_spec(spec.headers, "response")
  req._resp_trailers = h_from_spec(spec.trailers, "response")
  local body = spec.body or ""
  if type(body) == "table" then body = concat(body) end
  req._resp_body = body
  req._resp_chunks = type(spec.body) == "table" and spec.body or nil
  req._length_unknown = spec.length_unknown or nil
  req._compress = nil
  req._upstream_addr = spec.addr or req._target or "127.0.0.1:9000"
  req._phase = "response"
  return req
end

------------------------------------------------------------------------------------------
-- Running phases
------------------------------------------------------------------------------------------

-- Runs fn(...) in a coroutine like the engine runs a phase. Returns true when the function
-- answered locally (req:respond / req:redirect), else false and its first return value.
-- Errors propagate unchanged.
function T.call(fn, ...)
  local co = co_create(fn)
  local prev = running
  running = co
  local ok, ret = resume_task(co, ...)
  while true do
    if not ok then
      running = prev
      error(ret, 0)
    end
    if co_status(co) == "dead" then
      running = prev
      T.run_spawned()
      return false, ret
    end
    if ret == RESPONDED then
      running = prev
      T.run_spawned()
      return true
    end
    -- Any other yield (proxy.sleep, a library's own I/O wait) resumes at once.
    ok, ret = resume_task(co)
  end
end

-- Runs a response_body filter as the engine does: in the request's coroutine, so it may
-- wait (proxy.sleep, a client call) like any phase; it returns the chunk to send.
local function call_filter(fn, ...)
  return T.call(fn, ...)
end

-- Ends `req` as the engine ends a request: its handle raises on every later call.
function T.finish(req)
  req._phase = phases.ENDED_PHASE
  tcp.finish(req) -- its sockets close
  return req
end

-- Validated (and compiled, when the plugin has compile()) conf for `plugin`: what the
-- runtime hands its phase functions. Raises with the schema error.
function T.conf(plugin, overrides, path)
  path = path or "plugins[1](" .. tostring(plugin.name) .. ")"
  local ok, err = schema.check_plugin(plugin)
  if not ok then phases.raise(err, 2) end
  local conf
  conf, err = schema.validate(plugin.schema or { fields = {} }, overrides, path)
  if not conf then phases.raise(err, 2) end
  if plugin.compile then
    -- warnings of the config load (the engine logs them once, at the config check)
    local compiled, cerr = plugin.compile(conf, path, function(text)
      T.config_warnings[#T.config_warnings + 1] = text
    end)
    if compiled == nil then phases.raise(path .. ": " .. tostring(cerr), 2) end
    conf = compiled
  end
  return conf
end

-- Runs one phase function of `plugin` on `req` after moving it to `phase`.
-- response_body takes (chunk, eof) after conf. Returns like T.call.
function T.phase(plugin, phase, req, conf, chunk, eof)
  local fn = plugin[phase]
  if fn == nil then phases.raise("plugin " .. tostring(plugin.name) .. " has no " .. phase .. " phase", 2) end
  local prev_tag = log_tag
  log_tag = plugin.name
  local prev_owner = tcp_owner
  if phase == "init_worker" then
    tcp_owner = INIT_OWNER
    local ok, r1, r2 = pcall(T.call, fn, conf)
    tcp.finish(INIT_OWNER) -- what init_worker opened closes when it returns
    tcp_owner, log_tag = prev_owner, prev_tag
    if not ok then error(r1, 0) end
    return r1, r2
  end
  tcp_owner = req
  req:set_phase(phase)
  local r1, r2
  phases.current_fn = fn -- API errors from a tail call name it (phases.raise)
  local ok
  if phase == "response_body" then
    ok, r1, r2 = pcall(call_filter, fn, req, chunk, eof, conf)
  else
    ok, r1, r2 = pcall(T.call, fn, req, conf)
  end
  log_tag = prev_tag
  tcp_owner = prev_owner
  phases.current_fn = nil
  if not ok then error(r1, 0) end
  return r1, r2
end

local function is_req(x) return getmetatable(x) == Req end

-- Splits a body string into chunks of `size` bytes (one chunk when size is nil).
local function chunks_of(body, size)
  if size == nil or #body <= size then return { body } end
  local out = {}
  for i = 1, #body, size do out[#out + 1] = sub(body, i, i + size - 1) end
  return out
end

-- Whether entry e runs `phase`: the plugin defines it and its compiled conf does not skip
-- it (skip_phases, as the engine's runtime).
local function runs(e, phase)
  local skip = type(e.conf) == "table" and type(e.conf.skip_phases) == "table" and e.conf.skip_phases
  return e.plugin[phase] ~= nil and not (skip and skip[phase])
end

-- Runs a chain of plugins through a whole request like the engine:
--   entries = { { plugin, conf_overrides }, ... } (run by priority, higher first)
--   req_spec: a T.request spec or a request built by T.request
--   resp_spec: a T.response spec, plus chunk_size = N to split a string body
-- Returns { status, headers, body, upstream, target, path, uri, request_headers,
--           responded, ctx, req, logs }.
function T.run_chain(entries, req_spec, resp_spec)
  local list = {}
  for i, e in ipairs(entries) do
    local plugin = e[1] or e.plugin
    list[i] = { plugin = plugin, conf = T.conf(plugin, e[2] or e.conf,
      "plugins[" .. i .. "](" .. tostring(plugin.name) .. ")"), order = i }
  end
  sort(list, function(a, b)
    if a.plugin.priority ~= b.plugin.priority then return a.plugin.priority > b.plugin.priority end
    return a.order < b.order
  end)

  local first_log = #T.logs + 1
  -- init_worker once per plugin until T.reset(), as the engine runs it once per worker (a
  -- timer it starts must not be started again by every T.run).
  for _, e in ipairs(list) do
    if e.plugin.init_worker and not init_ran[e.plugin] then
      init_ran[e.plugin] = true
      T.phase(e.plugin, "init_worker", nil, e.conf)
    end
  end

  local req = is_req(req_spec) and req_spec or T.request(req_spec)
  resp_spec = resp_spec or {}

  local responded = false
  for _, phase in ipairs({ "request", "upstream" }) do
    req:set_phase(phase)
    for _, e in ipairs(list) do
      if runs(e, phase) and T.phase(e.plugin, phase, req, e.conf) then
        responded = true
        break
      end
    end
    if responded then break end
    -- As the engine: a declared body over the request's limit is refused once the request
    -- phase is over (only the limit a plugin set is known here).
    local cl = phase == "request" and req._max_body_size and tonumber(req:header("Content-Length"))
    if cl and req._max_body_size > 0 and cl > req._max_body_size then
      set_local(req, "respond", 413, "request body too large\n", { ["Content-Type"] = "text/plain" })
      responded = true
      break
    end
  end

  local request_headers = h_table(req._headers)
  local chunks, upstream_body
  if responded then
    req._phase = "response"
    chunks = { req._resp_body }
  else
    T.response(req, resp_spec)
    upstream_body = req._resp_body
    chunks = req._resp_chunks or chunks_of(req._resp_body, resp_spec.chunk_size)
  end

  for _, e in ipairs(list) do
    if runs(e, "response") then T.phase(e.plugin, "response", req, e.conf) end
  end
  if req._cache_served and not responded then
    chunks = { req._resp_body } -- the cache answered from an entry instead (a 304, stale-if-error)
  elseif req._cache_window and upstream_body then
    -- Zone:window(): the client gets a slice of the body the entry stores whole.
    local w = req._cache_window
    chunks = { upstream_body:sub(w[1] + 1, w[1] + w[2]) }
  end

  local filters = {}
  for _, e in ipairs(list) do
    if runs(e, "response_body") then filters[#filters + 1] = e end
  end
  local out = {}
  for i = 1, #chunks do
    local chunk, eof = chunks[i], i == #chunks
    for _, e in ipairs(filters) do
      local _, ret = T.phase(e.plugin, "response_body", req, e.conf, chunk, eof)
      if ret ~= nil then chunk = tostring(ret) end
    end
    out[#out + 1] = chunk
  end

  -- The engine links a fill once the upstream's body is through; an answer from an entry
  -- drops it.
  if req._cache_served or upstream_body == nil then
    req._cache_fill = nil
    T.cache_release(req)
  else
    T.cache_finish(req, upstream_body)
  end

  for _, e in ipairs(list) do
    if runs(e, "log") then T.phase(e.plugin, "log", req, e.conf) end
  end

  local logs = {}
  for i = first_log, #T.logs do logs[#logs + 1] = T.logs[i] end
  local log_fields = req:log_fields()
  T.finish(req) -- like the engine: a handle kept past its request raises
  return {
    status = req._status,
    headers = h_table(req._resp_headers),
    body = concat(out),
    upstream = req._upstream,
    target = req._target,
    max_body_size = req._max_body_size,
    -- the body the upstream got: req:set_body()'s, else the client's
    request_body = req._new_body or req._body,
    path = req._path,
    uri = req._query and req._path .. "?" .. req._query or req._path,
    request_headers = request_headers,
    responded = responded,
    ctx = req.ctx,
    req = req,
    logs = logs,
    log_fields = log_fields,
    compress = req._compress, -- req:compress()'s decision: { coding =, level = } or nil
  }
end

-- Runs one plugin through a whole request; see T.run_chain.
function T.run(plugin, conf_overrides, req_spec, resp_spec)
  return T.run_chain({ { plugin, conf_overrides } }, req_spec, resp_spec)
end

-- proxy.shared: dicts a spec declares with T.shared_dicts{ name = "1m" } (sizes as the
-- config's `shared`), with the engine's semantics on the fake clock (proxy/test_shared.lua).
-- T.reset() empties them; T.shared_dicts() declares anew (undeclared names are nil).
local shared_reg = require("proxy.test_shared").registry(function() return clock end)
fake.shared = shared_reg.dicts
function T.shared_dicts(sizes) shared_reg.declare(sizes) end
local reset_without_dicts = T.reset
function T.reset()
  reset_without_dicts()
  shared_reg.reset()
end

-- proxy.cache: zones a spec declares with T.cache_zones{ name = {} } (proxy/test_cache.lua:
-- the engine's store as tables on the fake clock); T.cache_zone(name) shows one (entries,
-- counts, locks). T.reset() forgets them.
do
  local cache_reg = require("proxy.test_cache").registry(function() return clock end, {
    respond = function(req, status, headers, body)
      req._status = status
      req._resp_body = body
      req._resp_headers = {}
      for _, kv in ipairs(headers) do h_add(req._resp_headers, "respond", kv[1], kv[2]) end
      req._upstream_addr = nil
      req._cache_served = true
      if req._phase == "request" or req._phase == "upstream" then finish(req, "respond") end
    end,
    sleep = function(seconds) fake.sleep(seconds) end,
  })
  fake.cache = cache_reg.api
  T.cache_zones = cache_reg.declare
  T.cache_zone = cache_reg.zone
  T.cache_finish = cache_reg.finish
  T.cache_release = cache_reg.release
  local reset_without_cache = T.reset
  function T.reset()
    reset_without_cache()
    cache_reg.reset()
  end
end

-- proxy.http: answers a spec scripts with T.http_mock(url or pattern, answer); the calls
-- made are in T.http_requests (proxy/test_http.lua). T.reset() forgets both.
require("proxy.test_http").install(T, fake, fake.sleep)
do
  local reset_without_http = T.reset
  function T.reset()
    reset_without_http()
    T.http_reset()
  end
end

-- proxy.redis: the real client (luaproxy.redis) over the fake proxy.tcp, talking to fake
-- Redis servers a spec starts with T.redis_server{...} (proxy/test_redis.lua: T.tcp_peers
-- with an in-memory store); T.redis holds the scripted replies (status, error, raw,
-- null_array, hang, close). T.reset() forgets them with the other peers.
local redis_fake = require("proxy.test_redis").registry { now = function() return clock end }
fake.null = fake.null or fake.json.null
fake.redis = require("luaproxy.redis").api(fake.tcp)
T.redis_server = redis_fake.server
T.redis = redis_fake.replies

-- proxy.metrics: the engine's API (luaproxy/metrics.lua: the same checks, the same
-- objects) over Lua tables. Metrics are declared in init_worker and updated in phases
-- and timers, as in the engine. T.metric(name, labels) reads a value back (a histogram:
-- { count =, sum =, buckets = { [bound] = cumulative count, ... } }, bounds as declared
-- plus math.huge); T.metric_overflow(name) the updates that went to the overflow series
-- (past T.metrics_max_series label sets). T.reset() forgets every metric.
do
  local metrics = require "luaproxy.metrics"
  local byname, byid = {}, {}
  T.metrics_max_series = 1000
  local ZERO = { __index = function() return 0 end }
  local backend = {}
  function backend.new(kind, name, help, labels, bounds)
    local m = byname[name]
    local sig = kind .. "|" .. concat(labels, ",") .. "|" .. concat(bounds or {}, ",")
    if m then
      if m.sig ~= sig then
        return nil, "metric " .. name .. " is already declared with another type, labels or "
          .. "buckets (a metric keeps its declaration until a restart)"
      end
      return m.id
    end
    m = { id = #byid, name = name, kind = kind, labels = labels, bounds = bounds, sig = sig,
          cells = setmetatable({}, ZERO), series = {}, n = 0,
          max = #labels > 0 and T.metrics_max_series or 1 }
    byname[name], byid[#byid + 1] = m, m
    return m.id
  end
  function backend.cells(id) return byid[id + 1].cells end
  function backend.series(id, key)
    local m = byid[id + 1]
    local i = m.series[key]
    if i then return i end
    if m.n >= m.max then return m.max end
    m.series[key], m.n = m.n, m.n + 1
    return m.n - 1
  end
  function backend.in_init() return tcp_owner == INIT_OWNER end
  function backend.max_series() return T.metrics_max_series end
  fake.metrics = metrics.api(backend)

  local function find(name)
    local m = byname[name]
    if not m then error("no metric named " .. tostring(name) .. " was declared", 3) end
    return m
  end
  function T.metric(name, labels)
    local m = find(name)
    local parts = {}
    for i, l in ipairs(m.labels) do
      local v = labels and labels[l]
      if v == nil then error(format("T.metric: %s needs a value for label %s", name, l), 2) end
      parts[i] = tostring(v)
    end
    local idx = m.series[concat(parts, "\0")]
    local cps = m.kind == "histogram" and #m.bounds + 2 or 1
    local off = idx and idx * cps
    if m.kind ~= "histogram" then return off and m.cells[off] or 0 end
    local out, cum = { buckets = {}, count = 0, sum = 0 }, 0
    for b = 0, #m.bounds do
      cum = cum + (off and m.cells[off + b] or 0)
      out.buckets[m.bounds[b + 1] or math.huge] = cum
    end
    out.count, out.sum = cum, off and m.cells[off + #m.bounds + 1] or 0
    return out
  end
  function T.metric_overflow(name)
    local m = find(name)
    local cps = m.kind == "histogram" and #m.bounds + 2 or 1
    return m.cells[(m.max + 1) * cps]
  end
  local reset_without_metrics = T.reset
  -- Values go back to 0; declarations stay, as in the engine (a metric lasts until a
  -- restart), so the handles a plugin keeps at module level stay valid from spec to spec.
  function T.reset()
    reset_without_metrics()
    for _, m in ipairs(byid) do
      for k in pairs(m.cells) do m.cells[k] = nil end
    end
    T.metrics_max_series = 1000
  end
end

return T
