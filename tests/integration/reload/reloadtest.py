"""Shared helpers for the hot reload and admin API tests (tests/integration/test_reload*.py,
test_admin*.py).

Builds on harness.py: a proxy with the admin API on port 0 (and a pid file), the
fixture plugin directory (tests/integration/reload/plugins) on `lua.plugin_paths`, config
rewrites, admin requests, `luaproxy -s` runs, a keep-alive load generator that counts every
failed or truncated request, and a reader for TCP connection states."""

import json
import os
import random
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
IT_DIR = os.path.dirname(HERE)
sys.path.insert(0, IT_DIR)
import harness as H  # noqa: E402

R = H.LuaRaw
FIXTURE_PLUGINS = os.path.join(HERE, "plugins")


def respond_handler(text, status=200):
    """A route handler (Lua function) answering `text` with X-Version: text."""
    return R('function(req) return req:respond(%d, "%s", { ["X-Version"] = "%s" }) end'
             % (status, text, text))


def route(prefix, **kw):
    r = {"match": {"prefix": prefix}}
    r.update(kw)
    return r


def _read_proc_net_tcp():
    rows = {}
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            # one row per socket: a read racing with changes may show one twice
            rows[(parts[1], parts[2], parts[9])] = (int(parts[1].split(":")[1], 16),
                                          int(parts[2].split(":")[1], 16), parts[3],
                                          int(parts[4].split(":")[1], 16))
    return sorted(rows.values())


def proc_net_tcp():
    """[(local_port, remote_port, state hex, rx_queue)] of every IPv4 TCP socket. The kernel
    fills /proc/net/tcp in pieces while connections come and go, so a single read may
    repeat or miss a row: read until two reads agree."""
    last = None
    for _ in range(20):
        try:
            rows = _read_proc_net_tcp()
        except OSError:
            return []
        if rows == last:
            return rows
        last = rows
    return last


def tcp_states(port):
    """[(local_port, remote_port, state hex)] of IPv4 TCP sockets touching `port`."""
    return [(lp, rp, st) for lp, rp, st, _ in proc_net_tcp() if port in (lp, rp)]


def established_to(port):
    """How many ESTABLISHED connections have `port` as their remote end (client sides)."""
    return sum(1 for lp, rp, st in tcp_states(port) if rp == port and st == "01")


class ReloadTestCase(H.ProxyTestCase):
    """ProxyTestCase with an admin API, config rewrites and reload helpers."""

    @classmethod
    def start_reload_proxy(cls, upstreams, routes, admin=True, pid_file=True, files=None,
                           args=(), wait=True, name=None, **kw):
        lua = kw.pop("lua", {})
        lua.setdefault("plugin_paths", [FIXTURE_PLUGINS])
        kw["lua"] = lua
        if admin:
            kw["admin"] = {"address": "127.0.0.1:0"}
        p = H.Proxy.build(upstreams, routes, name=name or cls.__name__, args=args, **kw)
        if pid_file:
            p.cfg["pid_file"] = os.path.join(p.dir, "luaproxy.pid")
        write_files(p.dir, files)
        cls.addClassCleanup(p.stop)
        p.start(wait=wait)
        return p

    # ---- config ----

    def rewrite(self, proxy=None, **changes):
        """Updates proxy.cfg with `changes` and writes the file (no reload)."""
        proxy = proxy or self.proxy
        proxy.cfg.update(changes)
        proxy.write_config()

    def write_raw(self, text, proxy=None):
        proxy = proxy or self.proxy
        with open(proxy.config_path, "w") as f:
            f.write(text)

    # ---- admin API ----

    def admin(self, method="GET", path="/status", proxy=None, port=None, body=None):
        proxy = proxy or self.proxy
        try:
            with H.Client(port or proxy.admin_port, timeout=H.T(30)) as c:
                return c.request(method, path, body=body, host="admin")
        except (OSError, H.PeerClosed):
            time.sleep(0.2)
            self.assertAlive(proxy)  # a dead proxy explains itself better
            raise

    def admin_json(self, method="GET", path="/status", status=200, proxy=None, port=None):
        r = self.admin(method, path, proxy=proxy, port=port)
        self.assertEqual(r.status, status, r.body)
        self.assertEqual(r.header("Content-Type"), "application/json", r)
        self.assertTrue(r.complete, r)
        return r.json()

    def status(self, proxy=None):
        return self.admin_json("GET", "/status", proxy=proxy)

    def reload(self, proxy=None):
        """POST /reload, which must succeed; returns its JSON."""
        j = self.admin_json("POST", "/reload", 200, proxy=proxy)
        self.assertIs(j["ok"], True, j)
        return j

    def reload_fails(self, proxy=None):
        """POST /reload, which must be refused (500); returns its JSON."""
        j = self.admin_json("POST", "/reload", 500, proxy=proxy)
        self.assertIs(j["ok"], False, j)
        return j

    def get(self, path="/", proxy=None, port=None, **kw):
        proxy = proxy or self.proxy
        try:
            return H.get(port or proxy.port, path, **kw)
        except (OSError, H.PeerClosed):
            time.sleep(0.2)
            self.assertAlive(proxy)
            raise

    def version(self, path="/h", proxy=None, port=None):
        r = self.get(path, proxy=proxy, port=port)
        self.assertEqual(r.status, 200, r)
        return r.body.decode()

    def wait_version(self, want, path="/h", proxy=None, timeout=None):
        got = [None]

        def check():
            got[0] = self.version(path, proxy=proxy)
            return got[0] == want
        try:
            H.wait_for(check, timeout or H.T(5), interval=0.05, what="version %r" % want)
        except AssertionError:
            self.fail("still %r, not %r, after %.1f s; error log:\n%s" %
                      (got[0], want, timeout or H.T(5), (proxy or self.proxy).stderr()[-3000:]))

    def cli(self, *args, proxy=None):
        """Runs `luaproxy ARGS -c CONFIG`; returns (returncode, stdout, stderr)."""
        proxy = proxy or self.proxy
        try:
            p = subprocess.run([H.LUAPROXY] + list(args) + ["-c", proxy.config_path],
                               stdin=subprocess.DEVNULL, capture_output=True, timeout=H.T(40),
                               preexec_fn=H._preexec)
        except subprocess.TimeoutExpired:
            self.fail("luaproxy %s did not exit" % " ".join(args))
        return p.returncode, p.stdout.decode("utf-8", "replace"), \
            p.stderr.decode("utf-8", "replace")

    def log_lines(self, needle, proxy=None):
        proxy = proxy or self.proxy
        return [l for l in proxy.stderr().splitlines() if needle in l]


