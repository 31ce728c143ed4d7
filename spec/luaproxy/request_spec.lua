-- luaproxy.request, the engine's request handle, with the engine faked.
--
-- What is real here: request.lua itself, the real LuaJIT FFI types it allocates
-- (lp_str_t out-parameters, ffi.string, casts), luaproxy.ffi's constants, luaproxy.phases
-- and luaproxy.runtime. What is fake: the `C` namespace. request.lua is loaded with an
-- `ffi` whose `C` is a table of Lua functions over one in-memory request (`E` below) that
-- records every call. The stub only stores and returns values; every assertion is about
-- what request.lua does with them: argument checks, phase checks, error messages, query
-- parsing, header lists, the calls (and their order) it makes for set/add/clear/respond,
-- the yield protocol of body() and respond(), var()'s single values, tls(), last_failure()
-- and the failure log line. The engine side of these calls (engine/lua_api.c) is covered
-- by tests/integration/test_lua_api.py, not here.
local real_ffi = require "ffi"
local phases = require "luaproxy.phases"

local E        -- the fake engine's request
local anchors  -- strings handed out as const char *: kept alive until the next test

local function out_str(out, s)
  anchors[#anchors + 1] = s
  out[0].base = real_ffi.cast("const char *", s)
  out[0].len = #s
end

local function record(...) E.calls[#E.calls + 1] = { ... } end

local K -- luaproxy.ffi, loaded below

local function req_field(what)
  local names = { [K.METHOD] = "method", [K.PATH] = "path", [K.URI] = "uri", [K.QUERY] = "query",
    [K.HOST] = "host", [K.SCHEME] = "scheme", [K.CLIENT_IP] = "client_ip",
    [K.UPSTREAM_NAME] = "upstream_name", [K.UPSTREAM_ADDR] = "upstream_addr",
    [K.VERSION] = "version" }
  return E[names[what]]
end

local function str(p, n) return p ~= nil and real_ffi.string(p, n) or nil end

local C = {
  lp_ffi_req_get = function(_, what, out)
    local v = req_field(what)
    if v == nil then return -1 end
    out_str(out, v)
    return 0
  end,
  lp_ffi_tls_get = function(_, what, out)
    local v = E.tls and E.tls[what]
    if v == nil then return -1 end
    out_str(out, v)
    return 0
  end,
  lp_ffi_header_get = function(_, resp, name, nlen, nth, out)
    local list = resp == 1 and E.resp_headers or E.req_headers
    local want = str(name, nlen):lower()
    for _, hd in ipairs(list) do
      if hd[1]:lower() == want then out_str(out, hd[2]) return 1 end
    end
    return 0
  end,
  lp_ffi_trailers = function(_, resp, out)
    out_str(out, (resp == 1 and E.resp_trailers or E.req_trailers) or "")
    return 0
  end,
  lp_ffi_header_count = function(_, resp) return #(resp == 1 and E.resp_headers or E.req_headers) end,
  lp_ffi_header_at = function(_, resp, i, name, value)
    local hd = (resp == 1 and E.resp_headers or E.req_headers)[i + 1]
    if not hd then return -1 end
    out_str(name, hd[1])
    out_str(value, hd[2])
    return 0
  end,
  lp_ffi_header_set = function(_, resp, mode, name, nlen, value, vlen)
    record("header_set", resp, mode, str(name, nlen), str(value, vlen))
    return E.header_rc or 0
  end,
  lp_ffi_set_path = function(_, p, n) record("set_path", str(p, n)) return E.rc or 0 end,
  lp_ffi_set_upstream = function(_, p, n) record("set_upstream", str(p, n)) return E.rc or 0 end,
  lp_ffi_set_target = function(_, p, n, port) record("set_target", str(p, n), port) return E.rc or 0 end,
  lp_ffi_set_hash_key = function(_, p, n) record("set_hash_key", str(p, n)) return E.rc or 0 end,
  lp_ffi_status = function() return E.status end,
  lp_ffi_set_status = function(_, s) record("set_status", s) return E.rc or 0 end,
  lp_ffi_respond_begin = function() record("respond_begin") return 0 end,
  lp_ffi_respond = function(_, status, body, len) record("respond", status, str(body, len)) return E.rc or 0 end,
  lp_ffi_body_read = function(_, max, out)
    record("body_read", max)
    local rc = table.remove(E.body_rcs, 1)
    if rc == 0 then out_str(out, E.body) end
    return rc
  end,
  lp_ffi_log = function(level, msg, len) record("log", level, str(msg, len)) end,
  lp_ffi_start_time = function() return E.start_time end,
  lp_ffi_trace_ids = function(_, out)
    local t = E.trace
    if not t then return -1 end
    real_ffi.copy(out, t.trace_id .. t.span_id .. (t.parent_span_id or ("0"):rep(16)), 64)
    return (t.sampled and 1 or 0) + (t.parent_span_id and 2 or 0)
  end,
  lp_ffi_last_failure = function(_, addr, status)
    if not E.failure then return 0 end
    out_str(addr, E.failure.addr)
    status[0] = E.failure.status
    return E.failure.kind
  end,
}

-- Loads request.lua (and luaproxy.ffi, when no other spec in this process has) against `C`.
local function load_request()
  local fake_ffi = setmetatable({ C = C }, { __index = real_ffi })
  if pcall(real_ffi.typeof, "lp_str_t") then
    fake_ffi.cdef = function() end -- already declared by an earlier load in this process
  end
  local saved = package.loaded.ffi
  package.loaded.ffi = fake_ffi
  package.loaded["luaproxy.ffi"] = nil
  package.loaded["luaproxy.request"] = nil
  package.loaded.proxy = package.loaded.proxy or {} -- bind() sets proxy.config
  local ok, mod = pcall(require, "luaproxy.request")
  package.loaded.ffi = saved
  assert(ok, mod)
  K = require "luaproxy.ffi"
  return mod
end

describe("luaproxy.request (with the engine's C functions faked)", function()
  local R, runtime, new

  setup(function()
    R = load_request()
    runtime = require "luaproxy.runtime"
  end)

  before_each(function()
    anchors = {}
    E = {
      calls = {},
      method = "GET", path = "/items", uri = "/items?a=1", query = "a=1", host = "Example.COM",
      scheme = "https", client_ip = "192.0.2.1", version = "1.1", upstream_name = "app",
      upstream_addr = "10.0.0.5:8080",
      req_headers = { { "Host", "Example.COM" } }, resp_headers = {},
      status = 0, body_rcs = {}, start_time = 1700000000.25,
    }
    local state = { routes = { { "route chain" } }, fallback = { "fallback chain" } }
    R.bind(state, { some = "config" })
    new = R.new
  end)

  local function handle(phase)
    local h = new(real_ffi.cast("void *", 1), 1)
    h._phase = phase or "request"
    return h
  end

  local function calls_of(kind)
    local out = {}
    for _, c in ipairs(E.calls) do
      if c[1] == kind then out[#out + 1] = { unpack(c, 2) } end
    end
    return out
  end

  describe("bind and new", function()
    it("gives the engine its entry points: enter makes the handle, run and body find it", function()
      local cfg = { workers = 2 }
      local seen = {}
      local chain = { [1] = { run = function(h, _, phase) seen[#seen + 1] = { h, phase } end },
                      [4] = { { response_body = function(_, chunk) return chunk .. "!" end } } }
      local enter, run, body, handles = R.bind({ routes = { chain }, fallback = {} }, cfg)
      assert.equal(cfg, package.loaded.proxy.config) -- proxy.config is the worker's config
      local co = coroutine.running()
      assert.equal(0, enter(real_ffi.cast("void *", 1), 1, 7, run, 1, co))
      local h = handles[7]
      assert.equal("table", type(h))
      assert.equal(chain, h._chain)
      assert.same({ { h, "request" } }, seen)
      assert.equal(co, runtime.task_co)
      assert.equal(0, run(7, 2)) -- no upstream phase in the chain
      assert.equal(0, body(7, "x", true))
      assert.equal("x!", h._body_out)
      -- A filter may come first: enter makes the handle then.
      assert.equal(0, enter(real_ffi.cast("void *", 1), 1, 8, body, "y", false))
      assert.equal("y!", handles[8]._body_out)
      assert.are_not.equal(h, handles[8])
    end)

    it("makes handles in the request phase with their route's chain, or the fallback", function()
      local h = new(real_ffi.cast("void *", 1), 1)
      assert.same({ "route chain" }, h._chain)
      assert.equal("request", h:phase())
      assert.same({}, h.ctx)
      assert.same({ "fallback chain" }, new(real_ffi.cast("void *", 1), 0)._chain)
      assert.are_not.equal(h.ctx, new(real_ffi.cast("void *", 1), 1).ctx)
    end)

    it("has a method for every name phases.methods lists, and checks each one's phases", function()
      for name, allowed in pairs(phases.methods) do
        assert.equal("function", type(R.methods[name]), name)
        for _, phase in ipairs(phases.order) do
          if not allowed[phase] then
            local h = handle(phase)
            assert.error_matches(function() R.methods[name](h, "x", "y") end,
              ("req:%s() cannot be called in the %s phase"):format(name, phase), 1, true)
          end
        end
      end
    end)

    it("refuses every call once the request ended", function()
      for name in pairs(phases.methods) do
        local h = handle(phases.ENDED_PHASE)
        assert.error_matches(function() R.methods[name](h, "x") end, phases.ENDED, 1, true)
      end
    end)
  end)

  describe("the request", function()
    it("reads the request's facts as strings, host lower-cased, version a number", function()
      local h = handle()
      assert.equal("GET", h:method())
      assert.equal("/items", h:path())
      assert.equal("/items?a=1", h:uri())
      assert.equal("example.com", h:host())
      assert.equal("https", h:scheme())
      assert.equal("192.0.2.1", h:client_ip())
      assert.equal(1.1, h:http_version())
      assert.equal("app", h:upstream_name())
      assert.equal(1700000000.25, h:start_time())
    end)

    it("gives an empty host and nil for facts the engine does not have", function()
      E.host, E.upstream_name = nil, nil
      local h = handle()
      assert.equal("", h:host())
      assert.is_nil(h:upstream_name())
    end)

    it("parses the query: repeats become lists, + and %XX decoded, bare keys empty", function()
      E.query = "a=1&b=x+y&a=2&c&&d=%41%2b%zz&a=3&e=&=v"
      local args = handle():args()
      assert.same({ a = { "1", "2", "3" }, b = "x y", c = "", d = "A+%zz", e = "", [""] = "v" }, args)
      local h = handle()
      assert.equal("1", h:query("a")) -- the first of a repeated argument
      assert.equal("x y", h:query("b"))
      assert.is_nil(h:query("zz"))
      assert.error_matches(function() h:query(1) end, "req:query(): expected an argument name", 1, true)
    end)

    it("gives no arguments when there is no query", function()
      E.query = nil
      assert.same({}, handle():args())
      assert.is_nil(handle():query("a"))
    end)

    it("looks headers up by name and lists them with lower-case names, repeats as lists", function()
      E.req_headers = { { "Host", "h" }, { "X-A", "1" }, { "x-a", "2" }, { "X-B", "b" }, { "X-A", "3" } }
      local h = handle()
      assert.equal("1", h:header("x-A"))
      assert.is_nil(h:header("X-None"))
      assert.same({ host = "h", ["x-a"] = { "1", "2", "3" }, ["x-b"] = "b" }, h:headers())
      local names, values = {}, {}
      assert.equal(5, h:header_list(names, values))
      assert.same({ "host", "x-a", "x-a", "x-b", "x-a" }, names)
      assert.same({ "h", "1", "2", "b", "3" }, values)
      assert.error_matches(function() h:header(nil) end, "expected a header name", 1, true)
    end)

    it("sets, adds and clears request headers with the engine's modes", function()
      local h = handle()
      h:set_header("X-One", "1")
      h:set_header("X-Num", 42)
      h:add_header("X-Add", "a")
      h:clear_header("X-Gone")
      h:set_header("X-Nil", nil)
      assert.same({
        { 0, K.HSET, "X-One", "1" }, { 0, K.HSET, "X-Num", "42" }, { 0, K.HADD, "X-Add", "a" },
        { 0, K.HCLEAR, "X-Gone", nil }, { 0, K.HCLEAR, "X-Nil", nil },
      }, calls_of("header_set"))
    end)

    it("sets a list of values as a clear then one add each; adds a list as adds", function()
      local h = handle()
      h:set_header("X-L", { "a", 2 })
      h:add_header("X-M", { "c" })
      assert.same({
        { 0, K.HCLEAR, "X-L", nil }, { 0, K.HADD, "X-L", "a" }, { 0, K.HADD, "X-L", "2" },
        { 0, K.HADD, "X-M", "c" },
      }, calls_of("header_set"))
    end)

    it("rejects header names and values that are not strings", function()
      local h = handle()
      assert.error_matches(function() h:set_header(1, "v") end, "req:set_header: expected a header name", 1, true)
      assert.error_matches(function() h:set_header("X", true) end,
        "req:set_header: expected a string value, got boolean", 1, true)
      assert.error_matches(function() h:add_header("X", { "ok", {} }) end,
        "req:add_header: expected a string value, got table", 1, true)
    end)

    it("explains the engine's refusals", function()
      local h = handle()
      for rc, why in pairs({ [K.EINVAL] = "invalid name or value", [K.ENOSPACE] = "no room left for more headers",
        [K.EFRAMING] = "Content-Length and Transfer-Encoding belong to the engine", [-99] = "failed" }) do
        E.header_rc = rc
        assert.error_matches(function() h:set_header("Content-Length", "5") end,
          ('req:set_header("Content-Length"): ' .. why), 1, true)
      end
      -- A list stops at the first refusal.
      E.calls = {}
      E.header_rc = K.EINVAL
      assert.has_error(function() h:add_header("X", { "a", "b" }) end)
      assert.equal(1, #calls_of("header_set"))
    end)

    it("checks set_path, set_upstream, set_target and set_hash_key arguments", function()
      local h = handle()
      h:set_path("/new?q=1")
      h:set_upstream("other")
      h:set_target("10.0.0.9", "8080")
      h:set_hash_key("user-7")
      assert.same({ { "/new?q=1" } }, calls_of("set_path"))
      assert.same({ { "other" } }, calls_of("set_upstream"))
      assert.same({ { "10.0.0.9", 8080 } }, calls_of("set_target"))
      assert.same({ { "user-7" } }, calls_of("set_hash_key"))

      assert.error_matches(function() h:set_path(5) end, "req:set_path(): expected a string", 1, true)
      assert.error_matches(function() h:set_upstream(nil) end, 'req:set_upstream(): no upstream named "nil"', 1, true)
      assert.error_matches(function() h:set_target("10.0.0.9", "http") end,
        "req:set_target(10.0.0.9, nil): expected an IP address and a port", 1, true)
      assert.error_matches(function() h:set_hash_key({}) end, "req:set_hash_key(): expected a string", 1, true)
      E.rc = K.EINVAL
      assert.error_matches(function() h:set_path("no slash") end,
        'req:set_path("no slash"): must start with / and hold no spaces or controls', 1, true)
      assert.error_matches(function() h:set_upstream("nope") end, 'req:set_upstream(): no upstream named "nope"', 1, true)
      assert.error_matches(function() h:set_target("example.com", 80) end,
        "req:set_target(example.com, 80): expected an IP address and a port", 1, true)
      assert.error_matches(function() h:set_hash_key("k") end, "req:set_hash_key(): no room left", 1, true)
    end)

    it("reads the body, yielding once while the engine gathers it", function()
      E.body_rcs = { 1, 0 }
      E.body = "payload"
      local h = handle()
      local co = coroutine.create(function() return h:body(1024) end)
      local ok, v = coroutine.resume(co)
      assert.is_true(ok)
      assert.is_nil(v)
      assert.equal("suspended", coroutine.status(co))
      local ok2, body = coroutine.resume(co)
      assert.is_true(ok2)
      assert.equal("payload", body)
      assert.same({ { 1024 }, { 1024 } }, calls_of("body_read"))
    end)

    it("returns a body already there at once, and nil, 'too large' past the limit", function()
      E.body_rcs, E.body = { 0 }, ""
      assert.equal("", handle():body(0))
      E.body_rcs = { -1 }
      local b, err = handle():body(10)
      assert.is_nil(b)
      assert.equal("too large", err)
      E.body_rcs = { 1, -1 }
      local co = coroutine.wrap(function() return handle():body(10) end)
      co()
      local b2, err2 = co()
      assert.is_nil(b2)
      assert.equal("too large", err2)
    end)

    it("wants a size for the body", function()
      for _, bad in ipairs({ "x", -1, 2 ^ 60, 0 / 0 }) do
        assert.error_matches(function() handle():body(bad) end,
          "req:body(): expected a maximum size in bytes (0 to 2^53)", 1, true)
      end
      assert.error_matches(function() handle():body() end, "req:body(): expected a maximum size", 1, true)
    end)

    it("reports the last failure, nil on a first try", function()
      local h = handle("upstream")
      assert.is_nil(h:last_failure())
      E.failure = { kind = 4, status = 503, addr = "10.0.0.2:80" }
      assert.same({ "status", 503, "10.0.0.2:80" }, { h:last_failure() })
      E.failure = { kind = 1, status = 0, addr = "10.0.0.3:80" }
      assert.same({ "connect", nil, "10.0.0.3:80" }, { h:last_failure() })
      E.failure = { kind = 9, status = 0, addr = "x" }
      assert.equal("error", (h:last_failure()))
    end)

    it("describes the client's TLS, or gives nil on plain HTTP", function()
      assert.is_nil(handle():tls())
      E.tls = { [K.TLS_PROTOCOL] = "TLSv1.3", [K.TLS_CIPHER] = "TLS_AES_128_GCM_SHA256", [K.TLS_SNI] = "a.test",
        [K.TLS_RESUMED] = "1", [K.TLS_CLIENT_VERIFIED] = "0", [K.TLS_CLIENT_SUBJECT] = "CN=x" }
      assert.same({ protocol = "TLSv1.3", cipher = "TLS_AES_128_GCM_SHA256", sni = "a.test",
        resumed = true, client_verified = false }, handle():tls())
      E.tls[K.TLS_CLIENT_VERIFIED] = "1"
      E.tls[K.TLS_ALPN] = "http/1.1"
      local t = handle():tls()
      assert.is_true(t.client_verified)
      assert.equal("CN=x", t.client_subject)
      assert.equal("http/1.1", t.alpn)
    end)
  end)

  describe("local answers", function()
    it("respond stores headers and body, then yields for good", function()
      local h = handle()
      local co = coroutine.create(function()
        h:respond(403, 12345, { ["X-Why"] = "denied", ["Set-Cookie"] = { "a=1", "b=2" } })
        return "not reached"
      end)
      local ok, v = coroutine.resume(co)
      assert.is_true(ok)
      assert.is_nil(v)
      assert.equal("suspended", coroutine.status(co))
      assert.same({ "respond_begin" }, E.calls[1])
      assert.same({ "respond", 403, "12345" }, E.calls[#E.calls])
      local sets = calls_of("header_set")
      table.sort(sets, function(a, b) return a[3] .. (a[4] or "") < b[3] .. (b[4] or "") end)
      assert.same({ { 1, K.HADD, "Set-Cookie", "a=1" }, { 1, K.HADD, "Set-Cookie", "b=2" },
        { 1, K.HADD, "X-Why", "denied" } }, sets)
    end)

    it("respond sends an empty body by default", function()
      coroutine.wrap(function() handle():respond(204) end)()
      assert.same({ { 204, "" } }, calls_of("respond"))
    end)

    it("respond refuses bad statuses and headers before telling the engine", function()
      for _, bad in ipairs({ 199, 1000, 200.5, "abc", nil }) do
        assert.error_matches(function() handle():respond(bad) end,
          "req:respond(): expected a status from 200 to 999", 1, true)
      end
      assert.error_matches(function() handle():respond(200, "x", "X-A: 1") end,
        "req:respond(): headers must be a table of name = value", 1, true)
      assert.same({}, E.calls)
      E.rc = -1
      assert.error_matches(function() handle():respond(200, "x") end,
        "req:respond(): cannot store the answer", 1, true)
    end)

    it("redirect answers with Location, 302 by default", function()
      coroutine.wrap(function() handle():redirect("https://example.com/") end)()
      assert.same({ { 302, "" } }, calls_of("respond"))
      assert.same({ { 1, K.HADD, "Location", "https://example.com/" } }, calls_of("header_set"))
      E.calls = {}
      coroutine.wrap(function() handle():redirect("/x", 308) end)()
      assert.same({ { 308, "" } }, calls_of("respond"))
    end)

    it("redirect refuses other statuses and empty URLs", function()
      for _, s in ipairs({ 200, 300, 304, 404 }) do
        assert.error_matches(function() handle():redirect("/x", s) end,
          "req:redirect(): status must be 301, 302, 303, 307 or 308", 1, true)
      end
      assert.error_matches(function() handle():redirect("") end, "req:redirect(): expected a URL", 1, true)
      assert.error_matches(function() handle():redirect(nil, 301) end, "req:redirect(): expected a URL", 1, true)
    end)
  end)

  describe("the response", function()
    it("reads and changes the response status and headers", function()
      E.status = 201
      E.resp_headers = { { "Content-Type", "text/plain" }, { "Set-Cookie", "a" }, { "Set-Cookie", "b" } }
      local h = handle("response")
      assert.equal(201, h:status())
      assert.equal("text/plain", h:resp_header("content-type"))
      assert.same({ ["content-type"] = "text/plain", ["set-cookie"] = { "a", "b" } }, h:resp_headers())
      assert.equal("10.0.0.5:8080", h:upstream_addr())
      h:set_status("299")
      h:set_resp_header("X-R", "1")
      h:add_resp_header("X-R", "2")
      h:clear_resp_header("Server")
      h:set_resp_header("X-Gone", nil)
      assert.same({ { 299 } }, calls_of("set_status"))
      assert.same({ { 1, K.HSET, "X-R", "1" }, { 1, K.HADD, "X-R", "2" }, { 1, K.HCLEAR, "Server", nil },
        { 1, K.HCLEAR, "X-Gone", nil } }, calls_of("header_set"))
    end)

    it("reads the trailers as header tables (names lower-cased, repeats as lists)", function()
      E.resp_trailers = "grpc-status: 0\r\nGrpc-Message: ok: fine\r\nx-t: 1\r\nx-t: 2\r\n"
      E.req_trailers = "x-client: v\r\n"
      local h = handle("log")
      assert.same({ ["grpc-status"] = "0", ["grpc-message"] = "ok: fine", ["x-t"] = { "1", "2" } },
        h:resp_trailers())
      assert.same({ ["x-client"] = "v" }, h:trailers())
      E.resp_trailers, E.req_trailers = nil, nil
      assert.same({}, h:resp_trailers())
      assert.same({}, h:trailers())
      assert.error_matches(function() handle("response"):resp_trailers() end,
        "cannot be called in the response phase", 1, true)
    end)

    it("refuses a status the engine refuses, or not a number", function()
      local h = handle("response")
      assert.error_matches(function() h:set_status("abc") end,
        "req:set_status(): expected a status from 100 to 999", 1, true)
      E.rc = -1
      assert.error_matches(function() h:set_status(99) end,
        "req:set_status(): expected a status from 100 to 999", 1, true)
    end)
  end)

  describe("var", function()
    it("gives exactly one string value per variable, nil when unknown or unset", function()
      local h = handle("log")
      h.ctx.request_id = "rid-1"
      E.tls = { [K.TLS_PROTOCOL] = "TLSv1.2", [K.TLS_CIPHER] = "ECDHE", [K.TLS_SNI] = "WWW.Example.com" }
      local want = { client_ip = "192.0.2.1", host = "example.com", method = "GET", path = "/items",
        uri = "/items?a=1", scheme = "https", request_id = "rid-1", upstream = "app",
        ssl_protocol = "TLSv1.2", ssl_cipher = "ECDHE", ssl_server_name = "www.example.com" }
      for _, name in ipairs(phases.vars) do
        assert.equal(1, select("#", h:var(name)), name)
        assert.equal(want[name], h:var(name), name)
      end
      assert.equal(1, select("#", h:var("nope")))
      assert.is_nil(h:var("nope"))
    end)

    it("gives the status as a string once there is one", function()
      local h = handle("log")
      assert.is_nil(h:var("status"))
      E.status = 404
      assert.equal("404", h:var("status"))
    end)

    it("gives nil, not an error, for TLS variables on plain HTTP", function()
      local h = handle()
      assert.is_nil(h:var("ssl_server_name"))
      assert.is_nil(h:var("ssl_protocol"))
    end)
  end)

  describe("the failure log line", function()
    local function chain_failing(fail_open)
      local inst = { name = "auth", where = "routes[2].plugins[1](auth)", fail_open = fail_open, conf = {},
        request = function() error("no key", 0) end }
      local list = { inst }
      list.run = function(h, l, phase) h._k = 1; l[1][phase](h, l[1].conf) end
      return { list }
    end

    it("names the plugin, its place and the phase, at error level", function()
      local h = new(real_ffi.cast("void *", 1), 0)
      h._chain = chain_failing(false)
      assert.equal(2, runtime.run(h, 1))
      local logs = calls_of("log")
      assert.equal(1, #logs)
      assert.equal(0, logs[1][1])
      assert.equal("plugin auth (routes[2].plugins[1](auth)): request phase failed: no key",
        logs[1][2]:match("^[^\n]*"))
      assert.truthy(logs[1][2]:find("\nstack traceback:", 1, true))
    end)

    it("names the request's trace when it has one", function()
      E.trace = { trace_id = ("ab"):rep(16), span_id = ("cd"):rep(8) }
      local h = new(real_ffi.cast("void *", 1), 0)
      h._chain = chain_failing(false)
      assert.equal(2, runtime.run(h, 1))
      E.trace = nil
      assert.equal("plugin auth (routes[2].plugins[1](auth)): request phase failed trace_id="
        .. ("ab"):rep(16) .. ": no key", calls_of("log")[1][2]:match("^[^\n]*"))
    end)

    it("says the request goes on when the plugin is fail_open", function()
      local h = new(real_ffi.cast("void *", 1), 0)
      h._chain = chain_failing(true)
      assert.equal(0, runtime.run(h, 1))
      assert.equal("plugin auth (routes[2].plugins[1](auth)): request phase failed "
        .. "(fail_open: request goes on): no key", calls_of("log")[1][2]:match("^[^\n]*"))
    end)
  end)
end)
