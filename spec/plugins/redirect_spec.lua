local T = require "proxy.test"
local redirect = require "redirect"

describe("redirect plugin", function()
  describe("https = true", function()
    it("sends GET and HEAD to https with 301, keeping path and query", function()
      for _, m in ipairs({ "GET", "HEAD" }) do
        local res = T.run(redirect, { https = true },
          { method = m, uri = "/a?b=1", headers = { Host = "Example.com:8080" } })
        assert.is_true(res.responded)
        assert.equal(301, res.status)
        assert.equal("https://example.com/a?b=1", res.headers.Location)
        assert.is_nil(res.upstream)
      end
    end)

    it("uses 308 for other methods so the body is sent again", function()
      local res = T.run(redirect, { https = true },
        { method = "POST", uri = "/form", headers = { Host = "example.com" } })
      assert.equal(308, res.status)
      assert.equal("https://example.com/form", res.headers.location)
    end)

    it("leaves https requests and requests without Host alone", function()
      local res = T.run(redirect, { https = true },
        { scheme = "https", headers = { Host = "example.com" }, upstream = "app" })
      assert.is_false(res.responded)
      assert.equal(200, res.status)
      assert.is_false(T.run(redirect, { https = true }, { upstream = "app" }).responded)
    end)
  end)

  describe("rules", function()
    local conf = { rules = {
      { host = "old.example.com", to = "https://new.example.com$uri" },
      { path = "/moved", to = "/new-place", status = 302 },
      { prefix = "/blog/", to = "https://blog.example.com$path", status = 307 },
      { pattern = "^/u/(%w+)/(%d+)$", to = "/users/%1?item=%2&pct=100%%", status = 308 },
      { pattern = "^/docs/(.*)$", to = "https://docs.example.com/%1", keep_query = false },
      { host = "*.shop.example.com", to = "https://shop.example.com/", status = 303 },
    } }

    it("redirects on host with $uri, keeping the query once", function()
      local res = T.run(redirect, conf, { uri = "/x?y=1", headers = { Host = "OLD.example.com" } })
      assert.equal(301, res.status)
      assert.equal("https://new.example.com/x?y=1", res.headers.location)
      assert.equal(1, res.ctx.redirect_rule)
    end)

    it("redirects an exact path and appends the query", function()
      local res = T.run(redirect, conf, { uri = "/moved?a=1&b=2" })
      assert.equal(302, res.status)
      assert.equal("/new-place?a=1&b=2", res.headers.location)
      assert.equal("/new-place", T.run(redirect, conf, { uri = "/moved" }).headers.location)
    end)

    it("redirects a prefix with $path", function()
      local res = T.run(redirect, conf, { uri = "/blog/2024/post?ref=x" })
      assert.equal(307, res.status)
      assert.equal("https://blog.example.com/blog/2024/post?ref=x", res.headers.location)
    end)

    it("fills pattern captures; a built query wins over keep_query", function()
      local res = T.run(redirect, conf, { uri = "/u/bob/42?ignored=1" })
      assert.equal(308, res.status)
      assert.equal("/users/bob?item=42&pct=100%", res.headers.location)
    end)

    it("drops the query when keep_query is false", function()
      local res = T.run(redirect, conf, { uri = "/docs/a/b?x=1" })
      assert.equal("https://docs.example.com/a/b", res.headers.location)
    end)

    it("matches wildcard hosts", function()
      local res = T.run(redirect, conf, { uri = "/", headers = { Host = "eu.shop.example.com" } })
      assert.equal(303, res.status)
      assert.equal("https://shop.example.com/", res.headers.location)
    end)

    it("keeps % literal in rules without a pattern", function()
      local res = T.run(redirect, { rules = { { prefix = "/", to = "/a%20b" } } }, { uri = "/x" })
      assert.equal("/a%20b", res.headers.location)
    end)

    it("passes other requests through", function()
      local res = T.run(redirect, conf, { uri = "/stay", upstream = "app" })
      assert.is_false(res.responded)
      assert.equal("app", res.upstream)
      assert.is_nil(res.ctx.redirect_rule)
    end)

    it("runs the response phase of other plugins on the redirect", function()
      local tag = { name = "tag", priority = 1, schema = { fields = {} } }
      function tag.response(req) req:set_resp_header("X-Status", tostring(req:status())) end
      local res = T.run_chain({ { redirect, conf }, { tag } }, { uri = "/moved" })
      assert.equal("302", res.headers["x-status"])
    end)
  end)

  it("rejects bad config", function()
    assert.error_matches(function() T.run(redirect, { rules = { { prefix = "/" } } }) end,
      "plugins[1](redirect).rules[1].to: required field missing", 1, true)
    assert.error_matches(function() T.run(redirect, { rules = { { prefix = "/", to = "/", status = 200 } } }) end,
      "plugins[1](redirect).rules[1].status: expected one of 301, 302, 303, 307, 308, got 200", 1, true)
    assert.error_matches(function()
      T.run(redirect, { rules = { { pattern = "^/(.*)$", to = "/a%20b" } } })
    end, "plugins[1](redirect): rules[1].to: %2 refers to a capture the pattern does not have (1 capture)", 1, true)
    assert.error_matches(function()
      T.run(redirect, { rules = { { pattern = "^/(.*)$", to = "/a%x" } } })
    end, "plugins[1](redirect): rules[1].to: % must be followed by a digit or %", 1, true)
  end)

  it("compiles templates", function()
    assert.same({ "https://", "host", "", "uri", "" }, redirect.compile_to("https://$host$uri"))
    assert.same({ "/u/", 1, "?x=", "method", "" }, redirect.compile_to("/u/%1?x=${method}", true))
    assert.equal("/a%1", redirect.compile_to("/a%1", false))
  end)
end)
