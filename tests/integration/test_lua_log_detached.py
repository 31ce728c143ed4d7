#!/usr/bin/env python3
"""A log phase that waits (docs/lua-api.md, Phases) runs detached from its connection:
the next request on the same keep-alive connection is answered at once, the log phase
still reads its own request (status, URI, client address, scheme) when it resumes, many
of them at once end cleanly, and a stopping worker ends the ones still waiting at its
drain deadline."""

import os
import signal
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lua"))
import luatest as L  # noqa: E402
from luatest import H  # noqa: E402

PLUGINS = {
    "plugins/slowlog.lua": r'''
local P = { name = "slowlog", priority = 10, schema = { fields = {} } }
function P.log(req)
  local secs = tonumber(req:query("sleep") or "0.4")
  proxy.sleep(secs)
  proxy.log.warn(string.format("SLOWLOG uri=%s status=%d ip=%s scheme=%s", req:uri(),
    req:status(), tostring(req:client_ip()), req:scheme()))
end
return P
''',
}


def route(prefix, plugins=None, **kw):
    r = {"match": {"prefix": prefix}, "upstream": "o", "strip_prefix": True}
    if plugins:
        r["plugins"] = [{"name": p} for p in plugins]
    r.update(kw)
    return r


class DetachedLogTest(L.LuaTestCase):
    @classmethod
    def setUpClass(cls):
        cls.origin = cls.start_origin("o")
        ups = {"o": H.upstream(cls.origin.address())}
        cls.proxy = cls.start_lua_proxy(ups, [route("/slow", ["slowlog"]), route("/")],
                                        files=PLUGINS, workers=1, timeouts={"drain": 1})

    def test_next_request_on_the_connection_does_not_wait(self):
        with H.Client(self.proxy.port) as c:
            r = c.request("GET", "/slow/fixed?size=3&sleep=2")
            self.assertEqual(r.status, 200)
            r = c.request("GET", "/fixed?size=2")
            self.assertEqual(r.status, 200)
            # Answered while the first request's log phase still sleeps.
            self.assertNotIn("SLOWLOG uri=/slow/fixed?size=3&sleep=2", self.proxy.stderr())
        self.wait_log("SLOWLOG uri=/slow/fixed?size=3&sleep=2 status=200 ip=127.0.0.1 "
                      "scheme=http", timeout=H.T(10))

    def test_many_detached_log_phases(self):
        n = 200

        def one(i):
            with H.Client(self.proxy.port) as c:
                for k in range(3):
                    r = c.request("GET", "/slow/fixed?size=1&sleep=0.05&n=%d-%d" % (i, k))
                    if r.status != 200:
                        return r.status
            return 200

        got = L.parallel(one, n // 3)
        self.assertEqual(set(got), {200}, got)
        H.wait_for(lambda: self.proxy.log_count("SLOWLOG uri=/slow/fixed?size=1&sleep=0.05")
                   >= 3 * (n // 3), H.T(10), what="every log phase to finish")


class DetachedLogShutdownTest(L.LuaTestCase):
    @classmethod
    def setUpClass(cls):
        cls.origin = cls.start_origin("o")
        ups = {"o": H.upstream(cls.origin.address())}
        cls.proxy = cls.start_lua_proxy(ups, [route("/slow", ["slowlog"])], files=PLUGINS,
                                        workers=1, timeouts={"drain": 1})

    def test_stop_ends_a_waiting_log_phase_at_the_drain_deadline(self):
        r = H.get(self.proxy.port, "/slow/fixed?size=1&sleep=600")
        self.assertEqual(r.status, 200)
        self.proxy.signal(signal.SIGTERM)
        self.proxy.wait_exit(H.T(10))  # drain is 1 s: it does not wait for the 600 s sleep
        self.assertIn("a log phase still waiting at the drain deadline is stopped",
                      self.proxy.stderr())
        self.assertNotIn("SLOWLOG", self.proxy.stderr())


if __name__ == "__main__":
    H.main()
