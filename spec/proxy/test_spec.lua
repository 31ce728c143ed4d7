local T = require "proxy.test"
local phases = require "luaproxy.phases"

describe("proxy.test", function()
  before_each(function() T.reset() end)

  describe("the fake proxy module", function()
    it("is installed as the global and as require 'proxy'", function()
      assert.equal(T.proxy, proxy)
      assert.equal(T.proxy, require "proxy")
      assert.equal(require "cjson", proxy.json)
      assert.equal(1, proxy.worker_id())
    end)

    it("records log lines with the level", function()
      proxy.log.warn("a", 1, nil, true)
      assert.same({ { level = "warn", message = "a 1 nil true" } }, T.logs)
      assert.same({ "a 1 nil true" }, T.log_lines("warn"))
      assert.same({}, T.log_lines("err"))
    end)

    it("sleeps on a fake clock without waiting", function()
      local t0 = proxy.now()
      local wall = os.time()
      proxy.sleep(3600)
      assert.equal(t0 + 3600, proxy.now())
      assert.is_true(os.time() - wall < 2)
      T.advance(1.5)
      assert.equal(t0 + 3601.5, T.now())
      assert.has_error(function() proxy.sleep(-1) end)
    end)

    it("changes an upstream's targets like one worker's set", function()
      T.upstream_targets("app", { "10.0.0.1:80", { address = "10.0.0.2:80", weight = 2 } })
      local u = proxy.upstream("app")
      assert.is_true(u:add_target("10.0.0.3:80", 3))
      assert.is_true(u:add_target("10.0.0.1:80", 5)) -- there already: its weight changes
      assert.is_true(u:set_weight("10.0.0.2:80", 4))
      assert.is_true(u:remove_target("10.0.0.3:80"))
      assert.same({ { address = "10.0.0.1:80", weight = 5, state = "up" },
                    { address = "10.0.0.2:80", weight = 4, state = "up" } }, u:targets())
      local ok, err = u:remove_target("10.0.0.9:80")
      assert.is_nil(ok)
      assert.equal("no target 10.0.0.9:80 in upstream app", err)
      ok, err = u:add_target("example.com:80")
      assert.is_nil(ok)
      assert.matches("expected an IP address", err)
      assert.has_error(function() u:add_target("10.0.0.4:80", 0) end)
      assert.has_error(function() u:set_weight("10.0.0.1:80") end)
      assert.has_error(function() proxy.upstream("nope") end)
    end)
  end)

  describe("the request handle", function()
    local req
    before_each(function()
      req = T.request {
        method = "POST",
        uri = "/a/b?x=1&y=a%20b&x=2&flag&p=a+b",
        headers = { Host = "Example.COM:8080", ["X-A"] = "1", Cookie = { "a=1", "b=2" } },
        client_ip = "10.0.0.1",
        body = "hello",
        upstreams = { "app", "v2" },
        upstream = "app",
      }
    end)

    it("reads the request", function()
      assert.equal("request", req:phase())
      assert.equal("POST", req:method())
      assert.equal("/a/b", req:path())
      assert.equal("/a/b?x=1&y=a%20b&x=2&flag&p=a+b", req:uri())
      assert.equal("1", req:query("x"))
      assert.equal("a b", req:query("y"))
      assert.equal("a b", req:query("p"))
      assert.equal("", req:query("flag"))
      assert.is_nil(req:query("nope"))
      assert.same({ x = { "1", "2" }, y = "a b", flag = "", p = "a b" }, req:args())
      assert.equal("1", req:header("x-a"))
      assert.equal("1", req:header("X-A"))
      assert.equal("a=1", req:header("cookie"))
      local h = req:headers()
      assert.same({ "a=1", "b=2" }, h.cookie)
      assert.equal("example.com:8080", h.host:lower())
      assert.equal("example.com", req:host())
      assert.equal("http", req:scheme())
      assert.equal("10.0.0.1", req:client_ip())
      assert.equal(1.1, req:http_version())
      assert.equal("app", req:upstream_name())
      assert.equal("hello", req:body(1024))
      local body, err = req:body(3)
      assert.is_nil(body)
      assert.equal("too large", err)
    end)

    it("answers variables", function()
      req.ctx.request_id = "rid"
      assert.equal("10.0.0.1", req:var("client_ip"))
      assert.equal("example.com", req:var("host"))
      assert.equal("POST", req:var("method"))
      assert.equal("/a/b", req:var("path"))
      assert.equal(req:uri(), req:var("uri"))
      assert.equal("http", req:var("scheme"))
      assert.equal("rid", req:var("request_id"))
      assert.equal("app", req:var("upstream"))
      assert.is_nil(req:var("status"))
      T.response(req, { status = 204 })
      assert.equal("204", req:var("status"))
      assert.is_nil(req:var("nope"))
    end)

    it("handles hosts without a port, IPv6 literals and no Host", function()
      assert.equal("a.b", T.request({ headers = { host = "A.B" } }):host())
      assert.equal("[::1]", T.request({ headers = { host = "[::1]:80" } }):host())
      assert.equal("", T.request():host())
    end)

    it("changes request headers", function()
      req:set_header("X-A", "2")
      req:add_header("X-A", "3")
      assert.same({ "2", "3" }, req:headers()["x-a"])
      req:set_header("x-a", { "4", "5" })
      assert.same({ "4", "5" }, req:headers()["x-a"])
      req:set_header("X-A", nil)
      assert.is_nil(req:header("X-A"))
      req:add_header("X-N", 5)
      assert.equal("5", req:header("x-n"))
      req:clear_header("X-N")
      assert.is_nil(req:header("x-n"))
    end)

    it("rejects bad header names and values", function()
      assert.has_error(function() req:set_header("Bad Name", "1") end)
      assert.has_error(function() req:set_header("", "1") end)
      assert.has_error(function() req:set_header("X", "a\r\nB: c") end)
      assert.has_error(function() req:add_header("X", true) end)
      assert.has_error(function() req:add_header("X", nil) end)
    end)

    it("replaces the whole target with set_path, like the engine", function()
      req:set_path("/other?z=9")
      assert.equal("/other", req:path())
      assert.equal("/other?z=9", req:uri())
      assert.equal("9", req:query("z"))
      assert.is_nil(req:query("x"))
      req:set_path("/new")
      assert.equal("/new", req:uri())
      assert.is_nil(req:query("z"))
      req:set_path("/bare?")
      assert.equal("/bare?", req:uri())
      assert.has_error(function() req:set_path("nope") end)
      assert.has_error(function() req:set_path("/a b") end)
      assert.has_error(function() req:set_path("/a\tb") end)
    end)

    it("chooses upstreams and targets", function()
      req:set_upstream("v2")
      assert.equal("v2", req:upstream_name())
      assert.error_matches(function() req:set_upstream("nope") end,
        'req:set_upstream(): no upstream named "nope"', 1, true)
      req:set_target("10.1.1.1", 8080)
      assert.equal("10.1.1.1:8080", req._target)
      req:set_target("::1", 81)
      assert.equal("[::1]:81", req._target)
      assert.has_error(function() req:set_target("10.1.1.1", 0) end)
      assert.error_matches(function() req:set_target("example.com", 80) end,
        "req:set_target(example.com, 80): expected an IP address and a port", 1, true)
      assert.has_error(function() req:set_target("300.1.1.1", 80) end)
      -- without an upstreams list every name is accepted
      local any = T.request()
      any:set_upstream("whatever")
      assert.equal("whatever", any:upstream_name())
    end)

    it("checks phases with the shared table, blaming the caller's line", function()
      T.response(req, { status = 200 })
      local ok, err = pcall(function() req:set_header("X", "1") end)
      assert.is_false(ok)
      assert.matches("test_spec.lua:%d+: req:set_header%(%) cannot be called in the response "
        .. "phase %(allowed: request, upstream%)", err)
      assert.has_error(function() req:body(10) end)
      req:set_phase("request")
      assert.error_matches(function() req:status() end,
        "req:status() cannot be called in the request phase (allowed: response, response_body, log)",
        1, true)
      assert.has_error(function() req:set_phase("nope") end)
    end)

    it("tells the upstream phase of a retry why the last try failed", function()
      local r = T.request({ phase = "upstream" })
      assert.is_nil(r:last_failure())
      r = T.request({ phase = "upstream", last_failure = { "status", 503, "10.0.0.1:80" } })
      local kind, status, addr = r:last_failure()
      assert.equal("status", kind)
      assert.equal(503, status)
      assert.equal("10.0.0.1:80", addr)
      r:set_phase("response") -- the cache plugin tells the proxy's own 502 by it
      assert.equal("status", (r:last_failure()))
      r:set_phase("request")
      assert.error_matches(function() r:last_failure() end,
        "req:last_failure() cannot be called in the request phase (allowed: upstream, response)",
        1, true)
    end)

    it("checks every method of the phase table in every phase", function()
      local args = {
        query = { "x" }, header = { "x" }, var = { "host" }, set_header = { "x", "1" },
        add_header = { "x", "1" }, clear_header = { "x" }, set_path = { "/" },
        set_upstream = { "app" }, set_target = { "10.0.0.1", 1 }, body = { 10 },
        set_status = { 200 }, resp_header = { "x" }, set_resp_header = { "x", "1" },
        add_resp_header = { "x", "1" }, clear_resp_header = { "x" }, set_hash_key = { "k" },
        set_max_body_size = { 1024 },
        param = { "id" },
        log_field = { "k", "v" },
        tee_body = { 1024 }, set_body = { "{}" }, set_query = { "a=1" },
        compress = { "gzip" }, header_list = { {}, {} },
        set_cache_key = { "k" }, cache_ttl = { 10 },
      }
      for name, allowed in pairs(phases.methods) do
        assert.is_function(req[name], name)
        if name ~= "respond" and name ~= "redirect" then
          for _, p in ipairs(phases.order) do
            req:set_phase(p)
            local ok, err = pcall(req[name], req, unpack(args[name] or {}))
            if allowed[p] then
              assert(ok, name .. " in " .. p .. ": " .. tostring(err))
            else
              assert(not ok and err:find("cannot be called in the " .. p .. " phase", 1, true),
                name .. " in " .. p)
            end
          end
        end
      end
    end)

    it("changes the response in the response phase", function()
      T.response(req, { status = 502, headers = { ["X-Up"] = "1" }, body = "up" })
      assert.equal("response", req:phase())
      assert.equal(502, req:status())
      assert.equal("502", req:var("status"))
      assert.equal("1", req:resp_header("x-up"))
      assert.equal("127.0.0.1:9000", req:upstream_addr())
      req:set_status(503)
      req:set_resp_header("X-Up", "2")
      req:add_resp_header("Set-Cookie", "a=1")
      req:add_resp_header("Set-Cookie", "b=2")
      assert.same({ ["x-up"] = "2", ["set-cookie"] = { "a=1", "b=2" } }, req:resp_headers())
      req:clear_resp_header("set-cookie")
      assert.is_nil(req:resp_header("Set-Cookie"))
      assert.equal(503, req:status())
      assert.has_error(function() req:set_status(99) end)
      req:set_status(999)
      assert.has_error(function() req:set_status(1000) end)
    end)

    it("gives the trailers of the request and response specs", function()
      local r = T.request({ trailers = { ["X-Client"] = "v" } })
      assert.equal("v", r:trailers()["x-client"])
      assert.error_matches(function() r:resp_trailers() end,
        "cannot be called in the request phase", 1, true)
      T.response(r, { trailers = { ["grpc-status"] = "0" } })
      r:set_phase("log")
      assert.same({ ["grpc-status"] = "0" }, r:resp_trailers())
      assert.same({}, T.request():set_phase("log"):resp_trailers())
    end)

    it("refuses respond() outside a phase runner", function()
      assert.error_matches(function() req:respond(200) end, "run the phase with proxy.test", 1, true)
    end)
  end)

  describe("T.call", function()
    it("accepts local answers from 200 to 999, like the engine", function()
      assert.has_error(function() T.call(function() T.request():respond(101) end) end)
      assert.is_true(T.call(function() T.request():respond(999) end))
    end)

    it("ends the function at respond(), like the engine", function()
      local req = T.request()
      local after = false
      local responded = T.call(function()
        req:respond(403, "no", { ["X-Why"] = "test" })
        after = true
      end)
      assert.is_true(responded)
      assert.is_false(after)
      assert.equal(403, req._status)
      assert.equal("no", req._resp_body)
    end)

    it("returns the function's value and resumes after sleep", function()
      local t0 = T.now()
      local responded, v = T.call(function(a)
        proxy.sleep(2)
        return a + 1
      end, 41)
      assert.is_false(responded)
      assert.equal(42, v)
      assert.equal(t0 + 2, T.now())
    end)

    it("fails a sleep where the engine cannot yield either", function()
      assert.has_error(function()
        T.call(function()
          table.sort({ 3, 2, 1 }, function(a, b) proxy.sleep(1) return a < b end)
        end)
      end)
    end)

    it("propagates errors unchanged", function()
      local e = {}
      local ok, err = pcall(T.call, function() error(e) end)
      assert.is_false(ok)
      assert.equal(e, err)
    end)
  end)

  describe("T.run", function()
    local plugin = {
      name = "demo",
      priority = 1000,
      schema = { fields = {
        deny = { type = "string", default = "/deny", description = "path answered with 403" },
        tag = { type = "string", default = "demo", description = "header value" },
      } },
    }
    local seen
    function plugin.init_worker(conf) seen = { "init_worker" } end
    function plugin.request(req, conf)
      seen[#seen + 1] = "request"
      req.ctx.demo = true
      if req:path() == conf.deny then
        req:respond(403, "denied", { ["Content-Type"] = "text/plain" })
        seen[#seen + 1] = "after respond"
      end
      req:set_header("X-Tag", conf.tag)
      req:set_upstream("v2")
    end
    function plugin.upstream(req, conf)
      seen[#seen + 1] = "upstream"
      req:set_target("10.0.0.9", 81)
    end
    function plugin.response(req, conf)
      seen[#seen + 1] = "response"
      req:set_resp_header("X-Status", tostring(req:status()))
    end
    function plugin.response_body(req, chunk, eof, conf)
      seen[#seen + 1] = "body"
      return chunk:upper()
    end
    function plugin.log(req, conf)
      seen[#seen + 1] = "log"
      proxy.log.info("done", req:status())
    end

    it("runs every phase in order and reports what the client and the upstream see", function()
      local res = T.run(plugin, { tag = "x" },
        { uri = "/a?q=1", headers = { Host = "h" }, upstreams = { "app", "v2" } },
        { status = 201, headers = { ["Content-Type"] = "text/plain" }, body = "abcdef", chunk_size = 4 })
      assert.same({ "init_worker", "request", "upstream", "response", "body", "body", "log" }, seen)
      assert.equal(201, res.status)
      assert.equal("ABCDEF", res.body)
      assert.equal("201", res.headers["X-Status"])
      assert.equal("text/plain", res.headers["content-type"])
      assert.equal("v2", res.upstream)
      assert.equal("10.0.0.9:81", res.target)
      assert.equal("/a", res.path)
      assert.equal("/a?q=1", res.uri)
      assert.equal("x", res.request_headers["X-Tag"])
      assert.equal("h", res.request_headers.host)
      assert.is_false(res.responded)
      assert.is_true(res.ctx.demo)
      assert.same({ { level = "info", message = "done 201", plugin = "demo" } }, res.logs)
    end)

    it("skips the upstream after a local answer but runs response and log", function()
      local res = T.run(plugin, nil, { uri = "/deny" })
      assert.same({ "init_worker", "request", "response", "body", "log" }, seen)
      assert.is_true(res.responded)
      assert.equal(403, res.status)
      assert.equal("DENIED", res.body)
      assert.equal("403", res.headers["x-status"])
      assert.equal("text/plain", res.headers["Content-Type"])
      assert.is_nil(res.upstream)
      assert.is_nil(res.request_headers["x-tag"])
    end)

    it("passes body chunks given as a list, with eof on the last", function()
      local got = {}
      local p = { name = "b", priority = 1, schema = { fields = {} } }
      function p.response_body(req, chunk, eof) got[#got + 1] = { chunk, eof } end
      local res = T.run(p, nil, nil, { body = { "a", "b", "c" } })
      assert.same({ { "a", false }, { "b", false }, { "c", true } }, got)
      assert.equal("abc", res.body)
    end)

    it("raises schema errors with the entry path", function()
      assert.error_matches(function() T.run(plugin, { tag = 1 }) end,
        "plugins[1](demo).tag: expected a string, got number", 1, true)
      assert.error_matches(function() T.run(plugin, { nope = 1 }) end,
        "plugins[1](demo).nope: unknown field", 1, true)
    end)

    it("runs a chain by priority, and a local answer stops later request phases", function()
      local order = {}
      local function mk(name, prio, respond)
        local p = { name = name, priority = prio, schema = { fields = {} } }
        function p.request(req)
          order[#order + 1] = name .. ".request"
          if respond then req:respond(401) end
        end
        function p.response(req) order[#order + 1] = name .. ".response" end
        return p
      end
      local res = T.run_chain({ { mk("low", 1) }, { mk("high", 10, true) }, { mk("mid", 5) } })
      assert.equal(401, res.status)
      assert.same({ "high.request", "high.response", "mid.response", "low.response" }, order)
    end)

    it("uses the plugin's compile() result as conf", function()
      local p = { name = "c", priority = 1, schema = { fields = {
        n = { type = "integer", default = 2, description = "n" } } } }
      function p.compile(conf) return { double = conf.n * 2 } end
      function p.request(req, conf) req.ctx.double = conf.double end
      assert.equal(6, T.run(p, { n = 3 }).ctx.double)
      function p.compile(conf) return nil, "n is odd" end
      assert.error_matches(function() T.run(p, {}) end, "plugins[1](c): n is odd", 1, true)
    end)
  end)
  describe("req:log_field", function()
    it("keeps fields with the engine's checks and limits", function()
      local req = T.request { max_log_fields = 3 }
      for _, phase in ipairs({ "request", "upstream", "response", "log" }) do
        req:set_phase(phase)
        assert.is_true(req:log_field("p_" .. phase:sub(1, 2), phase))
        req:log_field("p_" .. phase:sub(1, 2), nil)
      end
      assert.is_true(req:log_field("a", "x"))
      assert.is_true(req:log_field("n", 1.5))
      assert.is_true(req:log_field("b", false))
      assert.is_true(req:log_field("a", "replaced"))
      local ok, err = req:log_field("c", 1)
      assert.is_nil(ok)
      assert.truthy(err:find("too many", 1, true))
      assert.is_true(req:log_field("n", nil))
      assert.is_true(req:log_field("c", 1))
      assert.same({ a = "replaced", b = false, c = 1 }, req:log_fields())
      ok, err = req:log_field("d", string.rep("x", 3000))
      assert.is_nil(ok)
      assert.truthy(err:find("longer", 1, true))
      assert.error_matches(function() req:log_field("bad name", 1) end, "name must be", 1, true)
      assert.error_matches(function() req:log_field("t", {}) end, "got table", 1, true)
    end)
  end)
end)
