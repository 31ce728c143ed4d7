-- forward_auth: asks an auth service about each request (Traefik's ForwardAuth, nginx's
-- auth_request): a subrequest with the original method, URI and host in X-Forwarded-*
-- headers and the headers chosen. A 2xx lets the request through (copying chosen response
-- headers to it); any other status goes back to the client (with chosen headers and the
-- body); a service that cannot answer gets 503. Verdicts may be cached in a shared dict.
-- Docs: docs/plugins/forward_auth.md.
local common = require "luaproxy.auth_common"
local crypto = require "luaproxy.crypto"

local format, lower, concat = string.format, string.lower, table.concat
local ipairs, type, tostring, tonumber = ipairs, type, tostring, tonumber
local char = string.char

local P = {
  name = "forward_auth",
  priority = 2400, -- after the other auth plugins: it costs a subrequest
}

local TOKEN = "^[!#$%%&'*+.^_`|~%w-]+$"

P.schema = {
  fields = common.with_fields({
    url = { type = "string", required = true, pattern = "^https?://",
            description = "the auth service's URL" },
    method = { type = "string", pattern = "^%u+$",
               description = "method of the subrequest (default: the original request's)" },
    request_headers = {
      type = "array", elements = { type = "string", pattern = TOKEN },
      default = { "Authorization", "Cookie" },
      description = "headers of the original request sent to the auth service",
    },
    upstream_headers = {
      type = "array", elements = { type = "string", pattern = TOKEN }, default = {},
      description = "headers of a 2xx answer copied to the request going upstream (a client's "
        .. "value of such a header is removed when the answer has none)",
    },
    client_headers = {
      type = "array", elements = { type = "string", pattern = TOKEN },
      default = { "WWW-Authenticate", "Location", "Set-Cookie", "Content-Type" },
      description = "headers of a refusal passed on to the client",
    },
    consumer_from = { type = "string", pattern = TOKEN,
                      description = "header of a 2xx answer holding the consumer id "
                        .. "(req.ctx.consumer.id; default: \"anonymous\")" },
    timeout = { type = "duration", default = 5, min = 0.001,
                description = "seconds for each step of the subrequest" },
    ssl_verify = { type = "boolean", default = true, description = "check the service's certificate" },
    max_body = { type = "integer", default = 65536, min = 0,
                 description = "largest refusal body passed on (bytes); a larger answer fails "
                   .. "like an unreachable service" },
    failure_status = { type = "integer", default = 503, min = 400, max = 599,
                       description = "status when the auth service cannot answer (down, timeout, "
                         .. "a 5xx is passed on as it is)" },
    cache_dict = { type = "string", pattern = "^[%w_]+$",
                   description = "shared dict for verdicts (none: no cache)" },
    cache_ttl = { type = "duration", default = 10,
                  description = "seconds a verdict is kept" },
    cache_key_headers = {
      type = "array", elements = { type = "string", pattern = TOKEN },
      description = "headers the cached verdict is keyed on (default: request_headers); the "
        .. "method, host and URI are always part of the key unless cache_by_uri is false",
    },
    cache_by_uri = { type = "boolean", default = true,
                     description = "key cached verdicts by method, host and URI too" },
    cache_statuses = { type = "array", elements = { type = "integer" }, default = { 200, 204, 401, 403 },
                       description = "statuses whose verdicts are cached" },
  }),
}
-- forward_auth forwards the credentials to the auth service, not upstream: hide_credentials
-- applies to the request going upstream (request_headers removed from it).

function P.compile(conf)
  common.compile(conf)
  conf.cache_key_headers = conf.cache_key_headers or conf.request_headers
  conf.cacheable = {}
  for _, s in ipairs(conf.cache_statuses) do conf.cacheable[s] = true end
  conf.up_lower, conf.client_lower = {}, {}
  for i, h in ipairs(conf.upstream_headers) do conf.up_lower[i] = lower(h) end
  for i, h in ipairs(conf.client_headers) do conf.client_lower[i] = lower(h) end
  conf.anonymous = { id = "anonymous", plugin = "forward_auth" }
  conf.prefix = "fa:" .. conf.url .. "\0"
  if conf.cache_dict and proxy.shared and not proxy.shared[conf.cache_dict] then
    return nil, "cache_dict: no shared dict " .. conf.cache_dict
      .. " (declare it in the config's `shared`)"
  end
  return conf
end

local m_results

function P.init_worker(conf)
  m_results = proxy.metrics.counter("forward_auth_results_total",
    "forward_auth verdicts, by result (allowed, refused, failed, cached).", { "result" })
  if conf.cache_dict and not proxy.shared[conf.cache_dict] then
    error("forward_auth: cache_dict: no shared dict " .. conf.cache_dict, 0)
  end
end

-- Cached verdicts are serialised as: status, then NUL-separated header name/value pairs
-- (the headers the verdict needs), then the body; one string.
local SEP = char(0)

