#!/usr/bin/env python3
"""The waf plugin running the OWASP CRS from Debian's modsecurity-crs (issue #20) through
real requests (docs/plugins/waf.md, "The OWASP Core Rule Set"):

- attacks refused (403, rule ids, variable, excerpt and score in the error log), ordinary
  requests (GraphQL, JSON, comments) passed;
- an unsupported construct in an operator's .conf: logged with file:line at load;
- a rule file with a syntax error: the reload refused with file:line, the old set serving;
- a catastrophic regex on a long input: an answer in bounded time, the worker serving on;
- a body over the limit: 413; a 500 KB multipart upload passed (body_limit_files), its
  fields still inspected (an attack beside the file refused), its fields alone over
  body_limit refused or passed as body_over_limit says; invalid UTF-8 and percent-encoding: clear answers, no 500;
- more values than max_args (query, JSON, multipart, headers): 403, the values past it
  uninspected; a batch of GraphQL requests read as each one (its syntax passed, an attack
  in its variables refused);
- GraphQL string literals inspected with their escapes decoded, XML bodies as XML:/*, and
  the reason of a body error in the log line;
- a reload while requests are being inspected: every request answered, none with a 5xx;
- the Hyperscan databases compiled once per process: of the two workers one compiles them,
  the other takes them; a reload with the same rules compiles none, one with a changed
  file only what changed.
The CRS files are the installed package's (README's install step): their absence fails."""

import os
import random
import sys
import re
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "reload"))
import reloadtest as RT  # noqa: E402
from reloadtest import H  # noqa: E402

CRS = "/usr/share/modsecurity-crs"

EXTRA = """\
# an operator's own rules beside CRS
SecRule REQUEST_FILENAME "@beginsWith /custom-block" \\
    "id:10001,phase:1,deny,status:418,msg:'custom: blocked path'"
# read after CRS (its 949110 has run): a rule here denies by itself
SecRule ARGS:slow "@rx ^(\\w+\\s?)*$\\1" \\
    "id:10002,phase:2,deny,status:403,t:none,msg:'custom: explodes',severity:CRITICAL"
SecRule ARGS "@verifyCC \\d{13,16}" "id:10003,phase:2,pass,nolog"
"""
# a rule with a transformation chain of its own: one new Hyperscan database
CHANGED = """\
SecRule ARGS:zz "@rx luaproxy-new-rule" \\
    "id:10005,phase:2,deny,status:403,t:none,t:trimLeft,t:trimRight,t:uppercase,t:lowercase,msg:'custom: new'"
"""
BAD = """\
SecRule REQUEST_FILENAME "@beginsWith /custom-block" \\
    "id:10001,phase:1,deny,status:418,msg:'custom: blocked path'"

SecRule ARGS "@rx x" "id:10004,phase:2,pass,chain"
"""


def route(prefix, plugins):
    return {"match": {"prefix": prefix}, "upstream": "o", "plugins": plugins,
            "strip_prefix": prefix != "/"}


def routes():
    return [
        # the same files as "/": one compiled rule set for both routes
        route("/small/", [{"name": "waf", "crs": CRS, "crs_files": ["rules/extra.conf"],
                           "body_limit": 1000}]),
        route("/smallpass/", [{"name": "waf", "crs": CRS, "crs_files": ["rules/extra.conf"],
                               "body_limit": 1000, "body_over_limit": "pass"}]),
        # max_args under limits.max_headers (100): a request can bring more headers than it
        route("/few/", [{"name": "waf", "crs": CRS, "crs_files": ["rules/extra.conf"],
                         "max_args": 40}]),
        route("/", [{"name": "waf", "crs": CRS, "crs_files": ["rules/extra.conf"]}]),
    ]


