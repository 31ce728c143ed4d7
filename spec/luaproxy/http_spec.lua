-- proxy.http (lua/luaproxy/http.lua) over a scripted socket, parsing with the engine's own
-- parser: the library lp_http_ffi (engine/lua_http.c + http1.c + llhttp), built with the
-- project; ctest passes its path in LP_HTTP_LIB.
local ffi = require "ffi"
require "luaproxy.ffi"
local http = require "luaproxy.http"

local LIB = os.getenv("LP_HTTP_LIB") or "build/spec/liblp_http_ffi.so"

describe("proxy.http", function()
  it("finds the parser library (LP_HTTP_LIB, set by ctest: build/spec/liblp_http_ffi.so)",
    function()
      local ok, lib = pcall(ffi.load, LIB)
      assert.is_true(ok, "cannot load " .. LIB .. ": build the project first (" .. tostring(lib) .. ")")
      http._use_lib(lib)
    end)

  -- A socket double with the proxy.tcp() methods the client uses: `replies` is a list of
  -- strings, one per receiveany; after the last, "closed" (or `err`).
  local sockets
  local function script(...)
    local conns = { ... }
    sockets = {}
    local n = 0
    http._set_tcp(function()
      n = n + 1
      local c = conns[n] or { refuse = "connection refused" }
      local s = { sent = {}, reused = c.reused or 0, replies = c, i = 0 }
      sockets[n] = s
      function s:settimeouts(a, b, r) self.timeouts = { a, b, r } end
      function s:connect(host, port, o)
        self.host, self.port, self.pool = host, port, o and o.pool
        if c.refuse then return nil, c.refuse end
        return true
      end
      function s:getreusedtimes() return self.reused end
      function s:sslhandshake(sess, name, verify)
        self.sni, self.verify = name, verify
        if c.tls_err then return nil, c.tls_err end
        return true
      end
      function s:send(data)
        if c.send_err then return nil, c.send_err end
        self.sent[#self.sent + 1] = data
        return #data
      end
      function s:receiveany(max)
        self.i = self.i + 1
        local r = c[self.i]
        if r then return r end
        return nil, c.err or "closed"
      end
      function s:setkeepalive(idle, size) self.kept = { idle, size }; return true end
      function s:close() self.closed = true; return true end
      return s
    end)
  end
  local function sent(i) return table.concat(sockets[i or 1].sent) end

  describe("URLs", function()
    it("splits http and https URLs", function()
      local u = http.parse_url("http://Example.com/a/b?x=1#frag")
      assert.same({ "http", "example.com", 80, "/a/b?x=1", "example.com" },
        { u.scheme, u.host, u.port, u.path, u.authority })
      u = http.parse_url("https://example.com:8443")
      assert.same({ "https", 8443, "/", "example.com:8443" }, { u.scheme, u.port, u.path, u.authority })
      u = http.parse_url("https://h?q=1")
      assert.equal("/?q=1", u.path)
      assert.equal(443, u.port)
    end)
    it("reads IPv6 literals", function()
      local u = http.parse_url("http://[::1]:8080/x")
      assert.same({ "::1", 8080, "[::1]:8080", true }, { u.host, u.port, u.authority, u.ipv6 })
      assert.equal("[2001:db8::2]", http.parse_url("http://[2001:db8::2]/").authority)
    end)
    it("refuses what it cannot send", function()
      for _, bad in ipairs({ "ftp://x/", "example.com/a", "http://", "http://a:0/", "http://a:70000/",
        "http://a:b/", "http://u:p@a/", "http://a b/", "http://a/x y", "http://a/x\r\nX: y", "http://[zz]/" }) do
        local u, err = http.parse_url(bad)
        assert.is_nil(u, bad)
        assert.is_string(err)
      end
    end)
  end)

  describe("the request", function()
    it("sends Host, User-Agent, the body's Content-Length and the headers", function()
      script({ "HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok" })
      local res = assert(http.request { method = "post", url = "http://h:81/p?a=1", body = "hello",
        headers = { ["X-A"] = "1", ["X-Multi"] = { "a", "b" }, ["Content-Length"] = "99" } })
      assert.equal(201, res.status)
      assert.equal("ok", res.body)
      local s = sent()
      assert.truthy(s:find("^POST /p%?a=1 HTTP/1.1\r\n"))
      assert.truthy(s:find("\r\nHost: h:81\r\n", 1, true))
      assert.truthy(s:find("\r\nUser-Agent: luaproxy/", 1, true))
      assert.truthy(s:find("\r\nContent-Length: 5\r\n", 1, true))
      assert.falsy(s:find("99", 1, true))
      assert.truthy(s:find("\r\nX-Multi: a\r\nX-Multi: b\r\n", 1, true))
      assert.truthy(s:find("\r\n\r\nhello$"))
      assert.equal("h", sockets[1].host)
      assert.equal(81, sockets[1].port)
    end)
    it("adds a query table, names sorted and escaped", function()
      script({ "HTTP/1.1 204 No Content\r\n\r\n" })
      assert(http.request { url = "http://h/p?z=0", query = { b = "x y", a = { 1, 2 }, f = true } })
      assert.truthy(sent():find("^GET /p%?z=0&a=1&a=2&b=x%%20y&f HTTP/1.1\r\n"))
    end)
    it("refuses header injection with nil, err and sends nothing", function()
      script({ "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" })
      for _, h in ipairs({ { ["X-A"] = "v\r\nX-Evil: 1" }, { ["X-A\r\nX-Evil"] = "1" },
        { ["X A"] = "1" }, { ["X-A"] = "a\nb" }, { ["X-A"] = { "ok", "b\rc" } } }) do
        local res, err = http.request { url = "http://h/", headers = h }
        assert.is_nil(res)
        assert.truthy(err:find("injection", 1, true), err)
      end
      assert.is_nil(sockets[1]) -- nothing was even connected
    end)
    it("sends Connection: close when keepalive is false, and closes", function()
      script({ "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" })
      assert(http.request { url = "http://h/", keepalive = false })
      assert.truthy(sent():find("\r\nConnection: close\r\n", 1, true))
      assert.is_true(sockets[1].closed)
      assert.is_nil(sockets[1].kept)
    end)
    it("raises on programmer errors", function()
      assert.has_error(function() http.request("http://h/") end)
      assert.has_error(function() http.request { url = "http://h/", body = {} } end)
      assert.has_error(function() http.request { url = "http://h/", timeout = "soon" } end)
    end)
  end)

  describe("the response", function()
    it("reads a Content-Length body split across reads, and pools the connection", function()
      script({ "HTTP/1.1 200 OK\r\nContent-Ty", "pe: text/plain\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n",
        "Content-Length: 10\r\n\r\n01234", "56789" })
      local res = assert(http.request { url = "http://h/", keepalive = { idle_timeout = 5, pool_size = 7 } })
      assert.equal("0123456789", res.body)
      assert.equal("text/plain", res.headers["Content-Type"])
      assert.equal("text/plain", res.headers.content_type)
      assert.same({ "a=1", "b=2" }, res.headers["set-cookie"])
      assert.same({ 5000, 7 }, sockets[1].kept)
      assert.equal("http:h:80", sockets[1].pool)
      assert.same({ 10000, 10000, 10000 }, sockets[1].timeouts)
    end)
    it("decodes a chunked body", function()
      script({ "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", "6\r\n world\r\n0\r\n\r\n" })
      local res = assert(http.request { url = "http://h/" })
      assert.equal("hello world", res.body)
      assert.is_table(sockets[1].kept)
    end)
    it("reads a body that runs to close, and does not pool it", function()
      script({ "HTTP/1.1 200 OK\r\n\r\nall ", "of it" })
      local res = assert(http.request { url = "http://h/" })
      assert.equal("all of it", res.body)
      assert.is_nil(sockets[1].kept)
      assert.is_true(sockets[1].closed)
    end)
    it("skips 1xx, and gives 204, 304 and HEAD no body", function()
      script({ "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\nHTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n" })
      local res = assert(http.request { url = "http://h/" })
      assert.same({ 204, "", "1" }, { res.status, res.body, res.headers["x-a"] })
      assert.is_nil(res.headers.link)
      script({ "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n" })
      res = assert(http.request { url = "http://h/" })
      assert.same({ 304, "" }, { res.status, res.body })
      assert.is_table(sockets[1].kept)
      script({ "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n" })
      res = assert(http.request { method = "HEAD", url = "http://h/" })
      assert.same({ 200, "", "10" }, { res.status, res.body, res.headers["content-length"] })
      assert.is_table(sockets[1].kept)
    end)
    it("does not pool when the server says close, or sends more than one answer", function()
      script({ "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx" })
      assert(http.request { url = "http://h/" })
      assert.is_nil(sockets[1].kept)
      script({ "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxHTTP/1.1 200 OK\r\n" })
      assert(http.request { url = "http://h/" })
      assert.is_nil(sockets[1].kept)
      script({ "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx" })
      assert(http.request { url = "http://h/" })
      assert.is_nil(sockets[1].kept)
    end)
    it("refuses invalid responses with nil, err", function()
      for _, bad in ipairs({ "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        "HTTP/1.1 200 OK\nContent-Length: 0\n\n", "SSH-2.0-OpenSSH\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n" }) do
        script({ bad })
        local res, err = http.request { url = "http://h/" }
        assert.is_nil(res)
        assert.truthy(err:find("^invalid response"), err)
        assert.is_true(sockets[1].closed)
      end
    end)
    it("reports a close mid-body, a timeout and a refused connection", function()
      script({ "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123" })
      local res, err = http.request { url = "http://h/" }
      assert.is_nil(res)
      assert.truthy(err:find("closed before the body was complete", 1, true), err)
      script({ err = "timeout" })
      res, err = http.request { url = "http://h:9/", timeout = 0.5 }
      assert.is_nil(res)
      assert.equal("timeout reading from h:9", err)
      assert.same({ 500, 500, 500 }, sockets[1].timeouts)
      script({ refuse = "connection refused" })
      res, err = http.request { url = "http://h:9/" }
      assert.is_nil(res)
      assert.equal("connect to h:9: connection refused", err)
    end)
    it("limits a buffered body to max_body", function()
      script({ "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789" })
      local res, err = http.request { url = "http://h/", max_body = 4 }
      assert.is_nil(res)
      assert.truthy(err:find("max_body", 1, true), err)
    end)
    it("sends an idempotent request again when a pooled connection was closed while idle", function()
      script({ reused = 3 }, { "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" })
      local res = assert(http.request { url = "http://h/" })
      assert.equal("ok", res.body)
      assert.equal(2, #sockets)
      script({ reused = 3 }, { "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" })
      local _, err = http.request { method = "POST", url = "http://h/", body = "x" }
      assert.equal("connection closed by h:80", err)
      assert.equal(1, #sockets)
    end)
  end)

  describe("TLS", function()
    it("handshakes with SNI and verification on a new connection only", function()
      script({ "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" })
      assert(http.request { url = "https://secure.test:8443/" })
      assert.same({ "secure.test", true }, { sockets[1].sni, sockets[1].verify })
      assert.equal("https:secure.test:8443:secure.test:1", sockets[1].pool)
      script({ reused = 1, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" })
      assert(http.request { url = "https://secure.test/", ssl_verify = false })
      assert.is_nil(sockets[1].sni)
      assert.equal("https:secure.test:443:secure.test:0", sockets[1].pool)
      script({ tls_err = "certificate verify failed" })
      local _, err = http.request { url = "https://secure.test/" }
      assert.equal("TLS handshake with secure.test:443: certificate verify failed", err)
    end)
  end)

  describe("streaming", function()
    it("returns after the head and reads the body chunk by chunk", function()
      script({ "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "3\r\nabc\r\n", "2\r\nde\r\n0\r\n\r\n" })
      local res = assert(http.request_stream { url = "http://h/" })
      assert.equal(200, res.status)
      assert.is_nil(res.body)
      local got = {}
      for chunk in res:body_reader() do got[#got + 1] = chunk end
      assert.same({ "abc", "de" }, got)
      assert.is_table(sockets[1].kept)
    end)
    it("gives a small body read with the head through the reader too", function()
      script({ "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc" })
      local res = assert(http.request { url = "http://h/", stream = true })
      assert.equal("abc", res:read_body())
    end)
    it("reports a cut body as nil, err and closes", function()
      script({ "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", "0123" })
      local res = assert(http.request_stream { url = "http://h/" })
      local reader = res:body_reader()
      assert.equal("0123", reader())
      local chunk, err = reader()
      assert.is_nil(chunk)
      assert.truthy(err:find("closed before the body was complete", 1, true))
      assert.is_true(sockets[1].closed)
    end)
    it("has no body limit", function()
      local big = string.rep("x", 100000)
      script({ "HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n" .. big, big })
      local res = assert(http.request_stream { url = "http://h/", max_body = 10 })
      assert.equal(200000, #res:read_body())
    end)
  end)

  describe("over proxy.test's fake proxy.tcp", function()
    it("talks to a scripted peer: receiveany, keep-alive pool, a second call reusing it", function()
      local T = require "proxy.test"
      T.reset()
      local seen = {}
      T.tcp_peer("api.test", 80, function(peer)
        for n = 1, 2 do
          local line = peer:receive("*l")
          if not line then return end
          seen[#seen + 1] = line
          repeat local h = peer:receive("*l") until h == ""
          peer:send("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n")
          peer:send("1\r\n" .. n .. "\r\n0\r\n\r\n")
        end
      end)
      http._set_tcp(T.proxy.tcp)
      local _, bodies = T.call(function()
        local a = assert(http.request { url = "http://api.test/a" })
        local b = assert(http.request { url = "http://api.test/b" })
        return { a.body, b.body }
      end)
      assert.same({ "hi1", "hi2" }, bodies)
      assert.same({ "GET /a HTTP/1.1", "GET /b HTTP/1.1" }, seen)
    end)
  end)
end)
