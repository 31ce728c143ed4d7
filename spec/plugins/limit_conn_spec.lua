local T = require "proxy.test"
local limit_conn = require "limit_conn"

describe("limit_conn plugin", function()
  before_each(function()
    T.reset()
    T.shared_dicts({ limit_conn = "1m" })
  end)

  -- A request stopped after its request phase (still "in flight"), and its log phase later.
  local function start(conf, spec)
    local compiled = T.conf(limit_conn, conf)
    T.phase(limit_conn, "init_worker", nil, compiled) -- as the engine does before serving
    local req = T.request(spec or { client_ip = "192.0.2.1" })
    local responded = T.phase(limit_conn, "request", req, compiled)
    return req, responded, compiled
  end
  local function finish(req, compiled)
    req:set_phase("log")
    T.phase(limit_conn, "log", req, compiled)
  end

  it("allows max in flight per key, refuses the next with 503, and frees slots in the log phase", function()
    local conf = { max = 2 }
    local a, ra, ca = start(conf)
    local b, rb, cb = start(conf)
    local c, rc = start(conf)
    assert.is_falsy(ra)
    assert.is_falsy(rb)
    assert.is_truthy(rc)
    assert.equal(503, c._status)
    assert.is_true(c.ctx.conn_limited)
    -- Another address has slots of its own.
    local _, rd = start(conf, { client_ip = "192.0.2.2" })
    assert.is_falsy(rd)
    finish(a, ca)
    local _, re = start(conf)
    assert.is_falsy(re)
    finish(b, cb)
    finish(b, cb) -- a second log phase gives nothing back twice
    assert.equal(1, proxy.shared.limit_conn:get(ca.ns .. "ip:192.0.2.1"))
  end)

  it("gives the slot back whatever the request's end, as T.run's log phase shows", function()
    for _ = 1, 5 do
      local res = T.run(limit_conn, { max = 1 }, { client_ip = "192.0.2.9" }, { status = 502 })
      assert.is_false(res.responded)
    end
  end)

  it("can answer 429 and count in dry_run only", function()
    local conf = { max = 1, status = 429 }
    start(conf)
    local req = start(conf)
    assert.equal(429, req._status)
    local dry = { max = 1, dry_run = true, id = "dry" }
    start(dry)
    local _, responded = start(dry)
    assert.is_falsy(responded)
    assert.same({ "limit_conn: would refuse dry|ip|ip:192.0.2.1 (dry run)" }, T.log_lines("info"))
  end)

  it("rejects a config without its dict or max", function()
    assert.has_error(function() T.run(limit_conn, {}) end)
    assert.error_matches(function() T.run(limit_conn, { max = 1, dict = "nope" }) end,
      'no shared dict "nope"', 1, true)
  end)
end)