class WafCrsTest(RT.ReloadTestCase):
    @classmethod
    def setUpClass(cls):
        if not os.path.isdir(CRS + "/rules"):
            raise AssertionError(CRS + "/rules is missing: apt-get install modsecurity-crs")
        cls.origin = cls.start_origin("o")
        cls.proxy = cls.start_reload_proxy(
            {"o": H.upstream(cls.origin.address())}, routes(), workers=2,
            files={"rules/extra.conf": EXTRA},
            lua=dict({"plugin_paths": [RT.FIXTURE_PLUGINS], "regex_match_limit": 100000,
                      # reading CRS at each config load: about 0.4 s of CPU, more than the
                      # default 1 s of wall clock on a loaded machine or in the sanitizer
                      # build (docs/plugins/waf.md, "Load time")
                      "phase_timeout": 20},
                     # The Hyperscan databases compile on the engine's compile thread, not
                     # in init_worker: the default init_timeout holds, except for the
                     # sanitizer build's PCRE2 JIT warm-up on a loaded machine.
                     **({"init_timeout": 120} if H.SANITIZED else {})), wait=False)
        H.wait_for(lambda: cls.proxy.LISTENING.search(cls.proxy.stderr()) or cls.proxy.proc.poll() is not None,
                   H.T(300), interval=0.2, what="luaproxy listening (CRS compiled)")
        cls.proxy.wait_ready()
        # The Hyperscan databases compile on the engine's compile thread while the workers
        # serve, running CRS through PCRE2 alone meanwhile: slow enough on a loaded machine
        # to pass time_budget. The tests start once both workers have them.
        H.wait_for(lambda: cls.proxy.stderr().count("Hyperscan databases ready in ") >= 2,
                   H.T(300), interval=0.2, what="both workers' Hyperscan databases")
        H.wait_for(lambda: cls.get_status("/fixed?id=1") == 200, H.T(60), what="a first answer")

    @classmethod
    def get_status(cls, path):
        try:
            return H.get(cls.proxy.port, path).status
        except OSError:
            return None

    def test_attacks_refused_ordinary_passed(self):
        for path in ("/products?id=1%27+OR+%271%27%3D%271", "/p?file=../../../../etc/passwd",
                     "/s?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E", "/x?c=%3B+cat+%2Fetc%2Fpasswd"):
            self.assertEqual(self.get(path).status, 403, path)
        H.wait_for(lambda: self.log_lines("waf: blocked GET /products (score "), H.T(5),
                   what="the block in the error log")
        line = self.log_lines("waf: blocked GET /products (score ")[0]
        self.assertIn("942100 ARGS:id", line)
        self.assertIn("949110 TX:anomaly_score", line)
        gql = (b'{"query":"query($id: ID!) { product(id: $id) { name reviews(first: 5) '
               b'{ edges { node { text } } } } }","variables":{"id":"12"}}')
        r = self.get("/echo", method="POST", headers={"Content-Type": "application/json"}, body=gql)
        self.assertEqual(r.status, 200, r.body)
        form = b"name=O%27Brien&comment=It%27s+great%2C+I%27d+buy+it+again"
        r = self.get("/echo", method="POST",
                     headers={"Content-Type": "application/x-www-form-urlencoded"}, body=form)
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(self.get("/custom-block/x").status, 418)

    def ready_lines(self):
        return self.log_lines("Hyperscan databases ready in ")

    def test_compiled_once_shared_by_workers(self):
        # compiled on the engine's compile thread while the workers serve: seconds of CPU
        H.wait_for(lambda: len(self.ready_lines()) >= 2, H.T(300), what="both workers' lines")
        lines = self.ready_lines()[:2]
        counts = [tuple(int(x) for x in re.search(r"\((\d+) compiled here, (\d+) shared\)", l).groups())
                  for l in lines]
        total = int(re.search(r"waf: (\d+) Hyperscan databases", lines[0]).group(1))
        self.assertGreater(total, 5)
        self.assertEqual(sorted(counts), [(0, total), (total, 0)], lines)

    def test_unsupported_construct_logged_with_place(self):
        # one grouped line per config load (three routes, two workers: said once)
        needle = "SecLang constructs not run (unsupported = \"log\"): "
        H.wait_for(lambda: self.log_lines(needle), H.T(10), what="the unsupported @verifyCC with file:line")
        self.assertEqual(len(self.log_lines(needle)), 1, self.log_lines(needle))
        self.assertRegex(self.log_lines(needle)[0], r"1 x operator @verifyCC \(first at \S*rules/extra.conf:7\)")
        # CRS's own: its persistent IP collection, say (its XML:/* and XML://@* targets run)
        self.assertIn("13 x variable IP", self.log_lines(needle)[0])
        self.assertNotIn("variable XML", self.log_lines(needle)[0])

    def test_load_summary_once_with_patterns_counted(self):
        # said by one worker once its databases are there: the patterns counted, not 0
        H.wait_for(lambda: len(self.ready_lines()) >= 2, H.T(300), what="both workers' lines")
        H.wait_for(lambda: self.log_lines("waf: SecLang rules: "), H.T(10), what="the summary")
        lines = self.log_lines("waf: SecLang rules: ")
        self.assertEqual(len(lines), 1, lines)
        m = re.search(r"; (\d+) Hyperscan patterns, (\d+) PCRE2-only", lines[0])
        self.assertTrue(m, lines[0])
        self.assertGreater(int(m.group(1)), 1000, lines[0])

    def test_catastrophic_regex_bounded(self):
        t0 = time.monotonic()
        r = self.get("/fixed?slow=" + "a" * 5000 + "!")
        self.assertEqual(r.status, 403, r.body)  # regex_error = "match"
        self.assertLess(time.monotonic() - t0, H.T(10))
        self.assertEqual(self.get("/fixed?id=2").status, 200)

    def test_body_limit_and_bad_encodings(self):
        hdr = {"Content-Type": "application/x-www-form-urlencoded"}
        self.assertEqual(self.get("/small/echo", method="POST", headers=hdr,
                                  body=b"a=" + b"x" * 2000).status, 413)
        self.assertEqual(self.get("/fixed?q=%ZZ").status, 403)
        self.assertEqual(self.get("/fixed?q=caf%C3%A9").status, 200)
        for raw in (b"GET /fixed?q=\xff\xfe HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
                    b"GET /fixed?q=%FF%FE%C0 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"):
            resp, _, c = H.raw_exchange(self.proxy.port, raw)
            c.close()
            self.assertIsNotNone(resp)
            self.assertIn(resp.status, (200, 400, 403))
        r = self.get("/echo", method="POST", headers={"Content-Type": "application/json"},
                     body=b'{"a": ')
        self.assertEqual(r.status, 403)
        r = self.get("/echo", method="POST", headers={"Content-Type": "application/json"},
                     body=b'{"a": "\xff\xfe ok"}')
        self.assertIn(r.status, (200, 403))
        # a NUL byte: the JSON decoder reads no further, what follows would go uninspected
        r = self.get("/echo", method="POST", headers={"Content-Type": "application/json"},
                     body=b'{"a": 1}\x00{"q": "1 UNION SELECT password FROM users WHERE 1=1 --"}')
        self.assertEqual(r.status, 403)

    def test_multipart_upload_over_body_limit(self):
        # a 500 KB file (bytes as a JPEG's, random: some look like attacks to a regex) beside
        # text fields, as `curl -F title=... -F file=@500k.jpg` sends it
        jpeg = random.Random(20).randbytes(500 * 1024)
        boundary = "------------------------d74496d66958873e"

        def form(title, filename="500k.jpg"):
            return ("--%s\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\n%s\r\n"
                    "--%s\r\nContent-Disposition: form-data; name=\"file\"; filename=\"%s\"\r\n"
                    "Content-Type: image/jpeg\r\n\r\n" % (boundary, title, boundary, filename)
                    ).encode() + jpeg + ("\r\n--%s--\r\n" % boundary).encode()
        hdr = {"Content-Type": "multipart/form-data; boundary=" + boundary}
        # the defaults (body_limit 128 KB, body_limit_files 12.5 MB): passed whole
        body = form("holiday at the beach")
        r = self.get("/echo", method="POST", headers=hdr, body=body)
        self.assertEqual(r.status, 200, r.body[:200])
        self.assertEqual(r.body, body)
        # the fields are still inspected: an attack in one beside the file, or in the
        # file's name
        r = self.get("/echo", method="POST", headers=hdr, body=form("<script>alert(document.cookie)</script>"))
        self.assertEqual(r.status, 403)
        r = self.get("/echo", method="POST", headers=hdr, body=form("x", "shell.php"))
        self.assertEqual(r.status, 403)
        # body_limit 1000: the same upload passes (its fields fit), fields over it follow
        # body_over_limit (refused; passed uninspected)
        r = self.get("/small/echo", method="POST", headers=hdr, body=body)
        self.assertEqual(r.status, 200)
        long = form("a" * 2000)
        self.assertEqual(self.get("/small/echo", method="POST", headers=hdr, body=long).status, 413)
        r = self.get("/smallpass/echo", method="POST", headers=hdr, body=long)
        self.assertEqual((r.status, len(r.body)), (200, len(long)))
        H.wait_for(lambda: self.log_lines("multipart body over body_limit (1000 bytes) without its "
                                          "files' contents"), H.T(5), what="the refusal's reason")

    def test_max_args_and_graphql_batches(self):
        sqli = "1 UNION SELECT password FROM users WHERE 1=1 --"
        js = {"Content-Type": "application/json"}

        def post(path, headers, body):
            return self.get(path, method="POST", headers=headers, body=body.encode())

        # refused by protocol.lua's 1009 (a body error), logged with the path (made unique
        # per case: the log line has no query)
        def refused_by_1009(r, what):
            self.assertEqual(r.status, 403, what)
            H.wait_for(lambda: self.log_lines(what + " (score "), H.T(5),
                       what="the block of " + what + " in the error log")
            self.assertIn(" 1009 ", self.log_lines(what + " (score ")[-1])

        # (a) query arguments (the default max_args, 1024): 1024 pass, one more is refused
        self.assertEqual(self.get("/fixed?qa=1&" + "a=0&" * 1023).status, 200)
        refused_by_1009(self.get("/max-qa?" + "a=0&" * 1025), "GET /max-qa")
        # (b) a JSON body: 1024 keys pass, more with an attack after them are refused
        keys = ",".join('"k%d":0' % i for i in range(1024))
        self.assertEqual(post("/echo?jb=1", js, "{" + keys + "}").status, 200)
        refused_by_1009(post("/max-json", js, "{" + keys + ',"zz":"' + sqli + '"}'), "POST /max-json")

        # (c) a multipart body: a form with a file passes, more parts than max_args are refused
        def part(name, value, filename=None):
            fn = '; filename="%s"' % filename if filename else ""
            return ('--XyZ\r\nContent-Disposition: form-data; name="%s"%s\r\n\r\n%s\r\n'
                    % (name, fn, value))
        mp = {"Content-Type": "multipart/form-data; boundary=XyZ"}
        form = part("title", "It's my CV") + part("cv", "plain text", "cv.txt") + "--XyZ--\r\n"
        self.assertEqual(post("/echo?mp=1", mp, form).status, 200)
        many = "".join(part("k%d" % i, "0") for i in range(1025)) + part("zz", sqli) + "--XyZ--\r\n"
        refused_by_1009(post("/max-mp", mp, many), "POST /max-mp")

        # (d) a batch of GraphQL requests (as Apollo sends): the documents' syntax passes
        # (read as text, 932100 took it for a shell command), an attack in one element's
        # variables is refused
        def op(name, pid):
            return ('{"operationName":"%s","query":"query %s($id: ID!) { product(id: $id) { id name '
                    'price { amount currency } reviews(first: 5) { edges { node { rating text } } } } }",'
                    '"variables":{"id":"%s"}}' % (name, name, pid))
        self.assertEqual(post("/echo?gb=1", js, "[" + op("A", "12") + "," + op("B", "13") + "]").status, 200)
        self.assertEqual(post("/echo?gb=2", js, "[" + op("A", "12") + "," + op("B", sqli) + "]").status, 403)

        # (e) headers: more than max_args (40 on /few/) are refused like arguments; on "/"
        # (1024) the proxy's limits.max_headers (100) answers first
        hs = [("X-H-%d" % i, "v") for i in range(30)]
        self.assertEqual(self.get("/few/fixed?he=1", headers=hs).status, 200)
        hs = [("X-H-%d" % i, "v") for i in range(45)]
        refused_by_1009(self.get("/few/max-h", headers=hs), "/max-h")
        hs = [("X-H-%d" % i, "v") for i in range(120)]
        self.assertEqual(self.get("/fixed?he=3", headers=hs).status, 431)

        # every request answered, the workers serve on
        self.assertIsNone(self.proxy.proc.poll())
        self.assertEqual(self.get("/fixed?id=5").status, 200)

    def test_graphql_escapes_xml_bodies_body_error_reasons(self):
        js = {"Content-Type": "application/json"}
        xml = {"Content-Type": "application/xml"}
        # a trial's three requests: GraphQL string escapes hid a quote and a path, an XML
        # body went uninspected (its text is XML:/*, which CRS reads, not ARGS)
        for path, hdr, body in (
                ("/gql-sqli", js, rb'{"query":"{ user(name: \"x\\u0027 OR \\u00271\\u0027=\\u00271\") { id } }"}'),
                ("/gql-shell", js, rb'{"query":"{ user(name: \"\\u003b cat \\u002fetc\\u002fpasswd\") { id } }"}'),
                ("/xml-sqli", xml, b"<a>1' UNION SELECT password FROM users--</a>")):
            r = self.get(path, method="POST", headers=hdr, body=body)
            self.assertEqual(r.status, 403, path)
        H.wait_for(lambda: self.log_lines("POST /xml-sqli (score "), H.T(5), what="the XML block logged")
        self.assertIn("942100 XML:/*", self.log_lines("POST /xml-sqli (score ")[-1])
        self.assertIn("942100 ARGS:query.1", self.log_lines("POST /gql-sqli (score ")[-1])
        # ordinary ones pass
        r = self.get("/echo?gx=1", method="POST", headers=js,
                     body=rb'{"query":"{ user(name: \"O\\u0027Neil\") { id } }"}')
        self.assertEqual(r.status, 200, r.body)
        r = self.get("/echo?gx=2", method="POST", headers={"Content-Type": "text/xml"},
                     body=b"<order><item sku='A-1'>Tea &amp; biscuits</item></order>")
        self.assertEqual(r.status, 200, r.body)
        # a body that does not parse: refused by 1009, the log saying why
        for path, hdr, body, why in (
                ("/why-json", js, b'{"a": ', "(JSON: Expected value but found T_END at byte 7)"),
                ("/why-xml", xml, b"<a><b></a>", "(XML: an end tag that closes no open element at byte 7)")):
            self.assertEqual(self.get(path, method="POST", headers=hdr, body=body).status, 403, path)
            H.wait_for(lambda: self.log_lines("POST %s (score " % path), H.T(5), what=path + " logged")
            self.assertIn('1009 &body_error "1" ' + why, self.log_lines("POST %s (score " % path)[-1])

    def test_zz_bad_file_refused_then_reload_under_load(self):
        path = os.path.join(self.proxy.dir, "rules", "extra.conf")
        with open(path, "w") as f:
            f.write(BAD)
        try:
            j = self.reload_fails()
            self.assertIn("rules/extra.conf:4: the file ends inside a chain", j["error"])
            # a name that is no SecLang (a typo): refused as ModSecurity refuses it
            with open(path, "w") as f:
                f.write(EXTRA + "SecRule REQUEST_HEADRES:Host \"@rx x\" \"id:10009,phase:1,pass\"\n")
            j = self.reload_fails()
            self.assertIn("rules/extra.conf:8: unknown variable REQUEST_HEADRES (did you mean REQUEST_HEADERS?)",
                          j["error"])
            self.assertEqual(self.get("/custom-block/x").status, 418)
            self.assertEqual(self.get("/?x=%3Cscript%3Ealert(1)%3C%2Fscript%3E").status, 403)
        finally:
            with open(path, "w") as f:
                f.write(EXTRA)
        # Requests go on while the config reloads (new generation, rules compiled again).
        statuses, stop = [], threading.Event()

        def load():
            while not stop.is_set():
                for p in ("/fixed?id=3", "/s?q=%3Cscript%3E"):
                    try:
                        statuses.append(H.get(self.proxy.port, p).status)
                    except OSError as e:
                        statuses.append(str(e))
        t = threading.Thread(target=load)
        t.start()
        try:
            # A reload compiles CRS again in each new worker (Hyperscan: seconds of CPU):
            # longer than the harness's admin timeout on a loaded machine.
            with H.Client(self.proxy.admin_port, timeout=H.T(300)) as c:
                r = c.request("POST", "/reload", host="admin")
            self.assertEqual(r.status, 200, r.body)
            H.wait_for(lambda: self.get("/custom-block/x").status == 418, H.T(60),
                       what="the new generation serving")
        finally:
            stop.set()
            t.join(H.T(30))
        self.assertGreater(len(statuses), 0)
        for s in statuses:
            self.assertIn(s, (200, 403), statuses[-20:])
        # The same rules: the new generation's workers compiled nothing.
        H.wait_for(lambda: len(self.ready_lines()) >= 4, H.T(60), what="the new workers' lines")
        for line in self.ready_lines()[2:4]:
            self.assertIn("(0 compiled here, ", line)
        # the summary and the constructs not run: once per load (the refused one said none)
        self.assertEqual(len(self.log_lines("waf: SecLang rules: ")), 2)
        self.assertEqual(len(self.log_lines("SecLang constructs not run")), 2)
        # A changed rule file (a rule whose transformation chain no other rule uses): one
        # database compiled, by one worker; requests inspected meanwhile, old rules serving.
        with open(path, "w") as f:
            f.write(EXTRA + CHANGED)
        try:
            with H.Client(self.proxy.admin_port, timeout=H.T(300)) as c:
                r = c.request("POST", "/reload", host="admin")
            self.assertEqual(r.status, 200, r.body)
            H.wait_for(lambda: self.get("/fixed?zz=luaproxy-new-rule").status == 403, H.T(60),
                       what="the changed rules serving")
            H.wait_for(lambda: len(self.ready_lines()) >= 6, H.T(300), what="the new workers' lines")
            compiled = sorted(int(re.search(r"\((\d+) compiled here", l).group(1))
                              for l in self.ready_lines()[4:6])
            self.assertEqual(compiled, [0, 1], self.ready_lines()[4:6])
        finally:
            with open(path, "w") as f:
                f.write(EXTRA)


if __name__ == "__main__":
    H.main()
