-- The `proxy` module: what scripts and plugins use besides the request handle.
-- It touches engine symbols only when called, so it loads anywhere (the test double
-- replaces it under busted).
local ffi = require "ffi"
local K = require "luaproxy.ffi"
local C = ffi.C
local select, tostring, concat = select, tostring, table.concat
local yield = coroutine.yield

local proxy = { json = require "cjson", log = {}, version = "0.1.0" }

local runtime -- loaded on first use: it is not needed to load this module

local LEVELS = { err = 0, warn = 1, notice = 2, info = 3, debug = 4 }
for name, level in pairs(LEVELS) do
  proxy.log[name] = function(...)
    local n = select("#", ...)
    local parts = {}
    for i = 1, n do parts[i] = tostring((select(i, ...))) end
    local msg = concat(parts, " ")
    runtime = runtime or require "luaproxy.runtime"
    local inst = runtime.current
    if inst then msg = "[" .. inst.name .. "] " .. msg end
    C.lp_ffi_log(level, msg, #msg)
  end
end
proxy.log.error = proxy.log.err

-- Yields the current phase for `seconds`; the engine resumes it from its loop.
function proxy.sleep(seconds)
  seconds = tonumber(seconds)
  if not seconds or seconds < 0 then error("proxy.sleep: expected a number of seconds >= 0", 2) end
  if C.lp_ffi_sleep(seconds) ~= 0 then
    error("proxy.sleep: only inside a request phase", 2)
  end
  yield()
end

function proxy.now() return C.lp_ffi_now() end
function proxy.worker_id() return C.lp_ffi_worker_id() end

proxy._K = K
return proxy
