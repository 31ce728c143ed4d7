-- The Lua API as data, from two sides: what the LuaLS annotations (lua/types/*.lua) declare,
-- and what a running VM exports. The annotation drift test compares both
-- (tests/integration/test_api_types.py, spec/luaproxy/api_types_spec.lua); `luaproxy check`
-- takes the accepted globals and request methods from the annotations.
--
-- Names are "CLASS.member", CLASS being the annotation's class: "proxy.log.err",
-- "proxy.Request.header", "proxy.SharedDict.incr", "proxy.metrics.Counter.inc".
local type, pairs, ipairs, getmetatable, sort = type, pairs, ipairs, getmetatable, table.sort
local io_open = io.open

local M = {}

-- ---- annotations ----

-- Parses annotation files; returns { classes = { NAME = { parent =, functions = { m = true },
-- fields = { f = true } } } }. Only the conventions lua/types/proxy.lua states are read.
function M.parse(paths)
  local classes = {}
  local var_class = {}
  for _, path in ipairs(paths) do
    local f = assert(io_open(path, "r"))
    local pending -- the class a `---@class` line opened, waiting for its table line
    local lineno = 0
    for line in f:lines() do
      lineno = lineno + 1
      local cname, parent = line:match("^%-%-%-@class%s+([%w_%.]+)%s*:?%s*([%w_%.]*)")
      if cname then
        classes[cname] = classes[cname] or { functions = {}, fields = {}, file = path, line = lineno }
        if parent ~= "" then classes[cname].parent = parent end
        pending = cname
      elseif pending and line:match("^%-%-%-@field") then
        local fname, ftype = line:match("^%-%-%-@field%s+([%w_]+)%??%s+(.*)$")
        if fname then
          if ftype:match("^fun%(") then classes[pending].functions[fname] = lineno
          else classes[pending].fields[fname] = lineno end
        end
      elseif pending then
        local var = line:match("^local%s+([%w_]+)%s*=%s*{%s*}") or line:match("^([%w_%.]+)%s*=%s*{%s*}")
        if var then var_class[var] = pending end
        if not line:match("^%-%-%-") then pending = nil end
      end
      local var, fname = line:match("^function%s+([%w_%.]+)[%.:]([%w_]+)%s*%(")
      if var then
        local cname2 = var_class[var]
        if not cname2 then
          error(path .. ":" .. lineno .. ": function on " .. var .. ", which no ---@class names")
        end
        classes[cname2].functions[fname] = lineno
      end
    end
    f:close()
  end
  return { classes = classes }
end

-- Every function a class has, its parents' included: { name = true }.
function M.functions_of(api, cname)
  local out = {}
  local c = api.classes[cname]
  local guard = 0
  while c and guard < 16 do
    for k in pairs(c.functions) do out[k] = true end
    c = c.parent and api.classes[c.parent]
    guard = guard + 1
  end
  return out
end

-- The flat list "CLASS.member" of every annotated function, sorted.
function M.annotated(api, only)
  local out = {}
  for cname in pairs(api.classes) do
    if not only or only[cname] then
      for f in pairs(M.functions_of(api, cname)) do out[#out + 1] = cname .. "." .. f end
    end
  end
  sort(out)
  return out
end

-- ---- a running VM ----

-- The fields reachable from t: its own, then through each metatable's __index table.
local function members(t)
  local out, seen, cur = {}, {}, t
  while type(cur) == "table" and not seen[cur] do
    seen[cur] = true
    for k, v in pairs(cur) do
      if type(k) == "string" and out[k] == nil then out[k] = v end
    end
    local mt = getmetatable(cur)
    cur = mt and type(mt.__index) == "table" and mt.__index or nil
  end
  return out
end
M.members = members

-- Walks the values `roots` names ({ { "CLASS", value, { sub = "CLASS" } }, ... }) and returns
-- the sorted list "CLASS.member" of their functions. Names starting with "_" are private.
-- A table member listed in a root's `sub` map is walked as that class; others are not.
function M.walk(roots)
  local out = {}
  local function walk(cname, value, subs)
    for k, v in pairs(members(value)) do
      if k:sub(1, 1) ~= "_" then
        if type(v) == "function" then out[#out + 1] = cname .. "." .. k
        elseif type(v) == "table" and subs and subs[k] then walk(subs[k], v, nil) end
      end
    end
  end
  for _, r in ipairs(roots) do walk(r[1], r[2], r[3]) end
  sort(out)
  return out
end

-- The difference of two sorted name lists: names only in a, names only in b.
function M.diff(a, b)
  local in_a, in_b = {}, {}
  for _, n in ipairs(a) do in_a[n] = true end
  for _, n in ipairs(b) do in_b[n] = true end
  local only_a, only_b = {}, {}
  for _, n in ipairs(a) do if not in_b[n] then only_a[#only_a + 1] = n end end
  for _, n in ipairs(b) do if not in_a[n] then only_b[#only_b + 1] = n end end
  return only_a, only_b
end

-- The roots the engine's API dump walks, given live values (see the drift test's plugin).
function M.engine_roots(v)
  return {
    { "proxy", v.proxy, { log = "proxy.log", json = "proxy.json", timer = "proxy.timer",
      http = "proxy.http", redis = "proxy.redis", re = "proxy.re", router = "proxy.router",
      metrics = "proxy.metrics" } },
    { "proxy.redis.Client", v.redis_client },
    { "proxy.Request", v.req },
    { "proxy.SharedDict", v.dict },
    { "proxy.Upstream", v.upstream },
    { "proxy.TcpSocket", v.sock },
    { "proxy.Timer", v.timer },
    { "proxy.Router", v.router },
    { "proxy.http.Response", v.http_response },
    { "proxy.metrics.Counter", v.counter },
    { "proxy.metrics.Gauge", v.gauge },
    { "proxy.metrics.Histogram", v.histogram },
  }
end

-- The classes the engine walk covers (the rest of the annotations describe data, or the
-- proxy.test double, which its own spec checks).
M.ENGINE_CLASSES = {}
for _, r in ipairs(M.engine_roots({})) do
  M.ENGINE_CLASSES[r[1]] = true
  for _, c in pairs(r[3] or {}) do M.ENGINE_CLASSES[c] = true end
end

return M
