-- router: picks the upstream (and rewrites the path) from an ordered list of rules matching
-- host, path, prefix, Lua pattern, PCRE2 regex (proxy.re), methods, headers and query
-- arguments. The first rule that matches wins. The rules are compiled into the engine's
-- router (proxy.router, engine/router.c: the matcher of the config's routes); a Lua pattern
-- is a predicate run on the candidates that remain. Docs: docs/plugins/router.md.
local find, sub, byte = string.find, string.sub, string.byte
local concat = table.concat
local type, ipairs = type, ipairs

local check_lua_pattern = require("luaproxy.schema").check_lua_pattern
local valid_pattern = check_lua_pattern

-- proxy.re (the same module): compiled patterns are cached per worker, so the rules' regexes
-- are compiled once per generation, at load, and found again by string per request.
local re = require "luaproxy.re"
local re_match, re_find = re.match, re.find

local text = require "luaproxy.text"
local valid_host = text.valid_host

local router_new = require("luaproxy.router").new

local rule_fields = {
  host = {
    type = "string", pattern = "^[%w%.%-%*:%[%]]+$", custom = valid_host,
    description = "Host to match, without port: exact (case-insensitive) or *.example.com "
      .. "(any subdomain, not example.com itself). Default: any host",
  },
  sni = {
    type = "string", pattern = "^[%w%.%-%*]+$", custom = valid_host,
    description = "TLS server name (SNI) to match: exact (case-insensitive) or *.example.com; "
      .. "plain-HTTP requests and TLS clients that sent no SNI never match. Default: any",
  },
  path = { type = "string", pattern = "^/", description = "exact path to match. Default: any" },
  prefix = { type = "string", pattern = "^/", description = "path prefix to match. Default: any" },
  pattern = {
    type = "string", custom = valid_pattern,
    description = "Lua pattern the path must match (anchor it with ^ and $); its captures "
      .. "feed rewrite. Default: any",
  },
  path_regex = {
    type = "regex",
    description = "PCRE2 regex the path must match (proxy.re; anchor it with ^ and $, inline "
      .. "(?i) for case-insensitive); its captures, named ones too, go to req.ctx.route_captures "
      .. "and feed rewrite as $1, ${name}. Default: any",
  },
  methods = {
    type = "array", elements = { type = "string", pattern = "^%a+$" },
    description = "methods to match (case-insensitive). Default: any",
  },
  headers = {
    type = "map", keys = { type = "string", pattern = "^[%w!#$%%&'*+%-.^_`|~]+$" },
    values = { type = "string", secret = true },
    description = "request headers that must have exactly these values (secret: GET /config "
      .. "hides them). Default: none",
  },
  header_regex = {
    type = "map", keys = { type = "string", pattern = "^[%w!#$%%&'*+%-.^_`|~]+$" },
    values = { type = "regex" },
    description = "request headers that must be present with a value matching this PCRE2 "
      .. "regex (unanchored unless it says ^ or $). Default: none",
  },
  query_regex = {
    type = "map", values = { type = "regex" },
    description = "query arguments that must be present with a (decoded) value matching this "
      .. "PCRE2 regex. Default: none",
  },
  query = {
    type = "map", values = { type = "string", secret = true },
    description = "query arguments that must have exactly these (decoded) values (secret: "
      .. "GET /config hides them). Default: none",
  },
  upstream = { type = "upstream", description = "upstream to send the request to. Default: unchanged" },
  rewrite = {
    type = "string",
    description = "new path (with ?query to replace the query); with a pattern, %1..%9 are its "
      .. "captures, %0 the whole match and %% a percent sign; with a path_regex, $0, $1.., "
      .. "${name} and $$ (proxy.re.sub templates). Default: unchanged",
  },
  strip_prefix = {
    type = "boolean", default = false,
    description = "remove the matched prefix from the path sent upstream (needs prefix)",
  },
}

local function check_rule(r)
  if r.strip_prefix and not r.prefix then return nil, "strip_prefix needs a prefix" end
  if r.strip_prefix and r.rewrite then return nil, "use either rewrite or strip_prefix" end
  if r.pattern and r.path_regex then return nil, "use either pattern or path_regex" end
  if r.rewrite and not r.pattern and not r.path_regex and sub(r.rewrite, 1, 1) ~= "/" then
    return nil, "rewrite must start with /"
  end
  return true
end

local P = {
  name = "router",
  priority = 2000,
  schema = {
    fields = {
      rules = {
        type = "array", default = {},
        elements = { type = "record", fields = rule_fields, custom = check_rule },
        description = "rules tried in order; the first match routes the request",
      },
      default_upstream = {
        type = "upstream",
        description = "upstream for requests no rule matches. Default: none (the config's "
          .. "route stays in charge)",
      },
    },
  },
}

-- Rewrite templates: a plain string, or an odd-length array with literals at odd indexes
-- and capture numbers (0..9) at even ones.
local function compile_rewrite(s)
  local parts, lit = {}, {}
  local i, n = 1, #s
  while i <= n do
    local p = find(s, "%", i, true)
    if not p then lit[#lit + 1] = sub(s, i); break end
    lit[#lit + 1] = sub(s, i, p - 1)
    local c = byte(s, p + 1)
    if c and c >= 48 and c <= 57 then
      parts[#parts + 1] = concat(lit)
      parts[#parts + 1] = c - 48
      lit = {}
    elseif c == 37 then
      lit[#lit + 1] = "%"
    else
      return nil, "rewrite: % must be followed by a digit or %"
    end
    i = p + 2
  end
  local tail = concat(lit)
  if #parts == 0 then return tail end
  parts[#parts + 1] = tail
  return parts
end

local check_captures = require("luaproxy.schema").check_captures

-- A rewrite template for a path_regex ($N, ${N}, ${name}, $$), checked against the regex:
-- a group it does not have is a config error (proxy.re.sub itself would render "").
local function compile_regex_rewrite(tpl, regex)
  local compiled, err = re.compile(regex)
  if not compiled then return nil, err end
  local parts
  parts, err = re.compile_template(tpl, compiled)
  if not parts then return nil, err end
  for i = 2, #parts, 2 do
    local g = parts[i]
    if type(g) == "number" and g > compiled.ncap then
      return nil, "$" .. g .. " refers to a group the regex does not have (" .. compiled.ncap
        .. (compiled.ncap == 1 and " group)" or " groups)")
    end
  end
  return parts
end


-- A rule's conditions as a proxy.router route. One path condition is indexed (path,
-- prefix or path_regex); a second one, and a Lua pattern, become the route's predicate.
local function rule_route(r)
  local m = { host = r.host, sni = r.sni, methods = r.methods, headers = r.headers,
              query = r.query, header_regex = r.header_regex, query_regex = r.query_regex }
  local checks = {}
  if r.path then
    -- Exact, byte for byte: a path that would read as a :param or *rest pattern is matched
    -- through an escaped regex instead.
    if find(r.path, "/[:*]") then
      m.regex = "^" .. r.path:gsub("[%^%$%.%[%]%(%)%?%*%+%{%}%|\\]", "\\%0") .. "$"
    else
      m.path = r.path
    end
    if r.prefix and sub(r.path, 1, #r.prefix) ~= r.prefix then
      checks[#checks + 1] = function() return false end
    end
  elseif r.prefix then
    m.prefix = r.prefix
  end
  if r.path_regex then
    if m.path or m.prefix or m.regex then
      local rx = r.path_regex
      checks[#checks + 1] = function(path) return re_find(path, rx) ~= nil end
    else
      m.regex = r.path_regex
    end
  end
  if r.pattern then
    local pat = r.pattern
    checks[#checks + 1] = function(path) return find(path, pat) ~= nil end
  end
  if #checks > 0 then
    m.predicate = function(req)
      local path = req:path()
      for i = 1, #checks do
        if not checks[i](path) then return false end
      end
      return true
    end
  end
  return m
end

function P.compile(conf)
  local rules, routes = {}, {}
  for i, r in ipairs(conf.rules) do
    local c = { upstream = r.upstream, strip = r.strip_prefix, prefix_len = r.prefix and #r.prefix,
                pattern = r.pattern, path_regex = r.path_regex }
    if r.rewrite then
      if r.path_regex then
        local tpl, err = compile_regex_rewrite(r.rewrite, r.path_regex)
        if not tpl then return nil, "rules[" .. i .. "].rewrite: " .. err end
        c.regex_rewrite = tpl
      elseif r.pattern then
        local tpl, err = compile_rewrite(r.rewrite)
        if tpl then
          local ok, cerr = check_captures(tpl, r.pattern)
          if not ok then tpl, err = nil, "rewrite: " .. cerr end
        end
        if not tpl then return nil, "rules[" .. i .. "]." .. err end
        c.rewrite = tpl
      else
        c.rewrite = r.rewrite
      end
    end
    rules[i] = c
    routes[i] = rule_route(r)
  end
  local router, err = router_new(routes)
  if not router then return nil, err end
  return { rules = rules, router = router, default_upstream = conf.default_upstream }
end

-- Scratch space for captures and the rewritten path (one request at a time per worker).
local caps, buf = {}, {}

-- A path_regex rewrite from the captures table (false groups render as "").
local function render_regex(tpl, m)
  local n = #tpl
  buf[1] = tpl[1]
  for i = 2, n, 2 do
    local g = tpl[i]
    local v
    if type(g) == "table" then -- a duplicate name (D): the first group that took part
      for j = 1, #g do
        v = m[g[j]]
        if v then break end
      end
    else
      v = m[g]
    end
    buf[i] = v or ""
    buf[i + 1] = tpl[i + 1]
  end
  return concat(buf, "", 1, n)
end


local function render(tpl, path, s, e)
  local n = #tpl
  buf[1] = tpl[1]
  for i = 2, n, 2 do
    local k = tpl[i]
    buf[i] = (k == 0 and sub(path, s, e)) or caps[k] or ""
    buf[i + 1] = tpl[i + 1]
  end
  return concat(buf, "", 1, n)
end

-- req:set_path() replaces the whole target: carry the request's query over unless the new
-- path brings its own.
local function with_query(req, p)
  if find(p, "?", 1, true) then return p end
  local uri = req:uri()
  local q = find(uri, "?", 1, true)
  if q then return p .. sub(uri, q) end
  return p
end

function P.request(req, conf)
  local _, _, i = conf.router:match(req)
  if not i then
    if conf.default_upstream then req:set_upstream(conf.default_upstream) end
    return
  end
  local r = conf.rules[i]
  local path = req:path()
  local s, e, c1, c2, c3, c4, c5, c6, c7, c8, c9
  local m
  if r.pattern then
    s, e, c1, c2, c3, c4, c5, c6, c7, c8, c9 = find(path, r.pattern)
  elseif r.path_regex then
    -- The router matched it; this run gives the captures (numbered and named) for ctx and
    -- the rewrite. A runtime error (match limit) counts as no match; proxy.re said why.
    m = re_match(path, r.path_regex)
    if not m then
      if conf.default_upstream then req:set_upstream(conf.default_upstream) end
      return
    end
  end
  req.ctx.route_rule = i
  if m then req.ctx.route_captures = m end
  if r.upstream then req:set_upstream(r.upstream) end
  local rw = r.rewrite
  if m and r.regex_rewrite then
    rw = render_regex(r.regex_rewrite, m)
    if byte(rw, 1) ~= 47 then rw = "/" .. rw end
    req:set_path(with_query(req, rw))
  elseif rw then
    if type(rw) == "table" then
      -- Like gsub: with no captures in the pattern, %1 is the whole match.
      if c1 == nil then c1 = sub(path, s, e) end
      caps[1], caps[2], caps[3], caps[4], caps[5], caps[6], caps[7], caps[8], caps[9] =
        c1, c2, c3, c4, c5, c6, c7, c8, c9
      rw = render(rw, path, s, e)
      if byte(rw, 1) ~= 47 then rw = "/" .. rw end
    end
    req:set_path(with_query(req, rw))
  elseif r.strip then
    local rest = sub(path, r.prefix_len + 1)
    if byte(rest, 1) ~= 47 then rest = "/" .. rest end
    req:set_path(with_query(req, rest))
  end
end

return P
