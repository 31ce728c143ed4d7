-- The fake proxy.tcp() of the proxy.test double (lua/proxy/test.lua; docs/testing-plugins.md).
-- A spec scripts the peers:
--
--   local srv = T.tcp_peer("redis.test", 6379, function(peer)
--     local line = peer:receive("*l")          -- what the plugin sent
--     peer:send("+PONG\r\n")                   -- what it will receive
--   end)                                       -- returning closes the connection
--
-- Each connection runs the function in a coroutine of its own, resumed whenever the plugin
-- sends or waits for input. A receive the peer does not answer times out on the fake
-- clock (the socket's read timeout); a connect to an address no peer was given for is
-- refused. Semantics follow the engine (lua/luaproxy/tcp.lua): the same results and
-- errors, keep-alive pools keyed by opts.pool or "host:port", sockets owned by the
-- request (or init_worker) that made them and closed when it ends.
local phases = require "luaproxy.phases"

local type, tostring, tonumber, setmetatable, getmetatable, concat = type, tostring, tonumber,
  setmetatable, getmetatable, table.concat
local find, sub = string.find, string.sub
local co_create, co_resume, co_status, co_yield = coroutine.create, coroutine.resume,
  coroutine.status, coroutine.yield

local M = {}
local hooks -- from test.lua: advance(seconds), now(), owner(), yield()

local servers = {} -- "host:port" -> server
local pools = {}   -- key -> { conns (most recent last) }
local owned = {}   -- owner -> { sock = true }

local DEFAULT_MS = 60000

function M.init(h) hooks = h end

function M.reset()
  servers, pools, owned = {}, {}, {}
end

-- ---- peers ----

local Peer = {}
Peer.__index = Peer

-- peer:receive("*l" | "*a" | n): what the plugin sent; nil, "closed" (and what came) once
-- the plugin closed the connection.
function Peer:receive(pattern)
  local conn = self._conn
  while true do
    local buf = conn.to_peer
    if pattern == nil or pattern == "*l" then
      local i = find(buf, "\n", 1, true)
      if i then
        conn.to_peer = sub(buf, i + 1)
        local line = sub(buf, 1, i - 1)
        if sub(line, -1) == "\r" then line = sub(line, 1, -2) end
        return line
      end
    elseif pattern == "*a" then
      if conn.plugin_closed then
        conn.to_peer = ""
        return buf
      end
    else
      local n = tonumber(pattern)
      if #buf >= n then
        conn.to_peer = sub(buf, n + 1)
        return sub(buf, 1, n)
      end
    end
    if conn.plugin_closed then
      conn.to_peer = ""
      return nil, "closed", buf
    end
    co_yield()
  end
end

-- Queues data for the plugin to receive.
function Peer:send(data)
  local conn = self._conn
  if conn.peer_closed then return nil, "closed" end
  conn.to_plugin = conn.to_plugin .. tostring(data)
  return #data
end

-- The plugin sees the end of input after what was sent.
function Peer:close()
  self._conn.peer_closed = true
  return 1
end

-- T.tcp_peer(host, port, fn [, opts]): every connection to host:port (as the plugin names
-- them) runs fn(peer). fn may instead be a string: the error connect() returns ("timeout"
-- also moves the fake clock by the connect timeout). opts.tls_error: the error
-- sslhandshake returns. Returns the server: .connections (count), .sent (what the plugin
-- sent, one string per connection), .peers (the peer of each connection: .server_name,
-- .ssl_verify, .tls after a handshake).
function M.peer(host, port, fn, opts)
  if type(host) ~= "string" or not tonumber(port) then
    phases.raise("T.tcp_peer(host, port, fn): expected a host string and a port", 2)
  end
  if type(fn) ~= "function" and type(fn) ~= "string" then
    phases.raise("T.tcp_peer(host, port, fn): fn must be a function or an error string", 2)
  end
  local srv = { fn = fn, opts = opts or {}, connections = 0, sent = {}, peers = {} }
  servers[host .. ":" .. tonumber(port)] = srv
  return srv
end

-- Runs the peer until it waits for the plugin or ends (which closes the connection).
local function pump(conn)
  if conn.co and co_status(conn.co) == "suspended" then
    local ok, err = co_resume(conn.co, conn.peer)
    if not ok then error("proxy.test: tcp peer failed: " .. tostring(err), 0) end
    if co_status(conn.co) == "dead" then conn.peer_closed = true end
  end
end

-- ---- sockets ----

local Sock = {}
Sock.__index = Sock
local Session = { __tostring = function() return "proxy.test TLS session" end }

local function raise(msg) phases.raise(msg, 3) end

local function close_conn(conn)
  if conn and not conn.plugin_closed then
    conn.plugin_closed = true
    pump(conn) -- the peer sees the close
  end
end

-- A socket's use: nil when allowed, else the error.
local function check(self)
  if getmetatable(self) ~= Sock then
    phases.raise("sock: call its methods with a colon (sock:connect(...))", 3)
  end
  if self._ended then return "closed" end
  if self._owner ~= hooks.owner() then
    return "bad request (the socket belongs to another request or timer)"
  end
end

-- A wait, as the engine's: yields where the engine would (so a wait where it cannot,
-- inside a C call such as a gsub callback, fails here too).
local function wait()
  hooks.yield()
