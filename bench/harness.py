#!/usr/bin/env python3
"""Side-by-side benchmark: luaproxy vs nginx in front of one origin.

Run it through bench/run.sh, which sets the environment below and the limits.

Environment (all optional):
  LUAPROXY        luaproxy binary            (default build/luaproxy)
  ORIGIN          lp_origin binary           (default build/tests/origin/lp_origin)
  NGINX           nginx binary               (default /usr/sbin/nginx)
  WRK             wrk binary                 (default /usr/bin/wrk)
  ROUNDS          measured rounds            (default 3; QUICK=1: 1)
  DURATION        seconds per measured run   (default 5; QUICK=1: 2)
  WARMUP          seconds of the discarded warm-up run per proxy (default 2; QUICK=1: 1)
  QUICK=1         smoke run: 1 round of 2 s
  PROXIES         which proxies to run       (default "luaproxy nginx")
  ONLY            regex: run only scenarios whose name matches
  IDLE_CONNS      idle keep-alive connections for the memory test (default 10000; 0 skips)
  IDLE_H2         idle HTTP/2-over-TLS connections for the h2 memory test (default 3000; 0 skips)
  CPU_PROXY       CPU the proxies are pinned to        (default 0)
  CPU_LOAD        CPU wrk and the origin are pinned to (default 1)
  RESULTS         JSON output                (default bench/results/latest.json)
  KEEP=1          keep the temp dir (generated configs, proxy logs) after the run
  STANDIN_ORIGIN=1  development only: use an nginx serving fixed files as the origin
  LP_BENCH_PIDFILE  the PIDs still running are listed here (run.sh kills them on EXIT)
  LP_BENCH_TMP      parent of the temp dir (run.sh removes it after a clean run)

Exit status: 0 when everything started and served; 1 when a process failed to
start, died, or answered a sanity request wrongly. Never because of the figures.
"""
import json
import os
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import atexit
import tempfile
import time
import http.client

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(BENCH_DIR)
sys.path.insert(0, BENCH_DIR)

import scenarios as scenario_defs  # noqa: E402
import idle_conns  # noqa: E402
import idle_h2  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
PROXY_NAMES = ("luaproxy", "nginx")


class StartError(Exception):
    pass


# ---------------------------------------------------------------------------
# settings
# ---------------------------------------------------------------------------
def _abspath(p):
    return p if os.path.isabs(p) else os.path.join(REPO_DIR, p)


def settings():
    quick = os.environ.get("QUICK", "") not in ("", "0")
    s = {
        "quick": quick,
        "luaproxy": _abspath(os.environ.get("LUAPROXY", "build/luaproxy")),
        "origin": _abspath(os.environ.get("ORIGIN", "build/tests/origin/lp_origin")),
        "nginx": os.environ.get("NGINX", "/usr/sbin/nginx"),
        "wrk": os.environ.get("WRK", "/usr/bin/wrk"),
        "rounds": int(os.environ.get("ROUNDS", "1" if quick else "3")),
        "duration": float(os.environ.get("DURATION", "2" if quick else "5").rstrip("s")),
        "warmup": float(os.environ.get("WARMUP", "1" if quick else "2").rstrip("s")),
        "proxies": [p for p in os.environ.get("PROXIES", "luaproxy nginx").split() if p],
        "only": os.environ.get("ONLY", ""),
        "idle_conns": int(os.environ.get("IDLE_CONNS", "10000")),
        "idle_h2": int(os.environ.get("IDLE_H2", "3000")),
        "cpu_proxy": os.environ.get("CPU_PROXY", "0"),
        "cpu_load": os.environ.get("CPU_LOAD", "1"),
        "results": _abspath(os.environ.get("RESULTS", "bench/results/latest.json")),
        "standin_origin": os.environ.get("STANDIN_ORIGIN", "") not in ("", "0"),
        "pidfile": os.environ.get("LP_BENCH_PIDFILE", ""),
    }
    for p in s["proxies"]:
        if p not in PROXY_NAMES:
            raise StartError("PROXIES: unknown proxy %r (known: %s)" % (p, " ".join(PROXY_NAMES)))
    s["pin"] = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    return s


