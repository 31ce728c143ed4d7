#!/usr/bin/env python3
"""Binary upgrade with the listening sockets handed over (issue #18, docs/fleet.md):

- 20 upgrades (SIGUSR2) while two clients run, one on keep-alive connections, one opening
  a new connection per request: no connection refused, no request failed;
- an upgrade whose new process cannot start (the config broke meanwhile) leaves the old
  one serving, its pid in the pid file, and says why in the log;
- a slow request in flight on the old process completes after the new one took over;
- `luaproxy -s upgrade` signals the process in pid_file;
- GET /ready answers 503 while a process drains (the admin API stays up), 200 before;
- sd_notify: READY=1, RELOADING=1/READY=1 around a reload, MAINPID= at an upgrade (from
  both processes, and no STOPPING=1 from the old one), STOPPING=1 at a stop.

The processes an upgrade starts are not this test's children: their pids come from the pid
file, and each is stopped by PID at the end (SIGTERM, then SIGKILL)."""

import os
import signal
import socket
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402

R = H.LuaRaw


def routes(workdir):
    started = os.path.join(workdir, "slow.started")
    release = os.path.join(workdir, "slow.release")
    # /slow says it began (a file), then waits for the test's word (another file): the
    # test knows it is in flight without guessing how long anything takes.
    slow = R('''function(req)
        local f = io.open("%s", "w"); f:write("1"); f:close()
        while true do
            local g = io.open("%s", "r")
            if g then g:close() break end
            proxy.sleep(0.02)
        end
        return req:respond(200, "slow done")
    end''' % (started, release))
    return [{"match": {"prefix": "/slow"}, "handler": slow},
            {"match": {"prefix": "/"},
             "handler": R('function(req) return req:respond(200, "ok") end')}]


