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
        ":1: unknown action skipAftr %(did you mean skipAfter%?%)" },
      { 'SecAction "id:1,phase:1,pass,ctl:ruleRemoveByIdd=3"\n',
        ":1: unknown ctl option ctl:ruleRemoveByIdd %(did you mean ctl:ruleRemoveById%?%)" },
      -- a chained link's typo too
      { 'SecRule ARGS "@rx a" "id:1,phase:2,pass,chain"\n  SecRule ARGS_NAMEZ "@rx b" "t:none"\n',
        ":2: unknown variable ARGS_NAMEZ %(did you mean ARGS_NAMES%?%)" },
    }
    for _, c in ipairs(cases) do
      local err, p = load_err(c[1])
      assert.matches("^" .. p:gsub("%p", "%%%0") .. c[2], err)
    end
  end)

  it("offers no guess when nothing is close", function()
    local err = load_err('SecRule ARGS "@rx a" "id:1,phase:2,pass,t:frobnicateall"\n')
    assert.matches("unknown transformation t:frobnicateall$", err)
  end)
end)

describe("a real ModSecurity construct the engine does not run", function()
  it("is listed with file:line, not refused by the reader", function()
    local p = tmpfile('SecRule ARGS "@verifyCC \\d{13,16}" "id:1,phase:2,pass,t:md5,setenv:a=b"\n'
      .. 'SecRule XML:/* "@rx a" "id:2,phase:2,pass"\n'
      .. "SecGuardianLog /var/log/g\n"
      .. 'SecRule SERVER_NAME "@rx a" "id:3,phase:2,pass,ctl:hashEngine=On"\n')
    local set = assert(seclang.load({ p }))
    assert.are.same({
      p .. ":1: operator @verifyCC", p .. ":1: transformation t:md5", p .. ":1: action setenv",
      p .. ":2: variable XML (no XML body processor: XML bodies are inspected as REQUEST_BODY only)",
      p .. ":3: directive SecGuardianLog",
      p .. ":4: variable SERVER_NAME (not run here)", p .. ":4: ctl:hashEngine",
    }, set.unsupported)
  end)

  it("leaves Debian's CRS 3.3.4 loading: every name in it is ModSecurity's", function()
    local set, err = seclang.load({ "/usr/share/modsecurity-crs" })
    assert.is_nil(err)
    assert.are.equal(202, #set.unsupported)
  end)
end)

describe("unsupported = \"refuse_own\"", function()
  local T = require "proxy.test"
  local waf = require "waf"
  before_each(function() T.reset() end)

  it("refuses what the operator's crs_files do not run, lists what crs does not run", function()
    local crs = tmpfile('SecRule XML:/* "@rx a" "id:1,phase:2,pass"\n')
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
    assert.are.equal(202, #c.sec.unsupported)
    local ok = pcall(T.conf, waf, { crs = "/usr/share/modsecurity-crs", crs_files = { mine },
                                    unsupported = "refuse", hyperscan = false })
    assert.is_false(ok)
  end)
end)
