-- luaproxy/waf/detect.lua: the waf operators that are C functions (engine/waf_sqli.c,
-- waf_xss.c, waf_validate.c, through lp_native here and ffi.C in the proxy): what they hand
-- back to the engine (positions from 1, @detectSQLi's fingerprint), Lua strings with NUL
-- bytes, long values, @validateByteRange's load-time bitmap (in a rule:
-- spec/plugins/waf_crs_spec.lua). The verdicts themselves: tests/unit/test_waf_sqli.c and
-- test_waf_xss.c, and spec/plugins/waf_crs_spec.lua with the rules.
local D = require "luaproxy.waf.detect"

describe("waf detect (C operators)", function()
  it("gives @detectSQLi's span and fingerprint as Lua values", function()
    local from, to, fp = D.sqli("1' OR '1'='1")
    assert.same({ 4, 12, "&sos" }, { from, to, fp })
    assert.equal("number", type(from))
    assert.same({ 3, 36, "Ukbkbc" }, { D.sqli("' UNION SELECT password FROM users--") })
    assert.is_nil(D.sqli("It's great -- I'd buy it again"))
  end)

  it("flags numeric tautologies CRS 942100 fires on with libinjection, not numeric prose", function()
    assert.same({ 4, 10, "&(non" }, { D.sqli("1) or (1=1") })
    assert.same({ 5, 12, "&((non" }, { D.sqli("1)) or ((1=1") })
    assert.same({ 4, 9, "&non" }, { D.sqli("-1 or 1=1") })
    local v = ("("):rep(2000) .. ("a or 1=1 or 1=1 "):rep(125)
    assert.same({ 2003, "&non&n" }, { (D.sqli(v)), select(3, D.sqli(v)) })
    for _, prose in ipairs({ "pages 1 or 2", "1 or 2 days", "(1 = 1)", "size (1) or (2)" }) do
      assert.is_nil(D.sqli(prose), prose)
    end
  end)

  it("gives @detectXSS's span: the markup to the value's end", function()
    assert.same({ 12, 28 }, { D.xss("<img src=x onerror=alert(1)>") })
    assert.is_nil(D.xss("<b>bold</b>"))
  end)

  it("reads the whole Lua string, NUL bytes and invalid UTF-8 included", function()
    assert.same({ 5, 12, "&nono" }, { D.sqli("a\0' OR 1=1--") })
    assert.same({ 5, 12, "&nonc" }, { D.sqli("\255\254' or 1=1 #") })
    assert.same({ 2, 8 }, { D.xss("\0<script") })
    assert.is_nil(D.sqli(""))
    assert.is_nil(D.xss(""))
    assert.is_nil(D.sqli("'"))
    assert.is_nil(D.xss("<a href=\"unterminated"))
  end)

  it("finishes on 1 MiB values of the tokenizer's worst kinds", function()
    for _, fill in ipairs({ "'", "(", "' or ", "/*", "<a b=", "&#x41;", "\"", "<!", " " }) do
      local v = fill:rep(math.ceil(2 ^ 20 / #fill))
      D.sqli(v)
      D.xss(v)
      D.urlenc_invalid(v)
      D.utf8_invalid(v)
    end
    -- all of the value is read: what follows padding is found
    local pad = ("a"):rep(2 ^ 20)
    local v = ("a"):rep(100) .. " 1 union select 1,2 " .. pad
    assert.same({ 104, #v, "Ukn,nb" }, { D.sqli(v) })
    assert.same({ 8196, 8211, "Ukn,n" }, { D.sqli(("a"):rep(8192) .. " 1 union select 1,2") })
    assert.same({ 4099, 4106, "&nono" }, { D.sqli((" "):rep(4096) .. "' or 1=1--") })
    v = ("a"):rep(1000) .. "<script>" .. pad
    assert.same({ 1001, #v }, { D.xss(v) })
    v = pad .. "<script>"
    assert.same({ #pad + 1, #v }, { D.xss(v) })
  end)

  it("finds the first byte outside @validateByteRange's ranges", function()
    local ok = {}
    for c = 32, 126 do ok[c] = true end
    local bad = D.byte_set(ok)
    assert.is_nil(D.byte_range(bad, "plain text ~"))
    assert.equal(6, D.byte_range(bad, "plain\ttext"))
    assert.equal(1, D.byte_range(bad, "\0"))
    assert.equal(3, D.byte_range(bad, "ab\255"))
    assert.is_nil(D.byte_range(bad, ""))
    ok = {}
    for c = 0, 255 do ok[c] = true end
    assert.is_nil(D.byte_range(D.byte_set(ok), "\0\255"))
  end)

  it("validates URL and UTF-8 encodings", function()
    assert.is_nil(D.urlenc_invalid("a%20b"))
    assert.equal(2, D.urlenc_invalid("a%2"))
    assert.is_nil(D.utf8_invalid("caf\195\169"))
    assert.equal(4, D.utf8_invalid("caf\195"))
  end)
end)
