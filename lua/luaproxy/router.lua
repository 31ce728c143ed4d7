-- proxy.router: the engine's compiled router (engine/router.c, docs/routing.md) for Lua.
-- `proxy.router.new(routes)` compiles a table of routes once; `r:match(req)` returns the
-- first route (in order) whose conditions hold, and its captures. Used by the bundled
-- router plugin; docs/lua-api.md.
--
-- The functions are the engine's (ffi.C); under the proxy.test double, the lp_native
-- library's (luaproxy.native).
local ffi = require "ffi"
local C = require "luaproxy.native"

local ffi_string, ffi_gc = ffi.string, ffi.gc
local type, pairs, ipairs, tostring, error = type, pairs, ipairs, tostring, error
local find, sub, format = string.find, string.sub, string.format


local M = {}

-- engine/router.h
local RK = { host = 1, path = 2, prefix = 3, regex = 4, methods = 5, header = 6, query = 7,
             cidr = 8, sni = 9, predicate = 10 }
local RM_PRESENT, RM_EQUAL, RM_REGEX = 0, 1, 2
local MAX_CAPS = 16

local KNOWN = { host = true, sni = true, prefix = true, path = true, regex = true, methods = true,
                headers = true, header_regex = true, query = true, query_regex = true,
                cidr = true, predicate = true }

local errbuf = ffi.new("char[256]")

local Router = {}
Router.__index = Router

