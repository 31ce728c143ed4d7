-- SecLang load strictness (issue #20): a name that is no ModSecurity SecLang at all refuses
-- the rule file with file:line (and the closest real name); a real ModSecurity construct
-- the engine does not run is listed, or refused in the operator's own files.
local seclang = require "luaproxy.waf.seclang"

local function tmpfile(text)
  local path = os.tmpname() .. ".conf"
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
  return path
end

local function load_err(text)
  local p = tmpfile(text)
  local set, err = seclang.load({ p })
  assert.is_nil(set, "loaded: " .. text)
  return err, p
end

describe("a name that is not ModSecurity's", function()
  it("refuses the file with file:line and the closest real name", function()
    local cases = {
      { "SecRule ARGS \"@rx a\" \"id:1,phase:2,pass\"\nSecFooBar On\n", ":2: unknown directive SecFooBar$" },
      { "SecRuleEngin On\n", ":1: unknown directive SecRuleEngin %(did you mean SecRuleEngine%?%)" },
      { 'SecRule REQUEST_HEADRES "@rx a" "id:1,phase:2,pass"\n',
        ":1: unknown variable REQUEST_HEADRES %(did you mean REQUEST_HEADERS%?%)" },
      { 'SecRule ARGS|!REQUEST_COOKIE:a "@rx a" "id:1,phase:2,pass"\n',
        ":1: unknown variable REQUEST_COOKIE %(did you mean REQUEST_COOKIES%?%)" },
      { 'SecRule ARGS "@rxx a" "id:1,phase:2,pass"\n', ":1: unknown operator @rxx %(did you mean @rx%?%)" },
      { 'SecRule ARGS "@rx a" "id:1,phase:2,pass,t:none,t:lowercasse"\n',
        ":1: unknown transformation t:lowercasse %(did you mean t:lowercase%?%)" },
      { 'SecRule ARGS "@rx a" "id:1,phase:2,pas"\n', ":1: unknown action pas %(did you mean pass%?%)" },
      { 'SecRule ARGS "@rx a" "id:1,phase:2,pass,skipAftr:END"\nSecMarker END\n',
        ":1: unknown action skipaftr %(did you mean skipAfter%?%)" },
      { 'SecAction "id:1,phase:1,pass,ctl:ruleRemoveByIdd=3"\n',
        ":1: unknown ctl option ctl:ruleRemoveByIdd %(did you mean ctl:ruleRemoveById%?%)" },
      { 'SecDefaultAction "phase:2,log,auditlog,pas"\n', ":1: unknown action pas %(did you mean pass%?%)" },
      -- a chained link's typo too
      { 'SecRule ARGS "@rx a" "id:1,phase:2,pass,chain"\n  SecRule ARGS_NAMEZ "@rx b" "t:none"\n',
        ":2: unknown variable ARGS_NAMEZ %(did you mean ARGS_NAMES%?%)" },
    }
    for _, c in ipairs(cases) do
      local err, p = load_err(c[1])
      assert.matches("^" .. p:gsub("%p", "%%%0") .. c[2], err)
    end
  end)

  it("checks the collections named in macros as variables are checked", function()
    local cases = {
      { "SecRule ARGS \"@rx a\" \"id:1,phase:2,pass,msg:'host %{REQUEST_HEADRES.host}'\"\n",
        ":1: unknown variable REQUEST_HEADRES in a macro %(did you mean REQUEST_HEADERS%?%)" },
      { "SecRule ARGS \"@rx a\" \"id:1,phase:2,pass,setvar:'tx.a_%{MATCHED_VAR_NAM}=+%{tx.critical_anomaly_score}'\"\n",
        ":1: unknown variable MATCHED_VAR_NAM in a macro %(did you mean MATCHED_VAR_NAME%?%)" },
      { "SecRule ARGS \"@rx a\" \"id:1,phase:2,pass,setvar:'tx.a=%{TX.b}%{REMOTE_ADR}'\"\n",
        ":1: unknown variable REMOTE_ADR in a macro %(did you mean REMOTE_ADDR%?%)" },
      { "SecRule ARGS \"@ge %{tx.limt}\" \"id:1,phase:2,pass,logdata:'%{MATCHED_VARS}'\"\n", nil },
      { "SecRule ARGS \"@streq %{TXX.a}\" \"id:1,phase:2,pass\"\n",
        ":1: unknown variable TXX in a macro %(did you mean TX%?%)" },
    }
    for _, c in ipairs(cases) do
      local p = tmpfile(c[1])
      local set, err = seclang.load({ p })
      if c[2] then
        assert.is_nil(set, c[1])
        assert.matches("^" .. p:gsub("%p", "%%%0") .. c[2], err)
      else
        assert.is_not_nil(set, err)
      end
    end
  end)

  it("names the physical line of a bad name in a continued (backslash-newline) rule", function()
    local cases = {
      { '# x\nSecRule ARGS "@rx a" \\\n    "id:1,\\\n    phase:2,\\\n    t:lowercasse,\\\n    pass"\n',
        ":5: unknown transformation t:lowercasse" },
      { 'SecRule \\\n  ARGS|ARGS_NAMEZ "@rx a" \\\n  "id:1,phase:2,pass"\n', ":2: unknown variable ARGS_NAMEZ" },
      { 'SecRule ARGS "@rx a" \\\n  "id:1,phase:2,\\\n  pass,\\\n  msg:\'%{REQUEST_HEADRES.host}\'"\n',
        ":4: unknown variable REQUEST_HEADRES in a macro" },
      { 'SecRule ARGS "@rx a" "id:1,phase:2,pass,chain"\n  SecRule ARGS \\\n  "@rxx b" "t:none"\n',
        ":3: unknown operator @rxx" },
    }
    for _, c in ipairs(cases) do
      local err, p = load_err(c[1])
      assert.matches("^" .. p:gsub("%p", "%%%0") .. c[2], err)
    end
  end)

  it("reads directive names in any case, as ModSecurity does", function()
    local set = assert(seclang.load({ tmpfile('secrule ARGS "@rx a" "id:1,phase:2,pass"\nSECMARKER END\n') }))
    assert.are.equal(2, #set.items)
    assert.are.same({}, set.unsupported)
  end)

  it("offers no guess when nothing is close", function()
    local err = load_err('SecRule ARGS "@rx a" "id:1,phase:2,pass,t:frobnicateall"\n')
    assert.matches("unknown transformation t:frobnicateall$", err)
  end)
end)

describe("a real ModSecurity construct the engine does not run", function()
  it("is listed with file:line, not refused by the reader", function()
    local p = tmpfile('SecRule ARGS "@verifyCC \\d{13,16}" "id:1,phase:2,pass,t:md5,setenv:a=b"\n'
      .. 'SecRule XML:/a/b "@rx a" "id:2,phase:2,pass"\n'
      .. "SecGuardianLog /var/log/g\n"
      .. 'SecRule SERVER_NAME "@rx a" "id:3,phase:2,pass,ctl:hashEngine=On"\n')
    local set = assert(seclang.load({ p }))
    assert.are.same({
      p .. ":1: operator @verifyCC", p .. ":1: transformation t:md5", p .. ":1: action setenv",
      p .. ":2: variable XML:/a/b (XPath: only /* and //@*)",
      p .. ":3: directive SecGuardianLog",
      p .. ":4: variable SERVER_NAME (not run here)", p .. ":4: ctl:hashEngine",
    }, set.unsupported)
  end)

  it("leaves Debian's CRS 3.3.4 loading: every name in it is ModSecurity's (920480's macro @rx runs now: 83 not run)", function()
    local set, err = seclang.load({ "/usr/share/modsecurity-crs" })
    assert.is_nil(err)
    assert.are.equal(83, #set.unsupported)
  end)
end)

describe("unsupported = \"refuse_own\"", function()
  local T = require "proxy.test"
  local waf = require "waf"
  before_each(function() T.reset() end)

  it("refuses what the operator's crs_files do not run, lists what crs does not run", function()
    local crs = tmpfile('SecRule XML:/a "@rx a" "id:1,phase:2,pass"\n')
    local mine = tmpfile('SecRule ARGS "@rx b" "id:2,phase:2,deny"\n')
    -- crs's own not-run constructs: listed, the config loads
    local c = T.conf(waf, { crs = crs, crs_files = { mine }, unsupported = "refuse_own", hyperscan = false })
    assert.are.equal(1, #c.sec.unsupported)
    -- one in the operator's file: refused, with its place
    local bad = tmpfile('SecRule ARGS "@rx b" "id:2,phase:2,deny"\nSecRule ARGS "@verifyCC \\d+" "id:3,phase:2,deny"\n')
    local ok, err = pcall(T.conf, waf, { crs = crs, crs_files = { bad }, unsupported = "refuse_own",
                                         hyperscan = false })
    assert.is_false(ok)
    assert.matches('1 SecLang constructs the engine does not run (unsupported = "refuse_own"): '
      .. bad .. ":2: operator @verifyCC", tostring(err), 1, true)
    -- "log" lists both
    c = T.conf(waf, { crs = crs, crs_files = { bad }, hyperscan = false })
    assert.are.equal(2, #c.sec.unsupported)
  end)

  it("takes Debian's CRS with a strict own file", function()
    local mine = tmpfile('SecRule REQUEST_FILENAME "@beginsWith /x" "id:10001,phase:1,deny,status:418"\n')
    local c = T.conf(waf, { crs = "/usr/share/modsecurity-crs", crs_files = { mine },
                            unsupported = "refuse_own", hyperscan = false })
    assert.are.equal(83, #c.sec.unsupported)
    local ok = pcall(T.conf, waf, { crs = "/usr/share/modsecurity-crs", crs_files = { mine },
                                    unsupported = "refuse", hyperscan = false })
    assert.is_false(ok)
  end)
end)

describe("what a config load says", function()
  local T = require "proxy.test"
  local waf = require "waf"
  before_each(function() T.reset() end)

  local RULES = 'SecRule ARGS "@rx evil" "id:20,phase:2,deny,tag:attack-x,tag:paranoia-level/2"\n'
    .. 'SecRule ARGS "@rx worse" "id:21,phase:2,deny"\nSecRuleRemoveById 21\n'
    .. 'SecRule XML:/a "@rx a" "id:30,phase:2,pass"\nSecRule XML:/b "@rx b" "id:31,phase:2,pass"\n'

  it("warns of an exclusion naming an id, a range or a tag no rule has, with its place", function()
    local p = tmpfile(RULES)
    T.conf(waf, { crs = p, hyperscan = false, exclusions = {
      -- 20 (above paranoia 1), 21 (removed by SecRuleRemoveById), 1009 (a Lua rule) exist
      { ids = { 20, 999999999 }, targets = { "ARGS:q" } },
      { ids = { 21, 1009 }, id_ranges = { { 100, 199 }, { 1, 25 } } },
      { tags = { "attack-x", "atack-x" } },
    } }, "routes[2].plugins[1](waf)")
    local excl = {}
    for _, w in ipairs(T.config_warnings) do if w:find("exclusions", 1, true) then excl[#excl + 1] = w end end
    assert.are.same({
      "routes[2].plugins[1](waf).exclusions[1].ids[2]: no rule has id 999999999: it excludes nothing",
      "routes[2].plugins[1](waf).exclusions[2].id_ranges[1]: no rule has an id in 100..199: it excludes nothing",
      'routes[2].plugins[1](waf).exclusions[3].tags[2]: no rule has the tag "atack-x": it excludes nothing',
    }, excl)
    -- the Lua rules alone
    T.reset()
    T.conf(waf, { crs = false, exclusions = { { ids = { 1009, 7 } } } }, "routes[1].plugins[1](waf)")
    assert.are.same({ "routes[1].plugins[1](waf).exclusions[1].ids[2]: no rule has id 7: it excludes nothing" },
      T.config_warnings)
  end)

  it("says what the SecLang set does not run in one grouped line, once for routes sharing it", function()
    local p = tmpfile(RULES)
    T.conf(waf, { crs = p, hyperscan = false }, "routes[1].plugins[1](waf)")
    -- the engine logs each distinct text once per load (runtime.lua's warn)
    local lines = {}
    for _, w in ipairs(T.config_warnings) do if w:find("not run", 1, true) then lines[#lines + 1] = w end end
    assert.are.same({ 'waf: 2 SecLang constructs not run (unsupported = "log"): 1 x variable XML:/a (XPath: '
      .. "only /* and //@*) (first at " .. p .. ":4); 1 x variable XML:/b (XPath: only /* and //@*) (first at "
      .. p .. ":5)" }, lines)
  end)

  it("logs the set's summary once the databases are there, with their patterns counted", function()
    local c = T.conf(waf, { crs = tmpfile(RULES .. 'SecRule ARGS "@rx ab+c" "id:40,phase:2,deny"\n'
      .. 'SecRule REQUEST_HEADERS "@rx x[yz]" "id:41,phase:2,deny,t:lowercase"\n'), default_rules = false })
    T.phase(waf, "init_worker", nil, c)
    for _ = 1, 200 do
      if c.sec.ready and not c.sec.pending then break end
      T.advance(0.05)
    end
    local summary
    for _, l in ipairs(T.log_lines("info")) do if l:find("SecLang rules:", 1, true) then summary = l end end
    assert.truthy(summary, "no summary line")
    -- 20 is above paranoia 1, 30 and 31 read nothing (XPaths not run): 40's and 41's patterns
    assert.matches("; 2 Hyperscan patterns, 0 PCRE2%-only$", summary)
    assert.are.equal(2, c.sec.hs_patterns)
  end)
end)

describe("the operator's SecLang without CRS, and SecRuleEngine", function()
  local T = require "proxy.test"
  local waf = require "waf"
  before_each(function() T.reset() end)

  local function get(c, uri)
    local req = T.request({ uri = uri, headers = { Host = "x", ["User-Agent"] = "t", Accept = "*/*" } })
    return T.phase(waf, "request", req, c), req
  end

  it("reads crs_files with crs = false: their typos refuse the config, their rules run", function()
    local bad = tmpfile('SecRule ARGS "@rxx foo" "id:100001,phase:2,deny"\n')
    local ok, err = pcall(T.conf, waf, { crs = false, crs_files = { bad }, hyperscan = false })
    assert.is_false(ok)
    assert.matches(bad .. ":1: unknown operator @rxx", tostring(err), 1, true)
    local good = tmpfile('SecRule ARGS "@rx zzattack" "id:100001,phase:2,deny,status:403"\n')
    local c = T.conf(waf, { crs = false, crs_files = { good }, hyperscan = false })
    assert.is_true((get(c, "/?q=zzattack")))
    assert.is_false((get(c, "/?q=fine")))
  end)

  it("warns at load, with file:line, of a lone CRS rule file (no setup 901, no evaluation 949)", function()
    local dir = "/usr/share/modsecurity-crs/rules/"
    local sqli = dir .. "REQUEST-942-APPLICATION-ATTACK-SQLI.conf"
    local function lone(files)
      local c = T.conf(waf, { crs = false, crs_files = files, hyperscan = false, default_rules = false })
      for _, w in ipairs(T.config_warnings) do if w:find("without CRS's", 1, true) then return w, c end end
      return nil, c
    end
    local w, c = lone({ sqli })
    assert.is_not_nil(w)
    assert.matches("^waf: " .. sqli:gsub("%p", "%%%0") .. ":%d+: CRS rule 942%d+ without CRS's setup %(901%) and "
      .. "evaluation %(949%) rules: its rules score 0 and refuse nothing", w)
    -- the rule named is the file's first that scores (942100, @detectSQLi), not its first id
    -- (942011, a paranoia-level gate that says nothing of scoring)
    local line = w:match("%.conf:(%d+): CRS rule 942100 without")
    assert.is_not_nil(line, w)
    local n = 0
    for l in io.lines(sqli) do
      n = n + 1
      if n == tonumber(line) then assert.matches("^SecRule .*\"@detectSQLi\"", l) end
    end
    -- what it warns of: an injection scores nothing, refuses nothing
    assert.is_false((get(c, "/?id=1%27%20UNION%20SELECT%20password%20FROM%20users--")))
    T.reset()
    w = lone({ dir .. "REQUEST-901-INITIALIZATION.conf", sqli })
    assert.matches("without CRS's evaluation rules (949: the refusal at the threshold)", w, 1, true)
    T.reset()
    -- the three together refuse it, and say nothing; nor does an operator's own rule file
    w, c = lone({ dir .. "REQUEST-901-INITIALIZATION.conf", sqli, dir .. "REQUEST-949-BLOCKING-EVALUATION.conf" })
    assert.is_nil(w)
    assert.is_true((get(c, "/?id=1%27%20UNION%20SELECT%20password%20FROM%20users--")))
    T.reset()
    assert.is_nil((lone({ tmpfile('SecRule ARGS "@rx zzattack" "id:100001,phase:2,deny,status:403"\n') })))
  end)

  it("takes SecRuleEngine DetectionOnly as detect mode and Off as no SecLang rules, and says so", function()
    local rule = 'SecRule ARGS "@rx zzattack" "id:100001,phase:2,deny,status:403"\n'
    local c = T.conf(waf, { crs = false, crs_files = { tmpfile("SecRuleEngine DetectionOnly\n" .. rule) },
                            hyperscan = false }, "routes[1].plugins[1](waf)")
    local responded, req = get(c, "/?q=zzattack")
    assert.is_false(responded)
    assert.equal("detect", req.ctx.waf.action)
    assert.matches("SecRuleEngine DetectionOnly: the SecLang rules refuse nothing", T.config_warnings[#T.config_warnings], 1, true)
    T.reset()
    c = T.conf(waf, { crs = false, crs_files = { tmpfile("SecRuleEngine Off\n" .. rule) }, hyperscan = false },
      "routes[1].plugins[1](waf)")
    responded, req = get(c, "/?q=zzattack")
    assert.is_false(responded)
    assert.is_nil(req.ctx.waf)
    assert.matches("SecRuleEngine Off: the SecLang rules do not run", T.config_warnings[#T.config_warnings], 1, true)
  end)

  it("keeps DetectionOnly to the SecLang rules: the Lua rules refuse; ctl:ruleEngine=On blocks again", function()
    local rule = 'SecRule ARGS "@rx zzattack" "id:100001,phase:2,deny,status:403"\n'
    local c = T.conf(waf, { crs = false, crs_files = { tmpfile("SecRuleEngine DetectionOnly\n" .. rule) },
                            hyperscan = false })
    -- a bundled Lua rule's SQLi: refused
    assert.is_true((get(c, "/?id=1%27+OR+%271%27%3D%271")))
    T.reset()
    c = T.conf(waf, { crs = false, hyperscan = false, crs_files = { tmpfile("SecRuleEngine DetectionOnly\n"
      .. 'SecRule REQUEST_FILENAME "@beginsWith /admin" "id:100002,phase:1,pass,nolog,ctl:ruleEngine=On"\n'
      .. rule) } })
    assert.is_false((get(c, "/?q=zzattack")))
    assert.is_true((get(c, "/admin?q=zzattack")))
  end)

  it("says nothing of SecRuleEngine when the files do not set it", function()
    T.conf(waf, { crs = false, crs_files = { tmpfile('SecRule ARGS "@rx a" "id:100001,phase:2,deny"\n') },
                  hyperscan = false }, "routes[1].plugins[1](waf)")
    for _, w in ipairs(T.config_warnings) do assert.is_nil(w:find("SecRuleEngine", 1, true), w) end
  end)
end)