end

function M.tcp()
  local owner = hooks.owner()
  local s = setmetatable({ _owner = owner, _t = { DEFAULT_MS, DEFAULT_MS, DEFAULT_MS } }, Sock)
  local list = owned[owner or false] or {}
  owned[owner or false] = list
  list[s] = true
  return s
end

-- The request (or init_worker) `owner` ended: its sockets close.
function M.finish(owner)
  local list = owned[owner or false]
  if not list then return end
  owned[owner or false] = nil
  for s in pairs(list) do
    close_conn(s._conn)
    s._conn = nil
    s._ended = true
  end
end

local function ms_arg(what, v)
  if v == nil then return nil end
  local n = tonumber(v)
  if not n or n < 0 or n ~= n or n > 2 ^ 31 then
    phases.raise(what .. ": expected milliseconds (a number >= 0), got " .. tostring(v), 4)
  end
  return n > 0 and n or DEFAULT_MS
end

function Sock:settimeout(ms)
  local t = ms_arg("sock:settimeout()", ms)
  if t then self._t = { t, t, t } end
end

function Sock:settimeouts(c, s, r)
  local t = self._t
  t[1] = ms_arg("sock:settimeouts()", c) or t[1]
  t[2] = ms_arg("sock:settimeouts()", s) or t[2]
  t[3] = ms_arg("sock:settimeouts()", r) or t[3]
end

function Sock:connect(host, port, opts)
  local bad = check(self)
  if type(host) ~= "string" then
    raise("sock:connect(): expected a host string, got " .. type(host))
  end
  if type(port) == "table" and opts == nil then opts, port = port, nil end
  if host:sub(1, 5) == "unix:" then return nil, "unix domain sockets are not supported" end
  local p = tonumber(port)
  if not p or p % 1 ~= 0 or p < 1 or p > 65535 then
    raise("sock:connect(): expected a port from 1 to 65535, got " .. tostring(port))
  end
  if opts ~= nil and type(opts) ~= "table" then raise("sock:connect(): opts must be a table") end
  if opts and opts.pool ~= nil and type(opts.pool) ~= "string" then
    raise("sock:connect(): opts.pool must be a string")
  end
  if bad then return nil, bad end
  close_conn(self._conn)
  self._conn = nil
  local addr = host .. ":" .. p
  local key = opts and opts.pool or addr
  self._pool_size = opts and tonumber(opts.pool_size)
  local pool = pools[key]
  while pool and #pool > 0 do
    local conn = table.remove(pool)
    if conn.idle_until and hooks.now() > conn.idle_until or conn.peer_closed then
      close_conn(conn)
    else
      conn.reused = conn.reused + 1
      self._conn = conn
      return 1
    end
  end
  wait()
  local srv = servers[addr]
  if not srv then return nil, "connection refused" end
  if type(srv.fn) == "string" then
    if srv.fn == "timeout" then hooks.advance(self._t[1] / 1000) end
    return nil, srv.fn
  end
  srv.connections = srv.connections + 1
  local idx = srv.connections
  local conn = { to_peer = "", to_plugin = "", reused = 0, key = key, srv = srv, idx = idx }
  srv.sent[idx] = ""
  conn.peer = setmetatable({ _conn = conn }, Peer)
  srv.peers[idx] = conn.peer
  conn.co = co_create(srv.fn)
  self._conn = conn
  pump(conn) -- a greeting goes first
  return 1
