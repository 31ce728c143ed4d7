-- The Lua side of one VM: loads the plugins a config names, builds the per-route chains,
-- and runs a phase for a request. The engine calls `run` inside the request's coroutine.
--
-- Loaded once in the main thread's config VM to validate (engine/config.c, also for
-- `luaproxy -t`), and once in each worker's own VM to serve.
local schema = require "luaproxy.schema"
local guard = require "luaproxy.guard"
local phases = require "luaproxy.phases"

local type, pairs, ipairs, tostring, xpcall = type, pairs, ipairs, tostring, xpcall
local format, concat, sort = string.format, table.concat, table.sort
local traceback = debug.traceback
local co_running = coroutine.running

local M = {}

-- LuaJIT ends a trace holding more than `maxirconst` constants (500 by default) with "trace
-- too long": the longer phase handlers (the cache plugin's response phase, with its field
-- names, keys and format strings) then ran interpreted on every request. A VM of luaproxy
-- allows three times as many.
require("jit").opt.start("maxirconst=1500")

-- Phase numbers shared with the engine (engine/lua_vm.h LP_PHASE_*).
M.PHASES = { "request", "upstream", "response", "response_body", "log" }
local PHASE_ID = {}
for i, p in ipairs(M.PHASES) do PHASE_ID[p] = i end
M.PHASE_ID = PHASE_ID

-- Result codes of `run` (engine/lua_vm.h LP_LUA_*).
local OK, FAILED = 0, 2

local plugin_cache, plugin_files = {}, {}

-- Plugins and handler modules, bundled or not, load through the runaway guard's rewrite
-- (luaproxy.guard): they stay JIT-compiled and a loop in them still stops at
-- lua.phase_timeout. The bundled plugins get it too: it costs a few instructions per call
-- and per loop iteration, and a plugin bug on an unusual request should not hang a worker
-- any more than a user's.
local loadfile = guard.loadfile

