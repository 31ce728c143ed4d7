-- waf rule engine: rules are data (Lua tables), checked and compiled once per config load
-- into an IR that a request is run against. Docs: docs/plugins/waf.md.
--
-- The IR (what a SecLang compiler, issue #20, would also produce):
--   rule = { id, msg, tags = {set}, severity, score, paranoia, action, status,
--            conds = { cond, ... } (all must match: a chain), place = "file:line" }
--   cond = { op, arg, negate, chain = transform-chain id, targets = { target, ... } }
--   target = { coll, key = lower-case name or nil, count = bool, skip = { [key] = true } }
-- Compiling groups the single-condition regex and phrase-list rules by transformation
-- chain; each group's patterns go into one Hyperscan database, so a value is scanned once
-- per chain for all of them, and PCRE2 (proxy.re) confirms a match and gives its text.
-- Patterns Hyperscan cannot take are run by PCRE2 alone (listed in cs.pcre_only). Other
-- rules (chains, counts, other operators) are evaluated one by one, in rule order.
-- Transformed values are cached per request by chain prefix, so a chain shared by many
-- rules (or a prefix of it) runs once per value.
local T = require "luaproxy.waf.transforms"
local V = require "luaproxy.waf.vars"
local hs = require "luaproxy.waf.hs"
local re = require "luaproxy.re"
local CONFIRM = require "luaproxy.waf.confirm"
local FOLD = require "luaproxy.waf.fold"

local type, pairs, ipairs, tostring, tonumber, error, pcall, setmetatable, next =
  type, pairs, ipairs, tostring, tonumber, error, pcall, setmetatable, next
local byte, find, format, gsub, lower, upper, sub, match = string.byte, string.find,
  string.format, string.gsub, string.lower, string.upper, string.sub, string.match
local concat = table.concat
local clear = require "table.clear"
local bit = require "bit"
-- t[k], made an empty table on first use (the walk's per-request and per-VM caches).
local function tab_of(t, k)
  local v = t[k]
  if not v then
    v = {}
    t[k] = v
  end
  return v
end

-- Monotonic seconds for the per-request time budget (proxy.monotonic in the engine and the
-- test double; os.clock elsewhere).
local function proxy_now()
  local p = package.loaded.proxy
  if type(p) == "table" and p.monotonic then return p.monotonic() end
  return os.clock()
end

local M = {}

M.SEVERITY = { critical = 5, error = 4, warning = 3, notice = 2 }
M.ACTIONS = { score = true, deny = true, log = true }
-- Operators: name -> kind of argument.
M.OPS = {
  rx = "string", pm = "list", contains = "string", equals = "string",
  begins_with = "string", ends_with = "string", within = "list",
  eq = "number", ne = "number", gt = "number", ge = "number", lt = "number", le = "number",
  validate_urlencoding = "boolean", validate_utf8 = "boolean",
}
local RULE_KEYS = { id = true, msg = true, tags = true, severity = true, paranoia = true,
  action = true, status = true, chain = true, targets = true, transforms = true,
  negate = true, score = true }
local COND_KEYS = { targets = true, transforms = true, negate = true }

---------------------------------------------------------------------------------------------
-- Checking rules (at load): every problem names the rule's place.

local function fail(place, msg) error({ waf = true, msg = place .. ": " .. msg }, 0) end

local function parse_target(place, s)
  if type(s) ~= "string" then fail(place, "a target must be a string") end
  local count, skip = false, false
  local t = s
  if sub(t, 1, 1) == "&" then count, t = true, sub(t, 2) end
  if sub(t, 1, 1) == "!" then skip, t = true, sub(t, 2) end
  local coll, key = t:match("^([%a_]+):(.+)$")
  if not coll then coll = t:match("^[%a_]+$") and t end
  if not coll then fail(place, format("bad target %q (expected collection or collection:name)", s)) end
  if not (V.BASE[coll] or V.NAMES[coll] or V.ALIAS[coll]) then
    fail(place, format("unknown collection %q in target %q", coll, s))
  end
  if skip and (count or not key) then fail(place, format("target %q: ! needs collection:name", s)) end
  return { coll = coll, key = key and lower(key), count = count, skip = skip }
end

local function check_cond(place, c, keys)
  local cond = { negate = c.negate == true }
  local op
  for k in pairs(c) do
    if M.OPS[k] then
      if op then fail(place, format("two operators (%s and %s): one per condition", op, k)) end
      op = k
    elseif not keys[k] then
      fail(place, format("unknown key %q", tostring(k)))
    end
  end
  if not op then fail(place, "no operator (one of rx, pm, contains, equals, ...)") end
  local arg = c[op]
  local kind = M.OPS[op]
  if kind == "list" then
    if type(arg) ~= "table" or #arg == 0 then fail(place, op .. ": expected a non-empty list of strings") end
    for i, x in ipairs(arg) do
      if type(x) ~= "string" or x == "" then fail(place, format("%s[%d]: expected a non-empty string", op, i)) end
    end
  elseif kind == "number" then
    if type(arg) ~= "number" then fail(place, op .. ": expected a number") end
  elseif kind == "boolean" then
    if arg ~= true then fail(place, op .. ": expected true") end
  elseif type(arg) ~= "string" then
    fail(place, op .. ": expected a string")
  end
  if op == "rx" then
    local ok, err = re.compile(arg, "")
    if not ok then fail(place, "rx: " .. tostring(err)) end
  end
  cond.op, cond.arg = op, arg
  if type(c.targets) ~= "table" or #c.targets == 0 then fail(place, "targets: expected a non-empty list") end
  cond.targets = {}
  for _, s in ipairs(c.targets) do cond.targets[#cond.targets + 1] = parse_target(place, s) end
  local tr = c.transforms or {}
  if type(tr) ~= "table" then fail(place, "transforms: expected a list of names") end
  for _, name in ipairs(tr) do
    if type(name) ~= "string" or name == "names" or not T[name] then
      fail(place, format("unknown transform %q (known: %s)", tostring(name), concat(T.names, ", ")))
    end
  end
  cond.transforms = tr
  return cond
end

-- Checks one rule table; returns its IR (conditions not yet compiled) or raises with place.
function M.check_rule(r, place)
  if type(r) ~= "table" then fail(place, "a rule must be a table") end
  if type(r.id) ~= "number" or r.id % 1 ~= 0 or r.id < 1 then fail(place, "id: expected a whole number >= 1") end
  place = format("%s (rule %d)", place, r.id)
  for k in pairs(r) do
    if not RULE_KEYS[k] and not M.OPS[k] then fail(place, format("unknown key %q", tostring(k))) end
  end
  if type(r.msg) ~= "string" or r.msg == "" then fail(place, "msg: expected a message") end
  local tags = {}
  if r.tags ~= nil then
    if type(r.tags) ~= "table" then fail(place, "tags: expected a list of strings") end
    for _, t in ipairs(r.tags) do
      if type(t) ~= "string" then fail(place, "tags: expected a list of strings") end
      tags[t] = true
    end
  end
  local sev = r.severity or "critical"
  if not M.SEVERITY[sev] then
    fail(place, format("severity: expected critical, error, warning or notice, got %q", tostring(sev)))
  end
  local pl = r.paranoia or 1
  if type(pl) ~= "number" or pl < 1 or pl > 4 or pl % 1 ~= 0 then fail(place, "paranoia: expected 1..4") end
  local action = r.action or "score"
  if not M.ACTIONS[action] then fail(place, format("action: expected score, deny or log, got %q", tostring(action))) end
  if r.status ~= nil and (type(r.status) ~= "number" or r.status < 400 or r.status > 599) then
    fail(place, "status: expected 400..599")
  end
  if r.score ~= nil and (type(r.score) ~= "number" or r.score < 0) then fail(place, "score: expected a number >= 0") end
  local first = {}
  for k, v in pairs(r) do if COND_KEYS[k] or M.OPS[k] then first[k] = v end end
  local conds = { check_cond(place, first, COND_KEYS) }
  if r.chain ~= nil then
    if type(r.chain) ~= "table" or #r.chain == 0 then fail(place, "chain: expected a list of conditions") end
    for i, c in ipairs(r.chain) do
      if type(c) ~= "table" then fail(place, format("chain[%d]: expected a table", i)) end
      conds[#conds + 1] = check_cond(format("%s chain[%d]", place, i), c, COND_KEYS)
    end
  end
  return {
    id = r.id, msg = r.msg, tags = tags, taglist = r.tags or {}, severity = sev,
    score = r.score or M.SEVERITY[sev], paranoia = pl, action = action, status = r.status,
    conds = conds, place = place,
  }
end

-- Rules from a Lua file: it calls rule { ... } for each (the place is file:line of the
-- call), or returns a list of rule tables. Returns a list of IR rules and the file's text,
-- or nil, problem.
function M.read_file(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, "cannot read rule file " .. tostring(err) end
  local src = f:read("*a")
  f:close()
  return src
end

-- `src`: the file's text when the caller read it already (M.read_file).
function M.load_file(path, src)
  if not src then
    local err
    src, err = M.read_file(path)
    if not src then return nil, err end
  end
  if not src:find("%S") then return nil, path .. ": empty rule file (no rules)" end
  local out = {}
  local env = setmetatable({}, { __index = { string = string, table = table, math = math,
    ipairs = ipairs, pairs = pairs, tostring = tostring, tonumber = tonumber } })
  env.rule = function(r)
    local info = debug.getinfo(2, "l")
    out[#out + 1] = M.check_rule(r, format("%s:%d", path, info and info.currentline or 0))
  end
  local chunk, lerr = loadstring(src, "@" .. path)
  if not chunk then return nil, "bad rule file: " .. tostring(lerr) end
  setfenv(chunk, env)
  local ok, res = pcall(chunk)
  if not ok then
    if type(res) == "table" and res.waf then return nil, res.msg end
    return nil, "bad rule file: " .. tostring(res)
  end
  if type(res) == "table" then
    for i, r in ipairs(res) do
      local cok, rr = pcall(M.check_rule, r, format("%s: rule [%d]", path, i))
      if not cok then return nil, type(rr) == "table" and rr.msg or tostring(rr) end
      out[#out + 1] = rr
    end
  elseif res ~= nil then
    return nil, path .. ": a rule file returns a list of rules, or nothing"
  end
  if #out == 0 then return nil, path .. ": no rules" end
  return out, src
end

-- Rules from a list of tables (a config's `rules`); nil, problem on the first bad one.
function M.load_list(list, prefix)
  local out = {}
  for i, r in ipairs(list) do
    local ok, rr = pcall(M.check_rule, r, format("%s[%d]", prefix, i))
    if not ok then return nil, type(rr) == "table" and rr.msg or tostring(rr) end
    out[#out + 1] = rr
  end
  return out
end

---------------------------------------------------------------------------------------------
-- Compiling a rule set.

-- Expands a target's aliases into base and names collections.
local function expand(t, out)
  local alias = V.ALIAS[t.coll]
  if alias then
    for _, c in ipairs(alias) do out[#out + 1] = { coll = c, key = t.key, count = t.count, skip = t.skip } end
  else
    out[#out + 1] = t
  end
end

-- Copies a rule with its conditions (exclusions change copies, never the shared set).
local function copy_rule(r)
  local c = {}
  for k, v in pairs(r) do c[k] = v end
  c.conds = {}
  for i, cond in ipairs(r.conds) do
    local cc = {}
    for k, v in pairs(cond) do cc[k] = v end
    c.conds[i] = cc
  end
  return c
end

-- Resolves a condition's targets into { coll = { all = bool, keys = set, skip = set, count } }.
local function resolve_targets(cond)
  local flat = {}
  for _, t in ipairs(cond.targets) do expand(t, flat) end
  local by, order = {}, {}
  for _, t in ipairs(flat) do
    local e = by[t.coll]
    if not e then
      e = { coll = t.coll, all = false, keys = nil, skip = nil, count = false }
      by[t.coll] = e
    end
    if t.skip then
      e.skip = e.skip or {}
      e.skip[t.key] = true
    else
      if not e.listed then order[#order + 1] = e; e.listed = true end
      if t.count then e.count = true end
      if t.key then
        e.keys = e.keys or {}
        e.keys[t.key] = true
      else
        e.all = true
      end
    end
  end
  cond.tgt = order
  cond.by = by
end

local function rule_matches_sel(rule, sel)
  if sel.ids then
    for _, id in ipairs(sel.ids) do if rule.id == id then return true end end
  end
  if sel.id_ranges then
    for _, r in ipairs(sel.id_ranges) do if rule.id >= r[1] and rule.id <= r[2] then return true end end
  end
  if sel.tags then
    for _, t in ipairs(sel.tags) do if rule.tags[t] then return true end end
  end
  return false
end

-- Applies exclusions: { ids =, tags =, targets = nil (drop the rule) or a list of targets
-- taken out of every condition of the rule }.
local function apply_exclusions(rules, exclusions)
  if not exclusions or #exclusions == 0 then return rules end
  local out = {}
  for _, r in ipairs(rules) do
    local keep = r
    for _, ex in ipairs(exclusions) do
      if keep and rule_matches_sel(keep, ex) then
        if not ex.targets then
          keep = nil
        else
          if keep == r then keep = copy_rule(r) end
          for _, cond in ipairs(keep.conds) do
            local ts = {}
            for _, t in ipairs(cond.targets) do ts[#ts + 1] = t end
            for _, s in ipairs(ex.targets) do
              local t = parse_target("exclusion", s)
              local flat = {}
              expand(t, flat)
              for _, ft in ipairs(flat) do
                if ft.key then
                  ts[#ts + 1] = { coll = ft.coll, key = ft.key, skip = true }
                else
                  -- The whole collection goes: drop its targets.
                  local kept = {}
                  for _, x in ipairs(ts) do
                    local xf = {}
                    expand(x, xf)
                    for _, y in ipairs(xf) do if y.coll ~= ft.coll then kept[#kept + 1] = y end end
                  end
                  ts = kept
                end
              end
            end
            cond.targets = ts
          end
        end
      end
    end
    if keep then out[#out + 1] = keep end
  end
  return out
end

local function escape_literal(s)
  return (gsub(s, "[^%w_ ]", function(c) return format("\\x%02x", byte(c)) end))
end

-- Compiles IR rules into a rule set for one plugin instance.
-- opts: paranoia, exclusions, hyperscan (bool). Returns cs, or nil, problem.
function M.compile(rules, opts)
  local paranoia = opts.paranoia or 1
  local sel = {}
  local seen = {}
  for _, r in ipairs(rules) do
    if seen[r.id] then
      return nil, format("%s: duplicate rule id %d (also at %s)", r.place, r.id, seen[r.id])
    end
    seen[r.id] = r.place
    if r.paranoia <= paranoia then sel[#sel + 1] = r end
  end
  sel = apply_exclusions(sel, opts.exclusions)
  local cs = { rules = sel, chains = {}, groups = {}, slow = {}, needs_body = false,
               pcre_only = {}, hs_patterns = 0, by_id = {} }
  -- Transform chains as prefixes: chain "a,b" is step b over chain "a".
  local chain_ids = { [""] = 0 }
  cs.chains[0] = { parent = nil, fn = nil, name = "" }
  local function chain_of(tr)
    local key, parent = "", 0
    for _, name in ipairs(tr) do
      key = key == "" and name or key .. "," .. name
      local id = chain_ids[key]
      if not id then
        id = #cs.chains + 1
        chain_ids[key] = id
        cs.chains[id] = { parent = parent, fn = T[name], name = key }
      end
      parent = id
    end
    return parent
  end
  local groups = {}
  for ri, r in ipairs(sel) do
    r.index = ri
    cs.by_id[r.id] = r
    for _, cond in ipairs(r.conds) do
      cond.rule = r
      cond.chain = chain_of(cond.transforms)
      resolve_targets(cond)
      for _, e in ipairs(cond.tgt) do
        local base = V.NAMES[e.coll] or e.coll
        if V.BODY[base] then cs.needs_body = true end
      end
      if cond.op == "pm" then
        cond.phrases = {}
        for i, p in ipairs(cond.arg) do cond.phrases[i] = lower(p) end
      elseif cond.op == "within" then
        cond.set = {}
        for _, p in ipairs(cond.arg) do cond.set[p] = true end
      end
    end
    local c1 = r.conds[1]
    local fast = #r.conds == 1 and (c1.op == "rx" or c1.op == "pm") and not c1.negate
    if fast then
      for _, e in ipairs(c1.tgt) do if e.count then fast = false end end
    end
    if fast and #c1.tgt > 0 then
      local g = groups[c1.chain]
      if not g then
        g = { chain = c1.chain, conds = {}, colls = {}, collset = {}, pcre = {}, pats = {}, flags = {}, ids = {} }
        groups[c1.chain] = g
        cs.groups[#cs.groups + 1] = g
      end
      for _, e in ipairs(c1.tgt) do
        if not g.collset[e.coll] then
          g.collset[e.coll] = true
          g.colls[#g.colls + 1] = e.coll
        end
      end
      local pats = {}
      if c1.op == "rx" then
        pats[1] = { c1.arg, hs.SINGLEMATCH }
      else
        for _, p in ipairs(c1.arg) do pats[#pats + 1] = { escape_literal(p), hs.SINGLEMATCH + hs.CASELESS } end
      end
      g.conds[#g.conds + 1] = c1
      local ci = #g.conds
      -- the values the condition reads (note_hit records only their hits): per collection,
      -- true for every name, else the set of names it lists
      g.reads = g.reads or {}
      local reads = {}
      for _, e in ipairs(c1.tgt) do reads[e.coll] = (e.all or not e.keys) or e.keys end
      g.reads[ci] = reads
      for _, p in ipairs(pats) do
        g.pats[#g.pats + 1], g.flags[#g.flags + 1], g.ids[#g.ids + 1] = p[1], p[2], ci
      end
    else
      cs.slow[#cs.slow + 1] = r
    end
  end
  -- Per group and collection, the names worth transforming and scanning at all: when every
  -- condition of the group names its keys there (headers:referer), other items are skipped.
  for _, g in ipairs(cs.groups) do
    g.only = {}
    for _, cname in ipairs(g.colls) do
      local set = {}
      for _, cond in ipairs(g.conds) do
        local e = cond.by[cname]
        if e and e.listed then
          if e.all or not e.keys then
            set = nil
            break
          end
          for k in pairs(e.keys) do set[k] = true end
        end
      end
      g.only[cname] = set
    end
  end
  cs.use_hs = opts.hyperscan ~= false and hs.available
  cs.hyperscan = cs.use_hs
  return cs
end

-- The registry key of a group's database: everything it is compiled from.
local function group_key(g)
  local parts = { "waf-hs-1\0" }
  for k = 1, #g.pats do
    parts[#parts + 1] = format("%d:%d:%d:", g.flags[k], g.ids[k], #g.pats[k])
    parts[#parts + 1] = g.pats[k]
  end
  return concat(parts)
end

-- Takes database db of group g with the compiler's notes (compile_group, below): g.pats,
-- flags and ids become what the database holds; returns { [condition index] = why } of the
-- conditions left out for PCRE2 (notes "D").
local function apply_notes(g, db, notes)
  local dropped = {}
  if notes ~= "" then
    local pats, ids = g.pats, g.ids
    local p2, f2, i2 = {}, {}, {}
    for kind, a, b in notes:gmatch("(%u) (%d+) ([^\n]*)\n") do
      if kind == "K" then
        local k = tonumber(a)
        p2[#p2 + 1], f2[#f2 + 1], i2[#i2 + 1] = pats[k], tonumber(b), ids[k]
      elseif kind == "D" then
        dropped[tonumber(a)] = b
      end
    end
    g.pats, g.flags, g.ids = p2, f2, i2
  end
  if db then g.db, g.hits = db, hs.hits(#g.pats) end
  return dropped
end

-- Compiles group g's patterns into one Hyperscan database, shared by every VM of the
-- process (hs.shared: the first VM compiles, the others take a reference). A pattern
-- Hyperscan refuses is tried as a prefilter (PCRE2 confirms every match anyway), else its
-- condition is left to PCRE2 alone: never skipped. The decisions travel with the database
-- as notes ("K index flags" per pattern kept, "D condition why" per condition left out), so
-- a VM taking it applies them without checking each pattern again. Sets g.db, g.hits and
-- g.pats/flags/ids to what the database holds; returns { [condition index] = why } of the
-- conditions left out, or nil, problem. `pause` yields between long steps.
local function compile_group(g, pause)
  local pats, flags, ids = g.pats, g.flags, g.ids
  local dropped = {}
  local function build()
    local raw = hs.compile_raw(pats, flags, ids)
    if raw then return raw, "" end
    -- Refused: each pattern alone (exact, as a prefilter, or PCRE2 only), then the group
    -- once. (Retrying the group on each refusal compiles it again per refused pattern.)
    local kept, notes, drop = {}, {}, {}
    for k = 1, #pats do
      local ci = ids[k]
      if not drop[ci] then
        local f = flags[k]
        local ok, err = hs.check(pats[k], f)
        if not ok and f < hs.PREFILTER and hs.check(pats[k], f + hs.PREFILTER) then
          ok, f = true, f + hs.PREFILTER
        end
        -- A long pattern takes Hyperscan a while: yield after each.
        if pause and #pats[k] > 256 then pause() end
        if ok then
          kept[#kept + 1] = { k, f }
        else
          drop[ci] = gsub(tostring(err), "\n", " ")
        end
      end
      if pause and k % 64 == 0 then pause() end
    end
    local p2, f2, i2 = {}, {}, {}
    for _, kf in ipairs(kept) do
      local k, f = kf[1], kf[2]
      -- patterns of a condition dropped after some of its phrases went in go too
      if not drop[ids[k]] then
        p2[#p2 + 1], f2[#f2 + 1], i2[#i2 + 1] = pats[k], f, ids[k]
        notes[#notes + 1] = format("K %d %d\n", k, f)
      end
    end
    for ci, why in pairs(drop) do
      dropped[ci] = why
      notes[#notes + 1] = format("D %d %s\n", ci, why)
    end
    if #p2 == 0 then return nil, "none" end
    local db, err = hs.compile_raw(p2, f2, i2)
    if not db then return nil, tostring(err) end
    return db, concat(notes)
  end
  local db, notes, here = hs.shared(group_key(g), build)
  g.compiled_here = here
  if not db then
    if notes == "none" then
      g.pats, g.flags, g.ids = {}, {}, {}
      return dropped
    end
    return nil, "hyperscan: " .. tostring(notes)
  end
  return apply_notes(g, db, notes)
end

-- A group's database taken once the rule set's C pipeline exists: registered with it (its
-- results are kept under that registration, hs.pipeline_db; pipeline_of registers those
-- taken before).
local function register_db(cs, g)
  local p = cs.pipe
  if p and g.db then hs.pipeline_db(p.ws, g.db) end
end

-- Compiles the Hyperscan databases of a rule set (the slow part: about 0.4 s of CPU for the
-- default rules; each database once per process while some VM holds it, compile_group).
-- Called by the plugin's init_worker, with `pause` yielding between two databases so that
-- no single stretch of Lua runs for long (lua.phase_timeout counts time without a yield);
-- else by the first request that needs it (specs, or a rule set init_worker did not see).
-- Without Hyperscan every pattern runs through PCRE2.
local function took_lua(cs, g, dropped)
  register_db(cs, g)
  for ci, why in pairs(dropped) do
    local cond = g.conds[ci]
    g.pcre[#g.pcre + 1] = cond
    cs.pcre_only[#cs.pcre_only + 1] = format("%d (%s)", cond.rule.id, why)
  end
  cs.hs_patterns = cs.hs_patterns + #g.pats
  if g.db then
    cs.hs_dbs = (cs.hs_dbs or 0) + 1
    if g.compiled_here then cs.hs_compiled = (cs.hs_compiled or 0) + 1 end
  end
end

function M.finish(cs, pause)
  if cs.ready then return true end
  for _, g in ipairs(cs.groups) do
    if not cs.use_hs then
      g.pcre, g.conds = g.conds, {}
    elseif #g.pats > 0 then
      local queued
      if hs.async and not cs.sync then
        g.key = group_key(g)
        queued = hs.queue(g.key, g.pats, g.flags, g.ids)
      end
      if queued ~= nil then
        -- On the registry's compile thread (M.poll takes it): until then every condition
        -- of the group runs through PCRE2 (g.waiting).
        g.compiled_here = queued
        g.waiting = {}
        for _, cond in ipairs(g.conds) do g.waiting[#g.waiting + 1] = cond end
        for _, cond in ipairs(g.pcre) do g.waiting[#g.waiting + 1] = cond end
        cs.pending = cs.pending or {}
        cs.pending[#cs.pending + 1] = g
      else
        local dropped, err = compile_group(g, pause)
        if not dropped then return nil, err end
        took_lua(cs, g, dropped)
      end
    end
    if pause then pause() end
  end
  M.poll(cs)
  cs.ready = true
  return true
end

-- Takes the databases of the Lua rules' groups the compile thread finished (as
-- poll_seclang); true when none is pending.
function M.poll(cs)
  local pending = cs.pending
  if not pending then return true end
  local left = {}
  for _, g in ipairs(pending) do
    local st, db, notes = hs.get(g.key)
    if st == "ready" then
      took_lua(cs, g, apply_notes(g, db, notes))
      g.waiting = nil
    elseif st == "pending" then
      left[#left + 1] = g
    else
      -- refused (or unknown): PCRE2 runs the whole group
      g.pcre, g.conds, g.waiting = g.waiting, {}, nil
      cs.pcre_only[#cs.pcre_only + 1] = "group " .. tostring(g.chain) .. " (hyperscan: "
        .. tostring(st == "failed" and db:match("^[^\n]*") or st) .. ")"
    end
  end
  cs.pending = #left > 0 and left or nil
  return cs.pending == nil
end

---------------------------------------------------------------------------------------------
-- Evaluating.

-- The C pipeline (hs.pipeline) of a rule set: made on first use, per VM; false when
-- unavailable. Its transformed values are the request's (keyed by the values' addresses):
-- forgotten when another request's state asks (owner, weak: a finished request's state
-- goes).
local function pipeline_of(st)
  local cs = st.cs
  local p = cs.pipe
  if p == nil then
    local ws, ok = hs.pipeline(cs.chains)
    for _, g in ipairs(ws and cs.groups or {}) do if g.db then hs.pipeline_db(ws, g.db) end end
    p = ws and { ws = ws, ok = ok, owner = setmetatable({}, { __mode = "v" }), serial = 0, segs = {},
                 gsegs = {} }
      or false
    cs.pipe = p
  end
  if p and p.owner[1] ~= st then
    hs.pipeline_reset(p.ws)
    p.owner[1] = st
    p.serial = p.serial + 1
  end
  return p
end

local low = require "luaproxy.lower" -- lower(s) of a name, kept per VM (st.ln makes each
-- name of a request once)

-- The lower-case names of collection c, made once per request (st.ln, keyed by the names
-- array: REQUEST_HEADERS_NAMES shares its base's): group lists, hit filters and target
-- keys all compare lower-case names.
-- In the walk, st.ln and the arrays are take_scratch's, reused from request to request
-- (st.lpool: the arrays, st.ln.used of them taken by this request), each array's entries
-- past its collection's count dropped when taken; a collection of over 256 names gets its
-- own (a pool array keeps its size).
local function lnames(st, c)
  local names = c.names
  local ln = tab_of(st, "ln")
  local l = ln[names]
  if not l then
    local n = c.n
    local pool = n <= 256 and st.lpool
    if pool then
      local u = (ln.used or 0) + 1
      ln.used = u
      l = pool[u]
      if l then
        for i = n + 1, #l do l[i] = nil end
      else
        l = {}
        pool[u] = l
      end
    else
      l = {}
    end
    for i = 1, n do l[i] = low(names[i]) end
    ln[names] = l
  end
  return l
end

-- Value i of collection c through chain id `ch`, cached by chain and text (st.vc[ch][text]:
-- transformations are pure, so equal texts of different collections share an entry): one
-- table per chain, not one per value (a table per value and collection made ~60 per browser
-- GET). In the walk st.vc is the rule set's (take_scratch) and kept from one request to the
-- next, as the C pipeline keeps its scans' results: most of a request's values are the last
-- requests' (a client's headers and cookies), and a browser GET's 106 texts the walk asks
-- for were 50k instructions of transformations redone at each request. vc.bytes: about
-- what the entries hold (take_scratch empties them past VC_KEEP).
local VC_KEEP = 262144
local function keep(vc, per, raw, v)
  per[raw] = v
  vc.bytes = (vc.bytes or 0) + 64 + #raw + (v ~= raw and #v or 0)
end

local function value(st, cname, c, i, ch)
  local raw = c.values[i]
  if ch == 0 then return raw end
  local vc = tab_of(st, "vc")
  local per = tab_of(vc, ch)
  local v = per[raw]
  if v then return v end
  local p = pipeline_of(st)
  if p and p.ok[ch] then
    -- the C pipeline's text (the same the group scans saw), shared with them
    v = hs.transformed(p.ws, ch, raw)
    if v then
      keep(vc, per, raw, v)
      return v
    end
  end
  local chain = st.cs.chains[ch]
  local input = value(st, cname, c, i, chain.parent)
  -- Each step's result kept per request by its input text (transformations are pure):
  -- ordinary values come out of most steps unchanged, so different chains, and values of
  -- different collections, keep asking the same step about the same text (a browser GET:
  -- 738 transformation calls without this).
  local fn = chain.fn
  local tm = tab_of(st, "tm")
  local m = tab_of(tm, fn)
  v = m[input]
  if v == nil then
    v = fn(input)
    m[input] = v
  end
  keep(vc, per, raw, v)
  return v
end

-- (k: the item's name in lower case, lnames')
local function key_ok(e, k)
  if e.keys == nil and e.skip == nil then return e.all end
  if e.skip and e.skip[k] then return false end
  if e.all then return true end
  return e.keys ~= nil and e.keys[k] == true
end

local SQ = nil -- luaproxy.waf.detect (the operators in C), loaded on first use
local function detect() SQ = SQ or require "luaproxy.waf.detect"; return SQ end

-- Tests one value; returns from, to of what matched (to the match's text) or nil; and
-- "error", message when the regex gave up (the match limit).
local function test(cond, v)
  local op, arg = cond.op, cond.arg
  if op == "rx" then
    local from, to, err = re.find(v, arg, "")
    if err then return "error", err end
    return from, to
  elseif op == "pm" then
    local lv = lower(v)
    for _, p in ipairs(cond.phrases) do
      local from, to = find(lv, p, 1, true)
      if from then return from, to end
    end
    return nil
  elseif op == "contains" then
    return find(v, arg, 1, true)
  elseif op == "equals" then
    if v == arg then return 1, #v end
  elseif op == "begins_with" then
    if sub(v, 1, #arg) == arg then return 1, #arg end
  elseif op == "ends_with" then
    if #arg <= #v and sub(v, -#arg) == arg or arg == "" then return #v - #arg + 1, #v end
  elseif op == "within" then
    if cond.set[v] then return 1, #v end
  elseif op == "validate_urlencoding" then
    local i = detect().urlenc_invalid(v)
    if i then return i, i + 2 end
  elseif op == "validate_utf8" then
    local i = detect().utf8_invalid(v)
    if i then return i, i end
  else
    local n = tonumber(v)
    if not n then return nil end
    if (op == "eq" and n == arg) or (op == "ne" and n ~= arg) or (op == "gt" and n > arg)
      or (op == "ge" and n >= arg) or (op == "lt" and n < arg) or (op == "le" and n <= arg) then
      return 1, #v
    end
  end
  return nil
end

local function sanitize(s)
  return (gsub(s, "[^\32-\126]", function(c) return format("\\x%02x", byte(c)) end):gsub('"', '\\"'))
end
-- (for the plugin's log lines: variable names are the client's too)
M.sanitize = sanitize

local function excerpt(v, from, to)
  if type(from) ~= "number" then return sanitize(sub(v, 1, 48)) end
  local a = from > 8 and from - 8 or 1
  local b = to - a >= 48 and a + 47 or to + 8
  local s = sanitize(sub(v, a, b))
  if #s > 96 then s = sub(s, 1, 96) end
  return s
end

local function varname(cname, c, i)
  local n = c.names[i]
  if n == "" or n == nil then return cname end
  return cname .. ":" .. n
end

-- A hit: rule r matched value i of collection cname (from..to of v, or an error).
local function hit(st, r, cname, c, i, v, from, to)
  local m = tab_of(st, "matches")
  if st.hit[r] then return end
  local rec = { id = r.id, msg = r.msg, severity = r.severity, action = r.action,
                var = varname(cname, c, i), tags = r.taglist }
  if from == "error" then
    rec.regex_error = to
    rec.excerpt = excerpt(v)
  else
    rec.excerpt = excerpt(v, from, to)
  end
  st.hit[r] = rec
  m[#m + 1] = rec
end

-- Does condition cond match any of its targets? Returns cname, c, i, v, from, to. With
-- negate, it holds when none of its values matches (also when there are none).
local NONE = { n = 1, names = { "" }, values = { "" } }
local function cond_match(st, cond)
  local negate = cond.negate
  for _, e in ipairs(cond.tgt) do
    local cname = e.coll
    local c = st.vars:coll(cname)
    if e.count then
      local n = 0
      if not e.keys and not e.skip then
        n = c.n
      else
        local lows = lnames(st, c)
        for i = 1, c.n do if key_ok(e, lows[i]) then n = n + 1 end end
      end
      local v = tostring(n)
      local from, to = test(cond, v)
      if from ~= nil then
        if negate then return nil end
        return "&" .. cname, { n = 1, names = { e.keys and next(e.keys) or "" } }, 1, v, from, to
      end
    else
      local lows = (e.keys or e.skip) and lnames(st, c)
      for i = 1, c.n do
        if not lows and e.all or lows and key_ok(e, lows[i]) then
          local v = value(st, cname, c, i, cond.chain)
          local from, to = test(cond, v)
          if from == "error" then return cname, c, i, v, from, to end
          if from ~= nil then
            if negate then return nil end
            return cname, c, i, v, from, to
          end
        end
      end
    end
  end
  if negate then return cond.tgt[1].coll, NONE, 1, "", 1, 0 end
  return nil
end

local scan = hs.scan
local ffi = require "ffi"
local pipeline_hits -- below

-- Confirms condition cond (of a rule not matched yet) on value i of collection cname, with
-- PCRE2 or the operator itself; records a hit.
local function confirm(st, cond, cname, c, i, v)
  local r = cond.rule
  if st.hit[r] then return end
  st.rule = r -- (named by the plugin's log when this raises)
  local e = cond.by[cname]
  if e and not e.count and key_ok(e, lnames(st, c)[i]) then
    local from, to = test(cond, v)
    if from then hit(st, r, cname, c, i, v, from, to) end
  end
end

-- A group's values: those of its collections, only the named items where all its
-- conditions name theirs (g.only), in segments (hs.segment): one per collection and set of
-- names, filled once per request (seg_fill) and read by every group (or multiMatch
-- condition) that scans it. Each group's list of segments (group_segs) is made on first use.
-- A segment's arrays are kept by the pipeline and refilled for each request (the strings are
-- that request's); seg.idx (named items only): the collection's index of each value.
local function seg_key(cname, only)
  if not only then return cname end
  local keys = {}
  for k in pairs(only) do keys[#keys + 1] = k end
  table.sort(keys)
  return cname .. "[" .. concat(keys, "\0") .. "]"
end

-- (list.reads: by condition id, the segments whose hits note_one would record, as a bit
-- each: C leaves the others out; a group's only, a multiMatch condition's have none)
local function group_segs(p, g)
  local list = { n = #g.colls, cd = hs.segments(#g.colls) }
  for j, cname in ipairs(g.colls) do
    local only = g.only[cname]
    local key = seg_key(cname, only)
    local sg = p.segs[key]
    if not sg then
      sg = { cname = cname, only = only, idx = only and {} or nil, cd = hs.segment(), cap = 0 }
      p.segs[key] = sg
    end
    list[j] = sg
    list.cd[j - 1] = sg.cd
  end
  local reads = g.reads
  if reads and g.conds then
    local nr = #g.conds + 1
    local masks = hs.reads(nr)
    for gid = 1, nr - 1 do
      local rd = reads[gid]
      for j = 1, math.min(list.n, 64) do
        if rd and rd[list[j].cname] then masks[gid] = bit.bor(masks[gid], bit.lshift(1ULL, j - 1)) end
      end
    end
    list.reads, list.nreads = masks, nr
  end
  p.gsegs[g] = list
  return list
end

local function seg_fill(st, p, sg)
  local c = st.vars:coll(sg.cname)
  local low = lnames(st, c)
  sg.low = low
  local only, idx = sg.only, sg.idx
  local vals, lens = sg.vals, sg.lens
  local values = c.values
  local n, cap = 0, sg.cap
  for i = 1, c.n do
    if not only or only[low[i]] then
      if n >= cap then
        cap = n < 16 and 16 or n * 2
        vals, lens, sg.keys = hs.segment_room(sg.cd, cap, n)
        sg.vals, sg.lens, sg.cap = vals, lens, cap
      end
      local v = values[i]
      vals[n], lens[n] = v, #v
      n = n + 1
      if idx then idx[n] = i end
    end
  end
  local cd = sg.cd
  cd.n, cd.gen = n, 0
  -- this request's only once whole: a fill that raised half way (a collection's parse) is
  -- not taken for one by a later walk of the request
  sg.serial = p.serial
end

-- Group g's segments (its own list, or a multiMatch condition's: g = cond.mlist), filled for
-- this request.
local function segs_of(st, p, g)
  local list = p.gsegs[g] or group_segs(p, g)
  local serial = p.serial
  for j = 1, list.n do
    local sg = list[j]
    if sg.serial ~= serial then seg_fill(st, p, sg) end
  end
  return list
end

-- Records that condition gid of group g may match value i of collection cname, named
-- lname in lower case (SCAN_ALL: the value's scan failed or matched more than its hits
-- hold, so every condition may); the one place group_hits and pipeline_hits record a hit.
-- Only for conditions that read this value (g.reads[gid][cname]: true for any name, else
-- the set of names the condition's targets name): a pattern of a rule on REQUEST_FILENAME
-- matching a header, or 920420's ^[^;\s]+ on REQUEST_HEADERS:Content-Type matching every
-- other header, is no work for it; so is a hit of a condition that never reads the group's
-- hits (g.reads[gid] nil: a chained or negated one, prefiltered value by value).
local SCAN_ALL = hs.SCAN_FAILED
-- The ids named are also listed in order of first hit, h[-1] .. h[-h.nh]: the walk goes to
-- their rules without asking every prefiltered rule of the group (run_phase_plan).
local function note_one(h, rd, gid, cname, lname, i)
  local ks = rd and rd[cname]
  if ks and (ks == true or ks[lname]) then
    local l = h[gid]
    if not l then
      l = {}
      h[gid] = l
      local nh = (h.nh or 0) + 1
      h.nh, h[-nh] = nh, gid
    end
    l[#l + 1], l[#l + 2] = cname, i
  end
end

local function note_hit(h, g, gid, cname, lname, i)
  local reads = g.reads
  if gid == SCAN_ALL then
    for x = 1, #g.conds do note_one(h, reads[x], x, cname, lname, i) end
  else
    note_one(h, reads[gid], gid, cname, lname, i)
  end
end

-- group_hits through the C pipeline: the group's values passed in one call, transformed and
-- scanned there; fills h as group_hits does (same order: by value, ids as reported). false
-- when the pipeline cannot run the group (the caller does it in Lua).
pipeline_hits = function(st, g, h)
  local p = pipeline_of(st)
  if not p or not p.ok[g.chain] then return false end
  local list = segs_of(st, p, g)
  local cnt, hits = hs.scan_segs(p.ws, g.chain, g.db, list.cd, list.n, list.reads, list.nreads)
  if not cnt then return false end
  for j = 0, cnt - 1 do
    local sg = list[hits[3 * j + 1] + 1]
    local i = hits[3 * j + 2] + 1
    local idx = sg.idx
    if idx then i = idx[i] end
    note_hit(h, g, hits[3 * j], sg.cname, sg.low[i], i)
  end
  return true
end

-- The prefilter of a whole group at once: every value of every collection some condition
-- of the group reads (only the named items where all of them name theirs), through the
-- group's chain, scanned once; returns gid -> { cname, i, cname, i, ... } of the values each
-- condition may match. Conditions then test only those values (usually none). (Scanning a
-- collection's values joined in one text was tried: fewer scans, but a pattern matching
-- anywhere in it sends every value to PCRE2, slower on ordinary traffic.)
local function group_hits(st, g)
  local h = st.gh[g]
  if h then return h end
  -- the group's table of the last request, emptied (run_seclang's scratch), else a new one
  local hp = st.hp
  h = hp and hp[g]
  if h then
    clear(h)
  else
    h = {}
    if hp then hp[g] = h end
  end
  st.gh[g] = h
  if pipeline_hits(st, g, h) then return h end
  local db, hits, ch = g.db, g.hits, g.chain
  for _, cname in ipairs(g.colls) do
    local c = st.vars:coll(cname)
    local only = g.only[cname]
    local low = lnames(st, c)
    for i = 1, c.n do
      if not only or only[low[i]] then
        local v = value(st, cname, c, i, ch)
        local n, ids, base, more = scan(db, v, hits)
        if not n or more then
          note_hit(h, g, SCAN_ALL, cname, low[i], i)
        else
          for k = 0, n - 1 do
            note_hit(h, g, ids[base + k], cname, low[i], i)
          end
        end
      end
    end
  end
  return h
end

-- The Lua rules' per-request tables, as the SecLang walk's (take_scratch, below): the rule
-- set's, emptied at the start of each run and written whole before they are read (an error
-- in the last run included); st.vc and st.hc kept across requests (pure functions of a text,
-- emptied past VC_KEEP bytes). Nothing the rules run calls back into a walk (no confirmer,
-- no operator in Lua), so no run starts inside another.
local function reuse_scratch(sc, st)
  clear(sc.gh)
  clear(sc.ln)
  if (sc.vc.bytes or 0) > VC_KEEP then
    for _, per in pairs(sc.vc) do if type(per) == "table" then clear(per) end end
    sc.vc.bytes = 0
  end
  if (sc.hc.bytes or 0) > VC_KEEP then clear(sc.hc) end
  st.gh, st.vc, st.hp, st.hc, st.ln, st.lpool = sc.gh, sc.vc, sc.hp, sc.hc, sc.ln, sc.lpool
end

local function lua_scratch(cs, st)
  local sc = cs.lua_scratch
  if not sc then
    sc = { gh = {}, vc = {}, hp = {}, hc = {}, ln = {}, lpool = {} }
    cs.lua_scratch = sc
  end
  reuse_scratch(sc, st)
end

-- Runs the rule set over the request state `st` (vars set); fills st.matches. st.rule: the
-- rule evaluated last (when this raises, the one that did).
function M.run(cs, st)
  if not cs.ready then
    local ok, err = M.finish(cs)
    if not ok then error(err, 0) end
  end
  st.cs = cs
  st.hit = {}
  local own = not st.gh
  if own then lua_scratch(cs, st) end
  for _, g in ipairs(cs.groups) do
    local ch, conds, pcre = g.chain, g.conds, g.waiting or g.pcre
    st.rule = nil
    if g.db and not g.waiting then
      -- The group's values scanned once (group_hits, as for SecLang rules); each condition
      -- then confirms only the values Hyperscan named for it.
      local h = group_hits(st, g)
      for gid = 1, #conds do
        local lst = h[gid]
        if lst then
          local cond = conds[gid]
          for k = 1, #lst, 2 do
            local cname, i = lst[k], lst[k + 1]
            local c = st.vars:coll(cname)
            confirm(st, cond, cname, c, i, value(st, cname, c, i, ch))
          end
        end
      end
    end
    if #pcre > 0 then
      for _, cname in ipairs(g.colls) do
        local c = st.vars:coll(cname)
        local only = g.only[cname]
        local low = lnames(st, c)
        for i = 1, c.n do
          if not only or only[low[i]] then
            local v = value(st, cname, c, i, ch)
            for _, cond in ipairs(pcre) do confirm(st, cond, cname, c, i, v) end
          end
        end
      end
    end
  end
  for _, r in ipairs(cs.slow) do
    st.rule = r
    local cname, c, i, v, from, to = cond_match(st, r.conds[1])
    if cname then
      local ok = true
      for k = 2, #r.conds do
        if not cond_match(st, r.conds[k]) then
          ok = false
          break
        end
      end
      if ok then hit(st, r, cname, c, i, v, from, to) end
    end
  end
  -- st lets go of the tables the next run empties (a caller may keep st)
  if own then st.gh, st.vc, st.hp, st.hc, st.ln, st.lpool = nil, nil, nil, nil, nil, nil end
  return st.matches
end

---------------------------------------------------------------------------------------------
-- SecLang rules (issue #20: the OWASP Core Rule Set, read by luaproxy/waf/seclang.lua).
--
-- The same conditions, targets, transformation chains, value cache and Hyperscan groups as
-- above, run the way ModSecurity runs them: phase 1 then phase 2, each rule in file order;
-- a rule is a chain of conditions (all must match); a matching rule's setvar, ctl, capture
-- and skipAfter act on the request's TX collection and on the rules after it; the anomaly
-- score is whatever the rules put into TX (CRS: 949110 denies at tx.anomaly_score >=
-- tx.inbound_anomaly_score_threshold). Differences from ModSecurity (docs/plugins/waf.md):
-- a rule's actions run once per request and rule, not once per matching variable.
--
-- Prefiltering: every @rx/@pm condition (not multiMatch, pattern without a macro, not
-- @rx ^.*$: that matches every value, cond.anything) joins the Hyperscan database of its
-- transformation chain; the first condition that needs value
-- v of a collection through chain c scans v once with that database, and every condition
-- of the chain then knows at once whether it can match v. Only those Hyperscan names run
-- PCRE2 (capture, exact offsets, prefilter-mode patterns) or the phrase list.

local took_group -- below

-- Collections whose values change while the rules run: never cached, never prefiltered.
local DYNAMIC = { tx = true, matched_var = true, matched_vars = true, matched_var_name = true,
                  matched_vars_names = true }

-- Macro expansion (expand, below): parts are strings or { coll, key }.

-- The text of one macro part { coll, key }.
local function macro_value(st, p)
  local c, key = p.coll, p.key
  local v
  if c == "TX" then v = st.tx[key]
  elseif c == "MATCHED_VAR" then v = st.mv
  elseif c == "MATCHED_VAR_NAME" then v = st.mvn
  elseif c == "RULE" then
    local r = st.rule
    if key == "id" then v = r and tostring(r.id)
    elseif key == "msg" then v = r and r.msg_text
    elseif key == "severity" then v = r and r.severity
    end
  elseif c == "REQUEST_HEADERS" then v = st.vars.req:header(key or "")
  elseif c == "REQBODY_ERROR_MSG" then
    local e = st.vars:coll("body_error")
    v = e.values[1]
  else
    local S = require "luaproxy.waf.seclang"
    local colls = S.VARS[c]
    if colls then
      local cc = st.vars:coll(colls[1])
      if key then
        for i = 1, cc.n do if lower(cc.names[i]) == key then v = cc.values[i]; break end end
      else
        v = cc.values[1]
      end
    end
  end
  return v ~= nil and tostring(v) or ""
end

-- expand's parts, emptied after each use (an error inside macro_value leaves what it held
-- until the next expansion writes over it; only its own 1..n are ever read): a table per
-- expansion was a fifth of what a browser GET's walk allocated (%{tx.allowed_methods}, the
-- setvars' %{tx.0} and %{MATCHED_VAR}). macro_value does not expand, so none runs inside
-- another.
local XB = {}
local function expand(st, m)
  if type(m) ~= "table" or not m.macro then return m end
  local n = #m
  if n == 1 then
    local p = m[1]
    if type(p) == "string" then return p end
    return macro_value(st, p)
  end
  for k = 1, n do
    local p = m[k]
    if type(p) == "string" then XB[k] = p else XB[k] = macro_value(st, p) end
  end
  local s = concat(XB, "", 1, n)
  for k = 1, n do XB[k] = nil end
  return s
end
M.expand = expand

-- Resolves a seclang condition's targets: tgt = { { coll, key, keyrx, count } ... } and
-- skip[coll] = { keys = set, rx = list }.
local function sec_targets(cond)
  local tgt, skip = {}, {}
  for _, t in ipairs(cond.targets) do
    if t.skip then
      local s = skip[t.coll]
      if not s then
        s = { keys = {}, rx = {} }
        skip[t.coll] = s
      end
      if t.keyrx then s.rx[#s.rx + 1] = t.keyrx else s.keys[t.key] = true end
    else
      tgt[#tgt + 1] = { coll = t.coll, key = t.key, keyrx = t.keyrx, count = t.count, var = t.var }
    end
  end
  for cname, s in pairs(skip) do
    if not next(s.rx) then s.rx = nil end
    if not next(s.keys) then s.keys = nil end
    skip[cname] = s
  end
  cond.tgt, cond.skip = tgt, skip
end

-- Does name selector e.keyrx take name? (TX:/^header_name_/ runs over every TX variable):
-- its answer per name kept with the target, a pure function of the two (bounded: names are
-- the request's too)
local function sel_rx(e, name)
  local memo = e.rx_memo
  if not memo or e.rx_memo_n > 4096 then
    memo = {}
    e.rx_memo, e.rx_memo_n = memo, 0
  end
  local yes = memo[name]
  if yes == nil then
    yes = re.find(name, e.keyrx, "i") ~= nil
    memo[name] = yes
    e.rx_memo_n = e.rx_memo_n + 1
  end
  return yes
end

-- (k: name in lower case, when the caller has it)
local function sel_ok(e, skip, name, st, rule, k)
  if e.keyrx and not sel_rx(e, name) then return false end
  -- (after the selector: TX:/regex/ turns most of TX's names down without lowering them)
  k = k or low(name)
  if e.key and e.key ~= k then return false end
  local s = skip[e.coll]
  if s then
    if s.keys and s.keys[k] then return false end
    if s.rx then
      for _, x in ipairs(s.rx) do if re.find(name, x, "i") then return false end end
    end
  end
  local rt = st.rm_targets
  if rt then
    for _, x in ipairs(rt) do
      local applies = (x.id and x.id == rule.id) or (x.tag and rule.tags[x.tag])
      if applies then
        for _, t in ipairs(x.targets) do
          if t.coll == e.coll and (not t.key or t.key == k)
            and (not t.keyrx or re.find(name, t.keyrx, "i")) then
            return false
          end
        end
      end
    end
  end
  return true
end

local function numeric(v)
  local n = tonumber(v)
  if n then return n end
  return tonumber(match(v, "^%s*([+-]?%d+)") or "") or 0
end

-- An IPv4 address as a number (false: not one), kept per VM: string.match is not compiled
-- (a browser GET's 905100 and 905110 on REMOTE_ADDR left their traces at each request, 6% of
-- its time), and the addresses are few. A pure function of the text; bounded (emptied when
-- full: addresses are the clients').
local IP4, IP4_N = {}, 0
local function ipv4(v)
  local n = IP4[v]
  if n ~= nil then return n end
  local a, b, c, d = match(v, "^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  n = a and ((tonumber(a) * 256 + tonumber(b)) * 256 + tonumber(c)) * 256 + tonumber(d) or false
  if IP4_N >= 4096 then IP4, IP4_N = {}, 0 end
  IP4[v], IP4_N = n, IP4_N + 1
  return n
end

local function ip_match(list, v)
  for _, e in ipairs(list) do
    if e.exact then
      if e.exact == v then return true end
    else
      local n = ipv4(v)
      if n and n >= e.lo and n <= e.hi then return true end
    end
  end
  return false
end

local function compile_ips(place, list)
  local out = {}
  for _, s in ipairs(list) do
    local a, b, c, d, bits = match(s, "^(%d+)%.(%d+)%.(%d+)%.(%d+)/?(%d*)$")
    if a then
      local n = ((tonumber(a) * 256 + tonumber(b)) * 256 + tonumber(c)) * 256 + tonumber(d)
      bits = tonumber(bits) or 32
      local size = 2 ^ (32 - bits)
      local lo = n - n % size
      out[#out + 1] = { lo = lo, hi = lo + size - 1 }
    elseif find(s, ":", 1, true) then
      out[#out + 1] = { exact = lower(s) } -- IPv6: exact addresses only
    else
      fail(place, "@ipMatch: bad address " .. s)
    end
  end
  return out
end

-- Tests one value with a seclang operator: from, to (or true), or nil; "error", msg.
local function sec_test(st, cond, v)
  local op = cond.op
  if op == "rx" or op == "rxm" then
    -- (rxm: a pattern with a macro, expanded at each test; a pattern that does not compile
    -- fails the rule as a regex error does: regex_error decides)
    local pat = op == "rx" and cond.arg or expand(st, cond.arg)
    if cond.capture then
      local m, err = re.match(v, pat, "sm")
      if err then return "error", err end
      if not m then return nil end
      for k = 0, 9 do
        local x = m[k]
        if x ~= nil and x ~= false then st.tx[tostring(k)] = x else st.tx[tostring(k)] = nil end
      end
      local from = find(v, m[0], 1, true) or 1
      return from, from + #m[0] - 1
    end
    local from, to, err = re.find(v, pat, "sm")
    if err then return "error", err end
    return from, to
  elseif op == "pm" then
    local lv = lower(v)
    for _, p in ipairs(cond.phrases) do
      local from, to = find(lv, p, 1, true)
      if from then
        if cond.capture then st.tx["0"] = sub(v, from, to) end
        return from, to
      end
    end
    return nil
  elseif op == "streq" then
    if v == expand(st, cond.arg) then return 1, #v end
  elseif op == "contains" then
    local a = expand(st, cond.arg)
    return find(v, a, 1, true)
  elseif op == "contains_word" then
    local a = expand(st, cond.arg)
    local i = 1
    while true do
      local from, to = find(v, a, i, true)
      if not from then return nil end
      if not find(sub(v, from - 1, from - 1), "^[%w_]$") and not find(sub(v, to + 1, to + 1), "^[%w_]$") then
        return from, to
      end
      i = from + 1
    end
  elseif op == "begins_with" then
    local a = expand(st, cond.arg)
    if sub(v, 1, #a) == a then return 1, #a end
  elseif op == "ends_with" then
    local a = expand(st, cond.arg)
    if #a <= #v and sub(v, -#a) == a then return #v - #a + 1, #v end
  elseif op == "within_str" then
    if v == "" then return nil end
    local a = expand(st, cond.arg)
    if find(a, v, 1, true) then return 1, #v end
  elseif op == "eq" or op == "ge" or op == "gt" or op == "le" or op == "lt" then
    local a = cond.arg
    if type(a) ~= "number" then a = numeric(expand(st, a)) end
    local n = numeric(v)
    if (op == "eq" and n == a) or (op == "ge" and n >= a) or (op == "gt" and n > a)
      or (op == "le" and n <= a) or (op == "lt" and n < a) then
      return 1, #v
    end
  elseif op == "byte_range" then
    -- the first byte outside the ranges (a bitmap made at load)
    local i = detect().byte_range(cond.bad_set, v)
    if i then return i, i end
  elseif op == "validate_urlencoding" then
    local i = detect().urlenc_invalid(v)
    if i then return i, i + 2 end
  elseif op == "validate_utf8" then
    local i = detect().utf8_invalid(v)
    if i then return i, i end
  elseif op == "ip_match" then
    if ip_match(cond.ips, v) then return 1, #v end
  elseif op == "detect_sqli" then
    local from, to, fp = detect().sqli(v)
    if from then
      if cond.capture then st.tx["0"] = fp end
      return from, to
    end
  elseif op == "detect_xss" then
    return detect().xss(v)
  elseif op == "always" then
    return 1, #v
  end
  return nil
end

-- The value of a dynamic collection (TX, MATCHED_*) as a collection.
local function dyn_coll(st, cname, e)
  if cname == "tx" then
    if e and e.key then
      local v = st.tx[e.key]
      if v == nil then return { n = 0, names = {}, values = {} } end
      return { n = 1, names = { e.key }, values = { v } }
    end
    -- TX:/regex/: only the names the selector takes (sel_ok would turn the others down)
    local rx = e and e.keyrx and not e.count
    local c = { n = 0, names = {}, values = {} }
    for k, v in pairs(st.tx) do
      if not rx or sel_rx(e, k) then
        c.n = c.n + 1
        c.names[c.n], c.values[c.n] = k, v
      end
    end
    return c
  elseif cname == "matched_var" then
    if st.mv == nil then return { n = 0, names = {}, values = {} } end
    return { n = 1, names = { "" }, values = { st.mv } }
  elseif cname == "matched_var_name" then
    if st.mvn == nil then return { n = 0, names = {}, values = {} } end
    return { n = 1, names = { "" }, values = { st.mvn } }
  elseif cname == "matched_vars" then
    local c = { n = 0, names = {}, values = {} }
    for k, m in ipairs(st.mvs or {}) do c.n, c.names[k], c.values[k] = k, m.name, m.value end
    return c
  elseif cname == "matched_vars_names" then
    local c = { n = 0, names = {}, values = {} }
    for k, m in ipairs(st.mvs or {}) do c.n, c.names[k], c.values[k] = k, m.name, m.name end
    return c
  end
end

-- Transformed value without the cache (dynamic collections).
local function transform_direct(cs, ch, v)
  if ch == 0 then return v end
  local chain = cs.chains[ch]
  return chain.fn(transform_direct(cs, chain.parent, v))
end

-- The ids group g's database reports for text v: a set of ids, false for none, or true when
-- the scan failed or reported too many (then every condition is tested). Kept by text per
-- group (st.hc[g][v]: a pure function of the text and the group's database, so, as st.vc,
-- kept from one request to the next in the walk and emptied past VC_KEEP bytes by
-- take_scratch): a browser GET's single scans and their sets were the same texts at every
-- request. (Keyed by the database too: a group's db may come later, see may_match. The
-- database is kept under a table key, PER_DB: under a string key, a request's text equal to
-- it ("db") was answered with the database, not a set, and the walk raised.)
local PER_DB = {}
local function hit_set(st, g, v)
  local hc = st.hc
  local per = hc[g]
  if per == nil or per[PER_DB] ~= g.db then
    per = { [PER_DB] = g.db }
    hc[g] = per
  end
  local set = per[v]
  if set ~= nil then return set end
  local n, ids, base, more = scan(g.db, v, g.hits)
  if not n or more then
    set = true
  elseif n == 0 then
    set = false
  else
    set = {}
    for k = 0, n - 1 do set[ids[base + k]] = true end
  end
  per[v] = set
  -- (a set's ids counted too: a text matching many patterns holds a slot each)
  hc.bytes = (hc.bytes or 0) + 64 + #v + 16 * (n or 0)
  return set
end

-- Prefilter: may condition `cond` match text v (a value through its chain)?
local function may_match(st, cond, v)
  local g = cond.group
  if not g or not g.db or cond.pcre_only then return true end
  local set = hit_set(st, g, v)
  if set == true then return true end
  return set and set[cond.gid] == true or false
end

-- Prefilter of a multiMatch condition (cs.multi_group): may it match text v? Scans v once
-- (hit_set) with the multiMatch database, whichever condition and step asks. (Asked
-- only for the values multi_values let through, or all when it cannot run.)
local function multi_may(st, cond, v)
  local g = cond.group
  if not g.db or cond.pcre_only then return true end
  local set = hit_set(st, g, v)
  if set == true then return true end
  return set and set[cond.gid] == true or false
end

-- The values of multiMatch condition cond (not negated; cond.mlist: its collections and
-- names as a group's, segs_of) whose text after some step of its path Hyperscan names
-- for it: { [cname] = { [i] = true } }, made by one C call per request over all of them
-- (hs.scan_segs); false when that cannot run (then multi_may asks per text). A value
-- none of whose texts is named cannot match: sec_cond passes over it without computing
-- its steps (930110, 934100: every header and argument through four or five steps).
local multi_values
do
  multi_values = function(st, cond)
    local sets = tab_of(st, "msets")
    local set = sets[cond]
    if set ~= nil then return set end
    set = false
    local g, ml = cond.group, cond.mlist
    local p = g.db and not cond.pcre_only and pipeline_of(st)
    if p and ml.ok == nil then
      -- first use with a pipeline: can it run every step of the path?
      local path = cond.path
      ml.ok = true
      for _, ch in ipairs(path) do if not p.ok[ch] then ml.ok = false end end
      if ml.ok then
        ml.steps = ffi.new("unsigned[?]", #path)
        for k, ch in ipairs(path) do ml.steps[k - 1] = ch end
        ml.nsteps = #path
      end
    end
    if p and ml.ok then
      local list = segs_of(st, p, ml)
      local cnt, hits = hs.scan_segs(p.ws, 0, g.db, list.cd, list.n, nil, 0, ml.steps, ml.nsteps)
      if cnt then
        -- the condition's table of the last request, emptied (take_scratch's st.mpool)
        local pool = st.mpool
        set = pool and pool[cond]
        if set then
          for _, per in pairs(set) do clear(per) end
        else
          set = {}
          if pool then pool[cond] = set end
        end
        local gid = cond.gid
        for j = 0, cnt - 1 do
          local id = hits[3 * j]
          if id == gid or id == SCAN_ALL then
            local sg = list[hits[3 * j + 1] + 1]
            local i = hits[3 * j + 2] + 1
            local idx = sg.idx
            if idx then i = idx[i] end
            local per = tab_of(set, sg.cname)
            per[i] = true
          end
        end
      end
    end
    sets[cond] = set
    return set
  end
end

local function varname_of(e, name)
  if name == nil or name == "" then return e.var end
  return e.var .. ":" .. name
end

-- A match of a rule with a confirmer (luaproxy.waf.confirm, the plugin's crs_confirm)
-- counts only when the confirmer reads the value as what the rule is about; raw is the
-- value before the rule's transformations. Matches it takes away are counted in
-- st.unconfirmed (rule id -> n) for the decision log.
-- (The closure is made in a function of its own: a function that makes one closes its
-- upvalues on every return, which LuaJIT does not compile (NYI UCLO), and sec_test and
-- sec_cond, calling confirmed for every match, aborted their traces there.)
local function run_confirmer(st, cond, f, raw, v)
  return f(raw or v, v, function(x)
    local from = sec_test(st, cond, x)
    return from ~= nil and from ~= "error"
  end)
end

local function confirmed(st, cond, raw, v)
  local f = cond.confirm
  if not f then return true end
  local ok = run_confirmer(st, cond, f, raw, v)
  if not ok then
    local u = tab_of(st, "unconfirmed")
    local id = st.rule and st.rule.id or 0
    u[id] = (u[id] or 0) + 1
  end
  return ok
end

-- A SecAction's match (read only, shared by every request).
local ACTION_MATCH = { { name = "", value = "", from = 1, to = 0 } }

local NO_VALUES = {} -- (read only)

-- What sec_test gives for @rx ^.*$ (cond.anything, compile_seclang) on v: all of it, and
-- with capture TX.0 = v, TX.1..9 unset.
local CAPTURE_SLOTS = { "1", "2", "3", "4", "5", "6", "7", "8", "9" }
local function match_all(st, cond, v)
  if cond.capture then
    local tx = st.tx
    tx["0"] = v
    for k = 1, 9 do tx[CAPTURE_SLOTS[k]] = nil end
  end
  return 1, #v
end

-- Adds the match { name, value, from, to, err } to list out (made when nil); returns out.
-- In the walk, lists and matches come from st.mp, the rule set's pool reused from request
-- to request (take_scratch sets its counts back to 0): a browser GET's chains (920170's
-- method, 905100's address) and 920450's header names made some 40 tables. A match lives
-- until the end of its request (MATCHED_VARS reads the last link's, a rule's record copies
-- its first); each taken from the pool is written whole and each list emptied before use,
-- and the pool keeps at most MP_KEEP of each (a request with more makes the rest).
local MP_KEEP = 256
local function add_match(st, out, name, v, from, to, err)
  local mp = st.mp
  local m
  if mp then
    if not out then
      local k = mp.nl + 1
      out = mp.lists[k]
      if out then
        clear(out)
        mp.nl = k
      elseif k <= MP_KEEP then
        out = {}
        mp.lists[k], mp.nl = out, k
      end
    end
    local k = mp.nr + 1
    m = mp.recs[k]
    if m then
      mp.nr = k
    elseif k <= MP_KEEP then
      m = {}
      mp.recs[k], mp.nr = m, k
    end
  end
  out = out or {}
  if m then
    m.name, m.value, m.from, m.to, m.err = name, v, from, to, err
  else
    m = { name = name, value = v, from = from, to = to, err = err }
  end
  out[#out + 1] = m
  return out
end

-- Evaluates one condition: the list of matches { name, value, from, to }, or nil.
local function sec_cond(st, r, cond)
  -- SecAction (@unconditionalMatch, no variable): it matches, once (without this it had
  -- no value to match and never ran: CRS's 901200 and the SecActions of its application
  -- exclusions did nothing)
  if cond.op == "always" and not cond.tgt[1] then return ACTION_MATCH end
  local out
  local cs = st.cs
  local budget = st.deadline
  local g = cond.group
  if cond.fast and g.db then
    local lst = group_hits(st, g)[cond.gid]
    if not lst then return nil end
    for k = 1, #lst, 2 do
      local cname, i = lst[k], lst[k + 1]
      local c = st.vars:coll(cname)
      local name, lname = c.names[i], lnames(st, c)[i]
      for _, e in ipairs(cond.tgt) do
        if e.coll == cname and (not e.key or lname == e.key) and sel_ok(e, cond.skip, name, st, r, lname) then
          local v = value(st, cname, c, i, cond.chain)
          local from, to = sec_test(st, cond, v)
          if from == "error" then
            st.regex_errors = (st.regex_errors or 0) + 1
            if st.regex_error == "match" then
              out = add_match(st, out, varname_of(e, name), v, nil, nil, to)
            end
          elseif from ~= nil and confirmed(st, cond, c.values[i], v) then
            out = add_match(st, out, varname_of(e, name), v, from, to)
          end
          break
        end
      end
    end
    if budget and proxy_now() > budget then st.over_budget = true end
    return out
  end
  for _, e in ipairs(cond.tgt) do
    local cname = e.coll
    local dyn = DYNAMIC[cname]
    if cname == "tx" and e.key and not e.count then
      -- TX:name, the common case (paranoia checks, scores): no collection built
      local tv = st.tx[e.key]
      if tv ~= nil then
        local path = cond.path
        local v = transform_direct(cs, path[#path], tv)
        local from, to = sec_test(st, cond, v)
        if from == "error" then
          -- (as every other target's: counted, and regex_error decides; an rxm pattern
          -- from TX, CRS 920480's allowlist, can fail to compile or run past its limit)
          st.regex_errors = (st.regex_errors or 0) + 1
          if st.regex_error == "match" then
            out = add_match(st, out, "TX:" .. e.key, v, nil, nil, to)
          end
        elseif (from ~= nil) ~= cond.negate then
          out = add_match(st, out, "TX:" .. e.key, v, from, to)
        end
      end
      goto next_target
    end
    do
    local c = dyn and dyn_coll(st, cname, e) or st.vars:coll(cname)
    if e.count then
      local n = 0
      for i = 1, c.n do if sel_ok(e, cond.skip, c.names[i], st, r) then n = n + 1 end end
      local v = tostring(n)
      local from, to = sec_test(st, cond, v)
      if (from ~= nil) ~= cond.negate then
        out = add_match(st, out, "&" .. varname_of(e, e.key), v, from, to)
      end
    else
      -- (a dynamic collection is made anew at each call: its names are lowered as needed)
      local lows = not dyn and lnames(st, c)
      -- multiMatch: the values Hyperscan named at some step (multi_values), or all
      local may = cond.mlist and not dyn and multi_values(st, cond)
      may = may and (may[cname] or NO_VALUES)
      for i = 1, c.n do
        local name = c.names[i]
        local lname = lows and lows[i]
        if (not may or may[i]) and (not e.key or (lname or low(name)) == e.key)
          and sel_ok(e, cond.skip, name, st, r, lname) then
          local path = cond.path
          local prev
          for pi = cond.multi and 1 or #path, #path do
            local ch = path[pi]
            local v
            if dyn then v = transform_direct(cs, ch, c.values[i]) else v = value(st, cname, c, i, ch) end
            -- multiMatch: a step that left the value as it was gives the same answer as the
            -- step before, which did not end the loop (ModSecurity too tests only values a
            -- step changed)
            if v == prev then goto next_step end
            prev = v
            local from, to
            if cond.anything then
              from, to = match_all(st, cond, v)
            elseif dyn or (cond.multi and (not cond.group or multi_may(st, cond, v)))
              or (not cond.multi and may_match(st, cond, v)) then
              from, to = sec_test(st, cond, v)
            end
            if from == "error" then
              st.regex_errors = (st.regex_errors or 0) + 1
              if st.regex_error == "match" then
                out = add_match(st, out, varname_of(e, name), v, nil, nil, to)
              end
              break
            elseif (from ~= nil) ~= cond.negate then
              if cond.negate or dyn or confirmed(st, cond, c.values[i], v) then
                out = add_match(st, out, varname_of(e, name), v, from, to)
              end
              break
            end
            ::next_step::
          end
        end
      end
    end
    end
    if budget and proxy_now() > budget then
      st.over_budget = true
      return out
    end
    ::next_target::
  end
  return out
end

local function removed_at_runtime(st, r)
  for _, x in ipairs(st.rm_ids or NO_VALUES) do if r.id >= x[1] and r.id <= x[2] then return true end end
  for _, t in ipairs(st.rm_tags or NO_VALUES) do if r.tags[t] then return true end end
  return false
end

local function run_ctl(st, c)
  local k = c.kind
  -- (st.removing: some rule is taken out at run time, removed_at_runtime has work)
  if k == "ruleremovebyid" then
    local l = tab_of(st, "rm_ids")
    l[#l + 1] = { c.lo, c.hi }
    st.removing = true
  elseif k == "ruleremovebytag" then
    local l = tab_of(st, "rm_tags")
    l[#l + 1] = c.value
    st.removing = true
  elseif k == "ruleremovetargetbyid" then
    st.rm_targets = st.rm_targets or {}
    st.rm_targets[#st.rm_targets + 1] = { id = tonumber(c.value), targets = c.targets }
  elseif k == "ruleremovetargetbytag" then
    st.rm_targets = st.rm_targets or {}
    st.rm_targets[#st.rm_targets + 1] = { tag = c.value, targets = c.targets }
  elseif k == "requestbodyprocessor" then
    st.vars.body_processor = upper(c.value)
  elseif k == "ruleengine" then
    local v = lower(c.value)
    -- (On for this transaction: blocking again after a DetectionOnly, as ModSecurity's)
    if v == "off" then st.engine_off = true elseif v == "detectiononly" then st.detect_only = true
    elseif v == "on" then st.detect_only = false end
  elseif k == "requestbodyaccess" then
    -- The body was read already (or not needed); nothing to change.
  end
end

local function run_setvar(st, sv)
  local key = expand(st, sv.key)
  if sv.del then
    st.tx[key] = nil
    return
  end
  local v = expand(st, sv.value)
  if sv.op == "=" then
    st.tx[key] = v
  else
    local cur = numeric(st.tx[key] or "0")
    local d = numeric(v)
    st.tx[key] = tostring(sv.op == "+" and cur + d or cur - d)
  end
end

-- Runs rule r (eligible: its paranoia level, not removed at run time): its conditions, the
-- actions of each link that matches, its record. Returns the outcome when processing stops
-- here ("deny", "allow", "off", "budget"), else nil and the marker its skipAfter names.
local function run_rule(st, r)
  st.rule = r
  local first
  local ok = true
  for k, cond in ipairs(r.conds) do
    local ms = sec_cond(st, r, cond)
    if not ms then
      ok = false
      break
    end
    local last = ms[#ms]
    st.mv, st.mvn, st.mvs = last.value, last.name, ms
    if k == 1 then first = ms end
    -- As ModSecurity does: a link's non-disruptive actions run when the link matches,
    -- before the next link is evaluated (CRS's 931130 sets the TX variable its chained
    -- rule reads); only the disruptive action waits for the whole chain.
    for _, sv in ipairs(cond.setvars) do run_setvar(st, sv) end
    for _, c in ipairs(cond.ctls) do run_ctl(st, c) end
  end
  if st.over_budget then return "budget" end
  if not ok then return nil end
  if not r.nolog or r.disruptive == "deny" then
    local m = first[1]
    local rec = { id = r.id, msg = expand(st, r.msg) or "", severity = r.severity,
                  var = m.name, tags = r.taglist, action = r.disruptive,
                  excerpt = excerpt(m.value, m.from, m.to), regex_error = m.err,
                  paranoia = r.paranoia }
    if r.logdata then rec.logdata = sanitize(sub(expand(st, r.logdata), 1, 96)) end
    local list_m = tab_of(st, "matches")
    list_m[#list_m + 1] = rec
    -- learn mode: every variable of the first condition that matched
    if st.learn then
      for _, mm in ipairs(first) do st.learn[#st.learn + 1] = { id = r.id, var = mm.name } end
    end
  end
  if st.engine_off then return "off" end
  if r.disruptive == "deny" then
    st.deny = r
    return "deny"
  elseif r.disruptive == "allow" then
    return "allow"
  end
  return nil, r.skip_after
end

-- Runs one phase's items from item i0, one by one; returns the outcome when processing
-- stops (deny / allow / off / budget). plan_g, plan_gid (cs.plan, below): for item i whose
-- first condition is prefiltered, its group and its id in the group. Such a rule cannot
-- match unless the group's scan named that condition for one of its values, and a first
-- condition that does not match leaves no trace (no setvar, ctl, capture or MATCHED_VAR:
-- those run only for a matching link); so the rule is passed over after one look-up in
-- the group's hits (scanned when the first rule of the group that is not passed over for
-- other reasons is reached). The plan's walk (run_phase_plan) does not even look: this one
-- runs while the databases compile (no plan) and after a skipAfter back.
local function run_phase(cs, st, list, markers, plan_g, plan_gid, i0)
  local i, n = i0 or 1, #list
  local gh = st.gh
  local paranoia = st.paranoia
  while i <= n do
    local r = list[i]
    local g = plan_g and plan_g[i]
    i = i + 1
    if g then
      -- a prefiltered rule (always a rule, never a marker): the hits decide
      if (r.paranoia or 1) > paranoia or (st.removing and removed_at_runtime(st, r)) then
        goto continue
      end
      local h = gh[g] or group_hits(st, g)
      if not h[plan_gid[i - 1]] then goto continue end
    end
    -- (a prefiltered rule passed both checks above already)
    if r.id and (g or ((r.paranoia or 1) <= paranoia
        and (not st.removing or not removed_at_runtime(st, r)))) then
      local out, skip = run_rule(st, r)
      if out then return out end
      if skip then i = markers[skip] or n + 1 end
    elseif r.jump ~= nil then
      -- a rule folded at load (luaproxy.waf.fold) that always matches and leaves no trace
      -- but its skipAfter (false: none); as it would, it ends the walk once the engine is off
      if st.engine_off then return "off" end
      if r.jump then i = markers[r.jump] or n + 1 end
    end
    ::continue::
  end
end

-- Adds item q to the sorted queue pend[ph..pt]; returns the new pt.
local function enqueue(pend, ph, pt, q)
  local k = pt
  while k >= ph and pend[k] > q do
    pend[k + 1] = pend[k]
    k = k - 1
  end
  pend[k + 1] = q
  return pt + 1
end

-- The first item of group g at or after item i of the phase (pp: its plan), or nil.
local function group_from(pp, g, i)
  local q = pp.first[g]
  local nxt = pp.gnext
  while q and q < i do q = nxt[q] end
  return q
end

-- run_phase over the plan: visits the items that must run whatever Hyperscan said (rules
-- whose first condition is not prefiltered, folded jumps: pp.ev, with each group's first
-- rule) and, of the prefiltered rules, only those the group's hits name (h[-1..-h.nh]):
-- a browser GET visits about 30 items of 133, not every rule to ask its group. The same
-- rules run in the same order as run_phase: a group is scanned at its first rule not
-- passed over for paranoia or removal (that rule's next in the group takes its place as
-- the trigger); once its hits are there (this phase or the one before), the rules they
-- name after that point are queued (pend, sorted; `last` drops what was visited or
-- skipped); a skipAfter forward drops what it jumps over and queues, for each group not
-- yet queued in this phase, its first rule after the marker. A skipAfter back (SecLang
-- never jumps back, but a marker could stand before its rule) ends it in run_phase.
-- act[g] == serial: g's named rules are queued in this phase (serial: one per call, so
-- nothing of another walk counts); pend is reused (read only between ph and pt).
local function run_phase_plan(cs, st, list, markers, pp, sc)
  local n = #list
  local pg, pgid, ev, gnext, posof = pp.g, pp.gid, pp.ev, pp.gnext, pp.pos
  local gh = st.gh
  local paranoia = st.paranoia
  local pend, act
  if sc then
    pend, act = sc.pend, sc.act
  else
    pend, act = {}, {}
  end
  local serial = (act.serial or 0) + 1
  act.serial = serial
  local ph, pt, e, last = 1, 0, 1, 0
  while true do
    -- the next item: the first of ev[e..] and pend[ph..pt] after `last`
    local a = ev[e]
    while a and a <= last do
      e = e + 1
      a = ev[e]
    end
    local b
    while ph <= pt do
      b = pend[ph]
      if b > last then break end
      ph = ph + 1
      b = nil
    end
    local i
    if a and (not b or a <= b) then
      i, e = a, e + 1
    elseif b then
      i, ph = b, ph + 1
    else
      return nil
    end
    last = i
    local r = list[i]
    local g = pg[i]
    if g then
      -- a prefiltered rule, reached as its group's trigger or because the hits name it
      local h = gh[g]
      local skipped = (r.paranoia or 1) > paranoia or (st.removing and removed_at_runtime(st, r))
      if not h and not skipped then h = group_hits(st, g) end
      if h and act[g] ~= serial then
        act[g] = serial
        local pos = posof[g]
        for k = 1, h.nh or 0 do
          local q = pos[h[-k]]
          if q and q > i then pt = enqueue(pend, ph, pt, q) end
        end
      elseif not h then
        -- passed over before its group was scanned: the group's next rule triggers it
        local q = gnext[i]
        if q then pt = enqueue(pend, ph, pt, q) end
      end
      if skipped or not h[pgid[i]] then goto continue end
    end
    do
      local to
      if r.id and (g or ((r.paranoia or 1) <= paranoia
          and (not st.removing or not removed_at_runtime(st, r)))) then
        local out, skip = run_rule(st, r)
        if out then return out end
        if skip then to = markers[skip] or n + 1 end
      elseif r.jump ~= nil then
        if st.engine_off then return "off" end
        if r.jump then to = markers[r.jump] or n + 1 end
      end
      if to then
        if to <= i then return run_phase(cs, st, list, markers, pg, pgid, to) end
        last = to - 1
        for _, gg in ipairs(pp.groups) do
          if act[gg] ~= serial then
            local q = group_from(pp, gg, to)
            if q then pt = enqueue(pend, ph, pt, q) end
          end
        end
      end
    end
    ::continue::
  end
end

-- The walk's plan (run_phase, run_phase_plan), per phase: which items are prefiltered rules
-- (g[i]: the group, gid[i]: the condition's id in it) and, for run_phase_plan, ev (the
-- items to visit whatever the hits: rules not prefiltered, folded jumps, and each group's
-- first rule), first[g] and gnext[i] (each group's rules in order), pos[g][gid] (the item
-- of a prefiltered condition) and groups (the groups with rules in the phase). Made once
-- all of the set's Hyperscan databases are there (before, a group's conditions may still
-- run through PCRE2 alone, or be left to it for good by the compile: cond.fast says).
local function build_plan(cs)
  local plan = {}
  for p = 1, 2 do
    local pg, pgid, ev, gnext, first, pos, groups, prev = {}, {}, {}, {}, {}, {}, {}, {}
    for i, r in ipairs(cs.phases[p]) do
      local c = r.conds and r.conds[1]
      if c and c.fast and not c.pcre_only and c.group and c.group.db then
        local g = c.group
        pg[i], pgid[i] = g, c.gid
        if not first[g] then
          first[g], pos[g] = i, {}
          groups[#groups + 1] = g
          ev[#ev + 1] = i
        else
          gnext[prev[g]] = i
        end
        prev[g] = i
        pos[g][c.gid] = i
      else
        pg[i] = false
        if r.id or r.jump ~= nil then ev[#ev + 1] = i end
      end
    end
    plan[p] = { g = pg, gid = pgid, ev = ev, gnext = gnext, first = first, pos = pos,
                groups = groups }
  end
  cs.plan = plan
end

-- A condition's @rx pattern or @pm phrases into a Hyperscan group, tagged with its gid. \A
-- \z \Z become ^ $: a superset, as the joined scan needs (PCRE2 confirms).
local function add_patterns(g, cond)
  if cond.op == "rx" then
    local hp = gsub(gsub(cond.arg, "\\[zZ]", "$"), "\\A", "^")
    g.pats[#g.pats + 1], g.flags[#g.flags + 1], g.ids[#g.ids + 1] =
      hp, hs.SINGLEMATCH + hs.DOTALL + hs.MULTILINE, cond.gid
  else
    for _, p in ipairs(cond.arg) do
      g.pats[#g.pats + 1], g.flags[#g.flags + 1], g.ids[#g.ids + 1] =
        escape_literal(p), hs.SINGLEMATCH + hs.CASELESS, cond.gid
    end
  end
end

-- Compiles a seclang rule set (seclang.load's result) for one plugin instance.
-- opts: paranoia (rules above it are left out), exclusions (the plugin's), hyperscan.
-- Returns cs, or nil, problem.
function M.compile_seclang(set, opts)
  local paranoia = opts.paranoia or 1
  local cs = { seclang = true, chains = {}, groups = {}, phases = { {}, {} }, markers = { {}, {} },
               by_id = {}, pcre_only = {}, hs_patterns = 0, needs_body = false,
               counts = { rules = 0, compiled = 0, paranoia_skipped = 0, response = 0, excluded = 0 },
               unsupported = set.unsupported, ignored = set.ignored }
  local chain_ids = { [""] = 0 }
  cs.chains[0] = { parent = nil, fn = nil, name = "" }
  local function chain_of(tr)
    local key, parent = "", 0
    local path = { 0 }
    for _, name in ipairs(tr) do
      key = key == "" and name or key .. "," .. name
      local id = chain_ids[key]
      if not id then
        id = #cs.chains + 1
        chain_ids[key] = id
        cs.chains[id] = { parent = parent, fn = T[name], name = key }
      end
      parent = id
      path[#path + 1] = id
    end
    return parent, path
  end
  local groups = {}
  local in_order = {} -- the rules compiled, in file order
  local excl = opts.exclusions or {}
  for _, it in ipairs(set.items) do
    -- A copy: the parsed set is shared by the compiled sets of several settings.
    local r = it.rule and copy_rule(it.rule)
    if r then
      cs.counts.rules = cs.counts.rules + 1
      local pl = r.paranoia or 1
      local drop = false
      if r.phase > 2 then
        cs.counts.response = cs.counts.response + 1
        drop = true
      elseif pl > paranoia then
        -- Not compiled: a paranoia level's set is compiled for it (fewer Hyperscan
        -- patterns: at PL1 CRS's are 2,300 of 3,600). The run skips them too (st.paranoia).
        cs.counts.paranoia_skipped = cs.counts.paranoia_skipped + 1
        drop = true
      end
      for _, ex in ipairs(excl) do
        if not drop and rule_matches_sel(r, ex) then
          if not ex.targets then
            drop = true
            cs.counts.excluded = cs.counts.excluded + 1
          else
            r = copy_rule(r)
            local S = require "luaproxy.waf.seclang"
            for _, cond in ipairs(r.conds) do
              local ts = {}
              for _, t in ipairs(cond.targets) do ts[#ts + 1] = t end
              for _, s in ipairs(ex.targets) do
                local name, key = match(s, "^!?([%a_]+):?(.*)$")
                local colls = name and S.VARS[upper(name)]
                local lname = name and lower(name)
                if not colls and lname and (V.ALIAS[lname] or V.BASE[lname] or V.NAMES[lname]) then
                  colls = V.ALIAS[lname] or { lname }
                end
                if not colls then return nil, format("exclusion target %q: unknown variable", s) end
                for _, cn in ipairs(colls) do
                  if key ~= "" then
                    ts[#ts + 1] = { coll = cn, key = lower(key), skip = true }
                  else
                    local kept = {}
                    for _, x in ipairs(ts) do if x.coll ~= cn then kept[#kept + 1] = x end end
                    ts = kept
                  end
                end
              end
              cond.targets = ts
            end
          end
        end
      end
      if not drop then
        cs.counts.compiled = cs.counts.compiled + 1
        cs.by_id[r.id] = r
        r.msg_text = type(r.msg) == "string" and r.msg or nil
        for k, cond in ipairs(r.conds) do
          -- the confirm step (crs_confirm): on a rule's own operator, not a chained link's
          if k == 1 and not cond.negate then cond.confirm = CONFIRM.for_rule(r.id, opts.crs_confirm) end
          cond.chain, cond.path = chain_of(cond.transforms)
          sec_targets(cond)
          for _, e in ipairs(cond.tgt) do
            local base = V.NAMES[e.coll] or e.coll
            if V.BODY[base] or base == "args_combined_size" then cs.needs_body = true end
          end
          if cond.op == "pm" then
            cond.phrases = {}
            for i, p in ipairs(cond.arg) do cond.phrases[i] = lower(p) end
          elseif cond.op == "byte_range" then
            cond.bad_set = detect().byte_set(cond.arg)
          elseif cond.op == "ip_match" then
            local ok, ips = pcall(compile_ips, r.place, cond.arg)
            if not ok then return nil, type(ips) == "table" and ips.msg or tostring(ips) end
            cond.ips = ips
          elseif cond.op == "rx" then
            local ok, err = re.compile(cond.arg, "sm")
            if not ok then return nil, format("%s: @rx: %s", cond.place or r.place, tostring(err)) end
          end
        end
      end
      if not drop then
        local ph = cs.phases[r.phase]
        in_order[#in_order + 1] = r
        ph[#ph + 1] = r
      end
    else
      for p = 1, 2 do
        local ph = cs.phases[p]
        ph[#ph + 1] = { marker = it.marker }
        cs.markers[p][it.marker] = #ph + 1
      end
    end
  end
  -- The walk folded at load against the seeded TX (luaproxy.waf.fold): what no request
  -- can reach goes, before its patterns join the Hyperscan groups.
  if opts.tx then
    cs.paranoia = paranoia
    FOLD.fold(cs, opts.tx, { eval = function(st, r, cond) return sec_cond(st, r, cond) end,
                             setvar = run_setvar, expand = expand })
  end
  -- A group scans its collections in the order the rules first name them, folded rules
  -- included: the order a rule's matches come in (its first is the one logged) stays.
  local coll_rank, nrank = {}, 0
  for _, r in ipairs(in_order) do
    for _, cond in ipairs(r.conds) do
      local fast = (cond.op == "rx" or cond.op == "pm") and not cond.multi and not cond.negate
      for _, e in ipairs(cond.tgt) do
        if e.count or DYNAMIC[e.coll] then fast = false end
      end
      if fast then
        for _, e in ipairs(cond.tgt) do
          local k = cond.chain .. ":" .. e.coll
          if not coll_rank[k] then
            nrank = nrank + 1
            coll_rank[k] = nrank
          end
        end
      end
    end
  end
  for _, r in ipairs(in_order) do
    if not r.folded then
      for _, cond in ipairs(r.conds) do
        if (cond.op == "rx" or cond.op == "pm") and cond.multi
          and (cond.op == "pm" or type(cond.arg) == "string") then
          -- multiMatch: tested on the value after each step that changes it, so not
          -- through a chain's group; one database of all such patterns prefilters each
          -- of those values (multi_may), scanned once per distinct text per request.
          local mg = cs.multi_group
          if not mg then
            mg = { chain = 0, multi = true, conds = {}, pcre = {}, pats = {}, flags = {}, ids = {},
                   colls = {}, only = {}, reads = {} }
            cs.multi_group = mg
            cs.groups[#cs.groups + 1] = mg
          end
          mg.conds[#mg.conds + 1] = cond
          cond.group, cond.gid, cond.fast = mg, #mg.conds, false
          add_patterns(mg, cond)
          if not cond.negate then
            -- its values as a group's (segs_of): collections, and the names where all
            -- its targets on one name theirs (multi_values)
            local ml = { colls = {}, only = {} }
            for _, e in ipairs(cond.tgt) do
              if not e.count and not DYNAMIC[e.coll] then
                local cname = e.coll
                if ml.only[cname] == nil then
                  ml.colls[#ml.colls + 1] = cname
                  ml.only[cname] = {}
                end
                local o = ml.only[cname]
                if o and (not e.key or e.keyrx) then
                  ml.only[cname] = false
                elseif o then
                  o[e.key] = true
                end
              end
            end
            for cname, o in pairs(ml.only) do if not o then ml.only[cname] = nil end end
            cond.mlist = ml
          end
        end
        if cond.op == "rx" and cond.arg == "^.*$" and not cond.multi and not cond.negate
          and #cond.tgt == 1 then
          -- Matches every value whole (DOTALL: also one with newlines), captures it and
          -- nothing else (CRS 920450 on REQUEST_HEADERS_NAMES, 901318): no Hyperscan
          -- pattern (it named every value of its group, each a hit the walk then looked
          -- at) and no PCRE2; sec_cond matches each value it reads (match_all).
          cond.anything = true
        elseif (cond.op == "rx" or cond.op == "pm") and not cond.multi then
          local g = groups[cond.chain]
          if not g then
            g = { chain = cond.chain, conds = {}, pcre = {}, pats = {}, flags = {}, ids = {}, colls = {}, only = {} }
            groups[cond.chain] = g
            cs.groups[#cs.groups + 1] = g
          end
          g.conds[#g.conds + 1] = cond
          cond.group, cond.gid = g, #g.conds
          local fast = not cond.negate
          for _, e in ipairs(cond.tgt) do
            if e.count or DYNAMIC[e.coll] then fast = false end
          end
          cond.fast = fast
          -- the values the condition reads through the group's hits (note_hit records only
          -- theirs): per collection, true for every name (or a name pattern), else the set
          -- of names; none for a condition that is not fast (may_match prefilters it)
          g.reads = g.reads or {}
          if fast then
            local reads = {}
            for _, e in ipairs(cond.tgt) do
              local cur = reads[e.coll]
              if not e.key or e.keyrx then
                reads[e.coll] = true
              elseif cur ~= true then
                cur = cur or {}
                cur[e.key] = true
                reads[e.coll] = cur
              end
            end
            g.reads[cond.gid] = reads
          end
          if fast then
            for _, e in ipairs(cond.tgt) do
              if not g.collset then g.collset = {} end
              if not g.collset[e.coll] then
                g.collset[e.coll] = true
                g.colls[#g.colls + 1] = e.coll
              end
            end
          end
          add_patterns(g, cond)
        end
      end
    end
  end
  for _, g in ipairs(cs.groups) do
    if not g.multi then
      table.sort(g.colls, function(a, b)
        return coll_rank[g.chain .. ":" .. a] < coll_rank[g.chain .. ":" .. b]
      end)
    end
    for _, cname in ipairs(g.colls) do
      local set = {}
      for _, cond in ipairs(g.conds) do
        if cond.fast then
          for _, e in ipairs(cond.tgt) do
            if e.coll == cname then
              if not e.key or e.keyrx then
                set = nil
                break
              end
              set[e.key] = true
            end
          end
        end
        if not set then break end
      end
      g.only[cname] = set
    end
  end
  cs.use_hs = opts.hyperscan ~= false and hs.available
  cs.hyperscan = cs.use_hs
  return cs
end

-- A group's database is there (dropped: its conditions left to PCRE2 alone).
took_group = function(cs, g, dropped)
  register_db(cs, g)
  for ci, why in pairs(dropped) do
    local cond = g.conds[ci]
    cond.pcre_only, cond.fast = true, false
    cs.pcre_only[#cs.pcre_only + 1] = format("%s (%s)", cond.place or "?", why)
  end
  cs.hs_patterns = cs.hs_patterns + #g.pats
  if g.db then
    cs.hs_dbs = (cs.hs_dbs or 0) + 1
    if g.compiled_here then cs.hs_compiled = (cs.hs_compiled or 0) + 1 end
  end
end

-- Takes the databases the compile thread finished (finish_seclang queued them). Returns
-- true when none is pending any more. Cheap: one registry look-up per pending group.
function M.poll_seclang(cs)
  local pending = cs.pending
  if not pending then return true end
  local left = {}
  for _, g in ipairs(pending) do
    local st, db, notes = hs.get(g.key)
    if st == "ready" then
      took_group(cs, g, apply_notes(g, db, notes))
    elseif st == "failed" then
      -- Hyperscan refused the group (or left every pattern out): PCRE2 runs it all
      local dropped = {}
      for kind, a, b in db:gmatch("(%u) (%d+) ([^\n]*)\n") do
        if kind == "D" then dropped[tonumber(a)] = b end
      end
      g.pats, g.flags, g.ids = {}, {}, {}
      for ci, cond in ipairs(g.conds) do
        cond.pcre_only, cond.fast = true, false
        cs.pcre_only[#cs.pcre_only + 1] = format("%s (%s)", cond.place or "?",
          dropped[ci] or ("hyperscan: " .. db:match("^[^\n]*")))
      end
    elseif st == "pending" then
      left[#left + 1] = g
    else
      -- unknown to the registry (cannot happen: queued entries live until exit)
      local dropped, err = compile_group(g)
      if not dropped then error(err, 0) end
      took_group(cs, g, dropped)
    end
  end
  cs.pending = #left > 0 and left or nil
  return cs.pending == nil
end

-- Hyperscan databases of a seclang set (as M.finish for the Lua rules).
local function finish_seclang(cs, pause)
  if cs.ready then return true end
  for _, g in ipairs(cs.groups) do
    if cs.use_hs and #g.pats > 0 then
      local queued
      if hs.async and not cs.sync then
        g.key = group_key(g)
        queued = hs.queue(g.key, g.pats, g.flags, g.ids)
      end
      if queued ~= nil then
        -- Compiled off this thread (true: queued by this VM; false: by another): the
        -- group runs through PCRE2 until poll_seclang finds its database.
        g.compiled_here = queued
        cs.pending = cs.pending or {}
        cs.pending[#cs.pending + 1] = g
      else
        local dropped, err = compile_group(g, pause)
        if not dropped then return nil, err end
        took_group(cs, g, dropped)
      end
    end
    if pause then pause() end
  end
  M.poll_seclang(cs)
  -- PCRE2 compiles (and JIT-compiles) each pattern on its first use: done here, so that
  -- the first requests do not pay for it (and stay within time_budget).
  local n = 0
  for _, ph in ipairs(cs.phases) do
    for _, r in ipairs(ph) do
      for _, cond in ipairs(r.conds or {}) do
        if cond.op == "rx" then
          re.find("", cond.arg, "sm")
          n = n + 1
          if pause and n % 16 == 0 then pause() end
        end
      end
    end
  end
  cs.ready = true
  return true
end
M.finish_seclang = finish_seclang

-- Runs a seclang set over the request state `st` (vars set). st.tx: the TX collection
-- seeded by the caller (paranoia level, thresholds). Returns the matches (or nil) and the
-- outcome: "deny", "allow", "budget", "off" or nil.
-- (cs.each: every rule asked one by one, as while the databases compile: specs compare)
local function walk(cs, st, sc)
  local plan = not cs.pending and not cs.each and cs.plan
  local outcome
  for p = 1, 2 do
    local pp = plan and plan[p]
    if pp then
      outcome = run_phase_plan(cs, st, cs.phases[p], cs.markers[p], pp, sc)
    else
      outcome = run_phase(cs, st, cs.phases[p], cs.markers[p])
    end
    if outcome then break end
  end
  return st.matches, outcome
end

-- The walk's per-request tables (st.gh: group hits, st.hp: each group's hits table, st.ln and
-- st.lpool: lnames's, st.msets and st.mpool: multi_values's, st.mp: add_match's pool, and
-- run_phase_plan's queue and marks) are the rule set's, made once per VM and emptied (or
-- their counts set back) at the start of each request's walk (a group's hits table when
-- group_hits takes it, the first time this walk asks for that group: st.gh, emptied, says
-- it did not yet): grown to a request's size once, not at every request (GC and rehashing
-- were a fifth of a GET). Nothing of one request reaches the next: every table is emptied
-- or written whole before the walk reads it, whatever the last walk did (an error
-- included), and st holds them only while its walk runs (scratch.busy). st.vc (value()'s
-- transformed texts) and st.hc (hit_set's scans) are the exception: pure functions of a
-- text, kept across requests and emptied once they hold VC_KEEP bytes; what one request
-- sent shows in another only as time. A walk does not yield, so none runs inside another;
-- were one to (a confirmer that yields), the inner walk would find busy set and make its
-- own.
local function take_scratch(cs, st)
  local sc = cs.scratch
  if not sc then
    sc = { gh = {}, vc = {}, hp = {}, hc = {}, ln = {}, lpool = {}, msets = {}, mpool = {},
           pend = {}, act = {}, mp = { nl = 0, nr = 0, lists = {}, recs = {} }, busy = false }
    cs.scratch = sc
  end
  if sc.busy then
    st.gh, st.hc = {}, {}
    return nil
  end
  clear(sc.msets)
  reuse_scratch(sc, st)
  st.msets, st.mpool = sc.msets, sc.mpool
  sc.mp.nl, sc.mp.nr = 0, 0
  st.mp = sc.mp
  sc.busy = true
  return sc
end

function M.run_seclang(cs, st)
  if not cs.ready then
    local ok, err = finish_seclang(cs)
    if not ok then error(err, 0) end
  end
  st.cs = cs
  st.paranoia = st.paranoia or 4
  -- (the lists of rules a ctl removed: made by the first such ctl)
  st.rm_ids, st.rm_tags, st.removing = nil, nil, false
  if not cs.plan and not cs.pending and cs.use_hs then build_plan(cs) end
  local sc = take_scratch(cs, st)
  if not sc then return walk(cs, st) end
  -- (the walk's traceback, for the plugin's log: raised again below, it would show only this line)
  local ok, matches, outcome = xpcall(walk, debug.traceback, cs, st, sc)
  -- st lets go of the tables the next request empties (a caller may keep st)
  sc.busy = false
  clear(sc.ln)
  st.gh, st.vc, st.hp, st.hc, st.ln, st.lpool = nil, nil, nil, nil, nil, nil
  st.msets, st.mpool, st.mp, st.mv, st.mvn, st.mvs = nil, nil, nil, nil, nil, nil
  if not ok then error(matches, 0) end
  return matches, outcome
end

M.sanitize = sanitize
M.hs = hs
return M
