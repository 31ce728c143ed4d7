#!/usr/bin/env python3
"""Load for resumed TLS handshakes: every request on a new TLS connection that resumes the
session of the one before (Python's ssl keeps and offers it), with `Connection: close`.
wrk cannot do this: it resumes about half of its reconnections. Prints one
`WRKJSON {...}` line in the shape bench/wrk_report.lua prints, plus the share of
connections the server really resumed.

usage: tls_resume.py URL SECONDS CONNECTIONS
"""

import json
import socket
import ssl
import sys
import threading
import time
import urllib.parse


def main():
    url, seconds, conns = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    u = urllib.parse.urlsplit(url)
    host, port, path = u.hostname, u.port, (u.path or "/") + ("?" + u.query if u.query else "")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    request = ("GET %s HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n\r\n" %
               (path, host, port)).encode()
    lock = threading.Lock()
    stats = {"requests": 0, "bytes": 0, "resumed": 0, "errors": 0, "lat": []}
    deadline = time.monotonic() + seconds

    def worker():
        session = None
        lat, n, nbytes, resumed, errors = [], 0, 0, 0, 0
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            try:
                with socket.create_connection((host, port), timeout=10) as s:
                    with ctx.wrap_socket(s, session=session) as t:
                        t.sendall(request)
                        data = b""
                        while True:
                            chunk = t.recv(65536)
                            if not chunk:
                                break
                            data += chunk
                        if not data.startswith(b"HTTP/1.1 200"):
                            errors += 1
                            continue
                        resumed += t.session_reused
                        session = t.session
                        nbytes += len(data)
            except (OSError, ssl.SSLError):
                errors += 1
                session = None
                continue
            lat.append(time.monotonic() - t0)
            n += 1
        with lock:
            stats["requests"] += n
            stats["bytes"] += nbytes
            stats["resumed"] += resumed
            stats["errors"] += errors
            stats["lat"].extend(lat)

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    lat = sorted(stats["lat"]) or [0.0]

    def pct(p):
        return int(lat[min(len(lat) - 1, int(p * len(lat)))] * 1e6)

    out = {
        "requests": stats["requests"], "bytes": stats["bytes"],
        "duration_us": int(wall * 1e6), "lat_p50_us": pct(0.50), "lat_p90_us": pct(0.90),
        "lat_p99_us": pct(0.99), "lat_max_us": int(lat[-1] * 1e6),
        "err_other": stats["errors"],
        "resumed_share": stats["resumed"] / stats["requests"] if stats["requests"] else 0.0,
    }
    print("WRKJSON " + json.dumps(out))


if __name__ == "__main__":
    main()
