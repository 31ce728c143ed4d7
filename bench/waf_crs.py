#!/usr/bin/env python3
"""WAF side by side (issue #20): luaproxy's waf plugin running the OWASP CRS against nginx +
ModSecurity v3 running the same CRS files (Debian: modsecurity-crs,
libnginx-mod-http-modsecurity), in one run, at paranoia levels 1 and 2.

    python3 bench/waf_crs.py [--crs /usr/share/modsecurity-crs] [--runs 3]
        [--get-requests 2000] [--json-requests 400] [--cpu-only] [--proxies nginx,luaproxy,lua]

Measures, for each proxy and paranoia level:
  - detection: attack requests of tests/waf/attacks.jsonl refused (403 or another 4xx the
    WAF gave), per category;
  - false positives: ordinary requests of tests/waf/ordinary.jsonl refused, per category;
  - CPU per request of the proxy's worker thread for a typical browser GET and a 4 KiB
    JSON POST: the thread's CPU time in ns from /proc/PID/task/TID/schedstat over a fixed
    number of requests pipelined 8 deep on one keep-alive connection (the client's speed
    does not enter), the same request through a route without a WAF as the base, medians
    of --runs runs. Raw figures: nothing is subtracted.
Both proxies run with one worker on 127.0.0.1 in front of a small Python origin. Every
process is started here and stopped by PID. Not a test: it asserts nothing.
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


class Origin(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # headers and body go out in two writes: with Nagle on, the second waits for the
    # proxy's delayed ACK (40 ms a request), which made a run take most of an hour
    disable_nagle_algorithm = True

    def _any(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _any

    def log_message(self, *a):
        pass


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, proc, timeout=30):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return True
        except OSError:
            time.sleep(0.05)  # polling a port: no other signal to wait on
    return False


def thread_ns(pid, tid):
    """CPU time of one thread in ns (the scheduler's own account: the first field of
    schedstat, exact, not the 10 ms ticks of /proc/PID/stat)."""
    with open("/proc/%d/task/%d/schedstat" % (pid, tid)) as f:
        return int(f.read().split()[0])


def nginx_worker(master):
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/stat" % d) as f:
                    parts = f.read().rsplit(")", 1)[1].split()
                if int(parts[1]) == master:
                    return int(d)
            except OSError:
                pass
    return master


def luaproxy_worker(pid):
    """The thread id of luaproxy's worker (named lp-worker-N; one worker here)."""
    for tid in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/comm" % (pid, tid)) as f:
            if f.read().startswith("lp-worker-"):
                return int(tid)
    raise RuntimeError("no lp-worker-N thread in %d" % pid)


def raw_request(r, host_override=None, prefix=""):
    uri = prefix + r["uri"]
    lines = ["%s %s HTTP/1.1" % (r["method"], uri)]
    headers = dict(r["headers"])
    body = (r.get("body") or "").encode("utf-8", "surrogateescape")
    if body and not any(k.lower() == "content-length" for k in headers):
        headers["Content-Length"] = str(len(body))
    for k, v in headers.items():
        if k.lower() == "content-length" and body:
            v = str(len(body))
        lines.append("%s: %s" % (k, v))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body


