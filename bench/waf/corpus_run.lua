-- Runs the waf corpora (tests/waf/*.jsonl) through the waf plugin with the proxy.test
-- double, in one luajit: detection and false-positive rates per category, and the rules
-- that fire on ordinary traffic. Usage (from the repository root):
--   luajit bench/waf/corpus_run.lua [crs-dir|lua] [paranoia] [verbose] [verdicts-file]
-- verdicts-file: one line per request (corpus, line, refused, score, the matched rules and
-- variables in order): two versions of the engine compare request by request with diff.
package.path = "lua/?.lua;lua/?/init.lua;plugins/?.lua;" .. package.path
local T = require "proxy.test"
local waf = require "waf"
local which = arg[1] or "/usr/share/modsecurity-crs"
local pl = tonumber(arg[2] or "1")
local verbose = arg[3] ~= "" and arg[3] or nil
local verdicts = arg[4] and assert(io.open(arg[4], "w"))
local over = { paranoia = pl }
if which ~= "lua" then over.crs = which else over.crs = false end
local conf = T.conf(waf, over)
local function load(path)
  local out = {}
  for line in io.lines(path) do out[#out + 1] = proxy.json.decode(line) end
  return out
end
local fires = {}
local function run(list, kind)
  local by, tot, blocked = {}, 0, 0
  for _, r in ipairs(list) do
    T.reset()
    local h = {}
    for k, v in pairs(r.headers) do h[k] = v end
    local req = T.request({ method = r.method, uri = r.uri, headers = h, body = r.body })
    local responded = T.phase(waf, "request", req, conf)
    local c = by[r.cat] or { 0, 0 }
    by[r.cat] = c
    c[1] = c[1] + 1
    tot = tot + 1
    if responded then
      c[2] = c[2] + 1
      blocked = blocked + 1
    end
    local w = req.ctx.waf
    if verdicts then
      local ms = {}
      for _, m in ipairs(w and w.matches or {}) do ms[#ms + 1] = tostring(m.id) .. " " .. tostring(m.var) end
      verdicts:write(string.format("%s\t%d\t%s\t%s\t%s\n", kind, tot, responded and "refused" or "passed",
        tostring(w and w.score), table.concat(ms, "; ")))
    end
    if kind == "ordinary" and w and w.action == "block" then
      for _, m in ipairs(w.matches) do fires[m.id] = (fires[m.id] or 0) + 1 end
      if verbose then
        local ids = {}
        for _, m in ipairs(w.matches) do ids[#ids + 1] = m.id .. " " .. m.var .. " " .. (m.excerpt or "") end
        print("FP", r.cat, r.uri, table.concat(ids, " | "))
      end
    elseif kind == "attacks" and not responded and verbose then
      print("MISS", r.cat, r.uri, (r.body or ""):sub(1, 100))
    end
  end
  local cats = {}
  for k in pairs(by) do cats[#cats + 1] = k end
  table.sort(cats)
  local parts = {}
  for _, k in ipairs(cats) do parts[#parts + 1] = string.format("%s %d/%d", k, by[k][2], by[k][1]) end
  print(string.format("%s: %d/%d blocked (%.1f%%): %s", kind, blocked, tot, 100 * blocked / tot,
    table.concat(parts, ", ")))
end
local t0 = os.clock()
run(load("tests/waf/attacks.jsonl"), "attacks")
run(load("tests/waf/ordinary.jsonl"), "ordinary")
print(string.format("cpu %.2f s", os.clock() - t0))
if verdicts then verdicts:close() end
local ids = {}
for id, n in pairs(fires) do ids[#ids + 1] = { id, n } end
table.sort(ids, function(a, b) return a[2] > b[2] end)
local s = {}
for _, x in ipairs(ids) do s[#s + 1] = x[1] .. "x" .. x[2] end
print("rules in false positives: " .. table.concat(s, " "))