local function encode_verdict(status, headers, body)
  local parts = { tostring(status) }
  for i = 1, #headers, 2 do parts[#parts + 1] = headers[i] parts[#parts + 1] = headers[i + 1] end
  parts[#parts + 1] = body or ""
  return concat(parts, SEP)
end

local function decode_verdict(s)
  local parts, n = {}, 0
  for p in (s .. SEP):gmatch("([^%z]*)%z") do n = n + 1 parts[n] = p end
  local headers = {}
  for i = 2, n - 1 do headers[i - 1] = parts[i] end
  return tonumber(parts[1]), headers, parts[n]
end

local function cache_key(req, conf)
  local parts = { conf.prefix }
  if conf.cache_by_uri then
    parts[2] = req:method() .. " " .. req:host() .. req:uri()
  end
  for _, h in ipairs(conf.cache_key_headers) do
    parts[#parts + 1] = h .. ":" .. (req:header(h) or "")
  end
  -- Hashed: credentials are never kept in the dict as they came.
  return crypto.digest(256, concat(parts, "\n"))
end

-- Pairs {name, value, ...} of the answer's headers in `names` (lists repeat the name).
local function pick(res_headers, names)
  local out = {}
  for _, n in ipairs(names) do
    local v = res_headers[n]
    if type(v) == "table" then
      for _, x in ipairs(v) do out[#out + 1] = n out[#out + 1] = x end
    elseif v then
      out[#out + 1] = n out[#out + 1] = v
    end
  end
  return out
end

local function ask(req, conf)
  local headers = {}
  for _, h in ipairs(conf.request_headers) do
    local v = req:header(h)
    if v then headers[h] = v end
  end
  headers["X-Forwarded-Method"] = req:method()
  headers["X-Forwarded-Uri"] = req:uri()
  headers["X-Forwarded-Host"] = req:header("Host") or req:host()
  headers["X-Forwarded-Proto"] = req:scheme()
  headers["X-Forwarded-For"] = req:client_ip()
  local res, err = proxy.http.request {
    method = conf.method or req:method(), url = conf.url, headers = headers,
    timeout = conf.timeout, ssl_verify = conf.ssl_verify, max_body = conf.max_body,
  }
  if not res then return nil, err end
  local st = res.status
  local ok = st >= 200 and st < 300
  local hs = pick(res.headers, ok and conf.upstream_headers or conf.client_headers)
  if ok and conf.consumer_from then
    local v = res.headers[conf.consumer_from]
    if type(v) == "table" then v = v[1] end
    if v then hs[#hs + 1] = ":consumer" hs[#hs + 1] = v end
  end
  return st, hs, not ok and res.body or ""
end

function P.request(req, conf)
  local status, hs, body, key, result
  local dict = conf.cache_dict and proxy.shared[conf.cache_dict]
  if dict then
    key = cache_key(req, conf)
    local v = dict:get(key)
    if v then status, hs, body = decode_verdict(v) result = "cached" end
  end
  if not status then
    local err
    status, hs, body = ask(req, conf)
    if not status then
      err = hs
      if m_results then m_results:inc(1, "failed") end
      proxy.log.warn(format("forward_auth: %s: %s", conf.url, tostring(err)))
      common.clear_consumer(req, conf)
      return req:respond(conf.failure_status, "authentication service unavailable\n",
        { ["Content-Type"] = "text/plain" })
    end
    if dict and conf.cacheable[status] then
      dict:set(key, encode_verdict(status, hs, body), conf.cache_ttl)
    end
  end
  if status >= 200 and status < 300 then
    if m_results then m_results:inc(1, result or "allowed") end
    local consumer
    -- A header the service did not send must not come from the client either.
    for _, n in ipairs(conf.upstream_headers) do req:clear_header(n) end
    for i = 1, #hs, 2 do
      if hs[i] == ":consumer" then
        consumer = { id = hs[i + 1], plugin = "forward_auth" }
      else
        req:add_header(hs[i], hs[i + 1])
      end
    end
    if conf.hide_credentials then
      for _, n in ipairs(conf.request_headers) do req:clear_header(n) end
    end
    common.set_consumer(req, conf, consumer or conf.anonymous)
    return
  end
  if m_results then m_results:inc(1, result or "refused") end
  proxy.log.info(format("forward_auth: %s answered %d for %s", conf.url, status, req:client_ip()))
  common.clear_consumer(req, conf)
  local out = {}
  for i = 1, #hs, 2 do
    local n = hs[i]
    local prev = out[n]
    if prev == nil then out[n] = hs[i + 1]
    elseif type(prev) == "table" then prev[#prev + 1] = hs[i + 1]
    else out[n] = { prev, hs[i + 1] } end
  end
  -- A status outside what a client should see from an auth check (1xx, 3xx without
  -- Location...) is passed on as it is: the service decides.
  if status < 200 then status = 502 end
  return req:respond(status, body, out)
end



return P
