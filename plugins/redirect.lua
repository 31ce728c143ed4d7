-- redirect: answers matching requests with a redirect built from a template, and can send
-- every plain-http request to https. Docs: docs/plugins/redirect.md.
local find, sub = string.find, string.sub
local type, ipairs = type, ipairs

local check_lua_pattern = require("luaproxy.schema").check_lua_pattern
local valid_pattern = check_lua_pattern

local text = require "luaproxy.text"
local valid_host, compile_name, name_matches = text.valid_host, text.compile_name,
  text.name_matches

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

-- Parses `to` (luaproxy.text): variables, and capture numbers %0..%9 only when the rule has
-- a pattern. Unknown variables stay as written.
local function compile_to(s, captures)
  return text.compile(s, VARS, captures)
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
      c.host, c.host_suffix, c.host_suffix_len = compile_name(r.host)
    end
    rules[i] = c
  end
  return { https = conf.https, rules = rules, need_host = need_host }
end

-- Captures of the matching rule (one request at a time per worker).
local caps = {}

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
    if r.host or r.host_suffix then
      ok = name_matches(host, r.host, r.host_suffix, r.host_suffix_len)
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
        url = text.render(url, req, caps, path, s, e)
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
