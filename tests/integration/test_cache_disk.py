#!/usr/bin/env python3
"""The response cache's disk tier (issue #13, engine/cache_disk.c): entries written to a zone's
directory survive a restart (a new process answers a hit with no origin request) and a
reload; Vary variants stay apart across a restart; an entry evicted from memory is read back
from its file; a corrupt, truncated or vanished file under a running proxy is dropped and
the request goes upstream for the right answer; an unwritable directory is logged and the
proxy goes on serving; the disk byte limit is enforced; purge deletes files; an 8 MiB disk
hit reaches a slow reader whole; a large entry on disk only is streamed from its file (never
promoted: whole, as a range, to HEAD), and one whose body is damaged is cut short and
dropped; concurrent read-backs of one small entry make one read. HTTP/2 clients get the same
streamed answer (python3-h2): memory does not grow by the entry's size, a client whose
window is shut stops the reads, a reset or a closed connection mid-body and a reload under
a stalled stream leave the proxy whole, a damaged body resets the stream short; a large
memory hit is paced by the stream's window too, never queued whole. A response
with more fields than a hit could carry with its Age and Cache-Status is not stored."""

import hashlib
import json
import os
import re
import socket
import struct
import sys
import threading
import time
import unittest
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402
from test_h2 import Client as H2Client  # noqa: E402 - python3-h2, as test_h2.py finds it
import h2.settings  # noqa: E402 - on the path test_h2 set

ZONE = "d"
# How much a streamed hit may grow the proxy's peak RSS: a few blocks, far below a whole
# copy of the bodies these tests send (16 and 24 MiB). Under ASan freed blocks sit in its
# quarantine a while, so the bound is looser there (an 8.7 MB growth was seen once).
STREAM_GROWTH_KIB = (12 if H.SANITIZED else 8) * 1024


Origin = H.ScriptedOrigin
fresh = H.cacheable


def files_under(root):
    out = []
    for d, _, names in os.walk(root):
        out += [os.path.join(d, n) for n in names]
    return out


def file_holding(root, marker):
    """The one entry file whose bytes contain marker (bodies carry unique markers)."""
    hits = []
    for p in files_under(root):
        if p.endswith(".tmp"):
            continue
        with open(p, "rb") as f:
            if marker in f.read():
                hits.append(p)
    return hits[0] if len(hits) == 1 else None


