#!/usr/bin/env python3
"""Shared dicts (`proxy.shared.NAME`, docs/lua-api.md): exact incr totals from 4 workers
(4 x 100k increments), LRU eviction with `forcible` seen from Lua, TTL expiry, usage in
GET /status, content kept across a reload, a resized dict keeping what fits, and a dropped
dict gone.

Route handlers (Lua in the config) do the dict work and answer JSON."""

import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "reload"))
import reloadtest as RT  # noqa: E402
from reloadtest import H  # noqa: E402

R = H.LuaRaw

# GET /loop?n=N: N increments of "total" in one request; answers the worker id.
LOOP = R('''function(req)
  local d = proxy.shared.counters
  local n = tonumber(req:query("n"))
  for _ = 1, n do
    local v, err = d:incr("total", 1, 0)
    if not v then return req:respond(500, err) end
  end
  return req:respond(200, tostring(proxy.worker_id()))
end''')

# GET /hit: one increment of "hits" per request.
HIT = R('''function(req)
  local v, err = proxy.shared.counters:incr("hits", 1, 0)
  return req:respond(v and 200 or 500, tostring(v or err))
end''')

# GET /get?dict=D&key=K: the value (JSON null when none).
GET = R('''function(req)
  local d = proxy.shared[req:query("dict")]
  if not d then return req:respond(404, "no dict") end
  return req:respond(200, proxy.json.encode({ value = d:get(req:query("key")) }))
end''')

# GET /set?dict=D&key=K&value=V&ttl=T
SET = R('''function(req)
  local d = proxy.shared[req:query("dict")]
  if not d then return req:respond(404, "no dict") end
  local ok, err, forcible = d:set(req:query("key"), req:query("value"),
                                  tonumber(req:query("ttl") or "0"))
  return req:respond(200, proxy.json.encode({ ok = ok, err = err, forcible = forcible }))
end''')

# GET /fill?n=N&size=S&prefix=P: sets P1..PN to S bytes each in "small"; answers where the
# first forcible came, and which keys are left.
FILL = R('''function(req)
  local d = proxy.shared.small
  local n, size, prefix = tonumber(req:query("n")), tonumber(req:query("size")), req:query("prefix")
  local first_forcible, safe_err = nil, nil
  for i = 1, n do
    local ok, err, forcible = d:set(prefix .. i, string.rep("v", size))
    if not ok then return req:respond(500, err) end
    if forcible and not first_forcible then first_forcible = i end
  end
  local ok, err = d:safe_set(prefix .. "safe", string.rep("v", size))
  local left = {}
  for i = 1, n do if d:get(prefix .. i) then left[#left + 1] = i end end
  return req:respond(200, proxy.json.encode({ first_forcible = first_forcible, left = left,
    safe_ok = ok, safe_err = err, free = d:free_space(), capacity = d:capacity() }))
end''')


def routes():
    return [RT.route("/loop", handler=LOOP), RT.route("/hit", handler=HIT),
            RT.route("/get", handler=GET), RT.route("/set", handler=SET),
            RT.route("/fill", handler=FILL)]


SHARED = {"counters": "1m", "small": "16k", "sessions": "64k"}


