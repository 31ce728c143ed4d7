-- Which request-handle methods each phase allows. The engine's handle (luaproxy.request)
-- and the test double (proxy.test) both check calls against this one table, so a plugin
-- that passes its specs fails the same way in the proxy.
local M = {}

-- Phases in the order they run for one request.
M.order = { "request", "upstream", "response", "response_body", "log" }

local REQ_READ = { request = true, upstream = true, response = true, response_body = true, log = true }
local REQ_WRITE = { request = true, upstream = true }
local RESP_READ = { response = true, response_body = true, log = true }
local RESP_WRITE = { response = true }

M.methods = {
  -- request, readable everywhere
  method = REQ_READ, path = REQ_READ, uri = REQ_READ, query = REQ_READ, args = REQ_READ,
  header = REQ_READ, headers = REQ_READ, header_count = REQ_READ, header_list = REQ_READ,
  host = REQ_READ,
  scheme = REQ_READ, client_ip = REQ_READ, peer_ip = REQ_READ, http_version = REQ_READ,
  var = REQ_READ, phase = REQ_READ,
  start_time = REQ_READ, param = REQ_READ,
  log_field = REQ_READ, -- adds to the access log line (any phase up to log)
  upstream_name = REQ_READ, tls = REQ_READ,
  -- request, changeable before it goes upstream
  set_header = REQ_WRITE, add_header = REQ_WRITE, clear_header = REQ_WRITE,
  set_path = REQ_WRITE, set_upstream = REQ_WRITE, set_target = REQ_WRITE,
  set_hash_key = REQ_WRITE,
  last_failure = { upstream = true, response = true }, -- response: why the proxy answered 502/504
  body = { request = true }, set_max_body_size = { request = true },
  -- local answers end the request: before the upstream answered
  respond = REQ_WRITE, redirect = REQ_WRITE,
  -- response
  status = RESP_READ, resp_header = RESP_READ, resp_headers = RESP_READ,
  set_status = RESP_WRITE, set_resp_header = RESP_WRITE, add_resp_header = RESP_WRITE,
  clear_resp_header = RESP_WRITE,
  upstream_addr = { response = true, response_body = true, log = true },
  -- the response cache (plugins/cache.lua): what plugins tell it about this request
  set_cache_key = REQ_WRITE, cache_bypass = REQ_WRITE,
  cache_no_store = RESP_WRITE, cache_ttl = RESP_WRITE, cache_options = REQ_READ,
  -- trace context (docs/tracing.md), readable everywhere
  trace_id = REQ_READ, span_id = REQ_READ, parent_span_id = REQ_READ, trace_sampled = REQ_READ,
  -- request body copy and replacement (engine/req_body.c)
  tee_body = { request = true }, teed_body = { log = true }, set_body = { request = true },
  set_query = REQ_WRITE,
  -- trailer fields (docs/lua-api.md): the client's once its body ended, the upstream's at
  -- the body's end (response_body's eof call) and in log
  trailers = { request = true, upstream = true, response = true, response_body = true,
    log = true },
  resp_trailers = { response_body = true, log = true },
  -- the response body goes out compressed (the compression plugin; engine/compress.c)
  compress = RESP_WRITE,
}

-- The variables req:var() knows (docs/lua-api.md); each gives one value: a string, or nil
-- when not known (yet).
M.vars = { "client_ip", "host", "method", "path", "uri", "scheme", "request_id", "upstream",
  "status", "ssl_protocol", "ssl_cipher", "ssl_server_name", "peer_ip", "realip_remote_addr" }

-- The phase of a handle whose request has ended: every later call raises M.ENDED.
M.ENDED_PHASE = "ended"
M.ENDED = "request handle used after the request ended (a handle is valid only during its "
  .. "own request: keep what you need from it, not the handle)"

