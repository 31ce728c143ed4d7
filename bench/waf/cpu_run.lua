-- CPU per request of the waf plugin (proxy.test double, one luajit, after warm-up) for the
-- bench's two requests (bench/waf/requests.json): a browser GET and a 4 KiB JSON POST.
--   luajit bench/waf/cpu_run.lua [crs-dir|lua] [paranoia] [n] [get|post]
-- WAF_PROFILE=<jit.p mode> (e.g. "F" or "Fl") profiles the measured requests only (not the
-- load and warm-up), printed at the end.
-- WAF_PAUSE=1: before and after each measured loop, print "pause <what>" and wait for a line
-- on stdin (bench/waf_callgrind.py switches callgrind's collection on and off there).
package.path = "lua/?.lua;lua/?/init.lua;plugins/?.lua;" .. package.path
local T = require "proxy.test"
local waf = require "waf"
local which = arg[1] or "/usr/share/modsecurity-crs"
local over = { paranoia = tonumber(arg[2] or "1") }
if which ~= "lua" then over.crs = which else over.crs = false end
local n = tonumber(arg[3] or "2000")
local conf = T.conf(waf, over)
-- The bench's two requests (bench/waf/requests.json, which bench/waf_crs.py sends through
-- the proxies): a browser GET and a 4 KiB JSON POST.
local function load_requests()
  local f = assert(io.open("bench/waf/requests.json", "rb"))
  local doc = proxy.json.decode(f:read("*a"))
  f:close()
  local function spec(r)
    return function()
      local h = {}
      for _, kv in ipairs(r.headers) do h[kv[1]] = kv[2] end
      return { method = r.method, uri = r.uri, headers = h, body = r.body ~= "" and r.body or nil }
    end
  end
  return spec(doc.get), spec(doc.post)
end
local spec_get, spec_post = load_requests()
local which_req = arg[4]
-- the walk's size: rules left in the phases after folding (luaproxy.waf.fold), and how many
-- of them have a prefiltered first condition (passed after one look-up unless Hyperscan
-- named them)
if conf.sec then
  local rules, pre = 0, 0
  for p = 1, 2 do
    for _, r in ipairs(conf.sec.phases[p]) do
      if r.id then
        rules = rules + 1
        local c = r.conds[1]
        if c.fast and not c.pcre_only then pre = pre + 1 end
      end
    end
  end
  print(string.format("walk: %d rules (%d prefiltered), %d folded at load, %d jumps", rules, pre,
    conf.sec.counts.folded or 0, conf.sec.counts.jumps or 0))
end
local prof = os.getenv("WAF_PROFILE")
local function pause(what)
  if os.getenv("WAF_PAUSE") ~= "1" then return end
  io.stdout:write("pause ", what, "\n")
  io.stdout:flush()
  io.stdin:read("*l")
end
for _, c in ipairs({ { "browser GET", spec_get, "get" }, { "4 KiB JSON POST", spec_post, "post" } }) do
  if which_req and which_req ~= c[3] then goto next end
  for _ = 1, 200 do T.phase(waf, "request", T.request(c[2]()), conf) end
  local reqs = {}
  for i = 1, n do reqs[i] = T.request(c[2]()) end
  if prof then require("jit.p").start(prof) end
  pause("start " .. c[3])
  local t0 = os.clock()
  local blocked = 0
  for i = 1, n do if T.phase(waf, "request", reqs[i], conf) then blocked = blocked + 1 end end
  local dt = os.clock() - t0
  pause("stop " .. c[3])
  if prof then require("jit.p").stop() end
  print(string.format("%-16s %7.1f us/request (%d blocked)", c[1], dt / n * 1e6, blocked))
  ::next::
end
