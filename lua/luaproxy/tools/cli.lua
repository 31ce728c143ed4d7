-- The Lua side of `luaproxy check`, `luaproxy new` and `luaproxy explain` (engine/toolcmd.c
-- runs this file under LuaJIT with the runtime's modules on LUA_PATH): arg[1] is the tool.
local format = string.format

local function out(...) io.stdout:write(format(...), "\n") end
local function err(...) io.stderr:write(format(...), "\n") end

-- The runtime directory: this file is ROOT/lua/luaproxy/tools/cli.lua.
local function runtime_root()
  local f = package.searchpath("luaproxy.tools.cli", package.path) or arg[0]
  local abs = f
  if abs:sub(1, 1) ~= "/" then
    local p = io.popen("pwd")
    abs = p:read("*l") .. "/" .. abs
    p:close()
  end
  return (abs:gsub("/lua/luaproxy/tools/cli%.lua$", ""))
end

local function dirname(path)
  return path:match("^(.*)/[^/]*$") or "."
end

-- A config file, loaded as the engine loads it (Lua, JSON or YAML), and the search paths
-- runtime.load gets (engine/lua_vm.c push_load_opts).
local function load_config(path)
  local cd = require "luaproxy.config_data"
  local chunk, lerr
  if cd.format(path) then chunk, lerr = cd.loader(path)
  else chunk, lerr = loadfile(path) end
  if not chunk then return nil, lerr end
  local ok, cfg = pcall(chunk)
  if not ok then return nil, path .. ": " .. tostring(cfg) end
  if type(cfg) ~= "table" then return nil, path .. ": the file must return a table" end
  local dir, root = dirname(path), runtime_root()
  local pp = {}
  local lua = type(cfg.lua) == "table" and cfg.lua or {}
  for _, d in ipairs(type(lua.plugin_paths) == "table" and lua.plugin_paths or {}) do
    local full = d:sub(1, 1) == "/" and d or dir .. "/" .. d
    pp[#pp + 1] = full .. "/?.lua;" .. full .. "/?/init.lua"
  end
  pp[#pp + 1] = format("%s/plugins/?.lua;%s/plugins/?/init.lua;%s/plugins/?.lua;%s/plugins/?/init.lua",
    dir, dir, root, root)
  return cfg, { plugin_path = table.concat(pp, ";"),
    script_path = format("%s/?.lua;%s/?/init.lua;%s/scripts/?.lua", dir, dir, root),
    config_dir = dir, root = root }
end

local tools = {}

-- ---- check ----

local CHECK_USAGE = [[
usage: luaproxy check [-c CONFIG] [--globals a,b] [DIR|FILE...]
checks Lua scripts and plugins (default: the current directory) with luacheck and the
proxy's API: unknown globals, unknown proxy.* members, misspelled request methods,
unused variables, shadowing, wrong phase names, ngx.* calls. Prints file:line:col:
message (code); exit status 0 when clean, 1 with warnings, 2 on a usage error.
  -c CONFIG      also the plugins and handler scripts CONFIG uses (not the bundled ones)
  --globals a,b  more globals your scripts may set and read]]

function tools.check(args)
  local check = require "luaproxy.tools.check"
  local paths, globals, config = {}, nil, nil
  local i = 1
  while i <= #args do
    local a = args[i]
    if a == "-h" or a == "--help" then out("%s", CHECK_USAGE) return 0
    elseif a == "-c" then config = args[i + 1]; i = i + 1
    elseif a == "--globals" then
      globals = {}
      for g in (args[i + 1] or ""):gmatch("[^,%s]+") do globals[#globals + 1] = g end
      i = i + 1
    elseif a:sub(1, 1) == "-" then err("%s", CHECK_USAGE) return 2
    else paths[#paths + 1] = a end
    i = i + 1
  end
  if config == nil and args[#args] == "-c" then err("%s", CHECK_USAGE) return 2 end
  local files = {}
  if config then
    local cfg, opts = load_config(config)
    if not cfg then err("%s", opts) return 2 end
    files = check.config_files(cfg, opts, { opts.root .. "/plugins/", opts.root .. "/scripts/" })
  end
  if #paths == 0 and not config then paths = { "." } end
  local found, missing = check.collect(paths)
  if missing then
    err("luaproxy check: no such file or directory: %s", table.concat(missing, ", "))
    return 2
  end
  for _, f in ipairs(found) do files[#files + 1] = f end
  local ws, note = check.check_files(files, { globals = globals })
  if note then err("luaproxy check: %s; only the proxy API pass ran", note) end
  for _, w in ipairs(ws) do out("%s", check.format(w)) end
  local nfiles = {}
  for _, w in ipairs(ws) do nfiles[w.file] = true end
  local n = 0
  for _ in pairs(nfiles) do n = n + 1 end
  err("%d warning%s in %d of %d file%s", #ws, #ws == 1 and "" or "s", n, #files,
    #files == 1 and "" or "s")
  return #ws == 0 and 0 or 1
end

-- ---- new ----

function tools.new(args)
  return require("luaproxy.tools.scaffold").main(args, runtime_root())
end

-- ---- explain ----

function tools.explain(args)
  return require("luaproxy.tools.explain").main(args, { load_config = load_config,
    runtime_root = runtime_root })
end

local name = arg[1]
local tool = tools[name]
if not tool then
  err("usage: luaproxy check|new|explain ... (luaproxy -h)")
  os.exit(2)
end
local args = {}
for i = 2, #arg do args[#args + 1] = arg[i] end
local ok, rc = xpcall(tool, debug.traceback, args)
if not ok then
  err("luaproxy %s: %s", name, tostring(rc))
  os.exit(2)
end
os.exit(rc or 0)
