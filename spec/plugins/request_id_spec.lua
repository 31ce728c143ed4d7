local T = require "proxy.test"
local request_id = require "request_id"

local UUID = "^%x%x%x%x%x%x%x%x%-%x%x%x%x%-4%x%x%x%-[89ab]%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$"

describe("request_id plugin", function()
  it("generates a UUID v4, sends it upstream, keeps it in ctx and echoes it", function()
    local res = T.run(request_id, nil, { uri = "/" })
    local id = res.ctx.request_id
    assert.matches(UUID, id)
    assert.equal(id, res.request_headers["X-Request-Id"])
    assert.equal(id, res.headers["X-Request-Id"])
    assert.equal(id, res.ctx.request_id)
  end)

  it("draws different ids", function()
    local seen = {}
    for _ = 1, 2000 do
      local id = request_id.uuid4()
      assert.matches(UUID, id)
      assert.is_nil(seen[id])
      seen[id] = true
    end
  end)

  it("uses xoshiro128** (reference outputs for the state 1, 2, 3, 4)", function()
    local prng = request_id._prng
    prng.set(1, 2, 3, 4)
    local out = {}
    for i = 1, 5 do
      local x = prng.next32()
      out[i] = x < 0 and x + 4294967296 or x
    end
    assert.same({ 11520, 0, 5927040, 70819200, 2031721883 }, out)
    prng.seed()
  end)

  it("spreads the hex digits evenly", function()
    local counts = {}
    for _ = 1, 2000 do
      for c in request_id.hex():gmatch(".") do counts[c] = (counts[c] or 0) + 1 end
    end
    local n = 0
    for _, v in pairs(counts) do
      n = n + 1
      assert.is_true(math.abs(v - 4000) < 400)
    end
    assert.equal(16, n)
  end)

  it("keeps a valid incoming id", function()
    local res = T.run(request_id, nil, { headers = { ["x-request-id"] = "abc-123_x.y:z" } })
    assert.equal("abc-123_x.y:z", res.ctx.request_id)
    assert.equal("abc-123_x.y:z", res.request_headers["x-request-id"])
    assert.equal("abc-123_x.y:z", res.headers["x-request-id"])
  end)

  it("replaces an invalid incoming id", function()
    for _, bad in ipairs({ "", "has space", "semi;colon", string.rep("a", 201) }) do
      local res = T.run(request_id, nil, { headers = { ["X-Request-Id"] = bad } })
      assert.matches(UUID, res.ctx.request_id)
      assert.equal(res.ctx.request_id, res.request_headers["x-request-id"])
    end
    assert.equal(string.rep("a", 200),
      T.run(request_id, nil, { headers = { ["X-Request-Id"] = string.rep("a", 200) } }).ctx.request_id)
  end)

  it("ignores the incoming id when trust_incoming is off", function()
    local res = T.run(request_id, { trust_incoming = false }, { headers = { ["X-Request-Id"] = "abc" } })
    assert.matches(UUID, res.ctx.request_id)
    assert.equal(res.ctx.request_id, res.request_headers["x-request-id"])
  end)

  it("honours header, generate and echo", function()
    local res = T.run(request_id, { header = "X-Trace", generate = "hex", echo = false })
    assert.matches("^%x+$", res.ctx.request_id)
    assert.equal(32, #res.ctx.request_id)
    assert.equal(res.ctx.request_id, res.request_headers["x-trace"])
    assert.is_nil(res.request_headers["x-request-id"])
    assert.is_nil(res.headers["x-trace"])
  end)

  it("is echoed on local answers too", function()
    local deny = { name = "deny", priority = 10, schema = { fields = {} } }
    function deny.request(req) req:respond(403) end
    local res = T.run_chain({ { request_id }, { deny } })
    assert.equal(403, res.status)
    assert.equal(res.ctx.request_id, res.headers["x-request-id"])
  end)

  it("rejects bad config", function()
    assert.error_matches(function() T.run(request_id, { generate = "uuid1" }) end,
      'plugins[1](request_id).generate: expected one of "uuid4", "hex", got "uuid1"', 1, true)
    assert.error_matches(function() T.run(request_id, { header = "bad header" }) end,
      "plugins[1](request_id).header:", 1, true)
  end)
end)
