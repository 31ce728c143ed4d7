#!/usr/bin/env python3
"""WAF side by side (issue #20): luaproxy's waf plugin running the OWASP CRS against nginx +
ModSecurity v3 running the same CRS files (Debian: modsecurity-crs,
libnginx-mod-http-modsecurity), in one run, at paranoia levels 1 and 2.

    python3 bench/waf_crs.py [--crs /usr/share/modsecurity-crs] [--seconds 3]

Measures, for each proxy and paranoia level:
  - detection: attack requests of tests/waf/attacks.jsonl refused (403 or another 4xx the
    WAF gave), per category;
  - false positives: ordinary requests of tests/waf/ordinary.jsonl refused, per category;
  - CPU per request of the proxy's worker (utime + stime from /proc) for a typical browser
    GET and a 4 KiB JSON POST, sequential requests on one keep-alive connection, with the
    same request through a route without a WAF as the base.
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
TICK = os.sysconf("SC_CLK_TCK")


class Origin(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

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


def cpu_ticks(pid):
    with open("/proc/%d/stat" % pid) as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return int(parts[11]) + int(parts[12])


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
    for r in reqs:
        st = one_shot(port, raw_request(r, prefix=prefix))
        c = by.setdefault(r["cat"], [0, 0])
        c[0] += 1
        # A refusal: the WAF's 403, or a 4xx the proxy gave for a request it could not
        # take (bad encoding, body over the limit); 0: the connection was dropped.
        if st == 403 or st == 0 or (400 <= st < 500 and st != 404):
            c[1] += 1
            refused += 1
            fired.append(r)
    return refused, len(reqs), by


def cpu_per_request(port, pid, prefix, req, seconds):
    data = raw_request(req, prefix=prefix)
    s = socket.create_connection(("127.0.0.1", port), 10)
    s.settimeout(30)
    buf = b""
    for _ in range(50):
        s.sendall(data)
        st, buf = read_response(s, buf)
    t0 = cpu_ticks(pid)
    n = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(20):
            s.sendall(data)
            st, buf = read_response(s, buf)
            n += 1
    t1 = cpu_ticks(pid)
    s.close()
    return (t1 - t0) / TICK / n * 1e6, n, st


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

UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"
BROWSER_GET = {
    "method": "GET", "uri": "/?id=123&utm_source=newsletter&utm_medium=email&ref=home", "body": "",
    "headers": {
        "Host": "shop.example.com", "User-Agent": UA,
        "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
        "Accept-Language": "en-GB,en;q=0.9", "Accept-Encoding": "gzip, deflate, br",
        "Referer": "https://shop.example.com/category/men/jackets?page=2",
        "Cookie": "_ga=GA1.2.1843471095.1701698312; _gid=GA1.2.1290412301.1701698312; "
                  "session=eyJ1aWQiOjEyMzQ1LCJjYXJ0IjpbMTIsMzRdfQ.ZW5kLW9mLXNlc3Npb24tdG9rZW4tMDEyMzQ1Njc4OQ; "
                  "csrftoken=8f2b7c1e9a0d4e6f8b2c7d1e9a0f4b6c8d2e7f1a9b0c4d6e8f2a7b1c9d0e4f6a; lang=en-GB",
        "Upgrade-Insecure-Requests": "1",
    },
}
_items = ",".join('{"sku":"SKU-%04d","qty":%d,"price":%d.99,"name":"Product number %d"}'
                  % (i, i % 4 + 1, i, i) for i in range(1, 40))
_json = ('{"customer":{"name":"Mary O\'Neil","email":"m@example.com"},"items":[%s],'
         '"note":"Please deliver after 5pm; it\'s a gift.","pad":""}' % _items)
JSON_4K = _json.replace('"pad":""', '"pad":"%s"' % ("x" * (4096 - len(_json))))
JSON_POST = {"method": "POST", "uri": "/api/orders", "body": JSON_4K,
             "headers": {"Host": "shop.example.com", "User-Agent": UA,
                         "Content-Type": "application/json", "Accept": "application/json"}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--crs", default="/usr/share/modsecurity-crs")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--luaproxy", default=os.path.join(ROOT, "build", "luaproxy"))
    ap.add_argument("--nginx", default="/usr/sbin/nginx")
    ap.add_argument("--json", default=None, help="write the figures here too")
    a = ap.parse_args()
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
        for port in (lport, nport):
            end = time.monotonic() + 60
            while one_shot(port, raw_request(BROWSER_GET, prefix="/pl1")) != 200:
                if time.monotonic() > end:
                    sys.exit("no 200 through /pl1 on %d" % port)
                time.sleep(0.2)  # waiting for the workers' rule compile: no signal to wait on
        nworker = nginx_worker(ng.pid)
        attacks = corpus(os.path.join(ROOT, "tests/waf/attacks.jsonl"))
        ordinary = corpus(os.path.join(ROOT, "tests/waf/ordinary.jsonl"))
        rows = []
        targets = [("nginx+ModSecurity", nport, nworker, "/pl1", 1),
                   ("nginx+ModSecurity", nport, nworker, "/pl2", 2),
                   ("luaproxy", lport, lp.pid, "/pl1", 1),
                   ("luaproxy", lport, lp.pid, "/pl2", 2),
                   ("luaproxy (#14 Lua rules)", lport, lp.pid, "/lua", 1)]
        for name, port, pid, prefix, pl in targets:
            da, na, by_a = detect(port, prefix, attacks)
            fo, no, by_o = detect(port, prefix, ordinary)
            cpu = {}
            for label, req in (("GET", BROWSER_GET), ("JSON", JSON_POST)):
                base, _, _ = cpu_per_request(port, pid, "/base", req, a.seconds)
                waf, n, st = cpu_per_request(port, pid, prefix, req, a.seconds)
                cpu[label] = {"base_us": round(base, 1), "waf_us": round(waf, 1), "n": n, "status": st}
            row = {"proxy": name, "paranoia": pl, "detected": da, "attacks": na,
                   "detection_pct": round(100.0 * da / na, 1), "by_attack": by_a,
                   "false_positives": fo, "ordinary": no, "fp_pct": round(100.0 * fo / no, 1),
                   "by_ordinary": by_o, "cpu": cpu}
            rows.append(row)
            print("%-26s PL%d  detection %5.1f%% (%d/%d)  false positives %5.1f%% (%d/%d)  "
                  "CPU/req GET %7.1f us (base %5.1f)  JSON 4KiB %7.1f us (base %5.1f)"
                  % (name, pl, row["detection_pct"], da, na, row["fp_pct"], fo, no,
                     cpu["GET"]["waf_us"], cpu["GET"]["base_us"], cpu["JSON"]["waf_us"],
                     cpu["JSON"]["base_us"]), flush=True)
            print("    attacks: " + ", ".join("%s %d/%d" % (k, v[1], v[0]) for k, v in sorted(by_a.items())))
            print("    ordinary refused: " + ", ".join("%s %d/%d" % (k, v[1], v[0]) for k, v in sorted(by_o.items())))
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
