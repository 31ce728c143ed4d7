"""Black-box integration test harness for luaproxy.

Everything runs on 127.0.0.1.  Every process a test starts is registered here and
stopped by PID (SIGTERM, then SIGKILL after a timeout), from the test's cleanups and
again at interpreter exit; children also get PR_SET_PDEATHSIG so a killed test run
does not leave them behind.  Every network wait has a timeout, scaled by
TIMEOUT_FACTOR when the binaries are sanitizer builds.

Binaries: $LUAPROXY and $LP_ORIGIN (set by ctest), else build-it/ or build/ under the
repository root.  A missing binary fails the test run, it never skips.

Ports: nothing here picks a "free" port and hopes.  The proxy listens on port 0 and reports
what it bound (`listening on 127.0.0.1:PORT`, `admin API on http://127.0.0.1:PORT`), as
lp_origin does (`ready PORT`), so test files can run in parallel.  An address where nothing
listens comes from dead_port(): a port bound and held by this process, never listened on.
"""

import atexit
import ctypes
import errno
import http.client
import json
import os
import random
import re
import select
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


# --------------------------------------------------------------------------- binaries

def _find_binary(env_name, rel_paths):
    path = os.environ.get(env_name)
    if path:
        return path
    for build in ("build-it", "build", "build-asan"):
        for rel in rel_paths:
            cand = os.path.join(REPO, build, rel)
            if os.access(cand, os.X_OK):
                return cand
    return None


LUAPROXY = _find_binary("LUAPROXY", ["luaproxy"])
LP_ORIGIN = _find_binary("LP_ORIGIN", ["tests/origin/lp_origin", "lp_origin"])


def _is_sanitized(path):
    if not path or not os.path.exists(path):
        return False
    try:
        with open(path, "rb") as f:
            data = f.read()
        return b"__asan_init" in data or b"AddressSanitizer" in data
    except OSError:
        return False


SANITIZED = _is_sanitized(LUAPROXY)
TIMEOUT_FACTOR = float(os.environ.get("LP_IT_TIMEOUT_FACTOR", "4" if SANITIZED else "1"))


def T(seconds):
    """A network/process timeout, scaled for slow (sanitizer) builds."""
    return seconds * TIMEOUT_FACTOR


class MissingDependency(AssertionError):
    """A binary or tool the tests need is not there: the run fails, it does not skip."""


def require_proxy(testcase_cls=None):
    if not LUAPROXY or not os.access(LUAPROXY, os.X_OK):
        raise MissingDependency("luaproxy binary not found (set LUAPROXY): %r" % LUAPROXY)


def require_origin():
    if not LP_ORIGIN or not os.access(LP_ORIGIN, os.X_OK):
        raise MissingDependency("lp_origin binary not found (set LP_ORIGIN): %r" % LP_ORIGIN)


def require_tool(name):
    """The path of an external program a test needs (curl, openssl...); fails without it."""
    import shutil
    path = shutil.which(name)
    if not path:
        raise MissingDependency("%s not found in PATH: install it (./dev installs the test "
                                "dependencies)" % name)
    return path


# --------------------------------------------------------------------------- processes

_LIVE = {}  # pid -> Popen
_LIVE_LOCK = threading.Lock()

try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover
    _libc = None


def _preexec():
    # Die with the test process (PR_SET_PDEATHSIG = 1).
    if _libc is not None:
        _libc.prctl(1, signal.SIGKILL, 0, 0, 0)


def spawn(argv, stdout_path, stderr_path, env=None):
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    out = open(stdout_path, "wb")
    err = open(stderr_path, "wb")
    try:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                             env=full_env, preexec_fn=_preexec, close_fds=True)
    finally:
        out.close()
        err.close()
    with _LIVE_LOCK:
        _LIVE[p.pid] = p
    return p


def stop_process(p, sig=signal.SIGTERM, timeout=None):
    """Stop p by PID: sig, wait up to timeout, then SIGKILL.  Returns the exit code."""
    if timeout is None:
        timeout = T(10)
    if p.poll() is None:
        try:
            os.kill(p.pid, sig)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(T(10))
    with _LIVE_LOCK:
        _LIVE.pop(p.pid, None)
    return p.returncode


@atexit.register
def _kill_leftovers():
    with _LIVE_LOCK:
        procs = list(_LIVE.values())
    for p in procs:
        try:
            stop_process(p, timeout=5)
        except Exception:
            pass


SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer")


def sanitizer_errors(text):
    if os.environ.get("LP_IT_IGNORE_LEAKS"):
        markers = SANITIZER_MARKERS[:2]
    else:
        markers = SANITIZER_MARKERS
    return [m for m in markers if m in text]


_HELD = []  # sockets kept bound (never listening) for dead_port()


def dead_port():
    """A port on 127.0.0.1 where nothing listens, for as long as this process runs: bound
    (without SO_REUSEADDR/SO_REUSEPORT, so nobody else can take it) and never listened on,
    so a connect to it is refused."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    _HELD.append(s)
    return s.getsockname()[1]


def reserved_port():
    """A port for a test that must name it in a config before the proxy binds it (moving
    the admin API by a reload): left in TIME_WAIT on our side, so the kernel does not hand
    it out for port 0 for a while, while a server binding with SO_REUSEADDR (libuv does)
    may take it at once."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    port = s.getsockname()[1]
    c = socket.create_connection(("127.0.0.1", port))
    a, _ = s.accept()
    a.close()  # the accepted side closes first: the TIME_WAIT is on `port`
    c.close()
    s.close()
    return port


