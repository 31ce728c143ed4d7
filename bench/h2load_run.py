#!/usr/bin/env python3
"""One h2load run for bench/harness.py (scenarios with "client": "h2load"): HTTP/2 over TLS
(ALPN h2), `-c CONNECTIONS -m STREAMS` for SECONDS, one thread. Prints the figures as the
`WRKJSON {...}` line wrk_report.lua prints, so that the harness reads both alike. h2load
gives no percentiles: the latency fields carry its mean time per request (p50, p90, p99)
and its maximum (max).

Usage: h2load_run.py URL SECONDS CONNECTIONS STREAMS"""
import json
import re
import shutil
import subprocess
import sys

UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6}


def usec(text):
    m = re.match(r"([\d.]+)(us|ms|s)$", text)
    return float(m.group(1)) * UNITS[m.group(2)] if m else 0.0


def main():
    url, seconds, conns, streams = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
    h2load = shutil.which("h2load")
    if not h2load:
        print("h2load_run.py: h2load not found (Debian: nghttp2-client)", file=sys.stderr)
        return 1
    p = subprocess.run([h2load, "-t1", "-c", conns, "-m", streams, "-D", "%g" % seconds, url],
                       capture_output=True, text=True, timeout=seconds + 60)
    out = p.stdout
    fin = re.search(r"^finished in ([\d.]+)s", out, re.M)
    req = re.search(r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                    r"(\d+) failed, (\d+) errored, (\d+) timeout", out, re.M)
    traffic = re.search(r"^traffic: .*?\((\d+)\) total", out, re.M)
    lat = re.search(r"^time for request:\s+(\S+)\s+(\S+)\s+(\S+)", out, re.M)
    proto = re.search(r"^Application protocol: (\S+)", out, re.M)
    if p.returncode != 0 or not (fin and req and traffic and lat):
        print("h2load failed (rc %d):\n%s%s" % (p.returncode, out, p.stderr), file=sys.stderr)
        return 1
    if not proto or proto.group(1) != "h2":
        print("h2load did not speak h2 (%s)" % (proto.group(1) if proto else "?"),
              file=sys.stderr)
        return 1
    mean = usec(lat.group(3))
    doc = {"requests": int(req.group(4)), "bytes": int(traffic.group(1)),
           "duration_us": float(fin.group(1)) * 1e6,
           "lat_p50_us": mean, "lat_p90_us": mean, "lat_p99_us": mean,
           "lat_max_us": usec(lat.group(2)),
           "err_failed": int(req.group(5)), "err_errored": int(req.group(6)),
           "err_timeout": int(req.group(7))}
    print("WRKJSON " + json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
