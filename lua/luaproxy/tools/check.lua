-- `luaproxy check`: luacheck (Debian's lua-check, used as a library) with the proxy's
-- globals, plus a pass of ours that knows what luacheck cannot: the request handle's
-- methods (for the `req` parameter of phase functions and handlers), the members of the
-- `proxy` module (also through `local proxy = require "proxy"`), plugin phase names, and
-- OpenResty's `ngx.*` (with the proxy's equivalent). Every name comes from the LuaLS
-- annotations (lua/types/*.lua, luaproxy.tools.api): annotate a function and the checker
-- accepts it. Also run on a config's own scripts and plugins at start, reload and -t
-- (runtime.lua: warnings are logged; `lint.warnings_are_errors` refuses the load).
local api = require "luaproxy.tools.api"

local type, pairs, ipairs, tostring, format = type, pairs, ipairs, tostring, string.format
local sort, concat = table.sort, table.concat

local M = {}

-- ---- where things are ----

local function here_dir()
  local f = package.searchpath("luaproxy.tools.check", package.path)
  return f and f:gsub("/luaproxy/tools/check%.lua$", "") or "lua"
end

-- The annotation files beside this runtime's Lua (lua/types).
function M.types_files()
  local d = here_dir() .. "/types"
  return { d .. "/proxy.lua", d .. "/proxy_test.lua" }
end

local luacheck_mod, luacheck_err
local function luacheck()
  if luacheck_mod == nil then
    -- Debian installs it for Lua 5.1, whose modules LuaJIT loads.
    local path = package.path
    if not path:find("/usr/share/lua/5.1/", 1, true) then
      package.path = path .. ";/usr/share/lua/5.1/?.lua;/usr/share/lua/5.1/?/init.lua"
    end
    local ok, mod = pcall(require, "luacheck")
    package.path = path
    if ok then luacheck_mod = mod else
      luacheck_mod, luacheck_err = false, "luacheck is not installed (Debian: apt install lua-check)"
    end
  end
  return luacheck_mod or nil, luacheck_err
end
M.luacheck = luacheck

-- ---- the API, from the annotations ----

local PHASES = { request = true, upstream = true, response = true, response_body = true,
  log = true }
local PLUGIN_KEYS = { name = true, priority = true, schema = true, version = true,
  compile = true, init_worker = true }
for p in pairs(PHASES) do PLUGIN_KEYS[p] = true end
-- Other proxies' phase names, and what they are here.
local FOREIGN_PHASES = {
  access = "request", rewrite = "request", header_filter = "response",
  body_filter = "response_body", balancer = "upstream", log_by_lua = "log",
  init = "init_worker", init_worker_by_lua = "init_worker", certificate = nil,
  preread = "request", content = "request", handler = "request",
}

local known -- built once from the annotations
local function api_names()
  if known then return known end
  local A = api.parse(M.types_files())
  local req = api.functions_of(A, "proxy.Request")
  local treq = api.functions_of(A, "proxy.test.Request")
  for f in pairs(A.classes["proxy.Request"].fields) do req[f] = "field"; treq[f] = "field" end
  local function members_of(cname)
    local t = {}
    for f in pairs(api.functions_of(A, cname)) do t[f] = true end
    for f in pairs(A.classes[cname].fields) do t[f] = true end
    return t
  end
  -- proxy.X: its functions and fields; a module the annotations assign (`proxy.log = {}`)
  -- has its own members; data (config, shared) takes any field.
  local pm = members_of("proxy")
  for _, path in ipairs(M.types_files()) do
    local fh = io.open(path, "r")
    if fh then
      for line in fh:lines() do
        local sub = line:match("^proxy%.([%w_]+)%s*=%s*{")
        if sub and A.classes["proxy." .. sub] then pm[sub] = members_of("proxy." .. sub) end
      end
      fh:close()
    end
  end
  pm.config, pm.shared = "any", "any"
  known = { request = req, test_request = treq, proxy = pm, api = A }
  return known
end

local function proxy_members() return api_names().proxy end

-- ---- our pass ----

-- The source with comments and string contents blanked (newlines kept), so the patterns
-- below see code only.
local function code_only(src)
  local out, i, n = {}, 1, #src
  local function blank(s) return (s:gsub("[^\n]", " ")) end
  while i <= n do
    local c = src:sub(i, i)
    local long = src:match("^%-%-%[(=*)%[", i)
    if long then
      local close = "]" .. long .. "]"
      local e = src:find(close, i, true)
      e = e and e + #close - 1 or n
      out[#out + 1] = blank(src:sub(i, e))
      i = e + 1
    elseif src:sub(i, i + 1) == "--" then
      local e = src:find("\n", i, true) or n + 1
      out[#out + 1] = blank(src:sub(i, e - 1))
      i = e
    elseif c == '"' or c == "'" then
      local j = i + 1
      while j <= n do
        local d = src:sub(j, j)
        if d == "\\" then j = j + 2
        elseif d == c or d == "\n" then break
        else j = j + 1 end
      end
      out[#out + 1] = c .. blank(src:sub(i + 1, j - 1)) .. c
      i = j + 1
    else
      local lvl = src:match("^%[(=*)%[", i)
      if lvl then
        local close = "]" .. lvl .. "]"
        local e = src:find(close, i, true)
        e = e and e + #close - 1 or n
        out[#out + 1] = "\"" .. blank(src:sub(i + 1, e - 1)) .. "\""
        i = e + 1
      else
        local j = src:find("[%-\"'%[]", i + 1) or n + 1
        out[#out + 1] = src:sub(i, j - 1)
        i = j
      end
    end
  end
  return concat(out)
end
M.code_only = code_only

local function lines_of(s)
  local starts = { 1 }
  for p in s:gmatch("()\n") do starts[#starts + 1] = p + 1 end
  return function(pos)
    local lo, hi = 1, #starts
    while lo < hi do
      local mid = math.floor((lo + hi + 1) / 2)
      if starts[mid] <= pos then lo = mid else hi = mid - 1 end
    end
    return lo, pos - starts[lo] + 1
  end
end

local function distance(a, b)
  if math.abs(#a - #b) > 2 then return 3 end
  local prev = {}
  for j = 0, #b do prev[j] = j end
  for i = 1, #a do
    local cur = { [0] = i }
    for j = 1, #b do
      local cost = a:sub(i, i) == b:sub(j, j) and 0 or 1
      cur[j] = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
    end
    prev = cur
  end
  return prev[#b]
end

local function nearest(name, set)
  local best, bd
  for cand in pairs(set) do
    local d = distance(name, cand)
    -- "warning" for "warn": a name that starts with a member's whole name.
    if d > 2 and #cand >= 3 and name:sub(1, #cand) == cand then d = 2 end
    if d <= 2 and (not bd or d < bd or (d == bd and cand < best)) then best, bd = cand, d end
  end
  return best
end

local function did_you_mean(name, set, prefix)
  local n = nearest(name, set)
  return n and format(" (did you mean %s%s?)", prefix or "", n) or ""
end

local NGX_HINTS = {
  ["say"] = "req:respond(status, body)", ["print"] = "req:respond(status, body)",
  ["exit"] = "req:respond(status)", ["redirect"] = "req:redirect(url, status)",
  ["log"] = "proxy.log.err/warn/notice/info/debug(...)", ["var"] = "req:var(name) or req:host(), req:uri()...",
  ["req"] = "the request handle: req:header(), req:set_header(), req:body()...",
  ["header"] = "req:set_resp_header() in the response phase",
  ["shared"] = "proxy.shared.NAME", ["timer"] = "proxy.timer.at/every",
  ["re"] = "proxy.re", ["socket"] = "proxy.tcp()", ["now"] = "proxy.now()",
  ["time"] = "proxy.now()", ["sleep"] = "proxy.sleep(seconds)", ["ctx"] = "req.ctx",
  ["status"] = "req:status() / req:set_status()", ["worker"] = "proxy.worker_id(), proxy.exiting()",
  ["null"] = "proxy.null", ["encode_base64"] = "a Lua base64 module", ["md5"] = "a hash module",
  ["thread"] = "proxy.spawn(fn)", ["update_time"] = "nothing: proxy.now() is always current",
}

-- The variable holding the plugin table, when `code` is a plugin: the table the file
-- returns, with a priority and a schema.
function M.plugin_table(code)
  local ret = code:match("\n%s*return%s+([%a_][%w_]*)%s*$") or code:match("^%s*return%s+([%a_][%w_]*)%s*$")
  if ret and (code:find("%f[%w_]" .. ret .. "%s*%.%s*priority%s*=") or
              code:find("%f[%w_]priority%s*=") and code:find("%f[%w_]schema%s*=")) then
    return ret
  end
end

-- Our warnings for one source: { line =, column =, code =, message = }.
function M.api_pass(src, opts)
  opts = opts or {}
  local k = api_names()
  local req_methods = opts.spec and k.test_request or k.request
  local pm = proxy_members()
  local code = code_only(src)
  local pos_of = lines_of(code)
  local out = {}
  local function warn(pos, c, msg)
    local line, col = pos_of(pos)
    out[#out + 1] = { line = line, column = col, code = c, message = msg }
  end

  -- Receivers known to be request handles: `req`, and the first parameter of phase
  -- functions and handlers.
  local recv = { req = true }
  local plugin_var = M.plugin_table(code)
  local function phase_fn(tbl, fname)
    return fname == "handler" or (tbl == plugin_var and (PHASES[fname] or FOREIGN_PHASES[fname]))
  end
  for tbl, fname, p in code:gmatch("function%s+([%w_]+)[%.:]([%w_]+)%s*%(%s*([%w_]+)") do
    if phase_fn(tbl, fname) then recv[p] = true end
  end
  for tbl, fname, p in code:gmatch("([%w_]+)%.([%w_]+)%s*=%s*function%s*%(%s*([%w_]+)") do
    if phase_fn(tbl, fname) then recv[p] = true end
  end
  recv.self = nil
  for pos, name, sep, member, after in code:gmatch("()%f[%w_]([%a_][%w_]*)%s*([:%.])%s*([%a_][%w_]*)()") do
    local prev = pos > 1 and code:sub(pos - 1, pos - 1) or ""
    if recv[name] and prev ~= "." and prev ~= ":" and member:sub(1, 1) ~= "_" then
      local kind = req_methods[member]
      local nextc = code:match("^%s*(.)", after)
      if not kind then
        local near = nearest(member, req_methods)
        warn(pos, "LP01", format("%s%s%s: the request handle has no method or field %q%s", name,
          sep, member, member, near and format(" (did you mean %s%s%s?)", name,
          req_methods[near] == "field" and "." or ":", near) or ""))
      elseif kind ~= "field" and sep == "." and nextc == "(" then
        warn(pos, "LP02", format("%s.%s(...) calls a method with '.': write %s:%s(...)", name,
          member, name, member))
      end
    elseif name == "ngx" and prev ~= "." and prev ~= ":" then
      local hint = NGX_HINTS[member]
      warn(pos, "LP04", format("ngx.%s: OpenResty's ngx is not available here%s", member,
        hint and "; use " .. hint or "; see docs/lua-api.md"))
    elseif name == "proxy" and prev ~= "." and prev ~= ":" and sep == "." then
      local m = pm[member]
      if m == nil then
        warn(pos, "LP03", format("proxy.%s: no such member of the proxy module%s", member,
          did_you_mean(member, pm, "proxy.")))
      elseif type(m) == "table" then
        local spos, sub = code:match("^%s*%.%s*()([%a_][%w_]*)", after)
        if sub and m[sub] == nil then
          warn(spos, "LP03", format("proxy.%s.%s: no such member of proxy.%s%s", member, sub,
            member, did_you_mean(sub, m, "proxy." .. member .. ".")))
        end
      end
    end
  end

  -- Plugin phase names: functions stored on the table the file returns.
  local ret = plugin_var
  if ret then
    local function check_key(pos, key)
      if PLUGIN_KEYS[key] then return end
      local foreign = FOREIGN_PHASES[key]
      local near = nearest(key, PLUGIN_KEYS)
      if foreign then
        warn(pos, "LP05", format("%s.%s is not a luaproxy phase: the engine never calls it; "
          .. "this is the %s phase here", ret, key, foreign))
      elseif near then
        warn(pos, "LP05", format("%s.%s is not a phase or plugin key: the engine never calls it "
          .. "(did you mean %s.%s?)", ret, key, ret, near))
      end
    end
    for pos, key in code:gmatch("function%s+" .. ret .. "%.()([%w_]+)%s*%(") do check_key(pos, key) end
    for pos, key in code:gmatch("%f[%w_]" .. ret .. "%.()([%w_]+)%s*=%s*function") do
      check_key(pos, key)
    end
  end
  return out
end

-- ---- luacheck ----

local function luacheck_options(opts)
  local o = {
    std = opts.spec and "luajit+busted" or "luajit",
    -- Members are our pass's (it also sees `local proxy = require "proxy"`); a spec may
    -- set the double's config (proxy.config is read-only use in the proxy).
    read_globals = { proxy = { other_fields = true, fields = opts.spec and
      { config = { read_only = false, other_fields = true } } or nil } },
    unused_args = false, -- phase functions take (req, conf) whether they use them or not
    max_line_length = false,
    ignore = { "212/self" },
  }
  if opts.globals then
    o.globals = {}
    for i, g in ipairs(opts.globals) do o.globals[i] = g end
  end
  return o
end

-- All warnings for one source text: luacheck's and ours, sorted by line.
function M.check_source(src, opts)
  opts = opts or {}
  local out = M.api_pass(src, opts)
  local lc, err = luacheck()
  if lc then
    local report = lc.check_strings({ src }, luacheck_options(opts))[1]
    for _, e in ipairs(report) do
      -- ngx: our hint says more than "undefined variable".
      if e.name ~= "ngx" then
        out[#out + 1] = { line = e.line, column = e.column,
          code = (e.code:sub(1, 1) == "0" and "E" or "W") .. e.code, message = lc.get_message(e) }
      end
    end
  elseif opts.require_luacheck then
    return nil, err
  end
  sort(out, function(a, b)
    if a.line ~= b.line then return a.line < b.line end
    if a.column ~= b.column then return a.column < b.column end
    return a.code < b.code
  end)
  return out, (not lc) and err or nil
end

local function read(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local s = f:read("*a")
  f:close()
  return s
end

local function is_spec(path)
  return path:match("_spec%.lua$") or path:match("/spec/") or path:match("^spec/")
end

-- Warnings for files: { { file =, line =, column =, code =, message = }, ... }, and a
-- note when luacheck is missing (our pass still ran).
-- opts.memo: { [path] = { src =, ws = } } from an earlier call: a file whose text did not
-- change is not checked again (a reload with unchanged plugins does not load luacheck);
-- the memo of this call is returned third.
function M.check_files(paths, opts)
  opts = opts or {}
  local all, note, memo = {}, nil, {}
  for _, path in ipairs(paths) do
    local src, err = read(path)
    if not src then
      all[#all + 1] = { file = path, line = 1, column = 1, code = "E000", message = tostring(err) }
    else
      local old = opts.memo and opts.memo[path]
      local ws
      if old and old.src == src and type(old.ws) == "table" then
        ws = old.ws
      else
        local o = { spec = opts.spec or is_spec(path), globals = opts.globals }
        local lerr
        ws, lerr = M.check_source(src, o)
        note = note or lerr
      end
      if not note then memo[path] = { src = src, ws = ws } end
      for _, w in ipairs(ws) do
        all[#all + 1] = { file = path, line = w.line, column = w.column, code = w.code,
          message = w.message }
      end
    end
  end
  return all, note, memo
end

function M.format(w)
  return format("%s:%d:%d: %s (%s)", w.file, w.line, w.column, w.message, w.code)
end

-- The .lua files under each argument (a file is taken as it is), sorted, without dotted
-- directories (.git) or build trees; and the arguments that do not exist (nil when none).
function M.collect(args)
  local files, missing = {}, nil
  for _, a in ipairs(args) do
    local p = io.popen("find '" .. a:gsub("'", "'\\''") .. "' -mindepth 1 \\( -name '.*' -o "
      .. "-name 'build*' \\) -prune -o -type f -name '*.lua' -print 2>/dev/null")
    local found = {}
    for line in p:lines() do found[#found + 1] = line end
    p:close()
    if #found == 0 then
      local f = io.open(a, "r")
      if f then f:close() end
      if not f then missing = missing or {}; missing[#missing + 1] = a
      elseif a:match("%.lua$") then found = { a } end
    end
    sort(found)
    for _, x in ipairs(found) do files[#files + 1] = x end
  end
  return files, missing
end

-- The user's own files a config uses: the plugins its entries name and its handler
-- scripts, found on `opts.plugin_path` / `opts.script_path` (runtime.load's), except those
-- under `skip` (the runtime's own, bundled: checked by the project's tests).
function M.config_files(cfg, opts, skip)
  local files, seen, found = {}, {}, {}
  -- Each name is looked up once (a config may name one plugin on 100k routes).
  local function find(name, path)
    local key = path .. "\0" .. name
    if found[key] == nil then found[key] = package.searchpath(name, path) or false end
    return found[key] or nil
  end
  local function add(file)
    local bundled = false
    for _, prefix in ipairs(skip or {}) do
      if file and file:sub(1, #prefix) == prefix then bundled = true end
    end
    if file and not seen[file] and not bundled then
      seen[file] = true
      files[#files + 1] = file
    end
  end
  local function plugins(list)
    for _, e in ipairs(type(list) == "table" and list or {}) do
      if type(e) == "table" and type(e.name) == "string" then
        add(find(e.name, opts.plugin_path))
      end
    end
  end
  plugins(cfg.plugins)
  for _, r in ipairs(type(cfg.routes) == "table" and cfg.routes or {}) do
    if type(r) == "table" then
      plugins(r.plugins)
      if type(r.handler) == "string" then add(find(r.handler, opts.script_path)) end
    end
  end
  return files
end

return M