end

function Sock:sslhandshake(reused_session, server_name, ssl_verify)
  local bad = check(self)
  if server_name ~= nil and type(server_name) ~= "string" then
    raise("sock:sslhandshake(): server_name must be a string")
  end
  if reused_session ~= nil and reused_session ~= false and getmetatable(reused_session) ~= Session then
    raise("sock:sslhandshake(): reused_session must be a session from an earlier sslhandshake")
  end
  if bad then return nil, bad end
  local conn = self._conn
  if not conn then return nil, "closed" end
  if not conn.tls then
    wait()
    local err = conn.srv.opts.tls_error
    if err then
      close_conn(conn)
      self._conn = nil
      return nil, err
    end
    conn.tls = true
    conn.peer.tls = true
    conn.peer.server_name = server_name
    conn.peer.ssl_verify = ssl_verify and true or false
  end
  if reused_session == false then return true end
  return setmetatable({}, Session)
end

local function flatten(data, out)
  for i = 1, #data do
    local v = data[i]
    local t = type(v)
    if t == "string" or t == "number" then
      out[#out + 1] = tostring(v)
    elseif t == "table" then
      flatten(v, out)
    else
      raise("sock:send(): a table to send may hold only strings, numbers and tables, got " .. t)
    end
  end
end

function Sock:send(data)
  local bad = check(self)
  local t = type(data)
  if t == "number" then
    data = tostring(data)
  elseif t == "table" then
    local parts = {}
    flatten(data, parts)
    data = concat(parts)
  elseif t ~= "string" then
    raise("sock:send(): expected a string, a number or an array of strings, got " .. t)
  end
  if bad then return nil, bad end
  local conn = self._conn
  if not conn then return nil, "closed" end
  if conn.peer_closed and co_status(conn.co) == "dead" then
    close_conn(conn)
    self._conn = nil
    return nil, "broken pipe"
  end
  conn.to_peer = conn.to_peer .. data
  conn.srv.sent[conn.idx] = conn.srv.sent[conn.idx] .. data
  pump(conn)
  return #data
end

-- What of conn.to_plugin satisfies (mode, n, pat, incl): data, bytes taken, more.
local function match(conn, mode, n, pat, incl)
  local buf = conn.to_plugin
  if mode == "bytes" then
    if #buf >= n then return sub(buf, 1, n), n end
  elseif mode == "line" then
    local i = find(buf, "\n", 1, true)
    if i then
      local line = sub(buf, 1, i - 1)
      if sub(line, -1) == "\r" then line = sub(line, 1, -2) end
      return line, i
    end
  elseif mode == "all" then
    if conn.peer_closed then return buf, #buf end
  else
    local i = find(buf, pat, 1, true)
    if i and (n == 0 or i - 1 <= n) then
      local take = i - 1 + #pat
      return incl and sub(buf, 1, take) or sub(buf, 1, i - 1), take
    elseif n > 0 then
      local safe = i and i - 1 or (#buf >= #pat and #buf - (#pat - 1) or 0)
      if safe >= n then return sub(buf, 1, n), n, true end
    end
  end
end

local function receive(self, mode, n, pat, incl)
  local bad = check(self)
  if bad then return nil, bad, "" end
  local conn = self._conn
  if not conn then return nil, "closed", "" end
  local waited = false
  while true do
    local data, take, more = match(conn, mode, n, pat, incl)
    if data then
      conn.to_plugin = sub(conn.to_plugin, take + 1)
      return data, nil, nil, more
    end
    local before = #conn.to_plugin
    local was_closed = conn.peer_closed
    if not waited then
      wait()
      waited = true
    end
    pump(conn)
    if #conn.to_plugin == before and conn.peer_closed == was_closed then
      local partial = conn.to_plugin
      conn.to_plugin = ""
      if conn.peer_closed then
        close_conn(conn)
        self._conn = nil
        return nil, "closed", partial
      end
      -- the peer waits for the plugin, which waits for the peer
      hooks.advance(self._t[3] / 1000)
      return nil, "timeout", partial
    end
  end
end

function Sock:receive(pattern)
  if pattern == nil or pattern == "*l" or pattern == "l" then return receive(self, "line", 0) end
  if pattern == "*a" or pattern == "a" then return receive(self, "all", 0) end
  local n = tonumber(pattern)
  if not n or n < 0 or n % 1 ~= 0 then
    raise("sock:receive(): expected a size, \"*l\" or \"*a\", got " .. tostring(pattern))
  end
  if n == 0 then return "" end
  return receive(self, "bytes", n)
end

function Sock:receiveuntil(pattern, opts)
  if type(pattern) ~= "string" or pattern == "" then
    raise("sock:receiveuntil(): expected a non-empty pattern string")
  end
  if opts ~= nil and type(opts) ~= "table" then raise("sock:receiveuntil(): opts must be a table") end
  local incl = opts and opts.inclusive and true or false
  local done = false
  return function(size)
    local n = 0
    if size ~= nil then
      n = tonumber(size)
      if not n or n < 0 or n % 1 ~= 0 then
        phases.raise("receiveuntil iterator: expected a size, got " .. tostring(size), 2)
      end
    end
    if done then
      done = false
      return nil, nil, nil
    end
    if size ~= nil and n == 0 then return "" end
    local data, err, partial, more = receive(self, "until", n, pattern, incl)
    if data and size ~= nil and not more then done = true end
    return data, err, partial
  end
end

function Sock:close()
  local bad = check(self)
  if bad then return nil, bad end
  if not self._conn then return nil, "closed" end
  close_conn(self._conn)
  self._conn = nil
  return 1
end

function Sock:setkeepalive(timeout, size)
  local bad = check(self)
  local t = timeout == nil and DEFAULT_MS or tonumber(timeout)
  if not t or t < 0 then raise("sock:setkeepalive(): expected milliseconds (a number >= 0)") end
  local n = size ~= nil and tonumber(size) or nil
  if size ~= nil and (not n or n < 1 or n % 1 ~= 0) then
    raise("sock:setkeepalive(): the pool size must be a whole number >= 1")
  end
  if bad then return nil, bad end
  local conn = self._conn
  if not conn then return nil, "closed" end
  if #conn.to_plugin > 0 then return nil, "unread data in buffer" end
  self._conn = nil
  if conn.peer_closed then
    close_conn(conn)
    return nil, "closed"
  end
  local max = n or self._pool_size or 30
  local pool = pools[conn.key] or {}
  pools[conn.key] = pool
  while #pool >= max do close_conn(table.remove(pool, 1)) end
  conn.idle_until = t > 0 and hooks.now() + t / 1000 or nil
  pool[#pool + 1] = conn
  return 1
end

function Sock:getreusedtimes()
  local bad = check(self)
  if bad then return nil, bad end
  if not self._conn then return nil, "closed" end
  return self._conn.reused
end

return M
