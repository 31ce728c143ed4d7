-- The runaway guard's rewrite (lua/luaproxy/guard.lua): where the checks go, what is never
-- touched, that every kind of loop is stopped (also once compiled), that line numbers and
-- errors stay the user's, and that a guarded hot loop still compiles.
local guard = require "luaproxy.guard"
local ffi = require "ffi"

local NAME = guard.NAME

local CHECK = "__lp_n = __lp_n - 1; if __lp_n <= 0 then __lp_n = " .. NAME .. "() end;"

local function checks(src)
  local out = assert(guard.rewrite(src))
  local _, n = out:gsub(NAME .. "%(%)", "")
  return n, out
end

-- Loads src through the guard with a check that raises after `limit` checks ("stopped"),
-- and returns the function and a counter reader. (It returns a countdown of 1: called at
-- every check.)
local function counted(src, limit, name)
  local calls = 0
  local function chk()
    calls = calls + 1
    if calls >= limit then error("stopped", 2) end
    return 1
  end
  local fn = assert(guard.load(src, name or "=counted", nil, nil, chk))
  return fn, function() return calls end
end

local function lines(s)
  local _, n = s:gsub("\n", "")
  return n
end

describe("luaproxy.guard", function()
  describe("rewrite: where the checks go", function()
    it("puts one check at the start of every loop body", function()
      assert.equal(1, (checks("while x do y() end")))
      assert.equal(1, (checks("for i = 1, 10 do y() end")))
      assert.equal(1, (checks("for k, v in pairs(t) do y() end")))
      assert.equal(1, (checks("repeat y() until x")))
      local _, out = checks("while x do y() end")
      assert.equal("while x do " .. CHECK .. " y() end", out)
      _, out = checks("repeat y() until x")
      assert.equal("repeat " .. CHECK .. " y() until x", out)
    end)

    it("puts one at the start of every function body, named, local, anonymous or method", function()
      assert.equal(1, (checks("function a.b:c(x, y) return x end")))
      assert.equal(1, (checks("local function f(...) return ... end")))
      assert.equal(1, (checks("local f = function() end")))
      local _, out = checks("f(function(a) (g or h)(a) end)")
      -- user code after it starts a statement of its own, `(` included
      assert.equal("f(function(a) " .. CHECK .. " (g or h)(a) end)", out)
    end)

    it("puts one before every goto, and none at labels", function()
      local n, out = checks("::top:: x = x + 1 if x < 10 then goto top end")
      assert.equal(1, n)
      assert.equal("::top:: x = x + 1 if x < 10 then " .. CHECK .. " goto top end", out)
      assert.equal(1, (checks("goto --[[ a comment ]] done ::done::")))
    end)

    it("leaves `goto` used as a name alone (LuaJIT allows it)", function()
      assert.equal(0, (checks("local goto = 1 x = goto + 1 t.goto = goto")))
    end)

    it("leaves plain do blocks and if blocks alone", function()
      assert.equal(0, (checks("do local x = 1 end if a then b() elseif c then d() else e() end")))
    end)

    it("tells a loop's do from a do inside its header", function()
      local n, out = checks("while f(function() do end end) do y() end")
      assert.equal(2, n) -- the function's entry and the loop's body, not the inner do
      assert.equal("while f(function() " .. CHECK .. " do end end) do " .. CHECK
                   .. " y() end", out)
      assert.equal(3, (checks("for i = 1, 2 do for j = 1, 2 do while k do end end end")))
    end)

    it("never touches keywords inside strings, comments and long brackets", function()
      local src = table.concat({
        [[local a = "while x do end for function repeat goto l"]],
        [[local b = 'do \' while end function() \\' .. "\"for\""]],
        "local c = [[ while do ]] .. [==[ for do ]] end ]==]",
        "-- while true do end function f() end",
        "--[[ repeat until\nfunction() goto x ]]",
        "--[=[ ]] while do ]=] local d = 1",
        [[local e = "a\
while do"]],
        "local f = 0x1f + 1e-3 + 3.5e+2 + 0x1p-4 + 12ULL + .5",
        "local g = t[ [[x]] ] .. a..b",
      }, "\n")
      assert.equal(0, (checks(src)))
      assert.equal(src, (guard.rewrite(src)))
    end)

    it("keeps every line where it was", function()
      local src = "local function f()\n  for i = 1, 3 do\n    while false do end\n  end\n"
                  .. "  repeat\n  until true\n  return 1\nend\nreturn f\n"
      local n, out = checks(src)
      assert.equal(4, n)
      assert.equal(lines(src), lines(out))
      assert.equal(lines(src) + 1, lines(guard.wrap(src))) -- the wrapper's own last line
      -- a shebang line gives its place to the wrapper; a byte-order mark goes
      local fn = assert(guard.load("#!/usr/bin/env luajit\nerror('here')\n", "@s.lua"))
      assert.same({ false, "s.lua:2: here" }, { pcall(fn) })
      fn = assert(guard.load("\239\187\191\nerror('there')\n", "@b.lua"))
      assert.same({ false, "b.lua:2: there" }, { pcall(fn) })
    end)

    it("refuses what does not lex, so the caller shows Lua's own error", function()
      assert.is_nil(guard.rewrite("x = 'unfinished"))
      assert.is_nil(guard.rewrite("x = [[ unfinished"))
      assert.is_nil(guard.rewrite("while x do"))
      local fn, err = guard.load("local x = 1\nwhile x do\n", "@user.lua")
      assert.is_nil(fn)
      assert.matches("^user.lua:3: 'end' expected %(to close 'while' at line 2%)", err)
    end)
  end)

  describe("a runaway loop of every kind stops at a check", function()
    local cases = {
      ["while"] = "while true do end",
      ["repeat"] = "repeat local x = 1 until false",
      ["numeric for"] = "for i = 1, math.huge do end",
      ["generic for"] = "local function it() return 1 end for x in it do end",
      ["goto loop"] = "::again:: goto again",
      ["goto continue"] = "local i = 0 while true do i = i + 1 if i % 2 == 0 then goto continue end local y = i ::continue:: end",
      ["tail recursion"] = "local function f(n) return f(n + 1) end return f(1)",
      ["mutual recursion"] = "local g local function f(n) return g(n) end function g(n) return f(n + 1) end return f(1)",
      ["deep recursion"] = "local function fib(n) if n < 2 then return n end return fib(n - 1) + fib(n - 2) end return fib(60)",
      -- no call in sight: the recursion goes through a metamethod (why every function
      -- body gets a check, calls or not)
      ["recursion through a metamethod"] = "local mt = {} mt.__add = function(a, n) if n < 1 then return 0 end return (a + (n - 1)) + (a + (n - 2)) end return setmetatable({}, mt) + 60",
      ["loop in a nested closure"] = "local t = { run = function(self) while self do end end } t:run()",
      ["loop in a string.gsub callback"] = "string.gsub(string.rep('x', 100), '.', function() while true do end end)",
      ["loop in a table.sort comparator"] = "local t = {3, 1, 2} table.sort(t, function(a, b) while true do end end)",
    }
    for name, src in pairs(cases) do
      it(name .. " (after 20000 checks: compiled by then)", function()
        local fn, calls = counted(src, 20000)
        local ok, err = pcall(fn)
        assert.is_false(ok)
        assert.matches("stopped", err)
        assert.equal(20000, calls())
      end)
    end

    it("the error names the user's file and line", function()
      local fn = counted("local n = 0\n\nwhile true do\n  n = n + 1\nend\n", 10, "@plugins/spin.lua")
      local ok, err = pcall(fn)
      assert.is_false(ok)
      assert.equal("plugins/spin.lua:3: stopped", err)
    end)

    it("a pcall in user code cannot swallow it for good", function()
      local fn, calls = counted("while true do pcall(function() while true do end end) end", 100)
      assert.is_false(pcall(fn))
      assert.is_true(calls() >= 100)
    end)
  end)

  describe("the check", function()
    after_each(function()
      guard.test_flag[0] = 0
      guard.test_expired = function() return 1 end
    end)

    it("raises 'phase timed out' with the user's file:line once the flag is set", function()
      local fn = assert(guard.load("local n = 0\nwhile true do\n  n = n + 1\nend\n", "@spin.lua"))
      guard.test_flag[0] = 1
      local ok, err = pcall(fn)
      assert.is_false(ok)
      assert.equal("spin.lua:2: phase timed out (lua.phase_timeout 1.000s)", err)
    end)

    it("stops a compiled loop when the flag is set by code the trace does not see", function()
      -- memset stands in for the watchdog thread: a C call the loop's trace cannot look
      -- into. The loop runs compiled for 50000 iterations first.
      ffi.cdef "void *memset(void *s, int c, size_t n);"
      local flag = guard.test_flag
      local n = 0
      local env = setmetatable({ tick = function()
        n = n + 1
        if n == 50000 then ffi.C.memset(flag, 1, 1) end
      end }, { __index = _G })
      local fn = assert(guard.load("while true do tick() end", "=tick", "t", env))
      local ok, err = pcall(fn)
      assert.is_false(ok)
      assert.matches("phase timed out", err)
      assert.is_true(n >= 50000 and n <= 50000 + guard.BUDGET, "stopped after " .. n)
    end)

    it("goes on when the engine says the flag was for a phase that ended", function()
      guard.test_flag[0] = 1
      guard.test_expired = function() guard.test_flag[0] = 0 return 0 end
      local fn = assert(guard.load("local s = 0 for i = 1, 1000 do s = s + i end return s", "=x"))
      assert.equal(500500, fn())
    end)
  end)

  describe("loading", function()
    it("keeps the chunk's arguments, results and environment", function()
      local fn = assert(guard.load("local a, b = ...\nreturn a + b, x", "=args", "t", { x = 7 }))
      assert.same({ 5, 7 }, { fn(2, 3) })
    end)

    it("loads bytecode as it is", function()
      local bc = string.dump(loadstring("return 42"))
      assert.equal(42, assert(guard.load(bc, "=bc"))())
    end)

    it("every Lua file of the project still compiles, with the same lines", function()
      local p = io.popen("find lua plugins scripts spec tests -name '*.lua'")
      local n = 0
      for path in p:lines() do
        local f = assert(io.open(path, "rb"))
        local src = f:read("*a")
        f:close()
        if loadstring(src) then
          local w = assert(guard.wrap(src), path)
          assert(loadstring(w, "@" .. path))
          assert.equal(lines(src) + 1, lines(w), path)
          n = n + 1
        end
      end
      p:close()
      assert.is_true(n > 20)
    end)

    it("a guarded hot loop is JIT-compiled, check included", function()
      if not jit or not jit.status() then return pending("the JIT is off") end
      local traces = {}
      local function on_trace(what, tr, func)
        if what == "stop" then
          traces[#traces + 1] = require("jit.util").funcinfo(func).source
        end
      end
      jit.attach(on_trace, "trace")
      local fn = assert(guard.load([[
        local s = 0
        for i = 1, 100000 do s = s + i % 7 end
        return s
      ]], "@hot_plugin.lua"))
      local ok, res = pcall(fn)
      jit.attach(on_trace)
      assert.is_true(ok, res)
      local found = false
      for _, src in ipairs(traces) do
        if src == "@hot_plugin.lua" then found = true end
      end
      assert.is_true(found, "no trace of hot_plugin.lua: " .. table.concat(traces, ", "))
    end)
  end)
end)
