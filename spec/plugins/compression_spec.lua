local T = require "proxy.test"
local compression = require "compression"

local JSON = string.rep('{"id":1,"name":"x"},', 100) -- 2000 bytes

local function run(conf, req_headers, resp, method)
  return T.run(compression, conf or {}, { method = method or "GET", uri = "/a",
    headers = req_headers or { ["Accept-Encoding"] = "gzip, deflate, br" } },
    resp or { headers = { ["Content-Type"] = "application/json" }, body = JSON })
end

describe("compression plugin: Accept-Encoding", function()
  local parse, choose = compression.parse_accept_encoding, compression.choose
  local prefs = { "br", "gzip" }

  it("parses codings and q-values", function()
    assert.same({ gzip = 1000, deflate = 1000, br = 1000 }, parse("gzip, deflate, br"))
    assert.same({ gzip = 800, br = 0 }, parse(" GZIP ; Q=0.8 , br;q=0"))
    assert.same({ gzip = 500 }, parse("x-gzip;q=0.5"))
    assert.same({ ["*"] = 1, identity = 1000 }, parse("*;q=0.001,identity"))
    assert.same({ gzip = 1000 }, parse("gzip;q=1.000"))
  end)

  it("skips malformed elements and never fails on garbage", function()
    assert.same({}, parse("gzip;q=2"))
    assert.same({}, parse("gzip;q=1.0001"))
    assert.same({ br = 1000 }, parse("gzip;q=abc, br"))
    assert.same({}, parse("gzip deflate"))
    assert.same({}, parse("\1\2\255;;;,,,==="))
    assert.same({ gzip = 1000 }, parse("gzip;level=9")) -- other parameters are ignored
    assert.same({}, parse(""))
    local huge = string.rep("x-custom-coding;q=0.5, ", 5000) .. "gzip"
    local t = parse(huge)
    assert.is_nil(t.gzip) -- past the 64 elements read
    assert.equal(500, t["x-custom-coding"])
  end)

  it("prefers the highest q, then the configured order", function()
    assert.equal("br", choose("gzip, deflate, br", prefs))
    assert.equal("gzip", choose("gzip, deflate, br", { "gzip", "br" }))
    assert.equal("gzip", choose("br;q=0.5, gzip", prefs))
    assert.equal("gzip", choose("gzip;q=0.8", prefs)) -- identity unlisted does not compete
    assert.equal("br", choose("*", prefs))
    assert.equal("gzip", choose("*, br;q=0", prefs))
  end)

  it("refuses with q=0, and honours identity preferred", function()
    assert.is_nil(choose("gzip;q=0", prefs))
    assert.is_nil(choose("*;q=0", prefs))
    assert.is_nil(choose("identity", prefs))
    assert.is_nil(choose("gzip;q=0.5, identity", prefs))
    assert.equal("gzip", choose("identity;q=0.4, gzip;q=0.5", prefs))
    assert.is_nil(choose("deflate, compress", prefs))
  end)
end)

