-- The request handle the engine gives plugins and handlers (docs/lua-api.md). Methods are
-- thin wrappers over the engine's FFI functions (engine/lua_api.c); nothing is copied
-- until asked for, and no table is built per call except by headers()/args().
local ffi = require "ffi"
local K = require "luaproxy.ffi"
local phases = require "luaproxy.phases"
local runtime = require "luaproxy.runtime"

local C = ffi.C
local ffi_string, ffi_cast = ffi.string, ffi.cast
local void_ptr = ffi.typeof("void *")
local type, tostring, tonumber, error, pairs, ipairs = type, tostring, tonumber, error, pairs, ipairs
local setmetatable, yield = setmetatable, phases.wait
local lower, format, gsub, char = string.lower, string.format, string.gsub, string.char

-- `return (f(x))` where f is a builtin or an FFI function, not `return f(x)`: a tail call
-- of a fast function ends a trace that began in the caller with "leaving loop in root
-- trace", and once blacklisted the method runs interpreted on every request.

-- Scratch out-parameters, one set per VM (a worker runs one Lua call at a time).
local s1 = ffi.new("lp_str_t[1]")
local s2 = ffi.new("lp_str_t[1]")

local allowed = phases.methods
local raise = phases.raise
local M = {}
local methods = {}
local mt = { __index = methods }

local function check(h, name)
  if not allowed[name][h._phase] then phases.check(name, h._phase) end
end

local function get(h, what)
  if C.lp_ffi_req_get(h._r, what, s1) ~= 0 then return nil end
  return (ffi_string(s1[0].base, s1[0].len))
end

local ERRORS = {
  [K.EINVAL] = "invalid name or value",
  [K.ENOSPACE] = "no room left for more headers",
  [K.EFRAMING] = "Content-Length and Transfer-Encoding belong to the engine",
}

local function header_value(v, what)
  local t = type(v)
  if t == "string" then return v end
  if t == "number" then return (tostring(v)) end
  raise(format("%s: expected a string value, got %s", what, t), 3)
end

