-- Hyperscan (Debian's libhyperscan5) through the FFI, for the waf plugin's multi-pattern
-- pass: many regexes tested against one value in a single scan. Only "did pattern N match
-- this value" is asked of it; PCRE2 (proxy.re) then confirms a match and finds its text.
--
-- Why the FFI and not C glue in the engine: the same file then runs under busted with the
-- proxy.test double (ffi.load) and in the engine, as luaproxy/re.lua does for PCRE2. These
-- are Hyperscan's own functions, so they are declared here and not in luaproxy/ffi.lua
-- (whose twin is engine/lua_api.h).
--
-- Per VM (one per worker thread and config generation): one scratch space grown for every
-- database this VM scans with. The databases themselves cross threads: M.shared puts them
-- in the engine's process-wide registry (engine/waf_db.c), so the workers of a generation,
-- and the next generation while this one holds them, compile each only once; Hyperscan
-- allows scanning one database from many threads, each with its own scratch.
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

-- Compiles patterns[i] with flags[i] and id ids[i] into one block-mode database: the raw
-- pointer (the caller frees it or hands it on), or nil, message, index of the bad pattern.
local function compile_raw(patterns, flags, ids)
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
  return dbp[0]
end
M.compile_raw = compile_raw

-- This VM's scratch space grown for db (hs_alloc_scratch keeps it when it fits already).
local function fit_scratch(db)
  local rc = H.hs_alloc_scratch(db, scratch)
  if rc ~= SUCCESS then return nil, "hs_alloc_scratch failed (" .. rc .. ")" end
  return db
end

-- As compile_raw; the database is this VM's alone, freed by the GC.
function M.compile(patterns, flags, ids)
  local raw, err, idx = compile_raw(patterns, flags, ids)
  if not raw then return nil, err, idx end
  return fit_scratch(ffi.gc(raw, H.hs_free_database))
end

-- The process-wide registry of compiled databases (engine/waf_db.c), when this runs in the
-- engine; busted and a plain luajit compile per VM.
local REG
do
  local ok = pcall(require, "luaproxy.ffi")
  if ok then
    ok = pcall(function() return ffi.C.lp_ffi_waf_db_acquire end)
    if ok then REG = ffi.C end
  end
end
M.shared_registry = REG ~= nil
local metap = ffi.new("const char *[1]")
local metalen = ffi.new("size_t[1]")
local free_fn = H and ffi.cast("int (*)(void *)", H.hs_free_database)

-- The database named by key (a text that says everything it is compiled from), shared by
-- every VM of the process: compiled by the first VM that asks (build() returns the raw
-- database from compile_raw and a text of notes on the compile, or nil, message), then
-- taken by reference. Returns db (its reference given back when the GC collects it, at the
-- latest when this VM closes), the notes and whether this VM compiled it; or nil, message.
function M.shared(key, build)
  if not H then return nil, M.error end
  if not REG then
    local raw, notes = build()
    if not raw then return nil, notes end
    local db, err = fit_scratch(ffi.gc(raw, H.hs_free_database))
    if not db then return nil, err end
    return db, notes, true
  end
  local compiled = false
  local got = REG.lp_ffi_waf_db_acquire(key, #key, metap, metalen)
  if got == nil then
    local raw, notes = build()
    if not raw then return nil, notes end
    compiled = true
    got = REG.lp_ffi_waf_db_publish(key, #key, raw, free_fn, notes, #notes, metap, metalen)
    if got == nil then
      -- out of memory in the registry: this VM keeps its own
      local db, err = fit_scratch(ffi.gc(raw, H.hs_free_database))
      if not db then return nil, err end
      return db, notes, true
    end
  end
  local notes = ffi.string(metap[0], metalen[0])
  local db = ffi.gc(ffi.cast("hs_database_t *", got), REG.lp_ffi_waf_db_release)
  local ok, err = fit_scratch(db)
  if not ok then return nil, err end
  return db, notes, compiled
end

-- Compiling off the Lua thread (engine/waf_db.c's compile thread): M.queue(key, patterns,
-- flags, ids) asks for the database named key (once per process; the first asker queues
-- it) and returns whether this call queued it, or nil when the thread cannot take it (the
-- caller then compiles with M.shared); M.get(key) returns "ready", db, notes (a reference
-- taken, as M.shared), "pending", or "failed", why.
M.NONE, M.PENDING, M.READY, M.FAILED = 0, 1, 2, 3
M.async = REG ~= nil and H ~= nil
local dbout = ffi.new("void *[1]")

function M.get(key)
  local st = REG.lp_ffi_waf_db_get(key, #key, dbout, metap, metalen)
  if st == M.READY then
    local notes = ffi.string(metap[0], metalen[0])
    local db = ffi.gc(ffi.cast("hs_database_t *", dbout[0]), REG.lp_ffi_waf_db_release)
    local ok, err = fit_scratch(db)
    if not ok then return "failed", err end
    return "ready", db, notes
  elseif st == M.FAILED then
    return "failed", ffi.string(metap[0], metalen[0])
  elseif st == M.PENDING then
    return "pending"
  end
  return "none"
end

function M.queue(key, patterns, flags, ids)
  -- the state only (db NULL): a reference taken and given back here would free a
  -- database no VM holds yet
  local st = REG.lp_ffi_waf_db_get(key, #key, nil, metap, metalen)
  if st ~= M.NONE then return false end
  local n = #patterns
  local exprs = ffi.new("const char *[?]", n)
  local fl = ffi.new("unsigned int[?]", n)
  local idv = ffi.new("unsigned int[?]", n)
  for i = 1, n do
    exprs[i - 1] = patterns[i]
    fl[i - 1] = flags[i]
    idv[i - 1] = ids[i]
  end
  st = REG.lp_ffi_waf_db_compile(key, #key, n, exprs, fl, idv)
  if st == M.NONE then return nil end
  return st == M.PENDING
end

-- Databases in the process-wide registry (nil outside the engine).
function M.shared_count()
  return REG and REG.lp_ffi_waf_db_count() or nil
end

-- The per-value pipeline in C (engine/waf_scan.c): a group's values, each through the
-- group's transformation chain (transformations in C, engine/waf_transform.c) and scanned,
-- in one call. The engine's own functions (ffi.C) in the proxy; the lp_native library under
-- the proxy.test double when LP_NATIVE_LIB names it (ctest, `luaproxy test`); neither: nil,
-- and luaproxy/waf/engine.lua transforms and scans value by value in Lua.
-- (A library without lp_ffi_waf_scan_segs is an older build's: nil too.)
local W
if H then
  local ok = pcall(require, "luaproxy.ffi")
  if ok and pcall(function() return ffi.C.lp_ffi_waf_scan_segs end) then
    W = ffi.C
  elseif ok then
    local nok, lib = pcall(require, "luaproxy.native")
    if nok and pcall(function() return lib.lp_ffi_waf_scan_segs end) then W = lib end
  end
end

-- The engine's C collector, when this runs in the engine (or lp_native has it).
local collect
if W then
  local ok
  ok, collect = pcall(function() return W.lp_ffi_waf_hs_collect end)
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
M.pipeline_available = W ~= nil
local hs_scan_fn = W and ffi.cast("lp_waf_hs_scan_fn", H.hs_scan)
M.SCAN_FAILED = 0xFFFFFFFF -- a hit's id when the scan of its value failed or matched too much

-- The pipeline state of a rule set's chains (chains[id] = { parent = id, name = "a,b,c" },
-- ids 1..n, each parent before its child): the state (freed by the GC) and the set of
-- chain ids it can run (every step of the chain has a C twin); nil when not available.
function M.pipeline(chains)
  if not W then return nil end
  local n = #chains
  local ws = W.lp_ffi_waf_scan_new(hs_scan_fn, n)
  if ws == nil then return nil end
  ws = ffi.gc(ws, W.lp_ffi_waf_scan_free)
  local ok = { [0] = true }
  for id = 1, n do
    local ch = chains[id]
    local step = W.lp_ffi_waf_transform_id(ch.name:match("([^,]+)$"))
    if step > 0 and ok[ch.parent] and W.lp_ffi_waf_scan_chain(ws, id, ch.parent, step) == 0 then
      ok[id] = true
    end
  end
  return ws, ok
end

function M.pipeline_reset(ws) W.lp_ffi_waf_scan_reset(ws) end

-- Registers db with the state ws: scans with db keep their results across requests under a
-- serial this registration takes (a database at a freed one's address, registered again,
-- never finds the freed one's; one never registered is scanned each time). Register each
-- database when a group takes it.
function M.pipeline_db(ws, db) return W.lp_ffi_waf_scan_db(ws, db) == 0 end

local hitsp = ffi.new("const unsigned *[1]") -- (scan_segs' hits, read before the next call)

-- Segments: a collection's values (or the named items of one) as scan_segs reads them,
-- filled once a request and read by every group scanning that collection (engine/lua_api.h,
-- lp_waf_seg_t). M.segment() makes one (empty); M.segment_room(seg, cap) gives it room for cap
-- values, keeping the first n, and returns the arrays to fill: vals, lens (the caller keeps
-- them: the segment's pointers do not keep them alive). M.segments(n) is an array of n
-- segment pointers (a group's list); M.reads(n) n uint64 (scan_segs' reads).
function M.segment() return ffi.new("lp_waf_seg_t") end
function M.reads(n) return ffi.new("unsigned long long[?]", n) end
function M.segment_room(seg, cap, n)
  local vals, lens = ffi.new("const char *[?]", cap), ffi.new("size_t[?]", cap)
  local keys = ffi.new("unsigned long long[?]", cap)
  if n > 0 then
    ffi.copy(vals, seg.vals, n * ffi.sizeof("const char *"))
    ffi.copy(lens, seg.lens, n * ffi.sizeof("size_t"))
  end
  seg.vals, seg.lens, seg.keys, seg.gen = vals, lens, keys, 0
  return vals, lens, keys
end
function M.segments(n) return ffi.new("lp_waf_seg_t *[?]", n) end
local chain1 = ffi.new("unsigned[1]")

-- The values of segments segs[0..nseg) through chain, or through each of the chains
-- steps[0..nsteps) in turn (steps given: a multiMatch condition's), scanned with db: the count
-- of hits and the array of (id, segment index, value index) triples, from 0 (read it before the
-- next call); nil when it failed. reads (or nil), nreads: by id, a uint64 of the segments whose
-- hits of that id to give (bit j: segs[j]; lp_ffi_waf_scan_segs).
function M.scan_segs(ws, chain, db, segs, nseg, reads, nreads, steps, nsteps)
  if not steps then
    chain1[0] = chain
    steps, nsteps = chain1, 1
  end
  local cnt = W.lp_ffi_waf_scan_segs(ws, steps, nsteps, db, scratch[0], segs, nseg, reads,
                                     nreads or 0, hitsp)
  if cnt < 0 then return nil end
  return tonumber(cnt), hitsp[0]
end

local outp, outn = ffi.new("const char *[1]"), ffi.new("size_t[1]")
-- Value v (kept alive by the caller until the next pipeline_reset) through chain, as the
-- scans transform it (and kept with theirs): a string, v itself when no step changed it.
function M.transformed(ws, chain, v)
  if W.lp_ffi_waf_scan_value(ws, chain, v, #v, outp, outn) ~= 0 then return nil end
  local o = outp[0]
  if o == ffi.cast("const char *", v) then return v end
  return ffi.string(o, outn[0])
end

return M
