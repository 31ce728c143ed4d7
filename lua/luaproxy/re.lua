-- proxy.re: PCRE2 regular expressions for plugins, in the spirit of OpenResty's ngx.re
-- (match, find, gmatch, sub, gsub; option letters; captures tables). Docs: docs/lua-api.md,
-- "Regular expressions".
--
-- Why LuaJIT FFI straight to libpcre2-8 rather than C glue in the engine: the calls are
-- compiled into traces like the rest of the hot API (DESIGN.md §3), the captures table is
-- built in Lua from the ovector without a C round trip per group, and the same file runs in
-- the engine (ffi.C: the executable links libpcre2-8, CMakeLists.txt) and under busted with
-- the proxy.test double (ffi.load of the shared library). These are PCRE2's own functions,
-- not the engine's, so they are declared here and not in luaproxy/ffi.lua (whose twin is
-- engine/lua_api.h).
--
-- Per VM (one per worker thread and config generation; nothing here crosses threads):
-- - a cache of compiled patterns keyed by options and pattern, bounded by
--   lua.regex_cache_max and evicted with the CLOCK algorithm (an approximation of LRU whose
--   hit costs one table store, where a true LRU list moves entries on every hit);
-- - each cached pattern is JIT-compiled when PCRE2 has a JIT, and owns its match data (its
--   ovector), reused by every call: the VM runs one piece of Lua at a time, and every
--   function here reads the ovector before it calls back into user code;
-- - one match context with lua.regex_match_limit and a JIT stack, so that a pattern that
--   backtracks catastrophically returns nil, "pcre2_match: match limit exceeded" in bounded
--   time: lua.phase_timeout cannot stop a call that is inside C (docs/lua-api.md).
-- Compiled code and match data are freed by ffi.gc when nothing holds them any more, so an
-- entry evicted from the cache stays valid for a gmatch iterator that still uses it.
local ffi = require "ffi"

local type, tostring, tonumber, error, pcall, ipairs, setmetatable = type, tostring, tonumber,
  error, pcall, ipairs, setmetatable
local sub, byte, find, format = string.sub, string.byte, string.find, string.format
local concat = table.concat
local bor, band = require("bit").bor, require("bit").band
local ffi_gc, ffi_string, ffi_new = ffi.gc, ffi.string, ffi.new
local new_tab
do
  local ok, tnew = pcall(require, "table.new")
  new_tab = ok and tnew or function() return {} end
end

ffi.cdef [[
typedef struct pcre2_real_code_8 pcre2_code_8;
typedef struct pcre2_real_match_data_8 pcre2_match_data_8;
typedef struct pcre2_real_match_context_8 pcre2_match_context_8;
typedef struct pcre2_real_jit_stack_8 pcre2_jit_stack_8;
pcre2_code_8 *pcre2_compile_8(const char *pattern, size_t length, uint32_t options,
                              int *errorcode, size_t *erroroffset, void *ccontext);
int pcre2_jit_compile_8(pcre2_code_8 *code, uint32_t options);
void pcre2_code_free_8(pcre2_code_8 *code);
int pcre2_pattern_info_8(const pcre2_code_8 *code, uint32_t what, void *where);
pcre2_match_data_8 *pcre2_match_data_create_from_pattern_8(const pcre2_code_8 *code,
                                                           void *gcontext);
void pcre2_match_data_free_8(pcre2_match_data_8 *match_data);
size_t *pcre2_get_ovector_pointer_8(pcre2_match_data_8 *match_data);
int pcre2_match_8(const pcre2_code_8 *code, const char *subject, size_t length,
                  size_t startoffset, uint32_t options, pcre2_match_data_8 *match_data,
                  pcre2_match_context_8 *mcontext);
int pcre2_get_error_message_8(int errorcode, unsigned char *buffer, size_t bufflen);
int pcre2_config_8(uint32_t what, void *where);
pcre2_match_context_8 *pcre2_match_context_create_8(void *gcontext);
void pcre2_match_context_free_8(pcre2_match_context_8 *mcontext);
int pcre2_set_match_limit_8(pcre2_match_context_8 *mcontext, uint32_t value);
pcre2_jit_stack_8 *pcre2_jit_stack_create_8(size_t startsize, size_t maxsize, void *gcontext);
void pcre2_jit_stack_assign_8(pcre2_match_context_8 *mcontext, void *callback, void *data);
void pcre2_jit_stack_free_8(pcre2_jit_stack_8 *jit_stack);
]]

