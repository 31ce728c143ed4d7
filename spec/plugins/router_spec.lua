local T = require "proxy.test"
local router = require "router"

local UPSTREAMS = { "app", "api", "static", "admin", "fallback", "v2" }

local function route(conf, spec)
  spec.upstreams = UPSTREAMS
  spec.upstream = spec.upstream or "app"
  return T.run(router, conf, spec)
end

describe("router plugin", function()
  it("routes by prefix and strips it", function()
    local conf = { rules = { { prefix = "/api/", upstream = "api", strip_prefix = true } } }
    local res = route(conf, { uri = "/api/fixed?size=3" })
    assert.equal("api", res.upstream)
    assert.equal("/fixed?size=3", res.uri)
    assert.equal(1, res.ctx.route_rule)
    res = route({ rules = { { prefix = "/api", upstream = "api", strip_prefix = true } } },
      { uri = "/api" })
    assert.equal("/", res.path)
  end)

  it("leaves unmatched requests alone", function()
    local res = route({ rules = { { prefix = "/api/", upstream = "api" } } }, { uri = "/web" })
    assert.equal("app", res.upstream)
    assert.equal("/web", res.path)
    assert.is_nil(res.ctx.route_rule)
  end)

  it("sends unmatched requests to default_upstream when set", function()
    local res = route({ rules = { { prefix = "/api/", upstream = "api" } },
                        default_upstream = "fallback" }, { uri = "/web" })
    assert.equal("fallback", res.upstream)
  end)

  it("takes the first matching rule", function()
    local conf = { rules = {
      { prefix = "/a/", upstream = "api" },
      { prefix = "/a/b", upstream = "static" },
      { prefix = "/", upstream = "fallback" },
    } }
    assert.equal("api", route(conf, { uri = "/a/b" }).upstream)
    local res = route(conf, { uri = "/x" })
    assert.equal("fallback", res.upstream)
    assert.equal(3, res.ctx.route_rule)
  end)

  it("compares prefixes byte for byte, special characters included", function()
    local conf = { rules = { { prefix = "/a.b+(c)%/", upstream = "api", strip_prefix = true } } }
    local res = route(conf, { uri = "/a.b+(c)%/x" })
    assert.equal("api", res.upstream)
    assert.equal("/x", res.path)
    assert.equal("app", route(conf, { uri = "/aXb+(c)%/x" }).upstream)
    assert.equal("app", route(conf, { uri = "/a.b" }).upstream)
  end)

  it("matches exact paths", function()
    local conf = { rules = { { path = "/health", upstream = "admin" } } }
    assert.equal("admin", route(conf, { uri = "/health?full=1" }).upstream)
    assert.equal("app", route(conf, { uri = "/health/x" }).upstream)
  end)

  it("matches hosts exactly or by wildcard, without port and case", function()
    local conf = { rules = {
      { host = "API.example.com", upstream = "api" },
      { host = "*.example.com", upstream = "static" },
    } }
    assert.equal("api", route(conf, { headers = { Host = "api.Example.com:8080" } }).upstream)
    assert.equal("static", route(conf, { headers = { Host = "cdn.example.com" } }).upstream)
    assert.equal("static", route(conf, { headers = { Host = "a.b.example.com" } }).upstream)
    assert.equal("app", route(conf, { headers = { Host = "example.com" } }).upstream)
    assert.equal("app", route(conf, { headers = { Host = "badexample.com" } }).upstream)
    assert.equal("app", route(conf, {}).upstream)
  end)

  it("matches methods, headers and query arguments", function()
    local conf = { rules = {
      { methods = { "post", "PUT" }, prefix = "/w", upstream = "api" },
      { headers = { ["X-Canary"] = "1", Accept = "text/html" }, upstream = "v2" },
      { query = { beta = "yes please" }, upstream = "static" },
    } }
    assert.equal("api", route(conf, { method = "POST", uri = "/w" }).upstream)
    assert.equal("api", route(conf, { method = "PUT", uri = "/w" }).upstream)
    assert.equal("app", route(conf, { method = "GET", uri = "/w" }).upstream)
    assert.equal("v2", route(conf, { headers = { ["x-canary"] = "1", accept = "text/html" } }).upstream)
    assert.equal("app", route(conf, { headers = { ["x-canary"] = "1" } }).upstream)
    assert.equal("static", route(conf, { uri = "/?beta=yes%20please" }).upstream)
    assert.equal("app", route(conf, { uri = "/?beta=no" }).upstream)
  end)

  it("matches Lua patterns and rewrites with captures", function()
    local conf = { rules = {
      { pattern = "^/users/(%d+)/posts/(%d+)$", rewrite = "/v2/posts/%2?user=%1", upstream = "v2" },
      { pattern = "^/old(/.*)$", rewrite = "%1" },
      { pattern = "^/whole/%a+$", rewrite = "/w%0" },
      { pattern = "^/nocap/%a+", rewrite = "/n%1/100%%" },
    } }
    local res = route(conf, { uri = "/users/42/posts/7?x=1" })
    assert.equal("v2", res.upstream)
    assert.equal("/v2/posts/7?user=42", res.uri)
    res = route(conf, { uri = "/old/a/b?q=1" })
    assert.equal("/a/b?q=1", res.uri)
    assert.equal("app", res.upstream)
    assert.equal(2, res.ctx.route_rule)
    assert.equal("/w/whole/abc", route(conf, { uri = "/whole/abc" }).path)
    assert.equal("/n/nocap/abc/100%", route(conf, { uri = "/nocap/abc" }).path)
    assert.equal("/users/x/posts/7", route(conf, { uri = "/users/x/posts/7" }).path)
  end)

  it("rewrites to a fixed path without a pattern", function()
    local res = route({ rules = { { prefix = "/legacy", rewrite = "/new%20path" } } },
      { uri = "/legacy/x?k=v" })
    assert.equal("/new%20path?k=v", res.uri)
  end)

  it("requires every condition of a rule", function()
    local conf = { rules = { { host = "a.com", prefix = "/x", methods = { "GET" }, upstream = "api" } } }
    assert.equal("api", route(conf, { uri = "/x/1", headers = { Host = "a.com" } }).upstream)
    assert.equal("app", route(conf, { uri = "/y", headers = { Host = "a.com" } }).upstream)
    assert.equal("app", route(conf, { uri = "/x", headers = { Host = "b.com" } }).upstream)
    assert.equal("app", route(conf, { method = "POST", uri = "/x", headers = { Host = "a.com" } }).upstream)
  end)

  it("raises when a rule names an unknown upstream (the engine fails the request)", function()
    assert.error_matches(function()
      route({ rules = { { prefix = "/", upstream = "nope" } } }, {})
    end, 'no upstream named "nope"', 1, true)
  end)

  it("rejects bad rules at load", function()
    local function bad(rules, msg)
      assert.error_matches(function() T.run(router, { rules = rules }) end, msg, 1, true)
    end
    bad({ { prefix = "api" } }, 'plugins[1](router).rules[1].prefix: "api" does not match the pattern "^/"')
    bad({ { pattern = "^/(%d+" } }, "plugins[1](router).rules[1].pattern: bad Lua pattern")
    bad({ { host = "a.*.com" } }, "plugins[1](router).rules[1].host: a wildcard host must look like *.example.com")
    bad({ { strip_prefix = true } }, "plugins[1](router).rules[1]: strip_prefix needs a prefix")
    bad({ { prefix = "/a", strip_prefix = true, rewrite = "/b" } },
      "plugins[1](router).rules[1]: use either rewrite or strip_prefix")
    bad({ { rewrite = "b" } }, "plugins[1](router).rules[1]: rewrite must start with /")
    bad({ { pattern = "^/(.*)", rewrite = "/%x" } },
      "plugins[1](router): rules[1].rewrite: % must be followed by a digit or %")
    bad({ { pattern = "^/(a)(b)", rewrite = "/%3" } },
      "plugins[1](router): rules[1].rewrite: %3 refers to a capture the pattern does not have (2 captures)")
    bad({ { pattern = "^/ab", rewrite = "/%2" } },
      "plugins[1](router): rules[1].rewrite: %2 refers to a capture the pattern does not have (0 captures)")
    bad({ { prefix = "/", upstrem = "x" } }, "plugins[1](router).rules[1].upstrem: unknown field")
  end)

  it("matches the TLS server name (sni), exact and wildcard, never on plain HTTP", function()
    local conf = { rules = {
      { sni = "Admin.Example.com", upstream = "admin" },
      { sni = "*.apps.example.com", upstream = "apps" },
      { prefix = "/", upstream = "web" },
    } }
    local function upstream_of(spec)
      spec.upstreams = { "admin", "apps", "web" }
      return T.run(router, conf, spec).upstream
    end
    assert.equal("admin", upstream_of({ tls = { protocol = "TLSv1.3", sni = "admin.example.com" } }))
    assert.equal("apps", upstream_of({ tls = { protocol = "TLSv1.3", sni = "x.apps.example.com" } }))
    assert.equal("web", upstream_of({ tls = { protocol = "TLSv1.3", sni = "apps.example.com" } }))
    assert.equal("web", upstream_of({ tls = { protocol = "TLSv1.3" } }))
    assert.equal("web", upstream_of({ headers = { Host = "admin.example.com" } }))
  end)

  describe("regexes (proxy.re)", function()
    it("matches path_regex and gives its captures, named ones too, to req.ctx", function()
      local conf = { rules = {
        { path_regex = [[^/users/(?<id>\d+)/orders/(\d+)$]], upstream = "api" },
      } }
      local res = route(conf, { uri = "/users/42/orders/7?x=1" })
      assert.equal("api", res.upstream)
      assert.equal(1, res.ctx.route_rule)
      local m = res.ctx.route_captures
      assert.equal("/users/42/orders/7", m[0])
      assert.equal("42", m[1])
      assert.equal("42", m.id)
      assert.equal("7", m[2])
      assert.equal("app", route(conf, { uri = "/users/x/orders/7" }).upstream)
      assert.is_nil(route(conf, { uri = "/users/1/orders/2/more" }).ctx.route_captures)
    end)

    it("rewrites with $N and ${name} templates, keeping the query", function()
      local conf = { rules = {
        { path_regex = [[^/u/(?<user>[^/]+)/(.*)$]], rewrite = "/users/${user}/$2?via=$$x",
          upstream = "api" },
        { path_regex = [[^/k/(\w+)(/.*)?$]], rewrite = "/kept$2", upstream = "v2" },
      } }
      local res = route(conf, { uri = "/u/ann/a/b?q=1" })
      assert.equal("/users/ann/a/b?via=$x", res.uri)
      res = route(conf, { uri = "/k/abc?z=9" })
      assert.equal("v2", res.upstream)
      assert.equal("/kept?z=9", res.uri) -- an unmatched group renders empty
      assert.equal(false, res.ctx.route_captures[2])
    end)

    it("is case-sensitive unless the regex says (?i)", function()
      local conf = { rules = { { path_regex = "(?i)^/API/", upstream = "api" },
                               { path_regex = "^/Web/", upstream = "static" } } }
      assert.equal("api", route(conf, { uri = "/api/x" }).upstream)
      assert.equal("static", route(conf, { uri = "/Web/x" }).upstream)
      assert.equal("app", route(conf, { uri = "/web/x" }).upstream)
    end)

    it("matches header_regex and query_regex (present and matching)", function()
      local conf = { rules = {
        { header_regex = { ["User-Agent"] = [[^curl/\d]] }, upstream = "api" },
        { query_regex = { v = "^[0-9]+$" }, upstream = "v2" },
      } }
      assert.equal("api", route(conf, { headers = { ["user-agent"] = "curl/8.1" } }).upstream)
      assert.equal("app", route(conf, { headers = { ["user-agent"] = "Mozilla curl/8" } }).upstream)
      assert.equal("v2", route(conf, { uri = "/?v=12" }).upstream)
      assert.equal("app", route(conf, { uri = "/?v=1x" }).upstream)
      assert.equal("app", route(conf, { uri = "/" }).upstream)
    end)

    it("requires every condition, regexes checked with the others", function()
      local conf = { rules = { { methods = { "GET" }, path_regex = "^/a",
                                 header_regex = { ["X-T"] = "yes" }, upstream = "api" } } }
      assert.equal("api", route(conf, { uri = "/ab", headers = { ["X-T"] = "oh yes" } }).upstream)
      assert.equal("app", route(conf, { uri = "/ab", method = "POST",
                                        headers = { ["X-T"] = "yes" } }).upstream)
      assert.equal("app", route(conf, { uri = "/ab" }).upstream)
    end)

    it("refuses bad regexes and rewrites at load, naming the key", function()
      local function bad(rules, msg)
        assert.error_matches(function() T.run(router, { rules = rules }) end, msg, 1, true)
      end
      bad({ { prefix = "/" }, { path_regex = "^/(x" } },
        "plugins[1](router).rules[2].path_regex: invalid regex: missing closing parenthesis at offset 4")
      bad({ { header_regex = { ["X-A"] = "a[" } } },
        "plugins[1](router).rules[1].header_regex.X-A: invalid regex: missing terminating ] for character class at offset 2")
      bad({ { query_regex = { q = "*" } } },
        "plugins[1](router).rules[1].query_regex.q: invalid regex: quantifier does not follow a repeatable item at offset 0")
      bad({ { path_regex = "^/", pattern = "^/" } },
        "plugins[1](router).rules[1]: use either pattern or path_regex")
      bad({ { path_regex = "^/(a)", rewrite = "/$2" } },
        "plugins[1](router): rules[1].rewrite: $2 refers to a group the regex does not have (1 group)")
      bad({ { path_regex = "^/(a)", rewrite = "/${nope}" } },
        'plugins[1](router): rules[1].rewrite: bad template "/${nope}": the regex has no group named "nope"')
      bad({ { path_regex = "^/(a)", rewrite = "/$x" } },
        "plugins[1](router): rules[1].rewrite: bad template")
    end)
  end)
end)
