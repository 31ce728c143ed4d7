-- proxy.http: a non-blocking HTTP/1.1 client (docs/lua-api.md, "proxy.http").
--
-- Transport, pooling and TLS are proxy.tcp() (the cosocket: connect with non-blocking
-- DNS, per-worker keep-alive pools, sslhandshake). Responses are parsed by the engine's
-- own HTTP/1.1 parser (engine/http1.c over llhttp, reached through engine/lua_http.c), the
-- one the proxy path applies to upstreams: Lua here only writes the request head, feeds
-- received bytes to the parser and reads what it found. Nothing here is a second parser.
local ffi = require "ffi"
local K = require "luaproxy.ffi"
local buffer = require "string.buffer"

local type, tostring, tonumber, pairs, ipairs, setmetatable, rawget, error, select =
  type, tostring, tonumber, pairs, ipairs, setmetatable, rawget, error, select
local find, match, lower, upper, sub, format, gsub, byte =
  string.find, string.match, string.lower, string.upper, string.sub, string.format,
  string.gsub, string.byte
local band = bit.band
local sort, concat = table.sort, table.concat
local ffi_string = ffi.string

local M = {}

-- The C functions: the executable's (ffi.C) in the engine; busted specs load the parser
-- as a library (M._use_lib).
local C = ffi.C
function M._use_lib(lib) C = lib end

-- The socket: proxy.tcp() in the engine (looked up at the first call: luaproxy.http loads
-- before proxy.tcp exists); specs give a fake with M._set_tcp.
local new_tcp
function M._set_tcp(fn) new_tcp = fn end

local HR_HEAD, HR_DONE, HR_WAIT, HR_ESOCK = K.HR_HEAD, K.HR_DONE, K.HR_WAIT, K.HR_ESOCK
local yield = require("luaproxy.phases").wait
local RECV_MAX = 65536
local DEFAULT_TIMEOUT = 10          -- seconds, each of connect, send and read
local DEFAULT_IDLE, DEFAULT_POOL = 60, 32
local DEFAULT_MAX_BODY = 16 * 1024 * 1024 -- a buffered body; streams have no limit
local MAX_BODY_LIMIT = 2 ^ 31 - 65537      -- the parser hands out lengths as ints
local USER_AGENT = "luaproxy/0.1.0"

local IDEMPOTENT = { GET = true, HEAD = true, PUT = true, DELETE = true, OPTIONS = true,
  TRACE = true }

local function raise(msg, level)
  -- Programmer errors (wrong argument types) raise, like the rest of the API.
  error("proxy.http: " .. msg, (level or 1) + 1)
end

------------------------------------------------------------------------------------------
-- URLs
------------------------------------------------------------------------------------------

