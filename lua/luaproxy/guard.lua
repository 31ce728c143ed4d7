-- The runaway guard: stops user Lua that runs longer than lua.phase_timeout without
-- yielding, inside JIT-compiled code too, without touching the VM from another thread.
--
-- How: every user file is rewritten when it is loaded (`M.rewrite`, source to source): a
-- check goes at the start of every loop body (`while ... do`, `for ... do`, `repeat`), at
-- the start of every function body, and before every `goto` (a goto loop has a backward
-- goto). Nothing is added on a new line, so errors name the same file:line. The check is
--   __lp_n = __lp_n - 1; if __lp_n <= 0 then __lp_n = __lp_chk() end;
-- a countdown in an upvalue of the file, and once per BUDGET checks a call of `check`
-- below, which reads a per-VM flag (`lp_lua_guard_t.stop`, engine/lua_vm.c) that the
-- watchdog thread sets when the running Lua's deadline passed.
--
-- Why this shape (bench/guard.lua measures it):
-- - The flag cannot be read on every check: LuaJIT ignores `volatile` on FFI loads and
--   hoists a load of memory the trace does not write out of a compiled loop, so the flag
--   would be read once, before the loop, and never again. The countdown's store keeps
--   the check in the loop; the flag is read on the side exit taken every BUDGET
--   iterations, in a side trace, where nothing hoists it.
-- - The countdown is a plain upvalue, not FFI memory, and is inline, not a call: code
--   that stays interpreted (a trace that aborts) pays a few bytecodes per check; an FFI
--   access costs a metamethod call in the interpreter (5-20x slower loops, measured).
--
-- What it does not cover: a single call into C that runs long (string.rep of gigabytes, a
-- pattern that backtracks over a long subject, a blocking library call); precompiled
-- bytecode (loaded as is). A pcall in user code cannot swallow the error for good: the
-- flag stays set until the phase ends, so the next check outside the pcall raises again.
local ffi = require "ffi"

local byte, find, sub, format = string.byte, string.find, string.sub, string.format
local concat, type, tostring = table.concat, type, tostring
local error, setfenv, pcall = error, setfenv, pcall

local M = {}

M.NAME = "__lp_chk"
-- Checks between two reads of the flag: a loop is stopped at most BUDGET iterations after
-- the watchdog set it (microseconds, unless each iteration calls slow C code).
-- 1,000, not 100: the countdown's side exit, taken at whichever call or iteration it runs
-- out, was frequent enough in a request's traces (a cache hit makes some 40 checks) to leave
-- many requests interpreted from there.
M.BUDGET = 1000

-- The functions this module replaces in a worker VM, for the engine's own use.
M.raw = { load = load, loadstring = loadstring, loadfile = loadfile, dofile = dofile }
local raw_load, raw_loadstring = load, loadstring

---------------------------------------------------------------------------------------
-- The rewrite
---------------------------------------------------------------------------------------

-- The check as inserted (see the top of the file).
local COUNT = "__lp_n"
local CHECK_CODE = COUNT .. " = " .. COUNT .. " - 1; if " .. COUNT .. " <= 0 then " .. COUNT
  .. " = " .. M.NAME .. "() end;"
local CHECK = " " .. CHECK_CODE
local PREFIX = "return function(" .. M.NAME .. ") local " .. COUNT .. " = 0 return function(...) "
local SUFFIX = "\nend end"

-- Skips a long bracket `[=*[ ... ]=*]` starting at i (which holds `[`); returns the
-- position after it, or nil when i does not open one, or false when it is not closed.
local function long_bracket(src, i)
  local s, e = find(src, "^%[=*%[", i)
  if not s then return nil end
  local close = "]" .. string.rep("=", e - s - 1) .. "]"
  local _, ce = find(src, close, e + 1, true)
  if not ce then return false end
  return ce + 1
end

local KEYWORDS = {}
for w in ("and break do else elseif end false for function goto if in local nil not or "
          .. "repeat return then true until while"):gmatch("%a+") do KEYWORDS[w] = true end

