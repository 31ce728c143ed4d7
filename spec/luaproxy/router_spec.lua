-- proxy.router (lua/luaproxy/router.lua) over the engine's compiled router, loaded from the
-- lp_native library (LP_NATIVE_LIB, set by ctest), with requests from the proxy.test double.
local T = require "proxy.test"

local function req(spec) return T.request(spec) end

describe("proxy.router", function()
  local router = T.proxy.router

  it("is the engine's router, reached through proxy.router", function()
    assert.is_function(router.new)
    local r = assert(router.new({ { prefix = "/" } }))
    assert.is_table((r:match(req({ uri = "/x" }))))
  end)

  it("returns the first route in order and its captures", function()
    local routes = {
      { path = "/users/:id/orders/*rest", name = "orders" },
      { path = "/users/:id", name = "user" },
      { regex = [[^/v(?<ver>\d+)/]], name = "versioned" },
      { prefix = "/", name = "any" },
    }
    local r = assert(router.new(routes))
    local route, caps, i = r:match(req({ uri = "/users/42/orders/a/b?x=1" }))
    assert.equal(routes[1], route)
    assert.equal(1, i)
    assert.same({ id = "42", rest = "a/b" }, caps)
    route, caps = r:match(req({ uri = "/users/7" }))
    assert.equal("user", route.name)
    assert.same({ id = "7" }, caps)
    route, caps = r:match(req({ uri = "/v3/things" }))
    assert.equal("versioned", route.name)
    assert.same({ ver = "3" }, caps)
    assert.equal("any", (r:match(req({ uri = "/users/" }))).name)
  end)

  it("matches hosts, methods, headers, query arguments, client networks and SNI", function()
    local r = assert(router.new({
      { host = "api.*", name = "api-prefix" },
      { host = "*.example.com", methods = { "POST" }, name = "post-sub" },
      { match = { headers = { ["X-Env"] = "prod" } }, name = "prod" },
      { header_regex = { ["user-agent"] = "^curl/" }, name = "curl" },
      { query = { debug = true }, name = "debug" },
      { query_regex = { v = "^[0-9]+$" }, name = "numeric-v" },
      { cidr = { "10.0.0.0/8", "::1" }, name = "internal" },
      { sni = "secure.example.com", name = "sni" },
      { name = "rest" },
    }))
    local function name(spec) return (r:match(req(spec))).name end
    assert.equal("api-prefix", name({ headers = { Host = "api.internal:8080" } }))
    assert.equal("post-sub", name({ method = "POST", headers = { Host = "a.example.com" } }))
    assert.equal("prod", name({ headers = { ["x-env"] = "prod" } }))
    assert.equal("curl", name({ headers = { ["User-Agent"] = "curl/8.0" } }))
    assert.equal("debug", name({ uri = "/?debug=" }))
    assert.equal("numeric-v", name({ uri = "/?v=%31%32" }))
    assert.equal("internal", name({ client_ip = "10.9.8.7" }))
    assert.equal("internal", name({ client_ip = "::1" }))
    assert.equal("sni", name({ client_ip = "192.0.2.1", tls = { sni = "secure.example.com" } }))
    assert.equal("rest", name({ client_ip = "192.0.2.1", method = "POST" }))
  end)

  it("runs a predicate only on the candidates that remain, in order", function()
    local calls = {}
    local r = assert(router.new({
      { prefix = "/a", predicate = function(rq) calls[#calls + 1] = 1; return rq:header("x") == "1" end },
      { prefix = "/b", predicate = function() calls[#calls + 1] = 2; return true end },
      { prefix = "/a", predicate = function(_, caps) calls[#calls + 1] = 3; return caps ~= nil end },
    }))
    local _, _, i = r:match(req({ uri = "/a" }))
    assert.equal(3, i)
    assert.same({ 1, 3 }, calls) -- /b's predicate never ran
    calls = {}
    _, _, i = r:match(req({ uri = "/a", headers = { x = "1" } }))
    assert.equal(1, i)
    assert.same({ 1 }, calls)
  end)

  it("refuses bad routes with the route named", function()
    local r, err = router.new({ { prefix = "/" }, { regex = "^(" } })
    assert.is_nil(r)
    assert.matches("routes%[2%]: bad regex", err)
    r, err = router.new({ { prefix = "/", path = "/x" } })
    assert.is_nil(r)
    assert.matches("one of path, prefix and regex", err)
    r, err = router.new({ { match = { hots = "a" } } })
    assert.is_nil(r)
    assert.matches('unknown condition "hots"', err)
    r, err = router.new({ { cidr = "10.0.0.0/40" } })
    assert.is_nil(r)
    assert.matches("CIDR", err)
  end)

  -- A naive matcher (every route in order) against the compiled one, on random tables.
  it("agrees with a naive matcher on random tables and requests", function()
    local seed = 7
    local function rnd(n)
      seed = (seed * 1103515245 + 12345) % 2147483648
      return math.floor(seed / 256) % n + 1
    end
    local function pick(t) return t[rnd(#t)] end
    local SEGS = { "a", "b", "ab", "1" }
    local function rpath(pattern)
      local p = {}
      for k = 1, rnd(3) do
        local s = pick(SEGS)
        if pattern and rnd(4) == 1 then s = ":p" .. k end
        p[#p + 1] = "/" .. s
      end
      return table.concat(p)
    end
    local HOSTS = { "a.com", "*.a.com", "x.*" }
    local function host_ok(pat, h)
      if not pat then return true end
      if pat:sub(1, 2) == "*." then return #h > #pat - 1 and h:sub(-(#pat - 1)) == pat:sub(2) end
      if pat:sub(-2) == ".*" then return #h > #pat - 1 and h:sub(1, #pat - 1) == pat:sub(1, -2) end
      return h == pat
    end
    local function path_ok(rt, p)
      if rt.prefix then return p:sub(1, #rt.prefix) == rt.prefix end
      if rt.path then
        local pat = "^" .. rt.path:gsub("/:p%d", "/[^/]+") .. "$"
        return p:find(pat) ~= nil
      end
      return true
    end
    local function naive(routes, q)
      for i, rt in ipairs(routes) do
        if host_ok(rt.host, q.host) and path_ok(rt, q.path)
           and (not rt.methods or rt.methods[1] == q.method)
           and (not rt.headers or q.h == rt.headers.x) then
          return i
        end
      end
    end
    local compared = 0
    for _ = 1, 100 do
      local routes = {}
      for i = 1, rnd(30) do
        local rt = {}
        if rnd(2) == 1 then rt.host = pick(HOSTS) end
        local k = rnd(3)
        if k == 1 then rt.prefix = rpath(false) elseif k == 2 then rt.path = rpath(true) end
        if rnd(4) == 1 then rt.methods = { "POST" } end
        if rnd(4) == 1 then rt.headers = { x = "1" } end
        routes[i] = rt
      end
      local r = assert(router.new(routes))
      for _ = 1, 30 do
        local q = { host = pick({ "a.com", "b.a.com", "x.y", "z" }), path = rpath(false),
                    method = rnd(2) == 1 and "GET" or "POST", h = rnd(2) == 1 and "1" or nil }
        local rq = req({ uri = q.path, method = q.method,
                         headers = { Host = q.host, x = q.h } })
        local _, _, got = r:match(rq)
        assert.equal(naive(routes, q), got)
        compared = compared + 1
      end
    end
    assert.equal(3000, compared)
  end)
end)
