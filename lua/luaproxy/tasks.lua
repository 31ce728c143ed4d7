-- Background work: proxy.timer.at / proxy.timer.every / proxy.spawn, and the body every
-- background task runs (tasks.run, resumed by engine/lua_task.c).
--
-- The engine owns the task (its coroutine, its timer, the bounds lua.max_timers and
-- lua.max_running_timers); this module keeps what C cannot hold: the function and its
-- arguments, by task id, until the task starts.
local ffi = require "ffi"
local K = require "luaproxy.ffi"
local phases = require "luaproxy.phases"
local C = ffi.C
local type, select, tostring, tonumber, xpcall, unpack, setmetatable = type, select,
  tostring, tonumber, xpcall, unpack, setmetatable
local traceback, format = debug.traceback, string.format
local yield = phases.wait

local ENOSPACE, EPHASE = K.ENOSPACE, K.EPHASE
local WAKE_PREMATURE, WAKE_CANCELLED = 1, 2

local M = {}

-- id -> { fn, n, args..., every = seconds, spawn = true } until the task starts
local jobs = {}

local function log_failure(job, err)
  local msg = format("%s failed: %s", job.spawn and "proxy.spawn thread" or "timer",
    tostring(err))
  C.lp_ffi_log(0, msg, #msg)
end

-- The body of every background task: runs its job (a timer's function again and again
-- for `every`), then returns 0 to the engine. `wake` says why it was resumed.
function M.run(id, wake)
  local job = jobs[id]
  jobs[id] = nil
  if not job or wake == WAKE_CANCELLED then return 0 end
  local premature = wake == WAKE_PREMATURE
  job.started = true
  -- Its lines are tagged with the plugin that made it (phases.wait keeps that across waits).
  local rt = package.loaded["luaproxy.runtime"]
  if rt then rt.current, rt.current_phase, rt.task_co = job.inst, nil, coroutine.running() end
  while true do
    local ok, err
    if job.spawn then
      ok, err = xpcall(job.fn, traceback, unpack(job, 1, job.n))
    else
      ok, err = xpcall(job.fn, traceback, premature, unpack(job, 1, job.n))
    end
    if not ok then log_failure(job, err) end
    if not job.every or premature or job.cancelled then
      job.done = true
      if rt then rt.current = nil end
      return 0
    end
    local rc = C.lp_ffi_bg_wait(job.every)
    if rc == 1 then
      premature = true
    else
      if rc ~= 0 then return 0 end
      local w = yield()
      -- Cancelled while its next run was already due (the engine had woken it before the
      -- cancel came, as a loaded machine's late timers do): no run after cancel() said true.
      if w == WAKE_CANCELLED or job.cancelled then
        job.done = true
        return 0
      end
      premature = w == WAKE_PREMATURE
    end
  end
end

local function start(what, delay, timer, fn, ...)
  if type(fn) ~= "function" then
    phases.raise(what .. ": expected a function", 3)
  end
  local id = C.lp_ffi_bg_new(delay, timer)
  if id == ENOSPACE then
    return nil, timer == 1 and "too many pending timers (lua.max_timers)"
      or "too many running timers and threads (lua.max_running_timers)"
  end
  if id == EPHASE then
    if C.lp_ffi_exiting() ~= 0 then return nil, "process exiting" end
    phases.raise(what .. ": only in a worker (phases, timers, init_worker, plugin loading)", 3)
  end
  if id < 0 then return nil, "bad delay" end
  local job = { fn = fn, n = select("#", ...), ... }
  local rt = package.loaded["luaproxy.runtime"]
  job.inst = rt and rt.current
  jobs[id] = job
  return id, job
end

local Timer = {}
Timer.__index = Timer

-- Cancels a pending timer: true, or nil and "not pending" (it runs now, or ended). An
-- `every` timer whose function is running stops after this run.
function Timer:cancel()
  local job = self.job
  if job.cancelled or job.done or (job.started and not job.every) then
    return nil, "not pending"
  end
  job.cancelled = true
  jobs[self.id] = nil
  C.lp_ffi_bg_cancel(self.id) -- not pending: an `every` running now stops after this run
  return true
end

local function check_delay(what, delay)
  local d = tonumber(delay)
  if not d or not (d >= 0 and d < 1e9) then
    phases.raise(format("%s: expected a delay in seconds from 0 to 1e9, got %s", what,
      tostring(delay)), 3)
  end
  return d
end

M.timer = {}

-- proxy.timer.at(delay, fn, ...): fn(premature, ...) once, in a task of its own, after
-- `delay` seconds. Returns a handle (with :cancel()) or nil, err.
function M.timer.at(delay, fn, ...)
  delay = check_delay("proxy.timer.at", delay)
  local id, job = start("proxy.timer.at", delay, 1, fn, ...)
  if not id then return nil, job end
  return setmetatable({ id = id, job = job }, Timer)
end

-- proxy.timer.every(interval, fn, ...): fn(premature, ...) every `interval` seconds (the
-- next run is timed from the end of the previous one: runs never overlap).
function M.timer.every(interval, fn, ...)
  interval = check_delay("proxy.timer.every", interval)
  if interval <= 0 then phases.raise("proxy.timer.every: the interval must be > 0", 2) end
  local id, job = start("proxy.timer.every", interval, 1, fn, ...)
  if not id then return nil, job end
  job.every = interval
  return setmetatable({ id = id, job = job }, Timer)
end

function M.timer.pending_count() return C.lp_ffi_bg_count(0) end
function M.timer.running_count() return C.lp_ffi_bg_count(1) end

-- proxy.spawn(fn, ...): fn(...) in a detached light thread, started on this loop turn
-- right after the caller yields or returns. true, or nil, err.
function M.spawn(fn, ...)
  local id, job = start("proxy.spawn", 0, 0, fn, ...)
  if not id then return nil, job end
  job.spawn = true
  return true
end

-- Whether this generation is ending (a reload or a shutdown replaced it): long-running
-- background loops should return.
function M.exiting() return C.lp_ffi_exiting() ~= 0 end

return M