-- Frames of the API's own Lua (skipped when naming the caller) and of the code that runs
-- phase functions (reaching one means the user's frame is gone).
local function api_frame(source)
  return source:find("luaproxy/request.lua", 1, true) or source:find("luaproxy/phases.lua", 1, true)
    or source:find("lua/proxy.lua", 1, true) or source:find("proxy/test.lua", 1, true)
    or source:find("luaproxy/tcp.lua", 1, true) or source:find("proxy/test_tcp.lua", 1, true)
end
local function runner_frame(source)
  return source:sub(1, 14) == "=runtime.chain" or source:find("luaproxy/runtime.lua", 1, true)
end

-- The phase function running now, when the test double says (raise); the engine's runtime
-- is asked otherwise.
M.current_fn = nil

-- error(msg, level) for API misuse that always names the user's file and line: the first
-- frame from `level` up that is not the API's own. A plugin that ends with
-- `return req:respond(...)` makes a tail call: its frame is gone, and what calls it is the
-- runtime. The message then names the phase function that made the call, where it is
-- defined.
function M.raise(msg, level)
  level = (level or 1) + 1
  while true do
    local info = debug.getinfo(level, "S")
    if not info or runner_frame(info.source) then break end
    if info.what ~= "C" and not api_frame(info.source) then error(msg, level) end
    level = level + 1
  end
  local fn = M.current_fn
  if not fn then
    local rt = package.loaded["luaproxy.runtime"]
    local inst = rt and rt.current
    fn = inst and rt.current_phase and inst[rt.current_phase]
  end
  local fi = type(fn) == "function" and debug.getinfo(fn, "S")
  if fi and fi.what ~= "C" then
    local src = fi.source:sub(1, 1) == "@" and fi.source:sub(2) or fi.short_src
    error(string.format("%s:%d: %s (in a tail call, `return req:...()`, from the function "
      .. "defined here)", src, fi.linedefined, msg), 0)
  end
  error(msg, 0)
end
local raise = M.raise

-- Yields the running phase, timer or thread to the engine, which resumes it when what it
-- waits for is done (every wait of the API goes through here). Which plugin runs
-- (runtime.current: what proxy.log tags lines with and raise names) is one per worker, and
-- other requests run meanwhile: it is put back on resume. A wait inside a C call that
-- cannot yield (a table.sort comparator, a string.gsub callback) raises at the caller.
local co_yield, isyieldable, co_running = coroutine.yield, coroutine.isyieldable,
  coroutine.running
function M.wait(...)
  if isyieldable and not isyieldable() then
    raise("cannot wait here: inside a call from C (a table.sort comparator, a string.gsub "
      .. "callback, a metamethod); wait outside it", 3)
  end
  local rt = package.loaded["luaproxy.runtime"]
  if not rt then return co_yield(...) end
  local task_co = rt.task_co
  if task_co and co_running() ~= task_co then
    -- A yield here would go to the plugin's own coroutine.resume, not to the engine: the
    -- wait would silently not happen.
    raise("cannot wait here: inside a coroutine of your own (coroutine.wrap/create); the "
      .. "engine resumes only the phase's, timer's or thread's own coroutine", 3)
  end
  local cur, ph = rt.current, rt.current_phase
  rt.current, rt.current_phase = nil, nil
  if rt.timed and task_co then
    -- The wait is not the plugin's cost (luaproxy_lua_plugin_seconds_total, runtime.lua).
    local t0 = rt.clock()
    local a, b = co_yield(...)
    rt.waited[task_co] = (rt.waited[task_co] or 0) + (rt.clock() - t0)
    rt.current, rt.current_phase, rt.task_co = cur, ph, task_co
    return a, b
  end
  local a, b = co_yield(...)
  rt.current, rt.current_phase, rt.task_co = cur, ph, task_co
  return a, b
end

-- Raises the error a plugin author sees when calling `name` in the wrong phase.
function M.check(name, phase)
  if phase == M.ENDED_PHASE then raise(M.ENDED, 3) end
  local allowed = M.methods[name]
  if not allowed then
    raise("req:" .. name .. "() does not exist", 3)
  end
  if not allowed[phase] then
    local list = {}
    for _, p in ipairs(M.order) do
      if allowed[p] then list[#list + 1] = p end
    end
    raise(string.format("req:%s() cannot be called in the %s phase (allowed: %s)",
      name, tostring(phase), table.concat(list, ", ")), 3)
  end
end

return M