# ---------------------------------------------------------------------------
# processes: every one is recorded and stopped by PID
# ---------------------------------------------------------------------------
class Procs:
    def __init__(self, pidfile):
        self.pidfile = pidfile
        self.items = []  # (name, Popen, [extra pids])

    def _sync(self):
        """The pidfile lists exactly the PIDs still to be stopped, so run.sh's
        fallback never signals a PID that has already been reaped and reused."""
        if self.pidfile:
            with open(self.pidfile, "w") as f:
                for _, p, extra in self.items:
                    f.write("".join("%d\n" % x for x in [p.pid] + extra))

    def start(self, name, argv, logdir, cpu=None, pin=True):
        if cpu is not None and pin:
            argv = ["taskset", "-c", str(cpu)] + argv
        out = open(os.path.join(logdir, name + ".out"), "wb")
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()
        self.items.append([name, p, []])
        self._sync()
        return p

    def run(self, argv, timeout):
        """Run a short-lived command (wrk) to completion; recorded while it runs.
        Returns (returncode, stdout, stderr)."""
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL, start_new_session=True, text=True)
        self.items.append(["cmd", p, []])
        self._sync()
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            err += "\n(killed after %gs)" % timeout
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            self.items = [i for i in self.items if i[1] is not p]
            self._sync()
        return p.returncode, out, err

    def add_pid(self, proc, pid):
        """Record a PID that belongs to proc (an nginx worker)."""
        for item in self.items:
            if item[1] is proc:
                item[2].append(pid)
        self._sync()

    def stop(self, proc, grace=5.0):
        for item in list(self.items):
            if item[1] is proc:
                _stop_one(item[1], item[2], grace)
                self.items.remove(item)
        self._sync()

    def stop_all(self):
        for item in reversed(self.items):
            _stop_one(item[1], item[2], 5.0)
        self.items = []
        self._sync()


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of someone else still answers kill(0); check its state
    st = _read("/proc/%d/stat" % pid)
    return bool(st) and st.rsplit(")", 1)[1].split()[0] != "Z"


def _stop_one(popen, extra, grace):
    if popen.poll() is None:
        try:
            popen.send_signal(signal.SIGTERM)
            popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(timeout=5)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    for pid in extra:
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _pid_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# ---------------------------------------------------------------------------
# /proc readings
# ---------------------------------------------------------------------------
def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def cpu_seconds(pid):
    """utime + stime of the whole process (all threads), in seconds."""
    st = _read("/proc/%d/stat" % pid)
    if not st:
        raise StartError("process %d is gone" % pid)
    fields = st.rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime is field 14, stime field 15
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kib(pid):
    m = re.search(r"^VmRSS:\s+(\d+)\s+kB", _read("/proc/%d/status" % pid), re.M)
    if not m:
        raise StartError("process %d is gone" % pid)
    return int(m.group(1))


def children(pid):
    kids = set()
    for task in os.listdir("/proc/%d/task" % pid) if os.path.isdir("/proc/%d/task" % pid) else []:
        kids.update(int(x) for x in _read("/proc/%d/task/%s/children" % (pid, task)).split())
    return sorted(kids)


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def render(template, **values):
    values = dict(SERVICE_VALUES, **values)

    def sub(m):
        key = m.group(1)
        if key not in values:
            raise StartError("template: unknown placeholder {{%s}}" % key)
        return str(values[key])
    return re.sub(r"\{\{(\w+)\}\}", sub, template)


def tail(path, n=15):
    lines = _read(path).splitlines()
    return "\n".join("    | " + l for l in lines[-n:])


def wait_port(port, proc, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def http_get(port, path, timeout=10.0, scheme="http", headers=()):
    """(status, body length) of one GET, or raises OSError/HTTPException. headers: the
    scenario's "Name: value" lines (credentials of the auth scenarios). The body is
    counted as received (http.client does not decode Content-Encoding)."""
    if scheme == "https":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        c = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=ctx)
    else:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path, headers=dict(h.split(": ", 1) for h in (headers or ())))
        r = c.getresponse()
        return r.status, len(r.read())
    finally:
        c.close()


def expected_body(path):
    m = re.search(r"[?&](?:size|bytes)=(\d+)", path)
    return int(m.group(1)) if m else None


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def log(msg=""):
    print(msg, flush=True)


# ---------------------------------------------------------------------------
# origin and proxies
# ---------------------------------------------------------------------------
STANDIN_ORIGIN_CONF = """\
{{user}}
worker_processes 1;
pid {{dir}}/nginx.pid;
error_log {{dir}}/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path {{dir}}/tmp/client_body;
  proxy_temp_path {{dir}}/tmp/proxy;
  fastcgi_temp_path {{dir}}/tmp/fastcgi;
  uwsgi_temp_path {{dir}}/tmp/uwsgi;
  scgi_temp_path {{dir}}/tmp/scgi;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:{{port}};
    root {{dir}}/www;
    default_type application/octet-stream;
    location = / { return 200 "hello"; }
    location /fixed { try_files /f_$arg_size =404; }
    location /large { try_files /f_$arg_bytes =404; }
  }
}
"""


