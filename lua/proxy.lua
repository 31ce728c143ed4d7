-- The `proxy` module: what scripts and plugins use besides the request handle.
-- It touches engine symbols only when called, so it loads anywhere (the test double
-- replaces it under busted).
local ffi = require "ffi"
local K = require "luaproxy.ffi"
local phases = require "luaproxy.phases"
local C = ffi.C
local select, tostring, concat = select, tostring, table.concat
local type, tonumber, error, setmetatable, format = type, tonumber, error, setmetatable, string.format
local yield = phases.wait

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
  if not seconds or not (seconds >= 0 and seconds < 1e9) then
    phases.raise("proxy.sleep: expected a number of seconds from 0 to 1e9", 2)
  end
  local rc = C.lp_ffi_sleep(seconds)
  if rc ~= 0 then phases.raise("proxy.sleep: only inside a phase, a timer or init_worker", 2) end
  yield()
end

-- ---- upstream targets (per worker; a reload starts again from the config) ----

local Upstream = {}
Upstream.__index = Upstream
local str_out = ffi.new("lp_str_t[2]")

local function target_args(self, what, addr, weight)
  if type(addr) ~= "string" then
    phases.raise(format("%s(): expected an address \"ip:port\", got %s", what, type(addr)), 3)
  end
  weight = weight == nil and 1 or tonumber(weight)
  if not weight or weight < 1 or weight > 10000 or weight % 1 ~= 0 then
    phases.raise(what .. "(): the weight must be a whole number from 1 to 10000", 3)
  end
  return addr, weight
end

local function target_op(self, what, op, addr, weight)
  local rc = C.lp_ffi_upstream_target(self._i, op, addr, #addr, weight)
  if rc >= 0 then return true end
  if rc == K.EPHASE then
    phases.raise(what .. "(): only in init_worker and request phases", 3)
  end
  if rc == K.ENOTFOUND then return nil, "no target " .. addr .. " in upstream " .. self.name end
  if rc == K.EINVAL then return nil, "expected an IP address and port, got " .. addr end
  return nil, "out of memory"
end

-- Adds a target (or sets the weight of the one at that address): true, or nil and a message.
function Upstream:add_target(addr, weight)
  addr, weight = target_args(self, "add_target", addr, weight)
  return target_op(self, "add_target", K.TADD, addr, weight)
end

function Upstream:remove_target(addr)
  addr = target_args(self, "remove_target", addr, 1)
  return target_op(self, "remove_target", K.TREMOVE, addr, 1)
end

function Upstream:set_weight(addr, weight)
  if weight == nil then phases.raise("set_weight(): expected a weight", 2) end
  addr, weight = target_args(self, "set_weight", addr, weight)
  return target_op(self, "set_weight", K.TWEIGHT, addr, weight)
end

-- The targets as this worker sees them now: { { address =, weight =, state = }, ... }.
function Upstream:targets()
  local out = {}
  local i = 0
  while true do
    local w = C.lp_ffi_upstream_target_at(self._i, i, str_out, str_out + 1)
    if w < 0 then return out end
    i = i + 1
    out[i] = { address = ffi.string(str_out[0].base, str_out[0].len), weight = w,
               state = ffi.string(str_out[1].base, str_out[1].len) }
  end
end

-- The upstream `name` of the running generation, in this worker.
function proxy.upstream(name)
  if type(name) ~= "string" then phases.raise("proxy.upstream(): expected an upstream name", 2) end
  local i = C.lp_ffi_upstream_find(name, #name)
  if i == K.EPHASE then phases.raise("proxy.upstream(): only in init_worker and request phases", 2) end
  if i < 0 then phases.raise(format("proxy.upstream(): no upstream named %q", name), 2) end
  return setmetatable({ name = name, _i = i }, Upstream)
end

-- `return (C.f())`, not a tail call: a trace that began in one of these would end at the
-- tail call with "leaving loop in root trace" (luaproxy/request.lua says more).
function proxy.now() return (C.lp_ffi_now()) end
function proxy.monotonic() return (C.lp_ffi_monotonic()) end
function proxy.worker_id() return (C.lp_ffi_worker_id()) end

-- ---- background work (lua/luaproxy/tasks.lua) ----
local tasks = require "luaproxy.tasks"
proxy.timer = tasks.timer
proxy.spawn = tasks.spawn
proxy.exiting = tasks.exiting

-- proxy.shared.NAME: the config's shared dicts (lua/luaproxy/shared.lua).
proxy.shared = require("luaproxy.shared").dicts

-- Fields loaded on first use, then plain fields: a VM that never uses them pays nothing at
-- start (loading luaproxy/re.lua, its cdefs and PCRE2's symbols, takes about 2 ms).
local LAZY = {
  re = "luaproxy.re", -- PCRE2 regular expressions (docs/lua-api.md)
  router = "luaproxy.router", -- the compiled router (docs/routing.md)
  cache = "luaproxy.cache", -- the response cache's zones, purge (docs/plugins/cache.md)
}
setmetatable(proxy, {
  __index = function(t, k)
    local mod = LAZY[k]
    if mod == nil then return nil end
    local v = require(mod)
    rawset(t, k, v)
    return v
  end,
})

-- ---- cosockets (lua/luaproxy/tcp.lua) ----
proxy.tcp = require("luaproxy.tcp").tcp

-- proxy.metrics: plugins' own metrics on GET /metrics (lua/luaproxy/metrics.lua).
do
  local metrics = require "luaproxy.metrics"
  proxy.metrics = metrics.api(metrics.engine_backend())
end

-- ---- proxy.http: HTTP/1.1 client over proxy.tcp() (lua/luaproxy/http.lua) ----
do
  local http = require "luaproxy.http"
  proxy.http = { request = http.request, request_stream = http.request_stream,
                 parse_url = http.parse_url }
end

-- proxy.redis: a Redis client on proxy.tcp (lua/luaproxy/redis.lua); proxy.null is the
-- nil-bulk sentinel (cjson.null, like ngx.null).
proxy.null = proxy.null or proxy.json.null
proxy.redis = require("luaproxy.redis").api(proxy.tcp)

proxy._K = K
return proxy