def write_files(dest, files):
    for rel, text in (files or {}).items():
        out = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out, "w") as f:
            f.write(text)


# --------------------------------------------------------------------------- load

class Load:
    """Keep-alive clients in threads sending a mix of requests until stop(); every answer
    is checked (status, complete framing, exact body) and every failure is recorded.

    kinds: GET `handler_path` (body must be one of `versions`), GET /fixed?size=N through
    the proxy (N bytes of "x"), POST /echo with a random body (echoed exactly)."""

    def __init__(self, port, connections=4, handler_path="/h", versions=(),
                 pause=0.0, max_body=20000):
        self.port = port
        self.connections = connections
        self.handler_path = handler_path
        self.versions = set(versions)
        self.pause = pause
        self.max_body = max_body
        self.lock = threading.Lock()
        self.total = 0
        self.ok = 0
        self.failures = []       # (kind, description)
        self.closes = 0
        self.seen_versions = {}
        self._stop = threading.Event()
        self.threads = []

    def start(self):
        for i in range(self.connections):
            t = threading.Thread(target=self._run, args=(i,), daemon=True)
            t.start()
            self.threads.append(t)
        return self

    def stop(self):
        self._stop.set()
        for t in self.threads:
            t.join(H.T(30))
        alive = [t for t in self.threads if t.is_alive()]
        if alive:
            raise AssertionError("%d load threads did not stop" % len(alive))

    def _note(self, kind, what):
        with self.lock:
            if len(self.failures) < 50:
                self.failures.append((kind, what))

    @property
    def failed(self):
        with self.lock:
            return self.total - self.ok

    def summary(self):
        with self.lock:
            return "%d requests, %d ok, %d failed, %d keep-alive closes, %d handler versions " \
                "seen; first failures: %s" % (self.total, self.ok, self.total - self.ok,
                                              self.closes, len(self.seen_versions),
                                              self.failures[:10])

    def _run(self, idx):
        rnd = random.Random(idx * 7919 + 1)
        client = None
        n = 0
        while not self._stop.is_set():
            if client is None:
                try:
                    client = H.Client(self.port, timeout=H.T(10))
                except OSError as e:
                    with self.lock:
                        self.total += 1
                    self._note("connect", repr(e))
                    time.sleep(0.01)
                    continue
            kind = ("handler", "get", "post")[(n + idx) % 3]
            n += 1
            with self.lock:
                self.total += 1
            try:
                if kind == "handler":
                    r = client.request("GET", self.handler_path)
                    good = r.status == 200 and r.complete and \
                        (not self.versions or r.body.decode() in self.versions)
                    expect = "one of %s" % sorted(self.versions)
                elif kind == "get":
                    size = rnd.choice((5, 1000, 20000, 100000))
                    r = client.request("GET", "/fixed?size=%d" % size)
                    good = r.status == 200 and r.complete and r.body == b"x" * size
                    expect = "%d x" % size
                else:
                    size = rnd.randint(1, self.max_body)
                    body = rnd.randbytes(size)
                    r = client.request("POST", "/echo?n=%d" % n, body=body)
                    good = r.status == 200 and r.complete and r.body == body
                    expect = "echo of %d bytes" % size
            except Exception as e:  # noqa: BLE001
                self._note(kind, "%s: %r" % (type(e).__name__, e))
                client.close()
                client = None
                continue
            if good:
                with self.lock:
                    self.ok += 1
                    if kind == "handler":
                        v = r.body.decode()
                        self.seen_versions[v] = self.seen_versions.get(v, 0) + 1
            else:
                self._note(kind, "status %s complete=%s len=%d, wanted %s" %
                           (r.status, r.complete, r.body_len, expect))
            if "close" in r.tokens("connection"):
                with self.lock:
                    self.closes += 1
                self._note(kind, "Connection: close from the proxy")
                client.close()
                client = None
            if self.pause:
                time.sleep(self.pause)
        if client is not None:
            client.close()
