-- cors: Cross-Origin Resource Sharing (the Fetch standard's CORS protocol). Answers
-- preflights locally and adds the CORS headers to every response, the proxy's own error
-- pages and other plugins' local answers included. Docs: docs/plugins/cors.md.
local vary = require "luaproxy.vary"

local find, lower, match, concat = string.find, string.lower, string.match, table.concat
local ipairs, pairs, tostring = ipairs, pairs, tostring

-- Origins longer than this are not allowed, whatever the config says: a real one is a
-- scheme, a host and a port (RFC 6454), far shorter.
local MAX_ORIGIN = 512
-- Access-Control-Request-Headers echoed back (allow_headers unset) longer than this are
-- not echoed: the preflight then allows no extra header.
local MAX_REQUEST_HEADERS = 2048

local TOKEN = "^[%w!#$%%&'*+%-.^_`|~]+$"

local function list_of(what, pattern)
  return { type = "array", default = {},
    elements = { type = "string", pattern = pattern or TOKEN }, description = what }
end

local P = {
  name = "cors",
  -- Above the auth plugins: a preflight carries no credentials and must be answered before
  -- anything asks for them; below ip_filter (2800) and waf (2700), which refuse addresses
  -- and shapes before any other work.
  priority = 2600,
  schema = {
    fields = {
      origins = {
        type = "array", default = { "*" },
        elements = { type = "string", pattern = "^[^%s,]+$" },
        description = "allowed origins: \"*\" (any), exact (\"https://app.example.com\", "
          .. "\"null\"), or one wildcard label (\"https://*.example.com\": any subdomain, not "
          .. "the bare domain)",
      },
      origin_regex = {
        type = "array", default = {},
        elements = { type = "regex", options = "i" },
        description = "allowed origins as proxy.re patterns (caseless); a pattern must match "
          .. "the whole origin",
      },
      methods = list_of("methods a preflight allows (Access-Control-Allow-Methods)"),
      allow_headers = {
        type = "array",
        elements = { type = "string", pattern = TOKEN },
        description = "request headers a preflight allows; unset: the headers the preflight "
          .. "asks for are echoed (Access-Control-Request-Headers)",
      },
      expose_headers = list_of("response headers scripts may read (Access-Control-Expose-Headers)"),
      credentials = { type = "boolean", default = false,
        description = "allow cookies and HTTP auth (Access-Control-Allow-Credentials: true); "
          .. "the allowed origin is then echoed, never \"*\"" },
      max_age = { type = "integer", min = 0, default = 600,
        description = "seconds browsers may cache a preflight's answer (Access-Control-Max-Age)" },
      preflight_status = { type = "integer", default = 204, one_of = { 200, 204 },
        description = "status of the local preflight answer" },
    },
  },
}

-- ---- compile ----
function P.compile(conf)
  local c = { exact = {}, suffixes = {}, regexes = conf.origin_regex, any = false }
  for i, o in ipairs(conf.origins) do
    local lo = lower(o)
    if lo == "*" then
      c.any = true
    elseif find(lo, "*", 1, true) then
      local scheme, rest = match(lo, "^(%a[%w+.-]*://)%*(%.[^*/]+)$")
      if not scheme then
        return nil, "origins[" .. i .. "]: a wildcard must be the first label: "
          .. "\"https://*.example.com\""
      end
      c.suffixes[#c.suffixes + 1] = { scheme, rest }
    else
      if lo ~= "null" and not match(lo, "^%a[%w+.-]*://[^/?#]+$") then
        return nil, "origins[" .. i .. "]: expected \"scheme://host[:port]\" (no path), "
          .. "\"null\" or \"*\""
      end
      c.exact[lo] = true
    end
  end
  c.credentials = conf.credentials
  -- Only "*" without credentials gives every origin the same answer: anything else
  -- depends on Origin, so caches must keep answers apart (Vary: Origin), also for requests
  -- without one and for origins that are refused.
  c.star = c.any and not conf.credentials
  c.varies = not c.star
  local methods = conf.methods
  if #methods == 0 then methods = { "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE" } end
  c.allow_methods = concat(methods, ", ")
  c.allow_headers = conf.allow_headers and concat(conf.allow_headers, ", ") or nil
  c.expose = #conf.expose_headers > 0 and concat(conf.expose_headers, ", ") or nil
  c.max_age = tostring(conf.max_age)
  c.preflight_status = conf.preflight_status
  c.memo, c.nmemo = {}, 0
  c.pre, c.npre = {}, 0 -- preflight headers per allowed origin
  if c.allow_headers == nil then
    c.vary_preflight = c.varies and "Origin, Access-Control-Request-Headers"
      or "Access-Control-Request-Headers"
  else
    c.vary_preflight = c.varies and "Origin" or nil
  end
  c.refused_headers = { Vary = c.vary_preflight }
  return c
end

-- ---- origin check ----
local re_find -- proxy.re.find, looked up at the first regex (proxy is the engine's global)

local function allowed_uncached(c, o)
  if c.any then return true end
  local lo = lower(o)
  if c.exact[lo] then return true end
  local suffixes = c.suffixes
  for i = 1, #suffixes do
    local s = suffixes[i]
    local scheme, rest = s[1], s[2]
    -- scheme://LABEL.rest with LABEL (one or more labels) not empty, no path.
    if lo:sub(1, #scheme) == scheme and #lo > #scheme + #rest and lo:sub(-#rest) == rest then
      local host = lo:sub(#scheme + 1, #lo - #rest)
      if match(host, "^[%w-][%w.-]*$") and not find(host, "..", 1, true)
        and host:sub(-1) ~= "." then
        return true
      end
    end
  end
  local regexes = c.regexes
  if #regexes > 0 then
    re_find = re_find or proxy.re.find
    for i = 1, #regexes do
      local from, to = re_find(o, regexes[i], "i")
      if from == 1 and to == #o then return true end
    end
  end
  return false
end

-- Per-entry memo of origin -> allowed (a site sees few origins), reset past MEMO_MAX.
local MEMO_MAX = 512

local function allowed(c, o)
  if o == nil or #o > MAX_ORIGIN then return false end
  local ok = c.memo[o]
  if ok == nil then
    ok = allowed_uncached(c, o)
    if c.nmemo >= MEMO_MAX then c.memo, c.nmemo = {}, 0 end
    c.memo[o], c.nmemo = ok, c.nmemo + 1
  end
  return ok
end
P.allowed = allowed

-- "X-A, x-b" as asked by a preflight: echoed when every element is a token.
local function echo_headers(v)
  if #v > MAX_REQUEST_HEADERS then return nil end
  for el in v:gmatch("[^,]+") do
    local t = match(el, "^[ \t]*(.-)[ \t]*$")
    if t ~= "" and not match(t, TOKEN) then return nil end
  end
  return v
end

-- ---- phases ----
-- The preflight answer's headers for an allowed origin, built once per origin (bounded
-- with the origin memo) rather than per request; the echoed request headers, when
-- allow_headers is unset, are added to a copy.
local function preflight_headers(c, origin)
  local key = c.star and "*" or origin
  local h = c.pre[key]
  if h then return h end
  h = {
    ["Access-Control-Allow-Origin"] = key,
    ["Access-Control-Allow-Methods"] = c.allow_methods,
    ["Access-Control-Max-Age"] = c.max_age,
    ["Vary"] = c.vary_preflight,
  }
  if c.credentials then h["Access-Control-Allow-Credentials"] = "true" end
  if c.allow_headers and c.allow_headers ~= "" then
    h["Access-Control-Allow-Headers"] = c.allow_headers
  end
  if c.npre >= MEMO_MAX then c.pre, c.npre = {}, 0 end
  c.pre[key], c.npre = h, c.npre + 1
  return h
end

function P.request(req, c)
  if req:method() ~= "OPTIONS" then return end
  local acrm = req:header("Access-Control-Request-Method")
  if acrm == nil then return end -- a plain OPTIONS request: the upstream's business
  local origin = req:header("Origin")
  req.ctx.cors_preflight = true
  local h
  if allowed(c, origin) then
    h = preflight_headers(c, origin)
    if c.allow_headers == nil then
      local acrh = req:header("Access-Control-Request-Headers")
      acrh = acrh and echo_headers(acrh)
      if acrh and acrh ~= "" then
        local copy = {}
        for k, v in pairs(h) do copy[k] = v end
        copy["Access-Control-Allow-Headers"] = acrh
        h = copy
      end
    end
  else
    -- Refused (or no Origin): still answered here, without CORS headers, so the browser
    -- fails the preflight and the upstream never sees it.
    h = c.refused_headers
  end
  return req:respond(c.preflight_status, nil, h)
end

function P.response(req, c)
  if req.ctx.cors_preflight then return end -- answered with its headers already
  local origin = req:header("Origin")
  if origin ~= nil and allowed(c, origin) then
    req:set_resp_header("Access-Control-Allow-Origin", c.star and "*" or origin)
    if c.credentials then req:set_resp_header("Access-Control-Allow-Credentials", "true") end
    if c.expose then req:set_resp_header("Access-Control-Expose-Headers", c.expose) end
  end
  if c.varies then vary.add(req, "Origin") end
end

return P
