#!/usr/bin/env python3
"""Paired benchmark: each balancing policy against luaproxy's own round_robin.

  python3 bench/policies.py                 5 rounds x 2 s per pair
  ROUNDS=9 DURATION=3 python3 bench/policies.py

One origin and one luaproxy per policy (1 worker each, the 3-target upstream of
bench/scenarios.py's policy scenarios), all started once. In every round each policy is
measured right next to round_robin, the order of the two alternating between rounds
(A B, then B A), and the round's ratio is policy req/s over round_robin req/s. The
result is the median of those ratios per policy, with their spread: pairing cancels the
slow drift of a shared machine, which comparing two medians taken minutes apart does not.
A second round_robin instance measured the same way ("round_robin-2") shows how far from
1.00 the ratio of two identical proxies lands: the noise floor. The proxy's CPU time per
request is paired the same way: on a shared machine it moves less than req/s, which
also follows how much CPU the neighbours leave.

Same knobs as bench/run.sh where they apply: LUAPROXY, ORIGIN, ROUNDS, DURATION, WARMUP,
CPU_PROXY, CPU_LOAD, CONNECTIONS. Every process is stopped by PID on exit. Prints ratios
only; figures are never asserted."""

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as B  # noqa: E402
import scenarios  # noqa: E402

POLICIES = ["least_conn", "p2c", "hash", "round_robin-2"]


def template(policy):
    return scenarios.LUAPROXY_POLICY % (scenarios.POLICY_TARGETS, policy.split("-")[0])


def main():
    s = B.settings()
    s["rounds"] = int(os.environ.get("ROUNDS", "5"))
    s["duration"] = float(os.environ.get("DURATION", "2"))
    s["warmup"] = float(os.environ.get("WARMUP", "1"))
    conns = int(os.environ.get("CONNECTIONS", "50"))
    procs = B.Procs(s["pidfile"])
    workdir = tempfile.mkdtemp(prefix="lp-bench-pol-", dir=os.environ.get("LP_BENCH_TMP") or None)
    sc = {"name": "policy", "path": "/", "connections": conns}
    try:
        origin_port, _ = B.start_origin(s, procs, workdir)
        pxs = {}
        for p in ["round_robin"] + POLICIES:
            pxs[p] = B.start_proxy(s, procs, workdir, "luaproxy", template(p), origin_port)
            if not B.sanity(pxs[p], "/"):
                raise B.StartError("%s: %s" % (p, pxs[p].failed))
        B.log("paired: each policy next to round_robin, %d rounds x %gs, %d connections, "
              "proxy on CPU %s, wrk+origin on CPU %s" % (s["rounds"], s["duration"], conns,
                                                         s["cpu_proxy"], s["cpu_load"]))
        for px in pxs.values():
            B.run_wrk(s, procs, px, sc, s["warmup"])
        ratios = {p: [] for p in POLICIES}
        cpu = {p: [] for p in POLICIES}  # round_robin CPU us/req over the policy's
        rr_us = []
        for rnd in range(s["rounds"]):
            for p in POLICIES:
                order = ["round_robin", p] if rnd % 2 == 0 else [p, "round_robin"]
                rps, us = {}, {}
                for name in order:
                    r = B.run_wrk(s, procs, pxs[name], sc, s["duration"])
                    if r["errors"]:
                        raise B.StartError("%s: %d wrk errors" % (name, r["errors"]))
                    rps[name], us[name] = r["rps"], r["cpu_us_per_req"]
                ratios[p].append(rps[p] / rps["round_robin"])
                cpu[p].append(us["round_robin"] / us[p])
                rr_us.append(us["round_robin"])
            B.log("round %d: %s" % (rnd + 1, "  ".join(
                "%s %.3f/%.3f" % (p, ratios[p][-1], cpu[p][-1]) for p in POLICIES)))
        B.log()
        B.log("%-14s %8s %8s %8s   %8s %8s %8s" % ("", "req/s", "", "", "CPU", "", ""))
        B.log("%-14s %8s %8s %8s   %8s %8s %8s" % ("policy", "median", "min", "max",
                                                   "median", "min", "max"))
        for p in POLICIES:
            xs, cs = ratios[p], cpu[p]
            B.log("%-14s %8.3f %8.3f %8.3f   %8.3f %8.3f %8.3f" % (
                p, B.median(xs), min(xs), max(xs), B.median(cs), min(cs), max(cs)))
        B.log("req/s: policy / round_robin; CPU: round_robin CPU us per request / the "
              "policy's (both: above 1.00 is cheaper than round_robin); round_robin itself: "
              "median %.1f CPU us per request" % B.median(rr_us))
        return 0
    except B.StartError as e:
        B.log("\nERROR: %s" % e)
        return 1
    finally:
        procs.stop_all()


if __name__ == "__main__":
    sys.exit(main())