def pid_alive(pid):
    """False once pid is gone or a zombie (an upgraded process is reparented, and whoever
    reaps it may take a moment)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def read_pid(path):
    try:
        with open(path) as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def http_get(sock, path="/"):
    """One request on sock; (status, body). Raises NoResponse when the connection ends
    before any byte of an answer, OSError/ValueError on anything else."""
    sock.sendall(("GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path).encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = sock.recv(65536)
        if not d:
            if not buf:
                raise NoResponse()
            raise ValueError("connection closed mid-head: %r" % buf[:200])
        buf += d
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    close = False
    for l in lines[1:]:
        k, _, v = l.partition(":")
        if k.strip().lower() == "content-length":
            length = int(v.strip())
        if k.strip().lower() == "connection" and v.strip().lower() == "close":
            close = True
    while len(body) < length:
        d = sock.recv(65536)
        if not d:
            raise ValueError("connection closed mid-body")
        body += d
    return status, body[:length], close


class NoResponse(Exception):
    pass


class Load:
    """Two client threads: one on keep-alive connections (a new one when the server closes
    it), one opening a connection per request. `refused`: connects refused; `failed`:
    requests with no proper 200 "ok" (except the one case HTTP lets a client retry: a
    reused keep-alive connection closed before any byte of the answer, RFC 9112 9.3.1:
    counted in `retried` and sent again on a new connection)."""

    def __init__(self, port):
        self.port = port
        self.stop_ev = threading.Event()
        self.lock = threading.Lock()
        self.ok = self.failed = self.refused = self.retried = 0
        self.connections = 0
        self.errors = []
        self.threads = [threading.Thread(target=self.keepalive, daemon=True),
                        threading.Thread(target=self.fresh, daemon=True)]

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def stop(self):
        self.stop_ev.set()
        for t in self.threads:
            t.join(H.T(30))

    @property
    def total(self):
        return self.ok + self.failed

    def summary(self):
        return ("%d ok, %d failed, %d connections refused (of %d), %d keep-alive closes "
                "retried%s" % (self.ok, self.failed, self.refused, self.connections,
                               self.retried,
                               "; first errors: %s" % self.errors[:3] if self.errors else ""))

    def count(self, what, err=None):
        with self.lock:
            setattr(self, what, getattr(self, what) + 1)
            if err is not None and len(self.errors) < 20:
                self.errors.append(err)

    def connect(self):
        with self.lock:
            self.connections += 1
        try:
            return socket.create_connection(("127.0.0.1", self.port), timeout=H.T(10))
        except ConnectionRefusedError:
            self.count("refused", "refused")
            return None
        except OSError as e:
            self.count("failed", "connect: %r" % e)
            return None

    def one(self, sock, reused):
        """A request on sock: the socket to go on with, or None."""
        try:
            status, body, close = http_get(sock)
        except NoResponse:
            sock.close()
            if not reused:
                self.count("failed", "no response on a new connection")
                return None
            self.count("retried")
            return None
        except (OSError, ValueError) as e:
            sock.close()
            if reused and isinstance(e, ConnectionResetError):
                # reset before any byte of the answer: the same case as above
                self.count("retried")
                return None
            self.count("failed", repr(e))
            return None
        if status == 200 and body == b"ok":
            self.count("ok")
        else:
            self.count("failed", "status %d body %r" % (status, body[:80]))
        if close:
            sock.close()
            return None
        return sock

    def keepalive(self):
        sock, reused, pending_retry = None, False, False
        while not self.stop_ev.is_set():
            if sock is None:
                sock, reused = self.connect(), False
                if sock is None:
                    continue
            before = self.retried
            sock = self.one(sock, reused)
            reused = True
            if sock is None and self.retried > before:
                pending_retry = True  # the next loop sends it again on a new connection
            elif pending_retry:
                pending_retry = False

    def fresh(self):
        while not self.stop_ev.is_set():
            sock = self.connect()
            if sock is None:
                continue
            s = self.one(sock, False)
            if s is not None:
                s.close()


class UpgradeBase(unittest.TestCase):
    """A proxy with an admin API and a pid file; every pid that appears in the pid file is
    remembered and stopped at the end."""

    WORKERS = 2
    ENV = None

    @classmethod
    def setUpClass(cls):
        H.require_proxy()
        cls.pids = set()
        p = H.Proxy.build({}, [], name=cls.__name__, workers=cls.WORKERS, access_log=False,
                          admin={"address": "127.0.0.1:0"}, env=cls.ENV)
        p.cfg["routes"] = routes(p.dir)
        p.cfg["pid_file"] = os.path.join(p.dir, "luaproxy.pid")
        cls.proxy = p
        cls.pid_file = p.cfg["pid_file"]
        cls.addClassCleanup(cls.stop_all)
        p.start()
        cls.pids.add(p.pid)

    @classmethod
    def stop_all(cls):
        for pid in sorted(cls.pids):
            if pid != cls.proxy.pid and pid_alive(pid):
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        deadline = time.monotonic() + H.T(40)
        for pid in sorted(cls.pids):
            if pid == cls.proxy.pid:
                continue
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        cls.proxy.stop()  # the first one (our child), and the sanitizer check of the log

    def current(self):
        return read_pid(self.pid_file)

    def upgrade(self, how="signal"):
        """Upgrades the process in the pid file and waits for the new one to serve and the
        old one to be gone. Returns (old, new)."""
        old = self.current()
        self.assertTrue(pid_alive(old), "the pid file names %d, which is not running" % old)
        if how == "signal":
            os.kill(old, signal.SIGUSR2)
        else:
            out = H.subprocess.run([H.LUAPROXY, "-s", "upgrade", "-c", self.proxy.config_path],
                                   stdout=H.subprocess.PIPE, stderr=H.subprocess.STDOUT,
                                   text=True, timeout=H.T(30))
            self.assertEqual(out.returncode, 0, out.stdout)
            self.assertIn("sent SIGUSR2 to %d" % old, out.stdout)
        new = H.wait_for(lambda: (self.current() not in (0, old)) and self.current(), H.T(60),
                         interval=0.01, what="the pid file naming a new process")
        self.pids.add(new)
        return old, new

    def wait_gone(self, pid):
        if pid == self.proxy.pid:
            H.wait_for(lambda: self.proxy.proc.poll() is not None, H.T(40), interval=0.01,
                       what="the first process's exit")
        else:
            H.wait_for(lambda: not pid_alive(pid), H.T(40), interval=0.01,
                       what="pid %d's exit" % pid)

    def get(self, path="/", timeout=10):
        s = socket.create_connection(("127.0.0.1", self.proxy.port), timeout=H.T(timeout))
        try:
            return http_get(s, path)[:2]
        finally:
            s.close()

    def admin_get(self, path):
        s = socket.create_connection(("127.0.0.1", self.proxy.admin_port), timeout=H.T(10))
        try:
            return http_get(s, path)[:2]
        finally:
            s.close()


class UpgradeUnderLoadTest(UpgradeBase):
    UPGRADES = 20

    def test_1_upgrades_under_load(self):
        load = Load(self.proxy.port).start()
        t0 = time.monotonic()
        try:
            H.wait_for(lambda: load.total >= 20, H.T(10), what="the load running")
            for i in range(self.UPGRADES):
                old, new = self.upgrade("signal" if i % 2 == 0 else "cli")
                self.wait_gone(old)
                n = load.total
                H.wait_for(lambda: load.total >= n + 10, H.T(30),
                           what="requests after upgrade %d: %s" % (i + 1, load.summary()))
        finally:
            load.stop()
        took = time.monotonic() - t0
        summary = load.summary()
        print("\n  %d upgrades in %.1f s under load: %s" % (self.UPGRADES, took, summary),
              file=sys.stderr)
        self.assertEqual(load.refused, 0, summary)
        self.assertEqual(load.failed, 0, summary)
        self.assertGreater(load.ok, 200, summary)
        self.assertEqual(self.proxy.log_count("upgrade: the new process (pid"),
                         self.UPGRADES, "one hand-over per upgrade")
        self.assertFalse(os.path.exists(self.pid_file + ".oldbin"),
                         "the last old process removed PIDFILE.oldbin when it exited")
        self.assertEqual(self.admin_get("/ready")[0], 200)

    def test_2_failed_upgrade_keeps_the_old_serving(self):
        before = self.current()
        with open(self.proxy.config_path) as f:
            good = f.read()
        with open(self.proxy.config_path, "w") as f:
            f.write("return { listen = \n")  # a syntax error
        try:
            n = self.proxy.log_count("upgrade failed")
            os.kill(before, signal.SIGUSR2)
            # (the first process may be gone: the log is every process's)
            text = H.wait_for(lambda: self.proxy.log_count("upgrade failed") > n and
                              self.proxy.stderr(), H.T(60), interval=0.02,
                              what="upgrade failed in the log")
        finally:
            with open(self.proxy.config_path, "w") as f:
                f.write(good)
        self.assertIn("keeps serving", text.split("upgrade failed")[-1].split("\n")[0])
        self.assertIn("unexpected symbol", text)  # the new process's own error, in the log
        self.assertEqual(self.current(), before)
        self.assertTrue(pid_alive(before))
        self.assertEqual(self.get(), (200, b"ok"))
        self.assertEqual(self.admin_get("/ready")[0], 200)
        # ... and a later upgrade with the fixed file goes through.
        old, new = self.upgrade()
        self.wait_gone(old)
        self.assertEqual(self.get(), (200, b"ok"))

    def test_3_slow_request_in_flight_completes(self):
        started = os.path.join(self.proxy.dir, "slow.started")
        release = os.path.join(self.proxy.dir, "slow.release")
        for f in (started, release):
            if os.path.exists(f):
                os.unlink(f)
        result = {}

        def slow():
            try:
                result["r"] = self.get("/slow", timeout=60)
            except Exception as e:  # reported by the assertion below
                result["r"] = e

        t = threading.Thread(target=slow, daemon=True)
        t.start()
        H.wait_for(lambda: os.path.exists(started), H.T(10), what="/slow in flight")
        old, new = self.upgrade()
        # The new process serves; the old one still holds the slow request.
        self.assertEqual(self.get(), (200, b"ok"))
        self.assertTrue(pid_alive(old), "the old process waits for its request")
        self.assertNotIn("r", result)
        open(release, "w").close()
        t.join(H.T(30))
        self.assertEqual(result.get("r"), (200, b"slow done"))
        self.wait_gone(old)


    def test_4_worker_count_changes(self):
        """2 -> 3 workers (the third binds afresh into the SO_REUSEPORT group), then 3 -> 1
        (one worker accepts on all three sockets): under load, nothing refused or failed,
        and the socket count on the port says which sockets serve."""
        load = Load(self.proxy.port).start()
        try:
            H.wait_for(lambda: load.total >= 20, H.T(10), what="the load running")
            self.assertEqual(H.listening_count(self.proxy.port), 2)
            for workers, sockets in ((3, 3), (1, 3)):
                self.proxy.cfg["workers"] = workers
                self.proxy.write_config()
                old, new = self.upgrade()
                self.wait_gone(old)
                self.assertEqual(H.listening_count(self.proxy.port), sockets)
                n = load.total
                H.wait_for(lambda: load.total >= n + 50, H.T(30),
                           what="requests after the upgrade to %d workers: %s" %
                           (workers, load.summary()))
        finally:
            load.stop()
            self.proxy.cfg["workers"] = self.WORKERS
            self.proxy.write_config()
        summary = load.summary()
        print("\n  worker count 2 -> 3 -> 1: " + summary, file=sys.stderr)
        self.assertEqual(load.refused, 0, summary)
        self.assertEqual(load.failed, 0, summary)


class NotifyAndDrainTest(UpgradeBase):
    """NOTIFY_SOCKET set to a datagram socket of ours."""

    @classmethod
    def setUpClass(cls):
        d = H.Workdir.new("notify")
        cls.nsock_path = os.path.join(d, "notify.sock")
        cls.nsock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        cls.nsock.bind(cls.nsock_path)
        cls.addClassCleanup(cls.nsock.close)
        cls.ENV = {"NOTIFY_SOCKET": cls.nsock_path}
        super().setUpClass()

    def recv_until(self, pred, what):
        """Datagrams until one satisfies pred; all of them."""
        got = []
        deadline = time.monotonic() + H.T(30)
        while time.monotonic() < deadline:
            self.nsock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                msg = self.nsock.recv(4096).decode()
            except socket.timeout:
                break
            got.append(msg)
            if pred(msg):
                return got
        raise AssertionError("no %s from luaproxy; got %r" % (what, got))

    def test_notify_reload_upgrade_drain(self):
        first = self.recv_until(lambda m: "READY=1" in m.split("\n"), "READY=1 at start")
        self.assertEqual(first[-1].split("\n")[0], "READY=1")
        self.assertEqual(self.admin_get("/ready")[0], 200)

        os.kill(self.current(), signal.SIGHUP)
        got = self.recv_until(lambda m: m.startswith("READY=1"), "READY=1 after the reload")
        self.assertIn("RELOADING=1", got[0].split("\n"))

        old, new = self.upgrade()
        want = "MAINPID=%d" % new
        got = self.recv_until(lambda m: want in m.split("\n") and "READY=1" in m.split("\n"),
                              "MAINPID=NEW with READY=1 from the new process")
        self.wait_gone(old)
        # The old one names the new main pid too (systemd's NotifyAccess=main hears only
        # it), and never says STOPPING=1: the service goes on. Its datagram may come
        # before or after the new one's.
        self.nsock.settimeout(0.5)
        rest = []
        try:
            while True:
                rest.append(self.nsock.recv(4096).decode())
        except socket.timeout:
            pass
        msgs = got + rest
        self.assertIn(want, [m for m in msgs if m == want], msgs)
        self.assertFalse([m for m in msgs if "STOPPING=1" in m], msgs)

        # /ready turns 503 while the new process drains (a slow request holds it), and the
        # admin API answers that rather than refusing the connection.
        started = os.path.join(self.proxy.dir, "slow.started")
        release = os.path.join(self.proxy.dir, "slow.release")
        result = {}
        t = threading.Thread(target=lambda: result.update(r=self.get("/slow", timeout=60)),
                             daemon=True)
        t.start()
        H.wait_for(lambda: os.path.exists(started), H.T(10), what="/slow in flight")
        os.kill(new, signal.SIGTERM)
        self.recv_until(lambda m: m.startswith("STOPPING=1"), "STOPPING=1 at the stop")
        status, body = self.admin_get("/ready")
        self.assertEqual(status, 503, body)
        self.assertIn(b'"draining"', body)
        self.assertEqual(self.admin_get("/status")[0], 503)
        self.assertTrue(pid_alive(new))
        open(release, "w").close()
        t.join(H.T(30))
        self.assertEqual(result.get("r"), (200, b"slow done"))
        self.wait_gone(new)
        self.assertFalse(os.path.exists(self.pid_file), "the last process removed its pid file")


if __name__ == "__main__":
    unittest.main(verbosity=2)
