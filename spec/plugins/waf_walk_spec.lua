-- The SecLang walk over its plan (luaproxy/waf/engine.lua, run_phase_plan): of the rules
-- whose first condition Hyperscan prefilters, only those their group's hits name are
-- visited. It must run the same rules in the same order as asking every rule (cs.each):
-- a group scanned at its first rule not passed over, the trigger moving on when that rule
-- is removed at run time, a skipAfter jumping over a group's first rule, a group scanned in
-- phase 1 and named again in phase 2.
local T = require "proxy.test"
local waf = require "waf"

local function tmpfile(text)
  local path = os.tmpname() .. ".conf"
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
  return path
end

-- Three groups: G (no transformation), H (t:lowercase), K (t:urlDecodeUni).
local RULES = [[
SecRule ARGS "@rx aaa" "id:100,phase:1,pass,log,setvar:tx.s=+1"
SecRule ARGS:rm "@streq 1" "id:101,phase:1,pass,nolog,ctl:ruleRemoveById=110"
SecRule ARGS:rmk "@streq 1" "id:102,phase:1,pass,nolog,ctl:ruleRemoveById=120"
SecRule ARGS "@rx bbb" "id:110,phase:2,pass,log,setvar:tx.s=+2"
SecRule ARGS "@rx kkk" "id:120,phase:2,pass,log,t:urlDecodeUni,setvar:tx.s=+4"
SecRule ARGS:skip "@streq 1" "id:130,phase:2,pass,nolog,skipAfter:M1"
SecRule ARGS "@rx hhh" "id:140,phase:2,pass,log,t:lowercase,setvar:tx.s=+8"
SecRule ARGS "@rx ccc" "id:141,phase:2,pass,log,setvar:tx.s=+16"
SecMarker M1
SecRule ARGS "@rx hx2" "id:150,phase:2,pass,log,t:lowercase,setvar:tx.s=+32"
SecRule ARGS "@rx kx2" "id:151,phase:2,pass,log,t:urlDecodeUni,setvar:tx.s=+64"
SecRule ARGS "@rx ddd" "id:152,phase:2,pass,log,setvar:tx.s=+128"
SecRule ARGS:stop "@streq 1" "id:160,phase:2,deny,status:403"
SecRule ARGS "@rx eee" "id:161,phase:2,pass,log,setvar:tx.s=+256"
SecRule TX:s "@ge 0" "id:199,phase:2,pass,log,msg:'s=%{tx.s}'"
]]

describe("the SecLang walk over its plan", function()
  before_each(function() T.reset() end)

  local conf
  local function verdict(uri, each)
    conf = conf or T.conf(waf, { crs = tmpfile(RULES), default_rules = false })
    conf.sec.each = each or nil
    local req = T.request({ uri = uri, headers = { Host = "a.example" } })
    local refused = T.phase(waf, "request", req, conf)
    local ids = {}
    for _, m in ipairs(req.ctx.waf and req.ctx.waf.matches or {}) do
      ids[#ids + 1] = m.id .. " " .. tostring(m.var) .. " " .. tostring(m.msg)
    end
    return (refused and "refused " or "passed ") .. table.concat(ids, "; ")
  end
  local function ids(uri)
    local out = {}
    for id in verdict(uri):gmatch("(%d+) ARGS") do out[#out + 1] = tonumber(id) end
    return out
  end

  it("visits the rules the hits name, whatever was removed or jumped over", function()
    assert.are.same({ 100, 110, 141, 152 }, ids("/?a=aaa&b=bbb&c=ccc&d=ddd"))
    -- 110, G's first rule in phase 2, removed: the rest of G still runs
    assert.are.same({ 100, 141, 152 }, ids("/?rm=1&a=aaa&b=bbb&c=ccc&d=ddd"))
    -- 120, K's first rule, removed before K was scanned: its next rule scans it
    assert.are.same({ 151 }, ids("/?rmk=1&k=kkk&k2=kx2"))
    assert.are.same({ 120, 151 }, ids("/?k=kkk&k2=kx2"))
    -- the skipAfter jumps over H's and G's rules before M1: the rules after it still run
    assert.are.same({ 150, 152 }, ids("/?skip=1&h=hhh&h2=hx2&c=ccc&d=ddd"))
    assert.are.same({ 140, 141, 150, 152 }, ids("/?h=HHH&h2=HX2&c=ccc&d=ddd"))
    -- (Hyperscan prefilters them: the walk went over its plan)
    local pre = 0
    for _, g in pairs(conf.sec.plan[2].g) do if g then pre = pre + 1 end end
    assert.are.equal(8, pre)
    -- a deny ends the walk
    assert.matches("^refused", verdict("/?stop=1&e=eee"))
    assert.are.same({ 160 }, ids("/?stop=1&e=eee"))
  end)

  it("gives the verdicts of the walk that asks every rule", function()
    local values = { "aaa", "bbb", "kkk", "hhh", "ccc", "hx2", "kx2", "ddd", "eee", "x" }
    local flags = { "rm=1", "rmk=1", "skip=1", "stop=1" }
    local n = 0
    for mask = 0, 15 do
      for v = 1, #values do
        for w = v, #values, 3 do
          local q = { "v=" .. values[v], "w=" .. values[w] }
          for f = 1, #flags do
            if math.floor(mask / 2 ^ (f - 1)) % 2 == 1 then q[#q + 1] = flags[f] end
          end
          local uri = "/?" .. table.concat(q, "&")
          assert.are.equal(verdict(uri, true), verdict(uri), uri)
          n = n + 1
        end
      end
    end
    assert.is_true(n > 300)
  end)
end)

describe("the walk's kept scans", function()
  before_each(function() T.reset() end)

  it("answer any text, one named like their own fields too", function()
    -- A negated condition is prefiltered value by value (may_match): the kept scans of a
    -- group, keyed by text, once answered the text "db" with the group's database, and the
    -- walk raised (over_budget then decided: with "pass", the attack after it passed)
    local conf = T.conf(waf, { crs = tmpfile([[
SecRule ARGS "!@rx ^[a-z]+$" "id:10,phase:2,pass,log,setvar:tx.odd=+1"
SecRule ARGS "@rx attack" "id:11,phase:2,deny,status:403"
]]), default_rules = false, over_budget = "pass" })
    for _, v in ipairs({ "db", "bytes", "n", "db" }) do
      local req = T.request({ uri = "/?a=" .. v .. "&b=attack", headers = { Host = "a.example" } })
      assert.is_true(T.phase(waf, "request", req, conf) and true or false, v)
      assert.are.equal(0, #T.log_lines("err"), v)
    end
  end)
end)

describe("@ipMatch", function()
  before_each(function() T.reset() end)

  it("matches addresses in its ranges and exact IPv6 ones, whatever address came before", function()
    local conf = T.conf(waf, { crs = tmpfile([[
SecRule REMOTE_ADDR "@ipMatch 10.0.0.0/8,192.168.1.5,::1" "id:1,phase:1,deny,status:403"
]]), default_rules = false })
    local function refused(ip)
      local req = T.request({ uri = "/", headers = { Host = "a.example" }, client_ip = ip })
      return T.phase(waf, "request", req, conf) and true or false
    end
    for _ = 1, 2 do
      assert.is_true(refused("10.1.2.3"))
      assert.is_true(refused("10.255.255.255"))
      assert.is_false(refused("11.0.0.1"))
      assert.is_true(refused("192.168.1.5"))
      assert.is_false(refused("192.168.1.6"))
      assert.is_true(refused("::1"))
      assert.is_false(refused("::2"))
      assert.is_false(refused("10.1.2"))
    end
  end)
end)
