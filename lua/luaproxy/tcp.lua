-- proxy.tcp(): non-blocking TCP/TLS client sockets ("cosockets"), shaped like OpenResty's
-- ngx.socket.tcp. The engine (engine/cosock.c) owns the connection; an operation that must
-- wait parks the running task and returns PARKED: we yield, and once resumed make the same
-- call again, which finishes it or parks again.
--
-- Network conditions are returned as nil, "message" (never raised); wrong argument types
-- are raised with phases.raise, naming the caller's file and line.
local ffi = require "ffi"
require "luaproxy.ffi"
local phases = require "luaproxy.phases"
local C = ffi.C
local type, tonumber, tostring, setmetatable, getmetatable, concat = type, tonumber,
  tostring, setmetatable, getmetatable, table.concat
local yield = phases.wait
local ffi_string, ffi_gc = ffi.string, ffi.gc

local PARKED, MORE, EPHASE = 1, 2, -204
local RM_BYTES, RM_LINE, RM_ALL, RM_UNTIL, RM_ANY = 0, 1, 2, 3, 4

local M = {}

local Sock = {}
Sock.__index = Sock
-- A TLS session to resume (sslhandshake's first result): a table, so that nothing else
-- (another cdata) can be passed back as one.
local Session = { __tostring = function() return "proxy.tcp TLS session" end }

local str_out = ffi.new("lp_str_t[1]")

local function err_of(s)
  return ffi_string(C.lp_ffi_tcp_error(s))
end

local function raise(msg) phases.raise(msg, 3) end

-- An error code: EPHASE (no task to suspend here) is misuse.
local NO_WAIT = "proxy.tcp: cannot wait here (no request, timer or thread to suspend)"
local function failed(s, rc)
  if rc == EPHASE then phases.raise(NO_WAIT, 3) end
  return nil, err_of(s)
end

local function check_self(self, what)
  if getmetatable(self) ~= Sock then
    phases.raise("sock:" .. what .. "(): call it with a colon (sock:" .. what .. "(...))", 3)
  end
  return self._s
end

-- The trusted CA file for sslhandshake (lua.ssl_trusted_certificate); nil: the system store.
local function trusted_ca()
  local rt = package.loaded["luaproxy.runtime"]
  local conf = rt and rt.lua_conf
  local ca = conf and conf.ssl_trusted_certificate
  if type(ca) ~= "string" then return nil end
  if ca:sub(1, 1) ~= "/" and rt.config_dir then ca = rt.config_dir .. "/" .. ca end
  return ca
end

function M.tcp()
  local p = C.lp_ffi_tcp_new()
  if p == nil then
    phases.raise("proxy.tcp(): only inside a phase, a timer, a spawned thread or init_worker", 2)
  end
  return setmetatable({ _s = ffi_gc(p, C.lp_ffi_tcp_free) }, Sock)
end

local function ms_arg(what, v)
  if v == nil then return -1 end
  local n = tonumber(v)
  if not n or n < 0 or n ~= n or n > 2 ^ 31 then
    phases.raise(what .. ": expected milliseconds (a number >= 0), got " .. tostring(v), 4)
  end
  return n
end

function Sock:settimeout(ms)
  local s = check_self(self, "settimeout")
  local t = ms_arg("sock:settimeout()", ms)
  C.lp_ffi_tcp_timeouts(s, t, t, t)
end

function Sock:settimeouts(connect_ms, send_ms, read_ms)
  local s = check_self(self, "settimeouts")
  C.lp_ffi_tcp_timeouts(s, ms_arg("sock:settimeouts()", connect_ms),
    ms_arg("sock:settimeouts()", send_ms), ms_arg("sock:settimeouts()", read_ms))
end

function Sock:connect(host, port, opts)
  local s = check_self(self, "connect")
  if type(host) ~= "string" then
    raise("sock:connect(): expected a host string, got " .. type(host))
  end
  if type(port) == "table" and opts == nil then opts, port = port, nil end
  if host:sub(1, 5) == "unix:" then
    return nil, "unix domain sockets are not supported"
  end
  local p = tonumber(port)
  if not p or p % 1 ~= 0 or p < 1 or p > 65535 then
    raise("sock:connect(): expected a port from 1 to 65535, got " .. tostring(port))
  end
  local pool, pool_size = nil, 0
  if opts ~= nil then
    if type(opts) ~= "table" then raise("sock:connect(): opts must be a table") end
    pool = opts.pool
    if pool ~= nil and type(pool) ~= "string" then
      raise("sock:connect(): opts.pool must be a string")
    end
    if opts.pool_size ~= nil then
      pool_size = tonumber(opts.pool_size)
      if not pool_size or pool_size < 1 or pool_size % 1 ~= 0 or pool_size > 1e6 then
        raise("sock:connect(): opts.pool_size must be a whole number >= 1")
      end
    end
  end
  local rc = C.lp_ffi_tcp_connect(s, host, #host, p, pool, pool and #pool or 0, pool_size)
  while rc == PARKED do
    yield()
    rc = C.lp_ffi_tcp_connect(s, host, #host, p, pool, pool and #pool or 0, pool_size)
  end
  if rc < 0 then return failed(s, rc) end
  return 1
end

function Sock:sslhandshake(reused_session, server_name, ssl_verify)
  local s = check_self(self, "sslhandshake")
  if server_name ~= nil and type(server_name) ~= "string" then
    raise("sock:sslhandshake(): server_name must be a string")
  end
  local session = nil
  if reused_session ~= nil and reused_session ~= false then
    if getmetatable(reused_session) ~= Session then
      raise("sock:sslhandshake(): reused_session must be a session from an earlier sslhandshake")
    end
    session = reused_session._p
  end
  local verify = ssl_verify and 1 or 0
  local ca = trusted_ca()
  local name, nlen = server_name, server_name and #server_name or 0
  local rc = C.lp_ffi_tcp_sslhandshake(s, session, name, nlen, verify, ca)
  while rc == PARKED do
    yield()
    rc = C.lp_ffi_tcp_sslhandshake(s, session, name, nlen, verify, ca)
  end
  if rc < 0 then return failed(s, rc) end
  if reused_session == false then return true end
  local sess = C.lp_ffi_tcp_session(s)
  if sess == nil then return true end
  return setmetatable({ _p = ffi_gc(sess, C.lp_ffi_tcp_session_free) }, Session)
end

local function flatten(data, out, n, depth)
  for i = 1, #data do
    local v = data[i]
    local t = type(v)
    if t == "string" then
      n = n + 1; out[n] = v
    elseif t == "number" then
      n = n + 1; out[n] = tostring(v)
    elseif t == "table" and depth < 16 then
      n = flatten(v, out, n, depth + 1)
    else
      raise("sock:send(): a table to send may hold only strings, numbers and tables, got "
        .. t)
    end
  end
  return n
end

function Sock:send(data)
  local s = check_self(self, "send")
  local t = type(data)
  if t == "number" then
    data = tostring(data)
  elseif t == "table" then
    local parts = {}
    flatten(data, parts, 0, 0)
    data = concat(parts)
  elseif t ~= "string" then
    raise("sock:send(): expected a string, a number or an array of strings, got " .. t)
  end
  local rc = C.lp_ffi_tcp_send(s, data, #data)
  while rc == PARKED do
    yield()
    rc = C.lp_ffi_tcp_send(s, data, #data)
  end
  if rc < 0 then return failed(s, rc) end
  return #data
end

-- One receive: data, or nil, err, partial. `more` (receiveuntil with a size) is true when
-- the pattern was not reached yet.
local function receive(s, mode, size, pat, incl)
  incl = incl or 0
  local plen = pat and #pat or 0
  local rc = C.lp_ffi_tcp_receive(s, mode, size, pat, plen, incl, str_out)
  while rc == PARKED do
    yield()
    rc = C.lp_ffi_tcp_receive(s, mode, size, pat, plen, incl, str_out)
  end
  local data = ffi_string(str_out[0].base, str_out[0].len)
  if rc == EPHASE then phases.raise(NO_WAIT, 3) end
  if rc < 0 then return nil, err_of(s), data end
  return data, nil, nil, rc == MORE
end

-- OpenResty's receive gives data, err, partial: not the internal "more" flag.
local function three(a, b, c) return a, b, c end

function Sock:receive(pattern)
  local s = check_self(self, "receive")
  if pattern == nil or pattern == "*l" or pattern == "l" then
    return three(receive(s, RM_LINE, 0))
  elseif pattern == "*a" or pattern == "a" then
    return three(receive(s, RM_ALL, 0))
  end
  local n = tonumber(pattern)
  if not n or n < 0 or n % 1 ~= 0 or n > 2 ^ 40 then
    raise("sock:receive(): expected a size, \"*l\" or \"*a\", got " .. tostring(pattern))
  end
  if n == 0 then return "" end
  return three(receive(s, RM_BYTES, n))
end

-- receiveany(max): the bytes that arrived (at least one, at most max), as OpenResty's.
function Sock:receiveany(max)
  local s = check_self(self, "receiveany")
  local n = tonumber(max)
  if not n or n < 1 or n % 1 ~= 0 or n > 2 ^ 40 then
    raise("sock:receiveany(): expected a size >= 1, got " .. tostring(max))
  end
  return three(receive(s, RM_ANY, n))
end

-- iterator([size]) -> data | nil, err, partial. With a size, it returns at most size bytes
-- at a time, and nil (no error) once the pattern was passed; the next call starts reading
-- up to the next occurrence.
function Sock:receiveuntil(pattern, opts)
  local s = check_self(self, "receiveuntil")
  if type(pattern) ~= "string" or pattern == "" then
    raise("sock:receiveuntil(): expected a non-empty pattern string")
  end
  if opts ~= nil and type(opts) ~= "table" then
    raise("sock:receiveuntil(): opts must be a table")
  end
  local incl = opts and opts.inclusive and 1 or 0
  local done = false
  return function(size)
    if size ~= nil then
      local n = tonumber(size)
      if not n or n < 0 or n % 1 ~= 0 then
        phases.raise("receiveuntil iterator: expected a size, got " .. tostring(size), 2)
      end
      if done then
        done = false
        return nil, nil, nil
      end
      if n == 0 then return "" end
      local data, err, partial, more = receive(s, RM_UNTIL, n, pattern, incl)
      if data and not more then done = true end
      return data, err, partial
    end
    if done then
      done = false
      return nil, nil, nil
    end
    local data, err, partial = receive(s, RM_UNTIL, 0, pattern, incl)
    return data, err, partial
  end
end

function Sock:close()
  local s = check_self(self, "close")
  if C.lp_ffi_tcp_close(s) < 0 then return nil, err_of(s) end
  return 1
end

function Sock:setkeepalive(timeout, size)
  local s = check_self(self, "setkeepalive")
  local t = timeout == nil and -1 or ms_arg("sock:setkeepalive()", timeout)
  local n = 0
  if size ~= nil then
    n = tonumber(size)
    if not n or n < 1 or n % 1 ~= 0 or n > 1e6 then
      raise("sock:setkeepalive(): the pool size must be a whole number >= 1")
    end
  end
  if C.lp_ffi_tcp_setkeepalive(s, t, n) < 0 then return nil, err_of(s) end
  return 1
end

function Sock:getreusedtimes()
  local s = check_self(self, "getreusedtimes")
  local n = C.lp_ffi_tcp_reused(s)
  if n < 0 then return nil, err_of(s) end
  return n
end

M.Sock = Sock
return M
