-- Hyperscan (Debian's libhyperscan5) through the FFI, for the waf plugin's multi-pattern
-- pass: many regexes tested against one value in a single scan. Only "did pattern N match
-- this value" is asked of it; PCRE2 (proxy.re) then confirms a match and finds its text.
--
-- Why the FFI and not C glue in the engine: the same file then runs under busted with the
-- proxy.test double (ffi.load) and in the engine, as luaproxy/re.lua does for PCRE2. These
-- are Hyperscan's own functions, so they are declared here and not in luaproxy/ffi.lua
-- (whose twin is engine/lua_api.h).
--
-- Per VM (one per worker thread and config generation; nothing here crosses threads): one
-- scratch space grown for every database compiled in this VM.
-- Matches come back through a callback. In the engine it is C (lp_ffi_waf_hs_collect,
-- engine/waf_hs.c), recording ids into a per-database buffer, so the Lua around the scan
-- stays JIT-compiled. Elsewhere (busted, a plain luajit) it is one Lua callback made at
-- load; LuaJIT refuses a Lua callback while a compiled trace runs ("bad callback"), so the
-- function calling hs_scan then runs interpreted (jit.off): correct, and slower.
local ffi = require "ffi"
local jit = require "jit"

local M = {}

ffi.cdef [[
typedef struct hs_database hs_database_t;
typedef struct hs_scratch hs_scratch_t;
typedef struct hs_compile_error { char *message; int expression; } hs_compile_error_t;
struct lp_waf_hs_hits { unsigned int n, cap, more; unsigned int *ids; };
typedef int (*lp_hs_match_cb)(unsigned int id, unsigned long long from,
                              unsigned long long to, unsigned int flags, void *context);
int hs_compile_multi(const char *const *expressions, const unsigned int *flags,
                     const unsigned int *ids, unsigned int elements, unsigned int mode,
                     const void *platform, hs_database_t **db, hs_compile_error_t **error);
int hs_compile(const char *expression, unsigned int flags, unsigned int mode,
               const void *platform, hs_database_t **db, hs_compile_error_t **error);
int hs_free_compile_error(hs_compile_error_t *error);
int hs_free_database(hs_database_t *db);
int hs_alloc_scratch(const hs_database_t *db, hs_scratch_t **scratch);
int hs_free_scratch(hs_scratch_t *scratch);
int hs_scan(const hs_database_t *db, const char *data, unsigned int length,
            unsigned int flags, hs_scratch_t *scratch, lp_hs_match_cb onEvent, void *context);
int hs_valid_platform(void);
const char *hs_version(void);
]]

-- hs_compile.h / hs_common.h values (the API's, stable across 4.x and 5.x).
M.CASELESS, M.DOTALL, M.MULTILINE, M.SINGLEMATCH = 1, 2, 4, 8
M.ALLOWEMPTY, M.PREFILTER = 16, 128
local MODE_BLOCK = 1
local SUCCESS = 0

-- The library, or nil with M.error saying why (the waf plugin then runs every pattern
-- with PCRE2 and says so once at load).
local H
do
  local errs = {}
  -- The engine's executable links it when it was built with Hyperscan installed
  -- (CMakeLists.txt): ffi.C then finds its symbols; elsewhere it is loaded by name.
  if pcall(function() return ffi.C.hs_compile_multi end) then H = ffi.C end
  for _, name in ipairs(H and {} or { "hs", "libhs.so.5" }) do
    local ok, l = pcall(ffi.load, name)
    if ok then
      H = l
      break
    end
    errs[#errs + 1] = tostring(l)
  end
  if H and H.hs_valid_platform() ~= SUCCESS then
    H, errs = nil, { "this CPU lacks SSSE3, which Hyperscan needs" }
  end
  if H then
    M.version = ffi.string(H.hs_version())
  else
    M.error = table.concat(errs, "; ")
  end
end
M.available = H ~= nil

local scratch = ffi.new("hs_scratch_t *[1]")
-- The scratch is freed with the VM (a reload's old generation, the worker at exit): the
-- finalizer of this sentinel runs when the VM closes.
M._scratch_owner = ffi.gc(ffi.new("char[1]"), function()
  if scratch[0] ~= nil then
    H.hs_free_scratch(scratch[0])
    scratch[0] = nil
  end
end)
local dbp = ffi.new("hs_database_t *[1]")
local errp = ffi.new("hs_compile_error_t *[1]")

-- Hits of the current scan: ids[1..n]. Reset by scan(); read by its caller before the next.
local hit_ids, nhits = {}, 0
local on_match = ffi.cast("lp_hs_match_cb", function(id)
  nhits = nhits + 1
  hit_ids[nhits] = id
  return 0
end)

local function take_error()
  local e = errp[0]
  local msg = e ~= nil and ffi.string(e.message) or "unknown error"
  local idx = e ~= nil and e.expression or -1
  if e ~= nil then H.hs_free_compile_error(e) end
  return msg, idx
end

-- Tries one pattern alone: true, or nil, message. Used to sort out at load which patterns
-- Hyperscan takes exactly, which only as a prefilter, and which not at all.
function M.check(pattern, flags)
  if not H then return nil, M.error end
  local rc = H.hs_compile(pattern, flags, MODE_BLOCK, nil, dbp, errp)
  if rc ~= SUCCESS then return nil, (take_error()) end
  H.hs_free_database(dbp[0])
  return true
end

-- Compiles patterns[i] with flags[i] and id ids[i] into one block-mode database.
-- Returns a database handle (freed by the GC), or nil, message, index of the bad pattern.
function M.compile(patterns, flags, ids)
  if not H then return nil, M.error end
  local n = #patterns
  local exprs = ffi.new("const char *[?]", n)
  local fl = ffi.new("unsigned int[?]", n)
  local idv = ffi.new("unsigned int[?]", n)
  for i = 1, n do
    exprs[i - 1] = patterns[i]
    fl[i - 1] = flags[i]
    idv[i - 1] = ids[i]
  end
  local rc = H.hs_compile_multi(exprs, fl, idv, n, MODE_BLOCK, nil, dbp, errp)
  if rc ~= SUCCESS then
    local msg, idx = take_error()
    return nil, msg, idx + 1
  end
  local db = ffi.gc(dbp[0], H.hs_free_database)
  rc = H.hs_alloc_scratch(db, scratch)
  if rc ~= SUCCESS then return nil, "hs_alloc_scratch failed (" .. rc .. ")" end
  return db
end

-- The engine's C collector, when this runs in the engine.
local collect
do
  local ok = pcall(require, "luaproxy.ffi")
  if ok then
    ok, collect = pcall(function() return ffi.C.lp_ffi_waf_hs_collect end)
  end
  if not ok then collect = nil end
end
M.c_collector = collect ~= nil

-- A hits buffer for a database of n patterns (with SINGLEMATCH each reports once a scan,
-- so n ids always fit; `more` says otherwise).
function M.hits(n)
  local ids = ffi.new("unsigned int[?]", n)
  local h = ffi.new("struct lp_waf_hs_hits")
  h.cap, h.ids = n, ids
  return { h = h, ids = ids }
end

-- Scans s with db; returns the count of patterns that matched, the ids (read them before
-- the next scan), the index of the first (0 for the C buffer, 1 for the Lua table), and
-- whether more matched than the buffer holds. nil, message on an error.
local scan
if collect then
  scan = function(db, s, hits)
    local h = hits.h
    h.n, h.more = 0, 0
    local rc = H.hs_scan(db, s, #s, 0, scratch[0], collect, h)
    if rc ~= SUCCESS then return nil, "hs_scan failed (" .. rc .. ")" end
    return h.n, hits.ids, 0, h.more ~= 0
  end
else
  scan = function(db, s)
    nhits = 0
    local rc = H.hs_scan(db, s, #s, 0, scratch[0], on_match, nil)
    if rc ~= SUCCESS then return nil, "hs_scan failed (" .. rc .. ")" end
    return nhits, hit_ids, 1, false
  end
  jit.off(scan)
end
M.scan = scan

return M