describe("compression plugin: decisions", function()
  before_each(function() T.reset() end)

  it("compresses a JSON answer with br by default, headers set", function()
    local res = run(nil, nil, { headers = { ["Content-Type"] = "application/json; charset=utf-8",
      ETag = '"abc"', ["Accept-Ranges"] = "bytes" }, body = JSON })
    assert.same({ coding = "br", level = 4 }, res.compress)
    assert.equal("br", res.headers["content-encoding"])
    assert.equal("Accept-Encoding", res.headers["vary"])
    assert.equal('W/"abc"', res.headers["etag"])
    assert.is_nil(res.headers["accept-ranges"])
  end)

  it("uses gzip when asked, at the configured level", function()
    local res = run({ gzip_level = 9 }, { ["Accept-Encoding"] = "gzip" })
    assert.same({ coding = "gzip", level = 9 }, res.compress)
    assert.equal("gzip", res.headers["content-encoding"])
  end)

  it("keeps weak ETags as they are", function()
    local res = run(nil, nil, { headers = { ["Content-Type"] = "text/html", ETag = 'W/"x"' },
      body = JSON })
    assert.equal('W/"x"', res.headers["etag"])
  end)

  it("merges Vary without duplicating", function()
    local res = run(nil, nil, { headers = { ["Content-Type"] = "text/plain",
      Vary = "Origin" }, body = JSON })
    assert.equal("Origin, Accept-Encoding", res.headers["vary"])
    res = run(nil, nil, { headers = { ["Content-Type"] = "text/plain",
      Vary = "origin, accept-encoding" }, body = JSON })
    assert.equal("origin, accept-encoding", res.headers["vary"])
    res = run(nil, nil, { headers = { ["Content-Type"] = "text/plain",
      Vary = { "Origin", "Cookie" } }, body = JSON })
    assert.equal("Origin, Cookie, Accept-Encoding", res.headers["vary"])
    res = run(nil, nil, { headers = { ["Content-Type"] = "text/plain", Vary = "*" }, body = JSON })
    assert.equal("*", res.headers["vary"])
  end)

  it("adds Vary but does not compress when the client refuses", function()
    for _, ae in ipairs({ "identity", "gzip;q=0, br;q=0", "\1garbage" }) do
      local res = run(nil, { ["Accept-Encoding"] = ae })
      assert.is_nil(res.compress)
      assert.is_nil(res.headers["content-encoding"])
      assert.equal("Accept-Encoding", res.headers["vary"])
    end
    local res = run(nil, {})
    assert.is_nil(res.compress)
    assert.equal("Accept-Encoding", res.headers["vary"])
  end)

  it("skips bodies known to be shorter than min_length, compresses unknown lengths", function()
    local res = run({ min_length = 5000 })
    assert.is_nil(res.compress)
    assert.is_nil(res.headers["content-encoding"])
    res = run({ min_length = 5000 }, nil, { headers = { ["Content-Type"] = "text/plain" },
      body = { "a", "b" }, length_unknown = true })
    assert.same({ coding = "br", level = 4 }, res.compress)
  end)

  it("only compresses the configured types", function()
    for ct, want in pairs({
      ["text/html"] = true, ["TEXT/CSS; charset=x"] = true, ["application/json"] = true,
      ["application/problem+json"] = true, ["application/atom+xml"] = true,
      ["image/svg+xml"] = true, ["application/javascript"] = true,
      ["image/png"] = false, ["application/octet-stream"] = false, ["video/mp4"] = false,
      ["garbage"] = false, [""] = false,
    }) do
      local res = run(nil, nil, { headers = { ["Content-Type"] = ct }, body = JSON })
      assert.equal(want, res.compress ~= nil, ct)
    end
    local res = run(nil, nil, { headers = {}, body = JSON }) -- no Content-Type
    assert.is_nil(res.compress)
    res = run({ types = { "*/*" } }, nil, { headers = { ["Content-Type"] = "image/png" }, body = JSON })
    assert.is_not_nil(res.compress)
  end)

  it("leaves bodies the upstream encoded, and Cache-Control: no-transform", function()
    local res = run(nil, nil, { headers = { ["Content-Type"] = "text/plain",
      ["Content-Encoding"] = "gzip" }, body = JSON })
    assert.is_nil(res.compress)
    assert.equal("gzip", res.headers["content-encoding"])
    assert.is_nil(res.headers["vary"])
    res = run(nil, nil, { headers = { ["Content-Type"] = "text/plain",
      ["Cache-Control"] = "public, No-Transform" }, body = JSON })
    assert.is_nil(res.compress)
  end)

  it("skips HEAD, 204, 206 and 304", function()
    assert.is_nil(run(nil, nil, nil, "HEAD").compress)
    for _, st in ipairs({ 204, 206, 304 }) do
      local res = run(nil, nil, { status = st, headers = { ["Content-Type"] = "text/plain" },
        body = JSON })
      assert.is_nil(res.compress, st)
    end
    assert.is_not_nil(run(nil, nil, { status = 404, headers = { ["Content-Type"] = "text/html" },
      body = JSON }).compress)
  end)

  it("compresses local answers too (they run the response phase)", function()
    local answer = { name = "answer", priority = 5000, schema = { fields = {} } }
    function answer.request(req) return req:respond(503, JSON, { ["Content-Type"] = "text/html" }) end
    local res = T.run_chain({ { answer }, { compression } }, { headers = { ["Accept-Encoding"] = "gzip" } })
    assert.equal(503, res.status)
    assert.same({ coding = "gzip", level = 5 }, res.compress)
  end)

  it("refuses a bad config", function()
    assert.has_error(function() T.conf(compression, { codings = { "gzip", "gzip" } }) end)
    assert.has_error(function() T.conf(compression, { codings = { "deflate" } }) end)
    assert.has_error(function() T.conf(compression, { gzip_level = 10 }) end)
    assert.has_error(function() T.conf(compression, { types = { "not a type" } }) end)
  end)
end)

describe("req:compress() in the double", function()
  it("checks its arguments and phase like the engine", function()
    local req = T.request({})
    assert.has_error(function() req:compress("gzip") end) -- request phase
    T.response(req, { body = "x" })
    assert.has_error(function() req:compress("deflate") end)
    assert.has_error(function() req:compress("gzip", 0) end)
    assert.has_error(function() req:compress("br", 12) end)
    assert.has_error(function() req:compress("gzip", 5, -1) end)
    assert.is_false(req:compress("gzip", 5, 2))
    assert.is_true(req:compress("br", 0, 1))
  end)
end)