-- Lua shortens long file names in messages to "...tail": put the whole path back.
local function fullname(err, file)
  err = tostring(err)
  if file and err:sub(1, 3) == "..." then
    local tail = err:match("^%.%.%.([^:]*):")
    if tail and file:sub(-#tail) == tail then return file .. err:sub(4 + #tail) end
  end
  return err
end

local function find_plugin(name, opts)
  local plugin_path = opts.plugin_path
  if plugin_cache[name] then return plugin_cache[name], nil, plugin_files[name] end
  if type(name) ~= "string" or not name:match("^[%w_%-%.]+$") then
    return nil, "invalid plugin name " .. format("%q", tostring(name))
  end
  -- A config from etcd may carry plugin sources (PREFIX plugins/NAME): they come first, as
  -- the fleet's shared code; loaded through the same guard as files.
  local src, chunkname = require("luaproxy.config_source").plugin(name, opts.cfg, opts)
  local file = chunkname and chunkname:sub(2) or package.searchpath(name, plugin_path)
  if not file then
    return nil, format("plugin %q not found in %s", name, plugin_path)
  end
  local chunk, err
  if src then
    chunk, err = guard.load(src, chunkname)
  else
    chunk, err = loadfile(file)
  end
  if not chunk then return nil, fullname(err, file) end
  local ok, plugin = xpcall(chunk, traceback, name)
  if not ok then return nil, fullname(plugin, file) end
  plugin_cache[name] = plugin
  plugin_files[name] = file
  return plugin, nil, file
end

local function make_instance(plugin, conf, where)
  local inst = { name = plugin.name, priority = plugin.priority, conf = conf,
                 fail_open = conf and conf.fail_open or false, where = where }
  -- A compiled conf may name phases this entry does not need (`skip_phases`, set by the
  -- plugin's compile): the engine then neither runs nor pays for them on its routes (a
  -- response_body filter left out keeps the upstream's framing).
  local skip = type(conf) == "table" and type(conf.skip_phases) == "table" and conf.skip_phases
  for _, p in ipairs(M.PHASES) do
    if not (skip and skip[p]) then inst[p] = plugin[p] end
  end
  inst.init_worker = plugin.init_worker
  return inst
end

-- Validates one `plugins` list; returns a list of instances or nil, "path: problem".
local function load_list(list, path, opts, ctx)
  if list == nil then return {} end
  if type(list) ~= "table" then return nil, path .. ": expected a list of plugin entries" end
  local out = {}
  for i, entry in ipairs(list) do
    local p = format("%s[%d]", path, i)
    if type(entry) ~= "table" then return nil, p .. ": expected { name = ..., ... }" end
    if type(entry.name) ~= "string" then return nil, p .. ".name: required (a plugin name)" end
    local plugin, err, file = find_plugin(entry.name, opts)
    if not plugin then return nil, p .. ": " .. err end
    local ok, cerr = schema.check_plugin(plugin, p)
    if not ok then return nil, cerr end
    -- Fields without a description: the engine logs these once, when the config loads.
    for _, w in ipairs(type(cerr) == "table" and cerr or {}) do
      local key = plugin.name .. "\0" .. (w:match("%.schema(.*)$") or w) -- once per plugin
      if not ctx.warned[key] then
        ctx.warned[key] = true
        ctx.warnings[#ctx.warnings + 1] = w
      end
    end
    local ep = format("%s(%s)", p, entry.name)
    local conf, verr = schema.validate_entry(plugin, entry, ep, ctx)
    if not conf then return nil, verr end
    if plugin.compile then
      -- warn(text): said once per config load where the config is checked (engine/lua_vm.c),
      -- not again by each worker's VM; the same text from several entries once
      local function warn(text)
        if not ctx.warned[text] then
          ctx.warned[text] = true
          ctx.warnings[#ctx.warnings + 1] = text
        end
      end
      local cok, compiled, cerr2 = xpcall(plugin.compile, traceback, conf, ep, warn)
      if not cok then return nil, ep .. ": " .. tostring(compiled) end
      if compiled == nil then
        return nil, ep .. ": " .. tostring(cerr2 or "compile returned nothing")
      end
      conf = compiled
      if conf.fail_open == nil then conf.fail_open = entry.fail_open == true end
    end
    out[#out + 1] = make_instance(plugin, conf, ep)
  end
  local count = 0
  for _ in pairs(list) do count = count + 1 end
  if count ~= #out then return nil, path .. ": expected a list without holes" end
  return out
end

local function load_handler(h, path, opts)
  if type(h) == "string" then
    local file = package.searchpath(h, opts.script_path)
    if not file then return nil, format("%s: script %q not found in %s", path, h, opts.script_path) end
    local chunk, err = loadfile(file)
    if not chunk then return nil, path .. ": " .. fullname(err, file) end
    local ok, mod = xpcall(chunk, traceback, h)
    if not ok then return nil, path .. ": " .. fullname(mod, file) end
    if type(mod) == "table" then mod = mod.handler or mod.request end
    h = mod
  end
  if type(h) ~= "function" then
    return nil, path .. ": expected a function or a script module name"
  end
  return { name = "handler", priority = -math.huge, where = path, fail_open = false,
           request = function(req) return h(req) end }
end

-- Runs a whole chain of n plugins (as run_from below, from 1), without a loop. LuaJIT
-- cannot compile a trace through a loop of a few iterations (it aborts with "leaving loop
-- in root trace" until the loop is blacklisted, and then every trace through it aborts),
-- so a loop here kept the per-request path interpreted. One function per chain length.
-- With metrics on (M.timed), each call is timed for luaproxy_lua_plugin_seconds_total: the
-- time it ran, less the time its request's coroutine waited meanwhile (M.waited, kept by
-- phases.wait): two clock reads per plugin and phase.
local straight, straight_timed = {}, {}
local function straight_runner(n)
  local cache = M.timed and straight_timed or straight
  local f = cache[n]
  if f then return f end
  local src = { "local M = ...\nreturn function(h, list, phase)\n  local inst\n" }
  if M.timed then
    src[1] = "local M = ...\nlocal clock, waited, cost = M.clock, M.waited, M.cost\n"
      .. "return function(h, list, phase)\n  local inst, t0, w0\n  local co = M.task_co\n"
  end
  for k = 1, n do
    if M.timed then
      src[#src + 1] = format("  h._k = %d; inst = list[%d]; M.current = inst; "
        .. "w0 = waited[co] or 0; t0 = clock(); inst[phase](h, inst.conf); "
        .. "cost(inst, phase, clock() - t0 - ((waited[co] or 0) - w0))\n", k, k)
    else
      src[#src + 1] = format("  h._k = %d; inst = list[%d]; M.current = inst; "
        .. "inst[phase](h, inst.conf)\n", k, k)
    end
  end
  src[#src + 1] = "  M.current = nil\nend\n"
  f = assert(guard.raw.loadstring(concat(src), "=runtime.chain" .. n))(M)
  cache[n] = f
  return f
end

-- ---- the engine's metrics of Lua (docs/metrics.md) ----

M.waited = setmetatable({}, { __mode = "k" }) -- coroutine -> seconds it waited (M.timed)
local own_m -- the metric objects (luaproxy.metrics), made on first use; false: unavailable
local function own_metrics()
  if own_m == nil then
    own_m = false
    local ok, m = pcall(function()
      local metrics = require "luaproxy.metrics"
      local b = metrics.engine_backend()
      return {
        errors = metrics.internal(b, "counter", "luaproxy_lua_errors_total",
          "Errors raised by a plugin's phase handlers.", { "plugin" }),
        watchdog = metrics.internal(b, "counter", "luaproxy_lua_watchdog_stops_total",
          "Phase handlers stopped by lua.phase_timeout.", { "plugin" }),
        seconds = metrics.internal(b, "counter", "luaproxy_lua_plugin_seconds_total",
          "Time spent running a plugin's phase handlers (waits excluded).",
          { "plugin", "phase" }),
      }
    end)
    if ok then own_m = m end
  end
  return own_m
end

-- A plugin's phase raised (counted in the worker; never fails the error path).
local function count_failure(inst, err)
  local m = own_metrics()
  if not m then return end
  local name = inst and inst.name or "?"
  pcall(m.errors.inc, m.errors, 1, name)
  if type(err) == "string" and err:find("phase timed out", 1, true) then
    pcall(m.watchdog.inc, m.watchdog, 1, name)
  end
end

-- The time a plugin's phase ran: its cell is looked up once per plugin and phase.
function M.cost(inst, phase, dt)
  local cells = inst._cost
  if not cells then
    cells = {}
    inst._cost = cells
  end
  local off = cells[phase]
  if not off then
    local m = own_metrics()
    if not m then return end
    local p
    p, off = m.seconds:cell(inst.name, phase)
    cells.p, cells[phase] = p, off
  end
  if dt > 0 then
    local p = cells.p
    p[off] = p[off] + dt
  end
end

-- Orders a chain by priority, higher first; equal priorities keep their order (global
-- plugins before route plugins, the handler last).
local function by_phase(instances)
  for i, inst in ipairs(instances) do inst.seq = i end
  sort(instances, function(a, b)
    if a.priority ~= b.priority then return a.priority > b.priority end
    return a.seq < b.seq
  end)
  local chain, any = {}, false
  for id, p in ipairs(M.PHASES) do
    local list = {}
    for _, inst in ipairs(instances) do
      if inst[p] then list[#list + 1] = inst end
    end
    if #list > 0 then
      list.run = straight_runner(#list)
      chain[id] = list
      any = true
    end
  end
  chain.any = any
  chain.has_body_filter = chain[PHASE_ID.response_body] ~= nil
  -- A plugin whose compiled conf offers `_native` (the cache's common miss, run by the
  -- engine: engine/cache_native.h) gets it only as the route's one plugin: no other code
  -- (a plugin, a handler, a global plugin) could then take part in its decisions.
  if #instances == 1 and type(instances[1].conf) == "table" then
    chain.native = instances[1].conf._native
  end
  return chain
end

-- Loads every plugin the config names. `opts`: plugin_path, script_path.
-- Returns a state { routes = { [i] = chain }, fallback = chain, init = {instances} }.
-- Plugin fields of type upstream must name one of cfg.upstreams.
function M.load(cfg, opts)
  M.timed = type(cfg.metrics) == "table" and cfg.metrics.enabled == true
  if M.timed then
    -- The engine's clock; a host without it (the config check in a C unit test, specs)
    -- runs untimed.
    local ok, clock = pcall(function()
      require "luaproxy.ffi"
      return require("ffi").C.lp_ffi_monotonic
    end)
    M.timed = ok
    M.clock = ok and clock or nil
  end
  require("luaproxy.shared").declare(cfg.shared) -- proxy.shared.NAME: these names only
  -- proxy.tcp: lua.ssl_trusted_certificate, relative to the config file's directory
  M.lua_conf = type(cfg.lua) == "table" and cfg.lua or {}
  M.config_dir = opts and opts.config_dir
  if opts then opts.cfg = cfg end -- find_plugin: the config's config_source
  local ctx = require("luaproxy.config_schema").context(cfg)
  ctx.warnings, ctx.warned = {}, {}
  local global, err = load_list(cfg.plugins, "plugins", opts, ctx)
  if not global then return nil, err end
  local state = { routes = {}, init = {}, warnings = ctx.warnings }
  local seen = {}
  local function note_init(list)
    for _, inst in ipairs(list) do
      if inst.init_worker and not seen[inst] then
        seen[inst] = true
        state.init[#state.init + 1] = inst
      end
    end
  end
  note_init(global)
  for i, route in ipairs(cfg.routes or {}) do
    local path = format("routes[%d]", i)
    local own, lerr = load_list(route.plugins, path .. ".plugins", opts, ctx)
    if not own then return nil, lerr end
    note_init(own)
    local all = {}
    for _, inst in ipairs(global) do all[#all + 1] = inst end
    for _, inst in ipairs(own) do all[#all + 1] = inst end
    if route.handler ~= nil then
      local h, herr = load_handler(route.handler, path .. ".handler", opts)
      if not h then return nil, herr end
      all[#all + 1] = h
    end
    state.routes[i] = by_phase(all)
  end
  -- Requests that match no route still meet the global plugins (a router plugin may
  -- route them).
  local all = {}
  for _, inst in ipairs(global) do all[#all + 1] = inst end
  state.fallback = by_phase(all)
  return state
end

-- `luaproxy check` on the config's own plugins and handler scripts (not the bundled ones),
-- when the main thread checks a config (start, reload, -t; engine/lua_vm.c calls it after
-- runtime.load, outside the runaway guard: luacheck on a large plugin may take longer than
-- lua.phase_timeout): warnings go to `warnings` (logged once by the engine), or, with
-- lint.warnings_are_errors, the first ones refuse the load. Returns nil, or the error.
-- `memo` (a string, or nil) is what the previous call returned second: the engine keeps it
-- from one load to the next (engine/lua_vm.c), so that files that did not change are not
-- checked again.
function M.lint(cfg, opts, warnings, memo)
  local conf = type(cfg.lint) == "table" and cfg.lint or {}
  if conf.enabled == false then return nil, memo end
  local check = require "luaproxy.tools.check"
  local here = package.searchpath("luaproxy.runtime", package.path) or ""
  local root = here:gsub("/lua/luaproxy/runtime%.lua$", "/")
  local files = check.config_files(cfg, opts, root ~= here and
    { root .. "plugins/", root .. "scripts/" } or nil)
  if #files == 0 then return nil, memo end
  local cjson = require "cjson"
  local ok, old = pcall(cjson.decode, memo or "{}")
  local ws, note, new = check.check_files(files, { memo = ok and type(old) == "table" and old })
  local ok2, encoded = pcall(cjson.encode, new)
  memo = ok2 and encoded or memo
  if conf.warnings_are_errors then
    if note then return "lint.warnings_are_errors: " .. note, memo end
    if #ws > 0 then
      local lines = {}
      for i = 1, math.min(#ws, 10) do lines[i] = check.format(ws[i]) end
      if #ws > 10 then lines[#lines + 1] = format("... and %d more", #ws - 10) end
      return format("lint: %d warning%s (lint.warnings_are_errors): %s", #ws,
        #ws == 1 and "" or "s", concat(lines, "; ")), memo
    end
    return nil, memo
  end
  if note then warnings[#warnings + 1] = "lint: " .. note .. " (the proxy API pass ran)" end
  for _, w in ipairs(ws) do warnings[#warnings + 1] = "lint: " .. check.format(w) end
  return nil, memo
end

-- The plugin module loaded under `name` (nil before runtime.load found it).
function M.plugin(name) return plugin_cache[name] end

-- Calls every init_worker; returns true or nil, "plugin: error".
function M.init_worker(state)
  for _, inst in ipairs(state.init) do
    M.current, M.current_phase = inst, "init_worker"
    local ok, err = xpcall(inst.init_worker, traceback, inst.conf)
    M.current, M.current_phase = nil, nil
    if not ok then return nil, format("%s: init_worker failed: %s", inst.where, tostring(err)) end
  end
  return true
end

-- The engine runs this in a coroutine (it may proxy.sleep); an error fails the load.
function M.init_worker_task(state)
  M.task_co = co_running() -- the coroutine the engine resumes (phases.wait checks it)
  local ok, err = M.init_worker(state)
  if not ok then error(err, 0) end
  return 0
end

local log_failure -- set by the engine binding: log_failure(inst, phase, err)
function M.set_failure_logger(fn) log_failure = fn end

-- Runs list[i..] of a phase; h._k says which plugin is running, for the error path.
local function run_from(h, list, phase, i)
  for k = i, #list do
    h._k = k
    local inst = list[k]
    M.current = inst -- proxy.log tags lines with it
    inst[phase](h, inst.conf)
  end
  M.current = nil
end


-- Runs phase `id` of the request handle `h` (inside its coroutine). Returns OK, or FAILED
-- when a plugin raised and is not fail_open. req:respond() yields and never returns here.
-- One protected call covers the whole chain; after a fail_open failure the chain goes on
-- from the next plugin.
local function recover(h, list, phase, err)
  while true do
    M.current = nil
    local inst = list[h._k]
    count_failure(inst, err)
    if log_failure then log_failure(inst, phase, err, h) end
    if not inst.fail_open then return FAILED end
    local ok
    ok, err = xpcall(run_from, traceback, h, list, phase, h._k + 1)
    if ok then return OK end
  end
end

-- `co`: the coroutine the engine resumes (it passes it: coroutine.running is not compiled).
function M.run(h, id, co)
  local list = h._chain[id]
  if not list then return OK end
  local phase = M.PHASES[id]
  h._phase = phase
  M.task_co = co or co_running()
  M.current_phase = phase -- phases.raise names the running plugin's function by it
  local ok, err = xpcall(list.run, traceback, h, list, phase)
  if ok then return OK end
  return recover(h, list, phase, err)
end

-- The response_body filter chain: every filter sees the previous one's output. Runs in
-- the request's coroutine like a phase, so a filter may yield (the engine pauses the
-- upstream read meanwhile); the output is left in h._body_out for the engine to copy.
function M.body(h, chunk, eof, co)
  local list = h._chain[PHASE_ID.response_body]
  h._phase = "response_body"
  M.current_phase = "response_body"
  M.task_co = co or co_running()
  h._body_out = nil
  for i = 1, #list do
    local inst = list[i]
    M.current = inst
    local ok, out = xpcall(inst.response_body, traceback, h, chunk, eof, inst.conf)
    M.current = nil
    if not ok then
      count_failure(inst, out)
      if log_failure then log_failure(inst, "response_body", out, h) end
      if not inst.fail_open then return FAILED end
    elseif out ~= nil then
      chunk = tostring(out)
    end
  end
  h._body_out = chunk or ""
  return OK
end

return M