class CacheDiskTest(H.ProxyTestCase):
    @classmethod
    def setUpClass(cls):
        cls.origin = Origin()
        cls.addClassCleanup(cls.origin.stop)

    def start(self, root, memory="8m", size="64m", max_object=None, wait_loaded=True,
              http2=False, plugins=(), **kw):
        if max_object is None:  # 16m, at most memory (a larger one is refused at load)
            mb = int(memory[:-1]) / (1024 if memory.endswith("k") else 1)
            max_object = "16m" if mb >= 16 else memory
        zone = {"memory": memory, "max_object_size": max_object,
                "disk": {"path": root, "size": size}}
        p = H.Proxy.build({"o": H.upstream(self.origin.address())},
                          [{"match": {"prefix": "/"}, "upstream": "o",
                            "plugins": list(plugins) + [{"name": "cache", "zone": ZONE}]}],
                          name=self._testMethodName, workers=2,
                          admin={"address": "127.0.0.1:0"},
                          cache={"zones": {ZONE: zone}}, **kw)
        if http2:  # h2c by prior knowledge beside HTTP/1.1
            p.cfg["listen"] = [{"address": "127.0.0.1:0", "http2": True}]
        self.addCleanup(p.stop)
        p.start()
        if wait_loaded:
            H.wait_for(lambda: not self.disk(p)["loading"], H.T(10), what="the disk scan")
        return p

    def admin(self, p, method, path):
        return H.admin_json(p.admin_port, method, path)

    def zone(self, p):
        st, j = self.admin(p, "GET", "/status")
        self.assertEqual(st, 200)
        return j["cache"][ZONE]

    def disk(self, p):
        return self.zone(p)["disk"]

    def wait_disk_entries(self, p, n):
        return H.wait_for(lambda: self.disk(p)["entries"] >= n or None, H.T(10),
                          what="%d entries on disk" % n)

    def get(self, p, path, headers=None):
        r = H.get(p.port, path, host="a.test", headers=headers, timeout=H.T(20))
        self.assertTrue(p.alive(), p.stderr()[-4000:])
        return r

    def root(self):
        return os.path.join(H.Workdir.new("cache-" + self._testMethodName), "zone")

    def path(self, suffix=""):
        return "/" + self._testMethodName + suffix

    def hit(self, r):
        return "hit" in (r.header("cache-status") or "")

    def hits_at_once(self, b, p, body, n, together=False):
        """n concurrent GETs of p (started at one barrier when `together`): a list of
        (status, body is `body`, a hit) or the exception's repr, per request."""
        results = []
        barrier = threading.Barrier(n) if together else None

        def one():
            try:
                if barrier:
                    barrier.wait(H.T(10))
                r = H.get(b.port, p, host="a.test", timeout=H.T(30))
                results.append((r.status, r.body == body, self.hit(r)))
            except Exception as e:  # noqa: BLE001 - reported by the caller's assertion
                results.append(repr(e))
        threads = [threading.Thread(target=one) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(H.T(60))
        return results

    # ------------------------------------------------------------------ restart, reload

    def test_entry_survives_restart(self):
        root = self.root()
        p = self.path()
        self.origin.script(p, lambda req, n: fresh(b"restart-%d" % n))
        a = self.start(root)
        self.assertEqual(self.get(a, p).body, b"restart-1")
        self.wait_disk_entries(a, 1)
        a.stop()
        self.assertEqual(len([f for f in files_under(root) if not f.endswith(".tmp")]), 1)
        b = self.start(root)
        d = self.disk(b)
        self.assertEqual((d["entries"], d["only_on_disk"]), (1, 1))
        r = self.get(b, p)
        self.assertEqual((r.status, r.body), (200, b"restart-1"))
        self.assertTrue(self.hit(r), r.header("cache-status"))
        # RFC 9211's detail says where the hit came from.
        self.assertRegex(r.header("cache-status"), r"^luaproxy; hit; ttl=\d+; detail=disk$")
        self.assertEqual(self.origin.count(p), 1, "the new process asked the origin")
        self.assertEqual((self.disk(b)["loaded"], self.disk(b)["streamed"]), (1, 0))
        # Read back once, then served from memory.
        r = self.get(b, p)
        self.assertRegex(r.header("cache-status"), r"^luaproxy; hit; ttl=\d+$")
        self.assertEqual(self.disk(b)["loaded"], 1)

    def test_vary_variants_survive_restart_apart(self):
        root = self.root()
        p = self.path()
        self.origin.script(p, lambda req, n: fresh(
            b"lang=" + (req.header("accept-language") or "none").encode(),
            ("Vary", "Accept-Language")))
        a = self.start(root)
        for lang in ("en", "fr"):
            self.assertEqual(self.get(a, p, [("Accept-Language", lang)]).body,
                             b"lang=" + lang.encode())
        self.wait_disk_entries(a, 3)  # the key's Vary marker and two variants
        a.stop()
        b = self.start(root)
        for lang in ("fr", "en", "fr"):
            r = self.get(b, p, [("Accept-Language", lang)])
            self.assertEqual(r.body, b"lang=" + lang.encode())
            self.assertTrue(self.hit(r))
        self.assertEqual(self.origin.count(p), 2)
        r = self.get(b, p, [("Accept-Language", "de")])
        self.assertEqual(r.body, b"lang=de")
        self.assertEqual(self.origin.count(p), 3)

    def test_entry_survives_reload_and_memory_eviction(self):
        root = self.root()
        p = self.path()
        # A 256k memory tier holds three of these at most: the first is pushed out of
        # memory by the others and read back from its file.
        body = H.large_body(100 * 1024)
        for i in range(5):
            self.origin.script(p + "/%d" % i, lambda req, n, i=i: fresh(b"%d:" % i + body))
        a = self.start(root, memory="256k", max_object="200k")
        for i in range(5):
            self.assertEqual(self.get(a, p + "/%d" % i).body, b"%d:" % i + body)
        self.wait_disk_entries(a, 5)
        self.assertGreaterEqual(self.disk(a)["only_on_disk"], 2)
        r = self.get(a, p + "/0")
        self.assertEqual(r.body, b"0:" + body)
        self.assertTrue(self.hit(r))
        # Over 64 KiB: served from its file (streamed), not read back into memory.
        self.assertGreaterEqual(self.disk(a)["streamed"], 1)
        # The same figures in /metrics (docs/metrics.md).
        text = H.admin_text(a.admin_port, "/metrics")
        loaded = re.search(r'^luaproxy_cache_disk_events_total\{zone="%s",event="streamed"\} (\d+)'
                           % ZONE, text, re.M)
        self.assertIsNotNone(loaded, text[-2000:])
        self.assertGreaterEqual(int(loaded.group(1)), 1)
        entries = re.search(r'^luaproxy_cache_disk_entries\{zone="%s"\} (\d+)' % ZONE, text, re.M)
        self.assertIsNotNone(entries, text[-2000:])
        self.assertGreaterEqual(int(entries.group(1)), 5)
        st, j = self.admin(a, "POST", "/reload")
        self.assertEqual(st, 200, j)
        for i in range(5):
            r = self.get(a, p + "/%d" % i)
            self.assertEqual(r.body, b"%d:" % i + body)
            self.assertTrue(self.hit(r))
            self.assertEqual(self.origin.count(p + "/%d" % i), 1)

    def test_stale_disk_entry_revalidated_after_restart(self):
        # An entry read back from disk is what the plugin sees of any entry: a stale one is
        # revalidated (If-None-Match), the 304 refreshes it (its file is written again), and
        # the body served is the stored one.
        root = self.root()
        p = self.path()
        seen = []

        def origin(req, n):
            seen.append(req.header("if-none-match"))
            if req.header("if-none-match") == '"v1"':
                return (b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n"
                        b"Cache-Control: max-age=3600\r\nContent-Length: 0\r\n\r\n")
            return H.simple_response(200, b"stored-body-%d" % n,
                                     [("Cache-Control", "max-age=0"), ("ETag", '"v1"')])
        self.origin.script(p, origin)
        a = self.start(root)
        self.assertEqual(self.get(a, p).body, b"stored-body-1")
        self.wait_disk_entries(a, 1)
        a.stop()
        b = self.start(root)
        r = self.get(b, p)
        self.assertEqual((r.status, r.body), (200, b"stored-body-1"))
        self.assertEqual(seen, [None, '"v1"'])
        b.stop()
        # The refreshed head (fresh for an hour) was written: a third process serves a hit.
        c = self.start(root)
        r = self.get(c, p)
        self.assertEqual(r.body, b"stored-body-1")
        self.assertTrue(self.hit(r), r.header("cache-status"))
        self.assertEqual(len(seen), 2)

    def test_concurrent_disk_hits_on_one_key(self):
        # Streamed hits on one file at once on both workers (a body over 64 KiB): each request
        # reads its own part of the file as it sends it; the entry stays on disk only.
        root = self.root()
        p = self.path()
        body = H.large_body(1024 * 1024 + 7)
        self.origin.script(p, lambda req, n: fresh(body))
        a = self.start(root)
        self.get(a, p)
        self.wait_disk_entries(a, 1)
        a.stop()
        b = self.start(root)
        self.assertEqual(self.hits_at_once(b, p, body, 20), [(200, True, True)] * 20)
        self.assertEqual(self.origin.count(p), 1)
        d = self.disk(b)
        self.assertGreaterEqual(d["streamed"], 1)
        self.assertEqual(d["dropped"], 0)
        self.assertEqual((self.zone(b)["entries"], d["only_on_disk"]), (0, 1))

    # ------------------------------------------------------------------ damaged files

    def test_corrupt_truncated_vanished_files_dropped_under_running_proxy(self):
        root = self.root()
        p = self.path()
        cases = ("flip", "truncate", "delete", "head")
        for c in cases:
            self.origin.script(p + "/" + c, lambda req, n, c=c: fresh(
                b"marker-%s-%d-" % (c.encode(), n) + H.large_body(30000)))
        a = self.start(root, memory="64k", max_object="40k")
        for c in cases:
            self.get(a, p + "/" + c)
        self.wait_disk_entries(a, len(cases))
        # Push them out of memory: the next lookups read their files.
        for i in range(4):
            self.origin.script(p + "/fill%d" % i, lambda req, n: fresh(H.large_body(30000)))
            self.get(a, p + "/fill%d" % i)
        H.wait_for(lambda: self.disk(a)["only_on_disk"] >= len(cases) or None, H.T(10),
                   what="entries only on disk")
        for c in cases:
            f = file_holding(root, b"marker-%s-1-" % c.encode())
            self.assertIsNotNone(f, c)
            with open(f, "r+b") as fh:
                data = fh.read()
                if c == "flip":
                    fh.seek(len(data) - 100)
                    fh.write(bytes([data[-100] ^ 0x55]))
                elif c == "truncate":
                    fh.truncate(len(data) - 1000)
                elif c == "head":
                    fh.seek(60)  # inside the key
                    fh.write(bytes([data[60] ^ 0x01]))
            if c == "delete":
                os.unlink(f)
        for c in cases:
            r = self.get(a, p + "/" + c)
            self.assertEqual(r.status, 200)
            self.assertTrue(r.body.startswith(b"marker-%s-2-" % c.encode()), (c, r.body[:40]))
            self.assertFalse(self.hit(r), c)
            self.assertEqual(self.origin.count(p + "/" + c), 2, c)
        log = a.wait_log("dropped", count=len(cases))
        self.assertIn("checksum mismatch", log)
        self.assertIn("file vanished", log)
        self.assertGreaterEqual(self.disk(a)["dropped"], len(cases))
        # Stored again from the upstream's answer, and served.
        self.wait_disk_entries(a, len(cases))
        r = self.get(a, p + "/flip")
        self.assertTrue(r.body.startswith(b"marker-flip-2-"))
        self.assertEqual(self.origin.count(p + "/flip"), 2)

    def one_file_stored(self, root, p, prefix):
        """One response under p filled to disk by a proxy, then stopped: its file."""
        self.origin.script(p, lambda req, n: fresh(prefix + b"-%d" % n))
        a = self.start(root)
        self.get(a, p)
        self.wait_disk_entries(a, 1)
        a.stop()
        return [x for x in files_under(root) if not x.endswith(".tmp")][0]

    def test_damaged_files_dropped_at_start(self):
        root = self.root()
        p = self.path()
        f = self.one_file_stored(root, p, b"start")
        with open(f, "r+b") as fh:
            fh.truncate(20)
        with open(f + ".tmp", "wb") as fh:
            fh.write(b"a write cut short")
        b = self.start(root)
        self.assertEqual(self.disk(b)["entries"], 0)
        b.wait_log("dropped")
        self.assertEqual(files_under(root), [])
        self.assertEqual(self.get(b, p).body, b"start-2")

    def test_older_version_files_dropped_at_start(self):
        # A file of another version (heads of the plugin's layout 1, times as text) is
        # dropped by the start's scan, and its key is a miss: never read with this layout.
        root = self.root()
        p = self.path()
        f = self.one_file_stored(root, p, b"layout")
        with open(f, "r+b") as fh:
            fh.seek(4)  # the header's version, after its magic (engine/cache_disk.h)
            fh.write(struct.pack("<I", 1))
        b = self.start(root)
        b.wait_log("written by another version")
        self.assertEqual(self.disk(b)["entries"], 0)
        self.assertEqual(self.get(b, p).body, b"layout-2")
        self.assertEqual(self.origin.count(p), 2)

    def test_unwritable_directory_logged_and_proxied(self):
        base = H.Workdir.new("cache-" + self._testMethodName)
        blocker = os.path.join(base, "file")
        with open(blocker, "w") as f:
            f.write("not a directory")
        p = self.path()
        self.origin.script(p, lambda req, n: fresh(b"uncached-disk-%d" % n))
        a = self.start(os.path.join(blocker, "zone"))
        r = self.get(a, p)
        self.assertEqual((r.status, r.body), (200, b"uncached-disk-1"))
        a.wait_log("cannot write an entry under")
        a.wait_log("no entries from it")  # the scan's line, which claims no load
        self.assertIn("cannot make", a.stderr())
        self.assertNotIn("loaded 0 entries", a.stderr())
        # Still serving (from memory), nothing on disk.
        for _ in range(3):
            self.assertEqual(self.get(a, p).body, b"uncached-disk-1")
        self.assertEqual(self.disk(a)["entries"], 0)

    # ------------------------------------------------------------------ limits, purge

    def test_disk_limit_enforced(self):
        root = self.root()
        p = self.path()
        body = H.large_body(50 * 1024)
        a = self.start(root, memory="8m", size="200k")
        for i in range(10):
            self.origin.script(p + "/%d" % i, lambda req, n, i=i: fresh(b"%d" % i + body))
            self.get(a, p + "/%d" % i)
        H.wait_for(lambda: self.disk(a)["evicted"] >= 6 or None, H.T(10), what="disk evictions")

        def settled():
            files = [f for f in files_under(root) if not f.endswith(".tmp")]
            total = sum(os.path.getsize(f) for f in files)
            return (files, total) if total <= 200 * 1024 else None
        files, total = H.wait_for(settled, H.T(10), what="the files within the budget")
        d = self.disk(a)
        self.assertLessEqual(d["bytes"], 200 * 1024)
        self.assertEqual(d["entries"], len(files))
        self.assertGreaterEqual(len(files), 2)
        # The newest ones are the ones kept.
        self.assertIsNotNone(file_holding(root, b"9" + body[:100]))

    def test_purge_removes_files(self):
        root = self.root()
        p = self.path()
        for s in ("a", "b"):
            self.origin.script(p + "/" + s, lambda req, n, s=s: fresh(b"purge-%s-%d" % (s.encode(), n)))
        a = self.start(root)
        self.get(a, p + "/a")
        self.get(a, p + "/b")
        self.wait_disk_entries(a, 2)
        key = "GET http://a.test" + p + "/a"
        st, j = self.admin(a, "DELETE", "/cache/%s?key=%s" % (ZONE, urllib.parse.quote(key, safe="")))
        self.assertEqual((st, j["purged"]), (200, 1))
        H.wait_for(lambda: len(files_under(root)) == 1 or None, H.T(10), what="the file deleted")
        self.assertIsNotNone(file_holding(root, b"purge-b-1"))
        a.stop()
        b = self.start(root)
        self.assertEqual(self.get(b, p + "/a").body, b"purge-a-2")
        self.assertEqual(self.get(b, p + "/b").body, b"purge-b-1")
        st, j = self.admin(b, "DELETE", "/cache/" + ZONE)
        self.assertEqual(st, 200)
        H.wait_for(lambda: files_under(root) == [] or None, H.T(10), what="every file deleted")

    # ------------------------------------------------------------------ a big disk hit

    def test_big_disk_hit_to_slow_reader(self):
        root = self.root()
        p = self.path()
        body = H.large_body(8 * 1024 * 1024)
        digest = hashlib.sha256(body).hexdigest()
        self.origin.script(p, lambda req, n: fresh(body))
        a = self.start(root, memory="32m", max_object="16m")
        self.assertEqual(hashlib.sha256(self.get(a, p).body).hexdigest(), digest)
        self.wait_disk_entries(a, 1)
        a.stop()
        b = self.start(root, memory="32m", max_object="16m")
        s = socket.create_connection(("127.0.0.1", b.port), timeout=H.T(30))
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            s.sendall(("GET %s HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n" % p).encode())
            data = bytearray()
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
                if len(data) < 2 * 1024 * 1024:
                    time.sleep(0.002)  # a slow reader for the first part: the proxy must wait
        finally:
            s.close()
        head, _, got = bytes(data).partition(b"\r\n\r\n")
        self.assertIn(b" 200 ", head.split(b"\r\n")[0])
        self.assertIn(b"hit", head.lower())
        self.assertEqual(len(got), len(body))
        self.assertEqual(hashlib.sha256(got).hexdigest(), digest)
        self.assertEqual(self.origin.count(p), 1)
        # Streamed from its file in 64 KiB blocks as the reader took them: never read whole
        # into memory (not promoted, nothing charged to the zone's memory).
        z = self.zone(b)
        self.assertEqual((z["entries"], z["bytes"], z["disk"]["only_on_disk"]), (0, 0, 1))

    def restarted_with(self, body, **zone):
        """A proxy started afresh over a directory holding one entry for this test's path."""
        root = self.root()
        p = self.path()
        self.origin.script(p, lambda req, n: fresh(body if n == 1 else b"origin again"))
        a = self.start(root, **zone)
        self.assertEqual(self.get(a, p).body, body)
        self.wait_disk_entries(a, 1)
        a.stop()
        return root, p, self.start(root, **zone)

    # ------------------------------------------------------------------ HTTP/2 clients

    @staticmethod
    def h2_open(c, path):
        """A GET of path for a.test (the entries' key) on the h2 client c: its stream id."""
        sid = c.conn.get_next_available_stream_id()
        c.st(sid)
        c.conn.send_headers(sid, [(":method", "GET"), (":scheme", "http"),
                                  (":authority", "a.test"), (":path", path)], end_stream=True)
        c.flush()
        return sid

    def h2_client(self, b, window=None):
        c = H2Client(b.port, ack=window is None)
        self.addCleanup(c.close)
        if window is None:  # large windows: the proxy's side paces the body, not ours
            c.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
            c.conn.increment_flow_control_window(64 << 20)
            c.flush()
        return c

    @staticmethod
    def proc_field(b, name, fname="status"):
        """A number from /proc/PID/status (kB) or /proc/PID/io (bytes) of the proxy."""
        with open("/proc/%d/%s" % (b.proc.pid, fname)) as f:
            for line in f:
                k, _, v = line.partition(":")
                if k == name:
                    return int(v.split()[0])
        raise AssertionError("no %s in /proc/PID/%s" % (name, fname))

    def wait_reads_quiet(self, b, window=0.3, noise=4096):
        """The proxy's read bytes (/proc/PID/io rchar) once they grew by less than `noise`
        (wake-ups, not file blocks) over `window` seconds: its reads in flight have ended."""
        seen = [self.proc_field(b, "rchar", "io"), time.monotonic()]

        def quiet():
            v, now = self.proc_field(b, "rchar", "io"), time.monotonic()
            if v - seen[0] >= noise:
                seen[0], seen[1] = v, now
                return None
            return v if now - seen[1] >= window else None
        return H.wait_for(quiet, H.T(10), what="the proxy's file reads to stop")

    def test_streamed_disk_hit_to_h2_client(self):
        # A 24 MiB entry on disk only, asked for over HTTP/2: streamed from its file as the
        # stream takes it. The whole read-back would put it in memory (a peak of its size);
        # streamed, the proxy's peak RSS grows by a few blocks.
        body = H.large_body(24 * 1024 * 1024 + 3)
        root, p, b = self.restarted_with(body, memory="48m", max_object="32m", http2=True)
        hwm0 = self.proc_field(b, "VmHWM")
        c = self.h2_client(b)
        sid = self.h2_open(c, p)
        c.pump(lambda: c.done(sid), timeout=H.T(60))
        st = c.streams[sid]
        self.assertEqual((st["status"], st["ended"], st["reset"]), (200, True, None))
        self.assertEqual(len(st["data"]), len(body))
        self.assertEqual(hashlib.sha256(st["data"]).digest(), hashlib.sha256(body).digest())
        self.assertEqual(st["headers"].get("content-length"), str(len(body)))
        self.assertRegex(st["headers"].get("cache-status", ""), r"^luaproxy; hit; ttl=\d+; detail=disk$")
        grew = self.proc_field(b, "VmHWM") - hwm0
        self.assertLess(grew, STREAM_GROWTH_KIB, "peak RSS grew by %d kB" % grew)
        # A range of it and a HEAD, streamed too.
        sid = c.conn.get_next_available_stream_id()
        c.st(sid)
        c.conn.send_headers(sid, [(":method", "GET"), (":scheme", "http"), (":authority", "a.test"),
                                  (":path", p), ("range", "bytes=20000000-20999999")],
                            end_stream=True)
        sid_head = sid + 2
        c.st(sid_head)
        c.conn.send_headers(sid_head, [(":method", "HEAD"), (":scheme", "http"),
                                       (":authority", "a.test"), (":path", p)], end_stream=True)
        c.flush()
        c.pump(lambda: c.done(sid, sid_head), timeout=H.T(60))
        st = c.streams[sid]
        self.assertEqual((st["status"], st["headers"].get("content-range")),
                         (206, "bytes 20000000-20999999/%d" % len(body)))
        self.assertEqual(bytes(st["data"]), body[20000000:21000000])
        st = c.streams[sid_head]
        self.assertEqual((st["status"], bytes(st["data"]), st["headers"].get("content-length")),
                         (200, b"", str(len(body))))
        z = self.zone(b)
        self.assertEqual((z["entries"], z["disk"]["only_on_disk"]), (0, 1))
        self.assertEqual((z["disk"]["streamed"], z["disk"]["loaded"], z["disk"]["dropped"]),
                         (3, 0, 0))
        self.assertEqual(self.origin.count(p), 1)

    def test_memory_hit_to_h2_client_is_paced(self):
        # A 24 MiB entry in memory, asked for over HTTP/2: its bytes go into the stream's
        # queue (copies) as its window drains, up to the high watermark at a time, not the
        # whole entry at once (a copy of its size). The proxy's peak RSS grows by a few
        # blocks; the body, a range of it and a slow stream beside it come whole.
        root = self.root()
        p = self.path()
        body = H.large_body(24 * 1024 * 1024 + 5)
        self.origin.script(p, lambda req, n: fresh(body))
        b = self.start(root, memory="64m", max_object="32m", http2=True)
        self.assertEqual(hashlib.sha256(self.get(b, p).body).digest(), hashlib.sha256(body).digest())
        time.sleep(0.3)  # the fill's blocks go back to their pool
        self.assertEqual(self.zone(b)["entries"], 1)
        hwm0 = self.proc_field(b, "VmHWM")
        c = self.h2_client(b)
        sid = self.h2_open(c, p)
        c.pump(lambda: c.done(sid), timeout=H.T(60))
        st = c.streams[sid]
        self.assertEqual((st["status"], st["ended"], st["reset"]), (200, True, None))
        self.assertEqual(len(st["data"]), len(body))
        self.assertEqual(hashlib.sha256(st["data"]).digest(), hashlib.sha256(body).digest())
        self.assertRegex(st["headers"].get("cache-status", ""), r"^luaproxy; hit; ttl=\d+$")
        grew = self.proc_field(b, "VmHWM") - hwm0
        self.assertLess(grew, STREAM_GROWTH_KIB, "peak RSS grew by %d kB" % grew)
        # A range, and two streams at once, one of them held (its window shut): the other
        # comes whole, and the held one once its window opens.
        slow = self.h2_client(b, window=0)
        sid_slow = self.h2_open(slow, p)
        slow.pump(lambda: len(slow.streams[sid_slow]["data"]) >= 65535 or slow.done(sid_slow),
                  timeout=H.T(20))
        sid = c.conn.get_next_available_stream_id()
        c.st(sid)
        c.conn.send_headers(sid, [(":method", "GET"), (":scheme", "http"), (":authority", "a.test"),
                                  (":path", p), ("range", "bytes=20000000-20999999")],
                            end_stream=True)
        c.flush()
        c.pump(lambda: c.done(sid), timeout=H.T(60))
        st = c.streams[sid]
        self.assertEqual((st["status"], st["headers"].get("content-range")),
                         (206, "bytes 20000000-20999999/%d" % len(body)))
        self.assertEqual(bytes(st["data"]), body[20000000:21000000])
        grew = self.proc_field(b, "VmHWM") - hwm0
        self.assertLess(grew, STREAM_GROWTH_KIB, "peak RSS grew by %d kB with a held stream" % grew)
        slow.hold.discard(sid_slow)
        slow.ack = True
        slow.conn.increment_flow_control_window(64 << 20)
        slow.conn.increment_flow_control_window(64 << 20, stream_id=sid_slow)
        slow.flush()
        slow.pump(lambda: slow.done(sid_slow), timeout=H.T(60))
        st = slow.streams[sid_slow]
        self.assertEqual((st["status"], st["ended"], st["reset"]), (200, True, None))
        self.assertEqual(hashlib.sha256(st["data"]).digest(), hashlib.sha256(body).digest())
        self.assertEqual(self.origin.count(p), 1)

    def test_h2_client_with_window_shut_stops_the_reads(self):
        # A client that gives no window back gets 64 KiB, and the proxy stops reading the
        # file a few blocks later (its stream's queue is full): the process's read bytes do
        # not grow by the entry's size. A reload meanwhile leaves the stream be; once the
        # window opens, the rest comes, whole.
        body = H.large_body(8 * 1024 * 1024 + 11)
        root, p, b = self.restarted_with(body, memory="32m", http2=True)
        read0 = self.proc_field(b, "rchar", "io")
        c = self.h2_client(b, window=0)
        sid = self.h2_open(c, p)
        c.pump(lambda: len(c.streams[sid]["data"]) >= 65535)
        # The reads in flight end: the proxy exposes none, so wait until its read bytes stay
        # put (a quiet window), which a loaded machine makes longer rather than failing.
        read1 = self.wait_reads_quiet(b)
        self.assertLess(read1 - read0, 1024 * 1024, "the proxy read %d bytes" % (read1 - read0))
        # No new read starts: an absence, seen over a window of time (deliberate).
        time.sleep(0.5)
        self.assertLess(self.proc_field(b, "rchar", "io") - read1, 64 * 1024)
        st, j = self.admin(b, "POST", "/reload")
        self.assertEqual(st, 200, j)
        data = bytes(c.streams[sid]["data"])
        self.assertEqual(len(data), 65535)
        # The reload sent GOAWAY (the stream goes on), after which python-h2 takes no frame:
        # the windows are opened and the rest read by hand.
        inc = (16 << 20).to_bytes(4, "big")
        c.sock.sendall(H.h2_frame(0x8, 0, 0, inc) + H.h2_frame(0x8, 0, sid, inc))
        buf, got, end = bytearray(), [data], []
        c.sock.settimeout(0.2)

        def step():
            try:
                d = c.sock.recv(65536)
            except socket.timeout:
                return None
            if not d:
                return True
            buf.extend(d)
            for t, fl, fsid, pl in H.h2_take_frames(buf):
                if t == 0x0 and fsid == sid:
                    got.append(pl)
                    if fl & 1:
                        end.append("END_STREAM")
                elif t == 0x3 and fsid == sid:
                    end.append("RST_STREAM")
            return end or None
        H.wait_for(step, H.T(60), interval=0, what="the rest of the body")
        self.assertEqual(end, ["END_STREAM"])
        got = b"".join(got)
        self.assertEqual(len(got), len(body))
        self.assertEqual(hashlib.sha256(got).digest(), hashlib.sha256(body).digest())
        d = self.disk(b)
        self.assertEqual((d["streamed"], d["loaded"], d["dropped"]), (1, 0, 0))

    def test_h2_reset_and_close_mid_body(self):
        # A stream reset by its client mid-body, then a connection closed mid-body (reads may
        # be in flight on the threadpool each time): the next streams are served whole and
        # the entry stays.
        body = H.large_body(4 * 1024 * 1024 + 1)
        root, p, b = self.restarted_with(body, http2=True)
        c = self.h2_client(b)
        for _ in range(3):
            sid = self.h2_open(c, p)
            c.pump(lambda: len(c.streams[sid]["data"]) > 200000 or c.done(sid))
            c.conn.reset_stream(sid)
            c.flush()
        sid = self.h2_open(c, p)
        c.pump(lambda: c.done(sid), timeout=H.T(60))
        self.assertEqual(hashlib.sha256(c.streams[sid]["data"]).digest(),
                         hashlib.sha256(body).digest())
        for _ in range(3):
            c2 = self.h2_client(b)
            sid = self.h2_open(c2, p)
            c2.pump(lambda: len(c2.streams[sid]["data"]) > 200000 or c2.done(sid))
            c2.close()
        r = self.get(b, p)
        self.assertEqual(hashlib.sha256(r.body).digest(), hashlib.sha256(body).digest())
        c = self.h2_client(b)
        sid = self.h2_open(c, p)
        c.pump(lambda: c.done(sid), timeout=H.T(60))
        self.assertEqual(hashlib.sha256(c.streams[sid]["data"]).digest(),
                         hashlib.sha256(body).digest())
        H.wait_for(lambda: self.disk(b)["streamed"] >= 9 or None, H.T(10), what="9 streamed")
        d = self.disk(b)
        self.assertEqual((d["loaded"], d["dropped"], d["only_on_disk"]), (0, 0, 1))
        self.assertEqual(self.origin.count(p), 1)

    def test_h2_damaged_body_resets_the_stream(self):
        # As over HTTP/1: the CRC is found wrong as the last block comes in, before it is
        # sent; the stream is reset short of Content-Length and the entry dropped.
        body = H.large_body(1024 * 1024)
        root, p, b = self.restarted_with(body, http2=True)
        f = [x for x in files_under(root) if not x.endswith(".tmp")][0]
        with open(f, "r+b") as fh:
            fh.seek(-10, os.SEEK_END)
            x = fh.read(1)
            fh.seek(-10, os.SEEK_END)
            fh.write(bytes([x[0] ^ 0x20]))
        c = self.h2_client(b)
        sid = self.h2_open(c, p)
        c.pump(lambda: c.done(sid), timeout=H.T(60))
        st = c.streams[sid]
        self.assertEqual(st["status"], 200)
        self.assertEqual(st["headers"].get("content-length"), str(len(body)))
        self.assertIsNotNone(st["reset"])
        self.assertLess(len(st["data"]), len(body))
        self.assertEqual(bytes(st["data"]), body[:len(st["data"])])
        b.wait_log("checksum mismatch")
        self.assertEqual(self.disk(b)["dropped"], 1)
        self.assertEqual(self.get(b, p).body, b"origin again")
        self.assertEqual(self.origin.count(p), 2)

    def test_streamed_disk_hit_bounded_ranges_and_head(self):
        # A 3 MiB entry on disk only (after a restart): served streamed from its file (never
        # promoted: nothing charged to memory), whole, as a range and to HEAD; every answer is
        # a hit.
        body = H.large_body(3 * 1024 * 1024 + 5)
        root, p, b = self.restarted_with(body, memory="4m", max_object="4m")
        r = self.get(b, p)
        self.assertEqual((r.status, len(r.body)), (200, len(body)))
        self.assertEqual(hashlib.sha256(r.body).hexdigest(), hashlib.sha256(body).hexdigest())
        self.assertTrue(self.hit(r), r.header("cache-status"))
        self.assertRegex(r.header("cache-status"), r"; detail=disk$")
        z = self.zone(b)
        self.assertEqual((z["entries"], z["disk"]["only_on_disk"]), (0, 1))
        # Counted as streamed, not as read back.
        self.assertEqual((z["disk"]["streamed"], z["disk"]["loaded"]), (1, 0))
        r = self.get(b, p, headers=[("Range", "bytes=2000000-2000099")])
        self.assertEqual(r.status, 206)
        self.assertEqual(r.body, body[2000000:2000100])
        self.assertEqual(r.header("content-range"), "bytes 2000000-2000099/%d" % len(body))
        r = H.get(b.port, p, host="a.test", method="HEAD", timeout=H.T(20))
        self.assertEqual((r.status, r.body, r.header("content-length")),
                         (200, b"", str(len(body))))
        self.assertEqual(self.origin.count(p), 1)
        self.assertEqual(self.disk(b)["dropped"], 0)

    def test_streamed_disk_hit_with_a_damaged_body_is_cut_short(self):
        # A byte of the body flipped near its end: the stream finds the CRC wrong when the last
        # chunk comes in, before sending it: the client gets fewer bytes than Content-Length
        # (never the damaged body whole), the entry is dropped, the next request goes upstream.
        body = H.large_body(1024 * 1024)
        root, p, b = self.restarted_with(body)
        f = [x for x in files_under(root) if not x.endswith(".tmp")][0]
        with open(f, "r+b") as fh:
            fh.seek(-10, os.SEEK_END)
            x = fh.read(1)
            fh.seek(-10, os.SEEK_END)
            fh.write(bytes([x[0] ^ 0x20]))
        s = socket.create_connection(("127.0.0.1", b.port), timeout=H.T(30))
        try:
            s.sendall(("GET %s HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"
                       % p).encode())
            data = bytearray()
            while True:
                try:
                    chunk = s.recv(65536)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                data += chunk
        finally:
            s.close()
        head, _, got = bytes(data).partition(b"\r\n\r\n")
        self.assertIn(b" 200 ", head.split(b"\r\n")[0])
        self.assertIn(b"content-length: %d" % len(body), head.lower())
        self.assertLess(len(got), len(body))
        self.assertEqual(got, body[:len(got)])
        b.wait_log("checksum mismatch")
        self.assertEqual(self.disk(b)["dropped"], 1)
        r = self.get(b, p)
        self.assertEqual(r.body, b"origin again")
        self.assertEqual(self.origin.count(p), 2)

    def test_concurrent_read_backs_of_one_entry_coalesced(self):
        # A small entry on disk only (read back whole, then promoted), asked for by 20
        # requests at once on both workers: one reads the file back while holding the key's
        # lock, the others wait on it and are served from memory: one read-back.
        body = b"small-" + H.large_body(30000)
        root, p, b = self.restarted_with(body)
        self.assertEqual(self.hits_at_once(b, p, body, 20, together=True),
                         [(200, True, True)] * 20)
        self.assertEqual(self.origin.count(p), 1)
        d = self.disk(b)
        self.assertEqual((d["loaded"], d["dropped"], d["only_on_disk"]), (1, 0, 0))
        self.assertEqual(self.zone(b)["entries"], 1)

    def test_client_gone_mid_body_with_a_waiting_log_phase(self):
        # Clients that close mid-body while blocks are read: with a log phase that waits, the
        # request lives on detached (no connection) until it ends, and a read ending then
        # must not pump its answer to the client that is gone.
        plugins = os.path.join(H.Workdir.new("cache-plugins"), "plugins")
        os.makedirs(plugins)
        with open(os.path.join(plugins, "slowlog.lua"), "w") as f:
            f.write('local P = { name = "slowlog", priority = 10, schema = { fields = {} } }\n'
                    'function P.log(req) proxy.sleep(0.3) end\nreturn P\n')
        body = H.large_body(8 * 1024 * 1024)
        root, p, b = self.restarted_with(body, memory="32m", plugins=[{"name": "slowlog"}],
                                         lua={"plugin_paths": [plugins]})
        for _ in range(10):
            s = socket.create_connection(("127.0.0.1", b.port), timeout=H.T(30))
            s.sendall(("GET %s HTTP/1.1\r\nHost: a.test\r\n\r\n" % p).encode())
            got = 0
            while got < 300000:
                d = s.recv(65536)
                if not d:
                    break
                got += len(d)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()  # reset: the proxy's next write fails at once
        c = self.h2_client(b)  # over HTTP/2 too: streams reset mid-body
        sids = [self.h2_open(c, p) for _ in range(4)]
        c.pump(lambda: all(len(c.streams[x]["data"]) > 300000 or c.done(x) for x in sids))
        for x in sids:
            c.conn.reset_stream(x)
        c.flush()
        time.sleep(0.6)  # the log phases end
        r = self.get(b, p)
        self.assertEqual(hashlib.sha256(r.body).digest(), hashlib.sha256(body).digest())
        self.assertEqual(self.disk(b)["dropped"], 0)

    # ------------------------------------------------------------------ body filters

    FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lua", "plugins")

    def filtered(self, r_body, body):
        """The hitfilter fixture's output for body: (whether it is body upper-cased, its
        calls, the largest chunk it got)."""
        m = re.search(rb"\|calls=(\d+)\|max=(\d+)$", r_body)
        self.assertIsNotNone(m, r_body[-200:])
        return r_body[:m.start()] == body.upper(), int(m.group(1)), int(m.group(2))

    def h2_get(self, b, p):
        c = self.h2_client(b)
        sid = self.h2_open(c, p)
        c.pump(lambda: c.done(sid), timeout=H.T(60))
        st = c.streams[sid]
        self.assertEqual((st["status"], st["ended"], st["reset"]), (200, True, None))
        return st

    def test_streamed_disk_hit_through_a_body_filter(self):
        # A route with a response_body filter: a large disk-only entry is streamed from its
        # file through the filter a block at a time (the filter's contract is per chunk), not
        # read back whole first (its size in memory, twice with the filter's copy). The filter
        # waits on some blocks; the body comes whole, over HTTP/1.1 and HTTP/2.
        root = self.root()
        p = self.path()
        body = H.large_body(16 * 1024 * 1024 + 7)
        self.origin.script(p, lambda req, n: fresh(body if n == 1 else b"origin again"))
        kw = dict(memory="32m", max_object="32m", plugins=[{"name": "hitfilter", "wait": 5}],
                  lua={"plugin_paths": [self.FIXTURES]})
        a = self.start(root, **kw)
        self.assertEqual(self.filtered(self.get(a, p).body, body)[0], True)
        self.wait_disk_entries(a, 1)
        a.stop()
        b = self.start(root, http2=True, **kw)
        hwm0 = self.proc_field(b, "VmHWM")
        r = self.get(b, p)
        self.assertTrue(self.hit(r), r.header("cache-status"))
        same, calls, biggest = self.filtered(r.body, body)
        self.assertTrue(same)
        self.assertGreater(calls, 100)  # 64 KiB blocks, and the eof call
        self.assertLessEqual(biggest, 256 * 1024)
        st = self.h2_get(b, p)
        self.assertRegex(st["headers"].get("cache-status", ""), r"; detail=disk$")
        same, calls, _ = self.filtered(bytes(st["data"]), body)
        self.assertTrue(same)
        self.assertGreater(calls, 100)
        grew = self.proc_field(b, "VmHWM") - hwm0
        self.assertLess(grew, STREAM_GROWTH_KIB, "peak RSS grew by %d kB" % grew)
        d = self.disk(b)
        self.assertEqual((d["streamed"], d["loaded"], d["only_on_disk"]), (2, 0, 1))
        self.assertEqual(self.origin.count(p), 1)

    def test_memory_hit_through_a_waiting_body_filter(self):
        # A memory hit on a route with a response_body filter goes through it chunk by chunk
        # (the entry's 64 KiB chunks), not copied whole into one piece first; a filter that
        # waits holds the rest until it returns, over HTTP/1.1 and HTTP/2.
        root = self.root()
        p = self.path()
        body = H.large_body(4 * 1024 * 1024 + 3)
        self.origin.script(p, lambda req, n: fresh(body))
        b = self.start(root, memory="32m", max_object="16m", http2=True,
                       plugins=[{"name": "hitfilter", "wait": 3}],
                       lua={"plugin_paths": [self.FIXTURES]})
        self.assertTrue(self.filtered(self.get(b, p).body, body)[0])
        for _ in range(2):
            r = self.get(b, p)
            self.assertRegex(r.header("cache-status") or "", r"^luaproxy; hit; ttl=\d+$")
            same, calls, biggest = self.filtered(r.body, body)
            self.assertTrue(same)
            self.assertGreater(calls, 30)
            self.assertLessEqual(biggest, 256 * 1024)
        st = self.h2_get(b, p)
        same, calls, _ = self.filtered(bytes(st["data"]), body)
        self.assertTrue(same)
        self.assertGreater(calls, 30)
        self.assertEqual(self.origin.count(p), 1)

    # ------------------------------------------------------------------ field counts

    def test_response_with_too_many_fields_for_a_hit_is_not_stored(self):
        # limits.max_headers (100) fields from the origin, and 16 more set by a plugin that
        # runs before the cache: stored (115 fields: Content-Length is not), a hit would need
        # Age and Cache-Status beyond the request's room (max_headers + 16), and failed (500)
        # every time. Such a response is not stored (logged); one that leaves a hit room
        # (max_headers + 16 - 4 fields) is, and its hit carries every field.
        p = self.path()

        def origin(extra):
            return lambda req, n: fresh(b"fields-%d" % n,
                                        *[("X-F%d" % i, "v%d" % i) for i in range(extra)])
        self.origin.script(p + "/full", origin(98))  # + Cache-Control, Content-Length
        self.origin.script(p + "/room", origin(95))  # 96 + 16 stored: 112
        added = {"X-Plugin-%d" % i: "p%d" % i for i in range(16)}
        a = self.start(self.root(), plugins=[{"name": "headers",
                                              "response": {"set": added}}])
        for n in (1, 2, 3):
            r = self.get(a, p + "/full")
            self.assertEqual((r.status, r.body), (200, b"fields-%d" % n))
            self.assertFalse(self.hit(r), r.header("cache-status"))
            self.assertEqual(r.header("x-f97"), "v97")
            self.assertEqual(r.header("x-plugin-15"), "p15")
        a.wait_log("not stored")
        self.assertEqual(self.origin.count(p + "/full"), 3)
        self.assertEqual(self.get(a, p + "/room").body, b"fields-1")
        r = self.get(a, p + "/room")
        self.assertEqual((r.status, r.body), (200, b"fields-1"))
        self.assertTrue(self.hit(r), r.header("cache-status"))
        self.assertEqual((r.header("x-f94"), r.header("x-plugin-15")), ("v94", "p15"))
        self.assertIsNotNone(r.header("age"))
        self.assertEqual(self.origin.count(p + "/room"), 1)


if __name__ == "__main__":
    H.main()
