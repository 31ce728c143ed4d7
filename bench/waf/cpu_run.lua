-- CPU per request of the waf plugin (proxy.test double, one luajit, after warm-up) for the
-- bench's two requests: a browser GET and a 4 KiB JSON POST.
--   luajit bench/waf/cpu_run.lua [crs-dir|lua] [paranoia] [n] [get|post]
-- WAF_PROFILE=<jit.p mode> (e.g. "F" or "Fl") profiles the measured requests only (not the
-- load and warm-up), printed at the end.
package.path = "lua/?.lua;lua/?/init.lua;plugins/?.lua;" .. package.path
local T = require "proxy.test"
local waf = require "waf"
local which = arg[1] or "/usr/share/modsecurity-crs"
local over = { paranoia = tonumber(arg[2] or "1") }
if which ~= "lua" then over.crs = which else over.crs = false end
local n = tonumber(arg[3] or "2000")
local conf = T.conf(waf, over)
local H = {
  Host = "shop.example.com",
  ["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
  Accept = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
  ["Accept-Language"] = "en-GB,en;q=0.7", ["Accept-Encoding"] = "gzip, deflate, br",
  Referer = "https://shop.example.com/products?page=2",
  Cookie = "session=8f4c2a1b9e7d6c5f4a3b2c1d0e9f8a7b; cart=3; consent=analytics%3Dno%2Cads%3Dno; _ga=GA1.2.1234567890.1700000000",
}
local json = '{"order":{"id":1234,"items":[{"sku":"A-1","qty":2,"note":"Please gift wrap, it\'s a present"}],"customer":{"name":"Jane O\'Neil","email":"jane@example.com","address":"12 High St, Leeds"}},"pad":""}'
json = json:gsub('"pad":""', '"pad":"' .. ("lorem ipsum dolor sit amet "):rep(200):sub(1, 4096 - #json) .. '"')
local function spec_get() return { uri = "/?id=123&utm_source=newsletter&utm_medium=email&ref=home", headers = H } end
local function spec_post()
  local h = {}
  for k, v in pairs(H) do h[k] = v end
  h["Content-Type"], h["Content-Length"] = "application/json", tostring(#json)
  return { method = "POST", uri = "/api/orders", headers = h, body = json }
end
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
for _, c in ipairs({ { "browser GET", spec_get, "get" }, { "4 KiB JSON POST", spec_post, "post" } }) do
  if which_req and which_req ~= c[3] then goto next end
  for _ = 1, 200 do T.phase(waf, "request", T.request(c[2]()), conf) end
  local reqs = {}
  for i = 1, n do reqs[i] = T.request(c[2]()) end
  if prof then require("jit.p").start(prof) end
  local t0 = os.clock()
  local blocked = 0
  for i = 1, n do if T.phase(waf, "request", reqs[i], conf) then blocked = blocked + 1 end end
  local dt = os.clock() - t0
  if prof then require("jit.p").stop() end
  print(string.format("%-16s %7.1f us/request (%d blocked)", c[1], dt / n * 1e6, blocked))
  ::next::
end