def start_origin(s, procs, workdir):
    port = free_port()
    d = tempfile.mkdtemp(prefix="origin-", dir=workdir)
    if s["standin_origin"]:
        os.makedirs(os.path.join(d, "www"))
        for n in (5, 16384, 1048576):
            with open(os.path.join(d, "www", "f_%d" % n), "wb") as f:
                f.write(b"x" * n)
        conf = os.path.join(d, "nginx.conf")
        _write_nginx_conf(conf, STANDIN_ORIGIN_CONF, d, port, 0, s)
        p = procs.start("origin", [s["nginx"], "-p", d, "-e", d + "/error.log", "-c", conf,
                                   "-g", "daemon off;"], d, s["cpu_load"], s["pin"])
        if not wait_port(port, p):
            raise StartError("stand-in origin (nginx) did not start:\n" + tail(d + "/origin.out"))
        _nginx_worker(procs, p, d)
        return port, p
    if not os.access(s["origin"], os.X_OK):
        raise StartError("ORIGIN %s is not an executable (build it, or set ORIGIN=...)" % s["origin"])
    p = procs.start("origin", [s["origin"], "-p", str(port)], d, s["cpu_load"], s["pin"])
    deadline = time.monotonic() + 10
    outp = os.path.join(d, "origin.out")
    while time.monotonic() < deadline:
        if re.search(r"^ready %d\b" % port, _read(outp), re.M):
            return port, p
        if p.poll() is not None:
            break
        time.sleep(0.05)
    raise StartError("origin did not print 'ready %d' within 10 s:\n%s" % (port, tail(outp)))


# Template values of the services some scenarios need ("services": ["redis"]), started on
# first need on CPU_LOAD like the origin: {{redis_port}}.
SERVICE_VALUES = {}
REDIS_VALUE = "x" * 64  # what GET bench:key returns (the redis-* scenarios' body)