-- pcre2.h values (the API's, stable across 10.x).
local CASELESS, MULTILINE, DOTALL, EXTENDED = 0x8, 0x400, 0x20, 0x80
local UTF, NO_UTF_CHECK, ANCHORED, DUPNAMES = 0x80000, 0x40000000, 0x80000000, 0x40
local ALT_BSUX, MATCH_UNSET_BACKREF = 0x2, 0x200
local NOTEMPTY_ATSTART = 0x8
local JIT_COMPLETE = 0x1
local INFO_CAPTURECOUNT, INFO_NAMECOUNT, INFO_NAMEENTRYSIZE, INFO_NAMETABLE = 4, 17, 18, 19
local CONFIG_JIT = 1
local ERROR_NOMATCH = -1
local UNSET = 2 ^ 64 - 1 -- PCRE2_UNSET as tonumber() sees it

local M = {}

-- The library: the engine's executable links it (ffi.C finds its symbols); elsewhere
-- (busted, a plain luajit) it is loaded by name. nil when PCRE2 cannot be found: every call
-- then returns nil, "PCRE2 is not available: ...", it never raises.
-- M.library says which: "ffi.C", or the name loaded.
local P, lib_err
do
  if pcall(function() return ffi.C.pcre2_compile_8 end) then
    P = ffi.C
    M.library = "ffi.C"
  else
    for _, name in ipairs({ "pcre2-8", "libpcre2-8.so.0" }) do
      local ok, l = pcall(ffi.load, name)
      if ok then
        P, M.library = l, name
        break
      end
      lib_err = l
    end
  end
end

local jit_available = false
if P then
  local v = ffi_new("uint32_t[1]")
  jit_available = P.pcre2_config_8(CONFIG_JIT, v) >= 0 and v[0] == 1
end
M.jit_available = jit_available

local errbuf = ffi_new("unsigned char[256]")
local function pcre2_message(code)
  local n = P.pcre2_get_error_message_8(code, errbuf, 256)
  if n < 0 then return "PCRE2 error " .. tostring(code) end
  return ffi_string(errbuf, n)
end

-- Settings from the running config (proxy.config.lua), defaults elsewhere (the main
-- thread's config VM, busted). Read when a pattern is compiled and when the match context
-- is made, never per match.
M.DEFAULT_CACHE_MAX = 1024
M.DEFAULT_MATCH_LIMIT = 10000000 -- PCRE2's own default, as nginx uses it

local function setting(name, default)
  local proxy = package.loaded.proxy
  local lua = type(proxy) == "table" and type(proxy.config) == "table" and proxy.config.lua
  local v = type(lua) == "table" and lua[name]
  return type(v) == "number" and v or default
end

-- The match context: the match limit and a JIT stack (PCRE2's default, 32 KiB on the
-- machine stack, is too small for some legitimate patterns; grown on demand up to 1 MiB).
-- The engine sets proxy.config before init_worker and the first request, after the
-- plugins' module-level code ran: a context made before it is provisional, replaced once
-- the config is there.
local mctx, provisional
local stacks = setmetatable({}, { __mode = "k" }) -- match context -> its JIT stack
local function match_context()
  if mctx then return mctx end
  local proxy = package.loaded.proxy
  local final = type(proxy) == "table" and type(proxy.config) == "table"
    and type(proxy.config.lua) == "table"
  if not final and provisional then return provisional end
  local c = P.pcre2_match_context_create_8(nil)
  if c == nil then return nil end
  c = ffi_gc(c, P.pcre2_match_context_free_8)
  P.pcre2_set_match_limit_8(c, setting("regex_match_limit", M.DEFAULT_MATCH_LIMIT))
  if jit_available then
    local stack = P.pcre2_jit_stack_create_8(32 * 1024, 1024 * 1024, nil)
    if stack ~= nil then
      stack = ffi_gc(stack, P.pcre2_jit_stack_free_8)
      P.pcre2_jit_stack_assign_8(c, nil, stack)
      stacks[c] = stack -- the context borrows the stack: it lives as long as the context
    end
  end
  if final then mctx = c else provisional = c end
  return c
end

---------------------------------------------------------------------------------------
-- Compiling
---------------------------------------------------------------------------------------

-- ngx.re's option letters. `j` (JIT) and `o` (compile once) are accepted and always on:
-- every pattern is cached and JIT-compiled (the cache is bounded, so patterns built per
-- request cost a compile each and evict others, as they would without `o` in nginx).
local OPTION = {
  i = CASELESS, m = MULTILINE, s = DOTALL, x = EXTENDED, u = UTF, U = UTF, a = ANCHORED,
  D = DUPNAMES, J = bor(ALT_BSUX, MATCH_UNSET_BACKREF), j = 0, o = 0,
}

local int1, size1, uint1 = ffi_new("int[1]"), ffi_new("size_t[1]"), ffi_new("uint32_t[1]")
local ptr1 = ffi_new("const unsigned char *[1]")

local function info_u32(code, what)
  P.pcre2_pattern_info_8(code, what, uint1)
  return tonumber(uint1[0])
end

-- The name table: name -> group number, or -> { group numbers } for duplicate names (D).
local function name_table(code)
  local count = info_u32(code, INFO_NAMECOUNT)
  if count == 0 then return nil end
  local size = info_u32(code, INFO_NAMEENTRYSIZE)
  P.pcre2_pattern_info_8(code, INFO_NAMETABLE, ptr1)
  local t = ptr1[0]
  local names, list = {}, {}
  for i = 0, count - 1 do
    local e = t + i * size
    local group = e[0] * 256 + e[1]
    local name = ffi_string(e + 2)
    local have = names[name]
    if have == nil then
      names[name] = group
      list[#list + 1] = name
    elseif type(have) == "number" then
      names[name] = { have, group }
    else
      have[#have + 1] = group
    end
  end
  return names, list
end

-- Compiles `regex` with ngx.re `options` (nil or a string), uncached. Returns the compiled
-- pattern or nil, "problem at offset N". For config checks (schema type regex) and the cache.
local function compile(regex, options)
  if not P then return nil, "PCRE2 is not available: " .. tostring(lib_err) end
  local flags, match_flags = 0, 0
  if options then
    for k = 1, #options do
      local c = sub(options, k, k)
      local f = OPTION[c]
      if not f then return nil, format("unknown option %q", c) end
      flags = bor(flags, f)
      if c == "U" then match_flags = NO_UTF_CHECK end
    end
  end
  local code = P.pcre2_compile_8(regex, #regex, flags, int1, size1, nil)
  if code == nil then
    return nil, format("%s at offset %d", pcre2_message(int1[0]), tonumber(size1[0]))
  end
  code = ffi_gc(code, P.pcre2_code_free_8)
  -- A failed JIT compile (out of executable memory, an unsupported item) leaves the
  -- interpreter in charge: same results, slower.
  local jitted = jit_available and P.pcre2_jit_compile_8(code, JIT_COMPLETE) == 0
  local md = P.pcre2_match_data_create_from_pattern_8(code, nil)
  if md == nil then return nil, "out of memory" end
  md = ffi_gc(md, P.pcre2_match_data_free_8)
  local names, name_list = name_table(code)
  return {
    code = code,                -- reference (ffi.gc frees it)
    md = md,                    -- reference: the pattern's own match data
    ovec = P.pcre2_get_ovector_pointer_8(md), -- borrowed from md, valid while md lives
    ncap = info_u32(code, INFO_CAPTURECOUNT),
    names = names, name_list = name_list,
    match_flags = match_flags,
    utf = band(flags, UTF) ~= 0,
    jit = jitted,
    regex = regex, options = options or "",
    ref = true,                 -- CLOCK: used since the hand last passed
  }
end
M.compile = compile

-- The cache: by_opts[options][regex] = compiled; ring[1..n] in CLOCK order.
local by_opts, ring, n, hand = {}, {}, 0, 1
local stats = { compiles = 0, evictions = 0 }

local function evict_one()
  while true do
    if hand > n then hand = 1 end
    local v = ring[hand]
    if v.ref then
      v.ref = false
      hand = hand + 1
    else
      by_opts[v.options][v.regex] = nil
      local last = ring[n]
      ring[hand], ring[n] = last, nil
      last.slot = hand
      n = n - 1
      stats.evictions = stats.evictions + 1
      return
    end
  end
end

-- The compiled pattern for (regex, options) from the cache, compiling it on a miss.
-- Returns it or nil, err (the runtime message, naming the pattern).
-- The subject: a string, or a number as its text; anything else raises (level as get's).
local function subject_of(subject, level)
  local t = type(subject)
  if t == "string" then return subject end
  if t == "number" then return tostring(subject) end
  error(format("bad argument #1 (subject): expected a string, got %s", t), level or 3)
end

-- Wrong argument types raise (programmer errors), at the caller of the API function
-- (`level` 3, or 4 through substitute).
local function get(regex, options, level)
  if type(regex) ~= "string" then
    error(format("bad argument #2 (regex): expected a string, got %s", type(regex)), level or 3)
  end
  if options ~= nil and type(options) ~= "string" then
    error(format("bad argument (options): expected a string, got %s", type(options)),
      level or 3)
  end
  local key = options or ""
  local t = by_opts[key]
  local e = t and t[regex]
  if e then
    e.ref = true
    return e
  end
  local err
  e, err = compile(regex, options)
  if not e then return nil, format("failed to compile regex %q: %s", regex, err) end
  stats.compiles = stats.compiles + 1
  local max = setting("regex_cache_max", M.DEFAULT_CACHE_MAX)
  if max < 1 then return e end
  while n >= max do evict_one() end
  if not t then
    t = {}
    by_opts[key] = t
  end
  t[regex] = e
  n = n + 1
  ring[n] = e
  e.slot = n
  return e
end

-- For specs and /status: { size, max, compiles, evictions, jit }.
function M.cache_stats()
  return { size = n, max = setting("regex_cache_max", M.DEFAULT_CACHE_MAX),
           compiles = stats.compiles, evictions = stats.evictions, jit = jit_available }
end

-- Drops the cache and the match context (specs that change lua.regex_* settings).
function M._reset()
  by_opts, ring, n, hand = {}, {}, 0, 1
  stats.compiles, stats.evictions = 0, 0
  mctx, provisional = nil, nil
end

---------------------------------------------------------------------------------------
-- Matching
---------------------------------------------------------------------------------------

-- Runs e on subject from 0-based byte offset `start`: the match count (> 0), or
-- ERROR_NOMATCH, or nil, "message".
local function exec(e, subject, start, flags)
  local c = mctx or match_context()
  local rc = P.pcre2_match_8(e.code, subject, #subject, start, bor(e.match_flags, flags),
                             e.md, c)
  if rc > 0 or rc == ERROR_NOMATCH then return rc end
  if rc == 0 then return nil, "pcre2_match: ovector too small" end -- not with our match data
  return nil, "pcre2_match: " .. pcre2_message(rc)
end

-- The 0-based start offset from ctx.pos (1-based), or nil when it is past the end + 1.
local function start_of(subject, ctx)
  if ctx == nil then return 0 end
  local pos = ctx.pos
  if pos == nil then return 0 end
  pos = tonumber(pos)
  if not pos or pos < 1 or pos % 1 ~= 0 then
    error("bad ctx.pos: expected a whole number >= 1", 3)
  end
  if pos > #subject + 1 then return nil end
  return pos - 1
end

-- The captures table of the last match of e: [0] the whole match, [1..ncap] the groups
-- (false when a group did not take part), names as keys (an array for duplicate names).
local function captures(e, subject, rc, res)
  local ovec, ncap = e.ovec, e.ncap
  if not res then res = new_tab(ncap, e.name_list and #e.name_list or 0) end
  for i = 0, ncap do
    local s = i < rc and tonumber(ovec[2 * i]) or UNSET
    if s ~= UNSET then
      res[i] = sub(subject, s + 1, tonumber(ovec[2 * i + 1]))
    else
      res[i] = false
    end
  end
  local list = e.name_list
  if list then
    local names = e.names
    for k = 1, #list do
      local name = list[k]
      local g = names[name]
      if type(g) == "number" then
        res[name] = res[g]
      else
        local vals = {}
        for j = 1, #g do vals[j] = res[g[j]] end
        res[name] = vals
      end
    end
  end
  return res
end

-- match(subject, regex, options?, ctx?, res_table?): the captures table, or nil (no match),
-- or nil, err. ctx.pos (1-based) is where to start; it is set after the match.
function M.match(subject, regex, options, ctx, res)
  subject = subject_of(subject)
  local e, err = get(regex, options)
  if not e then return nil, err end
  local start = start_of(subject, ctx)
  if not start then return nil end
  local rc
  rc, err = exec(e, subject, start, 0)
  if not rc then return nil, err end
  if rc < 0 then return nil end
  if ctx then ctx.pos = tonumber(e.ovec[1]) + 1 end
  return captures(e, subject, rc, res)
end

-- find(subject, regex, options?, ctx?, nth?): from, to (1-based, inclusive) of the match, or
-- of capture group nth; nil (no match, or the group did not take part); nil, nil, err.
function M.find(subject, regex, options, ctx, nth)
  subject = subject_of(subject)
  local e, err = get(regex, options)
  if not e then return nil, nil, err end
  local start = start_of(subject, ctx)
  if not start then return nil end
  local rc
  rc, err = exec(e, subject, start, 0)
  if not rc then return nil, nil, err end
  if rc < 0 then return nil end
  local ovec = e.ovec
  if ctx then ctx.pos = tonumber(ovec[1]) + 1 end
  nth = nth or 0
  if nth < 0 or nth > e.ncap or nth >= rc then return nil end
  local s = tonumber(ovec[2 * nth])
  if s == UNSET then return nil end
  return s + 1, tonumber(ovec[2 * nth + 1])
end

-- The offset after the character at 0-based `pos` (UTF-8 aware in UTF mode).
local function next_char(subject, pos, utf)
  pos = pos + 1
  if utf then
    local b = byte(subject, pos + 1)
    while b and b >= 0x80 and b < 0xC0 do
      pos = pos + 1
      b = byte(subject, pos + 1)
    end
  end
  return pos
end

-- The runaway guard between matches: a gsub over a long subject runs many matches, each
-- bounded by the match limit; lua.phase_timeout stops the loop (guard.check raises).
-- Found in package.loaded, never required from here: the guard module takes its VM's flag
-- pointer when it is first loaded, which the engine does itself once the VM's guard is
-- set up (lua_vm.c guard_setup), after this module was loaded with `proxy`. Where no
-- guard is loaded (a plain luajit) there is nothing to check.
local GUARD_EVERY = 64
local loaded = package.loaded
local function guard_check()
  local g = loaded["luaproxy.guard"]
  if g then g.check() end
end

-- gmatch(subject, regex, options?): an iterator returning each match's captures table,
-- then nil; nil, err from the iterator on a runtime error. Or nil, err (bad pattern).
-- Empty matches advance as in Perl: after an empty match at p, the next one must be
-- non-empty at p or start after it.
function M.gmatch(subject, regex, options)
  subject = subject_of(subject)
  local e, err = get(regex, options)
  if not e then return nil, err end
  local pos, len, after_empty, done = 0, #subject, false, false
  return function()
    if done then return nil end
    while true do
      local rc, merr = exec(e, subject, pos, after_empty and bor(NOTEMPTY_ATSTART, ANCHORED) or 0)
      if not rc then
        done = true
        return nil, merr
      end
      if rc < 0 then
        if not after_empty or pos >= len then
          done = true
          return nil
        end
        after_empty = false
        pos = next_char(subject, pos, e.utf)
      else
        local ovec = e.ovec
        local s, t = tonumber(ovec[0]), tonumber(ovec[1])
        pos, after_empty = t, s == t
        return captures(e, subject, rc)
      end
    end
  end
end

-- Replacement templates: "$0".."$N", "${N}", "${name}", "$$". Compiled per pattern into
-- { literal, group, literal, ... } (group: a number, or a list for a duplicate name).
local function compile_template(tpl, e)
  local parts, lit = {}, {}
  local i, len = 1, #tpl
  while i <= len do
    local p = find(tpl, "$", i, true)
    if not p then
      lit[#lit + 1] = sub(tpl, i)
      break
    end
    lit[#lit + 1] = sub(tpl, i, p - 1)
    local c = sub(tpl, p + 1, p + 1)
    local group, nexti
    if c == "$" then
      lit[#lit + 1] = "$"
      nexti = p + 2
    elseif find(c, "^%d") then
      local _, de = find(tpl, "^%d+", p + 1)
      group, nexti = tonumber(sub(tpl, p + 1, de)), de + 1
    elseif c == "{" then
      local close = find(tpl, "}", p + 2, true)
      if not close then return nil, format("bad template %q: unclosed ${", tpl) end
      local name = sub(tpl, p + 2, close - 1)
      if find(name, "^%d+$") then
        group = tonumber(name)
      elseif find(name, "^[%a_][%w_]*$") then
        group = e.names and e.names[name]
        if not group then
          return nil, format("bad template %q: the regex has no group named %q", tpl, name)
        end
      else
        return nil, format("bad template %q: bad group name %q", tpl, name)
      end
      nexti = close + 1
    else
      return nil, format("bad template %q: $ must be followed by a digit, { or $ (at %d)", tpl,
        p)
    end
    if group then
      parts[#parts + 1] = concat(lit)
      parts[#parts + 1] = group
      lit = {}
    end
    i = nexti
  end
  parts[#parts + 1] = concat(lit)
  return parts
end

-- The compiled template for e (cached on the pattern: a handful per pattern in practice).
local TEMPLATES_PER_PATTERN = 16
local function template(tpl, e)
  local ts = e.templates
  local t = ts and ts[tpl]
  if t then return t end
  local err
  t, err = compile_template(tpl, e)
  if not t then return nil, err end
  if not ts then
    ts = { n = 0 }
    e.templates = ts
  end
  if ts.n < TEMPLATES_PER_PATTERN then
    ts[tpl], ts.n = t, ts.n + 1
  end
  return t
end
M.compile_template = function(tpl, compiled) return compile_template(tpl, compiled) end

local function group_text(e, subject, rc, g)
  if type(g) == "table" then -- a duplicate name: the first of its groups that took part
    for j = 1, #g do
      local v = group_text(e, subject, rc, g[j])
      if v ~= "" then return v end
    end
    return ""
  end
  if g > e.ncap or g >= rc then return "" end
  local s = tonumber(e.ovec[2 * g])
  if s == UNSET then return "" end
  return sub(subject, s + 1, tonumber(e.ovec[2 * g + 1]))
end

local function render(tpl, e, subject, rc, buf, nb)
  for k = 1, #tpl do
    local part = tpl[k]
    nb = nb + 1
    buf[nb] = k % 2 == 1 and part or group_text(e, subject, rc, part)
  end
  return nb
end

local function substitute(global, subject, regex, replace, options)
  subject = subject_of(subject, 4)
  local e, err = get(regex, options, 4)
  if not e then return nil, nil, err end
  local tpl, fn
  local rt = type(replace)
  if rt == "function" then
    fn = replace
  elseif rt == "string" or rt == "number" then
    tpl, err = template(tostring(replace), e)
    if not tpl then return nil, nil, err end
  else
    error(format("bad argument #3 (replace): expected a string or a function, got %s", rt), 3)
  end
  local len = #subject
  local buf, nb = {}, 0
  local pos, last, count, after_empty = 0, 0, 0, false
  local budget = GUARD_EVERY
  while true do
    budget = budget - 1
    if budget <= 0 then
      budget = GUARD_EVERY
      guard_check()
    end
    local rc, merr = exec(e, subject, pos, after_empty and bor(NOTEMPTY_ATSTART, ANCHORED) or 0)
    if not rc then return nil, nil, merr end
    if rc < 0 then
      if not after_empty or pos >= len then break end
      after_empty = false
      pos = next_char(subject, pos, e.utf)
    else
      local ovec = e.ovec
      local s, t = tonumber(ovec[0]), tonumber(ovec[1])
      nb = nb + 1
      buf[nb] = sub(subject, last + 1, s)
      if fn then
        local r = fn(captures(e, subject, rc)) -- may use this pattern again: s, t are read
        local ty = type(r)
        if ty ~= "string" and ty ~= "number" then
          error(format("replace function returned %s: expected a string", ty), 3)
        end
        nb = nb + 1
        buf[nb] = r
      else
        nb = render(tpl, e, subject, rc, buf, nb)
      end
      count = count + 1
      last, pos, after_empty = t, t, s == t
      if not global then break end
    end
  end
  if count == 0 then return subject, 0 end
  nb = nb + 1
  buf[nb] = sub(subject, last + 1)
  return concat(buf, "", 1, nb), count
end

-- sub(subject, regex, replace, options?): the new string and the number of replacements
-- (0 or 1), or nil, nil, err (as ngx.re.sub). replace: a template or a function(captures).
function M.sub(subject, regex, replace, options)
  local s, count, err = substitute(false, subject, regex, replace, options)
  return s, count, err -- not a tail call: error levels count this frame
end

-- gsub: like sub, every match.
function M.gsub(subject, regex, replace, options)
  local s, count, err = substitute(true, subject, regex, replace, options)
  return s, count, err
end

return M
