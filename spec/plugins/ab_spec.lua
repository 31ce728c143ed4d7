local T = require "proxy.test"
local ab = require "ab"

local ARMS = {
  { name = "a", upstream = "app", weight = 90 },
  { name = "b", upstream = "app_v2", weight = 10 },
}
local UPSTREAMS = { "app", "app_v2", "app_v3" }

local function conf(extra)
  local c = { arms = ARMS }
  for k, v in pairs(extra or {}) do c[k] = v end
  return c
end

local function run(extra, spec)
  spec = spec or {}
  spec.upstreams = UPSTREAMS
  return T.run(ab, conf(extra), spec)
end

describe("ab plugin", function()
  before_each(function() math.randomseed(20240601) end)

  it("splits non-sticky traffic by weight within 2% over 10,000 picks", function()
    local c = T.conf(ab, conf({ sticky = "none" }))
    local counts = { a = 0, b = 0 }
    for _ = 1, 10000 do
      local req = T.request { upstreams = UPSTREAMS }
      T.phase(ab, "request", req, c)
      counts[req.ctx.ab_arm] = counts[req.ctx.ab_arm] + 1
      assert.equal(req.ctx.ab_arm == "a" and "app" or "app_v2", req:upstream_name())
    end
    assert.is_true(math.abs(counts.a / 10000 - 0.90) <= 0.02, "a: " .. counts.a)
    assert.is_true(math.abs(counts.b / 10000 - 0.10) <= 0.02, "b: " .. counts.b)
  end)

  it("splits three arms by weight too", function()
    local c = T.conf(ab, { sticky = "none", arms = {
      { name = "a", upstream = "app", weight = 50 }, { name = "b", upstream = "app_v2", weight = 30 },
      { name = "c", upstream = "app_v3", weight = 20 } } })
    local counts = { a = 0, b = 0, c = 0 }
    for _ = 1, 10000 do
      local req = T.request()
      T.phase(ab, "request", req, c)
      counts[req.ctx.ab_arm] = counts[req.ctx.ab_arm] + 1
    end
    assert.is_true(math.abs(counts.a / 10000 - 0.5) <= 0.02)
    assert.is_true(math.abs(counts.b / 10000 - 0.3) <= 0.02)
    assert.is_true(math.abs(counts.c / 10000 - 0.2) <= 0.02)
  end)

  it("never picks an arm of weight 0 at random", function()
    local c = T.conf(ab, { sticky = "none", arms = {
      { name = "off", upstream = "app", weight = 0 }, { name = "on", upstream = "app_v2", weight = 1 } } })
    for _ = 1, 1000 do
      local req = T.request()
      T.phase(ab, "request", req, c)
      assert.equal("on", req.ctx.ab_arm)
    end
  end)

  describe("sticky = cookie (the default)", function()
    it("draws an arm for a new user and sets the cookie", function()
      local res = run(nil, {})
      local arm = res.ctx.ab_arm
      assert.truthy(arm == "a" or arm == "b")
      assert.equal("lp_ab=" .. arm .. "; Path=/; Max-Age=86400; HttpOnly", res.headers["Set-Cookie"])
    end)

    it("keeps the arm named by the cookie without setting it again", function()
      for _ = 1, 50 do
        local res = run(nil, { headers = { Cookie = "x=1; lp_ab=b; y=2" } })
        assert.equal("b", res.ctx.ab_arm)
        assert.equal("app_v2", res.upstream)
        assert.is_nil(res.headers["set-cookie"])
      end
    end)

    it("draws again when the cookie names no arm or an arm of weight 0", function()
      local res = run(nil, { headers = { Cookie = "lp_ab=zzz" } })
      assert.matches("^lp_ab=[ab];", res.headers["set-cookie"])
      local c = { arms = { { name = "a", upstream = "app", weight = 0 }, { name = "b", upstream = "app_v2" } } }
      res = T.run(ab, c, { upstreams = UPSTREAMS, headers = { Cookie = "lp_ab=a" } })
      assert.equal("b", res.ctx.ab_arm)
      assert.equal("lp_ab=b; Path=/; Max-Age=86400; HttpOnly", res.headers["set-cookie"])
    end)

    it("honours cookie and cookie_ttl", function()
      local res = run({ cookie = "exp", cookie_ttl = 60 }, { headers = { Cookie = "lp_ab=b" } })
      assert.matches("^exp=[ab]; Path=/; Max%-Age=60; HttpOnly$", res.headers["set-cookie"])
      res = run({ cookie = "exp" }, { headers = { Cookie = "exp=a" } })
      assert.equal("a", res.ctx.ab_arm)
      assert.is_nil(res.headers["set-cookie"])
    end)

    it("adds to the upstream's Set-Cookie lines", function()
      local res = T.run(ab, conf(), { upstreams = UPSTREAMS }, { headers = { ["Set-Cookie"] = "s=1" } })
      assert.equal(2, #res.headers["set-cookie"])
      assert.equal("s=1", res.headers["set-cookie"][1])
    end)
  end)

  describe("sticky = header", function()
    it("hashes the header: one user, one arm; users spread by weight", function()
      local counts = { a = 0, b = 0 }
      local c = T.conf(ab, conf({ sticky = "header" }))
      for i = 1, 10000 do
        local id = "user-" .. i
        local req = T.request { headers = { ["X-User-Id"] = id } }
        T.phase(ab, "request", req, c)
        local arm = req.ctx.ab_arm
        counts[arm] = counts[arm] + 1
        if i <= 100 then
          local again = T.request { headers = { ["x-user-id"] = id } }
          T.phase(ab, "request", again, c)
          assert.equal(arm, again.ctx.ab_arm)
        end
      end
      assert.is_true(math.abs(counts.a / 10000 - 0.9) <= 0.02, "a: " .. counts.a)
    end)

    it("sets no cookie and draws at random without the header", function()
      local res = run({ sticky = "header", header = "X-Team" }, {})
      assert.is_nil(res.headers["set-cookie"])
      assert.truthy(res.ctx.ab_arm)
    end)
  end)

  it("sticky = ip hashes the client address", function()
    local first = run({ sticky = "ip" }, { client_ip = "192.0.2.7" }).ctx.ab_arm
    for _ = 1, 20 do
      assert.equal(first, run({ sticky = "ip" }, { client_ip = "192.0.2.7" }).ctx.ab_arm)
    end
    local expected = ab.fnv1a("192.0.2.7") % 100 < 90 and "a" or "b"
    assert.equal(expected, first)
  end)

  describe("overrides", function()
    it("forces an arm by header or query argument", function()
      local res = run({ sticky = "none" }, { headers = { ["X-AB-Arm"] = "b" } })
      assert.equal("b", res.ctx.ab_arm)
      res = run({ sticky = "none" }, { uri = "/?ab_arm=b" })
      assert.equal("b", res.ctx.ab_arm)
      assert.equal("app_v2", res.upstream)
    end)

    it("moves a cookie user to the forced arm", function()
      local res = run(nil, { uri = "/?ab_arm=b", headers = { Cookie = "lp_ab=a" } })
      assert.equal("b", res.ctx.ab_arm)
      assert.equal("lp_ab=b; Path=/; Max-Age=86400; HttpOnly", res.headers["set-cookie"])
    end)

    it("ignores unknown arm names and can be disabled", function()
      local c = { sticky = "ip", override_header = "", override_query = "" }
      local base = run(c, { client_ip = "192.0.2.7" }).ctx.ab_arm
      assert.equal(base, run({ sticky = "ip" }, { client_ip = "192.0.2.7",
                                                  headers = { ["X-AB-Arm"] = "nope" } }).ctx.ab_arm)
      local other = base == "a" and "b" or "a"
      local res = run(c, { client_ip = "192.0.2.7", uri = "/?ab_arm=" .. other,
                           headers = { ["X-AB-Arm"] = other } })
      assert.equal(base, res.ctx.ab_arm)
    end)
  end)

  it("sets response_header to the arm name when configured", function()
    local res = run({ response_header = "X-AB-Arm" }, { headers = { Cookie = "lp_ab=b" } })
    assert.equal("b", res.headers["x-ab-arm"])
    assert.is_nil(run(nil, {}).headers["x-ab-arm"])
  end)

  it("computes FNV-1a 32", function()
    assert.equal(0x811c9dc5, ab.fnv1a(""))
    assert.equal(0xe40c292c, ab.fnv1a("a"))
    assert.equal(0xbf9cf968, ab.fnv1a("foobar"))
  end)

  it("finds cookies by exact name", function()
    assert.equal("b", ab.cookie_value("lp_ab=b", "lp_ab="))
    assert.equal("b", ab.cookie_value("xlp_ab=a; lp_ab=b; c=d", "lp_ab="))
    assert.equal("", ab.cookie_value("lp_ab=", "lp_ab="))
    assert.is_nil(ab.cookie_value("xlp_ab=a", "lp_ab="))
  end)

  it("rejects bad config", function()
    assert.error_matches(function() T.run(ab, {}) end,
      "plugins[1](ab).arms: required field missing", 1, true)
    assert.error_matches(function() T.run(ab, { arms = {} }) end,
      "plugins[1](ab).arms: length 0 is below the minimum 1", 1, true)
    assert.error_matches(function()
      T.run(ab, { arms = { { name = "a", upstream = "x" }, { name = "a", upstream = "y" } } })
    end, "plugins[1](ab).arms: arm name a is used twice", 1, true)
    assert.error_matches(function() T.run(ab, { arms = { { name = "a", upstream = "x", weight = 0 } } }) end,
      "plugins[1](ab).arms: the weights add up to 0", 1, true)
    assert.error_matches(function() T.run(ab, { arms = ARMS, sticky = "session" }) end,
      'plugins[1](ab).sticky: expected one of "cookie", "header", "ip", "none", got "session"', 1, true)
    assert.error_matches(function() T.run(ab, { arms = { { name = "a b", upstream = "x" } } }) end,
      "plugins[1](ab).arms[1].name:", 1, true)
  end)
end)
