-- proxy.test's fake Redis: in-memory servers a spec starts with T.redis_server{...}, each a
-- peer of the fake proxy.tcp (proxy/test_tcp.lua, T.tcp_peer), so proxy.redis runs
-- unchanged over the double's sockets, with their pools, timeouts and lifetimes. The bytes
-- really go through RESP both ways: the server parses what the client encoded and encodes
-- its replies, which the client's parser reads, possibly in pieces (srv.chunk_size). See
-- docs/testing-plugins.md.
local cjson = require "cjson"
local null = cjson.null
local type, tostring, tonumber, pairs, ipairs, setmetatable, getmetatable =
  type, tostring, tonumber, pairs, ipairs, setmetatable, getmetatable
local sub, find, format, upper, lower, gsub = string.sub, string.find, string.format,
  string.upper, string.lower, string.gsub
local concat, remove, sort = table.concat, table.remove, table.sort
local floor = math.floor

local R = {}

------------------------------------------------------------------------------------------
-- Replies a spec can script (srv:reply(...), srv:on(...) handlers)
------------------------------------------------------------------------------------------
local Tag = {}
local function tagged(kind, v) return setmetatable({ kind = kind, v = v }, Tag) end

R.replies = {
  status = function(s) return tagged("status", s) end,     -- +OK
  error = function(s) return tagged("error", s) end,       -- -ERR ...
  raw = function(bytes, close) return tagged("raw", { bytes, close }) end, -- exact bytes, then maybe close
  null_array = tagged("null_array"),                       -- *-1
  hang = tagged("hang"),       -- never answer this (or any later) command: the client times out
  close = tagged("close"),     -- close the connection instead of answering
}
local S = R.replies

local function int_str(n) return format("%d", n) end

