#!/usr/bin/env python3
"""The bundled `transform` plugin (docs/plugins/transform.md) in the real engine, against a
Python origin that echoes what it received as JSON: request and response headers, query
arguments, request JSON bodies (Content-Length and chunked, nested paths, templates from
headers, the client address and req.ctx.consumer) sent with the new Content-Length and no
Transfer-Encoding; malformed JSON and bodies over max_body passed unchanged, or 413 when
configured; response JSON changed across chunks with the engine's framing, oversized and
malformed ones passed whole."""

import http.server
import json
import os
import socket
import socketserver
import sys
import threading
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402
from test_mirror import read_body  # noqa: E402

R = H.LuaRaw


class Echo:
    """/echo: JSON of method, path, headers, body (as text) received. /json?n=N: a JSON
    document with an "internal" field and N bytes of padding, sent chunked in 1000-byte
    pieces. /bad: a malformed JSON body."""

    def __init__(self):
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _send(self, body, ctype="application/json", chunked=False):
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("X-Internal", "secret")
                self.send_header("Server", "echo")
                if chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for i in range(0, len(body), 1000):
                        part = body[i:i + 1000]
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

            def _handle(self):
                body = read_body(self)
                path, _, query = self.path.partition("?")
                if path.endswith("/json"):
                    n = int(urllib.parse.parse_qs(query)["n"][0])
                    doc = {"internal": 1, "data": {"pad": "p" * n, "list": [1, 2, 3]}}
                    self._send(json.dumps(doc).encode(), chunked=True)
                elif path.endswith("/bad"):
                    self._send(b'{"internal": 1, "broken": ')
                else:
                    self._send(json.dumps({
                        "method": self.command, "path": self.path, "body": body.decode(),
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                    }).encode())

            do_GET = do_POST = do_PUT = _handle

        class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True

            def handle_error(self, request, client_address):
                pass

        self.server = S(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


# A stand-in for an auth plugin: sets req.ctx.consumer from a header (priority above
# transform's 700).
CONSUMER_PLUGIN = r'''
return { name = "fake_consumer", priority = 1000, schema = { fields = {} },
  request = function(req)
    local id = req:header("x-consumer")
    if id then req.ctx.consumer = { id = id } end
  end }
'''

# req:set_body() alone, without req:body(): the client's body is read and dropped.
SET_BODY_PLUGIN = r'''
return { name = "set_body_test", priority = 10, schema = { fields = {} },
  request = function(req)
    local b = req:header("x-new-body")
    if b then req:set_body(b) end
  end }
'''


class TransformTest(H.ProxyTestCase):
    @classmethod
    def setUpClass(cls):
        cls.echo = Echo()
        cls.addClassCleanup(cls.echo.stop)
        d = H.Workdir.new("transform-plugins")
        with open(os.path.join(d, "fake_consumer.lua"), "w") as f:
            f.write(CONSUMER_PLUGIN)
        with open(os.path.join(d, "set_body_test.lua"), "w") as f:
            f.write(SET_BODY_PLUGIN)
        full = {"name": "transform",
                "request": {
                    "headers": {"remove": ["X-Drop"], "rename": {"X-Old": "X-New"},
                                "replace": {"X-Keep": "was replaced"},
                                "add": {"X-Client": "$client_ip", "X-Who": "$consumer_id"}},
                    "query": {"remove": ["debug"], "rename": {"q": "query"},
                              "add": {"src": "$header_x_src"}},
                    "json": {"remove": ["secret", "items.0"],
                             "rename": {"a.b": "a.c.d"},
                             "set": {"meta.user": "$header_x_user", "meta.version": 2}}},
                "response": {
                    "headers": {"remove": ["Server"], "rename": {"X-Internal": "X-Was-Internal"},
                                "add": {"X-Transformed": "yes"}},
                    "json": {"remove": ["internal"], "set": {"data.by": "proxy"}}}}
        small = {"name": "transform", "max_body": 64,
                 "request": {"json": {"set": {"x": 1}}},
                 "response": {"json": {"set": {"x": 1}}}}
        reject = dict(small, on_oversize="reject")
        routes = [
            {"match": {"prefix": "/t/"}, "upstream": "echo",
             "plugins": [{"name": "fake_consumer"}, full]},
            {"match": {"prefix": "/small/"}, "upstream": "echo", "plugins": [small]},
            {"match": {"prefix": "/reject/"}, "upstream": "echo", "plugins": [reject]},
            {"match": {"prefix": "/sp/"}, "upstream": "echo", "strip_prefix": True,
             "plugins": [{"name": "transform",
                          "request": {"query": {"remove": ["b"], "add": {"c": "3"}}}}]},
            {"match": {"prefix": "/set/"}, "upstream": "echo",
             "plugins": [{"name": "set_body_test"}]},
        ]
        cls.proxy = cls.start_proxy({"echo": H.upstream(cls.echo.port)}, routes,
                                    lua={"plugin_paths": [d]},
                                    limits={"max_body_size": 2 * 1024 * 1024})

    def echo_of(self, r):
        self.assertEqual(r.status, 200, r)
        return r.json()

    def post(self, path, body, headers=None, chunked=None):
        hdrs = {"Content-Type": "application/json"}
        hdrs.update(headers or {})
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        if chunked:
            hdrs["Transfer-Encoding"] = "chunked"
            body = H.chunked(body, sizes=chunked)
        return H.get(self.proxy.port, path, method="POST", headers=hdrs, body=body)

    DOC = {"secret": "s", "items": [{"id": 1}, {"id": 2}], "a": {"b": {"deep": True}},
           "keep": "k"}

    def check_request_doc(self, e):
        got = json.loads(e["body"])
        self.assertEqual(got, {"items": [{"id": 2}], "a": {"c": {"d": {"deep": True}}},
                               "keep": "k", "meta": {"user": "ann", "version": 2}})
        self.assertEqual(e["headers"]["content-length"], str(len(e["body"].encode())))
        self.assertNotIn("transfer-encoding", e["headers"])

    def test_1_headers_and_query(self):
        r = H.get(self.proxy.port, "/t/x?debug=1&q=a%20b&keep=1",
                  headers={"X-Drop": "1", "X-Old": "o", "X-Keep": "k", "X-Src": "s/1",
                           "X-Consumer": "c-9"})
        self.assertEqual(r.header("X-Transformed"), "yes")
        self.assertIsNone(r.header("Server"))
        self.assertEqual(r.header("X-Was-Internal"), "secret")
        e = self.echo_of(r)
        h = e["headers"]
        self.assertNotIn("x-drop", h)
        self.assertEqual(h["x-new"], "o")
        self.assertNotIn("x-old", h)
        self.assertEqual(h["x-keep"], "was replaced")
        self.assertEqual(h["x-client"], "127.0.0.1")
        self.assertEqual(h["x-who"], "c-9")
        self.assertEqual(e["path"], "/t/x?query=a%20b&keep=1&src=s%2F1")

    def test_1b_query_change_keeps_strip_prefix(self):
        e = self.echo_of(H.get(self.proxy.port, "/sp/x/y?a=1&b=2"))
        self.assertEqual(e["path"], "/x/y?a=1&c=3")
        e = self.echo_of(H.get(self.proxy.port, "/sp/x?b=2"))
        self.assertEqual(e["path"], "/x?c=3")

    def test_2_request_json_content_length(self):
        e = self.echo_of(self.post("/t/j", self.DOC, {"X-User": "ann"}))
        self.check_request_doc(e)

    def test_3_request_json_chunked(self):
        e = self.echo_of(self.post("/t/j", self.DOC, {"X-User": "ann"}, chunked=[3, 17]))
        self.check_request_doc(e)

    def test_3b_replaced_bodies_on_one_keepalive_connection(self):
        body = json.dumps(self.DOC).encode()
        with H.Client(self.proxy.port) as c:
            for i in range(3):
                hdrs = {"Content-Type": "application/json", "X-User": "ann"}
                if i == 1:
                    hdrs["Transfer-Encoding"] = "chunked"
                    r = c.request("POST", "/t/k", hdrs, H.chunked(body, sizes=[5]))
                else:
                    r = c.request("POST", "/t/k", hdrs, body)
                self.check_request_doc(self.echo_of(r))

    def test_3c_set_body_drops_the_clients_body(self):
        big = b"c" * (1024 * 1024 + 17)
        with H.Client(self.proxy.port) as c:
            # A 1 MiB chunked upload replaced by 5 bytes; then a GET given a body; then a
            # plain request: the connection stays in step.
            r = c.request("POST", "/set/a", {"X-New-Body": "short",
                                             "Transfer-Encoding": "chunked"},
                          H.chunked(big, sizes=[65536, 1000]))
            e = self.echo_of(r)
            self.assertEqual(e["body"], "short")
            self.assertEqual(e["headers"]["content-length"], "5")
            self.assertNotIn("transfer-encoding", e["headers"])
            e = self.echo_of(c.request("GET", "/set/b", {"X-New-Body": "{}"}))
            self.assertEqual((e["method"], e["body"]), ("GET", "{}"))
            e = self.echo_of(c.request("POST", "/set/c", {}, b"as sent"))
            self.assertEqual(e["body"], "as sent")
        # The client's body still counts against limits.max_body_size.
        # (The head alone: the 413 comes before any body byte is read.)
        with H.Client(self.proxy.port) as c:
            c.send(H.build_request("POST", "/set/d", {"X-New-Body": "x",
                                                      "Content-Length": str(3 << 20)}))
            r = c.read_response("POST")
        self.assertEqual(r.status, 413, r)

    def test_4_request_json_malformed_passes(self):
        body = b'{"secret": "s", "broken": '
        e = self.echo_of(self.post("/t/j", body))
        self.assertEqual(e["body"].encode(), body)
        self.proxy.wait_log("not a JSON object or array: passed unchanged")

    def test_5_request_json_oversized(self):
        big = {"pad": "x" * 200}
        e = self.echo_of(self.post("/small/j", big))
        self.assertEqual(json.loads(e["body"]), big)
        self.proxy.wait_log("request body over max_body (64 bytes): passed unchanged")
        r = self.post("/reject/j", big)
        self.assertEqual(r.status, 413, r)
        r = self.post("/reject/j", big, chunked=[10])
        self.assertEqual(r.status, 413, r)
        e = self.echo_of(self.post("/reject/j", {"a": 1}))
        self.assertEqual(json.loads(e["body"]), {"a": 1, "x": 1})

    def test_6_response_json_chunked(self):
        r = H.get(self.proxy.port, "/t/json?n=5000")
        self.assertEqual(r.status, 200, r)
        doc = r.json()
        self.assertNotIn("internal", doc)
        self.assertEqual(doc["data"]["by"], "proxy")
        self.assertEqual(doc["data"]["list"], [1, 2, 3])
        self.assertEqual(len(doc["data"]["pad"]), 5000)

    def test_7_response_oversized_and_malformed_pass_whole(self):
        r = H.get(self.proxy.port, "/small/json?n=5000")
        self.assertEqual(r.status, 200, r)
        doc = r.json()
        self.assertEqual(doc["internal"], 1)
        self.assertNotIn("x", doc)
        self.assertEqual(len(doc["data"]["pad"]), 5000)
        r = H.get(self.proxy.port, "/t/bad")
        self.assertEqual(r.body, b'{"internal": 1, "broken": ')
        self.assertAlive()


if __name__ == "__main__":
    H.main()
