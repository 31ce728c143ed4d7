-- waf rule walk folding: the TX checks of a compiled SecLang set (engine.compile_seclang)
-- decided at load against the TX the plugin seeds. Docs: docs/plugins/waf.md, "The walk".
--
-- CRS visits on every request rules that read nothing of the request: the paranoia-level
-- gates (TX:EXECUTING_PARANOIA_LEVEL "@lt 2" ... skipAfter), the initialisation of settings
-- (&TX:paranoia_level "@eq 0" ... setvar) and the sections of settings left off
-- (&TX:crs_exclusions_drupal "@eq 0" ... skipAfter). A forward pass over each phase keeps,
-- before every item, what TX holds on every path reaching it: per key a value, "absent",
-- or unknown (written by a rule whose outcome depends on the request; a setvar whose key
-- has a macro makes every key under its static prefix unknown). Jumps (skipAfter) go
-- forward only, so a pass joins at each item the state falling through and the states
-- jumping there. A rule is static when every condition reads only TX keys known there (no
-- capture, no macro but TX and RULE); it is then run at load, and:
--   - a rule that no path reaches, or whose first condition fails, is dropped;
--   - a static rule that matches, leaves no trace (no setvar, ctl, log, deny or allow) and
--     jumps becomes a jump item (no conditions, one look-up); one that does not jump, or
--     whose jump lands where the walk goes anyway, is dropped;
--   - the rules before the first rule kept (the initialisation) are run once here: their
--     setvars become the TX a request starts with (cs.tx_start).
-- ctl:ruleRemoveById/Tag can take a rule out at run time: a rule some reachable ctl may
-- remove (or take targets from) is never folded. Which ctls are reachable depends on the
-- folding (CRS's sampling and application exclusion sections are behind such gates), so
-- the pass is repeated with the ctls of the rules it found reachable until that set stays
-- the same: a ctl that runs lies on a reachable rule under the removals that ran before it.
local type, pairs, ipairs, tostring, tonumber = type, pairs, ipairs, tostring, tonumber
local sub = string.sub

local M = {}

local UNK = {} -- a TX key whose value depends on the request

-- A state: { v = { [key] = value | false (absent) | UNK }, wild = { prefix, ... } | nil }.
local function get(S, k)
  local x = S.v[k]
  if x ~= nil then return x end
  if S.wild then
    for _, p in ipairs(S.wild) do if sub(k, 1, #p) == p then return UNK end end
  end
  return false
end

local function copy(S)
  local v = {}
  for k, x in pairs(S.v) do v[k] = x end
  local w
  if S.wild then
    w = {}
    for i, p in ipairs(S.wild) do w[i] = p end
  end
  return { v = v, wild = w }
end

-- The state holding on either path (nil: no path).
local function join(A, B)
  if not A or A == B then return B end
  if not B then return A end
  local out = { v = {}, wild = nil }
  for k in pairs(A.v) do
    local a, b = get(A, k), get(B, k)
    out.v[k] = (a == b) and a or UNK
  end
  for k in pairs(B.v) do
    if out.v[k] == nil then
      local a, b = get(A, k), get(B, k)
      out.v[k] = (a == b) and a or UNK
    end
  end
  if A.wild or B.wild then
    out.wild = {}
    local seen = {}
    for _, l in ipairs({ A.wild or {}, B.wild or {} }) do
      for _, p in ipairs(l) do
        if not seen[p] then
          seen[p] = true
          out.wild[#out.wild + 1] = p
        end
      end
    end
  end
  return out
end

-- Is a macro's text known at load? Strings, RULE parts (expand's RULE parts are the rule's
-- own: the same every request), TX keys known in S and, for a matching link's setvar,
-- MATCHED_VAR and MATCHED_VAR_NAME (the link's own match).
local function macro_known(S, m, mv_ok)
  if type(m) ~= "table" or not m.macro then return true end
  for _, p in ipairs(m) do
    if type(p) ~= "string" and p.coll ~= "RULE"
      and not (p.coll == "TX" and p.key and get(S, p.key) ~= UNK)
      and not (mv_ok and (p.coll == "MATCHED_VAR" or p.coll == "MATCHED_VAR_NAME")) then
      return false
    end
  end
  return true
end

-- The static prefix of a setvar key with a macro (RULE parts as the rule gives them).
local function key_prefix(m, r)
  if type(m) ~= "table" then return m, true end
  local out = {}
  for _, p in ipairs(m) do
    if type(p) == "string" then
      out[#out + 1] = p
    elseif p.coll == "RULE" and p.key == "id" then
      out[#out + 1] = tostring(r.id)
    else
      return table.concat(out), false
    end
  end
  return table.concat(out), true
end

-- S with key (or every key under prefix) unknown.
local function forget(S, key, whole)
  if whole then
    S.v[key] = UNK
    return
  end
  if key == "" then
    for k in pairs(S.v) do S.v[k] = UNK end
  else
    for k in pairs(S.v) do if sub(k, 1, #key) == key then S.v[k] = UNK end end
  end
  S.wild = S.wild or {}
  S.wild[#S.wild + 1] = key
end

-- What a rule whose outcome is unknown may leave in TX (any link, any capture).
local function unknown_effects(S, r)
  local out = copy(S)
  for _, cond in ipairs(r.conds) do
    for _, sv in ipairs(cond.setvars) do
      local key, whole = key_prefix(sv.key, r)
      forget(out, key, whole)
    end
    if cond.capture then
      for d = 0, 9 do out.v[tostring(d)] = UNK end
    end
  end
  return out
end

-- Does condition cond read only TX keys known in S?
local function cond_static(S, cond)
  if cond.capture then return false end
  for _, e in ipairs(cond.tgt) do
    if e.coll ~= "tx" or not e.key or e.keyrx then return false end
    if get(S, e.key) == UNK then return false end
  end
  local a = cond.arg
  if type(a) == "table" and a.macro and not macro_known(S, a, false) then return false end
  return true
end

-- Runs static rule r at load over state S with the engine's own evaluation (env.eval, the
-- engine's sec_cond; env.setvar). Returns nil when some link is not static; else
-- { outcome = bool, matched = links that matched, S = state after, setvars = bool,
--   concrete = bool (every setvar that ran was known), ctls = bool }.
local function simulate(env, cs, S, r)
  local tx = {}
  for k, x in pairs(S.v) do if type(x) == "string" then tx[k] = x end end
  local st = { cs = cs, tx = tx, rm_ids = {}, rm_tags = {}, rule = r }
  local out = { outcome = false, matched = 0, S = S, setvars = false, concrete = true, ctls = false }
  local cur = S
  for k, cond in ipairs(r.conds) do
    if not cond_static(cur, cond) then return nil end
    local ms = env.eval(st, r, cond)
    if not ms then return out end
    local last = ms[#ms]
    st.mv, st.mvn, st.mvs = last.value, last.name, ms
    out.matched = k
    if #cond.ctls > 0 then out.ctls = true end
    for _, sv in ipairs(cond.setvars) do
      out.setvars = true
      if cur == S then cur = copy(S) end
      local ok = macro_known(cur, sv.key, true) and (sv.del or macro_known(cur, sv.value, true))
      local key = ok and env.expand(st, sv.key)
      if ok and sv.op ~= "=" and not sv.del and get(cur, key) == UNK then ok = false end
      if ok then
        env.setvar(st, sv)
        local x = st.tx[key]
        cur.v[key] = x == nil and false or x
      else
        out.concrete = false
        local pk, whole = key_prefix(sv.key, r)
        forget(cur, pk, whole)
        if key then cur.v[key] = UNK end
      end
    end
    out.S = cur
  end
  out.outcome = true
  return out
end

local function matches_removal(C, r)
  for _, x in ipairs(C.ids) do if r.id >= x[1] and r.id <= x[2] then return true end end
  for _, t in ipairs(C.tags) do if r.tags[t] then return true end end
  for _, id in ipairs(C.target_ids) do if r.id == id then return true end end
  for _, t in ipairs(C.target_tags) do if r.tags[t] then return true end end
  return false
end

-- The removal ctls of the rules in `rules` (a list), as a set with a canonical text.
local function ctls_of(rules)
  local C = { ids = {}, tags = {}, target_ids = {}, target_tags = {}, engine_late = false }
  local keys = {}
  for _, r in ipairs(rules) do
    for k, cond in ipairs(r.conds) do
      for _, c in ipairs(cond.ctls) do
        local kind = c.kind
        if kind == "ruleremovebyid" then
          C.ids[#C.ids + 1] = { c.lo, c.hi }
          keys[#keys + 1] = "i" .. c.lo .. "-" .. c.hi
        elseif kind == "ruleremovebytag" then
          C.tags[#C.tags + 1] = c.value
          keys[#keys + 1] = "t" .. c.value
        elseif kind == "ruleremovetargetbyid" then
          C.target_ids[#C.target_ids + 1] = tonumber(c.value)
          keys[#keys + 1] = "I" .. c.value
        elseif kind == "ruleremovetargetbytag" then
          C.target_tags[#C.target_tags + 1] = c.value
          keys[#keys + 1] = "T" .. c.value
        elseif kind == "ruleengine" and k < #r.conds then
          -- ruleEngine=Off on a link before the last: the walk may go on with the engine
          -- off and stop at the next rule that matches, a folded one included
          C.engine_late = true
          keys[#keys + 1] = "E"
        end
      end
    end
  end
  table.sort(keys)
  C.key = table.concat(keys, "\0")
  return C
end

-- Does any rule read MATCHED_VAR* of the rule before it (its first condition's targets
-- or argument)? Then a static rule that matched cannot be dropped (it sets MATCHED_VAR).
local MATCHED = { matched_var = true, matched_vars = true, matched_var_name = true, matched_vars_names = true }
local function reads_previous_match(rules)
  for _, r in ipairs(rules) do
    local c = r.conds[1]
    for _, e in ipairs(c.tgt) do if MATCHED[e.coll] then return true end end
    if type(c.arg) == "table" and c.arg.macro then
      for _, p in ipairs(c.arg) do
        if type(p) == "table" and (p.coll == "MATCHED_VAR" or p.coll == "MATCHED_VAR_NAME") then return true end
      end
    end
  end
  return false
end

-- One pass over the phases with removal set C. Returns fates (per phase, per index:
-- "dead", "drop", "marker", "keep", "jump"), the TX at the end of the initialisation, and
-- the rules reached; or nil when a jump goes backward (never folded).
local function analyse(env, cs, seed, C, mv_cross)
  local S0 = { v = {} }
  for k, v in pairs(seed) do S0.v[k] = v end
  local fates, reached = { {}, {} }, {}
  local prefix, start = true, nil
  local carry = S0 -- state entering the phase
  for p = 1, 2 do
    local list, markers = cs.phases[p], cs.markers[p]
    local n = #list
    local pend = {}
    local fall = carry
    local fate = fates[p]
    for i = 1, n do
      local S = join(fall, pend[i])
      pend[i] = nil
      local it = list[i]
      if not S then
        fate[i] = "dead"
        fall = nil
      elseif it.marker then
        fate[i] = "marker"
        fall = S
      else
        local r = it
        reached[#reached + 1] = r
        local target
        if r.skip_after then
          target = markers[r.skip_after]
          if not target or target <= i then return nil end
        end
        local res = not matches_removal(C, r) and simulate(env, cs, S, r) or nil
        local f = "keep"
        if res then
          local stops = res.outcome and (r.disruptive == "deny" or r.disruptive == "allow")
          if res.outcome and target then
            pend[target] = join(pend[target], res.S)
            fall = nil
          elseif stops then
            fall = nil
          else
            fall = res.S
          end
          local traceless = not res.ctls and (not res.setvars or (prefix and res.concrete))
            and (res.matched == 0 or not mv_cross)
            and (not res.outcome or (r.nolog and r.disruptive == "pass"))
          if traceless then
            if not res.outcome then f = "drop"
            elseif target then f = prefix and "drop" or "jump"
            else f = (C.engine_late and not prefix) and "jump" or "drop" end
          end
        else
          local after = unknown_effects(S, r)
          if target then pend[target] = join(pend[target], after) end
          fall = after
        end
        fate[i] = f
        if prefix and f ~= "drop" then
          prefix = false
          start = S
        end
      end
    end
    -- what reaches the end of the phase, or jumps past it, goes on to the next
    local out = fall
    for j, s in pairs(pend) do if j > n then out = join(out, s) end end
    carry = out
    if not carry then break end
  end
  if prefix then start = carry end
  return fates, start, reached
end

-- Folds compiled set cs (its phases and markers, before its Hyperscan groups are made)
-- against `seed` (the TX a request starts with). Dropped rules get r.folded = true; the
-- phases and markers are rebuilt; cs.tx_start is the TX a request starts with now.
-- env: { eval = sec_cond, setvar = run_setvar, expand = expand } from the engine.
function M.fold(cs, seed, env)
  local all = {}
  for p = 1, 2 do
    for _, r in ipairs(cs.phases[p]) do if not r.marker then all[#all + 1] = r end end
  end
  local mv_cross = reads_previous_match(all)
  local C = ctls_of(all)
  local fates, start, reached
  for _ = 1, 20 do
    fates, start, reached = analyse(env, cs, seed, C, mv_cross)
    if not fates then return false end
    local C2 = ctls_of(reached)
    if C2.key == C.key then break end
    C = C2
    fates = nil
  end
  if not fates then return false end
  local dropped, jumps = 0, 0
  for p = 1, 2 do
    local list, markers, fate = cs.phases[p], cs.markers[p], fates[p]
    local n = #list
    -- a jump whose target is the next item kept goes too (from the last one back, so that
    -- a jump over jumps dropped sees them gone); not when the engine may be off by then
    if not C.engine_late then
      for i = n, 1, -1 do
        if fate[i] == "jump" then
          local t = markers[list[i].skip_after]
          local empty = true
          for j = i + 1, t - 1 do
            local fj = fate[j]
            if fj == "keep" or fj == "jump" then
              empty = false
              break
            end
          end
          if empty then fate[i] = "drop" end
        end
      end
    end
    local out, newpos = {}, {}
    for i = 1, n do
      newpos[i] = #out + 1
      local f, it = fate[i], list[i]
      if f == "keep" then
        out[#out + 1] = it
      elseif f == "jump" then
        out[#out + 1] = { jump = it.skip_after or false, id_folded = it.id }
        jumps = jumps + 1
      end
      if (f == "drop" or f == "dead" or f == "jump") and not it.marker then
        it.folded = true
        if f ~= "jump" then dropped = dropped + 1 end
      end
    end
    -- each marker's index: the first item kept at or after it (newpos runs from the right)
    local nxt = #out + 1
    for i = n, 1, -1 do
      local f = fate[i]
      if f == "keep" or f == "jump" then nxt = newpos[i] end
      newpos[i] = nxt
    end
    local m2 = {}
    for name, idx in pairs(markers) do m2[name] = idx <= n and newpos[idx] or #out + 1 end
    cs.phases[p], cs.markers[p] = out, m2
  end
  local tx = {}
  for k, x in pairs(start.v) do if type(x) == "string" then tx[k] = x end end
  cs.tx_start = tx
  cs.counts.folded, cs.counts.jumps = dropped, jumps
  return true
end

M._UNK = UNK
return M