local function add(b, i, kind, mode, name, value)
  name = name and tostring(name)
  local rc = C.lp_ffi_router_add(b, kind, mode, name, name and #name or 0, value,
                                 value and #value or 0, errbuf, 256)
  if rc ~= 0 then
    return nil, format("routes[%d]: %s", i, ffi_string(errbuf))
  end
  return true
end

local function add_route(b, i, m)
  if type(m) ~= "table" then return nil, format("routes[%d]: expected a table", i) end
  for k in pairs(m) do
    if not KNOWN[k] then return nil, format("routes[%d]: unknown condition %q", i, tostring(k)) end
  end
  local ok, err = true, nil
  local function str(kind, v, what)
    if v == nil or not ok then return end
    if type(v) ~= "string" then
      ok, err = nil, format("routes[%d].%s: expected a string", i, what)
      return
    end
    ok, err = add(b, i, kind, 0, nil, v)
  end
  local function list(kind, v, what)
    if type(v) == "table" then
      for _, x in ipairs(v) do str(kind, x, what) end
    else
      str(kind, v, what)
    end
  end
  local function map(kind, v, regex, what)
    if v == nil or not ok then return end
    if type(v) ~= "table" then
      ok, err = nil, format("routes[%d].%s: expected a table", i, what)
      return
    end
    for name, val in pairs(v) do
      if not ok then return end
      if type(val) == "string" then
        ok, err = add(b, i, kind, regex and RM_REGEX or RM_EQUAL, name, val)
      elseif val == true and not regex then
        ok, err = add(b, i, kind, RM_PRESENT, name, nil)
      else
        ok, err = nil, format("routes[%d].%s.%s: expected a string%s", i, what, tostring(name),
                              regex and "" or " or true")
      end
    end
  end
  str(RK.host, m.host, "host")
  str(RK.sni, m.sni, "sni")
  str(RK.prefix, m.prefix, "prefix")
  str(RK.path, m.path, "path")
  str(RK.regex, m.regex, "regex")
  list(RK.methods, m.methods, "methods")
  list(RK.cidr, m.cidr, "cidr")
  map(RK.header, m.headers, false, "headers")
  map(RK.header, m.header_regex, true, "header_regex")
  map(RK.query, m.query, false, "query")
  map(RK.query, m.query_regex, true, "query_regex")
  if ok and m.predicate ~= nil then
    if type(m.predicate) ~= "function" then
      return nil, format("routes[%d].predicate: expected a function", i)
    end
    ok, err = add(b, i, RK.predicate, 0, nil, nil)
  end
  return ok, err
end

-- Compiles routes (an array; each a table of conditions, or a table with a `match` table
-- of them). Returns the router, or nil and a message.
function M.new(routes)
  if type(routes) ~= "table" then return nil, "proxy.router.new: expected an array of routes" end
  local b = C.lp_ffi_router_builder()
  if b == nil then return nil, "out of memory" end
  local conds = {}
  for i, route in ipairs(routes) do
    if type(route) ~= "table" then
      C.lp_ffi_router_builder_free(b)
      return nil, format("routes[%d]: expected a table", i)
    end
    local m = type(route.match) == "table" and route.match or route
    if m == route then
      -- Keys of the route that are not conditions are the caller's (upstream, ...).
      local only = {}
      for k, v in pairs(route) do if KNOWN[k] then only[k] = v end end
      m = only
    end
    conds[i] = m
    local ok, err
    if C.lp_ffi_router_route(b) < 0 then ok, err = nil, "out of memory" else ok, err = add_route(b, i, m) end
    if not ok then
      C.lp_ffi_router_builder_free(b)
      return nil, err
    end
  end
  local r = C.lp_ffi_router_finish(b, errbuf, 256)
  if r == nil then return nil, ffi_string(errbuf) end
  r = ffi_gc(r, C.lp_ffi_router_free)
  local self = setmetatable({ _r = r, routes = routes, _conds = conds, _keep = {} }, Router)
  local hn, qn = {}, {}
  for j = 0, C.lp_ffi_router_nnames(r, RK.header) - 1 do
    hn[j + 1] = ffi_string(C.lp_ffi_router_name(r, RK.header, j))
  end
  for j = 0, C.lp_ffi_router_nnames(r, RK.query) - 1 do
    qn[j + 1] = ffi_string(C.lp_ffi_router_name(r, RK.query, j))
  end
  self._hnames, self._qnames = hn, qn
  self._hvals = ffi.new("lp_str_t[?]", #hn + 1)
  self._qvals = ffi.new("lp_str_t[?]", #qn + 1)
  local need_sni, need_ip = false, false
  for _, m in ipairs(conds) do
    if m.sni then need_sni = true end
    if m.cidr then need_ip = true end
  end
  self._sni, self._ip = need_sni, need_ip
  return self
end

-- Scratch for lookups (one at a time per VM).
local inb = ffi.new("lp_str_t[5]")
local meta = ffi.new("int[2]")
local names = ffi.new("lp_str_t[?]", MAX_CAPS)
local values = ffi.new("lp_str_t[?]", MAX_CAPS)

local function set(slot, s)
  if s then
    slot.base, slot.len = s, #s
  else
    slot.base, slot.len = nil, 0
  end
end

-- The first route whose conditions hold for req (a request handle, or the proxy.test
-- double), and its captures ({ name = value }); nil when none. A route's predicate is called
-- as predicate(req, captures) once the rest matched.
function Router:match(req)
  local path = req:path()
  local q = find(path, "?", 1, true)
  if q then path = sub(path, 1, q - 1) end
  local method, host = req:method(), req:host()
  local sni = self._sni and req:var("ssl_server_name") or nil
  local ip = self._ip and req:client_ip() or nil
  -- C reads these strings through pointers: the router's _keep table holds them until the
  -- next lookup (a local would not do: compiled code may drop a dead one before the call).
  local keep = self._keep
  keep.method, keep.host, keep.path, keep.sni, keep.ip = method, host, path, sni, ip
  set(inb[0], method)
  set(inb[1], host)
  set(inb[2], path)
  set(inb[3], sni)
  set(inb[4], ip)
  local hn, qn = self._hnames, self._qnames
  for j = 1, #hn do
    local v = req:header(hn[j])
    keep[j] = v
    set(self._hvals[j - 1], v)
  end
  for j = 1, #qn do
    local v = req:query(qn[j])
    if type(v) ~= "string" then v = nil end
    keep[#hn + j] = v
    set(self._qvals[j - 1], v)
  end
  local from = 0
  while true do
    local idx = C.lp_ffi_router_match(self._r, inb, self._hvals, self._qvals, from, meta, names,
                                      values)
    if idx < 0 then return nil end
    local caps = {}
    for j = 0, meta[0] - 1 do
      caps[ffi_string(names[j].base, names[j].len)] = ffi_string(values[j].base, values[j].len)
    end
    if meta[1] == 0 or self._conds[idx + 1].predicate(req, caps) then
      return self.routes[idx + 1], caps, idx + 1
    end
    from = idx + 1
  end
end

M.Router = Router
return M