def read_response(sock, buf=b""):
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    status = int(head.split(b" ", 2)[1])
    n = 0
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            n = int(v.strip())
        if k.strip().lower() == b"transfer-encoding" and b"chunked" in v.lower():
            chunked = True
    if chunked:
        while b"\r\n0\r\n\r\n" not in rest and not rest.startswith(b"0\r\n\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        end = rest.find(b"0\r\n\r\n")
        return status, rest[end + 5:]
    while len(rest) < n:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, rest[n:]


def one_shot(port, data):
    s = socket.create_connection(("127.0.0.1", port), 10)
    s.settimeout(10)
    try:
        s.sendall(data)
        status, _ = read_response(s)
        return status
    except (OSError, ConnectionError, ValueError, IndexError):
        return 0
    finally:
        s.close()


def corpus(path):
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


def detect(port, prefix, reqs):
    by = {}
    refused = 0
    fired = []
    for i, r in enumerate(reqs):
        st = one_shot(port, raw_request(r, prefix=prefix))
        c = by.setdefault(r["cat"], [0, 0])
        c[0] += 1
        # A refusal: the WAF's 403, or a 4xx the proxy gave for a request it could not
        # take (bad encoding, body over the limit); 0: the connection was dropped.
        if st == 403 or st == 0 or (400 <= st < 500 and st != 404):
            c[1] += 1
            refused += 1
            fired.append(i)
    return refused, len(reqs), by, fired


def pipelined(sock, data, n, depth, buf):
    """n requests on one keep-alive connection, `depth` sent at a time before their answers
    are read: the client's own cost barely paces the proxy. Returns the last status, buf."""
    st = 0
    left = n
    while left > 0:
        k = min(depth, left)
        sock.sendall(data * k)
        for _ in range(k):
            st, buf = read_response(sock, buf)
        left -= k
    return st, buf


def cpu_per_request(port, pid, tid, prefix, req, n, depth=8):
    """CPU of the proxy's worker thread per request, µs: the thread's schedstat (ns) over a
    fixed number of pipelined requests after a warm-up, on one connection. Also the last
    status (a refusal closes the connection: measured requests must pass)."""
    data = raw_request(req, prefix=prefix)
    s = socket.create_connection(("127.0.0.1", port), 10)
    s.settimeout(60)
    try:
        st, buf = pipelined(s, data, 50, depth, b"")
        t0 = thread_ns(pid, tid)
        st, buf = pipelined(s, data, n, depth, buf)
        t1 = thread_ns(pid, tid)
    finally:
        s.close()
    return (t1 - t0) / 1e3 / n, st


def median(xs):
    xs = sorted(xs)
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else (xs[m - 1] + xs[m]) / 2.0


MODSEC_MAIN = """\
SecRuleEngine On
SecRequestBodyAccess On
SecRule REQUEST_HEADERS:Content-Type "^(?:application(?:/soap\\+|/)|text/)xml" \\
  "id:200000,phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=XML"
SecRule REQUEST_HEADERS:Content-Type "^application/json" \\
  "id:200001,phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=JSON"
SecRequestBodyLimit 13107200
SecRequestBodyNoFilesLimit 131072
SecRequestBodyLimitAction Reject
SecRule REQBODY_ERROR "!@eq 0" \\
  "id:200002,phase:2,t:none,log,deny,status:400,msg:'Failed to parse request body.'"
SecPcreMatchLimit 100000
SecPcreMatchLimitRecursion 100000
SecResponseBodyAccess Off
SecTmpDir {dir}/tmp
SecDataDir {dir}/tmp
SecAuditEngine Off
SecArgumentSeparator &
SecCookieFormat 0
SecAction "id:900000,phase:1,nolog,pass,t:none,setvar:tx.paranoia_level={pl}"
SecAction "id:900200,phase:1,nolog,pass,t:none,setvar:'tx.allowed_methods=GET HEAD POST OPTIONS PUT PATCH DELETE'"
Include /etc/modsecurity/crs/crs-setup.conf
Include {crs}/rules/*.conf
"""

NGINX_CONF = """\
load_module /usr/lib/nginx/modules/ngx_http_modsecurity_module.so;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {dir}/tmp/cb;
  proxy_temp_path {dir}/tmp/p;
  fastcgi_temp_path {dir}/tmp/f;
  uwsgi_temp_path {dir}/tmp/u;
  scgi_temp_path {dir}/tmp/s;
  client_max_body_size 20m;
  keepalive_requests 1000000;  # the CPU runs' thousands of requests on one connection
  upstream o {{ server 127.0.0.1:{origin}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    location /pl1/ {{ modsecurity on; modsecurity_rules_file {dir}/pl1.conf; proxy_pass http://o/; }}
    location /pl2/ {{ modsecurity on; modsecurity_rules_file {dir}/pl2.conf; proxy_pass http://o/; }}
    location /base/ {{ proxy_pass http://o/; }}
  }}
}}
"""

LUAPROXY_CONF = """\
return {{
  workers = 1,
  listen = {{ {{ address = "127.0.0.1:{port}" }} }},
  upstreams = {{ app = {{ targets = {{ "127.0.0.1:{origin}" }}, keepalive = 64 }} }},
  routes = {{
    {{ match = {{ prefix = "/pl1/" }}, upstream = "app", strip_prefix = true,
      plugins = {{ {{ name = "waf", crs = "{crs}", paranoia = 1 }} }} }},
    {{ match = {{ prefix = "/pl2/" }}, upstream = "app", strip_prefix = true,
      plugins = {{ {{ name = "waf", crs = "{crs}", paranoia = 2 }} }} }},
    {{ match = {{ prefix = "/lua/" }}, upstream = "app", strip_prefix = true,
      plugins = {{ {{ name = "waf", crs = false }} }} }},
    {{ match = {{ prefix = "/base/" }}, upstream = "app", strip_prefix = true }},
  }},
  log = {{ access = false, level = "info" }}, -- the waf's "Hyperscan databases ready" lines
  -- Reading CRS twice (two paranoia levels) takes the config load past the default 1 s on
  -- a loaded machine (docs/plugins/waf.md, "Load time"); init_timeout stays the default.
  lua = {{ phase_timeout = 10 }},
}}
"""

def bench_requests():
    """The two measured requests (BROWSER_GET, JSON_POST), from bench/waf/requests.json:
    bench/waf/cpu_run.lua reads the same file, so the in-process figures are for the same
    requests. Headers keep their order (a dict of the file's list)."""
    with open(os.path.join(HERE, "waf", "requests.json")) as f:
        doc = json.load(f)
    return tuple(dict(doc[k], headers=dict(doc[k]["headers"])) for k in ("get", "post"))


BROWSER_GET, JSON_POST = bench_requests()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--crs", default="/usr/share/modsecurity-crs")
    ap.add_argument("--runs", type=int, default=3, help="CPU runs (medians of these)")
    ap.add_argument("--get-requests", type=int, default=2000, help="browser GETs per CPU run")
    ap.add_argument("--json-requests", type=int, default=400, help="JSON POSTs per CPU run")
    ap.add_argument("--cpu-only", action="store_true", help="skip the corpora (iteration)")
    ap.add_argument("--proxies", default="nginx,luaproxy", help="nginx,luaproxy,lua: which to run")
    ap.add_argument("--home-b", default=None,
                    help="A/B in one run: a second luaproxy with LUAPROXY_HOME=DIR (another "
                         "version's lua/ and plugins/, e.g. from git archive), measured too")
    ap.add_argument("--luaproxy", default=os.path.join(ROOT, "build", "luaproxy"))
    ap.add_argument("--nginx", default="/usr/sbin/nginx")
    ap.add_argument("--json", default=None, help="write the figures here too")
    a = ap.parse_args()
    # stopped from outside: still stop every process started here (the finally below)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped"))
    d = tempfile.mkdtemp(prefix="lp-waf-crs-")
    os.makedirs(d + "/tmp")
    procs = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Origin)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    origin = srv.server_address[1]
    out = {"proxies": {}}
    try:
        for pl in (1, 2):
            with open("%s/pl%d.conf" % (d, pl), "w") as f:
                f.write(MODSEC_MAIN.format(dir=d, pl=pl, crs=a.crs))
        nport, lport = free_port(), free_port()
        with open(d + "/nginx.conf", "w") as f:
            f.write(NGINX_CONF.format(dir=d, port=nport, origin=origin))
        with open(d + "/luaproxy.lua", "w") as f:
            f.write(LUAPROXY_CONF.format(port=lport, origin=origin, crs=a.crs))
        ng = subprocess.Popen([a.nginx, "-p", d, "-e", d + "/error.log", "-c", d + "/nginx.conf",
                               "-g", "daemon off;"], stdout=open(d + "/nginx.out", "w"),
                              stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(ng)
        lp = subprocess.Popen([a.luaproxy, "-c", d + "/luaproxy.lua", "-w", "1"],
                              stdout=open(d + "/luaproxy.out", "w"), stderr=subprocess.STDOUT,
                              start_new_session=True)
        procs.append(lp)
        lpb, bport = None, None
        if a.home_b:
            bport = free_port()
            with open(d + "/luaproxy_b.lua", "w") as f:
                f.write(LUAPROXY_CONF.format(port=bport, origin=origin, crs=a.crs))
            lpb = subprocess.Popen([a.luaproxy, "-c", d + "/luaproxy_b.lua", "-w", "1"],
                                   stdout=open(d + "/luaproxy_b.out", "w"), stderr=subprocess.STDOUT,
                                   start_new_session=True, env=dict(os.environ, LUAPROXY_HOME=a.home_b))
            procs.append(lpb)
        if not wait_port(nport, ng, 60):
            sys.exit("nginx did not start:\n" + open(d + "/error.log").read()[-3000:])
        if not wait_port(lport, lp, 60):
            sys.exit("luaproxy did not start:\n" + open(d + "/luaproxy.out").read()[-3000:])
        # luaproxy compiles CRS's Hyperscan databases on its compile thread while it serves
        # (the rules run through PCRE2 meanwhile): wait for both sets' "ready" lines.
        end = time.monotonic() + 600
        while open(d + "/luaproxy.out").read().count("Hyperscan databases ready") < 2:
            if time.monotonic() > end or lp.poll() is not None:
                sys.exit("luaproxy's Hyperscan databases not ready:\n" + open(d + "/luaproxy.out").read()[-3000:])
            time.sleep(0.2)
        while lpb and open(d + "/luaproxy_b.out").read().count("Hyperscan databases ready") < 2:
            if time.monotonic() > end or lpb.poll() is not None:
                sys.exit("luaproxy B's Hyperscan databases not ready:\n" + open(d + "/luaproxy_b.out").read()[-3000:])
            time.sleep(0.2)
        for port in [p for p in (lport, nport, bport) if p]:
            end = time.monotonic() + 60
            while one_shot(port, raw_request(BROWSER_GET, prefix="/pl1")) != 200:
                if time.monotonic() > end:
                    sys.exit("no 200 through /pl1 on %d" % port)
                time.sleep(0.2)  # waiting for the workers' rule compile: no signal to wait on
        nworker = nginx_worker(ng.pid)
        lworker = luaproxy_worker(lp.pid)
        attacks = corpus(os.path.join(ROOT, "tests/waf/attacks.jsonl"))
        ordinary = corpus(os.path.join(ROOT, "tests/waf/ordinary.jsonl"))
        rows = []
        which = a.proxies.split(",")
        # (nginx's worker is a process of its own: its one thread is itself)
        targets = [t for t in (("nginx+ModSecurity", "nginx", nport, nworker, nworker, "/pl1", 1),
                               ("nginx+ModSecurity", "nginx", nport, nworker, nworker, "/pl2", 2),
                               ("luaproxy", "luaproxy", lport, lp.pid, lworker, "/pl1", 1),
                               ("luaproxy", "luaproxy", lport, lp.pid, lworker, "/pl2", 2),
                               ("luaproxy (#14 Lua rules)", "lua", lport, lp.pid, lworker, "/lua", 1))
                   if t[1] in which]
        if lpb:
            bworker = luaproxy_worker(lpb.pid)
            targets += [("luaproxy B", "b", bport, lpb.pid, bworker, "/pl1", 1),
                        ("luaproxy B", "b", bport, lpb.pid, bworker, "/pl2", 2)]
        nreq = {"GET": a.get_requests, "JSON": a.json_requests}
        reqs = (("GET", BROWSER_GET), ("JSON", JSON_POST))
        for name, _, port, pid, tid, prefix, pl in targets:
            row = {"proxy": name, "paranoia": pl}
            if not a.cpu_only:
                da, na, by_a, refused_a = detect(port, prefix, attacks)
                fo, no, by_o, refused_o = detect(port, prefix, ordinary)
                row.update({"detected": da, "attacks": na,
                            "detection_pct": round(100.0 * da / na, 1), "by_attack": by_a,
                            "false_positives": fo, "ordinary": no,
                            "fp_pct": round(100.0 * fo / no, 1), "by_ordinary": by_o,
                            # which requests were refused (line numbers in the corpora, from
                            # 0): two runs' verdicts compare request by request
                            "refused_attacks": refused_a, "refused_ordinary": refused_o})
                print("%-26s PL%d  detection %5.1f%% (%d/%d)  false positives %5.1f%% (%d/%d)"
                      % (name, pl, row["detection_pct"], da, na, row["fp_pct"], fo, no), flush=True)
                print("    attacks: " + ", ".join("%s %d/%d" % (k, v[1], v[0]) for k, v in sorted(by_a.items())))
                print("    ordinary refused: " + ", ".join("%s %d/%d" % (k, v[1], v[0]) for k, v in sorted(by_o.items())))
            row["cpu"] = {label: {"base_us": [], "waf_us": [], "n": nreq[label]} for label, _ in reqs}
            rows.append(row)
        # CPU: each run measures every target's base and WAF routes back to back, so that
        # a change in the machine's load between runs shows in all of them alike.
        for run in range(a.runs):
            for row, (name, _, port, pid, tid, prefix, pl) in zip(rows, targets):
                for label, req in reqs:
                    c = row["cpu"][label]
                    base, st0 = cpu_per_request(port, pid, tid, "/base", req, nreq[label])
                    waf, st = cpu_per_request(port, pid, tid, prefix, req, nreq[label])
                    if st0 != 200 or st != 200:
                        sys.exit("%s %s %s: status %s/%s (measured requests must pass)"
                                 % (name, prefix, label, st0, st))
                    c["base_us"].append(round(base, 1))
                    c["waf_us"].append(round(waf, 1))
            print("CPU run %d of %d: " % (run + 1, a.runs) + "; ".join(
                "%s PL%d GET %.1f (base %.1f) JSON %.1f (base %.1f)"
                % (row["proxy"], row["paranoia"], row["cpu"]["GET"]["waf_us"][-1],
                   row["cpu"]["GET"]["base_us"][-1], row["cpu"]["JSON"]["waf_us"][-1],
                   row["cpu"]["JSON"]["base_us"][-1]) for row in rows), flush=True)
        mod = {}
        for row in rows:
            for label, c in row["cpu"].items():
                c["base_median_us"] = round(median(c["base_us"]), 1)
                c["waf_median_us"] = round(median(c["waf_us"]), 1)
                if row["proxy"] == "nginx+ModSecurity":
                    mod[(row["paranoia"], label)] = c["waf_median_us"]
        print("CPU of the worker thread per request, µs (schedstat; median of %d runs; "
              "raw, nothing subtracted; base: the same request on a route without a WAF)" % a.runs)
        for row in rows:
            parts = []
            for label, _ in reqs:
                c = row["cpu"][label]
                m = mod.get((row["paranoia"], label))
                ratio = " %.3fx ModSec" % (c["waf_median_us"] / m) if m and row["proxy"] != "nginx+ModSecurity" else ""
                if ratio:
                    c["ratio_to_modsecurity"] = round(c["waf_median_us"] / m, 4)
                parts.append("%s %8.1f (base %6.1f)%s" % (label, c["waf_median_us"], c["base_median_us"], ratio))
            print("%-26s PL%d  %s   runs: %s" % (row["proxy"], row["paranoia"], "   ".join(parts),
                  "; ".join("%s %s" % (l, row["cpu"][l]["waf_us"]) for l, _ in reqs)), flush=True)
        out["rows"] = rows
        if a.json:
            with open(a.json, "w") as f:
                json.dump(out, f, indent=1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        srv.shutdown()
        if os.environ.get("KEEP"):
            print("kept", d)
        else:
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
