#!/usr/bin/env python3
"""The auth plugins' own cost per request, beside nginx + lua doing the same work: each
proxy (1 worker) answers GET /?what=W&n=N (the credential in the request's header) by
timing N runs of the check in a JIT-compiled Lua loop on the real request handle, and says
ns per check. The check reads the credential, verifies it and sets req.ctx, but changes no
header (luaproxy: consumer_header = "" and hide_credentials = false; nginx: the same code
without its two header writes): a request's header store is bounded in luaproxy, so a
loop cannot set headers a million times on one request. Those two writes (one clear, one
set: an FFI call each) come on top in a real request.
luaproxy runs the bundled plugins' request phase (key_auth, jwt with an HS256 and an RS256
key); nginx runs what the wrk scenarios' nginx runs (bench/scenarios.py: the key lookup in
access_by_lua, bench/jwt_anchor.lua for JWT). Unlike the wrk scenarios (key-auth-*, jwt-*),
neither HTTP nor proxying is in the figure, so it holds still on a loaded machine; what it
leaves out is the engine's cost of running a Lua phase at all, the same for any plugin.

  python3 bench/auth_loop.py           (ROUNDS=5; LUAPROXY, NGINX as run.sh)

Exit status 1 only when a proxy failed to start or answered wrongly; never because of the
figures."""
import http.client
import json
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as B  # noqa: E402
import scenarios as S  # noqa: E402

# what -> (header name, header value, iterations)
CASES = {
    "key": ("X-Api-Key", S.AUTH_API_KEY, 1000000),
    "jwt-hs256": ("Authorization", "Bearer " + S.AUTH_HS256_TOKEN, 200000),
    "jwt-rs256": ("Authorization", "Bearer " + S.AUTH_RS256_TOKEN, 5000),
}

LOOP_LUA = """\
    local what, n = %(what)s, tonumber(%(n)s)
    local c = assert(CASES[what], "unknown case")
    local check = c.check
    check()
    local t0 = os.clock()
    for _ = 1, n do check() end
    local t1 = os.clock()
    local out = string.format("%%.1f", (t1 - t0) * 1e9 / n)
"""

LUAPROXY = """\
local cases = %(cases)s
return {
  workers = 1,
  listen = { { address = "127.0.0.1:{{port}}" } },
  lua = { phase_timeout = 120 },
  log = { access = false },
  routes = { { match = { prefix = "/" }, handler = function(req)
    if not COMPILED then
      -- Each plugin's conf as the engine hands it to its phases: validated, compiled.
      local schema = require "luaproxy.schema"
      local function compiled(name, conf)
        local P = require(name)
        return { P = P, conf = assert(P.compile(assert(schema.validate(P.schema, conf)))) }
      end
      local k = compiled("key_auth", { keys = { ["%(key)s"] = "bench-user" },
                                       consumer_header = "", hide_credentials = false })
      local j = compiled("jwt", { consumer_header = "", hide_credentials = false, keys = {
        { kid = "hs", alg = "HS256", secret = "%(secret)s" },
        { kid = "rs", alg = "RS256", pem_file = "%(pem)s" } } })
      COMPILED = { key = k, ["jwt-hs256"] = j, ["jwt-rs256"] = j }
    end
    -- Closures over this request's handle.
    local CASES = {}
    for what, c in pairs(cases) do
      local P, conf = COMPILED[what].P, COMPILED[what].conf
      CASES[what] = { check = function() P.request(req, conf) end }
    end
%(loop)s    return req:respond(200, out)
  end } },
}
"""

NGINX = S.NGINX_AUTHN[:S.NGINX_AUTHN.index("  upstream o {")] + """\
  server {
    listen 127.0.0.1:{{port}};
    location / {
      content_by_lua_block {
        local anchor = require "jwt_anchor"
        local cases = %(cases)s
        local CASES = {}
        for what, c in pairs(cases) do
          local check
          if what == "key" then
            check = function()
              local k = ngx.var.http_x_api_key
              local cons = k and KEYS[k]
              if not cons then return ngx.exit(401) end
              ngx.ctx.consumer = cons
            end
          else
            check = function() anchor.access(true) end
          end
          CASES[what] = { check = check }
        end
%(loop)s        ngx.print(out)
      }
    }
  }
}
"""


def lua_cases():
    return "{ " + ", ".join('["%s"] = { "%s", "%s" }' % (w, c[0], c[1]) for w, c in CASES.items()) + " }"


def templates():
    lp = LUAPROXY % {"cases": lua_cases(), "key": S.AUTH_API_KEY, "secret": S.AUTH_HS_SECRET,
                     "pem": S._AUTH_PEM, "loop": LOOP_LUA % {"what": 'req:query("what")',
                                                            "n": 'req:query("n")'}}
    ng = NGINX % {"cases": lua_cases(), "loop": LOOP_LUA % {"what": "ngx.var.arg_what",
                                                          "n": "ngx.var.arg_n"}}
    return lp, ng


def ask(port, what, n):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        c.request("GET", "/?what=%s&n=%d" % (what, n), headers={CASES[what][0]: CASES[what][1]})
        r = c.getresponse()
        body = r.read().decode()
    finally:
        c.close()
    m = re.match(r"(-?[\d.]+)$", body)
    if r.status != 200 or not m:
        raise B.StartError("GET /?what=%s -> %d %r" % (what, r.status, body[:300]))
    return float(m.group(1))


def main():
    s = B.settings()
    rounds = int(os.environ.get("ROUNDS", "5"))
    procs = B.Procs(s["pidfile"])
    workdir = tempfile.mkdtemp(prefix="lp-auth-loop-")
    lp_tpl, ng_tpl = templates()
    out = {"rounds": rounds, "runs": {w: {"luaproxy": [], "nginx": []} for w in CASES}}
    try:
        pxs = {name: B.start_proxy(s, procs, workdir, name, tpl, 0)
               for name, tpl in (("luaproxy", lp_tpl), ("nginx", ng_tpl))}
        for what, (_, _, n) in CASES.items():
            for name, px in pxs.items():
                ask(px.port, what, max(n // 10, 100))  # warm-up: the loops get compiled
            for _ in range(rounds):
                for name, px in pxs.items():
                    out["runs"][what][name].append(ask(px.port, what, n))
    except B.StartError as e:
        print("error: %s" % e, file=sys.stderr)
        return 1
    finally:
        procs.stop_all()
    print("ns per check (no header written), median of %d rounds, 1 worker each" % rounds)
    print("  %-10s %10s %10s %9s" % ("", "luaproxy", "nginx", "lp/nginx"))
    out["median"] = {}
    for what in CASES:
        lp = B.median(out["runs"][what]["luaproxy"])
        ng = B.median(out["runs"][what]["nginx"])
        out["median"][what] = {"luaproxy": lp, "nginx": ng, "ratio": B.ratio(lp, ng)}
        print("  %-10s %10.1f %10.1f %9.2f" % (what, lp, ng, B.ratio(lp, ng) or 0))
    path = os.path.join(os.path.dirname(s["results"]), "auth_loop.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print("results: %s" % os.path.relpath(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