def wait_for(pred, timeout, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


def port_accepts(port, timeout=0.5):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except OSError:
        return False
    s.close()
    return True


def connect_refused(port, timeout=1.0):
    """True if a connection attempt to port is refused (nothing listening)."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    s.close()
    return False


def listening_count(port):
    """How many TCP sockets listen on port (from /proc/net/tcp, read until two reads agree:
    one read racing with connections coming and going may repeat or miss a row)."""
    last = None
    for _ in range(20):
        try:
            with open("/proc/net/tcp") as f:
                inodes = sorted(line.split()[9] for line in f.readlines()[1:]
                                if line.split()[3] == "0A" and
                                int(line.split()[1].split(":")[1], 16) == port)
        except OSError:
            return 0
        if inodes == last:
            break
        last = inodes
    return len(set(last))


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for pid %d" % pid)


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


# --------------------------------------------------------------------------- Lua config

class LuaRaw(str):
    """A literal Lua expression inserted as-is by to_lua()."""


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LUA_KEYWORDS = {"and", "break", "do", "else", "elseif", "end", "false", "for", "function",
                 "goto", "if", "in", "local", "nil", "not", "or", "repeat", "return", "then",
                 "true", "until", "while"}


def _lua_str(s):
    out = ['"']
    for ch in s.encode("utf-8"):
        c = chr(ch)
        if c == '"':
            out.append('\\"')
        elif c == "\\":
            out.append("\\\\")
        elif 32 <= ch < 127:
            out.append(c)
        else:
            out.append("\\%03d" % ch)
    out.append('"')
    return "".join(out)


def to_lua(v, indent=0):
    pad = "  " * (indent + 1)
    end = "  " * indent
    if isinstance(v, LuaRaw):
        return str(v)
    if v is None:
        return "nil"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return _lua_str(v)
    if isinstance(v, (list, tuple)):
        if not v:
            return "{}"
        return "{\n" + "".join(pad + to_lua(x, indent + 1) + ",\n" for x in v) + end + "}"
    if isinstance(v, dict):
        if not v:
            return "{}"
        parts = []
        for k, x in v.items():
            if isinstance(k, str) and _IDENT.match(k) and k not in _LUA_KEYWORDS:
                key = k
            else:
                key = "[" + to_lua(k) + "]"
            parts.append(pad + key + " = " + to_lua(x, indent + 1) + ",\n")
        return "{\n" + "".join(parts) + end + "}"
    raise TypeError("cannot convert %r to Lua" % (v,))


def config_text(cfg):
    return "-- generated by tests/integration/harness.py\nreturn " + to_lua(cfg) + "\n"


def make_config(port, upstreams, routes, workers=1, timeouts=None, limits=None,
                access_log=None, level="info", **extra):
    """A config listening on 127.0.0.1:port; port 0 lets the proxy pick (Proxy reads it)."""
    cfg = {
        "workers": workers,
        "listen": [{"address": "127.0.0.1:%d" % port}],
        "upstreams": upstreams,
        "routes": routes,
    }
    if timeouts:
        cfg["timeouts"] = timeouts
    if limits:
        cfg["limits"] = limits
    log = {"level": level}
    if access_log is not None:
        log["access"] = access_log
    cfg["log"] = log
    cfg.update(extra)
    return cfg


def upstream(*targets, **kw):
    u = {"targets": [t if isinstance(t, (str, dict)) else "127.0.0.1:%d" % t for t in targets]}
    u.update(kw)
    return u


# --------------------------------------------------------------------------- processes under test

class Workdir:
    _base = None

    @classmethod
    def new(cls, prefix):
        if cls._base is None:
            cls._base = tempfile.mkdtemp(prefix="lp-it-")
            if not os.environ.get("LP_IT_KEEP"):
                import shutil
                atexit.register(shutil.rmtree, cls._base, True)
        return tempfile.mkdtemp(prefix=prefix + "-", dir=cls._base)


class Origin:
    """An lp_origin process: `lp_origin -p PORT -i ID`, ready when it prints `ready PORT`."""

    def __init__(self, ident="o1", port=0):
        require_origin()
        self.ident = ident
        self.want_port = port
        self.port = None
        self.proc = None
        self.dir = Workdir.new("origin-" + ident)

    def start(self):
        out = os.path.join(self.dir, "stdout")
        err = os.path.join(self.dir, "stderr")
        self.proc = spawn([LP_ORIGIN, "-p", str(self.want_port), "-i", self.ident], out, err)

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError("lp_origin exited with %s: %s" % (self.proc.returncode,
                                                                      self.stderr()))
            with open(out, "rb") as f:
                m = re.search(rb"ready (\d+)", f.read())
            return int(m.group(1)) if m else None

        self.port = wait_for(ready, T(30), what="lp_origin ready")
        self.want_port = self.port
        return self

    def stderr(self):
        try:
            with open(os.path.join(self.dir, "stderr"), "r", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self, sig=signal.SIGTERM):
        if self.proc is not None:
            rc = stop_process(self.proc, sig)
            self.proc = None
            return rc
        return None

    def address(self):
        return "127.0.0.1:%d" % self.port


class Proxy:
    """A luaproxy process serving a generated config."""

    def __init__(self, cfg, args=(), env=None, name="proxy"):
        require_proxy()
        self.cfg = cfg
        self.args = list(args)
        self.env = env
        self.dir = Workdir.new(name)
        self.config_path = os.path.join(self.dir, "proxy.lua")
        self.stdout_path = os.path.join(self.dir, "stdout")
        self.stderr_path = os.path.join(self.dir, "stderr")
        self.proc = None
        self.returncode = None
        self._ports_from_config()

    def _ports_from_config(self):
        """Ports as configured (0 where the proxy picks); wait_ready() puts the bound ones."""
        self.ports = [int(l["address"].rsplit(":", 1)[1]) for l in self.cfg["listen"]]
        self.port = self.ports[0]
        admin = (self.cfg.get("admin") or {}).get("address")
        self.admin_port = int(admin.rsplit(":", 1)[1]) if admin else None

    @classmethod
    def build(cls, upstreams, routes, name="proxy", args=(), env=None, **kw):
        port = 0
        d = Workdir.new(name + "-log")
        kw.setdefault("access_log", os.path.join(d, "access.log"))
        cfg = make_config(port, upstreams, routes, **kw)
        return cls(cfg, args=args, env=env, name=name)

    @property
    def access_log_path(self):
        log = self.cfg.get("log") or {}
        a = log.get("access")
        return a if isinstance(a, str) and a != "-" else None

    @property
    def pid(self):
        return self.proc.pid

    def write_config(self):
        with open(self.config_path, "w") as f:
            f.write(config_text(self.cfg))
        # The same config as JSON beside it, for tools that do not read Lua (a stand-in
        # proxy used to check the tests themselves).
        try:
            with open(os.path.join(self.dir, "proxy.json"), "w") as f:
                json.dump(self.cfg, f)
        except (TypeError, ValueError):
            pass

    def start(self, wait=True):
        self.write_config()
        env = {}
        if SANITIZED:
            env["ASAN_OPTIONS"] = os.environ.get("ASAN_OPTIONS", "") + ":abort_on_error=0"
        if self.env:
            env.update(self.env)
        self._ports_from_config()
        self.proc = spawn([LUAPROXY, "-c", self.config_path] + self.args,
                          self.stdout_path, self.stderr_path, env=env)
        if wait:
            self.wait_ready()
        return self

    LISTENING = re.compile(r"\] main: listening on (\S+):(\d+) ")
    ADMIN = re.compile(r"\] main: admin API on http://(\S+):(\d+)")

    def wait_ready(self):
        """Waits for the start-up log lines that give the bound ports (listeners, in config
        order, then the admin API when configured) and records them."""
        want_admin = bool((self.cfg.get("admin") or {}).get("address"))
        n = len(self.cfg["listen"])

        pid_file = self.cfg.get("pid_file")

        def pid_written():
            # The pid file is written after the listeners are up (engine/main.c).
            try:
                with open(pid_file) as f:
                    return not pid_file or int(f.read().strip() or 0) == self.proc.pid
            except (OSError, TypeError):
                return not pid_file

        def ready():
            text = self.stderr()
            ports = [int(m.group(2)) for m in self.LISTENING.finditer(text)]
            admin = self.ADMIN.search(text)
            if len(ports) >= n and (admin or not want_admin) and pid_written():
                return ports[:n], int(admin.group(2)) if admin else None
            if self.proc.poll() is not None:
                raise AssertionError("luaproxy exited with %s during start-up:\n%s" %
                                     (self.proc.returncode, text[-4000:]))
            return None

        # A bound on a hang, not on speed: a start-up that loads big files (100,000 CIDR
        # prefixes, the CRS) takes many seconds on a loaded machine.
        ports, admin = wait_for(ready, T(60), interval=0.02,
                                what="luaproxy's `listening on` lines (logged at level notice: "
                                     "a config with log.level warn or error hides them)")
        self.ports = ports
        self.port = ports[0]
        self.admin_port = admin

    def bound_config(self):
        """self.cfg with the bound ports in place of port 0 (to restart on the same ports, or
        for `luaproxy -s`, which finds the admin API by the config's address)."""
        import copy
        cfg = copy.deepcopy(self.cfg)
        for entry, port in zip(cfg["listen"], self.ports):
            entry["address"] = "127.0.0.1:%d" % port
        if self.admin_port:
            cfg["admin"]["address"] = "127.0.0.1:%d" % self.admin_port
        return cfg

    def pin_ports(self):
        """Rewrites self.cfg (and the file) with the bound ports. The running proxy treats a
        reload naming a bound port as the same listener (nothing is rebound)."""
        self.cfg = self.bound_config()
        self.write_config()

    def log_count(self, needle):
        return self.stderr().count(needle)

    def wait_log(self, needle, count=1, timeout=None):
        """Waits until `needle` is in the error log `count` times; returns the log."""
        def seen():
            text = self.stderr()
            if text.count(needle) >= count:
                return text
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError("luaproxy exited (%s) while waiting for %r:\n%s" %
                                     (self.proc.returncode, needle, text[-4000:]))
            return None
        return wait_for(seen, timeout or T(10), interval=0.02, what="%r in the log" % needle)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stderr(self):
        try:
            with open(self.stderr_path, "r", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stdout(self):
        try:
            with open(self.stdout_path, "r", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def signal(self, sig):
        os.kill(self.proc.pid, sig)

    def wait_exit(self, timeout):
        try:
            self.returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        with _LIVE_LOCK:
            _LIVE.pop(self.proc.pid, None)
        return self.returncode

    def stop(self, timeout=None):
        """SIGTERM (then SIGKILL) and check stderr for sanitizer reports."""
        if self.proc is not None:
            self.returncode = stop_process(self.proc, timeout=timeout or T(40))
        self.check_sanitizers()
        return self.returncode

    def check_sanitizers(self):
        errs = sanitizer_errors(self.stderr())
        if errs:
            raise AssertionError("luaproxy stderr has sanitizer reports (%s):\n%s" %
                                 (", ".join(errs), self.stderr()[-8000:]))

    def access_lines(self):
        p = self.access_log_path
        if not p or not os.path.exists(p):
            return []
        with open(p, "r", errors="replace") as f:
            return [l for l in f.read().split("\n") if l.strip()]


# --------------------------------------------------------------------------- HTTP client

class Response:
    def __init__(self):
        self.version = None
        self.status = None
        self.reason = None
        self.headers = []          # [(name, value)] as received
        self.body = b""
        self.body_len = 0
        self.framing = None        # "length" | "chunked" | "close" | "none"
        self.complete = False      # framing says the body ended where it should
        self.trailers = []
        self.interim = []          # 1xx responses seen before this one (status, headers)
        self.raw_head = b""

    def header(self, name, default=None):
        n = name.lower()
        for k, v in self.headers:
            if k.lower() == n:
                return v
        return default

    def header_all(self, name):
        n = name.lower()
        return [v for k, v in self.headers if k.lower() == n]

    def has_header(self, name):
        return self.header(name) is not None

    def tokens(self, name):
        """Comma-separated tokens of every `name` field, lower-cased."""
        out = []
        for v in self.header_all(name):
            out += [t.strip().lower() for t in v.split(",") if t.strip()]
        return out

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def __repr__(self):
        return "<Response %s %s %r framing=%s len=%d>" % (self.version, self.status, self.headers,
                                                          self.framing, self.body_len)


class PeerClosed(Exception):
    pass


class Client:
    """One raw TCP client connection with a receive buffer.  All reads time out."""

    def __init__(self, port, timeout=None, host="127.0.0.1", rcvbuf=None):
        self.timeout = timeout if timeout is not None else T(10)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(self.timeout)
        try:
            self.sock.connect((host, port))
        except ConnectionRefusedError:
            self.sock.close()
            raise ConnectionRefusedError(errno.ECONNREFUSED, "connection to port %d refused "
                                         "(listening sockets on it: %d)" %
                                         (port, listening_count(port)))
        except OSError:
            self.sock.close()
            raise
        self.buf = bytearray()
        self.eof = False
        self.reset = False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def abort(self):
        """Close with RST."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        except OSError:
            pass
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("latin-1")
        self.sock.sendall(data)

    def send_split(self, data, pieces, pause=0.0):
        """Send data in `pieces` random-sized writes (with TCP_NODELAY)."""
        if isinstance(data, str):
            data = data.encode("latin-1")
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cuts = sorted(random.sample(range(1, len(data)), min(pieces - 1, len(data) - 1))) \
            if len(data) > 1 and pieces > 1 else []
        prev = 0
        for c in cuts + [len(data)]:
            self.sock.sendall(data[prev:c])
            prev = c
            if pause:
                time.sleep(pause)

    def shutdown_write(self):
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _fill(self, timeout=None):
        """Read more bytes into buf.  False at EOF/reset.  Raises socket.timeout."""
        if self.eof:
            return False
        self.sock.settimeout(timeout if timeout is not None else self.timeout)
        try:
            data = self.sock.recv(1 << 18)
        except (ConnectionResetError, BrokenPipeError):
            self.eof = True
            self.reset = True
            return False
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def read_until(self, delim, limit=1 << 20):
        while True:
            i = self.buf.find(delim)
            if i >= 0:
                out = bytes(self.buf[:i + len(delim)])
                del self.buf[:i + len(delim)]
                return out
            if len(self.buf) > limit:
                raise AssertionError("no %r within %d bytes" % (delim, limit))
            if not self._fill():
                raise PeerClosed("peer closed before %r; have %r" % (delim, bytes(self.buf[:200])))

    def read_exact(self, n, sink=None):
        """Read n bytes.  With sink, feed them to sink(bytes) instead of returning them."""
        out = bytearray() if sink is None else None
        while n > 0:
            if not self.buf and not self._fill():
                raise PeerClosed("peer closed with %d bytes outstanding" % n)
            take = min(n, len(self.buf))
            piece = bytes(self.buf[:take])
            del self.buf[:take]
            if sink is None:
                out += piece
            else:
                sink(piece)
            n -= take
        return bytes(out) if sink is None else None

    def read_to_eof(self, sink=None, limit=None):
        out = bytearray()
        total = 0
        while True:
            if self.buf:
                piece = bytes(self.buf)
                self.buf.clear()
                total += len(piece)
                if sink:
                    sink(piece)
                else:
                    out += piece
                if limit and total > limit:
                    raise AssertionError("more than %d bytes before EOF" % limit)
            if not self._fill():
                break
        return bytes(out)

    def read_head(self):
        raw = self.read_until(b"\r\n\r\n", limit=1 << 20)
        lines = raw[:-4].split(b"\r\n")
        m = re.match(rb"^(HTTP/\d\.\d) (\d{3})(?: (.*))?$", lines[0])
        if not m:
            raise AssertionError("bad status line %r" % lines[0])
        headers = []
        for l in lines[1:]:
            if b":" not in l:
                raise AssertionError("bad header line %r in %r" % (l, raw))
            k, v = l.split(b":", 1)
            headers.append((k.decode("latin-1"), v.strip(b" \t").decode("latin-1")))
        return m.group(1).decode(), int(m.group(2)), (m.group(3) or b"").decode("latin-1"), \
            headers, raw

    def read_response(self, method="GET", sink=None, keep_interim=True, stop_at_interim=False):
        """Read one final response (1xx other than 101 are collected in .interim).

        A truncated body does not raise: .complete is False and the bytes received are kept.
        """
        r = Response()
        while True:
            try:
                r.version, r.status, r.reason, r.headers, r.raw_head = self.read_head()
            except PeerClosed:
                if r.interim:
                    raise
                raise
            if 100 <= r.status < 200 and r.status != 101:
                r.interim.append((r.status, r.headers))
                if stop_at_interim:
                    return r
                continue
            break
        te = [t for t in r.tokens("transfer-encoding")]
        cl = r.header_all("content-length")
        got = [0]
        body = bytearray()

        def collect(piece):
            got[0] += len(piece)
            if sink:
                sink(piece)
            else:
                body.extend(piece)

        if method == "HEAD" or r.status in (204, 304) or r.status == 101 or \
                (method == "CONNECT" and 200 <= r.status < 300):
            r.framing = "none"
            r.complete = True
        elif te:
            r.framing = "chunked" if te[-1] == "chunked" else "close"
            if r.framing == "chunked":
                r.complete = self._read_chunked(collect, r)
            else:
                self.read_to_eof(sink=collect)
                r.complete = not self.reset
        elif cl:
            r.framing = "length"
            n = int(cl[0])
            try:
                self.read_exact(n, sink=collect)
                r.complete = True
            except PeerClosed:
                # keep whatever arrived
                if self.buf:
                    collect(bytes(self.buf))
                    self.buf.clear()
                r.complete = False
        else:
            r.framing = "close"
            self.read_to_eof(sink=collect)
            r.complete = not self.reset
        r.body = bytes(body)
        r.body_len = got[0]
        return r

    def _read_chunked(self, collect, r):
        try:
            while True:
                line = self.read_until(b"\r\n", limit=1 << 16)
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while True:
                        t = self.read_until(b"\r\n", limit=1 << 16)
                        if t == b"\r\n":
                            return True
                        k, _, v = t[:-2].partition(b":")
                        r.trailers.append((k.decode("latin-1"), v.strip().decode("latin-1")))
                self.read_exact(size, sink=collect)
                if self.read_exact(2) != b"\r\n":
                    raise AssertionError("chunk data not followed by CRLF")
        except PeerClosed:
            if self.buf:
                self.buf.clear()
            return False

    def request(self, method="GET", path="/", headers=None, body=None, version="HTTP/1.1",
                host="a.test", sink=None):
        self.send(build_request(method, path, headers, body, version, host))
        return self.read_response(method, sink=sink)

    def wait_closed(self, timeout=None):
        """Wait for EOF/RST.  Returns (closed, extra_bytes_received)."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        extra = bytearray(self.buf)
        self.buf.clear()
        while not self.eof:
            left = deadline - time.monotonic()
            if left <= 0:
                return False, bytes(extra)
            try:
                if not self._fill(timeout=left):
                    break
            except socket.timeout:
                return False, bytes(extra)
            extra += self.buf
            self.buf.clear()
        return True, bytes(extra)

    def is_open(self, wait=0.3):
        """True if no EOF/RST (and no data) arrives within `wait` seconds."""
        if self.eof:
            return False
        try:
            r, _, _ = select.select([self.sock], [], [], wait)
        except (OSError, ValueError):
            return False
        if not r:
            return True
        try:
            data = self.sock.recv(1 << 16, socket.MSG_PEEK)
        except OSError:
            return False
        return bool(data)


def build_request(method="GET", path="/", headers=None, body=None, version="HTTP/1.1",
                  host="a.test"):
    """Serialise a request.  headers: list of (name, value) or dict.  host=None: no Host
    header; a Host in headers overrides.  A body gets a Content-Length unless headers
    already has Content-Length or Transfer-Encoding."""
    if isinstance(headers, dict):
        headers = list(headers.items())
    headers = list(headers or [])
    names = {k.lower() for k, _ in headers}
    lines = ["%s %s %s" % (method, path, version)]
    if host is not None and "host" not in names:
        lines.append("Host: %s" % host)
    for k, v in headers:
        lines.append("%s: %s" % (k, v))
    if isinstance(body, str):
        body = body.encode("latin-1")
    if body is not None and "content-length" not in names and "transfer-encoding" not in names:
        lines.append("Content-Length: %d" % len(body))
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + (body or b"")


def chunked(body, sizes=None, ext=False, trailers=None):
    """Encode body with chunked framing; sizes is a list of chunk sizes (cycled)."""
    out = bytearray()
    sizes = sizes or [len(body) or 1]
    i = 0
    k = 0
    while i < len(body):
        n = min(sizes[k % len(sizes)], len(body) - i)
        k += 1
        out += b"%x" % n
        if ext:
            out += b";name=val"
        out += b"\r\n" + body[i:i + n] + b"\r\n"
        i += n
    out += b"0\r\n"
    for name, val in (trailers or []):
        out += ("%s: %s\r\n" % (name, val)).encode()
    out += b"\r\n"
    return bytes(out)


def tls_get(port, path, sni, cafile=None):
    """One GET over TLS (ALPN http/1.1, Connection: close, Host = sni); the certificate is
    verified against cafile when given. Returns (status, {lower-case name: value}, body)."""
    if cafile:
        ctx = ssl.create_default_context(cafile=cafile)
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=T(10)) as s:
        with ctx.wrap_socket(s, server_hostname=sni) as t:
            t.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" %
                       (path, sni)).encode())
            while True:
                chunk = t.recv(65536)
                if not chunk:
                    break
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = {}
    for l in lines[1:]:
        n, _, v = l.partition(":")
        fields[n.strip().lower()] = v.strip()
    return int(lines[0].split()[1]), fields, body


def admin_request(port, method, path):
    """One request to an admin listener on 127.0.0.1:port: (status, its body as bytes)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=T(10))
    try:
        c.request(method, path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def admin_json(port, method, path):
    """One request to an admin listener: (status, its JSON body or None)."""
    status, body = admin_request(port, method, path)
    return status, json.loads(body or b"null")


def admin_text(port, path):
    """GET path of an admin listener (e.g. /metrics): its body as text."""
    return admin_request(port, "GET", path)[1].decode()


def get(port, path="/", host="a.test", headers=None, method="GET", body=None,
        version="HTTP/1.1", timeout=None, sink=None):
    """One request on a fresh connection."""
    with Client(port, timeout=timeout) as c:
        return c.request(method, path, headers, body, version, host, sink=sink)


def raw_exchange(port, data, timeout=None):
    """Send raw bytes on a fresh connection; return (Response or None, closed_after, client)."""
    c = Client(port, timeout=timeout)
    try:
        c.send(data)
        try:
            r = c.read_response()
        except PeerClosed:
            return None, True, c
        closed, _ = c.wait_closed(T(5))
        return r, closed, c
    finally:
        c.close()


# The payload of lp_origin's /large: byte i is 'a' + i % 26.
_PATTERN = bytes((ord("a") + i % 26) for i in range(26 * 40000 + 26))


class PatternChecker:
    """Streaming verifier for /large bodies."""

    def __init__(self):
        self.offset = 0
        self.bad_at = None

    def __call__(self, piece):
        pos = 0
        while pos < len(piece):
            n = min(len(piece) - pos, 26 * 40000)
            start = self.offset % 26
            if self.bad_at is None and piece[pos:pos + n] != _PATTERN[start:start + n]:
                seg = piece[pos:pos + n]
                for j in range(n):
                    if seg[j] != _PATTERN[start + j]:
                        self.bad_at = self.offset + j
                        break
            pos += n
            self.offset += n


def large_body(n):
    out = bytearray()
    while len(out) < n:
        out += _PATTERN[:min(len(_PATTERN) - 26, n - len(out))]
    return bytes(out[:n])


# --------------------------------------------------------------------------- a scriptable origin

class RawRequest:
    def __init__(self, conn_no, index, head, method, target, version, headers, body):
        self.conn_no = conn_no
        self.index = index          # requests served on this connection before, 0-based
        self.head = head
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.body = body

    def header(self, name, default=None):
        n = name.lower()
        for k, v in self.headers:
            if k.lower() == n:
                return v
        return default


def simple_response(status=200, body=b"ok", headers=None, reason="OK"):
    lines = ["HTTP/1.1 %d %s" % (status, reason)]
    for k, v in (headers or []):
        lines.append("%s: %s" % (k, v))
    if not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in (headers or [])):
        lines.append("Content-Length: %d" % len(body))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class RawOrigin:
    """A threaded HTTP/1.1 origin in Python, for tests that need exact control of the
    upstream's bytes or exact knowledge of what reached it.

    handler(req: RawRequest) returns bytes to send, or a tuple (bytes, "close") to close
    after sending, or None to close without answering, or an iterable of bytes sent one
    piece at a time as it yields them (a paced body; a piece "close" closes there).
    Everything received is kept in
    .received (all connections, concatenated per connection in .conn_data)."""

    def __init__(self, handler=None):
        self.handler = handler or (lambda req: simple_response(
            200, b"raw-origin", [("X-Conn-No", str(req.conn_no)),
                                 ("X-Conn-Index", str(req.index))]))
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(128)
        self.port = self.lsock.getsockname()[1]
        self.lock = threading.Lock()
        self.conn_data = []
        self.requests = []
        self.connections = 0
        self.socks = []
        self.stopped = False
        self.threads = []
        t = threading.Thread(target=self._accept_loop, daemon=True)
        t.start()
        self.threads.append(t)

    def address(self):
        return "127.0.0.1:%d" % self.port

    @property
    def received(self):
        with self.lock:
            return b"".join(bytes(d) for d in self.conn_data)

    def _accept_loop(self):
        self.lsock.settimeout(0.2)
        while not self.stopped:
            try:
                s, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.connections += 1
                no = self.connections
                data = bytearray()
                self.conn_data.append(data)
                self.socks.append(s)
            t = threading.Thread(target=self._serve, args=(s, no, data), daemon=True)
            t.start()
            self.threads.append(t)

    def _serve(self, s, no, data):
        s.settimeout(T(30))
        buf = bytearray()
        index = 0

        def fill():
            try:
                d = s.recv(65536)
            except OSError:
                return False
            if not d:
                return False
            with self.lock:
                data.extend(d)
            buf.extend(d)
            return True

        try:
            while not self.stopped:
                while b"\r\n\r\n" not in buf:
                    if not fill():
                        return
                i = buf.find(b"\r\n\r\n")
                head = bytes(buf[:i + 4])
                del buf[:i + 4]
                lines = head[:-4].split(b"\r\n")
                try:
                    method, target, version = lines[0].decode("latin-1").split(" ", 2)
                except ValueError:
                    return
                headers = []
                for l in lines[1:]:
                    k, _, v = l.decode("latin-1").partition(":")
                    headers.append((k, v.strip()))
                req = RawRequest(no, index, head, method, target, version, headers, b"")
                te = (req.header("transfer-encoding") or "").lower()
                body = bytearray()
                if "chunked" in te:
                    while True:
                        while b"\r\n" not in buf:
                            if not fill():
                                return
                        j = buf.find(b"\r\n")
                        size = int(bytes(buf[:j]).split(b";")[0], 16)
                        del buf[:j + 2]
                        if size == 0:
                            while True:
                                while b"\r\n" not in buf:
                                    if not fill():
                                        return
                                j = buf.find(b"\r\n")
                                line = bytes(buf[:j])
                                del buf[:j + 2]
                                if not line:
                                    break
                            break
                        while len(buf) < size + 2:
                            if not fill():
                                return
                        body += buf[:size]
                        del buf[:size + 2]
                elif req.header("content-length"):
                    n = int(req.header("content-length"))
                    while len(buf) < n:
                        if not fill():
                            return
                    body += buf[:n]
                    del buf[:n]
                req.body = bytes(body)
                with self.lock:
                    self.requests.append(req)
                index += 1
                out = self.handler(req)
                if out is None:
                    return
                close = False
                if isinstance(out, tuple):
                    out, close = out[0], out[1] == "close"
                if out and not isinstance(out, (bytes, bytearray)):
                    for piece in out:  # each sent as it comes (a paced body)
                        if piece == "close":
                            return
                        s.sendall(piece)
                elif out:
                    s.sendall(out)
                if close:
                    return
        except (OSError, ValueError):
            return
        finally:
            try:
                s.close()
            except OSError:
                pass

    def stop(self):
        self.stopped = True
        try:
            self.lsock.close()
        except OSError:
            pass
        with self.lock:
            socks = list(self.socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass
        for t in self.threads:
            t.join(T(5))


# --------------------------------------------------------------------------- test base

class ScriptedOrigin:
    """A RawOrigin that answers each path from a script and counts the requests per path:
    script(path, fn) with fn(req, n) returning what a RawOrigin handler returns (n: the
    path's request count, from 1). An unscripted path gets an uncacheable 404."""

    def __init__(self):
        self.lock = threading.Lock()
        self.scripts = {}
        self.counts = {}
        self.raw = RawOrigin(self._handle)

    def address(self):
        return self.raw.address()

    def stop(self):
        self.raw.stop()

    def script(self, path, fn):
        with self.lock:
            self.scripts[path] = fn
            self.counts[path] = 0

    def count(self, path):
        with self.lock:
            return self.counts.get(path, 0)

    def _handle(self, req):
        path = req.target.split("?", 1)[0]
        with self.lock:
            fn = self.scripts.get(path)
            self.counts[path] = self.counts.get(path, 0) + 1
            n = self.counts[path]
        if fn is None:
            return simple_response(404, b"no script", [("Cache-Control", "no-store")])
        return fn(req, n)


def cacheable(body, *headers):
    """A 200 fresh for an hour (max-age=3600) with extra headers."""
    return simple_response(200, body, [("Cache-Control", "max-age=3600")] + list(headers))


class ProxyTestCase(unittest.TestCase):
    """Base: subclasses build origins and a proxy in setUpClass via start_origin() and
    start_proxy(); everything is stopped by class cleanups even when set-up fails."""

    proxy = None

    @classmethod
    def start_origin(cls, ident="o1", port=0):
        o = Origin(ident, port)
        cls.addClassCleanup(o.stop)
        return o.start()

    @classmethod
    def start_raw_origin(cls, handler=None):
        o = RawOrigin(handler)
        cls.addClassCleanup(o.stop)
        return o

    @classmethod
    def start_proxy(cls, upstreams, routes, **kw):
        p = Proxy.build(upstreams, routes, name=cls.__name__, **kw)
        cls.addClassCleanup(p.stop)
        return p.start()

    def assertAlive(self, proxy=None):
        proxy = proxy or self.proxy
        if not proxy.alive():
            rc = proxy.proc.poll() if proxy.proc is not None else None
            how = ("killed by signal %d" % -rc) if rc is not None and rc < 0 else \
                "exit code %s" % rc
            self.fail("proxy died (%s):\n%s" % (how, proxy.stderr()[-6000:]))

    def assertClosed(self, client, timeout=None, msg=None):
        closed, extra = client.wait_closed(timeout if timeout is not None else T(5))
        self.assertTrue(closed, msg or "connection not closed by the proxy")
        return extra


# ---- shared by several test files (one copy each) ----

def etcd_b64(s):
    """A string as etcd's JSON gateway takes keys and values: base64."""
    import base64
    return base64.b64encode(s.encode()).decode()


class Etcd:
    """A real etcd (Debian's etcd-server) on 127.0.0.1, its data in a work directory,
    stopped by PID (test_fleet.py). etcd cannot listen on port 0 and say which port it got:
    its client and peer ports come from reserved_port() (etcd binds with SO_REUSEADDR).
    With `certs` (file names by role: ca.pem, server.pem/.key, client.pem/.key) it serves
    clients over TLS only and requires a client certificate; call() presents one."""

    def __init__(self, certs=None):
        self.bin = require_tool("etcd")
        self.dir = Workdir.new("etcd")
        self.client = reserved_port()
        self.peer = reserved_port()
        self.certs = certs
        self.ctx = None
        self.proc = None

    @property
    def url(self):
        return "%s://127.0.0.1:%d" % ("https" if self.certs else "http", self.client)

    def start(self):
        peer = "http://127.0.0.1:%d" % self.peer
        argv = [self.bin, "--name", "lp", "--data-dir", os.path.join(self.dir, "data"),
                "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", "lp=" + peer]
        c = self.certs
        if c:
            argv += ["--cert-file", c["server.pem"], "--key-file", c["server.key"],
                     "--trusted-ca-file", c["ca.pem"], "--client-cert-auth"]
            self.ctx = ssl.create_default_context(cafile=c["ca.pem"])
            self.ctx.check_hostname = False  # the certificate names etcd.test
            self.ctx.load_cert_chain(c["client.pem"], c["client.key"])
        self.proc = spawn(argv, os.path.join(self.dir, "stdout"),
                          os.path.join(self.dir, "stderr"))

        def up():
            if self.proc.poll() is not None:
                raise AssertionError("etcd exited: " + self.stderr()[-2000:])
            try:
                self.call("/v3/kv/range", {"key": etcd_b64("x")})
                return True
            except OSError:
                return False
        wait_for(up, T(20), what="etcd answering" + (" over TLS" if c else ""))
        return self

    def stop(self, sig=signal.SIGTERM):
        if self.proc is not None:
            stop_process(self.proc, sig)
            self.proc = None

    def stderr(self):
        with open(os.path.join(self.dir, "stderr"), errors="replace") as f:
            return f.read()

    def call(self, path, body):
        import urllib.request
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=T(5), context=self.ctx) as r:
            return json.loads(r.read())

    def put(self, key, value):
        r = self.call("/v3/kv/put", {"key": etcd_b64(key), "value": etcd_b64(value)})
        return int(r["header"]["revision"])

    def get(self, key):
        import base64
        r = self.call("/v3/kv/range", {"key": etcd_b64(key)})
        kvs = r.get("kvs") or []
        return base64.b64decode(kvs[0]["value"]).decode() if kvs else None

    def revision(self):
        r = self.call("/v3/kv/range", {"key": etcd_b64("x")})
        return int(r["header"]["revision"])

    def ctl(self, *args, check=True):
        """etcdctl (API 3) against this etcd: the finished process (check: exit 0)."""
        argv = [require_tool("etcdctl"), "--endpoints=" + self.url] + list(args)
        r = subprocess.run(argv, env=dict(os.environ, ETCDCTL_API="3"), capture_output=True,
                           text=True, timeout=T(20))
        if check and r.returncode != 0:
            raise AssertionError("etcdctl %s: %s" % (" ".join(args), r.stderr))
        return r

    def enable_auth(self, user="root", password="pw"):
        """Authentication on: `user` (etcd's root role when "root") with `password`."""
        self.ctl("user", "add", "%s:%s" % (user, password))
        self.ctl("auth", "enable")


def load_clients(ports, path, duration, per_port=2):
    """`per_port` keep-alive clients on each port send GET path one after another for
    `duration` seconds (a shared rate limit's load, test_protection.py and
    test_fleet_redis.py): (statuses counted, errors raised, spans), a span per client that
    got an answer: ((sent, answered) of its first request, (sent, answered) of its last)."""
    counts, errors, spans = {}, [], []
    lock = threading.Lock()
    start = time.monotonic()

    def load(port):
        first = last = None
        try:
            with Client(port, timeout=T(10)) as c:
                while time.monotonic() - start < duration:
                    sent = time.monotonic()
                    r = c.request("GET", path)
                    last = (sent, time.monotonic())
                    first = first or last
                    with lock:
                        counts[r.status] = counts.get(r.status, 0) + 1
                    if r.header("Connection") == "close":
                        return
        except Exception as e:  # noqa: BLE001
            errors.append(e)
        finally:
            if first is not None:
                with lock:
                    spans.append((first, last))
    ts = [threading.Thread(target=load, args=(p,)) for p in ports for _ in range(per_port)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(T(60) + duration)
    return counts, errors, spans


def h2_frame(ftype, flags, sid, payload=b""):
    """One HTTP/2 frame (RFC 9113 section 4.1), for tests that write frames by hand."""
    return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + \
        (sid & 0x7fffffff).to_bytes(4, "big") + payload


def h2_take_frames(buf):
    """The whole frames at the start of the bytearray buf, taken off it: a list of (type,
    flags, stream id, payload); a partial frame stays for the next read."""
    frames = []
    while len(buf) >= 9:
        n = int.from_bytes(buf[0:3], "big")
        if len(buf) < 9 + n:
            break
        frames.append((buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7fffffff,
                       bytes(buf[9:9 + n])))
        del buf[:9 + n]
    return frames


def main():
    unittest.main(verbosity=2)