def start_redis(s, procs, workdir):
    """redis-server (no persistence) with bench:key set; returns its port."""
    binary = shutil.which("redis-server")
    if not binary:
        raise StartError("redis-server not found (./dev installs it)")
    port = free_port()
    d = tempfile.mkdtemp(prefix="redis-", dir=workdir)
    p = procs.start("redis", [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", d], d, s["cpu_load"], s["pin"])
    if not wait_port(port, p):
        raise StartError("redis-server did not listen on %d:\n%s" % (port, tail(d + "/redis.out")))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        c.sendall(b"*3\r\n$3\r\nSET\r\n$9\r\nbench:key\r\n$%d\r\n%s\r\n"
                  % (len(REDIS_VALUE), REDIS_VALUE.encode()))
        if c.recv(16) != b"+OK\r\n":
            raise StartError("redis-server did not take SET bench:key")
    return port


def start_services(s, procs, workdir, sc):
    for svc in sc.get("services", ()):
        if svc == "redis" and "redis_port" not in SERVICE_VALUES:
            SERVICE_VALUES["redis_port"] = start_redis(s, procs, workdir)
            SERVICE_VALUES["redis_value"] = REDIS_VALUE
            log("redis-server on 127.0.0.1:%d" % SERVICE_VALUES["redis_port"])


def make_tls_cert(workdir):
    """One RSA-2048 certificate both proxies serve (bench TLS scenarios)."""
    cert, key = os.path.join(workdir, "bench.pem"), os.path.join(workdir, "bench.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "2", "-subj", "/CN=bench.test"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    return cert, key


def _write_nginx_conf(path, template, d, port, origin_port, s):
    for t in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        os.makedirs(os.path.join(d, "tmp", t), exist_ok=True)
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if nofile == resource.RLIM_INFINITY:
        nofile = 65536
    text = render(template, port=port, origin_port=origin_port, dir=d,
                  user="user root;" if os.geteuid() == 0 else "", nofile=nofile,
                  cert=s.get("tls_cert", ""), key=s.get("tls_key", ""))
    with open(path, "w") as f:
        f.write(text)


def _nginx_worker(procs, master, d, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = [k for k in children(master.pid)
                if "worker process" in _read("/proc/%d/cmdline" % k)]
        if kids:
            for k in kids:
                procs.add_pid(master, k)
            if len(kids) == 1:
                return kids[0]
            raise StartError("nginx has %d workers, expected 1" % len(kids))
        if master.poll() is not None:
            break
        time.sleep(0.05)
    raise StartError("nginx worker did not appear:\n" + tail(os.path.join(d, "error.log")))


class Proxy:
    """One running proxy under test: the process we measure is `pid`."""

    def __init__(self, name, port, popen, pid, d):
        self.name, self.port, self.popen, self.pid, self.dir = name, port, popen, pid, d
        self.failed = None  # reason, once it died or answered wrongly

    def alive(self):
        return self.popen.poll() is None and _pid_alive(self.pid)


def start_proxy(s, procs, workdir, name, template, origin_port):
    port = free_port()
    d = tempfile.mkdtemp(prefix=name + "-", dir=workdir)
    if name == "luaproxy":
        if not os.access(s["luaproxy"], os.X_OK):
            raise StartError("LUAPROXY %s is not an executable (build it, or set LUAPROXY=...)"
                             % s["luaproxy"])
        conf = os.path.join(d, "luaproxy.lua")
        with open(conf, "w") as f:
            f.write(render(template, port=port, origin_port=origin_port, dir=d, user="",
                           nofile=resource.getrlimit(resource.RLIMIT_NOFILE)[1],
                           cert=s.get("tls_cert", ""), key=s.get("tls_key", "")))
        p = procs.start(name, [s["luaproxy"], "-c", conf, "-w", "1"], d, s["cpu_proxy"], s["pin"])
        if not wait_port(port, p, timeout=float(os.environ.get("START_TIMEOUT", "10"))):
            raise StartError("luaproxy did not listen on %d:\n%s" % (port, tail(d + "/luaproxy.out")))
        return Proxy(name, port, p, p.pid, d)
    conf = os.path.join(d, "nginx.conf")
    _write_nginx_conf(conf, template, d, port, origin_port, s)
    p = procs.start(name, [s["nginx"], "-p", d, "-e", d + "/error.log", "-c", conf,
                           "-g", "daemon off;"], d, s["cpu_proxy"], s["pin"])
    if not wait_port(port, p, timeout=float(os.environ.get("START_TIMEOUT", "10"))):
        raise StartError("nginx did not listen on %d:\n%s\n%s"
                         % (port, tail(d + "/nginx.out"), tail(d + "/error.log")))
    worker = _nginx_worker(procs, p, d)
    return Proxy(name, port, p, worker, d)


def compile_thread(pid):
    """(state, CPU seconds) of luaproxy's compile thread (`lp-hs-compile`: the router's
    Hyperscan prefilter is compiled there after start, PCRE2 alone serving meanwhile), or
    None when it has none; OSError when the process is gone."""
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/comm" % (pid, tid)) as f:
                if f.read().strip() != "lp-hs-compile":
                    continue
            with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # a thread that ended meanwhile
        return fields[0], (int(fields[11]) + int(fields[12])) / CLK_TCK
    return None


def wait_compiled(pid, timeout=600):
    """Waits until the compile thread sleeps with its CPU time unchanged for 1 s: (seconds
    waited, its CPU seconds so far); (None, CPU seconds or None) on time out or when the
    process is gone. No thread: nothing to wait for (0 CPU seconds)."""
    t0 = time.monotonic()
    last, since = None, t0
    while time.monotonic() - t0 < timeout:
        try:
            st = compile_thread(pid)
        except OSError:
            return None, last[1] if last else None
        if st is None:
            return time.monotonic() - t0, 0.0
        if st != last:
            last, since = st, time.monotonic()
        elif st[0] == "S" and time.monotonic() - since >= 1.0:
            return since - t0, st[1]
        time.sleep(0.05)
    return None, last[1] if last else None


def wait_compile_idle(pid, timeout=600):
    """wait_compiled's seconds, so that a scenario measures the compiled router; None on time
    out."""
    return wait_compiled(pid, timeout)[0]


# luaproxy alone on a config file (bench/routes_load.py, routes_change.py, regex_load.py)

def write_fresh_config(path, text):
    """Writes a config at path with no admin route overlay (path.routes.json) left beside
    it from an earlier run (the routing benches' configs)."""
    for f in (path, path + ".routes.json"):
        if os.path.exists(f):
            os.unlink(f)
    with open(path, "w") as f:
        f.write(text)


def start_luaproxy(luaproxy, config, err_path, timeout=300):
    """`luaproxy -c config`, its stderr to err_path, until its log says where it listens
    and where its admin API is: (process, listen port, admin port, seconds it took).
    SystemExit when it exits or does not get there within timeout (it is stopped)."""
    with open(err_path, "wb") as errf:
        t0 = time.monotonic()
        proc = subprocess.Popen([luaproxy, "-c", config], stdout=subprocess.DEVNULL,
                                stderr=errf, stdin=subprocess.DEVNULL)
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        text = _read(err_path)
        a = re.search(r"admin API on http://127\.0\.0\.1:(\d+)", text)
        p = re.search(r"listening on [^\s]*127\.0\.0\.1:(\d+)", text)
        if a and p:
            return proc, int(p.group(1)), int(a.group(1)), time.monotonic() - t0
        if proc.poll() is not None:
            raise SystemExit("luaproxy exited: %s" % text[-2000:])
        time.sleep(0.01)
    stop_luaproxy(proc)
    raise SystemExit("luaproxy did not start: %s" % _read(err_path)[-2000:])


def stop_group(proc, grace=60):
    """Stops a process started with start_new_session=True and everything in its process
    group (valgrind's children too): SIGTERM, then SIGKILL after grace seconds."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def stop_luaproxy(proc, timeout=30):
    """SIGTERM, then SIGKILL after timeout seconds."""
    _stop_one(proc, (), timeout)


def admin_call(port, method, path, body=None):
    """One admin API request (body: JSON-encoded when given): (status, body bytes)."""
    data = json.dumps(body).encode() if body is not None else b""
    req = ("%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
           "Content-Length: %d\r\n\r\n" % (method, path, len(data))).encode() + data
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(req)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    head, _, body = out.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def proxy_log_tail(px):
    parts = [tail(os.path.join(px.dir, px.name + ".out"))]
    if px.name == "nginx":
        parts.append(tail(os.path.join(px.dir, "error.log")))
    return "\n".join(x for x in parts if x)


def sanity(px, path, scheme="http", headers=()):
    """One GET through the proxy; sets px.failed and returns False when wrong."""
    want = expected_body(path)
    try:
        status, n = http_get(px.port, path, scheme=scheme, headers=headers or ())
    except (OSError, http.client.HTTPException) as e:
        px.failed = "GET %s failed: %s" % (path, e)
        return False
    if status != 200 or (want is not None and n != want):
        px.failed = "GET %s -> status %d, %d body bytes (want 200, %s)" % (
            path, status, n, want if want is not None else "any")
        return False
    return True


# ---------------------------------------------------------------------------
# one wrk run
# ---------------------------------------------------------------------------
_wrk_scripts = {}


def wrk_script(sc):
    """wrk_report.lua, after the scenario's `wrk_setup` Lua (method, body) when it has one:
    written once per scenario to a temporary file removed at exit."""
    setup = sc.get("wrk_setup")
    script = os.path.join(BENCH_DIR, sc.get("script", "wrk_report.lua"))
    if not setup:
        return script
    if setup not in _wrk_scripts:
        fd, path = tempfile.mkstemp(prefix="wrk-", suffix=".lua")
        with os.fdopen(fd, "w") as f, open(script) as r:
            f.write(setup + "\n" + r.read())
        atexit.register(os.unlink, path)
        _wrk_scripts[setup] = path
    return _wrk_scripts[setup]


def run_wrk(s, procs, px, sc, seconds):
    url = "%s://127.0.0.1:%d%s" % (sc.get("scheme", "http"), px.port, sc["path"])
    if sc.get("client") == "tls_resume":
        argv = [sys.executable, os.path.join(BENCH_DIR, "tls_resume.py"), url, str(seconds),
                str(sc["connections"])]
    elif sc.get("client") == "h2load":  # HTTP/2 (#17): bench/h2load_run.py
        argv = [sys.executable, os.path.join(BENCH_DIR, "h2load_run.py"), url, str(seconds),
                str(sc["connections"]), str(sc.get("streams", 1))]
    else:
        argv = [s["wrk"], "-t1", "-c%d" % sc["connections"], "-d%gs" % seconds,
                "--timeout", "10s", "-s", wrk_script(sc)]
        for h in sc.get("headers", ()):
            argv += ["-H", h]
        argv.append(url)
    if s["pin"]:
        argv = ["taskset", "-c", s["cpu_load"]] + argv
    cpu0 = cpu_seconds(px.pid)
    t0 = time.monotonic()
    rc, out, err = procs.run(argv, timeout=seconds + 60)
    wall = time.monotonic() - t0
    cpu1 = cpu_seconds(px.pid)
    m = re.search(r"^WRKJSON (\{.*\})$", out, re.M)
    if rc != 0 or not m:
        raise StartError("wrk failed (rc %d):\n%s%s" % (rc, out, err))
    w = json.loads(m.group(1))
    cpu = cpu1 - cpu0
    reqs = w["requests"]
    mib = w["bytes"] / 1048576.0
    errors = sum(v for k, v in w.items() if k.startswith("err_"))
    return {
        "requests": reqs,
        "seconds": w["duration_us"] / 1e6,
        "rps": reqs / (w["duration_us"] / 1e6) if w["duration_us"] else 0.0,
        "cpu_s": round(cpu, 4),
        "cpu_util_pct": 100.0 * cpu / wall if wall else None,
        "cpu_us_per_req": 1e6 * cpu / reqs if reqs else None,
        "cpu_ms_per_mib": 1e3 * cpu / mib if mib else None,
        "mib": mib,
        "p50_ms": w["lat_p50_us"] / 1000.0,
        "p90_ms": w["lat_p90_us"] / 1000.0,
        "p99_ms": w["lat_p99_us"] / 1000.0,
        "max_ms": w["lat_max_us"] / 1000.0,
        "rss_kib": rss_kib(px.pid),
        "errors": errors,
        "wrk": w,
    }


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------
# (key, label, format, better) -- better: "lower" or "higher"
ROWS = [
    ("rps", "req/s", "%.0f", "higher"),
    ("cpu_us_per_req", "CPU us/req", "%.2f", "lower"),
    ("cpu_ms_per_mib", "CPU ms/MiB", "%.3f", "lower"),
    ("cpu_util_pct", "CPU util %", "%.0f", "-"),
    ("p50_ms", "p50 ms", "%.3f", "lower"),
    ("p99_ms", "p99 ms", "%.3f", "lower"),
    ("rss_kib", "RSS KiB", "%.0f", "lower"),
    ("errors", "wrk errors", "%.0f", "lower"),
]


def summarize(result, proxies):
    med = {}
    for p in proxies:
        runs = result["runs"].get(p, [])
        med[p] = {k: median([r.get(k) for r in runs]) for k, _, _, _ in ROWS} if runs else None
    result["median"] = med
    if med.get("luaproxy") and med.get("nginx"):
        result["ratio_luaproxy_over_nginx"] = {
            k: ratio(med["luaproxy"][k], med["nginx"][k]) for k, _, _, _ in ROWS
            if k != "errors"}


def fmt(f, v):
    return "-" if v is None else f % v


def print_table(sc, result, proxies, s):
    log()
    log("== %s: %s %s, %d connections, median of %d x %gs ==" % (
        sc["name"], (re.search(r'wrk\.method\s*=\s*"(\w+)"', sc.get("wrk_setup") or "") or
         re.match(r"(GET)", "GET")).group(1),
        sc["path"], sc["connections"], s["rounds"], s["duration"]))
    if sc.get("note"):
        log("   " + sc["note"])
    for p in proxies:
        if result.get("failed", {}).get(p):
            log("   %s FAILED: %s" % (p, result["failed"][p]))
    hdr = "  %-12s" % "" + "".join("%14s" % p for p in proxies)
    both = "ratio_luaproxy_over_nginx" in result
    if both:
        hdr += "%12s   %s" % ("lp/nginx", "better")
    log(hdr)
    for key, label, f, better in ROWS:
        if key == "cpu_ms_per_mib" and not sc.get("per_mib"):
            continue
        line = "  %-12s" % label
        for p in proxies:
            m = result["median"].get(p)
            line += "%14s" % fmt(f, m[key] if m else None)
        if both and key != "errors":
            line += "%12s   %s" % (fmt("%.2f", result["ratio_luaproxy_over_nginx"].get(key)),
                                   better if better != "-" else "")
        log(line)


def print_summary(results):
    rows = [r for r in results if "ratio_luaproxy_over_nginx" in r]
    if not rows:
        return
    log()
    log("== summary: luaproxy / nginx (medians; req/s higher is better, the rest lower) ==")
    keys = [("rps", "req/s"), ("cpu_us_per_req", "CPU/req"), ("p50_ms", "p50"),
            ("p99_ms", "p99"), ("rss_kib", "RSS")]
    log("  %-20s" % "scenario" + "".join("%10s" % l for _, l in keys))
    for r in rows:
        log("  %-20s" % r["name"] + "".join(
            "%10s" % fmt("%.2f", r["ratio_luaproxy_over_nginx"].get(k)) for k, _ in keys))


# ---------------------------------------------------------------------------
# idle keep-alive connections
# ---------------------------------------------------------------------------
def idle_test(s, procs, workdir, origin_port, h2=False):
    """Idle keep-alive memory: HTTP/1.1 (IDLE_CONNS, bench/idle_conns.py) or, with h2,
    HTTP/2 over TLS (IDLE_H2, bench/idle_h2.py: one GET on stream 1 each, then silent)."""
    spec = scenario_defs.IDLE_H2 if h2 else scenario_defs.IDLE
    opener = idle_h2 if h2 else idle_conns
    n = s["idle_h2"] if h2 else s["idle_conns"]
    scheme = "https" if h2 else "http"
    out = {"connections": n, "path": spec["path"]}
    log()
    log("== idle %s connections: %d, one GET %s each, then silent ==" % (
        "HTTP/2 (TLS, ALPN h2)" if h2 else "keep-alive", n, spec["path"]))
    for name in s["proxies"]:
        px = start_proxy(s, procs, workdir, name, spec[name], origin_port)
        try:
            if not sanity(px, spec["path"], scheme):
                raise StartError("%s: %s" % (name, px.failed))
            # warm up: one-time allocations (VM, pools) are not per-connection cost
            run_wrk(s, procs, px, {"path": spec["path"], "connections": 8, "scheme": scheme}, 1)
            if h2:  # and the h2 code paths once (sessions, HPACK tables, TLS buffers)
                warm, _ = opener.open_idle(px.port, 50, spec["path"])
                opener.close_all(warm)
            time.sleep(0.5)
            before = rss_kib(px.pid)
            t0 = time.monotonic()
            socks, failures = opener.open_idle(px.port, n, spec["path"])
            opened = time.monotonic() - t0
            time.sleep(1.0)
            still = opener.count_open(socks)
            after = rss_kib(px.pid)
            # Settled: 3 s later, when what the opening burst left in free lists has had
            # time to go back (luaproxy's once-a-second housekeeping; nginx frees at once).
            time.sleep(3.0)
            still = min(still, opener.count_open(socks))
            settled = rss_kib(px.pid)
            opener.close_all(socks)
            time.sleep(1.0)
            closed = rss_kib(px.pid) if px.alive() else None
            per = (after - before) / still if still else None
            per_settled = (settled - before) / still if still else None
            out[name] = {"rss_before_kib": before, "rss_after_kib": after,
                         "rss_settled_kib": settled, "rss_after_close_kib": closed,
                         "opened": len(socks), "failed": failures, "still_open": still,
                         "open_seconds": round(opened, 2), "kib_per_conn_1s": per,
                         "kib_per_conn": per_settled}
            log("  %-9s opened %d (failed %d) in %.1fs, %d still open: RSS %d -> %d KiB at "
                "1 s (%s KiB/conn), %d KiB settled at 4 s (%s KiB/conn); after close %s KiB"
                % (name, len(socks), failures, opened, still, before, after, fmt("%.2f", per),
                   settled, fmt("%.2f", per_settled), fmt("%d", closed)))
            if not px.alive():
                raise StartError("%s died during the idle test:\n%s" % (name, proxy_log_tail(px)))
        finally:
            procs.stop(px.popen)
    if out.get("luaproxy") and out.get("nginx"):
        out["ratio_luaproxy_over_nginx"] = ratio(out["luaproxy"]["kib_per_conn"],
                                                 out["nginx"]["kib_per_conn"])
        log("  KiB per idle connection (settled), luaproxy/nginx: %s"
            % fmt("%.2f", out["ratio_luaproxy_over_nginx"]))
    return out


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------
def versions(s):
    v = {}
    try:
        v["nginx"] = subprocess.run([s["nginx"], "-v"], capture_output=True, text=True,
                                    timeout=5).stderr.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    try:
        if "luaproxy" in s["proxies"]:
            v["luaproxy"] = subprocess.run([s["luaproxy"], "-v"], capture_output=True, text=True,
                                           timeout=5).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    try:
        v["wrk"] = subprocess.run([s["wrk"], "-v"], capture_output=True, text=True,
                                  timeout=5).stdout.splitlines()[0]
    except (OSError, subprocess.TimeoutExpired, IndexError):
        pass
    try:
        v["git"] = subprocess.run(["git", "-C", REPO_DIR, "rev-parse", "--short", "HEAD"],
                                  capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return v


def _die_with_parent():
    """If run.sh is killed outright (SIGKILL, no trap), stop too, cleaning up."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def main():
    _die_with_parent()
    s = settings()
    procs = Procs(s["pidfile"])
    workdir = tempfile.mkdtemp(prefix="lp-bench-", dir=os.environ.get("LP_BENCH_TMP") or None)
    doc = {"meta": {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "cpus": os.cpu_count(), "pinned": s["pin"],
                    "cpu_proxy": s["cpu_proxy"], "cpu_load": s["cpu_load"],
                    "rounds": s["rounds"], "duration_s": s["duration"],
                    "warmup_s": s["warmup"], "quick": s["quick"],
                    "luaproxy": s["luaproxy"],
                    "origin": "standin-nginx" if s["standin_origin"] else s["origin"],
                    "versions": versions(s)},
           "scenarios": [], "idle": None, "idle_h2": None}
    status = 0

    def on_signal(signum, frame):
        raise KeyboardInterrupt()
    signal.signal(signal.SIGTERM, on_signal)

    try:
        if not s["pin"]:
            log("note: not pinning to CPUs (taskset missing or fewer than 2 CPUs)")
        for tool in (s["wrk"],) + ((s["nginx"],) if "nginx" in s["proxies"] or s["standin_origin"] else ()):
            if not os.access(tool, os.X_OK):
                raise StartError("%s is not an executable" % tool)
        origin_port, origin = start_origin(s, procs, workdir)
        s["tls_cert"], s["tls_key"] = make_tls_cert(workdir)
        log("origin on 127.0.0.1:%d%s; proxies on CPU %s, wrk+origin on CPU %s; "
            "%d round(s) x %gs, warm-up %gs" % (
                origin_port, " (stand-in nginx)" if s["standin_origin"] else "",
                s["cpu_proxy"], s["cpu_load"], s["rounds"], s["duration"], s["warmup"]))
        chosen = [sc for sc in scenario_defs.SCENARIOS
                  if not s["only"] or re.search(s["only"], sc["name"])]
        running = {}   # (proxy name, template) -> Proxy
        for sc in chosen:
            start_services(s, procs, workdir, sc)
            # a new pair of templates gets a fresh pair of processes
            for p in s["proxies"]:
                key = (p, sc[p])
                if key not in running:
                    for k in [k for k in running if k[0] == p]:
                        procs.stop(running.pop(k).popen)
                    running[key] = start_proxy(s, procs, workdir, p, sc[p], origin_port)
                    if p == "luaproxy" and sc.get("wait_compile"):
                        waited = wait_compile_idle(running[key].pid)
                        log("  luaproxy's compile thread idle %s s after start" % (
                            "%.1f" % waited if waited is not None else "? (timed out at 600)"))
            pxs = [running[(p, sc[p])] for p in s["proxies"]]
            result = {"name": sc["name"], "path": sc["path"], "connections": sc["connections"],
                      "runs": {p: [] for p in s["proxies"]}, "failed": {}}
            for px in pxs:
                if px.failed is None and not px.alive():
                    px.failed = "process exited"
                if px.failed is None:
                    sanity(px, sc["path"], sc.get("scheme", "http"), sc.get("headers"))
            if sc.get("body_bytes_headers"):
                # The body as the scenario's requests get it (e.g. compressed), per proxy.
                result["body_bytes"] = {}
                for px in pxs:
                    if px.failed is None:
                        result["body_bytes"][px.name] = http_get(
                            px.port, sc["path"], headers=sc["body_bytes_headers"])[1]
            def measure(px, seconds):
                """One wrk run; a proxy that dies is marked failed, the others go on."""
                if px.failed is not None:
                    return None
                if not px.alive():
                    px.failed = "process exited"
                    return None
                try:
                    r = run_wrk(s, procs, px, sc, seconds)
                except StartError as e:
                    if px.alive():
                        raise          # wrk itself failed: a harness problem
                    px.failed = "process exited during a run (%s)" % e
                    return None
                if not px.alive():
                    px.failed = "process exited during a run"
                    return None
                return r
            for px in pxs:             # warm-up, discarded
                measure(px, s["warmup"])
            for rnd in range(s["rounds"]):
                for px in pxs:         # A B A B ...
                    r = measure(px, s["duration"])
                    if r is not None:
                        r["round"] = rnd
                        result["runs"][px.name].append(r)
            for px in pxs:
                if px.failed is not None:
                    result["failed"][px.name] = px.failed
                    log("!! %s in %s: %s" % (px.name, sc["name"], px.failed))
                    if not getattr(px, "reported", False):
                        px.reported = True
                        log(proxy_log_tail(px))
                    status = 1
            summarize(result, s["proxies"])
            doc["scenarios"].append(result)
            print_table(sc, result, s["proxies"], s)
            if result.get("body_bytes"):
                bb = result["body_bytes"]
                log("  body bytes as sent (%s): %s%s" % (
                    ", ".join(sc["body_bytes_headers"]),
                    ", ".join("%s %d" % kv for kv in sorted(bb.items())),
                    "; ratio %.4f" % (bb["luaproxy"] / bb["nginx"])
                    if bb.get("luaproxy") and bb.get("nginx") else ""))
        for px in running.values():
            procs.stop(px.popen)
        running = {}
        print_summary(doc["scenarios"])
        if s["idle_conns"] > 0:
            doc["idle"] = idle_test(s, procs, workdir, origin_port)
        if s["idle_h2"] > 0:
            doc["idle_h2"] = idle_test(s, procs, workdir, origin_port, h2=True)
    except StartError as e:
        log("\nERROR: %s" % e)
        status = 1
    except KeyboardInterrupt:
        log("\ninterrupted")
        status = 130
    finally:
        procs.stop_all()
        doc["meta"]["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        doc["meta"]["exit_status"] = status
        os.makedirs(os.path.dirname(s["results"]), exist_ok=True)
        with open(s["results"], "w") as f:
            json.dump(doc, f, indent=1, sort_keys=True)
        log("\nresults: %s" % os.path.relpath(s["results"], os.getcwd()))
        if status == 0 and not os.environ.get("KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log("logs and configs kept in %s" % workdir)
    return status


if __name__ == "__main__":
    sys.exit(main())
