-- luaproxy.runtime: plugin loading, chain building and the phase runners, driven with
-- plugins written to a temporary directory and plain tables as request handles (the
-- runtime only reads h._chain and writes h._k / h._phase).
-- The recorder plugins below write the globals `calls` and `loads`.
-- luacheck: globals calls loads

local OK, FAILED = 0, 2

local function fresh_runtime()
  -- The runtime caches plugins by name per VM: every test gets its own, like a new VM.
  package.loaded["luaproxy.runtime"] = nil
  return require "luaproxy.runtime"
end

local function tmpdir()
  local p = assert(io.popen("mktemp -d"))
  local dir = p:read("*l")
  p:close()
  return dir
end

local function write(dir, name, src)
  local sub = name:match("^(.*)/[^/]*$")
  if sub then os.execute("mkdir -p '" .. dir .. "/" .. sub .. "'") end
  local f = assert(io.open(dir .. "/" .. name, "w"))
  f:write(src)
  f:close()
end

-- A plugin that appends "<tag>:<phase>" to the global `calls` list in each phase it names.
local function recorder(name, priority, phase_names, extra)
  local src = { ("local P = { name = %q, priority = %s }"):format(name, tostring(priority)) }
  for _, ph in ipairs(phase_names) do
    src[#src + 1] = ("function P.%s(h, conf) calls[#calls + 1] = (conf.tag or %q) .. ':%s' end")
      :format(ph, name, ph)
  end
  src[#src + 1] = "P.schema = { fields = { tag = { type = 'string', description = 'd' } } }"
  src[#src + 1] = extra or ""
  src[#src + 1] = "return P"
  return table.concat(src, "\n")
end

describe("luaproxy.runtime", function()
  local runtime, dir, opts

  before_each(function()
    runtime = fresh_runtime()
    dir = tmpdir()
    opts = { plugin_path = dir .. "/?.lua;" .. dir .. "/?/init.lua", script_path = dir .. "/?.lua" }
    _G.calls = {}
    _G.loads = 0
  end)

  after_each(function()
    os.execute("rm -rf '" .. dir .. "'")
    _G.calls, _G.loads = nil, nil
  end)

  local function handle(chain) return { _chain = chain, ctx = {} } end

  describe("load", function()
    it("finds plugins on the package path given, as name.lua or name/init.lua", function()
      write(dir, "one.lua", recorder("one", 10, { "request" }))
      write(dir, "two/init.lua", recorder("two", 5, { "request" }))
      local state = assert(runtime.load({ plugins = { { name = "one" }, { name = "two" } } }, opts))
      assert.equal(OK, runtime.run(handle(state.fallback), runtime.PHASE_ID.request))
      assert.same({ "one:request", "two:request" }, calls)
    end)

    it("leaves out of an entry's chains the phases its compiled conf skips", function()
      write(dir, "skipper.lua", recorder("skipper", 10, { "request", "response_body", "log" },
        "function P.compile(conf) conf.skip_phases = { response_body = conf.tag == 'a' }; "
          .. "return conf end"))
      local state = assert(runtime.load({
        routes = { { plugins = { { name = "skipper", tag = "a" } } },
                   { plugins = { { name = "skipper", tag = "b" } } } },
      }, opts))
      local a, b = state.routes[1], state.routes[2]
      assert.is_false(a.has_body_filter)
      assert.is_true(b.has_body_filter)
      assert.equal(OK, runtime.run(handle(a), runtime.PHASE_ID.request))
      assert.same({ "a:request" }, calls)
    end)

    it("loads a plugin file once per VM, however many entries name it", function()
      write(dir, "counted.lua", "loads = loads + 1\n" .. recorder("counted", 1, { "log" }))
      local state = assert(runtime.load({
        plugins = { { name = "counted", tag = "g" } },
        routes = { { plugins = { { name = "counted", tag = "r" } } } },
      }, opts))
      assert.equal(1, loads)
      assert.truthy(runtime.load({ plugins = { { name = "counted" } } }, opts))
      assert.equal(1, loads)
      -- Two entries of one plugin are two instances with their own conf.
      runtime.run(handle(state.routes[1]), runtime.PHASE_ID.log)
      assert.same({ "g:log", "r:log" }, calls)
    end)

    it("passes the plugin name to the plugin's main chunk", function()
      write(dir, "named.lua", "seen_name = ...\n" .. recorder("named", 1, { "request" }))
      assert.truthy(runtime.load({ plugins = { { name = "named" } } }, opts))
      assert.equal("named", _G.seen_name)
      _G.seen_name = nil
    end)

    it("reports a plugin it cannot find, with the path searched", function()
      local state, err = runtime.load({ plugins = { { name = "nope" } } }, opts)
      assert.is_nil(state)
      assert.equal(('plugins[1]: plugin "nope" not found in %s'):format(opts.plugin_path), err)
    end)

    it("refuses plugin names that are not plain module names", function()
      for _, name in ipairs({ "../etc/passwd", "a b", "", "x/y" }) do
        local state, err = runtime.load({ plugins = { { name = name } } }, opts)
        assert.is_nil(state)
        assert.equal(("plugins[1]: invalid plugin name %q"):format(name), err)
      end
    end)

    it("names the whole file path in syntax and load-time errors", function()
      write(dir, "broken.lua", "return {\n")
      local _, err = runtime.load({ plugins = { { name = "broken" } } }, opts)
      assert.truthy(err:find("plugins[1]: " .. dir .. "/broken.lua:", 1, true), err)

      write(dir, "raises.lua", "error('no config here')\n")
      _, err = runtime.load({ plugins = { { name = "raises" } } }, opts)
      assert.truthy(err:find(dir .. "/raises.lua:1: no config here", 1, true), err)
    end)

    it("puts the full path back when Lua shortened a long file name", function()
      local deep = dir .. "/" .. ("d"):rep(80)
      local o = { plugin_path = deep .. "/?.lua" }
      os.execute("mkdir -p '" .. deep .. "'")
      write(deep, "longpath.lua", "\n\nerror('boom')\n")
      local _, err = runtime.load({ plugins = { { name = "longpath" } } }, o)
      assert.truthy(err:find(deep .. "/longpath.lua:3: boom", 1, true), err)
    end)

    it("checks the plugin table and validates each entry against its schema", function()
      write(dir, "nopri.lua", "return { name = 'nopri' }")
      local _, err = runtime.load({ plugins = { { name = "nopri" } } }, opts)
      assert.equal("plugins[1](nopri): priority must be a number", err)

      write(dir, "typed.lua", recorder("typed", 1, { "request" }))
      _, err = runtime.load({ routes = { { plugins = { { name = "typed", tag = 5 } } } } }, opts)
      assert.equal("routes[1].plugins[1](typed).tag: expected a string, got number", err)

      _, err = runtime.load({ plugins = { { name = "typed", fail_open = "yes" } } }, opts)
      assert.equal("plugins[1](typed).fail_open: expected a boolean, got string", err)
    end)

    it("rejects malformed plugin lists with the path of the problem", function()
      write(dir, "p.lua", recorder("p", 1, { "request" }))
      local cases = {
        { { plugins = "p" }, "plugins: expected a list of plugin entries" },
        { { plugins = { "p" } }, "plugins[1]: expected { name = ..., ... }" },
        { { plugins = { { tag = "x" } } }, "plugins[1].name: required (a plugin name)" },
        { { plugins = { [1] = { name = "p" }, [3] = { name = "p" } } },
          "plugins: expected a list without holes" },
        { { routes = { {}, { plugins = { {} } } } }, "routes[2].plugins[1].name: required (a plugin name)" },
      }
      for _, c in ipairs(cases) do
        local state, err = runtime.load(c[1], opts)
        assert.is_nil(state)
        assert.equal(c[2], err)
      end
    end)

    it("uses what compile returns as the conf, keeping the entry's fail_open", function()
      write(dir, "comp.lua", [[
        local P = { name = "comp", priority = 1,
          schema = { fields = { n = { type = "integer", default = 2, description = "d" } } } }
        function P.compile(conf) return { doubled = conf.n * 2 } end
        function P.request(h, conf) calls[#calls + 1] = conf end
        return P]])
      local state = assert(runtime.load({ plugins = { { name = "comp", n = 21, fail_open = true } } }, opts))
      runtime.run(handle(state.fallback), runtime.PHASE_ID.request)
      assert.same({ doubled = 42, fail_open = true }, calls[1])
    end)

    it("reports compile failures and a compile that returns nothing", function()
      write(dir, "cfail.lua", [[
        local P = { name = "cfail", priority = 1 }
        function P.compile(conf) return nil, "bad pattern" end
        return P]])
      write(dir, "cnone.lua", [[
        local P = { name = "cnone", priority = 1 }
        function P.compile(conf) end
        return P]])
      write(dir, "craise.lua", [[
        local P = { name = "craise", priority = 1 }
        function P.compile(conf) error("kaboom") end
        return P]])
      local _, err = runtime.load({ plugins = { { name = "cfail" } } }, opts)
      assert.equal("plugins[1](cfail): bad pattern", err)
      _, err = runtime.load({ plugins = { { name = "cnone" } } }, opts)
      assert.equal("plugins[1](cnone): compile returned nothing", err)
      _, err = runtime.load({ plugins = { { name = "craise" } } }, opts)
      assert.truthy(err:find("^plugins%[1%]%(craise%): .*craise.lua:2: kaboom"), err)
    end)

    it("loads route handlers: functions, and script modules by name", function()
      write(dir, "hmod.lua", "return { handler = function(h) calls[#calls + 1] = 'hmod' end }")
      write(dir, "hfun.lua", "return function(h) calls[#calls + 1] = 'hfun' end")
      local state = assert(runtime.load({ routes = {
        { handler = function(h) calls[#calls + 1] = "inline" end },
        { handler = "hmod" },
        { handler = "hfun" },
      } }, opts))
      for i = 1, 3 do runtime.run(handle(state.routes[i]), runtime.PHASE_ID.request) end
      assert.same({ "inline", "hmod", "hfun" }, calls)
    end)

    it("reports handlers it cannot use", function()
      write(dir, "hbad.lua", "return { something = 1 }")
      local _, err = runtime.load({ routes = { { handler = "missing" } } }, opts)
      assert.equal(('routes[1].handler: script "missing" not found in %s'):format(opts.script_path), err)
      _, err = runtime.load({ routes = { { handler = "hbad" } } }, opts)
      assert.equal("routes[1].handler: expected a function or a script module name", err)
      _, err = runtime.load({ routes = { { handler = 42 } } }, opts)
      assert.equal("routes[1].handler: expected a function or a script module name", err)
    end)
  end)

  describe("chains", function()
    it("order plugins by priority, higher first; ties keep global, then route order", function()
      write(dir, "hi.lua", recorder("hi", 100, { "request" }))
      write(dir, "mid.lua", recorder("mid", 50, { "request" }))
      write(dir, "lo.lua", recorder("lo", 1, { "request" }))
      local state = assert(runtime.load({
        plugins = { { name = "lo" }, { name = "mid", tag = "g-mid" } },
        routes = { {
          plugins = { { name = "mid", tag = "r-mid" }, { name = "hi" } },
          handler = function() calls[#calls + 1] = "handler" end,
        } },
      }, opts))
      runtime.run(handle(state.routes[1]), runtime.PHASE_ID.request)
      assert.same({ "hi:request", "g-mid:request", "r-mid:request", "lo:request", "handler" }, calls)
    end)

    it("give each route the global plugins plus its own; unrouted requests the global ones", function()
      write(dir, "g.lua", recorder("g", 10, { "request", "log" }))
      write(dir, "r.lua", recorder("r", 20, { "request" }))
      local state = assert(runtime.load({
        plugins = { { name = "g" } },
        routes = { { plugins = { { name = "r" } } }, {} },
      }, opts))
      runtime.run(handle(state.routes[1]), runtime.PHASE_ID.request)
      assert.same({ "r:request", "g:request" }, calls)
      _G.calls = {}
      runtime.run(handle(state.routes[2]), runtime.PHASE_ID.request)
      runtime.run(handle(state.fallback), runtime.PHASE_ID.request)
      assert.same({ "g:request", "g:request" }, calls)
      -- Phases no plugin defines have no list; running them is a no-op.
      assert.is_nil(state.routes[1][runtime.PHASE_ID.upstream])
      assert.equal(OK, runtime.run(handle(state.routes[1]), runtime.PHASE_ID.upstream))
      assert.is_true(state.routes[1].any)
      assert.is_false(state.routes[1].has_body_filter)
    end)

    it("mark a chain without plugins as empty", function()
      local state = assert(runtime.load({ routes = { {} } }, opts))
      assert.is_false(state.routes[1].any)
      assert.is_false(state.fallback.any)
      assert.equal(OK, runtime.run(handle(state.fallback), runtime.PHASE_ID.request))
    end)

    it("run 1..N plugins in order through straight-line code, one runner per length", function()
      for n = 1, 12 do
        local rt = fresh_runtime()
        local list = {}
        for k = 1, n do
          local name = ("p%d_%d"):format(n, k)
          write(dir, name .. ".lua", recorder(name, 100 - k, { "response" }))
          list[k] = { name = name }
        end
        local state = assert(rt.load({ plugins = list }, opts))
        local chain = state.fallback[rt.PHASE_ID.response]
        assert.equal(n, #chain)
        _G.calls = {}
        local h = handle(state.fallback)
        assert.equal(OK, rt.run(h, rt.PHASE_ID.response))
        local want = {}
        for k = 1, n do want[k] = ("p%d_%d:response"):format(n, k) end
        assert.same(want, calls)
        assert.equal(n, h._k)
        assert.equal("response", h._phase)
        assert.is_nil(rt.current)
      end
    end)

    it("share one runner between chains of the same length", function()
      write(dir, "a.lua", recorder("a", 2, { "request", "log" }))
      write(dir, "b.lua", recorder("b", 1, { "request", "upstream" }))
      local state = assert(runtime.load({ plugins = { { name = "a" }, { name = "b" } } }, opts))
      local c = state.fallback
      assert.equal(c[runtime.PHASE_ID.log].run, c[runtime.PHASE_ID.upstream].run)
      assert.are_not.equal(c[runtime.PHASE_ID.log].run, c[runtime.PHASE_ID.request].run)
    end)

    it("set runtime.current to the running plugin for proxy.log", function()
      write(dir, "who.lua", [[
        local rt = require "luaproxy.runtime"
        return { name = "who", priority = 1,
          request = function(h, conf) calls[#calls + 1] = rt.current.name .. "/" .. rt.current_phase end }]])
      local state = assert(runtime.load({ plugins = { { name = "who" } } }, opts))
      runtime.run(handle(state.fallback), runtime.PHASE_ID.request)
      assert.same({ "who/request" }, calls)
      assert.is_nil(runtime.current)
    end)
  end)

  describe("failures", function()
    local logged
    before_each(function()
      logged = {}
      runtime.set_failure_logger(function(inst, phase, err, h)
        logged[#logged + 1] = { name = inst.conf.tag or inst.name, phase = phase, err = tostring(err), h = h }
      end)
    end)

    local function load_chain(spec)
      -- spec: list of { tag, raises, fail_open }; all instances of plugin "step".
      write(dir, "step.lua", [[
        local P = { name = "step", priority = 1, schema = { fields = {
          tag = { type = "string", description = "d" },
          raises = { type = "boolean", default = false, description = "d" } } } }
        function P.request(h, conf)
          calls[#calls + 1] = conf.tag
          if conf.raises then error("step " .. conf.tag .. " failed") end
        end
        return P]])
      local list = {}
      for i, s in ipairs(spec) do list[i] = { name = "step", tag = s[1], raises = s[2], fail_open = s[3] } end
      return assert(runtime.load({ plugins = list }, opts)).fallback
    end

    it("stop the chain and report FAILED when a plugin raises", function()
      local chain = load_chain({ { "a" }, { "b", true }, { "c" } })
      local h = handle(chain)
      assert.equal(FAILED, runtime.run(h, runtime.PHASE_ID.request))
      assert.same({ "a", "b" }, calls)
      assert.equal(1, #logged)
      assert.equal("b", logged[1].name)
      assert.equal("request", logged[1].phase)
      assert.equal(h, logged[1].h)
      assert.truthy(logged[1].err:find("step b failed", 1, true))
      assert.is_nil(runtime.current)
    end)

    it("go on with the next plugin after a fail_open failure", function()
      local chain = load_chain({ { "a" }, { "b", true, true }, { "c" }, { "d" } })
      assert.equal(OK, runtime.run(handle(chain), runtime.PHASE_ID.request))
      assert.same({ "a", "b", "c", "d" }, calls)
      assert.equal(1, #logged)
      assert.equal("b", logged[1].name)
    end)

    it("recover from several fail_open failures in one chain, including the first and last", function()
      local chain = load_chain({ { "a", true, true }, { "b", true, true }, { "c" }, { "d", true, true } })
      assert.equal(OK, runtime.run(handle(chain), runtime.PHASE_ID.request))
      assert.same({ "a", "b", "c", "d" }, calls)
      assert.same({ "a", "b", "d" }, { logged[1].name, logged[2].name, logged[3].name })
    end)

    it("fail after a fail_open recovery when a later plugin is not fail_open", function()
      local chain = load_chain({ { "a", true, true }, { "b" }, { "c", true }, { "d" } })
      assert.equal(FAILED, runtime.run(handle(chain), runtime.PHASE_ID.request))
      assert.same({ "a", "b", "c" }, calls)
      assert.same({ "a", "c" }, { logged[1].name, logged[2].name })
    end)

    it("recover without a logger set", function()
      runtime.set_failure_logger(nil)
      local chain = load_chain({ { "a", true, true }, { "b" } })
      assert.equal(OK, runtime.run(handle(chain), runtime.PHASE_ID.request))
      assert.same({ "a", "b" }, calls)
    end)

    it("let a yield pass through the chain to the caller's resume (respond, sleep)", function()
      write(dir, "waits.lua", [[
        return { name = "waits", priority = 2, request = function(h, conf)
          calls[#calls + 1] = "before"; coroutine.yield("parked"); calls[#calls + 1] = "after" end }]])
      write(dir, "next.lua", recorder("next", 1, { "request" }))
      local state = assert(runtime.load({ plugins = { { name = "waits" }, { name = "next" } } }, opts))
      local co = coroutine.create(runtime.run)
      local ok, v = coroutine.resume(co, handle(state.fallback), runtime.PHASE_ID.request)
      assert.is_true(ok)
      assert.equal("parked", v)
      assert.same({ "before" }, calls)
      ok, v = coroutine.resume(co)
      assert.is_true(ok)
      assert.equal(OK, v)
      assert.same({ "before", "after", "next:request" }, calls)
    end)
  end)

  describe("body", function()
    local logged
    before_each(function()
      logged = {}
      runtime.set_failure_logger(function(inst, phase, err)
        logged[#logged + 1] = { name = inst.conf.tag, phase = phase, err = tostring(err) }
      end)
      write(dir, "filter.lua", [[
        local P = { name = "filter", priority = 1, schema = { fields = {
          tag = { type = "string", description = "d" },
          mode = { type = "string", default = "wrap", description = "d" } } } }
        function P.response_body(h, chunk, eof, conf)
          calls[#calls + 1] = { conf.tag, chunk, eof }
          if conf.mode == "wrap" then return conf.tag .. "(" .. chunk .. ")" end
          if conf.mode == "keep" then return nil end
          if conf.mode == "number" then return #chunk end
          if conf.mode == "raise" then error("filter " .. conf.tag .. " failed") end
          if conf.mode == "yield" then coroutine.yield() end
        end
        return P]])
    end)

    -- runtime.body leaves its output in h._body_out and returns 0 (or 2: a filter failed).
    local function body(h, chunk, eof)
      local rc = runtime.body(h, chunk, eof)
      if rc ~= 0 then return nil end
      return h._body_out
    end

    local function chain(list)
      local entries = {}
      for i, e in ipairs(list) do
        entries[i] = { name = "filter", tag = e[1], mode = e[2], fail_open = e[3] }
      end
      local state = assert(runtime.load({ plugins = entries }, opts))
      assert.is_true(state.fallback.has_body_filter)
      return handle(state.fallback)
    end

    it("passes each filter's output to the next", function()
      local h = chain({ { "a" }, { "b" }, { "c" } })
      assert.equal("c(b(a(x)))", body(h, "x", false))
      assert.same({ { "a", "x", false }, { "b", "a(x)", false }, { "c", "b(a(x))", false } }, calls)
      assert.equal("response_body", h._phase)
    end)

    it("keeps the chunk when a filter returns nil and makes other values strings", function()
      local h = chain({ { "a", "keep" }, { "b", "number" }, { "c" } })
      assert.equal("c(5)", body(h, "hello", true))
      assert.same({ "b", "hello", true }, calls[2])
    end)

    it("returns an empty string for a nil chunk nobody replaced", function()
      local h = chain({ { "a", "keep" } })
      assert.equal("", body(h, nil, true))
    end)

    it("skips a failed fail_open filter, passing its input on", function()
      local h = chain({ { "a" }, { "b", "raise", true }, { "c" } })
      assert.equal("c(a(x))", body(h, "x", false))
      assert.equal(1, #logged)
      assert.equal("b", logged[1].name)
      assert.equal("response_body", logged[1].phase)
      assert.truthy(logged[1].err:find("filter b failed", 1, true))
    end)

    it("returns nil when a filter that is not fail_open fails, running no later one", function()
      local h = chain({ { "a" }, { "b", "raise" }, { "c" } })
      assert.is_nil(body(h, "x", false))
      assert.equal(2, #calls)
      assert.is_nil(runtime.current)
    end)

    it("lets a filter yield: the chain goes on when it is resumed", function()
      local h = chain({ { "a", "yield" }, { "b" } })
      local co = coroutine.create(function() return runtime.body(h, "x", true) end)
      local ok, rc = coroutine.resume(co)
      assert.is_true(ok)
      assert.is_nil(rc) -- yielded
      assert.equal("suspended", coroutine.status(co))
      ok, rc = coroutine.resume(co)
      assert.is_true(ok)
      assert.equal(0, rc)
      assert.equal("b(x)", h._body_out) -- a yielded, then kept the chunk
      assert.equal(0, #logged)
    end)
  end)

  describe("init_worker", function()
    it("calls each instance's init_worker once with its conf", function()
      write(dir, "iw.lua", [[
        local P = { name = "iw", priority = 1,
          schema = { fields = { tag = { type = "string", description = "d" } } } }
        function P.init_worker(conf) calls[#calls + 1] = conf.tag end
        function P.request() end
        return P]])
      local state = assert(runtime.load({
        plugins = { { name = "iw", tag = "g" } },
        routes = { { plugins = { { name = "iw", tag = "r1" } } }, { plugins = { { name = "iw", tag = "r2" } } } },
      }, opts))
      assert.is_true(runtime.init_worker(state))
      -- The global instance is in every route's chain but initialised once.
      assert.same({ "g", "r1", "r2" }, calls)
      assert.equal(0, runtime.init_worker_task(state))
    end)

    it("reports the failing plugin's place, and init_worker_task raises it", function()
      write(dir, "iwbad.lua", [[
        return { name = "iwbad", priority = 1, init_worker = function(conf) error("no redis") end }]])
      write(dir, "iwok.lua", [[
        return { name = "iwok", priority = 1, init_worker = function(conf) calls[#calls + 1] = "ok" end }]])
      local state = assert(runtime.load({ plugins = { { name = "iwok" } },
        routes = { { plugins = { { name = "iwbad" } } } } }, opts))
      local ok, err = runtime.init_worker(state)
      assert.is_nil(ok)
      assert.truthy(err:find("^routes%[1%]%.plugins%[1%]%(iwbad%): init_worker failed: .*iwbad.lua:1: no redis"), err)
      assert.same({ "ok" }, calls)
      local rok, rerr = pcall(runtime.init_worker_task, state)
      assert.is_false(rok)
      -- Raised at level 0: the same message, no position prefixed (the tracebacks differ).
      assert.equal(err:match("^[^\n]*"), rerr:match("^[^\n]*"))
    end)
  end)
end)
