-- The fake proxy.tcp() of proxy.test (lua/proxy/test_tcp.lua), which mirrors the engine's
-- (lua/luaproxy/tcp.lua; tests/integration/test_lua_tcp.py checks the engine itself).
local T = require "proxy.test"

-- Runs fn(req) as a request phase; returns what it returned.
local function in_request(fn, req)
  req = req or T.request({ uri = "/" })
  local plugin = { name = "p", request = function(r) return fn(r) end }
  local _, ret = T.phase(plugin, "request", req, {})
  return ret, req
end

local function echo_line(peer)
  while true do
    local line = peer:receive("*l")
    if not line then return end
    peer:send(line .. "\r\n")
  end
end

describe("proxy.test's proxy.tcp", function()
  before_each(function() T.reset() end)

  it("sends and receives lines, sizes and everything until the peer closes", function()
    local srv = T.tcp_peer("10.0.0.1", 7000, function(peer)
      local cmd = peer:receive()
      peer:send("hello " .. cmd .. "\r\nabcdef")
      peer:close()
    end)
    local out = in_request(function()
      local s = proxy.tcp()
      assert(s:connect("10.0.0.1", 7000))
      assert.equal(7, s:send({ "WOR", { "LD", 1 }, "\n" }))
      local line = assert(s:receive())
      local three = assert(s:receive(3))
      local rest = assert(s:receive("*a"))
      local none, err = s:receive()
      return { line, three, rest, tostring(none), err }
    end)
    assert.same({ "hello WORLD1", "abc", "def", "nil", "closed" }, out)
    assert.equal(1, srv.connections)
    assert.equal("WORLD1\n", srv.sent[1])
  end)

  it("refuses connections nobody listens for and returns scripted connect errors", function()
    T.tcp_peer("slow.test", 80, "timeout")
    T.tcp_peer("gone.test", 80, "host not found: gone.test")
    local t0 = T.now()
    local out = in_request(function()
      local a, aerr = proxy.tcp():connect("10.9.9.9", 1)
      local s = proxy.tcp()
      s:settimeouts(1500, nil, nil)
      local b, berr = s:connect("slow.test", 80)
      local c, cerr = proxy.tcp():connect("gone.test", 80)
      return { tostring(a), aerr, tostring(b), berr, tostring(c), cerr }
    end)
    assert.same({ "nil", "connection refused", "nil", "timeout", "nil",
      "host not found: gone.test" }, out)
    assert.equal(t0 + 1.5, T.now())
  end)

  it("times out a receive the peer never answers, on the fake clock, keeping what came", function()
    T.tcp_peer("10.0.0.1", 7000, function(peer)
      peer:receive()
      peer:send("par")
      peer:receive() -- waits for the plugin, which waits for it
    end)
    local t0 = T.now()
    local out = in_request(function()
      local s = proxy.tcp()
      s:settimeout(250)
      assert(s:connect("10.0.0.1", 7000))
      assert(s:send("go\n"))
      return { s:receive() }
    end)
    assert.same({ nil, "timeout", "par" }, out)
    assert.equal(t0 + 0.25, T.now())
  end)

  it("reports a peer closing mid-reply with the partial data", function()
    T.tcp_peer("10.0.0.1", 7000, function(peer) peer:send("half a li") end)
    local out = in_request(function()
      local s = proxy.tcp()
      assert(s:connect("10.0.0.1", 7000))
      local a, b, c = s:receive()
      local d, e = s:send("x")
      return { a, b, c, d, e }
    end)
    assert.same({ nil, "closed", "half a li", nil, "closed" }, out)
  end)

  it("reads until a pattern, whole or in chunks of a size", function()
    T.tcp_peer("10.0.0.1", 7000, function(peer)
      peer:send("one--two--abcdefgh--z\n")
    end)
    local out = in_request(function()
      local s = proxy.tcp()
      assert(s:connect("10.0.0.1", 7000))
      local a = s:receiveuntil("--")()
      local b = s:receiveuntil("--", { inclusive = true })()
      local it = s:receiveuntil("--")
      local chunks = {}
      while true do
        local d, err = it(3)
        if not d then assert.is_nil(err) break end
        chunks[#chunks + 1] = d
      end
      return { a, b, table.concat(chunks, ","), (s:receive()) }
    end)
    assert.same({ "one", "two--", "abc,def,gh", "z" }, out)
  end)

  it("pools connections with setkeepalive: the next connect reuses the same peer", function()
    local srv = T.tcp_peer("redis.test", 6379, echo_line)
    local function use()
      return in_request(function()
        local s = proxy.tcp()
        assert(s:connect("redis.test", 6379))
        local n = s:getreusedtimes()
        assert(s:send("ping\n"))
        local line = assert(s:receive())
        assert(s:setkeepalive(10000, 2))
        local _, err = s:send("x")
        return { n, line, err }
      end)
    end
    assert.same({ 0, "ping", "closed" }, use())
    assert.same({ 1, "ping", "closed" }, use())
    assert.equal(1, srv.connections)
    -- past the idle timeout the pooled connection is gone
    T.advance(11)
    assert.same({ 0, "ping", "closed" }, use())
    assert.equal(2, srv.connections)
  end)

  it("refuses setkeepalive with unread data", function()
    T.tcp_peer("10.0.0.1", 7000, function(peer) peer:send("a\nb\n") peer:receive() end)
    local out = in_request(function()
      local s = proxy.tcp()
      assert(s:connect("10.0.0.1", 7000))
      assert(s:receive())
      return { s:setkeepalive() }
    end)
    assert.same({ nil, "unread data in buffer" }, out)
  end)

  it("keeps sockets to their request: closed when it ends, refused to another one", function()
    T.tcp_peer("10.0.0.1", 7000, echo_line)
    local kept
    local req1 = T.request({ uri = "/" })
    in_request(function()
      kept = proxy.tcp()
      assert(kept:connect("10.0.0.1", 7000))
      return true
    end, req1)
    local other = { in_request(function() return { kept:send("x\n") } end) }
    assert.is_nil(other[1][1])
    assert.matches("^bad request", other[1][2])
    T.finish(req1)
    local after = in_request(function() return { kept:send("x\n") } end)
    assert.same({ nil, "closed" }, after)
  end)

  it("closes what init_worker opened when it returns", function()
    T.tcp_peer("10.0.0.1", 7000, echo_line)
    local kept
    local plugin = { name = "p", init_worker = function()
      kept = proxy.tcp()
      assert(kept:connect("10.0.0.1", 7000))
      assert(kept:send("hi\n"))
      assert.equal("hi", kept:receive())
    end }
    T.phase(plugin, "init_worker", nil, {})
    local out = in_request(function() return { kept:receive() } end)
    assert.same({ nil, "closed", "" }, out)
  end)

  it("does TLS handshakes the peer sees, and scripted TLS failures", function()
    local srv = T.tcp_peer("api.test", 443, echo_line)
    T.tcp_peer("bad.test", 443, echo_line, { tls_error = "handshake failed: certificate verify failed" })
    local out = in_request(function()
      local s = proxy.tcp()
      assert(s:connect("api.test", 443))
      local sess = assert(s:sslhandshake(nil, "api.test", true))
      assert(s:send("x\n"))
      local b = proxy.tcp()
      assert(b:connect("bad.test", 443))
      local ok, err = b:sslhandshake(false, "bad.test", true)
      return { type(sess), s:receive(), tostring(ok), err }
    end)
    assert.same({ "table", "x", "nil", "handshake failed: certificate verify failed" }, out)
    assert.equal("api.test", srv.peers[1].server_name)
    assert.is_true(srv.peers[1].ssl_verify)
  end)

  it("raises for misuse, naming the caller", function()
    local s = proxy.tcp()
    local ok, err = pcall(s.connect, s, 42, 80)
    assert.is_false(ok)
    assert.matches("tcp_spec.lua:%d+: sock:connect%(%): expected a host string", err)
    ok, err = pcall(s.receive, s, "*x")
    assert.is_false(ok)
    assert.matches("expected a size", err)
    ok, err = pcall(s.send, s, { {}, true })
    assert.is_false(ok)
    assert.matches("only strings, numbers and tables", err)
  end)

  it("works in a response_body filter, which may wait", function()
    T.tcp_peer("10.0.0.1", 7000, echo_line)
    local res = T.run({ name = "p", priority = 1, response_body = function(r, chunk)
      if chunk == "" then return chunk end
      local s = proxy.tcp()
      assert(s:connect("10.0.0.1", 7000))
      assert(s:send(chunk:upper() .. "\n"))
      return (assert(s:receive()))
    end }, {}, { uri = "/" }, { body = "body" })
    assert.equal("BODY", res.body)
  end)
end)
