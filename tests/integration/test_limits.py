#!/usr/bin/env python3
"""Bounds a client cannot push past: limits.max_connections per worker, and the table of
req:set_target() destinations (least recently used entries nobody holds make room)."""

import os
import socket
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lua"))
import luatest as L  # noqa: E402
from luatest import H  # noqa: E402


class MaxConnectionsTest(H.ProxyTestCase):
    @classmethod
    def setUpClass(cls):
        cls.origin = cls.start_origin("o")
        cls.proxy = cls.start_proxy(
            {"o": H.upstream(cls.origin.address())},
            [{"match": {"prefix": "/"}, "upstream": "o"}],
            workers=1, limits={"max_connections": 4})

    def test_connections_beyond_the_limit_are_closed(self):
        held = [H.Client(self.proxy.port) for _ in range(4)]
        try:
            # The four are served (so the proxy has surely accepted them all).
            for c in held:
                self.assertEqual(c.request("GET", "/").status, 200)
            extra = H.Client(self.proxy.port)
            closed, _ = extra.wait_closed(timeout=H.T(5))
            self.assertTrue(closed, "a fifth connection must be closed")
            extra.close()
            H.wait_for(lambda: "limits.max_connections (4) reached" in self.proxy.stderr(),
                       H.T(5), what="the warning")
        finally:
            for c in held:
                c.close()
        # Once they are gone, new connections are served again.
        def served():
            try:
                return H.get(self.proxy.port, "/").status == 200
            except Exception:  # noqa: BLE001
                return False
        H.wait_for(served, H.T(10), what="a connection served after the others closed")


class SetTargetTableTest(L.LuaTestCase):
    @classmethod
    def setUpClass(cls):
        cls.origin = cls.start_origin("o")
        handler = H.LuaRaw(r'''function(req)
          local port = tonumber(req:query("port"))
          req:set_target("127.0.0.1", port)
        end''')
        cls.proxy = cls.start_lua_proxy(
            {"o": H.upstream(cls.origin.address())},
            [{"match": {"prefix": "/"}, "upstream": "o", "handler": handler}],
            workers=1, timeouts={"connect": 1})

    def test_more_destinations_than_the_table_holds(self):
        # 1100 distinct destinations (the table holds 1024): each refused connect is a 502,
        # never a 500 from a full table, and the origin is still reachable afterwards.
        base = 20000
        for i in range(1100):
            r = H.get(self.proxy.port, "/?port=%d" % (base + i))
            self.assertEqual(r.status, 502, (i, r.status, r.body[:200]))
        r = H.get(self.proxy.port, "/fixed?size=3&port=%d" % self.origin.port)
        self.assertEqual(r.status, 200)
        self.assertNotIn("destinations in use at once", self.proxy.stderr())


if __name__ == "__main__":
    H.main()
