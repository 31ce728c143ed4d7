-- What the runaway guard's checks cost (lua/luaproxy/guard.lua): each workload is loaded
-- twice, as it is and through the guard's rewrite, and timed compiled (best of ROUNDS).
-- Run from the repository root:  luajit bench/guard.lua   (JIT=off: interpreted, as code
-- whose traces abort runs). Prints the time of each and the ratio guarded / plain. Not a
-- test: nothing is asserted.
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
local guard = require "luaproxy.guard"

local ROUNDS = tonumber(os.getenv("ROUNDS")) or 3

-- Each chunk is a module: it returns the function to time, made once, as a plugin's phase
-- functions are (a closure made afresh on every call would make new traces either way).
local workloads = {
  { "empty loop body (worst case)", [[
    return function(n)
      local s = 0
      for i = 1, n do s = s + i end
      return s
    end ]], 1e8 },
  { "while loop, bit ops", [[
    local band, bxor = bit.band, bit.bxor
    return function(n)
      local i, h = 0, 0
      while i < n do h = bxor(h * 33, band(i, 255)); i = i + 1 end
      return h
    end ]], 1e8 },
  { "checksum of a string (string.byte)", [[
    local byte = string.byte
    local s = string.rep("abcdefghij", 20)
    return function(n)
      local h = 0
      for r = 1, n / 200 do
        for i = 1, #s do h = (h * 31 + byte(s, i)) % 4294967296 end
      end
      return h
    end ]], 1e8 },
  { "small helper called in a loop (function entry + loop)", [[
    local function clamp(x, lo, hi)
      if x < lo then return lo elseif x > hi then return hi end
      return x
    end
    return function(n)
      local s = 0
      for i = 1, n do s = s + clamp(i % 100, 10, 90) end
      return s
    end ]], 1e8 },
  { "table scan, nested loops", [[
    local t = {}
    for i = 1, 100 do t[i] = i end
    return function(n)
      local s = 0
      for r = 1, n / 100 do for i = 1, #t do s = s + t[i] end end
      return s
    end ]], 1e8 },
  { "recursion (fib)", [[
    local function fib(k) if k < 2 then return k end return fib(k - 1) + fib(k - 2) end
    return fib ]], 32 },
  { "string building (string.format, table.concat)", [[
    local format, concat = string.format, table.concat
    return function(n)
      local parts = {}
      for i = 1, n do
        parts[#parts + 1] = format("%d=%s", i, "v")
        if #parts == 100 then parts = {} end
      end
      return #parts
    end ]], 5e6 },
}

local function best(fn, arg)
  fn(arg) -- warm up: compile
  local t = math.huge
  for _ = 1, ROUNDS do
    local t0 = os.clock()
    fn(arg)
    local dt = os.clock() - t0
    if dt < t then t = dt end
  end
  return t
end

-- Each workload and each variant runs in a process of its own: traces left by one
-- workload (the check's own side traces included) would colour the next one's figures.
local which, variant = tonumber(arg[1]), arg[2]
if which then
  if os.getenv("JIT") == "off" then jit.off() end
  local name, src, n = workloads[which][1], workloads[which][2], workloads[which][3]
  local fn
  if variant == "guarded" then
    fn = assert(guard.load(src, "=guarded"))()
  else
    fn = assert(loadstring(src, "=plain"))()
  end
  io.write(string.format("%.6f\n", best(fn, n)))
  return
end

local function run(i, v)
  local p = assert(io.popen(string.format("%s %s %d %s", arg[-1] or "luajit", arg[0], i, v)))
  local t = tonumber(p:read("*l"))
  p:close()
  return t
end

print(string.format("%-55s %10s %10s %7s", "workload", "plain s", "guarded s", "ratio"))
for i, w in ipairs(workloads) do
  local plain = assert(loadstring(w[2], "=plain"))()
  local guarded = assert(guard.load(w[2], "=guarded"))()
  assert(plain(10) == guarded(10))
  local tp, tg = run(i, "plain"), run(i, "guarded")
  print(string.format("%-55s %10.3f %10.3f %7.2f", w[1], tp, tg, tg / tp))
end
