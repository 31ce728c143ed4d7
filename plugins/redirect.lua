-- redirect: answers matching requests with a redirect built from a template, and can send
-- every plain-http request to https. Docs: docs/plugins/redirect.md.
local find, sub, lower, byte = string.find, string.sub, string.lower, string.byte
local concat = table.concat
local type, ipairs = type, ipairs

local check_lua_pattern = require("luaproxy.schema").check_lua_pattern
local valid_pattern = check_lua_pattern

local function valid_host(h)
  if find(h, "*", 1, true) and (sub(h, 1, 2) ~= "*." or find(h, "*", 2, true)) then
    return nil, "a wildcard host must look like *.example.com"
  end
  return true
end

local P = {
  name = "redirect",
  priority = 2500,
  schema = {
    fields = {
      https = {
        type = "boolean", default = false,
        description = "redirect every http request to https://<host><uri> (301 for GET and "
          .. "HEAD, 308 otherwise), before the rules",
      },
      rules = {
        type = "array", default = {},
        description = "rules tried in order; the first match answers with its redirect",
        elements = {
          type = "record",
          fields = {
            host = {
              type = "string", pattern = "^[%w%.%-%*:%[%]]+$", custom = valid_host,
              description = "Host to match: exact or *.example.com. Default: any host",
            },
            path = { type = "string", pattern = "^/", description = "exact path. Default: any" },
            prefix = { type = "string", pattern = "^/", description = "path prefix. Default: any" },
            pattern = {
              type = "string", custom = valid_pattern,
              description = "Lua pattern the path must match; captures feed %1..%9 in to. "
                .. "Default: any",
            },
            to = {
              type = "string", required = true,
              description = "target URL or path; $host $uri $path $scheme $method $client_ip "
                .. "$request_id $upstream (or ${name}), $$ for $; with a pattern also %0..%9 "
                .. "and %% for %",
            },
            status = {
              type = "integer", default = 301, one_of = { 301, 302, 303, 307, 308 },
              description = "redirect status",
            },
            keep_query = {
              type = "boolean", default = true,
              description = "append the request's query when the built URL has none",
            },
          },
        },
      },
    },
  },
}

local VARS = {
  client_ip = true, request_id = true, host = true, upstream = true, method = true,
  path = true, uri = true, scheme = true,
}

-- Parses `to` into a plain string or an odd-length array: literals at odd indexes; at even
-- ones a variable name (string) or a capture number (0..9, only when the rule has a
-- pattern). Unknown variables stay as written.
local function compile_to(s, captures)
  local parts, lit = {}, {}
  local i, n = 1, #s
  local special = captures and "[%$%%]" or "%$"
  while i <= n do
    local d = find(s, special, i)
    if not d then lit[#lit + 1] = sub(s, i); break end
    lit[#lit + 1] = sub(s, i, d - 1)
    local c = sub(s, d + 1, d + 1)
    if byte(s, d) == 37 then -- %
      local k = byte(c)
      if k and k >= 48 and k <= 57 then
        parts[#parts + 1] = concat(lit)
        parts[#parts + 1] = k - 48
        lit = {}
      elseif c == "%" then
        lit[#lit + 1] = "%"
      else
        return nil, "% must be followed by a digit or % (write %% for a percent sign)"
      end
      i = d + 2
    elseif c == "$" then
      lit[#lit + 1] = "$"
      i = d + 2
    else
      local name, stop
      if c == "{" then
        local close = find(s, "}", d + 2, true)
        if close then name, stop = sub(s, d + 2, close - 1), close end
      else
        local a, b = find(s, "^[%a_][%w_]*", d + 1)
        if a then name, stop = sub(s, a, b), b end
      end
      if name and VARS[name] then
        parts[#parts + 1] = concat(lit)
        parts[#parts + 1] = name
        lit = {}
        i = stop + 1
      else
        lit[#lit + 1] = "$"
        i = d + 1
      end
    end
  end
  local tail = concat(lit)
  if #parts == 0 then return tail end
  parts[#parts + 1] = tail
  return parts
end
P.compile_to = compile_to

local check_captures = require("luaproxy.schema").check_captures

function P.compile(conf)
  local rules = {}
  local need_host = false
  for i, r in ipairs(conf.rules) do
    local to, err = compile_to(r.to, r.pattern ~= nil)
    if to and r.pattern then
      local ok, cerr = check_captures(to, r.pattern)
      if not ok then to, err = nil, cerr end
    end
    if not to then return nil, "rules[" .. i .. "].to: " .. err end
    local c = { path = r.path, prefix = r.prefix, prefix_len = r.prefix and #r.prefix,
                prefix_pat = r.prefix and "^" .. (r.prefix:gsub("%W", "%%%0")),
                pattern = r.pattern, to = to, status = r.status, keep_query = r.keep_query }
    if r.host then
      need_host = true
      local h = lower(r.host)
      if sub(h, 1, 2) == "*." then
        c.host_suffix, c.host_suffix_len = sub(h, 2), #h - 1
      else
        c.host = h
      end
    end
    rules[i] = c
  end
  return { https = conf.https, rules = rules, need_host = need_host }
end

-- Scratch space (one request at a time per worker).
local caps, buf = {}, {}

local function render(tpl, req, path, s, e)
  local n = #tpl
  buf[1] = tpl[1]
  for i = 2, n, 2 do
    local k = tpl[i]
    local v
    if type(k) == "number" then
      v = (k == 0 and sub(path, s, e)) or caps[k]
    else
      v = req:var(k)
    end
    buf[i] = v or ""
    buf[i + 1] = tpl[i + 1]
  end
  return concat(buf, "", 1, n)
end

function P.request(req, conf)
  if conf.https and req:scheme() == "http" then
    local host = req:host()
    if host ~= "" then
      local m = req:method()
      req:redirect("https://" .. host .. req:uri(), (m == "GET" or m == "HEAD") and 301 or 308)
    end
  end
  local rules = conf.rules
  if #rules == 0 then return end
  local path = req:path()
  local host = conf.need_host and req:host() or ""
  for i = 1, #rules do
    local r = rules[i]
    local ok = true
    if r.host then
      ok = host == r.host
    elseif r.host_suffix then
      local n, sn = #host, r.host_suffix_len
      ok = n > sn and find(host, r.host_suffix, n - sn + 1, true) ~= nil
    end
    if ok and r.path then ok = path == r.path end
    local pp = r.prefix_pat
    if ok and pp then ok = find(path, pp) ~= nil end
    local s, e, c1, c2, c3, c4, c5, c6, c7, c8, c9
    if ok and r.pattern then
      s, e, c1, c2, c3, c4, c5, c6, c7, c8, c9 = find(path, r.pattern)
      ok = s ~= nil
    end
    if ok then
      local url = r.to
      if type(url) == "table" then
        if c1 == nil and s then c1 = sub(path, s, e) end
        caps[1], caps[2], caps[3], caps[4], caps[5], caps[6], caps[7], caps[8], caps[9] =
          c1, c2, c3, c4, c5, c6, c7, c8, c9
        url = render(url, req, path, s, e)
      end
      if r.keep_query and not find(url, "?", 1, true) then
        local uri = req:uri()
        local q = find(uri, "?", 1, true)
        if q then url = url .. sub(uri, q) end
      end
      req.ctx.redirect_rule = i
      req:redirect(url, r.status)
    end
  end
end

return P
