#!/usr/bin/env python3
"""Instructions per request of the `h2-small-c50-m10` scenario under callgrind: luaproxy
(HTTP/2 over TLS), luaproxy's HTTP/1.1 over TLS for the same request (what HTTP/2 adds),
and nginx (`listen ... ssl http2`, one process: `master_process off`). The configs are the
bench's own (bench/scenarios.py). Each proxy runs under `valgrind --tool=callgrind` with
collection off; a warm-up h2load run goes first (traces compiled, pools filled), then
collection is switched on for one h2load run of N requests (`-c C -m M`; the C new
connections' TLS handshakes are in the figure, as in the bench), and the total divided by
N. Steady on a loaded machine (instructions, not time). A figure for docs, never a test.

  python3 bench/h2_callgrind.py [N]             # N requests per case (default 20000)
  CASES=lp-h2,nginx-h2 python3 bench/h2_callgrind.py
  C=50 M=10 WARM=5000 ...                        # h2load's -c and -m, warm-up requests
  KEEP=1 ...                                     # keep the callgrind.out files (printed)

Annotate a kept file with `callgrind_annotate --inclusive=yes FILE | head -60`.
"""

import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, BENCH)
import scenarios  # noqa: E402
import harness as H  # noqa: E402  (stop_group)

LUAPROXY = os.environ.get("LUAPROXY", os.path.join(ROOT, "build", "luaproxy"))
ORIGIN = os.environ.get("ORIGIN", os.path.join(ROOT, "build", "tests", "origin", "lp_origin"))
NGINX = os.environ.get("NGINX", "/usr/sbin/nginx")
N = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
WARM = int(os.environ.get("WARM", "5000"))
C = os.environ.get("C", "50")
M = os.environ.get("M", "10")
PATH = "/fixed?size=100"
SC = next(s for s in scenarios.SCENARIOS if s["name"] == "h2-small-c50-m10")
LP_H1 = scenarios.LUAPROXY_TLS_RESUME

# name -> (proxy, template, h2load's protocol flags)
CASES = {
    "lp-h2": ("luaproxy", SC["luaproxy"], []),
    "lp-h1": ("luaproxy", LP_H1, ["--h1"]),
    "nginx-h2": ("nginx", SC["nginx"], []),
}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def render(text, **values):
    return re.sub(r"\{\{(\w+)\}\}", lambda m: str(values[m.group(1)]), text)


def wait_port(port, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("proxy did not listen on %d" % port)


def h2load(port, n, flags):
    url = "https://127.0.0.1:%d%s" % (port, PATH)
    p = subprocess.run(["h2load", "-t1", "-c", C, "-m", M if not flags else "1", "-n", str(n)]
                       + flags + [url], capture_output=True, text=True, timeout=3600)
    m = re.search(r"^requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", p.stdout,
                  re.M)
    if p.returncode or not m or int(m.group(1)) != n:
        raise RuntimeError("h2load: %s%s" % (p.stdout, p.stderr))


def total_ir(work):
    tot = 0
    for f in glob.glob(os.path.join(work, "callgrind.out.*")):
        with open(f) as fh:
            for line in fh:
                if line.startswith("totals:") or line.startswith("summary:"):
                    tot = max(tot, int(line.split()[1]))
    return tot


def one(name, origin_port, cert, key):
    proxy, template, flags = CASES[name]
    work = tempfile.mkdtemp(prefix="lp-h2cg-")
    port = free_port()
    vals = dict(port=port, origin_port=origin_port, dir=work, cert=cert, key=key,
                user="user root;" if os.geteuid() == 0 else "", nofile=4096)
    if proxy == "luaproxy":
        conf = os.path.join(work, "proxy.lua")
        argv = [LUAPROXY, "-c", conf, "-w", "1"]
    else:
        conf = os.path.join(work, "nginx.conf")
        for t in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            os.makedirs(os.path.join(work, "tmp", t), exist_ok=True)
        argv = [NGINX, "-p", work, "-e", work + "/error.log", "-c", conf,
                "-g", "daemon off; master_process off;"]
    text = render(template, **vals)
    # Under callgrind the C handshakes of a run take longer than the default timeouts.
    if proxy == "luaproxy":
        slow = text.replace('key = "%s"' % key, 'key = "%s", handshake_timeout = 600' % key)
    else:
        slow = text.replace("http {", "http {\n  client_header_timeout 600s;")
    assert slow != text
    with open(conf, "w") as f:
        f.write(slow)
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--trace-children=no",
         "--callgrind-out-file=" + os.path.join(work, "callgrind.out.%p")] + argv,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_port(port, 120)
        h2load(port, WARM, flags)
        subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        h2load(port, N, flags)
        subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        H.stop_group(proc, 60)
    tot = total_ir(work)
    if os.environ.get("KEEP"):
        print("  kept:", " ".join(glob.glob(os.path.join(work, "callgrind.out.*"))))
    else:
        shutil.rmtree(work, ignore_errors=True)
    return tot / N


def main():
    names = os.environ.get("CASES", ",".join(CASES)).split(",")
    tmp = tempfile.mkdtemp(prefix="lp-h2cg-cert-")
    cert, key = os.path.join(tmp, "c.pem"), os.path.join(tmp, "c.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "2", "-subj", "/CN=bench.test"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    origin = subprocess.Popen([ORIGIN, "-p", "0"], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        line = origin.stdout.readline()
        origin_port = int(re.search(r"ready (\d+)", line).group(1))
        print("%d requests per case (h2load -c %s -m %s, after %d warm-up), instructions "
              "per request" % (N, C, M, WARM))
        res = {}
        for name in names:
            res[name] = one(name, origin_port, cert, key)
            print("  %-10s %8.0f" % (name, res[name]), flush=True)
        if "lp-h2" in res and "nginx-h2" in res:
            print("  lp-h2 / nginx-h2: %.2f" % (res["lp-h2"] / res["nginx-h2"]))
        if "lp-h2" in res and "lp-h1" in res:
            print("  lp-h2 / lp-h1: %.2f" % (res["lp-h2"] / res["lp-h1"]))
    finally:
        os.killpg(origin.pid, signal.SIGTERM)
        origin.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
