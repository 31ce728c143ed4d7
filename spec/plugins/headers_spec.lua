local T = require "proxy.test"
local headers = require "headers"

describe("headers plugin", function()
  local req_spec = {
    method = "GET", uri = "/a/b?x=1", client_ip = "10.0.0.1", upstream = "app",
    headers = { Host = "example.com:8080", ["X-Old"] = "1", ["X-Keep"] = "k" },
  }

  it("sets, adds and removes request headers, in that order: remove, set, add", function()
    local res = T.run(headers, {
      request = {
        remove = { "x-old", "X-Gone" },
        set = { ["X-Env"] = "prod", ["X-Keep"] = "replaced" },
        add = { ["X-Keep"] = "added", ["X-Multi"] = { "1", "2" }, ["X-Old"] = "new" },
      },
    }, req_spec)
    local h = res.request_headers
    assert.equal("prod", h["X-Env"])
    assert.same({ "replaced", "added" }, h["x-keep"])
    assert.same({ "1", "2" }, h["x-multi"])
    assert.equal("new", h["x-old"])
  end)

  it("interpolates variables", function()
    local res = T.run(headers, {
      request = { set = {
        ["X-Vars"] = "$client_ip|$host|$method|$path|$uri|$scheme|$upstream|${request_id}",
        ["X-Literal"] = "$$host costs $5 and $nope stays, ${nope} too, $host_x, ${host}_x",
      } },
    }, { uri = "/a/b?x=1", client_ip = "10.0.0.1", upstream = "app",
         headers = { Host = "Example.com:8080" }, ctx = { request_id = "rid" } })
    assert.equal("10.0.0.1|example.com|GET|/a/b|/a/b?x=1|http|app|rid", res.request_headers["x-vars"])
    assert.equal("$host costs $5 and $nope stays, ${nope} too, $host_x, example.com_x",
      res.request_headers["x-literal"])
  end)

  it("renders a missing variable as empty", function()
    local res = T.run(headers, { request = { set = { ["X-Id"] = "[$request_id]" } } }, {})
    assert.equal("[]", res.request_headers["x-id"])
  end)

  it("changes response headers in the response phase, with $status", function()
    local res = T.run(headers, {
      response = {
        remove = { "Server" },
        set = { ["X-Status"] = "$status", ["Cache-Control"] = "no-store" },
        add = { ["Set-Cookie"] = { "a=1", "b=2" } },
      },
    }, req_spec, { status = 404, headers = { Server = "origin", ["Cache-Control"] = "public",
                                              ["Set-Cookie"] = "z=0" } })
    local h = res.headers
    assert.is_nil(h.server)
    assert.equal("404", h["x-status"])
    assert.equal("no-store", h["cache-control"])
    assert.same({ "z=0", "a=1", "b=2" }, h["set-cookie"])
    -- the request part was empty: nothing changed upstream
    assert.equal("1", res.request_headers["x-old"])
  end)

  it("applies the response part to local answers", function()
    local deny = { name = "deny", priority = 900, schema = { fields = {} } }
    function deny.request(req) req:respond(401, "no") end
    local res = T.run_chain({ { headers, { request = { set = { ["X-Req"] = "1" } },
                                           response = { set = { ["X-Status"] = "$status" } } } },
                              { deny } }, req_spec)
    assert.equal(401, res.status)
    assert.equal("401", res.headers["x-status"])
    -- headers (800) runs after deny (900): its request part never ran
    assert.is_nil(res.request_headers["x-req"])
  end)

  it("does nothing with the default config", function()
    local res = T.run(headers, nil, req_spec, { headers = { A = "1" } })
    assert.equal("1", res.request_headers["x-old"])
    assert.same({ a = "1" }, res.headers)
  end)

  it("compiles templates once", function()
    assert.equal("plain", headers.compile_template("plain"))
    assert.equal("a$b", headers.compile_template("a$$b"))
    assert.same({ "id=", "request_id", "" }, headers.compile_template("id=$request_id"))
    assert.same({ "", "host", ":", "path", "" }, headers.compile_template("${host}:$path"))
  end)

  it("rejects bad config with the path", function()
    assert.error_matches(function()
      T.run(headers, { request = { set = { ["X-Env"] = 1 } } })
    end, "plugins[1](headers).request.set.X-Env: expected a string, got number", 1, true)
    assert.error_matches(function()
      T.run(headers, { request = { set = { ["Bad Name"] = "1" } } })
    end, 'plugins[1](headers).request.set.Bad Name: "Bad Name" does not match', 1, true)
    assert.error_matches(function()
      T.run(headers, { request = { add = { X = { "1", 2 } } } })
    end, "plugins[1](headers).request.add.X: expected a string or a non-empty list of strings", 1, true)
    assert.error_matches(function()
      T.run(headers, { response = { set = { X = "a\r\nb" } } })
    end, "plugins[1](headers).response.set.X: header values must not contain CR, LF or NUL", 1, true)
    assert.error_matches(function()
      T.run(headers, { request = { set = { X = "$status" } } })
    end, "plugins[1](headers): request.set.X: $status is only known in the response part", 1, true)
    assert.error_matches(function()
      T.run(headers, { requests = {} })
    end, "plugins[1](headers).requests: unknown field", 1, true)
  end)

  describe("hsts", function()
    it("sends Strict-Transport-Security on https responses only", function()
      local conf = { hsts = { max_age = 63072000, include_subdomains = true } }
      local res = T.run(headers, conf, { tls = { protocol = "TLSv1.3" } }, { status = 200 })
      assert.equal("max-age=63072000; includeSubDomains",
        res.headers["strict-transport-security"])
      res = T.run(headers, conf, {}, { status = 200 })
      assert.is_nil(res.headers["strict-transport-security"])
    end)

    it("defaults to a year, and the response part can still remove it", function()
      local res = T.run(headers, { hsts = {} }, { scheme = "https" }, { status = 200 })
      assert.equal("max-age=31536000", res.headers["strict-transport-security"])
      res = T.run(headers, { hsts = {}, response = { remove = { "Strict-Transport-Security" } } },
        { scheme = "https" }, { status = 200 })
      assert.is_nil(res.headers["strict-transport-security"])
    end)

    it("refuses preload without includeSubDomains and a year", function()
      local ok, err = pcall(T.run, headers, { hsts = { preload = true } }, { scheme = "https" })
      assert.is_false(ok)
      assert.matches("preload needs include_subdomains", tostring(err))
      local res = T.run(headers, { hsts = { preload = true, include_subdomains = true } },
        { scheme = "https" }, { status = 200 })
      assert.equal("max-age=31536000; includeSubDomains; preload",
        res.headers["strict-transport-security"])
    end)
  end)
end)
