-- proxy.redis: a non-blocking Redis client on the cosocket (proxy.tcp()), shaped like
-- OpenResty's lua-resty-redis so that ported code works: every Redis command is a method
-- (red:get(k), red:set(k, v, "EX", 10), red:hgetall(k): generated on first use), replies
-- come back as Lua values, a Redis error reply is `false, "ERR ..."`, a network failure
-- `nil, err`, a nil bulk or nil array `proxy.null`. Nothing here raises on a runtime
-- failure (refused, timeout, peer closing mid-reply, protocol error, error reply).
--
-- RESP parsing: our own parser in Lua over the cosocket's receive("*l") / receive(n), not
-- libhiredis's reader over FFI. Why: the cosocket already buffers the socket and hands out
-- Lua strings, so a GET reply costs one line read and one counted read whose result is the
-- string we return. hiredis would need every received chunk fed (copied) into its own
-- buffer, then walk malloc'ed redisReply trees through FFI, copy each string again into
-- Lua and free the tree: more copies and allocations per reply, and a second buffering
-- layer beside the cosocket's. The parser below is a few dozen lines; a reply's type is one
-- byte. Measured on a fake socket, connect{} + GET + set_keepalive cost about 1.4 us of
-- Lua per request in LuaJIT's interpreter (0.1 us when compiled), next to tens of us of
-- socket work (bench/README.md, redis-get). RESP2 only (we never send HELLO 3).
--
-- The module is a factory (M.api(tcp)) so the engine binds it to proxy.tcp and the
-- proxy.test double to its fake sockets; each gets its own client class.
local type, tostring, tonumber, select, setmetatable, rawset, pairs, error =
  type, tostring, tonumber, select, setmetatable, rawset, pairs, error
local byte, sub, find, format, lower = string.byte, string.sub, string.find, string.format,
  string.lower
local concat = table.concat
local floor = math.floor
local bxor, tobit, tohex = bit.bxor, bit.tobit, bit.tohex

local null = require("cjson").null

local M = {}

-- A bulk reply up to this size is read together with its CRLF in one receive() and cut;
-- a bigger one is read as the bulk then the CRLF, so it is not copied once more.
local ONE_READ_MAX = 8192

-- Redis's own limit on a bulk string (proto-max-bulk-len's default, 512 MiB): a longer one
-- is a desynchronised stream, not something to buffer.
local MAX_BULK = 512 * 1024 * 1024

