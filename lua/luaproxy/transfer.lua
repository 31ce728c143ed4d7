-- Moves the validated config from the config VM, where the file was evaluated once
-- (engine/config.c), into each worker's VM (engine/lua_vm.c), so that the engine and every
-- VM use the same evaluation: a file that reads the clock, the environment or another file
-- cannot give each of them a different config.
--
-- Plain data goes as it is. A Lua function goes as its bytecode (string.dump, debug info
-- kept: errors still name the config file and line) with its upvalues, which are moved the
-- same way; upvalues shared between functions stay shared. Modules (tables in
-- package.loaded) and the functions they export go by name and are `require`d again on the
-- other side. Globals the config file defined go along. What cannot move (userdata, cdata,
-- coroutines, a C function no module exports) makes `encode` fail, and the engine then
-- evaluates the file in each VM as it used to.
local buffer = require "string.buffer"

local type, pairs, ipairs, next, tostring, sort = type, pairs, ipairs, next, tostring, table.sort
local getupvalue, setupvalue = debug.getupvalue, debug.setupvalue
local upvalueid, upvaluejoin, getinfo = debug.upvalueid, debug.upvaluejoin, debug.getinfo
local dump, format = string.dump, string.format

local M = {}

local before -- the globals that existed before the config file ran (snapshot())

-- Called right before the config file is evaluated.
function M.snapshot()
  before = {}
  for k in pairs(_G) do before[k] = true end
end

-- Modules by table, and exported functions by function: { module, key }. Sorted names make
-- the choice between two names of one table (string and _G.string) the same every time.
local function module_index()
  local names = {}
  for name, mod in pairs(package.loaded) do
    if type(mod) == "table" and type(name) == "string" then names[#names + 1] = name end
  end
  sort(names)
  local mods, funcs = {}, {}
  for _, name in ipairs(names) do
    local mod = package.loaded[name]
    if not mods[mod] then mods[mod] = name end
    -- In _G, only the base library's C functions go by name: Lua functions there are
    -- globals the config file defined, which move with the globals.
    for k, v in pairs(mod) do
      if type(v) == "function" and type(k) == "string" and not funcs[v]
         and (name ~= "_G" or getinfo(v, "S").what == "C") then
        funcs[v] = { name, k }
      end
    end
  end
  return mods, funcs
end

-- Returns the encoded string, or nil, "what could not move".
function M.encode(config)
  local mods, funcs = module_index()
  local nodes, index, upids = {}, {}, {}
  local globals = {}
  for k, v in pairs(_G) do
    if before and not before[k] then globals[k] = v end
  end

  local enc
  local function node(v, n)
    nodes[#nodes + 1] = n
    index[v] = #nodes
    return { #nodes }
  end
  function enc(v, where)
    local t = type(v)
    if t == "nil" or t == "boolean" or t == "number" or t == "string" then return v end
    if index[v] then return { index[v] } end
    if t == "table" then
      if mods[v] then return node(v, { m = mods[v] }) end
      local n = { t = {} }
      local ref = node(v, n)
      for k, x in pairs(v) do
        local ek = enc(k, where)
        n.t[#n.t + 1] = ek
        n.t[#n.t + 1] = enc(x, where .. "." .. tostring(k))
      end
      local mt = getmetatable(v)
      if mt ~= nil then n.mt = enc(mt, where .. "(metatable)") end
      return ref
    end
    if t == "function" then
      if funcs[v] then return node(v, { mf = funcs[v] }) end
      local info = getinfo(v, "Su")
      if info.what == "C" then
        error(format("%s: a C function that no module exports", where), 0)
      end
      local n = { f = dump(v), nups = info.nups, up = {}, join = {} }
      local ref = node(v, n)
      local me = index[v]
      for i = 1, info.nups do
        local name, x = getupvalue(v, i)
        local id = upvalueid(v, i)
        if upids[id] then
          n.join[i] = upids[id]
        else
          upids[id] = { me, i }
          n.up[i] = enc(x, format("%s(upvalue %s)", where, tostring(name)))
        end
      end
      return ref
    end
    error(format("%s: a %s cannot move between Lua states", where, t), 0)
  end

  local ok, root = pcall(function()
    return { config = enc(config, "config"), globals = enc(globals, "globals") }
  end)
  if not ok then return nil, root end
  local eok, s = pcall(buffer.encode, { nodes = nodes, root = root })
  if not eok then return nil, tostring(s) end
  return s
end

-- Returns the config table (and sets the globals the config file defined). Functions the
-- config VM loaded through the runaway guard carry its check as an upvalue, which moves by
-- name (luaproxy.guard.check) and so becomes this VM's.
function M.decode(s)
  local data = buffer.decode(s)
  local nodes, vals = data.nodes, {}
  for i, n in ipairs(nodes) do
    if n.m then
      vals[i] = require(n.m)
    elseif n.mf then
      vals[i] = require(n.mf[1])[n.mf[2]]
    elseif n.t then
      vals[i] = {}
    else
      vals[i] = assert(loadstring(n.f))
    end
  end
  local function val(x)
    if type(x) == "table" then return vals[x[1]] end
    return x
  end
  for i, n in ipairs(nodes) do
    if n.t then
      local t = vals[i]
      for j = 1, #n.t, 2 do t[val(n.t[j])] = val(n.t[j + 1]) end
      if n.mt then setmetatable(t, val(n.mt)) end
    elseif n.f then
      for k = 1, n.nups do
        if not n.join[k] then setupvalue(vals[i], k, val(n.up[k])) end
      end
    end
  end
  for i, n in ipairs(nodes) do
    if n.f then
      for k, j in pairs(n.join) do upvaluejoin(vals[i], k, vals[j[1]], j[2]) end
    end
  end
  for k, v in pairs(val(data.root.globals)) do _G[k] = v end
  return val(data.root.config)
end

return M