-- Whether the `goto` before position i starts a goto statement: LuaJIT (without 5.2
-- compatibility) also takes `goto` as a plain name (`local goto = 1`), so it is a
-- statement only when a label name follows (spaces and comments may come between).
local function goto_statement(src, i)
  while true do
    local _, e = find(src, "^[ \t\r\n\f\v]+", i)
    if e then i = e + 1 end
    if sub(src, i, i + 1) ~= "--" then break end
    local le
    if byte(src, i + 2) == 91 then le = long_bracket(src, i + 2) end
    if le == false then return false end
    i = le or (find(src, "\n", i, true) or #src) + 1
  end
  local name = src:match("^[%a_][%w_]*", i)
  return name ~= nil and not KEYWORDS[name]
end

-- Returns the source with the checks inserted (without the wrapper that binds `__lp_chk`
-- and `__lp_n`: see M.wrap), and the number of checks; or nil, "problem" when the source does not lex
-- (the caller then loads the original to get Lua's own message).
function M.rewrite(src)
  local out, n, last = {}, 0, 1
  local function insert_at(pos, text)
    out[#out + 1] = sub(src, last, pos - 1)
    out[#out + 1] = text
    last = pos
    n = n + 1
  end
  -- Open blocks: "function", "if", "do", "while"/"for" (a loop header, until its `do`),
  -- "loop" (a loop body), "repeat".
  local stack, top = {}, 0
  local fstate -- nil; "name": after `function`, before `(`; "params": in the parameter list
  local i, len = 1, #src
  -- A shebang line is a comment to LuaJIT (skipped by the caller, see M.wrap).
  while i <= len do
    local c = byte(src, i)
    if c == 32 or (c >= 9 and c <= 13) then -- whitespace
      i = find(src, "[^ \t\r\n\f\v]", i) or len + 1
    elseif c == 45 and byte(src, i + 1) == 45 then -- "--" comment
      local e
      if byte(src, i + 2) == 91 then e = long_bracket(src, i + 2) end
      if e == false then return nil, "unfinished long comment" end
      if e then
        i = e
      else
        i = (find(src, "\n", i + 2, true) or len) + 1
      end
    elseif c == 91 then -- "[": a long string or an operator
      local e = long_bracket(src, i)
      if e == false then return nil, "unfinished long string" end
      i = e or i + 1
    elseif c == 34 or c == 39 then -- a quoted string
      local q = c == 34 and '["\\\n]' or "['\\\n]"
      local j = i + 1
      while true do
        local k = find(src, q, j)
        if not k then return nil, "unfinished string" end
        local ck = byte(src, k)
        if ck == c then
          i = k + 1
          break
        elseif ck == 92 then -- a backslash escapes the next character, newline included
          j = k + 2
        else
          return nil, "unfinished string"
        end
      end
    elseif (c >= 48 and c <= 57) or (c == 46 and find(src, "^%.%d", i)) then -- a number
      -- As LuaJIT lexes it: identifier characters and dots, and a sign after an exponent.
      local j = i
      while j <= len do
        local d = byte(src, j)
        if (d >= 48 and d <= 57) or (d >= 65 and d <= 90) or (d >= 97 and d <= 122) or d == 95
          or d == 46 then
          j = j + 1
        elseif (d == 43 or d == 45) and find(sub(src, j - 1, j - 1), "[eEpP]") then
          j = j + 1
        else
          break
        end
      end
      i = j
    elseif c == 95 or (c >= 65 and c <= 90) or (c >= 97 and c <= 122) or c >= 128 then
      local _, e = find(src, "^[%w_\128-\255]+", i)
      local word = sub(src, i, e)
      if word == "function" then
        top = top + 1; stack[top] = "function"
        fstate = "name"
      elseif word == "while" or word == "for" then
        top = top + 1; stack[top] = word
      elseif word == "do" then
        if stack[top] == "while" or stack[top] == "for" then
          stack[top] = "loop"
          insert_at(e + 1, CHECK)
        else
          top = top + 1; stack[top] = "do"
        end
      elseif word == "if" then
        top = top + 1; stack[top] = "if"
      elseif word == "repeat" then
        top = top + 1; stack[top] = "repeat"
        insert_at(e + 1, CHECK)
      elseif word == "end" or word == "until" then
        if top == 0 then return nil, "unbalanced '" .. word .. "'" end
        stack[top] = nil; top = top - 1
      elseif word == "goto" and goto_statement(src, e + 1) then
        insert_at(i, CHECK_CODE .. " ")
      end
      i = e + 1
    else -- an operator
      if c == 40 and fstate == "name" then -- "("
        fstate = "params"
      elseif c == 41 and fstate == "params" then -- ")"
        fstate = nil
        insert_at(i + 1, CHECK)
      end
      i = i + 1
    end
  end
  if top ~= 0 then return nil, "unclosed '" .. tostring(stack[top]) .. "'" end
  out[#out + 1] = sub(src, last)
  return concat(out), n
end

-- The rewritten source as a chunk that returns a function taking the check and returning
-- the file's main function (so the check and the countdown are upvalues, whatever the
-- chunk's environment).
-- Line 1 keeps its place: a shebang line is replaced, a byte-order mark dropped.
function M.wrap(src)
  if sub(src, 1, 3) == "\239\187\191" then src = sub(src, 4) end
  if byte(src, 1) == 35 then -- "#"
    src = sub(src, (find(src, "\n", 1, true) or #src + 1))
  end
  local body, err = M.rewrite(src)
  if not body then return nil, err end
  return PREFIX .. body .. SUFFIX
end

---------------------------------------------------------------------------------------
-- The check
---------------------------------------------------------------------------------------

-- The flag and the confirmation come from the engine; elsewhere (busted, the main
-- thread's config check) a flag of our own that nothing sets, unless a spec does.
require "luaproxy.ffi" -- declares lp_ffi_guard_flag, lp_ffi_guard_expired
local C = ffi.C
local have_engine, flag = pcall(function() return C.lp_ffi_guard_flag() end)
local expired, limit
if have_engine then
  expired = C.lp_ffi_guard_expired
  limit = function() return ffi.string(C.lp_ffi_guard_limit()) end
else
  M.test_flag = ffi.new("int[1]")
  flag = M.test_flag
  -- specs set M.test_expired to simulate the engine (seconds of the timeout, 0: not yet)
  M.test_expired = function() return 1 end
  expired = function() return M.test_expired() end
  limit = function() return M.test_limit or "phase_timeout" end
end
-- Called by the inserted code when its file's countdown ran out: raises when the flag is
-- set (and the engine confirms), else returns the next countdown.
local function check()
  if flag[0] ~= 0 then
    local t = expired() -- 0: set for a phase that ended since (the engine cleared it)
    if t > 0 then error(format("phase timed out (lua.%s %.3fs)", limit(), t), 2) end
  end
  return M.BUDGET
end
M.check = check

---------------------------------------------------------------------------------------
-- Loading
---------------------------------------------------------------------------------------

local function warn(chunkname, err)
  io.stderr:write(format("luaproxy: %s: no runaway guard (%s); it runs unguarded\n",
                         tostring(chunkname), tostring(err)))
end

-- load() for Lua source: the rewritten chunk, or the original when it is bytecode, when
-- it has a syntax error (so the message is Lua's own, about the user's text) or when the
-- rewrite fails on valid source (a bug here: warn, and run it unguarded).
function M.load(src, chunkname, mode, env, chk)
  if type(src) ~= "string" or byte(src, 1) == 27 then
    return raw_load(src, chunkname, mode, env)
  end
  if mode ~= nil and not find(mode, "t", 1, true) then
    return raw_load(src, chunkname, mode, env) -- Lua says it refuses text
  end
  local wrapped, rerr = M.wrap(src)
  local maker
  if wrapped then maker = raw_loadstring(wrapped, chunkname) end
  if not maker then
    local fn, err = raw_load(src, chunkname, mode, env)
    if not fn then return nil, err end
    warn(chunkname, rerr or "the rewritten source does not compile")
    return fn
  end
  local fn = maker()(chk or check)
  if env ~= nil then setfenv(fn, env) end
  return fn
end

local function read_file(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local s = f:read("*a")
  f:close()
  return s
end

-- loadfile(path[, mode[, env]]) with the guard; nil path reads stdin as Lua does.
function M.loadfile(path, mode, env)
  if path == nil then return M.raw.loadfile(path, mode, env) end
  local src, err = read_file(path)
  if not src then return nil, "cannot open " .. tostring(path) .. ": " .. tostring(err) end
  return M.load(src, "@" .. path, mode, env)
end

-- The replacements a worker VM's globals get: code made at run time by user code
-- (templates, sandboxes) is guarded too.
local function g_load(chunk, chunkname, mode, env)
  if type(chunk) == "function" then
    local parts = {}
    while true do
      local piece = chunk()
      if piece == nil or piece == "" then break end
      if type(piece) ~= "string" then return nil, "reader function must return a string" end
      parts[#parts + 1] = piece
    end
    chunk = concat(parts)
    chunkname = chunkname or "=(load)"
  end
  if type(chunk) == "string" or type(chunk) == "number" then
    chunk = tostring(chunk)
    return M.load(chunk, chunkname or chunk, mode, env)
  end
  return raw_load(chunk, chunkname, mode, env)
end

local function g_loadstring(s, chunkname)
  if type(s) == "number" then s = tostring(s) end
  if type(s) ~= "string" then return raw_loadstring(s, chunkname) end
  return M.load(s, chunkname or s)
end

local function g_dofile(path)
  local fn, err = M.loadfile(path)
  if not fn then error(err, 2) end
  return fn()
end

-- A package.loaders searcher: Lua modules found on package.path load rewritten, except
-- the engine's own (under `trusted`, a directory prefix) and LuaJIT's jit.* tools.
local function searcher(trusted)
  return function(name)
    if type(name) ~= "string" or sub(name, 1, 4) == "jit." then return nil end
    local path = package.searchpath(name, package.path)
    if not path or (trusted and sub(path, 1, #trusted) == trusted) then return nil end
    local fn, err = M.loadfile(path)
    if not fn then error(format("error loading module '%s' from file '%s':\n\t%s", name,
                                path, tostring(err)), 0) end
    return fn, path
  end
end

-- Installs the guard in this VM (a worker's): `require` of Lua modules and the global
-- load functions go through the rewrite. `trusted`: the engine's Lua directory.
function M.install(trusted)
  if M.installed then return end
  M.installed = true
  table.insert(package.loaders, 2, searcher(trusted))
  _G.load, _G.loadstring, _G.loadfile, _G.dofile = g_load, g_loadstring, M.loadfile, g_dofile
end

return M
