#!/usr/bin/env python3
"""Instructions per request through an HTTP/2 upstream (`protocol = "h2"`, engine/h2_up.c)
under callgrind: luaproxy (h2c listener, 1 worker) in front of tests/integration/test_h2.py's
H2Origin (python3-h2, max_streams 100), driven by `h2load -n N -c C -m M` over h2c.
luaproxy runs under `valgrind --tool=callgrind --instr-atstart=no`; a warm-up run goes first
(traces compiled, the upstream connection up), then collection is switched on for one run
of N requests and the total is divided by N. The origin runs in this process, outside
callgrind: only the proxy's instructions count. Instructions, not time: steady on a loaded
machine. A figure for docs, never a test.

  python3 bench/h2u_callgrind.py [N]        # N requests (default 5000)
  WARM=2000 C=1 M=50 ...                    # warm-up requests, h2load's -c and -m
  LUAPROXY=/path/to/luaproxy ...            # binary under test (default build/luaproxy)
  KEEP=1 ...                                # keep the callgrind.out files (printed)
"""

import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
LUAPROXY = os.path.abspath(os.environ.get("LUAPROXY", os.path.join(ROOT, "build", "luaproxy")))
N = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
WARM = int(os.environ.get("WARM", "2000"))
C = os.environ.get("C", "1")
M = os.environ.get("M", "50")


def main():
    for tool in ("valgrind", "callgrind_control", "h2load"):
        if not shutil.which(tool):
            sys.exit("h2u_callgrind: %s not found" % tool)
    out = tempfile.mkdtemp(prefix="lp-h2u-cg-")
    wrap = os.path.join(out, "luaproxy")
    with open(wrap, "w") as f:
        f.write("#!/bin/sh\nexec valgrind --tool=callgrind --instr-atstart=no "
                "--callgrind-out-file=%s/callgrind.out.%%p %s \"$@\"\n" % (out, LUAPROXY))
    os.chmod(wrap, 0o755)
    # The harness starts the wrapper; its time limits stretched for callgrind's pace.
    os.environ["LUAPROXY"] = wrap
    os.environ.setdefault("LP_IT_TIMEOUT_FACTOR", "30")
    import harness as H
    from test_h2 import H2Origin

    origin = H2Origin()
    p = None
    try:
        ups = {"h2o": H.upstream(origin.address(), protocol="h2", max_streams=100)}
        p = H.Proxy.build(ups, [{"match": {"prefix": "/"}, "upstream": "h2o"}],
                          name="h2ucg", workers=1)
        p.cfg["listen"] = [{"address": "127.0.0.1:0", "http2": True}]
        p.start()
        url = "http://127.0.0.1:%d/ok" % p.port

        def load(n):
            r = subprocess.run(["h2load", "-t1", "-c", C, "-m", M, "-n", str(n), url],
                               capture_output=True, text=True, timeout=1800)
            m = re.search(r"(\d+) succeeded", r.stdout)
            if not m or int(m.group(1)) != n:
                sys.exit("h2u_callgrind: h2load failed:\n" + r.stdout + r.stderr)

        load(WARM)
        ctl = ["callgrind_control", "-i"]
        subprocess.run(ctl + ["on", str(p.pid)], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        load(N)
        subprocess.run(ctl + ["off", str(p.pid)], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    finally:
        if p:
            p.stop()
        origin.stop()
    total = 0
    files = glob.glob(os.path.join(out, "callgrind.out.*"))
    for fn in files:
        with open(fn) as f:
            for line in f:
                if line.startswith("totals:"):
                    total += int(line.split()[1])
    print("%s, %d requests (h2load -c %s -m %s, after %d warm-up), h2 upstream: "
          "%.0f instructions per request" % (LUAPROXY, N, C, M, WARM, total / N))
    if os.environ.get("KEEP"):
        print("\n".join(files))
    else:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