class SharedDictTest(RT.ReloadTestCase):
    @classmethod
    def setUpClass(cls):
        cls.proxy = cls.start_reload_proxy({}, routes(), workers=4, shared=dict(SHARED))

    def json_get(self, path):
        r = self.get(path)
        self.assertEqual(r.status, 200, r)
        return json.loads(r.body)

    def dict_status(self, name):
        return self.status()["shared"][name]

    def test_1_exact_incr_totals_from_four_workers(self):
        # 40 requests of 10k increments on fresh connections, 4 at a time: the kernel
        # spreads them over the 4 workers (all 4 seen), whose loops run at once.
        workers, errors, lock = set(), [], threading.Lock()

        def client(k):
            for _ in range(10):
                try:
                    r = H.get(self.proxy.port, "/loop?n=10000", timeout=H.T(30))
                    with lock:
                        if r.status != 200:
                            errors.append((r.status, r.body))
                        else:
                            workers.add(r.body.decode())
                except Exception as e:  # noqa: BLE001 — recorded and asserted below
                    with lock:
                        errors.append(repr(e))

        threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(H.T(120))
        self.assertEqual(errors, [])
        self.assertEqual(workers, {"1", "2", "3", "4"})
        self.assertEqual(self.json_get("/get?dict=counters&key=total").get("value"), 400000)

        # One increment per request, from 4 keep-alive clients at once.
        def hitter(results):
            with H.Client(self.proxy.port, timeout=H.T(30)) as c:
                for _ in range(500):
                    results.append(c.request("GET", "/hit").status)

        results = [[] for _ in range(4)]
        threads = [threading.Thread(target=hitter, args=(results[k],)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(H.T(120))
        self.assertEqual(sum(len(r) for r in results), 2000)
        self.assertTrue(all(s == 200 for r in results for s in r))
        self.assertEqual(self.json_get("/get?dict=counters&key=hits").get("value"), 2000)
        st = self.dict_status("counters")
        self.assertEqual(st["capacity"], 1048576)
        self.assertEqual(st["entries"], 2)
        self.assertEqual(st["used"], 2 * 112 + len("total") + len("hits"))

    def test_2_lru_eviction_and_forcible_seen_from_lua(self):
        before = self.dict_status("small")["evictions"]
        # 16k holds 16384 // (112 + 3 + 1000) = 14 entries of 1000 bytes with a 3-byte key.
        j = self.json_get("/fill?n=30&size=1000&prefix=e")
        self.assertEqual(j["capacity"], 16384)
        self.assertEqual(j["first_forcible"], 15)
        self.assertEqual(j["left"], list(range(17, 31)))  # "e10".."e30" keys are 3 bytes
        self.assertIs(j["safe_ok"], False)
        self.assertEqual(j["safe_err"], "no memory")
        st = self.dict_status("small")
        self.assertEqual(st["entries"], 14)
        self.assertLessEqual(st["used"], 16384)
        self.assertEqual(st["used"], 14 * (112 + 3 + 1000))
        self.assertGreaterEqual(st["evictions"] - before, 16)

    def test_3_ttl_expiry(self):
        j = self.json_get("/set?dict=sessions&key=t&value=soon&ttl=0.3")
        self.assertIs(j["ok"], True)
        t0 = time.monotonic()
        self.assertEqual(self.json_get("/get?dict=sessions&key=t").get("value"), "soon")
        H.wait_for(lambda: self.json_get("/get?dict=sessions&key=t").get("value") is None,
                   H.T(5), what="the key to expire")
        self.assertGreaterEqual(time.monotonic() - t0, 0.25)
        j = self.json_get("/set?dict=sessions&key=forever&value=x")
        self.assertEqual(self.json_get("/get?dict=sessions&key=forever").get("value"), "x")

    def test_4_reload_keeps_content_resizes_and_drops(self):
        self.json_get("/set?dict=sessions&key=kept&value=across")
        total = self.json_get("/get?dict=counters&key=total").get("value")
        n = self.json_get("/fill?n=14&size=1000&prefix=r")  # fills "small" with r1..r14
        self.assertEqual(len(n["left"]), 14)
        gen = self.status()["generation"]
        # Same sizes: a reload keeps everything.
        self.reload()
        self.assertEqual(self.status()["generation"], gen + 1)
        self.assertEqual(self.json_get("/get?dict=sessions&key=kept").get("value"), "across")
        self.assertEqual(self.json_get("/get?dict=counters&key=total").get("value"), total)
        # small: 16k -> 8k keeps the 7 most recent; sessions dropped; fresh added.
        shared = {"counters": "1m", "small": "8k", "fresh": "32k"}
        self.rewrite(shared=shared)
        self.reload()
        st = self.status()["shared"]
        self.assertEqual(sorted(st), ["counters", "fresh", "small"])
        self.assertEqual(st["small"]["capacity"], 8192)
        self.assertEqual(st["small"]["entries"], 8192 // (112 + 3 + 1000))
        self.assertLessEqual(st["small"]["used"], 8192)
        for i in range(1, 15):
            want = ("v" * 1000) if i > 14 - 7 else None
            got = self.json_get("/get?dict=small&key=r%d" % i).get("value")
            self.assertEqual(got, want, "r%d" % i)
        r = self.get("/get?dict=sessions&key=kept")
        self.assertEqual(r.status, 404)  # gone from proxy.shared with the config
        self.assertEqual(self.json_get("/get?dict=counters&key=total").get("value"), total)
        # A failed reload changes nothing, sizes included.
        self.write_raw("return { this is not lua")
        self.reload_fails()
        self.assertEqual(self.status()["shared"]["small"]["capacity"], 8192)
        # Back to the first config: sessions is a new, empty dict.
        self.rewrite(shared=dict(SHARED))
        self.reload()
        self.assertIsNone(self.json_get("/get?dict=sessions&key=kept").get("value"))
        self.assertEqual(self.status()["shared"]["small"]["capacity"], 16384)


if __name__ == "__main__":
    H.main()
