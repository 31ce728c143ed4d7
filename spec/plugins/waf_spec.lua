local T = require "proxy.test"
local waf = require "waf"
local engine = require "luaproxy.waf.engine"
local transforms = require "luaproxy.waf.transforms"

local H = { Host = "shop.example.com", ["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64)" }
local function headers(extra)
  local h = {}
  for k, v in pairs(H) do h[k] = v end
  for k, v in pairs(extra or {}) do h[k] = v end
  return h
end
local function post(uri, ctype, body, extra)
  local h = headers(extra)
  h["Content-Type"], h["Content-Length"] = ctype, tostring(#body)
  return { method = "POST", uri = uri, headers = h, body = body }
end

-- Conf compiled once per settings: the default set takes a moment to compile.
local confs = {}
-- These specs are of the bundled Lua rules: crs = false (CRS is the default where it is
-- installed; spec/plugins/waf_crs_spec.lua covers it).
local function lua_rules(over)
  over = over or {}
  if over.crs == nil then over.crs = false end
  return over
end
local function conf(over)
  over = lua_rules(over)
  local key = proxy.json.encode(over)
  if not confs[key] then confs[key] = T.conf(waf, over) end
  return confs[key]
end
local function run(spec, over)
  local req = T.request(spec)
  local responded = T.phase(waf, "request", req, conf(over))
  return responded, req
end

local function tmpfile(text)
  local path = os.tmpname()
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
  return path
end

describe("waf plugin", function()
  before_each(function() T.reset() end)

  it("lets ordinary requests through, prose with apostrophes and quotes included", function()
    for _, spec in ipairs({
      { uri = "/search?q=%22red+shoes%22+or+boots&page=2", headers = headers() },
      { uri = "/", headers = headers({ Cookie = "session=" .. ("x"):rep(900) .. "; lang=en" }) },
      post("/reviews", "application/x-www-form-urlencoded",
        "name=O%27Brien&comment=It%27s+great%2C+I%27d+buy+it+again+--+really%21"),
      post("/graphql", "application/json",
        '{"query":"query($id: ID!) { product(id: $id) { name reviews(first: 5) { edges { node { text } } } } }","variables":{"id":"12"}}'),
    }) do
      local responded, req = run(spec)
      assert.is_false(responded, spec.uri)
      assert.is_nil(req.ctx.waf)
    end
  end)

  it("blocks an attack, logs rule id, variable and excerpt, and puts the decision in req.ctx.waf", function()
    local res = T.run(waf, lua_rules(), { uri = "/products?id=1%27+OR+%271%27%3D%271", headers = headers() })
    assert.is_true(res.responded)
    assert.equal(403, res.status)
    assert.equal("request refused by the web application firewall\n", res.body)
    local w = res.ctx.waf
    assert.equal("block", w.action)
    assert.equal(5, w.score)
    assert.equal(1702, w.matches[1].id)
    assert.equal("query_args:id", w.matches[1].var)
    assert.equal("1' or '1'='1", w.matches[1].excerpt)
    local line = T.log_lines("warn")[1]
    assert.matches("waf: blocked GET /products (score 5): 1702 query_args:id \"1' or '1'='1\"", line, 1, true)
  end)

  it("escapes the client's variable names in its log line (a newline would forge a line)", function()
    T.reset()
    local res = T.run(waf, lua_rules(), { uri = "/p?a%0AFORGED%20LINE%22=1%27+OR+%271%27%3D%271",
                                          headers = headers() })
    assert.equal(403, res.status)
    local line = T.log_lines("warn")[1]
    assert.is_nil(line:find("\n", 1, true))
    assert.matches('query_args:a\\x0aFORGED LINE\\" "', line, 1, true)
  end)

  it("inspects JSON leaves, form fields, multipart fields and file names, cookies and headers", function()
    local cases = {
      { post("/api", "application/json", '{"a":{"b":["x","<script>alert(1)</script>"]}}'), "body_args:a.b.2", 1801 },
      { post("/f", "application/x-www-form-urlencoded", "u=%3Bcat+%2Fetc%2Fpasswd"), "body_args:u", 1202 },
      { post("/up", "multipart/form-data; boundary=XyZ",
          "--XyZ\r\nContent-Disposition: form-data; name=\"f\"; filename=\"x.php\"\r\n\r\nGIF\r\n--XyZ--\r\n"),
        "files:f", 1505 },
      { { uri = "/", headers = headers({ Cookie = "a=1; p=..%2F..%2Fetc%2Fpasswd" }) }, "cookies:p", 1201 },
      { { uri = "/", headers = headers({ ["X-Api-Version"] = "${jndi:ldap://e.example/a}" }) }, "headers:x-api-version", 1602 },
    }
    for _, c in ipairs(cases) do
      local responded, req = run(c[1])
      assert.is_true(responded, c[2])
      local found
      for _, m in ipairs(req.ctx.waf.matches) do
        if m.id == c[3] then found = m end
      end
      assert.is_truthy(found, c[2] .. " " .. c[3])
      assert.equal(c[2], found.var)
      T.reset()
    end
  end)

  it("sees a GraphQL document's string values, not its punctuation", function()
    local body = '{"query":"mutation { add(text: \\"1 union select password from users\\") { id } }"}'
    local responded, req = run(post("/graphql", "application/json", body))
    assert.is_true(responded)
    assert.equal("body_args:query.1", req.ctx.waf.matches[1].var)
  end)

  it("only logs in detect mode", function()
    local responded, req = run({ uri = "/?x=%3Cscript%3Ealert(1)%3C/script%3E", headers = headers() },
      { mode = "detect" })
    assert.is_false(responded)
    assert.equal("detect", req.ctx.waf.action)
    assert.matches("waf: would block GET / (score 10, detect mode)", T.log_lines("warn")[1], 1, true)
  end)

  it("scores: one notice-level rule stays under the threshold, a deny rule blocks at once", function()
    local rules = {
      { id = 9001, msg = "odd header", severity = "notice", targets = { "headers:x-odd" }, equals = "1" },
      { id = 9002, msg = "forbidden path", action = "deny", status = 451, targets = { "path" },
        begins_with = "/forbidden" },
    }
    local responded, req = run({ uri = "/", headers = headers({ ["X-Odd"] = "1" }) },
      { default_rules = false, rules = rules })
    assert.is_false(responded)
    assert.equal("pass", req.ctx.waf.action)
    assert.equal(2, req.ctx.waf.score)
    T.reset()
    local res = T.run(waf, lua_rules({ default_rules = false, rules = rules }), { uri = "/forbidden/x", headers = headers() })
    assert.equal(451, res.status)
  end)

  it("decides an error in the Lua rules as over_budget does (refused by default), logged and counted", function()
    -- No rule raises by design: a bug is made here in a compiled rule (its regex turned
    -- into a number), and PCRE2 then raises inside engine.run as any bug would
    local function broken(over)
      local o = lua_rules({ default_rules = false, hyperscan = false, rules = {
        { id = 9301, msg = "broken " .. (over or "default"), targets = { "args" }, rx = "zzz" } } })
      o.over_budget = over
      local c = T.conf(waf, o)
      c.cs.by_id[9301].conds[1].arg = 42
      return o
    end
    local res = T.run(waf, broken(), { uri = "/p?a=1", headers = headers() })
    assert.equal(403, res.status) -- was a 500
    assert.equal("block", res.ctx.waf.action)
    local line
    for _, l in ipairs(res.logs) do
      if l.message:find("Lua rule", 1, true) and l.level == "err" then line = l.message end
    end
    assert.is_not_nil(line)
    assert.matches("(rule 9301) failed (over_budget = \"block\"): ", line, 1, true)
    assert.matches("expected a string, got number", line, 1, true)
    assert.matches("stack traceback:", line, 1, true)
    assert.matches("luaproxy/waf/engine.lua:%d+", line)
    assert.equal(1, T.metric("waf_rule_errors_total", { rules = "lua" }))
    T.reset()
    res = T.run(waf, broken("pass"), { uri = "/p?a=1", headers = headers() })
    assert.equal(200, res.status)
    assert.equal("pass", res.ctx.waf.action)
    assert.equal(1, T.metric("waf_rule_errors_total", { rules = "lua" }))
  end)

  it("keeps what the Lua rules found before one raised: an earned deny refuses whatever over_budget says", function()
    local o = lua_rules({ default_rules = false, hyperscan = false, rules = {
      { id = 9300, msg = "attack word", action = "deny", targets = { "args" }, rx = "attack" },
      { id = 9301, msg = "broken after", targets = { "args" }, rx = "zzz" } } })
    o.over_budget = "pass"
    local c = T.conf(waf, o)
    c.cs.by_id[9301].conds[1].arg = 42
    local res = T.run(waf, o, { uri = "/p?a=attack", headers = headers() })
    assert.equal(403, res.status) -- the error passed the request, 9300's deny lost, before
    local ids = {}
    for _, m in ipairs(res.ctx.waf.matches) do ids[#ids + 1] = m.id end
    assert.same({ 9300, 0 }, ids)
    assert.equal(1, T.metric("waf_rule_errors_total", { rules = "lua" }))
  end)

  it("runs chains, counts, negation and exclusions by id, tag and target", function()
    local rules = {
      { id = 9101, msg = "admin from outside", targets = { "path" }, begins_with = "/admin",
        chain = { { targets = { "headers:x-internal" }, equals = "yes", negate = true } } },
      { id = 9102, msg = "too many args", targets = { "&args" }, gt = 3 },
    }
    local over = { default_rules = false, rules = rules }
    assert.is_true((run({ uri = "/admin/x", headers = headers() }, over)))
    assert.is_false((run({ uri = "/admin/x", headers = headers({ ["X-Internal"] = "yes" }) }, over)))
    assert.is_true((run({ uri = "/?a=1&b=2&c=3&d=4", headers = headers() }, over)))
    assert.is_false((run({ uri = "/?a=1&b=2&c=3", headers = headers() }, over)))
    -- Exclusions: a target out of the SQLi rules, then a rule out by id.
    local attack = { uri = "/login?password=x%27+or+%271%27%3D%271&user=bob", headers = headers() }
    assert.is_true((run(attack)))
    assert.is_false((run(attack, { exclusions = { { tags = { "attack-sqli" }, targets = { "args:password" } } } })))
    assert.is_false((run(attack, { exclusions = { { ids = { 1702, 1707 } } } })))
    assert.is_false((run(attack, { exclusions = { { id_ranges = { { 1700, 1799 } } } } })))
  end)

  it("reads the body up to body_limit, and refuses or passes a larger one as configured", function()
    local big = "a=" .. ("x"):rep(300) .. "%3Cscript%3E"
    local responded, req = run(post("/f", "application/x-www-form-urlencoded", big), { body_limit = 100 })
    assert.is_true(responded)
    assert.equal("refuse", req.ctx.waf.action)
    local res = T.run(waf, lua_rules({ body_limit = 100 }), post("/f", "application/x-www-form-urlencoded", big))
    assert.equal(413, res.status)
    T.reset()
    responded, req = run(post("/f", "application/x-www-form-urlencoded", big),
      { body_limit = 100, body_over_limit = "pass" })
    assert.is_false(responded)
    assert.equal("uninspected", req.ctx.waf.body)
    -- detect and learn refuse nothing, not even an over-limit body (logged as would refuse)
    for _, mode in ipairs({ "detect", "learn" }) do
      T.reset()
      responded, req = run(post("/f", "application/x-www-form-urlencoded", big), { body_limit = 100, mode = mode })
      assert.is_false(responded)
      assert.equal("uninspected", req.ctx.waf.body)
    end
  end)

  it("reads a multipart upload up to body_limit_files, its fields still held to body_limit", function()
    local function form(parts)
      local out = {}
      for _, p in ipairs(parts) do
        out[#out + 1] = "--XyZb\r\nContent-Disposition: form-data; name=\"" .. p[1] .. "\""
          .. (p[3] and "; filename=\"" .. p[3] .. "\"\r\nContent-Type: image/jpeg" or "")
          .. "\r\n\r\n" .. p[2] .. "\r\n"
      end
      return table.concat(out) .. "--XyZb--\r\n"
    end
    local ct = "multipart/form-data; boundary=XyZb"
    -- a file of 5000 bytes (one that looks like an attack: its content is not inspected)
    local file = ("<script>alert(1)</script>"):rep(200)
    local ok_body = form({ { "title", "holiday" }, { "file", file, "beach.jpg" } })
    local responded, req = run(post("/up", ct, ok_body), { body_limit = 400 })
    assert.is_false(responded)
    assert.is_nil((req.ctx.waf or {}).body) -- (inspected: not "uninspected")
    -- the fields still are: an attack beside the file
    local bad = form({ { "title", "<script>alert(1)</script>" }, { "file", ("x"):rep(5000), "beach.jpg" } })
    responded, req = run(post("/up", ct, bad), { body_limit = 400 })
    assert.is_true(responded)
    assert.equal("block", req.ctx.waf.action)
    assert.not_equal("body over limit", req.ctx.waf.reason)
    -- and the file's name
    responded = run(post("/up", ct, form({ { "file", ("x"):rep(5000), "<script>alert(1)</script>.jpg" } })),
      { body_limit = 400 })
    assert.is_true(responded)
    -- fields over body_limit without the file: as any body over it (body_over_limit)
    local long = form({ { "title", ("a"):rep(500) }, { "file", ("x"):rep(5000), "beach.jpg" } })
    responded, req = run(post("/up", ct, long), { body_limit = 400 })
    assert.is_true(responded)
    assert.equal("body over limit", req.ctx.waf.reason)
    responded, req = run(post("/up", ct, long), { body_limit = 400, body_over_limit = "pass" })
    assert.is_false(responded)
    assert.equal("uninspected", req.ctx.waf.body)
    -- over body_limit_files; a body that does not follow its boundary; body_limit_files off;
    -- a body that is not multipart: each over body_limit
    for _, c in ipairs({
      { ct, ok_body, { body_limit = 400, body_limit_files = 4000 } },
      { ct, ok_body:gsub("%-%-XyZb%-%-", "--Other--"), { body_limit = 400 } },
      { ct, ok_body, { body_limit = 400, body_limit_files = 0 } },
      { "text/plain", ok_body, { body_limit = 400 } },
    }) do
      responded, req = run(post("/up", c[1], c[2]), c[3])
      assert.is_true(responded)
      assert.equal("body over limit", req.ctx.waf.reason)
    end
    -- what the rules saw of ok_body: it without the file's bytes, the rest byte for byte
    local rest, cut = require("luaproxy.waf.vars").without_files(ok_body, "XyZb", 400)
    local at = ok_body:find(file, 1, true)
    assert.equal(ok_body:sub(1, at - 1) .. ok_body:sub(at + #file), rest)
    assert.equal(#file, cut)
    assert.is_false(require("luaproxy.waf.vars").without_files(ok_body, "XyZb", #rest - 1))
    -- ModSecurity's default: a 500 KB upload passes
    local big = form({ { "title", "holiday" }, { "file", ("\255\216"):rep(256000), "big.jpg" } })
    responded = run(post("/up", ct, big))
    assert.is_false(responded)
  end)

  it("takes no field for a file, and refuses a multipart body it cannot split as the application does", function()
    local ct = "multipart/form-data; boundary=XyZb"
    local file = "--XyZb\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\n\r\n"
      .. ("x"):rep(5000) .. "\r\n--XyZb--\r\n"
    local function body(heads) return "--XyZb\r\n" .. heads .. "\r\n\r\n<script>alert(1)</script>\r\n" .. file end
    for _, heads in ipairs({
      'Content-Disposition: form-data; name="title"; x="; filename=y.jpg "',
      'X-Content-Disposition: form-data; filename="a.jpg"\r\nContent-Disposition: form-data; name="title"',
    }) do
      -- over body_limit: the field is not cut out with the file's content, its attack seen
      for _, lim in ipairs({ 400, 131072 }) do
        local responded, req = run(post("/up", ct, body(heads)), { body_limit = lim })
        assert.is_true(responded)
        assert.equal("block", req.ctx.waf.action)
        assert.not_equal(1009, req.ctx.waf.matches[1].id)
      end
    end
    -- two Content-Disposition lines, two boundary parameters, a delimiter after a bare LF: 1009
    local two = body('Content-Disposition: form-data; filename="a"\r\nContent-Disposition: form-data; name="title"')
    local lf = file:gsub("\r\n%-%-XyZb%-%-", "\n--XyZb\nContent-Disposition: form-data; name=t\n\nhi\r\n--XyZb--")
    for _, c in ipairs({ { ct, two }, { ct .. "; boundary=XyZb", file }, { ct, lf } }) do
      local responded, req = run(post("/up", c[1], c[2]))
      assert.is_true(responded)
      assert.equal(1009, req.ctx.waf.matches[1].id)
    end
    -- FILES_COMBINED_SIZE counts a file's content cut out of a body over body_limit
    local rule = tmpfile('SecRule FILES_COMBINED_SIZE "@gt 4999" "id:5,phase:2,deny,status:403,log"\n')
    for _, lim in ipairs({ 400, 131072 }) do
      local responded, req = run(post("/up", ct, file),
        { crs = false, default_rules = false, crs_files = { rule }, body_limit = lim })
      assert.is_true(responded)
      assert.equal(5, req.ctx.waf.matches[1].id)
    end
    os.remove(rule)
  end)

  it("does not read the body when no rule needs it", function()
    local rules = { { id = 9201, msg = "m", targets = { "method" }, equals = "TRACE" } }
    local req = T.request(post("/f", "application/json", "{}"))
    req.body = function() error("body read") end
    assert.is_false(T.phase(waf, "request", req, conf({ default_rules = false, rules = rules })))
  end)

  it("answers clearly on invalid UTF-8, bad percent-encoding and broken bodies", function()
    local responded, req = run({ uri = "/s?q=%E9t%E9+%ZZ", headers = headers() })
    assert.is_true(responded)
    assert.equal(1006, req.ctx.waf.matches[1].id)
    assert.equal("query_string", req.ctx.waf.matches[1].var)
    T.reset()
    responded = run({ uri = "/s?q=caf%C3%A9+%FF%FE", headers = headers() })
    assert.is_false(responded) -- invalid UTF-8 alone is paranoia 2
    responded, req = run({ uri = "/s?q=%FF%FE%C0", headers = headers() }, { paranoia = 2 })
    assert.is_false(responded) -- a warning (3) is under the threshold (5)
    assert.equal(1010, req.ctx.waf.matches[1].id)
    T.reset()
    responded, req = run(post("/api", "application/json", '{"a": '))
    assert.is_true(responded)
    assert.equal(1009, req.ctx.waf.matches[1].id)
    assert.matches("\\x", engine.sanitize("\0\255"), 1, true)
  end)

  it("counts a regex that gives up (PCRE2 match limit) as configured, never an error", function()
    local rules = { { id = 9301, msg = "explodes", targets = { "args" }, rx = [[^(\w+\s?)*$\1]] } }
    local v = ("a"):rep(4000) .. "!"
    local saved = proxy.config.lua
    proxy.config.lua = { regex_match_limit = 10000 }
    require("luaproxy.re")._reset()
    local ok, err = pcall(function()
      local responded, req = run({ uri = "/?x=" .. v, headers = headers() },
        { default_rules = false, rules = rules, inbound_threshold = 5 })
      assert.is_true(responded)
      assert.matches("match limit", req.ctx.waf.matches[1].regex_error, 1, true)
      T.reset()
      responded, req = run({ uri = "/?x=" .. v, headers = headers() },
        { default_rules = false, rules = rules, regex_error = "ignore" })
      assert.is_false(responded)
      assert.is_true(req.ctx.waf.matches[1].ignored)
    end)
    proxy.config.lua = saved
    require("luaproxy.re")._reset()
    assert(ok, err)
  end)

  it("refuses malformed rules and files with their place", function()
    local function fails(over, msg)
      assert.error_matches(function() T.conf(waf, lua_rules(over)) end, msg, 1, true)
    end
    fails({ rules = { { id = 1, msg = "x", targets = { "args" } } } }, "rules[1] (rule 1): no operator")
    fails({ rules = { { id = 2, msg = "x", targets = { "argz" }, contains = "a" } } },
      'unknown collection "argz"')
    fails({ rules = { { id = 3, msg = "x", targets = { "args" }, rx = "(a" } } }, "rules[1] (rule 3): rx: ")
    fails({ rules = { { id = 4, msg = "x", targets = { "args" }, contains = "a", transforms = { "rot13" } } } },
      'unknown transform "rot13"')
    fails({ rules = { { id = 1701, msg = "dup", targets = { "args" }, contains = "a" } } },
      "duplicate rule id 1701")
    local bad = tmpfile('rule { id = 7, msg = "ok", targets = { "args" }, contains = "x" }\n\n'
      .. 'rule { id = 8, msg = "bad", targets = { "args" }, contains = "x", severity = "huge" }\n')
    fails({ default_rules = false, rule_files = { bad } }, bad .. ":3 (rule 8): severity")
    local syntax = tmpfile("rule { id = 9,\n")
    fails({ default_rules = false, rule_files = { syntax } }, "unexpected symbol near '<eof>'")
    local _, err = engine.load_file(syntax)
    assert.equal("bad rule file: " .. syntax .. ":2: unexpected symbol near '<eof>'", err)
    local empty = tmpfile("\n")
    fails({ default_rules = false, rule_files = { empty } }, "empty rule file")
    fails({ default_rules = false, rule_files = { "/nonexistent/rules.lua" } }, "cannot read rule file")
    os.remove(bad); os.remove(syntax); os.remove(empty)
  end)

  it("runs every pattern without Hyperscan too, with the same answers", function()
    local attack = { uri = "/?q=%3Csvg+onload%3Dalert(1)%3E", headers = headers() }
    assert.is_true((run(attack, { hyperscan = false })))
    assert.is_false((run({ uri = "/?q=shoes", headers = headers() }, { hyperscan = false })))
  end)

  describe("transforms", function()
    it("decode tolerantly and never raise on bad input", function()
      assert.equal("a'b%zz%2 c<", transforms.urldecode("a%27b%zz%2+c%u003c"))
      assert.equal("<x>&foo; \239\191\189", transforms.html_decode("&lt;x&#x3e;&foo; &#99999999999"))
      assert.equal("/etc/passwd", transforms.normalize_path("/a/b/../../../etc/./passwd"))
      assert.equal("a b", transforms.compress_ws("a \t\n b"))
      assert.equal("<script>alert(1)</script>", transforms.base64_decode("PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg"))
      assert.equal("cat /etc/passwd;id", transforms.cmdline("c\\a\"t /et'c/pa^sswd\nid"))
      for _, f in ipairs(transforms.names) do
        for _, s in ipairs({ "", "%", "%u", "&#", "\255\254\0", ("%"):rep(1000), "==", "\\..\\" }) do
          assert.is_string(transforms[f](s))
        end
      end
    end)
  end)

  -- The corpora (tests/waf/*.jsonl, built by tests/waf/make_corpus.py): detection and false
  -- positives of the default rule set at paranoia 1.
  it("detects the attack corpus and passes the ordinary corpus", function()
    local function rate(file)
      local n, blocked = 0, 0
      for line in io.lines(file) do
        local r = proxy.json.decode(line)
        if run({ method = r.method, uri = r.uri, headers = r.headers, body = r.body }) then
          blocked = blocked + 1
        end
        n = n + 1
        T.reset()
      end
      return blocked, n
    end
    local ab, an = rate("tests/waf/attacks.jsonl")
    local ob, on = rate("tests/waf/ordinary.jsonl")
    print(string.format("\nwaf default rules, paranoia 1: detection %d/%d = %.1f%%, false positives %d/%d = %.2f%%",
      ab, an, 100 * ab / an, ob, on, 100 * ob / on))
    assert.is_true(an >= 300 and on >= 280)
    assert.is_true(ab / an >= 0.95)
    assert.is_true(ob / on <= 0.01)
  end)
end)
