local T = require "proxy.test"
local re = require "luaproxy.re"
local schema = require "luaproxy.schema"

-- Runs fn with proxy.config.lua set to `lua` (the settings proxy.re reads), on a fresh cache.
local function with_settings(lua, fn)
  local saved = T.proxy.config.lua
  T.proxy.config.lua = lua
  re._reset()
  local ok, err = pcall(fn)
  T.proxy.config.lua = saved
  re._reset()
  if not ok then error(err, 0) end
end

describe("proxy.re", function()
  it("is the same module in the engine's proxy and the proxy.test double", function()
    assert.equal(re, T.proxy.re)
    assert.equal(re, require("proxy").re)
    -- the engine's proxy module (loaded here as a file: busted has the double as "proxy")
    -- loads it on first use
    local engine_proxy = dofile("lua/proxy.lua")
    assert.is_nil(rawget(engine_proxy, "re"))
    assert.equal(re, engine_proxy.re)
    assert.equal(re, rawget(engine_proxy, "re"))
    assert.is_nil(engine_proxy.no_such_field)
  end)

  it("uses the PCRE2 JIT when the library has one", function()
    assert.is_true(re.jit_available)
    local c = assert(re.compile("a+b"))
    assert.is_true(c.jit)
  end)

  describe("match", function()
    it("returns the captures table: [0], numbered and named groups, false when unmatched", function()
      local m = re.match("hello, 1234", [[([0-9])(?<rest>[0-9]+)(x)?]])
      assert.same({ [0] = "1234", "1", "234", false, rest = "234" }, m)
      assert.is_nil(re.match("hello", "[0-9]"))
      assert.is_nil(select(2, re.match("hello", "[0-9]")))
    end)

    it("fills a given res_table", function()
      local res = {}
      assert.equal(res, re.match("a=1", [[(\w)=(\d)]], nil, nil, res))
      assert.same({ [0] = "a=1", "a", "1" }, res)
    end)

    it("starts at ctx.pos (1-based) and moves it past the match", function()
      local ctx = { pos = 2 }
      local m = re.match("a1b2c3", "[a-z][0-9]", nil, ctx)
      assert.equal("b2", m[0])
      assert.equal(5, ctx.pos)
      assert.equal("c3", re.match("a1b2c3", "[a-z][0-9]", nil, ctx)[0])
      assert.equal(7, ctx.pos)
      assert.is_nil(re.match("a1b2c3", "[a-z][0-9]", nil, ctx))
      assert.is_nil(re.match("abc", "x*", nil, { pos = 5 })) -- past the end
      assert.equal("", re.match("abc", "x*", nil, { pos = 4 })[0])
    end)

    it("returns nil, err for a bad pattern and never raises", function()
      local m, err = re.match("abc", "(abc")
      assert.is_nil(m)
      assert.equal('failed to compile regex "(abc": missing closing parenthesis at offset 4', err)
      m, err = re.match("abc", "a", "z")
      assert.is_nil(m)
      assert.matches('unknown option "z"', err, 1, true)
    end)

    it("raises for arguments of the wrong type (programmer errors)", function()
      assert.error_matches(function() re.match(nil, "a") end, "bad argument #1 (subject)", 1, true)
      assert.error_matches(function() re.gsub({}, "a", "b") end, "bad argument #1 (subject)", 1,
        true)
      assert.equal("12", re.match(12, [[\d+]])[0]) -- a number is matched as its text
      assert.error_matches(function() re.match("a", nil) end, "bad argument #2 (regex)", 1, true)
      assert.error_matches(function() re.match("a", "a", 1) end, "bad argument (options)", 1, true)
      assert.error_matches(function() re.match("a", "a", nil, { pos = 0 }) end, "bad ctx.pos", 1,
        true)
    end)
  end)

  describe("options", function()
    it("i: caseless; m: multiline; s: dotall; x: extended", function()
      assert.equal("HeLLo", re.match("HeLLo", "hello", "i")[0])
      assert.is_nil(re.match("HeLLo", "hello"))
      assert.equal("b", re.match("a\nb", "^b$", "m")[0])
      assert.is_nil(re.match("a\nb", "^b$"))
      assert.equal("a\nb", re.match("a\nb", "a.b", "s")[0])
      assert.is_nil(re.match("a\nb", "a.b"))
      assert.equal("ab", re.match("ab", " a  b # comment", "x")[0])
    end)

    it("a: anchored at the start position", function()
      assert.is_nil(re.match("xab", "ab", "a"))
      assert.equal("ab", re.match("abx", "ab", "a")[0])
      assert.equal("ab", re.match("xab", "ab", "a", { pos = 2 })[0])
    end)

    it("u: UTF-8 (checked); U: UTF-8 without the check", function()
      assert.equal("é", re.match("é", "^.$", "u")[0])
      assert.is_nil(re.match("é", "^.$")) -- two bytes without u
      local m, err = re.match("\255", ".", "u")
      assert.is_nil(m)
      assert.matches("^pcre2_match: UTF%-8 error", err)
      assert.equal("é", re.match("é", "^.$", "U")[0])
    end)

    it("D: duplicate names, given as an array", function()
      local m = re.match("hello, world", [[(?<w>\w+), (?<w>\w+)]], "D")
      assert.same({ "hello", "world" }, m.w)
      assert.is_nil(re.match("x", "(?<w>a)|(?<w>x)"))
      assert.matches("two named subpatterns have the same name",
        select(2, re.match("x", "(?<w>a)|(?<w>x)")), 1, true)
    end)

    it("J: JavaScript-compatible escapes and unset back references", function()
      assert.equal("A", re.match("A", [[\u0041]], "J")[0])
      assert.equal("b", re.match("b", [[(a)?\1b]], "J")[0])
    end)

    it("j and o are accepted (every pattern is cached and JIT-compiled)", function()
      assert.equal("a", re.match("a", "a", "jo")[0])
    end)
  end)

  describe("find", function()
    it("returns from, to (1-based, inclusive), or of group nth", function()
      assert.same({ 8, 11 }, { re.find("hello, 1234", "[0-9]+") })
      assert.same({ 9, 11 }, { re.find("hello, 1234", "([0-9])([0-9]+)", nil, nil, 2) })
      assert.is_nil(re.find("abc", "(x)?abc", nil, nil, 1)) -- the group did not take part
      assert.is_nil(re.find("abc", "d"))
      assert.same({ 1, 0 }, { re.find("abc", "") }) -- an empty match
      local ctx = { pos = 3 }
      assert.same({ 4, 4 }, { re.find("abab", "b", nil, ctx) })
      assert.equal(5, ctx.pos)
    end)

    it("returns nil, nil, err for a bad pattern", function()
      local from, to, err = re.find("abc", "[")
      assert.is_nil(from)
      assert.is_nil(to)
      assert.matches("missing terminating ] for character class at offset 1", err, 1, true)
    end)
  end)

  describe("gmatch", function()
    it("iterates over the matches' captures tables", function()
      local out = {}
      for m in re.gmatch("a=1, b=2, c=3", [[(?<k>\w)=(\d)]]) do
        out[#out + 1] = m.k .. m[2]
      end
      assert.same({ "a1", "b2", "c3" }, out)
    end)

    it("advances past empty matches as Perl does", function()
      local out = {}
      for m in re.gmatch("axb", "x*") do out[#out + 1] = m[0] end
      assert.same({ "", "x", "", "" }, out)
      out = {}
      for m in re.gmatch("éa", "", "u") do out[#out + 1] = m[0] end
      assert.equal(3, #out) -- at é, at a, at the end: never inside é
    end)

    it("returns nil, err for a bad pattern; the iterator returns nil, err on a match error", function()
      local it, err = re.gmatch("abc", "(")
      assert.is_nil(it)
      assert.matches("failed to compile regex", err, 1, true)
      it = re.gmatch("a\255", ".", "u")
      local m, merr = it()
      assert.is_nil(m)
      assert.matches("UTF-8 error", merr, 1, true)
      assert.is_nil(it()) -- and then it is done
    end)
  end)

  describe("sub and gsub", function()
    it("replace with templates: $0, $N, ${N}, ${name}, $$", function()
      assert.same({ "[hello,h], [world,w]", 2 },
        { re.gsub("hello, world", "([a-z])[a-z]+", "[$0,$1]", "i") })
      assert.same({ "hello, [12][1]34", 1 }, { re.sub("hello, 1234", "([0-9])[0-9]", "[$0][$1]") })
      assert.same({ "hello, 100234", 1 }, { re.sub("hello, 1234", "[0-9]", "${0}00") })
      assert.same({ "hello, $234", 1 }, { re.sub("hello, 1234", "[0-9]", "$$") })
      assert.same({ "b-a", 1 }, { re.sub("a-b", [[(?<x>\w)-(?<y>\w)]], "${y}-${x}") })
      assert.same({ "a-", 1 }, { re.sub("a", "(a)(b)?", "$1-$2$9") }) -- unset or absent: ""
      assert.same({ "nothing", 0 }, { re.gsub("nothing", "x", "y") })
      assert.same({ "-h-e-l-l-o-", 6 }, { re.gsub("hello", "", "-") })
      assert.same({ "-a--b-", 4 }, { re.gsub("axb", "x*", "-") })
      assert.same({ "a1", 1 }, { re.sub("a", "$", 1) }) -- a number is a template too
    end)

    it("replace with a function of the captures table", function()
      local s, n = re.gsub("hello, world", "([a-z])[a-z]+", function(m)
        return "[" .. m[0] .. "," .. m[1] .. "]"
      end, "i")
      assert.same({ "[hello,h], [world,w]", 2 }, { s, n })
      -- the function may use the same pattern again
      s = re.gsub("a1 b2", [[(\w)(\d)]], function(m)
        return re.sub(m[0], [[(\w)(\d)]], "$2$1")
      end)
      assert.equal("1a 2b", s)
      -- $ in what the function returns is literal
      assert.equal("$1", (re.sub("x", "x", function() return "$1" end)))
      assert.error_matches(function() re.gsub("x", "x", function() return nil end) end,
        "replace function returned nil", 1, true)
    end)

    it("return nil, nil, err for bad patterns and bad templates (as ngx.re)", function()
      local s, n, err = re.gsub("abc", "(", "x")
      assert.is_nil(s)
      assert.is_nil(n)
      assert.matches("failed to compile regex", err, 1, true)
      s, n, err = re.sub("abc", "(b)", "$x")
      assert.is_nil(s)
      assert.is_nil(n)
      assert.matches("$ must be followed by a digit", err, 1, true)
      s, n, err = re.sub("abc", "(b)", "${1")
      assert.is_nil(s)
      assert.is_nil(n)
      assert.matches("unclosed ${", err, 1, true)
      s, n, err = re.sub("abc", "(b)", "${nope}")
      assert.is_nil(s)
      assert.is_nil(n)
      assert.matches('the regex has no group named "nope"', err, 1, true)
      assert.error_matches(function() re.gsub("a", "a", {}) end, "bad argument #3 (replace)", 1,
        true)
    end)
  end)

  describe("the per-worker cache", function()
    it("compiles a pattern once per options", function()
      with_settings(nil, function()
        re.match("a", "cached")
        re.match("b", "cached")
        re.find("c", "cached")
        assert.equal(1, re.cache_stats().compiles)
        re.match("a", "cached", "i")
        assert.equal(2, re.cache_stats().compiles)
        assert.equal(2, re.cache_stats().size)
        assert.equal(1024, re.cache_stats().max)
      end)
    end)

    it("is bounded by lua.regex_cache_max, keeping the patterns in use", function()
      with_settings({ regex_cache_max = 3 }, function()
        for i = 1, 10 do assert.truthy(re.match("x" .. i, "x" .. i)) end
        local st = re.cache_stats()
        assert.equal(3, st.size)
        assert.equal(10, st.compiles)
        assert.equal(7, st.evictions)
        -- a hot pattern survives a stream of one-off patterns
        re.match("hot", "hot")
        for i = 1, 20 do
          re.match("hot", "hot")
          re.match("x", "one-off-" .. i)
        end
        local before = re.cache_stats().compiles
        re.match("hot", "hot")
        assert.equal(before, re.cache_stats().compiles)
      end)
    end)

    it("keeps an evicted pattern valid for a gmatch iterator that holds it", function()
      with_settings({ regex_cache_max = 1 }, function()
        local it = re.gmatch("a1a2a3", [[a(\d)]])
        assert.equal("1", it()[1])
        for i = 1, 5 do re.match("y", "evict" .. i) end
        collectgarbage()
        collectgarbage()
        assert.equal("2", it()[1])
        assert.equal("3", it()[1])
        assert.is_nil(it())
      end)
    end)

    it("compiles on every call with lua.regex_cache_max = 0", function()
      with_settings({ regex_cache_max = 0 }, function()
        re.match("a", "a")
        re.match("a", "a")
        assert.equal(2, re.cache_stats().compiles)
        assert.equal(0, re.cache_stats().size)
      end)
    end)
  end)

  describe("the match limit", function()
    it("stops catastrophic backtracking with nil, err instead of hanging", function()
      local subject = string.rep("a", 60) .. "b"
      local t0 = os.clock()
      local m, err = re.match(subject, "^(a+)+$")
      assert.is_nil(m)
      assert.equal("pcre2_match: match limit exceeded", err)
      assert.is_true(os.clock() - t0 < 2)
      local s, n, gerr = re.gsub(subject, "^(a+)+$", "x")
      assert.is_nil(s)
      assert.is_nil(n)
      assert.equal("pcre2_match: match limit exceeded", gerr)
    end)

    it("follows lua.regex_match_limit", function()
      with_settings({ regex_match_limit = 1000 }, function()
        local _, err = re.match(string.rep("a", 20) .. "b", "^(a+)+$")
        assert.equal("pcre2_match: match limit exceeded", err)
        -- without the JIT too
        _, err = re.match(string.rep("a", 20) .. "b", "(*NO_JIT)^(a+)+$")
        assert.equal("pcre2_match: match limit exceeded", err)
      end)
    end)

    it("lets a gsub loop be stopped by the runaway guard between matches", function()
      local guard = require "luaproxy.guard"
      local saved = guard.test_expired
      guard.test_flag[0] = 1
      guard.test_expired = function() return 0.5 end
      local ok, err = pcall(re.gsub, string.rep("a", 1000), "a", "b")
      guard.test_flag[0] = 0
      guard.test_expired = saved
      assert.is_false(ok)
      assert.matches("phase timed out (lua.phase_timeout 0.500s)", err, 1, true)
    end)
  end)

  describe("schema type regex", function()
    local S = { fields = {
      rx = { type = "regex", description = "a regex" },
      ci = { type = "regex", options = "i", description = "a caseless regex" },
      list = { type = "array", elements = { type = "regex" }, description = "regexes" },
    } }

    it("accepts patterns that compile", function()
      assert.truthy(schema.check_schema(S))
      assert.same({ rx = "^a", list = { "b", "c+" } },
        (schema.validate(S, { rx = "^a", list = { "b", "c+" } }, "p")))
    end)

    it("refuses a bad pattern naming the key, PCRE2's message and the offset", function()
      local _, err = schema.validate(S, { list = { "ok", "a(b" } }, "plugins[1](x)")
      assert.equal("plugins[1](x).list[2]: invalid regex: missing closing parenthesis at offset 3",
        err)
      _, err = schema.validate(S, { rx = 3 }, "p")
      assert.equal("p.rx: expected a regex string, got number", err)
    end)

    it("checks options in the schema itself", function()
      local _, err = schema.check_schema({ fields = {
        rx = { type = "regex", options = "q", description = "d" } } })
      assert.matches("options must be a string of proxy.re option letters", err, 1, true)
      _, err = schema.check_schema({ fields = {
        s = { type = "string", options = "i", description = "d" } } })
      assert.matches("options applies to regexes only", err, 1, true)
    end)
  end)
end)