-- Encodes a reply value: string = bulk, number = integer, null = nil bulk, table = array,
-- tagged values as above. Returns the bytes, or nil and the tag for hang/close.
local function encode(v, out)
  local t = type(v)
  if t == "string" then
    out[#out + 1] = "$" .. #v .. "\r\n" .. v .. "\r\n"
  elseif t == "number" then
    out[#out + 1] = ":" .. int_str(v) .. "\r\n"
  elseif v == null or v == nil then
    out[#out + 1] = "$-1\r\n"
  elseif t == "boolean" then
    out[#out + 1] = v and ":1\r\n" or ":0\r\n"
  elseif getmetatable(v) == Tag then
    if v.kind == "status" then out[#out + 1] = "+" .. v.v .. "\r\n"
    elseif v.kind == "error" then out[#out + 1] = "-" .. v.v .. "\r\n"
    elseif v.kind == "raw" then out[#out + 1] = v.v[1]
    elseif v.kind == "null_array" then out[#out + 1] = "*-1\r\n"
    end
  elseif t == "table" then
    local n = v.n or #v
    out[#out + 1] = "*" .. n .. "\r\n"
    for i = 1, n do encode(v[i], out) end
  else
    error("proxy.test redis: cannot encode a reply of type " .. t, 3)
  end
  return out
end
R.encode = function(v) return concat(encode(v, {})) end

------------------------------------------------------------------------------------------
-- The in-memory store
------------------------------------------------------------------------------------------
local OK = S.status("OK")
local WRONGTYPE = S.error("WRONGTYPE Operation against a key holding the wrong kind of value")
local NOTINT = S.error("ERR value is not an integer or out of range")
local SYNTAX = S.error("ERR syntax error")

local function arity_err(name)
  return S.error(format("ERR wrong number of arguments for '%s' command", lower(name)))
end

local function toint(s)
  if not find(s, "^%-?%d+$") then return nil end
  return tonumber(s)
end

-- A glob (KEYS) as a Lua pattern: * ? and literal characters.
local function glob(p)
  return "^" .. gsub(p, "[%^%$%(%)%%%.%[%]%*%+%-%?]", function(c)
    if c == "*" then return ".*" end
    if c == "?" then return "." end
    return "%" .. c
  end) .. "$"
end

-- cmd(srv, conn, args) -> reply; args[1] is the command name as sent.
local CMD = {}
local ARITY = {} -- exact (positive) or minimum (negative) argument count, name included

local function def(name, arity, fn) CMD[name] = fn; ARITY[name] = arity end

local function db(srv, c) return srv:db(c.db) end

-- The live entry of `key`, or nil (expired entries go).
local function entry(srv, c, key)
  local d = db(srv, c)
  local e = d[key]
  if e and e.expires and e.expires <= srv.now() then
    d[key] = nil
    return nil
  end
  return e
end

local function typed(srv, c, key, kind, create)
  local e = entry(srv, c, key)
  if e == nil then
    if not create then return nil end
    e = { kind = kind, value = kind == "list" and {} or kind ~= "string" and {} or "" }
    db(srv, c)[key] = e
    return e
  end
  if e.kind ~= kind then return nil, WRONGTYPE end
  return e
end

def("PING", -1, function(_, _, a) if a[2] then return a[2] end return S.status("PONG") end)
def("ECHO", 2, function(_, _, a) return a[2] end)
def("QUIT", 1, function(_, c) c.quit = true; return OK end)
def("SELECT", 2, function(srv, c, a)
  local n = toint(a[2])
  if not n then return NOTINT end
  if n < 0 or n >= srv.databases then return S.error("ERR DB index is out of range") end
  c.db = n
  return OK
end)
def("AUTH", -2, function(srv, c, a)
  if #a > 3 then return SYNTAX end
  local user, pass = "default", a[2]
  if #a == 3 then user, pass = a[2], a[3] end
  if not srv.password then
    return S.error("ERR AUTH <password> called without any password configured for the default "
      .. "user. Are you sure your configuration is correct?")
  end
  if pass ~= srv.password or user ~= (srv.user or "default") then
    return S.error("WRONGPASS invalid username-password pair or user is disabled.")
  end
  c.authed = true
  return OK
end)
def("FLUSHDB", -1, function(srv, c) srv.dbs[c.db] = {}; return OK end)
def("FLUSHALL", -1, function(srv) srv.dbs = {}; return OK end)
def("DBSIZE", 1, function(srv, c)
  local n = 0
  for k in pairs(db(srv, c)) do if entry(srv, c, k) then n = n + 1 end end
  return n
end)
def("KEYS", 2, function(srv, c, a)
  local out, pat = {}, glob(a[2])
  for k in pairs(db(srv, c)) do
    if entry(srv, c, k) and find(k, pat) then out[#out + 1] = k end
  end
  sort(out)
  return out
end)

def("GET", 2, function(srv, c, a)
  local e, err = typed(srv, c, a[2], "string")
  if err then return err end
  return e and e.value or null
end)
def("SET", -3, function(srv, c, a)
  local key, value = a[2], a[3]
  local ttl, nx, xx, keepttl, get = nil, false, false, false, false
  local i = 4
  while i <= #a do
    local o = upper(a[i])
    if (o == "EX" or o == "PX") and a[i + 1] then
      local n = toint(a[i + 1])
      if not n then return NOTINT end
      if n <= 0 then return S.error("ERR invalid expire time in 'set' command") end
      ttl = o == "EX" and n or n / 1000
      i = i + 2
    elseif o == "NX" then nx = true; i = i + 1
    elseif o == "XX" then xx = true; i = i + 1
    elseif o == "KEEPTTL" then keepttl = true; i = i + 1
    elseif o == "GET" then get = true; i = i + 1
    else return SYNTAX end
  end
  local old, err = typed(srv, c, key, "string")
  if err and get then return err end
  local exists = entry(srv, c, key) ~= nil
  local prev = old and old.value or null
  if (nx and exists) or (xx and not exists) then return get and prev or null end
  local expires = ttl and srv.now() + ttl or (keepttl and old and old.expires) or nil
  db(srv, c)[key] = { kind = "string", value = value, expires = expires }
  if get then return prev end
  return OK
end)
def("SETEX", 4, function(srv, c, a)
  local n = toint(a[3])
  if not n then return NOTINT end
  db(srv, c)[a[2]] = { kind = "string", value = a[4], expires = srv.now() + n }
  return OK
end)
def("SETNX", 3, function(srv, c, a)
  if entry(srv, c, a[2]) then return 0 end
  db(srv, c)[a[2]] = { kind = "string", value = a[3] }
  return 1
end)
def("MGET", -2, function(srv, c, a)
  local out = { n = #a - 1 }
  for i = 2, #a do
    local e = entry(srv, c, a[i])
    out[i - 1] = (e and e.kind == "string") and e.value or null
  end
  return out
end)
def("MSET", -3, function(srv, c, a)
  if #a % 2 == 0 then return arity_err("mset") end
  for i = 2, #a, 2 do db(srv, c)[a[i]] = { kind = "string", value = a[i + 1] } end
  return OK
end)
def("DEL", -2, function(srv, c, a)
  local n = 0
  for i = 2, #a do
    if entry(srv, c, a[i]) then db(srv, c)[a[i]] = nil; n = n + 1 end
  end
  return n
end)
def("EXISTS", -2, function(srv, c, a)
  local n = 0
  for i = 2, #a do if entry(srv, c, a[i]) then n = n + 1 end end
  return n
end)

local function incr(srv, c, key, by)
  local e, err = typed(srv, c, key, "string")
  if err then return err end
  local cur = 0
  if e then
    cur = toint(e.value)
    if not cur then return NOTINT end
  end
  cur = cur + by
  if e then e.value = int_str(cur) else db(srv, c)[key] = { kind = "string", value = int_str(cur) } end
  return cur
end
def("INCR", 2, function(srv, c, a) return incr(srv, c, a[2], 1) end)
def("DECR", 2, function(srv, c, a) return incr(srv, c, a[2], -1) end)
def("INCRBY", 3, function(srv, c, a)
  local n = toint(a[3]); if not n then return NOTINT end
  return incr(srv, c, a[2], n)
end)
def("DECRBY", 3, function(srv, c, a)
  local n = toint(a[3]); if not n then return NOTINT end
  return incr(srv, c, a[2], -n)
end)

local function expire(srv, c, key, seconds)
  local e = entry(srv, c, key)
  if not e then return 0 end
  e.expires = srv.now() + seconds
  return 1
end
def("EXPIRE", 3, function(srv, c, a)
  local n = toint(a[3]); if not n then return NOTINT end
  return expire(srv, c, a[2], n)
end)
def("PEXPIRE", 3, function(srv, c, a)
  local n = toint(a[3]); if not n then return NOTINT end
  return expire(srv, c, a[2], n / 1000)
end)
def("PERSIST", 2, function(srv, c, a)
  local e = entry(srv, c, a[2])
  if not e or not e.expires then return 0 end
  e.expires = nil
  return 1
end)
local function ttl(srv, c, key, scale)
  local e = entry(srv, c, key)
  if not e then return -2 end
  if not e.expires then return -1 end
  return floor((e.expires - srv.now()) * scale + 0.5)
end
def("TTL", 2, function(srv, c, a) return ttl(srv, c, a[2], 1) end)
def("PTTL", 2, function(srv, c, a) return ttl(srv, c, a[2], 1000) end)

-- hashes: value = { field -> value }
def("HSET", -4, function(srv, c, a)
  if #a % 2 == 1 then return arity_err(a[1]) end
  local e, err = typed(srv, c, a[2], "hash", true)
  if err then return err end
  local n = 0
  for i = 3, #a, 2 do
    if e.value[a[i]] == nil then n = n + 1 end
    e.value[a[i]] = a[i + 1]
  end
  if upper(a[1]) == "HMSET" then return OK end
  return n
end)
CMD.HMSET, ARITY.HMSET = CMD.HSET, ARITY.HSET
def("HGET", 3, function(srv, c, a)
  local e, err = typed(srv, c, a[2], "hash")
  if err then return err end
  return e and e.value[a[3]] or null
end)
def("HMGET", -3, function(srv, c, a)
  local e, err = typed(srv, c, a[2], "hash")
  if err then return err end
  local out = { n = #a - 2 }
  for i = 3, #a do out[i - 2] = e and e.value[a[i]] or null end
  return out
end)
def("HGETALL", 2, function(srv, c, a)
  local e, err = typed(srv, c, a[2], "hash")
  if err then return err end
  local out, names = {}, {}
  if e then for k in pairs(e.value) do names[#names + 1] = k end end
  sort(names)
  for _, k in ipairs(names) do out[#out + 1] = k; out[#out + 1] = e.value[k] end
  return out
end)
def("HDEL", -3, function(srv, c, a)
  local e, err = typed(srv, c, a[2], "hash")
  if err then return err end
  local n = 0
  for i = 3, #a do
    if e and e.value[a[i]] ~= nil then e.value[a[i]] = nil; n = n + 1 end
  end
  return n
end)
def("HEXISTS", 3, function(srv, c, a)
  local e, err = typed(srv, c, a[2], "hash")
  if err then return err end
  return (e and e.value[a[3]] ~= nil) and 1 or 0
end)
def("HLEN", 2, function(srv, c, a)
  local e, err = typed(srv, c, a[2], "hash")
  if err then return err end
  local n = 0
  if e then for _ in pairs(e.value) do n = n + 1 end end
  return n
end)
def("HINCRBY", 4, function(srv, c, a)
  local by = toint(a[4]); if not by then return NOTINT end
  local e, err = typed(srv, c, a[2], "hash", true)
  if err then return err end
  local cur = e.value[a[3]] and toint(e.value[a[3]])
  if e.value[a[3]] and not cur then return S.error("ERR hash value is not an integer") end
  cur = (cur or 0) + by
  e.value[a[3]] = int_str(cur)
  return cur
end)

-- lists: value = array
local function push(left)
  return function(srv, c, a)
    local e, err = typed(srv, c, a[2], "list", true)
    if err then return err end
    for i = 3, #a do
      if left then table.insert(e.value, 1, a[i]) else e.value[#e.value + 1] = a[i] end
    end
    return #e.value
  end
end
def("LPUSH", -3, push(true))
def("RPUSH", -3, push(false))
local function pop(left)
  return function(srv, c, a)
    local e, err = typed(srv, c, a[2], "list")
    if err then return err end
    if not e or #e.value == 0 then return null end
    local v = remove(e.value, left and 1 or nil)
    if #e.value == 0 then db(srv, c)[a[2]] = nil end
    return v
  end
end
def("LPOP", 2, pop(true))
def("RPOP", 2, pop(false))
def("LLEN", 2, function(srv, c, a)
  local e, err = typed(srv, c, a[2], "list")
  if err then return err end
  return e and #e.value or 0
end)
def("LRANGE", 4, function(srv, c, a)
  local e, err = typed(srv, c, a[2], "list")
  if err then return err end
  local s, t = toint(a[3]), toint(a[4])
  if not s or not t then return NOTINT end
  local out = {}
  if not e then return out end
  local n = #e.value
  if s < 0 then s = n + s end
  if t < 0 then t = n + t end
  if s < 0 then s = 0 end
  for i = s, math.min(t, n - 1) do out[#out + 1] = e.value[i + 1] end
  return out
end)

-- sets: value = { member -> true }
def("SADD", -3, function(srv, c, a)
  local e, err = typed(srv, c, a[2], "set", true)
  if err then return err end
  local n = 0
  for i = 3, #a do
    if not e.value[a[i]] then e.value[a[i]] = true; n = n + 1 end
  end
  return n
end)
def("SREM", -3, function(srv, c, a)
  local e, err = typed(srv, c, a[2], "set")
  if err then return err end
  local n = 0
  for i = 3, #a do
    if e and e.value[a[i]] then e.value[a[i]] = nil; n = n + 1 end
  end
  return n
end)
def("SISMEMBER", 3, function(srv, c, a)
  local e, err = typed(srv, c, a[2], "set")
  if err then return err end
  return (e and e.value[a[3]]) and 1 or 0
end)
def("SMEMBERS", 2, function(srv, c, a)
  local e, err = typed(srv, c, a[2], "set")
  if err then return err end
  local out = {}
  if e then for k in pairs(e.value) do out[#out + 1] = k end end
  sort(out)
  return out
end)
def("SCARD", 2, function(srv, c, a)
  local e, err = typed(srv, c, a[2], "set")
  if err then return err end
  local n = 0
  if e then for _ in pairs(e.value) do n = n + 1 end end
  return n
end)

-- Lua scripts cannot run here: a spec gives EVAL/EVALSHA handlers with srv:on().
def("EVAL", -3, function()
  return S.error("ERR the fake Redis runs no Lua: script EVAL with srv:on(\"EVAL\", fn)")
end)
def("EVALSHA", -3, function()
  return S.error("NOSCRIPT No matching script. Please use EVAL.")
end)

------------------------------------------------------------------------------------------
-- Servers and connections
------------------------------------------------------------------------------------------
local tcp = require "proxy.test_tcp"
local co_yield = coroutine.yield

local Server = {}
Server.__index = Server

function Server:db(n)
  local d = self.dbs[n]
  if not d then d = {}; self.dbs[n] = d end
  return d
end

-- Queues replies for the next commands, in order, before any handler or the store.
function Server:reply(...)
  for i = 1, select("#", ...) do self.queued[#self.queued + 1] = (select(i, ...)) end
  return self
end

-- fn(args, srv, conn) answers command `name` (any case) instead of the store; args[1] is
-- the name as the client sent it. Return a reply value (strings are bulk replies).
function Server:on(name, fn)
  self.handlers[upper(name)] = fn
  return self
end

local serve

-- Listens (again) at host:port through the fake proxy.tcp.
local function listen(srv)
  srv.tcp = tcp.peer(srv.host, srv.port, function(peer) return serve(srv, peer) end)
end

-- An outage: open connections (pooled ones too) are closed by the server, new ones
-- refused, until srv:start().
function Server:stop()
  self.down = true
  for c in pairs(self.open) do
    c.stopped = true
    c.peer:close()
    self.open[c] = nil
  end
  self.tcp = tcp.peer(self.host, self.port, "connection refused")
  return self
end

function Server:start()
  if self.down then
    self.down = false
    listen(self)
  end
  return self
end

-- Empties the store (every database) and the records; keeps handlers and options.
function Server:flush()
  self.dbs = {}
  self.commands = {}
  self.queued = {}
  return self
end

-- The live keys of database `n` (default 0): key -> value (hashes, lists and sets as
-- tables), for asserts.
function Server:dump(n)
  local out = {}
  for k, e in pairs(self:db(n or 0)) do
    if not (e.expires and e.expires <= self.now()) then out[k] = e.value end
  end
  return out
end

-- The exact bytes the client sent on connection `i` (default: the latest), from T.tcp_peer.
function Server:sent(i)
  local sent = self.tcp and self.tcp.sent or {}
  return sent[i or #sent]
end

local function answer(srv, c, args)
  local name = upper(args[1] or "")
  srv.commands[#srv.commands + 1] = args
  if #srv.queued > 0 then return remove(srv.queued, 1) end
  if srv.password and not c.authed and name ~= "AUTH" and name ~= "QUIT" then
    return S.error("NOAUTH Authentication required.")
  end
  local h = srv.handlers[name]
  if h then return h(args, srv, c) end
  local fn = CMD[name]
  if not fn then
    local rest = {}
    for i = 2, math.min(#args, 4) do rest[#rest + 1] = "'" .. args[i] .. "'" end
    return S.error(format("ERR unknown command '%s', with args beginning with: %s", args[1] or "",
      concat(rest, " ")))
  end
  local ar = ARITY[name]
  if (ar > 0 and #args ~= ar) or (ar < 0 and #args < -ar) then return arity_err(args[1]) end
  return fn(srv, c, args)
end

-- Reads one command (a RESP array of bulk strings, as clients send them): the list; nil
-- when the client closed; false when the bytes are not such an array.
local function read_command(peer)
  local line = peer:receive("*l")
  if not line then return nil end
  local n = sub(line, 1, 1) == "*" and tonumber(sub(line, 2))
  if not n or n < 1 or n % 1 ~= 0 then return false end
  local args = {}
  for i = 1, n do
    line = peer:receive("*l")
    if not line then return nil end
    local len = sub(line, 1, 1) == "$" and tonumber(sub(line, 2))
    if not len or len < 0 or len % 1 ~= 0 then return false end
    local data = peer:receive(len + 2)
    if not data then return nil end
    if sub(data, -2) ~= "\r\n" then return false end
    args[i] = sub(data, 1, len)
  end
  return args
end

-- Sends a reply, in pieces of srv.chunk_size with a pause between them (the plugin's
-- receive sees them arrive one by one).
local function send_out(srv, peer, bytes)
  local size = srv.chunk_size
  if not size or size <= 0 or #bytes <= size then
    peer:send(bytes)
    return
  end
  for i = 1, #bytes, size do
    if i > 1 then co_yield() end
    peer:send(sub(bytes, i, i + size - 1))
  end
end

-- One connection's server side (the T.tcp_peer function): returning closes it.
serve = function(srv, peer)
  local c = { db = 0, authed = false, peer = peer }
  srv.connections = srv.connections + 1
  srv.open[c] = true
  while true do
    local args = read_command(peer)
    if c.stopped then return end
    if args == nil then
      srv.open[c] = nil
      return
    end
    if args == false then
      srv.protocol_errors = srv.protocol_errors + 1
      peer:send("-ERR Protocol error: the fake Redis could not parse the request\r\n")
      srv.open[c] = nil
      return
    end
    local v = answer(srv, c, args)
    if v == S.hang then
      peer:receive("*a") -- no answer, ever: until the client closes
      srv.open[c] = nil
      return
    elseif v == S.close then
      srv.open[c] = nil
      return
    end
    send_out(srv, peer, concat(encode(v, {})))
    if c.stopped then return end
    if (getmetatable(v) == Tag and v.kind == "raw" and v.v[2]) or c.quit then
      srv.open[c] = nil
      return
    end
  end
end

-- env: now() (seconds, the fake clock).
function R.registry(env)
  local reg = { replies = R.replies }

  -- T.redis_server{ host = "127.0.0.1", port = 6379, password =, user =, databases = 16,
  -- chunk_size = nil }: a fake Redis answering at host:port until T.reset().
  function reg.server(opts)
    opts = opts or {}
    local srv = setmetatable({
      host = opts.host or "127.0.0.1", port = opts.port or 6379,
      password = opts.password, user = opts.user, databases = opts.databases or 16,
      chunk_size = opts.chunk_size,
      dbs = {}, handlers = {}, queued = {},
      commands = {},       -- every command received: { "SET", "k", "v" } lists
      connections = 0,     -- connections accepted (a pooled connection reused is not counted)
      protocol_errors = 0, -- requests the server could not parse (a client bug)
      open = {},           -- conn -> true while the server side is open
      down = false,
      now = env.now,
    }, Server)
    listen(srv)
    return srv
  end

  return reg
end

return R
