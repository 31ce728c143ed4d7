-- router: picks the upstream (and rewrites the path) from an ordered list of rules matching
-- host, path, prefix, Lua pattern, PCRE2 regex (proxy.re), methods, headers and query
-- arguments. The first rule that matches wins. Docs: docs/plugins/router.md.
local find, sub, lower, upper, byte = string.find, string.sub, string.lower, string.upper,
  string.byte
local concat, sort = table.concat, table.sort
local type, pairs, ipairs = type, pairs, ipairs

local check_lua_pattern = require("luaproxy.schema").check_lua_pattern
local valid_pattern = check_lua_pattern

-- proxy.re (the same module): compiled patterns are cached per worker, so the rules' regexes
-- are compiled once per generation, at load, and found again by string per request.
local re = require "luaproxy.re"
local re_match, re_find = re.match, re.find

local text = require "luaproxy.text"
local valid_host, compile_name, name_matches = text.valid_host, text.compile_name,
  text.name_matches

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

local function sorted_pairs_arrays(map, lower_keys)
  local names, values = {}, {}
  for k in pairs(map) do names[#names + 1] = k end
  sort(names)
  for i, k in ipairs(names) do
    values[i] = map[k]
    if lower_keys then names[i] = lower(k) end
  end
  return names, values
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


function P.compile(conf)
  local rules = {}
  local need_host, need_method = false, false
  for i, r in ipairs(conf.rules) do
    local c = { upstream = r.upstream, strip = r.strip_prefix, path = r.path,
                prefix = r.prefix, prefix_len = r.prefix and #r.prefix,
                prefix_pat = r.prefix and "^" .. (r.prefix:gsub("%W", "%%%0")), pattern = r.pattern }
    if r.host then
      need_host = true
      c.host, c.host_suffix, c.host_suffix_len = compile_name(r.host)
    end
    if r.sni then c.sni, c.sni_suffix, c.sni_suffix_len = compile_name(r.sni) end
    if r.methods and #r.methods > 0 then
      need_method = true
      c.methods = {}
      for _, m in ipairs(r.methods) do c.methods[upper(m)] = true end
    end
    if r.headers and next(r.headers) then
      c.hnames, c.hvalues = sorted_pairs_arrays(r.headers, true)
    end
    if r.query and next(r.query) then
      c.qnames, c.qvalues = sorted_pairs_arrays(r.query, false)
    end
    if r.header_regex and next(r.header_regex) then
      c.hrnames, c.hrvalues = sorted_pairs_arrays(r.header_regex, true)
    end
    if r.query_regex and next(r.query_regex) then
      c.qrnames, c.qrvalues = sorted_pairs_arrays(r.query_regex, false)
    end
    c.path_regex = r.path_regex
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
  end
  return { rules = rules, need_host = need_host, need_method = need_method,
           default_upstream = conf.default_upstream }
end

-- Scratch space for captures and the rewritten path (one request at a time per worker).
local caps, buf = {}, {}

-- Everything but the pattern and path_regex; cheapest checks first (regexes last).
local function match(r, req, host, method, path)
  local m = r.methods
  if m and not m[method] then return false end
  if (r.host or r.host_suffix)
      and not name_matches(host, r.host, r.host_suffix, r.host_suffix_len) then
    return false
  end
  if r.sni or r.sni_suffix then
    local sni = req:var("ssl_server_name")
    if not sni or not name_matches(sni, r.sni, r.sni_suffix, r.sni_suffix_len) then
      return false
    end
  end
  if r.path and path ~= r.path then return false end
  -- An anchored plain pattern: stops at the first differing byte, builds no substring.
  local pp = r.prefix_pat
  if pp and not find(path, pp) then return false end
  local names = r.hnames
  if names then
    local values = r.hvalues
    for i = 1, #names do
      if req:header(names[i]) ~= values[i] then return false end
    end
  end
  names = r.qnames
  if names then
    local values = r.qvalues
    for i = 1, #names do
      if req:query(names[i]) ~= values[i] then return false end
    end
  end
  names = r.hrnames
  if names then
    local values = r.hrvalues
    for i = 1, #names do
      local v = req:header(names[i])
      if not v or not re_find(v, values[i]) then return false end
    end
  end
  names = r.qrnames
  if names then
    local values = r.qrvalues
    for i = 1, #names do
      local v = req:query(names[i])
      if not v or not re_find(v, values[i]) then return false end
    end
  end
  return true
end

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
  local path = req:path()
  local host = conf.need_host and req:host() or ""
  local method = conf.need_method and req:method() or ""
  local rules = conf.rules
  for i = 1, #rules do
    local r = rules[i]
    if match(r, req, host, method, path) then
      local s, e, c1, c2, c3, c4, c5, c6, c7, c8, c9
      local pattern, rx, m = r.pattern, r.path_regex, nil
      if pattern then
        s, e, c1, c2, c3, c4, c5, c6, c7, c8, c9 = find(path, pattern)
      elseif rx then
        -- A runtime error (match limit) counts as no match; proxy.re has said why.
        m = re_match(path, rx)
      end
      if (pattern and s) or (rx and m) or not (pattern or rx) then
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
        return
      end
    end
  end
  if conf.default_upstream then req:set_upstream(conf.default_upstream) end
end

return P
