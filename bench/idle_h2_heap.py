#!/usr/bin/env python3
"""Where an idle HTTP/2 connection's heap goes, luaproxy against nginx, by allocation site.

Each proxy runs with bench/alloc_sites.c preloaded (a malloc counter; compiled here with
cc), the bench's IDLE_H2 configs (bench/scenarios.py), the same warm-up as the harness;
live blocks are written out before and after N idle TLS h2 connections (bench/idle_h2.py)
have been idle 2.5 s (luaproxy trims and parks at 1 s), and the difference per connection
is printed by call stack: blocks, bytes asked, and bytes with glibc's 8 per chunk. A figure
for docs/http2.md (Memory), never a test: RSS under the counter is meaningless (its tables).

  python3 bench/idle_h2_heap.py [N]      # default 1000 connections
  PROXIES=luaproxy DEPTH=4 MIN=16 ...    # one proxy; frames per site shown; bytes shown at least
"""
import collections
import glob
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)
import harness  # noqa: E402
import idle_h2  # noqa: E402
import scenarios  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
DEPTH = int(os.environ.get("DEPTH", "4"))
MIN = float(os.environ.get("MIN", "16"))
# Allocation wrappers: the site is the caller of these.
WRAPPERS = {"CRYPTO_malloc", "CRYPTO_zalloc", "CRYPTO_realloc", "CRYPTO_clear_realloc",
            "CRYPTO_memdup", "CRYPTO_strdup", "CRYPTO_strndup", "ngx_alloc", "ngx_calloc",
            "ngx_memalign"}


def load(path):
    sites = {}
    for line in open(path):
        if line.startswith("S "):
            f = line.split()
            sites[tuple(f[4:])] = (int(f[1]), int(f[2]), int(f[3]))
    return sites


_names = {}


def name(frame):
    """OBJECT+0xOFF -> the function, when addr2line finds it in debug info (a stripped
    library's nearest symbol would be wrong), else OBJECT's base name+0xOFF."""
    m = re.match(r"^(/.+)\+(0x[0-9a-f]+)$", frame)
    if not m:
        return frame
    if frame not in _names:
        try:
            out = subprocess.run(["addr2line", "-f", "-e", m.group(1), m.group(2)],
                                 capture_output=True, text=True, timeout=10).stdout.split("\n")
            fn = out[0] if len(out) > 1 and not out[1].startswith("??") else None
        except (OSError, subprocess.TimeoutExpired):
            fn = None
        _names[frame] = fn or "%s+%s" % (os.path.basename(m.group(1)), m.group(2))
    return _names[frame]


def report(who, before, after, n):
    agg = collections.defaultdict(lambda: [0, 0, 0])
    for k in set(before) | set(after):
        a, b = before.get(k, (0, 0, 0)), after.get(k, (0, 0, 0))
        frames = [name(f) for f in k]
        frames = [f for f in frames if f not in WRAPPERS and not f.startswith("mem_")
                  and f not in ("pool_alloc", "pool_realloc")][:DEPTH]
        row = agg[" < ".join(frames)]
        row[0] += b[0] - a[0]
        row[1] += b[1] - a[1]
        row[2] += (b[2] + 8 * b[0]) - (a[2] + 8 * a[0])
    tot = [sum(r[i] for r in agg.values()) / n for i in range(3)]
    print("\n%s: per idle connection: %.1f blocks, %.0f bytes asked, %.0f with malloc's "
          "overhead" % (who, tot[0], tot[1], tot[2]))
    for k, r in sorted(agg.items(), key=lambda kv: -kv[1][2]):
        if abs(r[2]) / n >= MIN:
            print("  %6.2f %7.0f %7.0f  %s" % (r[0] / n, r[1] / n, r[2] / n, k))


def main():
    s = harness.settings()
    procs = harness.Procs(s["pidfile"])
    wd = tempfile.mkdtemp(prefix="lp-heap-")
    so = os.path.join(wd, "alloc_sites.so")
    subprocess.run(["cc", "-O2", "-fPIC", "-shared", "-o", so,
                    os.path.join(BENCH, "alloc_sites.c"), "-ldl", "-lpthread"], check=True)
    s["tls_cert"], s["tls_key"] = harness.make_tls_cert(wd)
    try:
        oport, _ = harness.start_origin(s, procs, wd)
        for who in os.environ.get("PROXIES", "luaproxy nginx").split():
            os.environ["LD_PRELOAD"] = so
            try:
                px = harness.start_proxy(s, procs, wd, who, scenarios.IDLE_H2[who], oport)
            finally:
                del os.environ["LD_PRELOAD"]
            try:
                pattern = "/tmp/lp-alloc-sites.%d.*" % px.pid
                assert harness.sanity(px, "/", "https"), "%s: the sanity GET failed" % who
                harness.run_wrk(s, procs, px, {"path": "/", "connections": 8, "scheme": "https"}, 1)
                warm, _ = idle_h2.open_idle(px.port, 50, "/")
                idle_h2.close_all(warm)
                time.sleep(1.5)
                dumps = []
                socks = []
                for step in (0, 1):
                    if step:
                        socks, failed = idle_h2.open_idle(px.port, N, "/")
                        assert not failed, "%s: %d connections failed" % (who, failed)
                        time.sleep(2.5)
                    os.kill(px.pid, signal.SIGRTMIN + 5)
                    harness.sanity(px, "/", "https")  # an allocation, so that it is written
                    deadline = time.monotonic() + 30
                    while len(glob.glob(pattern)) <= step and time.monotonic() < deadline:
                        time.sleep(0.1)
                    time.sleep(0.5)  # written whole
                    dumps.append(sorted(glob.glob(pattern))[step])
                report(who, load(dumps[0]), load(dumps[1]), len(socks))
                idle_h2.close_all(socks)
                for f in glob.glob(pattern):
                    os.unlink(f)
            finally:
                procs.stop(px.popen)
    finally:
        procs.stop_all()


if __name__ == "__main__":
    main()
