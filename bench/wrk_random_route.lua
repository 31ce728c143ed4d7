-- wrk script: a random host h1..h10000.test and path /p1/../p10/ per request (the
-- route-hosts scenario of bench/scenarios.py), with wrk_report.lua's JSON summary.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "wrk_report.lua")

local random, format = math.random, string.format
request = function()
  return wrk.format("GET", format("/p%d/", random(1, 10)),
                    { Host = format("h%d.test", random(1, 10000)) })
end