local function set_header(h, resp, mode, name, value, what)
  if type(name) ~= "string" then raise(what .. ": expected a header name", 3) end
  local rc
  if mode == K.HCLEAR then
    rc = C.lp_ffi_header_set(h._r, resp, mode, name, #name, nil, 0)
  elseif type(value) == "table" then
    -- A list of values: every one is added (after clearing, for set).
    if mode == K.HSET then C.lp_ffi_header_set(h._r, resp, K.HCLEAR, name, #name, nil, 0) end
    for _, v in ipairs(value) do
      v = header_value(v, what)
      rc = C.lp_ffi_header_set(h._r, resp, K.HADD, name, #name, v, #v)
      if rc ~= 0 then break end
    end
    rc = rc or 0
  else
    value = header_value(value, what)
    rc = C.lp_ffi_header_set(h._r, resp, mode, name, #name, value, #value)
  end
  if rc ~= 0 then raise(format("%s(%q): %s", what, name, ERRORS[rc] or "failed"), 3) end
end

local function get_header(h, resp, name)
  if type(name) ~= "string" then raise("expected a header name", 3) end
  if C.lp_ffi_header_get(h._r, resp, name, #name, 0, s1) ~= 1 then return nil end
  return (ffi_string(s1[0].base, s1[0].len))
end

-- Adds one field to a headers()-like table: lower-case name -> value, a list when repeated.
local function add_field(out, name, value)
  local prev = out[name]
  if prev == nil then
    out[name] = value
  elseif type(prev) == "table" then
    prev[#prev + 1] = value
  else
    out[name] = { prev, value }
  end
end

local function all_headers(h, resp)
  local out = {}
  local n = C.lp_ffi_header_count(h._r, resp)
  for i = 0, n - 1 do
    if C.lp_ffi_header_at(h._r, resp, i, s1, s2) == 0 then
      add_field(out, lower(ffi_string(s1[0].base, s1[0].len)), ffi_string(s2[0].base, s2[0].len))
    end
  end
  return out
end

local function unescape(s)
  s = gsub(s, "+", " ")
  return (gsub(s, "%%(%x%x)", function(x) return char(tonumber(x, 16)) end))
end

local function parse_args(q)
  local out = {}
  if not q then return out end
  for pair in q:gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=(.*)$")
    if not k then k, v = pair, "" end
    k, v = unescape(k), unescape(v)
    local prev = out[k]
    if prev == nil then
      out[k] = v
    elseif type(prev) == "table" then
      prev[#prev + 1] = v
    else
      out[k] = { prev, v }
    end
  end
  return out
end

-- ---- the request ----

function methods.method(h) check(h, "method") return get(h, K.METHOD) end
function methods.path(h) check(h, "path") return get(h, K.PATH) end
function methods.uri(h) check(h, "uri") return get(h, K.URI) end
function methods.host(h) check(h, "host") return (lower(get(h, K.HOST) or "")) end
function methods.scheme(h) check(h, "scheme") return get(h, K.SCHEME) end
function methods.client_ip(h) check(h, "client_ip") return get(h, K.CLIENT_IP) end
-- #14: the TCP peer, whatever real_ip or a PROXY header made the client address.
function methods.peer_ip(h) check(h, "peer_ip") return get(h, K.PEER_IP) end
function methods.http_version(h) check(h, "http_version") return (tonumber(get(h, K.VERSION))) end
function methods.phase(h) check(h, "phase") return h._phase end
-- A capture of the config route (:name, *name, a named regex group); nil when none.
function methods.param(h, name)
  check(h, "param")
  if type(name) ~= "string" then raise("req:param(): expected a capture name", 2) end
  if C.lp_ffi_req_param(h._r, name, #name, s1) ~= 0 then return nil end
  return (ffi_string(s1[0].base, s1[0].len))
end
-- When the request's first byte arrived, in proxy.now()'s seconds.
function methods.start_time(h) check(h, "start_time") return (C.lp_ffi_start_time(h._r)) end

local function tls_get(h, what)
  if C.lp_ffi_tls_get(h._r, what, s1) ~= 0 then return nil end
  return (ffi_string(s1[0].base, s1[0].len))
end

-- The client connection's TLS facts, or nil on plain HTTP.
function methods.tls(h)
  check(h, "tls")
  local protocol = tls_get(h, K.TLS_PROTOCOL)
  if not protocol then return nil end
  local verified = tls_get(h, K.TLS_CLIENT_VERIFIED) == "1"
  return {
    protocol = protocol,
    cipher = tls_get(h, K.TLS_CIPHER),
    sni = tls_get(h, K.TLS_SNI),
    alpn = tls_get(h, K.TLS_ALPN),
    resumed = tls_get(h, K.TLS_RESUMED) == "1",
    client_verified = verified,
    client_subject = verified and tls_get(h, K.TLS_CLIENT_SUBJECT) or nil,
  }
end
function methods.upstream_name(h) check(h, "upstream_name") return get(h, K.UPSTREAM_NAME) end

function methods.args(h)
  check(h, "args")
  return parse_args(get(h, K.QUERY))
end

function methods.query(h, name)
  check(h, "query")
  if type(name) ~= "string" then raise("req:query(): expected an argument name", 2) end
  local v = parse_args(get(h, K.QUERY))[name]
  if type(v) == "table" then return v[1] end
  return v
end

function methods.header(h, name) check(h, "header") return get_header(h, 0, name) end
function methods.headers(h) check(h, "headers") return all_headers(h, 0) end
function methods.header_count(h)
  check(h, "header_count")
  return (tonumber(C.lp_ffi_header_count(h._r, 0)))
end
-- (a header name in lower case, kept per VM: the waf reads every header's name at every
-- request, and lower() makes and interns a string each time)
local low = require "luaproxy.lower"

-- The header lines in the order they came, into the caller's lists (names lower-case):
-- the count. No table is built, and the order is the request's, not a hash table's.
function methods.header_list(h, names, values)
  check(h, "header_list")
  local n, k = C.lp_ffi_header_count(h._r, 0), 0
  for i = 0, n - 1 do
    if C.lp_ffi_header_at(h._r, 0, i, s1, s2) == 0 then
      k = k + 1
      names[k] = low(ffi_string(s1[0].base, s1[0].len))
      values[k] = ffi_string(s2[0].base, s2[0].len)
    end
  end
  return k
end

function methods.set_header(h, name, value)
  check(h, "set_header")
  if value == nil then return set_header(h, 0, K.HCLEAR, name, nil, "req:set_header") end
  set_header(h, 0, K.HSET, name, value, "req:set_header")
end

function methods.add_header(h, name, value)
  check(h, "add_header")
  set_header(h, 0, K.HADD, name, value, "req:add_header")
end

function methods.clear_header(h, name)
  check(h, "clear_header")
  set_header(h, 0, K.HCLEAR, name, nil, "req:clear_header")
end

function methods.set_path(h, uri)
  check(h, "set_path")
  if type(uri) ~= "string" then raise("req:set_path(): expected a string", 2) end
  local rc = C.lp_ffi_set_path(h._r, uri, #uri)
  if rc ~= 0 then
    raise(format("req:set_path(%q): %s", uri,
      rc == K.EINVAL and "must start with / and hold no spaces or controls" or ERRORS[rc]), 2)
  end
end

function methods.set_upstream(h, name)
  check(h, "set_upstream")
  if type(name) ~= "string" or C.lp_ffi_set_upstream(h._r, name, #name) ~= 0 then
    raise(format("req:set_upstream(): no upstream named %q", tostring(name)), 2)
  end
end

function methods.set_target(h, host, port)
  check(h, "set_target")
  port = tonumber(port)
  if type(host) ~= "string" or not port or C.lp_ffi_set_target(h._r, host, #host, port) ~= 0 then
    raise(format("req:set_target(%s, %s): expected an IP address and a port",
      tostring(host), tostring(port)), 2)
  end
end

-- The key the `hash` balancing policy uses for this request (instead of its hash_on).
function methods.set_hash_key(h, key)
  check(h, "set_hash_key")
  if type(key) ~= "string" then raise("req:set_hash_key(): expected a string", 2) end
  if C.lp_ffi_set_hash_key(h._r, key, #key) ~= 0 then
    raise("req:set_hash_key(): no room left", 2)
  end
end

-- This request's body limit in bytes (0: none), instead of limits.max_body_size: lower or
-- higher, e.g. for an upload route. Request phase: the limit is checked as it ends.
function methods.set_max_body_size(h, n)
  check(h, "set_max_body_size")
  if type(n) ~= "number" or n < 0 or n ~= n or n % 1 ~= 0 then
    raise("req:set_max_body_size(): expected a whole number of bytes >= 0", 2)
  end
  C.lp_ffi_set_body_limit(h._r, n)
end

-- Why the last try failed, before the upstream phase runs again for a retry: kind
-- ("connect", "timeout", "reset", "status" or "protocol"), the upstream's status (for
-- "status", else nil) and the target's address; nil on the first try.
local status_out = ffi.new("int[1]")
function methods.last_failure(h)
  check(h, "last_failure")
  local kind = C.lp_ffi_last_failure(h._r, s1, status_out)
  if kind == 0 then return nil end
  local status = status_out[0]
  return K.FAILURES[kind] or "error", status > 0 and status or nil, ffi_string(s1[0].base, s1[0].len)
end

-- The whole request body (gathered before it goes upstream, which still gets all of it).
function methods.body(h, max_bytes)
  check(h, "body")
  max_bytes = tonumber(max_bytes)
  if not max_bytes or not (max_bytes >= 0 and max_bytes <= 2 ^ 53) then
    raise("req:body(): expected a maximum size in bytes (0 to 2^53)", 2)
  end
  local rc = C.lp_ffi_body_read(h._r, max_bytes, s1)
  if rc == K.EOTHER then
    raise("req:body(): this handle belongs to another request than the running phase's", 2)
  end
  if rc == 1 then
    yield() -- the engine resumes once the body is complete or too large
    rc = C.lp_ffi_body_read(h._r, max_bytes, s1)
  end
  if rc == 0 then return (ffi_string(s1[0].base, s1[0].len)) end
  return nil, "too large"
end

-- ---- request body copy and replacement (engine/req_body.c) ----

-- Keeps a copy of the body as it streams upstream (no waiting), up to max_bytes.
function methods.tee_body(h, max_bytes)
  check(h, "tee_body")
  max_bytes = tonumber(max_bytes)
  if not max_bytes or C.lp_ffi_body_tee(h._r, max_bytes) ~= 0 then
    raise("req:tee_body(): expected a maximum size in bytes (1 to 2^53)", 2)
  end
end

local TEE_WHY = { [K.TEE_NONE] = "not asked", [K.TEE_OVER] = "too large",
  [K.TEE_PARTIAL] = "incomplete", [K.TEE_FAIL] = "out of memory" }

-- The copy tee_body() kept: the body, or nil and why.
function methods.teed_body(h)
  check(h, "teed_body")
  local rc = C.lp_ffi_body_teed(h._r, s1)
  if rc == K.TEE_DONE then return (ffi_string(s1[0].base, s1[0].len)) end
  return nil, TEE_WHY[rc] or "not asked"
end

-- Sends body upstream in place of the client's (Content-Length from it; the client's bytes
-- are read and dropped).
function methods.set_body(h, body)
  check(h, "set_body")
  if type(body) ~= "string" then raise("req:set_body(): expected a string", 2) end
  local rc = C.lp_ffi_body_set(h._r, body, #body)
  if rc ~= 0 then
    raise(rc == K.EPHASE and "req:set_body(): the request already went upstream"
      or "req:set_body(): out of memory", 2)
  end
end

-- The query sent upstream, without "?" ("" removes it); the path (and strip_prefix) stays.
function methods.set_query(h, q)
  check(h, "set_query")
  if type(q) ~= "string" then raise("req:set_query(): expected a string", 2) end
  local rc = C.lp_ffi_set_query(h._r, q, #q)
  if rc ~= 0 then
    raise(format("req:set_query(%q): %s", q,
      rc == K.EINVAL and "must hold no spaces, controls or #" or "no room left"), 2)
  end
end

-- ---- local answers ----

function methods.respond(h, status, body, headers)
  check(h, "respond")
  status = tonumber(status)
  if not status or status < 200 or status > 999 or status % 1 ~= 0 then
    raise("req:respond(): expected a status from 200 to 999", 2)
  end
  if body ~= nil and type(body) ~= "string" then body = tostring(body) end
  if headers ~= nil and type(headers) ~= "table" then
    raise("req:respond(): headers must be a table of name = value", 2)
  end
  if C.lp_ffi_respond_begin(h._r) == K.EOTHER then
    raise("req:respond(): this handle belongs to another request than the running phase's", 2)
  end
  if headers then
    for name, value in pairs(headers) do
      set_header(h, 1, K.HADD, name, value, "req:respond")
    end
  end
  body = body or ""
  if C.lp_ffi_respond(h._r, status, body, #body) ~= 0 then
    raise("req:respond(): cannot store the answer", 2)
  end
  -- The engine never resumes this: the handler ends here.
  yield()
end

local REDIRECT = { [301] = true, [302] = true, [303] = true, [307] = true, [308] = true }

function methods.redirect(h, url, status)
  check(h, "redirect")
  status = status or 302
  if not REDIRECT[status] then raise("req:redirect(): status must be 301, 302, 303, 307 or 308", 2) end
  if type(url) ~= "string" or url == "" then raise("req:redirect(): expected a URL", 2) end
  return methods.respond(h, status, "", { Location = url })
end

-- ---- the response ----

-- req:log_field(name, value): a member of this request's JSON access log line
-- ($log_field_NAME in templates); nil removes it. true, or nil and a message past the limits.
local log_field = require "luaproxy.log_field"
function methods.log_field(h, name, value)
  check(h, "log_field")
  local kind, text = log_field.encode(name, value)
  local rc = C.lp_ffi_log_field(h._r, name, #name, kind, text, #text)
  if rc == 0 then return true end
  if rc == K.EINVAL then raise("req:log_field(): invalid name", 2) end
  if #text > log_field.VALUE_MAX then return nil, log_field.ETOOLONG end
  return nil, log_field.ETOOMANY .. " or " .. log_field.ENOROOM
end

function methods.status(h) check(h, "status") return (C.lp_ffi_status(h._r)) end

function methods.set_status(h, code)
  check(h, "set_status")
  code = tonumber(code)
  if not code or C.lp_ffi_set_status(h._r, code) ~= 0 then
    raise("req:set_status(): expected a status from 100 to 999", 2)
  end
end

function methods.resp_header(h, name) check(h, "resp_header") return get_header(h, 1, name) end
function methods.resp_headers(h) check(h, "resp_headers") return all_headers(h, 1) end

-- Trailer fields ("name: value\r\n" lines in the engine) as a table like headers():
-- lower-case name -> value, a list when repeated; empty when there are none (yet).
local function trailers(h, resp)
  C.lp_ffi_trailers(h._r, resp, s1)
  local out = {}
  if s1[0].len == 0 then return out end
  local text = ffi_string(s1[0].base, s1[0].len)
  for name, value in text:gmatch("([^:\r\n]+): ([^\r\n]*)\r\n") do
    add_field(out, lower(name), value)
  end
  return out
end

function methods.trailers(h) check(h, "trailers") return trailers(h, 0) end
function methods.resp_trailers(h) check(h, "resp_trailers") return trailers(h, 1) end

function methods.set_resp_header(h, name, value)
  check(h, "set_resp_header")
  if value == nil then return set_header(h, 1, K.HCLEAR, name, nil, "req:set_resp_header") end
  set_header(h, 1, K.HSET, name, value, "req:set_resp_header")
end

function methods.add_resp_header(h, name, value)
  check(h, "add_resp_header")
  set_header(h, 1, K.HADD, name, value, "req:add_resp_header")
end

function methods.clear_resp_header(h, name)
  check(h, "clear_resp_header")
  set_header(h, 1, K.HCLEAR, name, nil, "req:clear_resp_header")
end

function methods.upstream_addr(h) check(h, "upstream_addr") return get(h, K.UPSTREAM_ADDR) end

-- ---- compression (engine/compress.c; the compression plugin) ----
-- req:compress(coding, level, min_length): the body goes out compressed, after the
-- response_body filters. true when it will; false when the body is known (Content-Length,
-- a local answer) to be shorter than min_length. The caller sets Content-Encoding.
local ZIP_CODINGS = { gzip = 1, br = 2 }
local ZIP_LEVELS = { gzip = { 1, 9, 6 }, br = { 0, 11, 4 } }
function methods.compress(h, coding, level, min_length)
  check(h, "compress")
  local c = ZIP_CODINGS[coding]
  if not c then raise('req:compress(): coding must be "gzip" or "br"', 2) end
  local lv = ZIP_LEVELS[coding]
  if level == nil then level = lv[3] end
  if type(level) ~= "number" or level % 1 ~= 0 or level < lv[1] or level > lv[2] then
    raise(format("req:compress(): %s level must be a whole number from %d to %d", coding,
      lv[1], lv[2]), 2)
  end
  min_length = min_length or 0
  if type(min_length) ~= "number" or not (min_length >= 0) then
    raise("req:compress(): min_length must be a number of bytes (0 or more)", 2)
  end
  return C.lp_ffi_resp_compress(h._r, c, level, min_length) == 1
end

-- ---- trace context (engine/trace.c, docs/tracing.md) ----

local trace_buf = ffi.new("char[64]")
local band = require("bit").band

-- nil without a trace (tracing off).
function methods.trace_id(h)
  check(h, "trace_id")
  if C.lp_ffi_trace_ids(h._r, trace_buf) < 0 then return nil end
  return (ffi_string(trace_buf, 32))
end
function methods.span_id(h)
  check(h, "span_id")
  if C.lp_ffi_trace_ids(h._r, trace_buf) < 0 then return nil end
  return (ffi_string(trace_buf + 32, 16))
end
-- The client's span (an accepted traceparent), nil when the proxy started the trace.
function methods.parent_span_id(h)
  check(h, "parent_span_id")
  local bits = C.lp_ffi_trace_ids(h._r, trace_buf)
  if bits < 0 or band(bits, K.TRACE_PARENT) == 0 then return nil end
  return (ffi_string(trace_buf + 48, 16))
end
function methods.trace_sampled(h)
  check(h, "trace_sampled")
  local bits = C.lp_ffi_trace_ids(h._r, trace_buf)
  if bits < 0 then return nil end
  return band(bits, K.TRACE_SAMPLED) ~= 0
end

-- ---- variables ----

local VARS = {
  client_ip = function(h) return get(h, K.CLIENT_IP) end,
  peer_ip = function(h) return get(h, K.PEER_IP) end, -- #14
  realip_remote_addr = function(h) return get(h, K.PEER_IP) end, -- #14: nginx's name
  host = function(h) return (lower(get(h, K.HOST) or "")) end,
  method = function(h) return get(h, K.METHOD) end,
  path = function(h) return get(h, K.PATH) end,
  uri = function(h) return get(h, K.URI) end,
  scheme = function(h) return get(h, K.SCHEME) end,
  request_id = function(h) return h.ctx.request_id end,
  upstream = function(h) return get(h, K.UPSTREAM_NAME) end,
  status = function(h)
    local s = C.lp_ffi_status(h._r)
    if s > 0 then return (tostring(s)) end
  end,
  ssl_protocol = function(h) return tls_get(h, K.TLS_PROTOCOL) end,
  ssl_cipher = function(h) return tls_get(h, K.TLS_CIPHER) end,
  ssl_server_name = function(h)
    local n = tls_get(h, K.TLS_SNI)
    return n and lower(n)
  end,
}

function methods.var(h, name)
  check(h, "var")
  local f = VARS[name]
  -- Exactly one value (nil when unset), as documented: tostring(req:var(x)) must work.
  if f then return (f(h)) end
  return nil
end

-- ---- the engine's entry points ----

local function log_failure(inst, phase, err, h)
  -- The request's trace (docs/tracing.md), so the 500 is found from its trace.
  local trace = ""
  if h and h._r and C.lp_ffi_trace_ids(h._r, trace_buf) >= 0 then
    trace = " trace_id=" .. ffi_string(trace_buf, 32)
  end
  local msg = format("plugin %s (%s): %s phase failed%s%s: %s", inst.name, inst.where, phase,
    inst.fail_open and " (fail_open: request goes on)" or "", trace, tostring(err))
  C.lp_ffi_log(0, msg, #msg)
end

-- Called once per worker VM: returns the engine's entry points (engine/lua_task.c
-- push_entry) and the table of handles by task slot. A request's first phase (or filter)
-- comes in through `enter`, which makes its handle; later ones through `run`/`body`, which
-- find it by slot. Every entry is a resume of the request's coroutine: nothing else is
-- called from C per request, and the handle is made on the same (compiled) path.
function M.bind(state, cfg)
  runtime.set_failure_logger(log_failure)
  local proxy = require "proxy"
  proxy.config = cfg
  local routes, fallback = state.routes, state.fallback
  local handles = {} -- task slot -> its request's handle (lp_lua_release clears it)
  -- Inserting a key a table has no room for rehashes it (several hundred instructions, a
  -- third of a small plugin's request): the handle is made with the fields the runtime
  -- sets (`_k`), and ctx with room for a few entries (the auth plugins' consumer...).
  local ok, new_tab = pcall(require, "table.new")
  if not ok then new_tab = function() return {} end end
  local function new(r, route_no)
    local h = {
      -- A cdata pointer: FFI calls that take a lightuserdata are not compiled (NYI).
      _r = ffi_cast(void_ptr, r),
      _chain = route_no > 0 and routes[route_no] or fallback,
      _phase = "request",
      _k = 0, -- the plugin running (runtime.lua)
      ctx = new_tab(0, 4),
    }
    -- Not a tail call: a trace cannot end in a tail call to setmetatable (NYI).
    setmetatable(h, mt)
    return h
  end
  local run_phase, run_body = runtime.run, runtime.body
  local function run(slot, id, co) return run_phase(handles[slot], id, co) end
  local function body(slot, chunk, eof, co) return run_body(handles[slot], chunk, eof, co) end
  local function enter(r, route_no, slot, entry, a, b, c)
    handles[slot] = new(r, route_no)
    return entry(slot, a, b, c)
  end
  M.new = new -- the constructor alone (specs; route predicates, route_predicate.lua)
  M.handles = handles -- route_predicate.lua makes a route's handle before any phase
  return enter, run, body, handles
end

-- ---- the response cache (lua/luaproxy/cache.lua, plugins/cache.lua) ----
-- What plugins tell the cache about this request; the `cache` plugin reads it with
-- req:cache_options(). Kept on the handle (one table per request).

function methods.set_cache_key(h, key)
  check(h, "set_cache_key")
  if type(key) ~= "string" or key == "" then raise("req:set_cache_key(): expected a string", 2) end
  h._cache_key = key
end

function methods.cache_bypass(h)
  check(h, "cache_bypass")
  h._cache_bypass = true
end

function methods.cache_no_store(h)
  check(h, "cache_no_store")
  h._cache_no_store = true
end

-- A lifetime over 2^31 seconds is 2^31 (RFC 9111 §1.2.2's delta-seconds cap, as the cache
-- policy reads a response's max-age); an infinite one is refused (a stored TTL and the hit's
-- Cache-Status ttl= must stay numbers).
function methods.cache_ttl(h, seconds)
  check(h, "cache_ttl")
  if type(seconds) ~= "number" or not (seconds >= 0 and seconds < 1 / 0) then
    raise("req:cache_ttl(): expected seconds (a finite number >= 0)", 2)
  end
  h._cache_ttl = seconds > 2147483648 and 2147483648 or seconds
end

function methods.cache_options(h)
  check(h, "cache_options")
  return { key = h._cache_key, bypass = h._cache_bypass or false,
           no_store = h._cache_no_store or false, ttl = h._cache_ttl }
end

-- An answer whose body is the cache entry the request looked up (Zone:respond).
function M.cache_respond(h, status, wire, more, first, last, flags)
  local rc = C.lp_ffi_cache_respond(h._r, status, wire, #wire, more, #more, first, last, flags)
  if rc == K.EOTHER then
    raise("cache: this handle belongs to another request than the running phase's", 3)
  elseif rc ~= 0 then
    raise("cache: cannot answer from the entry: " .. (ERRORS[rc] or "failed"), 3)
  end
  if h._phase == "request" or h._phase == "upstream" then yield() end
end

M.methods = methods
return M
