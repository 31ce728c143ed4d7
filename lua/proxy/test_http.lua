-- proxy.test's fake proxy.http: answers scripted by the spec (T.http_mock), with the
-- engine client's argument checks (the same URL parser and request encoder,
-- luaproxy.http), its result shapes and its errors. See docs/testing-plugins.md.
local http = require "luaproxy.http"

local type, tostring, tonumber, pairs, ipairs, setmetatable, error = type, tostring,
  tonumber, pairs, ipairs, setmetatable, error
local find, lower, upper, sub, format = string.find, string.lower, string.upper, string.sub,
  string.format

local M = {}

-- Installs the fake into `fake` (the fake proxy module) and the spec helpers into T.
-- `wait(seconds)` is the double's proxy.sleep: a call yields where the engine would.
function M.install(T, fake, wait)
  local mocks = {}
  T.http_requests = {}

  -- T.http_mock(url, answer): `url` is a whole URL (exact match, query included) or a Lua
  -- pattern tried against it; `answer` is { status =, headers =, body =, chunks =, delay = }
  -- or function(req) returning one (or nil, "message": the call's error). Later mocks win.
  function T.http_mock(url, answer)
    if type(url) ~= "string" then error("T.http_mock: expected a URL or a pattern", 2) end
    local t = type(answer)
    if t ~= "table" and t ~= "function" then
      error("T.http_mock: expected a response table or a function(req)", 2)
    end
    mocks[#mocks + 1] = { url = url, answer = answer }
  end

  function T.http_reset()
    mocks = {}
    T.http_requests = {}
  end

  local function find_mock(url)
    for i = #mocks, 1, -1 do
      if mocks[i].url == url then return mocks[i] end
    end
    for i = #mocks, 1, -1 do
      local ok, hit = pcall(find, url, mocks[i].url)
      if ok and hit then return mocks[i] end
    end
  end

  local Response = {}
  Response.__index = Response

  function Response:body_reader()
    local chunks = self._chunks
    local i = 0
    return function()
      i = i + 1
      local c = chunks[i]
      if c == nil then self._chunks = {} end
      return c
    end
  end

  function Response:read_body()
    if self.body then return self.body end
    local parts = {}
    for c in self:body_reader() do parts[#parts + 1] = c end
    self.body = table.concat(parts)
    return self.body
  end

  function Response:close()
    self._chunks = {}
    return true
  end

  local function headers_of(h)
    local out = setmetatable({}, http.Headers)
    for name, value in pairs(h or {}) do
      local l = lower(tostring(name))
      if type(value) == "table" then
        local copy = {}
        for i, v in ipairs(value) do copy[i] = tostring(v) end
        out[l] = copy
      else
        out[l] = tostring(value)
      end
    end
    return out
  end

  local function request(opts, stream)
    if type(opts) ~= "table" then error("proxy.http: request: expected a table of options", 3) end
    local method = opts.method or "GET"
    if type(method) ~= "string" then error("proxy.http: method: expected a string", 3) end
    method = upper(method)
    local u, err = http.parse_url(opts.url)
    if not u then return nil, err end
    if opts.body ~= nil and type(opts.body) ~= "string" then
      error("proxy.http: body: expected a string", 3)
    end
    if opts.timeout ~= nil and type(opts.timeout) ~= "number" and type(opts.timeout) ~= "table" then
      error("proxy.http: timeout: expected seconds or { connect, send, read }", 3)
    end
    local url = opts.url
    if opts.query ~= nil then
      local q = http.query_string(opts.query)
      if q ~= "" then
        local base = url:match("^[^#]*")
        url = base .. (find(base, "?", 1, true) and "&" or "?") .. q
      end
    end
    local head, herr = http.encode_head(method, u, opts.headers, opts.body, opts.keepalive == false)
    if not head then return nil, herr end
    local req = { method = method, url = url, path = u.path, host = u.host, port = u.port,
                  scheme = u.scheme, headers = headers_of(opts.headers), body = opts.body,
                  timeout = opts.timeout, ssl_verify = opts.ssl_verify ~= false,
                  keepalive = opts.keepalive, stream = stream }
    T.http_requests[#T.http_requests + 1] = req
    local m = find_mock(url)
    wait(0) -- the engine's call waits on the network: it yields
    if not m then
      return nil, "connect to " .. u.host .. ":" .. u.port .. ": connection refused (proxy.test: no T.http_mock for " .. url .. ")"
    end
    local answer = m.answer
    if type(answer) == "function" then
      local a, e = answer(req)
      if a == nil then return nil, e end
      answer = a
    end
    local delay = tonumber(answer.delay) or 0
    if delay > 0 then
      local t = opts.timeout
      local limit = type(t) == "number" and t or type(t) == "table" and tonumber(t.read) or 10
      if delay >= limit then
        wait(limit)
        return nil, "timeout reading from " .. u.host .. ":" .. u.port
      end
      wait(delay)
    end
    local chunks = answer.chunks
    local body = answer.body
    if chunks == nil then chunks = (body ~= nil and body ~= "") and { body } or {} end
    if body == nil then body = table.concat(chunks) end
    local status = answer.status or 200
    if method == "HEAD" or status == 204 or status == 304 then
      body, chunks = "", {}
    end
    local res = setmetatable({ status = status, headers = headers_of(answer.headers),
                               _chunks = chunks }, Response)
    if not stream then res.body = body end
    return res
  end

  fake.http = {
    request = function(opts) return request(opts, type(opts) == "table" and opts.stream == true) end,
    request_stream = function(opts) return request(opts, true) end,
    parse_url = http.parse_url,
  }
end

return M