-- Defaults: every client has timeouts (issue #12: "safe defaults").
local DEFAULT_TIMEOUT_MS = 1000

-- A number as Redis expects it: integers without exponent (tostring(2^53) would give
-- "9.007199254741e+15"), other numbers with every digit.
local function num_arg(n)
  if n == floor(n) and n > -9.2e18 and n < 9.2e18 then
    if n > -1e14 and n < 1e14 then return tostring(n) end
    return format("%d", n)
  end
  if n ~= n or n == 1 / 0 or n == -1 / 0 then return nil end
  return format("%.17g", n)
end

-- Scratch buffer for encoding one command: filled and concatenated without a yield in
-- between, so one per module is safe even with many coroutines.
local buf = {}

-- Appends one argument to `buf` at index `i`; returns the next index, or nil and an error.
local function put_arg(i, a, argn)
  local t = type(a)
  if t == "number" then
    a = num_arg(a)
    if not a then return nil, format("bad argument #%d: not a finite number", argn) end
  elseif t == "boolean" then
    a = a and "true" or "false" -- as lua-resty-redis (tostring)
  elseif t ~= "string" then
    return nil, format("bad argument #%d: string, number or boolean expected, got %s", argn,
      a == null and "null" or t)
  end
  buf[i] = "$"
  buf[i + 1] = #a
  buf[i + 2] = "\r\n"
  buf[i + 3] = a
  buf[i + 4] = "\r\n"
  return i + 5
end

-- The RESP request for command `cmd` (its "$len\r\nname\r\n" part, precomputed) and the
-- arguments: a string, or nil and "bad argument ...". Array tables among the arguments
-- are spread (red:mget(list), red:del(keys)).
local function encode(cmd_bulk, n, ...)
  local count = n + 1
  local i = 3
  buf[2] = cmd_bulk
  for k = 1, n do
    local a = select(k, ...)
    local err
    if type(a) == "table" then
      local m = #a
      count = count + m - 1
      for j = 1, m do
        i, err = put_arg(i, a[j], k)
        if not i then return nil, err end
      end
    else
      i, err = put_arg(i, a, k)
      if not i then return nil, err end
    end
  end
  buf[1] = "*" .. count .. "\r\n"
  return concat(buf, "", 1, i - 1)
end
M.encode = function(cmd, ...) -- for specs: the bytes red:<cmd>(...) sends
  return encode("$" .. #cmd .. "\r\n" .. cmd .. "\r\n", select("#", ...), ...)
end

-- Arrays nested deeper than this are a protocol error (Redis's replies nest a few levels;
-- unbounded recursion would raise "stack overflow" instead of returning).
local MAX_DEPTH = 64

-- Reads one reply from `sock`. Returns the value; false and the message for a Redis error
-- reply; nil, err, true for a network or protocol failure (the third value says the
-- connection is unusable: the caller closes it). `depth`: arrays around this reply.
local function read_reply(sock, depth)
  local line, err = sock:receive("*l")
  if not line then return nil, err, true end
  local t = byte(line, 1)
  if t == 36 then -- '$' bulk string
    local n = tonumber(sub(line, 2))
    if not n or n % 1 ~= 0 or n > MAX_BULK then
      return nil, "bad reply from redis: " .. sub(line, 1, 64), true
    end
    if n < 0 then return null end
    if n <= ONE_READ_MAX then
      local data, rerr = sock:receive(n + 2)
      if not data then return nil, rerr, true end
      if sub(data, n + 1) ~= "\r\n" then return nil, "bad reply from redis: bulk not ended by CRLF", true end
      return sub(data, 1, n)
    end
    local data, rerr = sock:receive(n)
    if not data then return nil, rerr, true end
    local crlf
    crlf, rerr = sock:receive(2)
    if not crlf then return nil, rerr, true end
    if crlf ~= "\r\n" then return nil, "bad reply from redis: bulk not ended by CRLF", true end
    return data
  elseif t == 43 then -- '+' status
    return sub(line, 2)
  elseif t == 58 then -- ':' integer
    local n = tonumber(sub(line, 2))
    if not n then return nil, "bad reply from redis: " .. sub(line, 1, 64), true end
    return n
  elseif t == 45 then -- '-' error
    return false, sub(line, 2)
  elseif t == 42 then -- '*' array
    local n = tonumber(sub(line, 2))
    if not n or n % 1 ~= 0 then return nil, "bad reply from redis: " .. sub(line, 1, 64), true end
    if n < 0 then return null end
    depth = (depth or 0) + 1
    if depth > MAX_DEPTH then return nil, "bad reply from redis: arrays nested too deep", true end
    local vals = {}
    for i = 1, n do
      local v, verr, fatal = read_reply(sock, depth)
      if fatal then return nil, verr, true end
      if v == false then v = { false, verr } end -- an error inside an array, as lua-resty-redis
      vals[i] = v
    end
    return vals
  end
  if line == "" then return nil, "bad reply from redis: empty line", true end
  return nil, "bad reply from redis: unknown type " .. format("%q", sub(line, 1, 1)), true
end
M.read_reply = read_reply

-- A small stable hash (FNV-1a) so pool names hold no password.
local function fnv(s)
  local h = 2166136261
  for i = 1, #s do
    h = bxor(h, byte(s, i))
    h = tobit(h * 16777619)
  end
  return tohex(h)
end

-- The names a command method is made for: a letter, then letters and digits. Instance
-- fields start with "_" and are always present, so a field look-up never makes a command.
local function is_command_name(k)
  return type(k) == "string" and find(k, "^%a[%w]*$") ~= nil
end

-- The `redis` record of a plugin's options (rate_limit's `redis`, cache's `l2.redis`): the
-- same fields for every plugin, with its own defaults and words where they differ:
-- d.description (the record's), d.timeout (ms) and d.timeout_description, d.prefix and
-- d.prefix_description.
function M.schema_record(d)
  return {
    type = "record", default = {}, description = d.description,
    fields = {
      host = { type = "string", default = "127.0.0.1", description = "Redis host" },
      port = { type = "integer", default = 6379, min = 1, max = 65535, description = "port" },
      password = { type = "string", secret = true, description = "AUTH password" },
      user = { type = "string", description = "AUTH user (Redis 6 ACLs)" },
      db = { type = "integer", default = 0, min = 0, description = "database number" },
      timeout = { type = "integer", default = d.timeout, min = 1,
                  description = d.timeout_description },
      prefix = { type = "string", default = d.prefix, description = d.prefix_description },
      pool_size = { type = "integer", default = 64, min = 1,
                    description = "idle connections kept per worker" },
    },
  }
end

-- proxy.redis.connect's options for the value of such a record.
function M.connect_opts(r)
  return { host = r.host, port = r.port, password = r.password, user = r.user, db = r.db,
           timeout = r.timeout, pool_size = r.pool_size }
end

function M.api(tcp)
  local Redis = {}
  local mt = { __index = Redis }

  -- The method for command `name`: encodes, sends, reads the reply.
  local function gen(name)
    local cmd_bulk = "$" .. #name .. "\r\n" .. name .. "\r\n"
    local lname = lower(name)
    local subscribing = lname == "subscribe" or lname == "psubscribe" or lname == "ssubscribe"
    local head1, head2 = "*2\r\n" .. cmd_bulk, "*3\r\n" .. cmd_bulk
    return function(self, ...)
      local n = select("#", ...)
      local req, err
      -- One or two string arguments (GET k, SET k v, INCR k...) are most commands: one
      -- concatenation, no scratch table.
      local a, b = ...
      if n == 1 and type(a) == "string" then
        req = head1 .. "$" .. #a .. "\r\n" .. a .. "\r\n"
      elseif n == 2 and type(a) == "string" and type(b) == "string" then
        req = head2 .. "$" .. #a .. "\r\n" .. a .. "\r\n$" .. #b .. "\r\n" .. b .. "\r\n"
      else
        req, err = encode(cmd_bulk, n, ...)
        if not req then return nil, err end
      end
      local reqs = self._reqs
      if reqs then
        reqs[#reqs + 1] = req
        return true
      end
      local sock = self._sock
      if not sock then return nil, "closed" end
      local ok
      ok, err = sock:send(req)
      if not ok then
        self:_fail()
        return nil, err
      end
      local res, rerr, fatal = read_reply(sock)
      if fatal then
        self:_fail()
        return nil, rerr
      end
      if subscribing and res then self._subscribed = true end
      return res, rerr
    end
  end

  -- Commands are made on first use and kept in Redis: later look-ups are plain table hits.
  setmetatable(Redis, { __index = function(R, name)
    if not is_command_name(name) then return nil end
    local fn = gen(name)
    rawset(R, name, fn)
    return fn
  end })

  -- A network or protocol failure leaves the stream at an unknown point: close it, so that
  -- set_keepalive cannot hand a desynchronised connection to the next user.
  function Redis:_fail()
    local sock = self._sock
    if sock then
      self._sock = false
      sock:close()
    end
  end

  local function new_client(no_default_timeouts)
    local sock, err = tcp()
    if not sock then return nil, err or "proxy.tcp is not available" end
    if not no_default_timeouts then
      sock:settimeouts(DEFAULT_TIMEOUT_MS, DEFAULT_TIMEOUT_MS, DEFAULT_TIMEOUT_MS)
    end
    return setmetatable({ _sock = false, _tcp = sock, _reqs = false, _subscribed = false }, mt)
  end

  -- OpenResty style: local red = proxy.redis.new(); red:set_timeouts(...); red:connect(...)
  local api = { null = null, new = function() return new_client() end }

  function Redis:set_timeout(ms)
    local sock = self._sock or self._tcp
    if not sock then return nil, "not initialized" end
    sock:settimeouts(ms, ms, ms)
    return true
  end

  function Redis:set_timeouts(connect_ms, send_ms, read_ms)
    local sock = self._sock or self._tcp
    if not sock then return nil, "not initialized" end
    sock:settimeouts(connect_ms, send_ms, read_ms)
    return true
  end

  -- connect(host, port, opts) as lua-resty-redis: opts.pool, pool_size, ssl, ssl_verify,
  -- server_name (backlog is accepted and ignored: the cosocket has no connect queue). A
  -- closed client may connect again (its socket object is kept).
  function Redis:connect(host, port, opts)
    local sock = self._sock or self._tcp
    if not sock then return nil, "not initialized" end
    local copts
    if opts then
      copts = { pool = opts.pool, pool_size = opts.pool_size }
    end
    local ok, err = sock:connect(host, port, copts)
    if not ok then return nil, err end
    self._sock = sock
    self._subscribed = false
    if opts and opts.ssl and sock:getreusedtimes() == 0 then
      ok, err = sock:sslhandshake(false, opts.server_name, opts.ssl_verify)
      if not ok then
        self:_fail()
        return nil, "failed to do ssl handshake: " .. tostring(err)
      end
    end
    return true
  end

  function Redis:get_reused_times()
    local sock = self._sock
    if not sock then return nil, "not initialized" end
    return sock:getreusedtimes()
  end

  -- Returns the connection to the cosocket's pool; the client is closed afterwards.
  function Redis:set_keepalive(idle_ms, pool_size)
    local sock = self._sock
    if not sock then return nil, "closed" end
    if self._subscribed then return nil, "subscribed state" end
    if self._reqs then return nil, "pipeline not committed" end
    self._sock = false
    return sock:setkeepalive(idle_ms, pool_size)
  end

  function Redis:close()
    local sock = self._sock
    if not sock then return nil, "closed" end
    self._sock = false
    self._reqs = false
    return sock:close()
  end

  -- Pipelines: commands are kept (each returns true) and sent at once by commit, which
  -- returns the list of replies (an error reply as { false, "ERR ..." }) or nil, err.
  function Redis:init_pipeline()
    self._reqs = {}
    return true
  end

  function Redis:cancel_pipeline()
    self._reqs = false
    return true
  end

  function Redis:commit_pipeline()
    local reqs = self._reqs
    if not reqs then return nil, "no pipeline" end
    self._reqs = false
    local sock = self._sock
    if not sock then return nil, "closed" end
    local n = #reqs
    if n == 0 then return {} end
    local ok, err = sock:send(concat(reqs))
    if not ok then
      self:_fail()
      return nil, err
    end
    local vals = {}
    for i = 1, n do
      local res, rerr, fatal = read_reply(sock)
      if fatal then
        self:_fail()
        return nil, rerr
      end
      if res == false then res = { false, rerr } end
      vals[i] = res
    end
    return vals
  end
  Redis.pipeline = Redis.init_pipeline
  Redis.commit = Redis.commit_pipeline

  -- Reads one more reply without sending (pub/sub messages after subscribe).
  function Redis:read_reply()
    local sock = self._sock
    if not sock then return nil, "closed" end
    if not self._subscribed then return nil, "not subscribed" end
    local res, err, fatal = read_reply(sock)
    if fatal then
      -- a read timeout while waiting for a message leaves the stream intact
      if err ~= "timeout" then self:_fail() end
      return nil, err
    end
    if type(res) == "table" and (res[1] == "unsubscribe" or res[1] == "punsubscribe")
       and res[3] == 0 then
      self._subscribed = false
    end
    return res, err
  end

  -- hmset(key, { field = value }) as lua-resty-redis; other forms go to the generic command.
  local raw_hmset = gen("hmset")
  function Redis:hmset(key, ...)
    if select("#", ...) == 1 and type((...)) == "table" then
      local t, flat, i = (...), {}, 0
      for k, v in pairs(t) do
        flat[i + 1], flat[i + 2] = k, v
        i = i + 2
      end
      return raw_hmset(self, key, flat)
    end
    return raw_hmset(self, key, ...)
  end

  -- { k1, v1, k2, v2 } (an HGETALL reply) -> { k1 = v1, k2 = v2 }
  function Redis:array_to_hash(t)
    local h = {}
    for i = 1, #t, 2 do h[t[i]] = t[i + 1] end
    return h
  end
  api.array_to_hash = function(t) return Redis.array_to_hash(nil, t) end

  -- proxy.redis.connect{ host, port, password, user, db, timeout, connect_timeout,
  -- send_timeout, read_timeout, pool, pool_size, ssl, ssl_verify, server_name }: a
  -- connected client (AUTH and SELECT done on a fresh connection), or nil, err.
  local plain_pools = {} -- host -> port -> "host:port" (no string built per connect)
  local plain_count = 0

  function api.connect(o)
    if type(o) ~= "table" then
      error("proxy.redis.connect: expected a table of options", 2)
    end
    local host = o.host or "127.0.0.1"
    local port = tonumber(o.port or 6379)
    if type(host) ~= "string" or not port or port % 1 ~= 0 or port < 1 or port > 65535 then
      error("proxy.redis.connect: host must be a string and port a number from 1 to 65535", 2)
    end
    local db = o.db and tonumber(o.db)
    if o.db and not db then error("proxy.redis.connect: db must be a number", 2) end
    local t = o.timeout or DEFAULT_TIMEOUT_MS
    local red, err = new_client(true)
    if not red then return nil, err end
    red._tcp:settimeouts(o.connect_timeout or t, o.send_timeout or t, o.read_timeout or t)
    -- Connections differ by database and credentials: they get pools of their own.
    local pool = o.pool
    if not pool then
      if (not db or db == 0) and not o.password and not o.ssl then
        local by_port = plain_pools[host]
        if not by_port then
          by_port = {}
          plain_pools[host] = by_port
        end
        pool = by_port[port]
        if not pool then
          pool = host .. ":" .. port
          if plain_count < 256 then -- bounded: hosts a plugin computes must not grow it
            plain_count = plain_count + 1
            by_port[port] = pool
          end
        end
      else
        pool = host .. ":" .. port
        if db and db ~= 0 then pool = pool .. ":db" .. db end
        if o.password then pool = pool .. ":auth" .. fnv((o.user or "") .. "\0" .. o.password) end
        if o.ssl then pool = pool .. ":tls:" .. tostring(o.server_name or "") end
      end
    end
    local ok
    ok, err = red:connect(host, port, { pool = pool, pool_size = o.pool_size, ssl = o.ssl,
      ssl_verify = o.ssl_verify, server_name = o.server_name })
    if not ok then
      return nil, format("redis %s:%s: %s", host, port, tostring(err))
    end
    if (o.password or (db and db ~= 0)) and red:get_reused_times() == 0 then
      if o.password then
        local res
        if o.user then
          res, err = red:auth(o.user, o.password)
        else
          res, err = red:auth(o.password)
        end
        if not res then
          red:close()
          return nil, format("redis %s:%s: AUTH failed: %s", host, port, tostring(err))
        end
      end
      if db and db ~= 0 then
        local res
        res, err = red:select(db)
        if not res then
          red:close()
          return nil, format("redis %s:%s: SELECT %d failed: %s", host, port, db, tostring(err))
        end
      end
    end
    return red
  end

  api.Client = Redis
  return api
end

return M