-- "http[s]://host[:port][/path][?query][#fragment]" -> { scheme, host, port, path,
-- authority (the Host value), ipv6 }; or nil, message.
local function parse_url(url)
  if type(url) ~= "string" then return nil, "url: expected a string" end
  local scheme, rest = match(url, "^(%a[%w+.-]*)://(.*)$")
  if not scheme then return nil, "url: expected http:// or https://, got " .. format("%q", url) end
  scheme = lower(scheme)
  if scheme ~= "http" and scheme ~= "https" then
    return nil, "url: unsupported scheme " .. scheme
  end
  local authority = match(rest, "^[^/?#]*")
  local target = sub(rest, #authority + 1)
  target = match(target, "^[^#]*") -- a fragment is not sent
  if find(authority, "@", 1, true) then
    return nil, "url: user information (user@host) is not supported: send an Authorization header"
  end
  local host, portpart, ipv6
  if sub(authority, 1, 1) == "[" then
    host, portpart = match(authority, "^%[([%x:.]+)%](.*)$")
    if not host or not find(host, ":", 1, true) then return nil, "url: invalid IPv6 address" end
    ipv6 = true
  else
    host, portpart = match(authority, "^([^:]*)(.*)$")
    if host == "" then return nil, "url: no host" end
    if not match(host, "^[%w._-]+$") then return nil, "url: invalid host " .. format("%q", host) end
    host = lower(host)
  end
  local default = scheme == "https" and 443 or 80
  local port = default
  if portpart ~= "" then
    local digits = match(portpart, "^:(%d+)$")
    port = tonumber(digits)
    if not port or port < 1 or port > 65535 then
      return nil, "url: invalid port " .. format("%q", sub(portpart, 2))
    end
  end
  if target == "" then
    target = "/"
  elseif sub(target, 1, 1) == "?" then
    target = "/" .. target
  end
  if find(target, "[%z\1-\32\127]") then
    return nil, "url: the path may not hold spaces or control characters"
  end
  local hostpart = ipv6 and "[" .. host .. "]" or host
  return { scheme = scheme, host = host, port = port, path = target, ipv6 = ipv6,
           authority = port == default and hostpart or hostpart .. ":" .. port,
           peer = hostpart .. ":" .. port, pool = scheme == "http" and "http:" .. host .. ":" .. port or nil }
end

-- Parsed URLs, per worker: a plugin calls the same few URLs again and again. Entries are
-- read-only; the cache is emptied when it grows past URL_CACHE_MAX.
local URL_CACHE_MAX = 256
local url_cache, url_cached = {}, 0

function M.parse_url(url)
  local u = url_cache[url]
  if u then return u end
  local err
  u, err = parse_url(url)
  if not u then return nil, err end
  if url_cached >= URL_CACHE_MAX then url_cache, url_cached = {}, 0 end
  url_cache[url] = u
  url_cached = url_cached + 1
  return u
end

local function escape(s)
  return (gsub(tostring(s), "[^%w%-._~]", function(c) return format("%%%02X", byte(c)) end))
end

-- opts.query: a string (appended as is) or a table (names sorted; a list value repeats
-- the name; true gives a bare name).
local function query_string(q)
  if type(q) == "string" then return q end
  if type(q) ~= "table" then raise("query: expected a string or a table", 4) end
  local names = {}
  for k in pairs(q) do names[#names + 1] = tostring(k) end
  sort(names)
  local parts = {}
  for _, k in ipairs(names) do
    local v = q[k]
    if v == nil then v = q[tonumber(k)] end
    if type(v) ~= "table" then v = { v } end
    for _, one in ipairs(v) do
      parts[#parts + 1] = one == true and escape(k) or escape(k) .. "=" .. escape(one)
    end
  end
  return concat(parts, "&")
end
M.query_string = query_string

------------------------------------------------------------------------------------------
-- The request head
------------------------------------------------------------------------------------------

local head_buf = buffer.new(1024)

-- Header names already checked (a token), with their lower-case form; bounded.
local token_names, ntoken_names = {}, 0

-- Header fields we write ourselves from the request's framing.
local OWN = { ["content-length"] = true, ["transfer-encoding"] = true }

local function bad_value(v)
  return find(v, "[%z\r\n]")
end

local function add_field(buf, name, value)
  if type(value) ~= "string" then
    if type(value) == "number" then
      value = tostring(value)
    else
      return "header " .. name .. ": expected a string, a number or a list of them"
    end
  end
  if bad_value(value) then
    return "header " .. name .. ": CR, LF or NUL in the value (refused: header injection)"
  end
  buf:put(name, ": ", value, "\r\n")
end

-- The head for opts on u (a parsed URL), as a string; or nil, message. `close` says
-- whether the connection is not to be reused.
function M.encode_head(method, u, headers, body, close, path)
  local buf = head_buf
  buf:reset()
  buf:put(method, " ", path or u.path, " HTTP/1.1\r\n")
  local has_host, has_ua, has_conn = false, false, false
  if headers ~= nil then
    if type(headers) ~= "table" then
      raise("headers: expected a table of name = value", 4)
    end
    for name, value in pairs(headers) do
      local lname = token_names[name]
      if not lname then
        if type(name) ~= "string" or not match(name, "^[%w!#$%%&'*+.^_`|~-]+$") then
          return nil, "header name " .. format("%q", tostring(name))
            .. " is not a token (refused: header injection)"
        end
        lname = lower(name)
        if ntoken_names >= 1024 then token_names, ntoken_names = {}, 0 end
        token_names[name] = lname
        ntoken_names = ntoken_names + 1
      end
      if lname == "host" then has_host = true
      elseif lname == "user-agent" then has_ua = true
      elseif lname == "connection" then has_conn = true end
      if OWN[lname] then
        -- the framing is ours: the body's length
      elseif type(value) == "table" then
        for _, v in ipairs(value) do
          local err = add_field(buf, name, v)
          if err then return nil, err end
        end
      else
        local err = add_field(buf, name, value)
        if err then return nil, err end
      end
    end
  end
  if not has_host then buf:put("Host: ", u.authority, "\r\n") end
  if not has_ua then buf:put("User-Agent: ", USER_AGENT, "\r\n") end
  if close and not has_conn then buf:put("Connection: close\r\n") end
  if body then
    buf:put("Content-Length: ", #body, "\r\n")
  elseif method == "POST" or method == "PUT" or method == "PATCH" then
    buf:put("Content-Length: 0\r\n")
  end
  buf:put("\r\n")
  return buf:tostring()
end

------------------------------------------------------------------------------------------
-- Response headers: case-insensitive lookup, repeated fields as lists
------------------------------------------------------------------------------------------

local Headers = {
  __index = function(t, k)
    if type(k) ~= "string" then return nil end
    local l = lower(k)
    local v = rawget(t, l)
    if v == nil and find(l, "_", 1, true) then v = rawget(t, (gsub(l, "_", "-"))) end
    return v
  end,
}
M.Headers = Headers

local len_out = ffi.new("int[1]")

-- The fields as the parser packed them ("name\0value\0...", names as the server wrote
-- them): one C call and one string per response; the tables are built only when res.headers
-- or res.header_names is read.
local function packed_fields(p)
  local base = C.lp_ffi_hresp_fields(p, len_out)
  if base == nil then return "" end
  return ffi_string(base, len_out[0])
end

-- The headers table (lower-case names) and the names as written, by lower-case name (the
-- first spelling of a repeated field).
local function unpack_fields(raw)
  local h, names = setmetatable({}, Headers), {}
  local pos, n = 1, #raw
  while pos <= n do
    local z = find(raw, "\0", pos, true)
    local z2 = find(raw, "\0", z + 1, true)
    local written, value = sub(raw, pos, z - 1), sub(raw, z + 1, z2 - 1)
    local name = lower(written)
    if names[name] == nil then names[name] = written end
    local old = rawget(h, name)
    if old == nil then
      h[name] = value
    elseif type(old) == "table" then
      old[#old + 1] = value
    else
      h[name] = { old, value }
    end
    pos = z2 + 1
  end
  return h, names
end

------------------------------------------------------------------------------------------
-- Parsers: one per exchange in flight, recycled
------------------------------------------------------------------------------------------

local free_parsers, nfree = {}, 0

local function get_parser(head_req, max_body)
  local p
  if nfree > 0 then
    p = free_parsers[nfree]
    free_parsers[nfree] = nil
    nfree = nfree - 1
  else
    p = C.lp_ffi_hresp_new()
    if p == nil then return nil end
    p = ffi.gc(p, C.lp_ffi_hresp_free)
  end
  C.lp_ffi_hresp_reset(p, head_req and 1 or 0, max_body or 0)
  return p
end

local function put_parser(p)
  if nfree < 16 then
    nfree = nfree + 1
    free_parsers[nfree] = p
  end
end

local function parser_error(p)
  return "invalid response: " .. ffi_string(C.lp_ffi_hresp_error(p))
end

local function take_body(p)
  local base = C.lp_ffi_hresp_body(p, len_out)
  local n = len_out[0]
  if n == 0 then return nil end
  return ffi_string(base, n)
end

------------------------------------------------------------------------------------------
-- The exchange
------------------------------------------------------------------------------------------

local function timeouts_of(t)
  if t == nil then return DEFAULT_TIMEOUT, DEFAULT_TIMEOUT, DEFAULT_TIMEOUT end
  if type(t) == "number" then
    if not (t > 0) then raise("timeout: expected seconds > 0", 4) end
    return t, t, t
  end
  if type(t) ~= "table" then raise("timeout: expected seconds or { connect, send, read }", 4) end
  return tonumber(t.connect) or DEFAULT_TIMEOUT, tonumber(t.send) or DEFAULT_TIMEOUT,
    tonumber(t.read) or DEFAULT_TIMEOUT
end

local function keepalive_of(ka)
  if ka == nil or ka == true then return DEFAULT_IDLE, DEFAULT_POOL end
  if ka == false then return nil end
  if type(ka) ~= "table" then
    raise("keepalive: expected true, false or { idle_timeout =, pool_size = }", 4)
  end
  local idle = tonumber(ka.idle_timeout) or DEFAULT_IDLE
  local size = tonumber(ka.pool_size) or DEFAULT_POOL
  if idle < 0 or size < 1 then raise("keepalive: idle_timeout >= 0 and pool_size >= 1", 4) end
  return idle, size
end

local Response = {}
Response.__index = function(res, k)
  if k == "headers" or k == "header_names" then
    local h, names = unpack_fields(rawget(res, "_fields"))
    -- only the field asked for is missing (the caller may have replaced the other)
    if rawget(res, "headers") == nil then res.headers = h end
    if rawget(res, "header_names") == nil then res.header_names = names end
    return rawget(res, k)
  end
  return Response[k]
end

-- The connection goes back to its pool when the response allows it, else closes.
local function release(st, reusable)
  local sock = st.sock
  st.sock = nil
  if not sock then return end
  if reusable and st.idle then
    local ok = sock:setkeepalive(st.idle * 1000, st.pool_size)
    if ok then return end
  end
  sock:close()
end

local function finish(st)
  local p = st.parser
  st.parser = nil
  if p then
    local reusable = C.lp_ffi_hresp_reusable(p) == 1
    put_parser(p)
    release(st, reusable)
  end
end

local function fail(st, err)
  st.parser = nil -- its state is unknown: not recycled
  release(st, false)
  return nil, err
end

-- Receives and feeds until `want` (HR_HEAD or HR_DONE) is reached, or after one read when
-- `once`: the state bits, or nil, message, got_bytes.
local function pump(st, want, once)
  local p, sock = st.parser, st.sock
  local raw = sock._s
  if raw then
    -- A proxy.tcp() socket: the parser reads from it in C (no string per read).
    while true do
      local rc = C.lp_ffi_hresp_recv(p, raw, RECV_MAX)
      if rc == HR_WAIT then
        yield()
      elseif rc >= 0 then
        if once or band(rc, want) ~= 0 then return rc end
      elseif rc == HR_ESOCK then
        local err = ffi_string(C.lp_ffi_tcp_error(raw))
        local got = C.lp_ffi_hresp_got(p) == 1
        return nil, (err == "timeout" and "timeout reading from " or "error reading from ")
          .. st.peer .. (err == "timeout" and "" or ": " .. err), got
      elseif C.lp_ffi_hresp_got(p) == 1 then
        return nil, parser_error(p), true
      else
        return nil, "connection closed by " .. st.peer, false
      end
    end
  end
  while true do
    local data, err, partial = sock:receiveany(RECV_MAX)
    local rc
    if data then
      st.got = true
      rc = C.lp_ffi_hresp_feed(p, data, #data)
    elseif err == "closed" then
      if partial and #partial > 0 then
        st.got = true
        rc = C.lp_ffi_hresp_feed(p, partial, #partial)
        if rc < 0 then return nil, parser_error(p) end
      end
      rc = C.lp_ffi_hresp_eof(p)
      if rc < 0 then
        return nil, st.got and parser_error(p) or "connection closed by " .. st.peer, st.got
      end
    else
      return nil, (err == "timeout" and "timeout reading from " or "error reading from ")
        .. st.peer .. (err == "timeout" and "" or ": " .. tostring(err)), st.got
    end
    if rc < 0 then return nil, parser_error(p), true end
    if once or band(rc, want) ~= 0 then return rc end
  end
end

-- The engine's socket: proxy.tcp()'s own C functions (engine/cosock.c), called without
-- tcp.lua's argument checks (ours are done) and without a string per read (pump). A call
-- that must wait returns 1: yield, and the engine resumes us to make it again.
local PARKED = 1
local Raw = {}
Raw.__index = Raw

local function raw_tcp()
  local s = C.lp_ffi_tcp_new()
  if s == nil then
    error("proxy.http: only inside a phase, a timer, a spawned thread or init_worker", 4)
  end
  return setmetatable({ _s = ffi.gc(s, C.lp_ffi_tcp_free) }, Raw)
end

local function raw_err(s) return ffi_string(C.lp_ffi_tcp_error(s)) end

function Raw:settimeouts(c, w, r) C.lp_ffi_tcp_timeouts(self._s, c, w, r) end

function Raw:connect(host, port, o)
  local s, pool = self._s, o.pool
  local rc = C.lp_ffi_tcp_connect(s, host, #host, port, pool, #pool, o.pool_size)
  while rc == PARKED do
    yield()
    rc = C.lp_ffi_tcp_connect(s, host, #host, port, pool, #pool, o.pool_size)
  end
  if rc < 0 then return nil, raw_err(s) end
  return 1
end

function Raw:getreusedtimes() return C.lp_ffi_tcp_reused(self._s) end

function Raw:sslhandshake(session, name, verify)
  -- rare (new connections only): tcp.lua's, with its trusted CA lookup
  local Sock = require("luaproxy.tcp").Sock
  return setmetatable({ _s = self._s }, Sock):sslhandshake(session, name, verify)
end

function Raw:send(data)
  local s = self._s
  local rc = C.lp_ffi_tcp_send(s, data, #data)
  while rc == PARKED do
    yield()
    rc = C.lp_ffi_tcp_send(s, data, #data)
  end
  if rc < 0 then return nil, raw_err(s) end
  return #data
end

function Raw:setkeepalive(ms, size)
  if C.lp_ffi_tcp_setkeepalive(self._s, ms, size) < 0 then return nil, raw_err(self._s) end
  return 1
end

function Raw:close()
  if C.lp_ffi_tcp_close(self._s) < 0 then return nil, raw_err(self._s) end
  return 1
end

-- Connects (or takes a pooled connection) and sends the request: true, or nil, message,
-- retryable (a pooled connection that failed before any response byte).
local function open(st, u, opts, head, body)
  local sock = new_tcp()
  st.sock = sock
  sock:settimeouts(st.ct * 1000, st.wt * 1000, st.rt * 1000)
  local ok, err = sock:connect(u.host, u.port, st.pool_opts)
  if not ok then
    st.sock = nil
    return nil, "connect to " .. st.peer .. ": " .. tostring(err)
  end
  local reused = (sock:getreusedtimes() or 0) > 0
  if u.scheme == "https" and not reused then
    local verify = opts.ssl_verify ~= false
    local ok2, err2 = sock:sslhandshake(nil, opts.server_name or u.host, verify)
    if not ok2 then
      release(st, false)
      return nil, "TLS handshake with " .. st.peer .. ": " .. tostring(err2)
    end
  end
  local sent, err3
  if body and #body > 0 then
    if #body <= 16384 then
      sent, err3 = sock:send(head .. body)
    else
      sent, err3 = sock:send(head)
      if sent then sent, err3 = sock:send(body) end
    end
  else
    sent, err3 = sock:send(head)
  end
  if not sent then
    release(st, false)
    return nil, "error sending to " .. st.peer .. ": " .. tostring(err3), reused
  end
  return true, nil, reused
end

local METHOD_OK = "^[%w!#$%%&'*+.^_`|~-]+$"
local METHODS = { GET = true, HEAD = true, POST = true, PUT = true, DELETE = true,
  PATCH = true, OPTIONS = true }

-- connect()'s options, kept in the (cached) URL for its plain-http pool
local function pool_opts_of(u, pool, size)
  if pool ~= u.pool then return { pool = pool, pool_size = size } end
  local o = u.pool_opts
  if not o or o.pool_size ~= size then
    o = { pool = pool, pool_size = size }
    u.pool_opts = o
  end
  return o
end

local function request(opts, stream)
  if type(opts) ~= "table" then raise("request: expected a table of options", 3) end
  local method = opts.method or "GET"
  if not METHODS[method] then
    if type(method) ~= "string" then raise("method: expected a string", 3) end
    method = upper(method)
    if not match(method, METHOD_OK) then
      return nil, "method " .. format("%q", method) .. " is not a token"
    end
  end
  local u, err = M.parse_url(opts.url)
  if not u then return nil, err end
  local path = u.path
  if opts.query ~= nil then
    local q = query_string(opts.query)
    if find(q, "[%z\1-\32\127]") then return nil, "query: spaces or control characters" end
    if q ~= "" then path = path .. (find(path, "?", 1, true) and "&" or "?") .. q end
  end
  local body = opts.body
  if body ~= nil and type(body) ~= "string" then
    raise("body: expected a string", 3)
  end
  local idle, pool_size = keepalive_of(opts.keepalive)
  local head, herr = M.encode_head(method, u, opts.headers, body, idle == nil, path)
  if not head then return nil, herr end
  if not new_tcp then new_tcp = raw_tcp end
  local ct, wt, rt = timeouts_of(opts.timeout)
  local verify = opts.ssl_verify ~= false
  local pool = u.pool
    or format("https:%s:%d:%s:%d", u.host, u.port, opts.server_name or u.host, verify and 1 or 0)
  -- keepalive = false: a connection of its own (a pool name nothing is ever put in)
  if not idle then pool = pool .. ":once" end
  local st = { ct = ct, wt = wt, rt = rt, idle = idle, pool_size = pool_size or DEFAULT_POOL,
               peer = u.peer,
               pool_opts = pool_opts_of(u, pool, pool_size or DEFAULT_POOL) }
  local max_body = tonumber(opts.max_body) or DEFAULT_MAX_BODY
  if max_body > MAX_BODY_LIMIT or max_body <= 0 then max_body = MAX_BODY_LIMIT end
  if stream then max_body = 0 end
  -- A pooled connection the server closed while it sat idle fails before any response
  -- byte: the request is sent again on another connection, when that is safe.
  for attempt = 1, 3 do
    local ok, oerr, reused = open(st, u, opts, head, body)
    if not ok then
      if reused and IDEMPOTENT[method] and attempt < 3 then goto retry end
      return nil, oerr
    end
    st.parser = get_parser(method == "HEAD", max_body)
    if not st.parser then return fail(st, "out of memory") end
    st.got = false
    do
      local rc, perr, got = pump(st, stream and HR_HEAD or HR_DONE)
      if not rc then
        if reused and not got and IDEMPOTENT[method] and attempt < 3 then
          fail(st, perr)
          goto retry
        end
        return fail(st, perr)
      end
      local p = st.parser
      local res = setmetatable({ status = C.lp_ffi_hresp_status(p), _fields = packed_fields(p),
                                 _st = st }, Response)
      if band(rc, HR_DONE) ~= 0 then
        res.body = take_body(p) or ""
        st.done = true
        finish(st)
      elseif not stream then
        return fail(st, "internal: response incomplete")
      end
      return res
    end
    ::retry::
  end
  return nil, "no connection to " .. st.peer
end

-- proxy.http.request{ method, url, query, headers, body, timeout, ssl_verify, server_name,
-- keepalive, max_body, stream }: res { status, headers, body } or nil, message.
function M.request(opts)
  return request(opts, type(opts) == "table" and opts.stream == true)
end

-- The head only; the body through res:body_reader() (or res:read_body()).
function M.request_stream(opts)
  return request(opts, true)
end

-- An iterator over the body's chunks (strings): nil at the end, or nil, message. For a
-- buffered response, it gives the body once.
function Response:body_reader()
  local st = self._st
  if not st.parser then
    local b = self.body
    return function()
      local out = b
      b = nil
      if out == "" then return nil end
      return out
    end
  end
  return function()
    local p = st.parser
    if not p then
      if st.err then return nil, st.err end
      return nil
    end
    while true do
      local chunk = take_body(p)
      if chunk then return chunk end
      if st.done then
        finish(st)
        return nil
      end
      local rc, err = pump(st, HR_DONE, true)
      if not rc then
        st.err = err
        fail(st, err)
        return nil, err
      end
      if band(rc, HR_DONE) ~= 0 then st.done = true end
      -- the loop hands out what this read added (maybe nothing: a chunk boundary)
    end
  end
end

-- The whole body of a streamed response (also once a reader took part of it: the rest).
function Response:read_body()
  if self.body then return self.body end
  local parts, n = {}, 0
  local reader = self:body_reader()
  while true do
    local chunk, err = reader()
    if err then return nil, err end
    if not chunk then break end
    n = n + 1
    parts[n] = chunk
  end
  self.body = concat(parts)
  return self.body
end

-- Gives up a streamed response before its end: the connection is closed.
function Response:close()
  local st = self._st
  if st.parser then fail(st, "closed") end
  return true
end

-- The response class, for the annotation drift test (lua/luaproxy/tools/api.lua).
M.Response = Response
return M
