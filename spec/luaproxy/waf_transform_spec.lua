-- The waf transformations in C (engine/waf_transform.c, through lp_native) against their Lua
-- twins (luaproxy/waf/transforms.lua): byte for byte the same output, over the corpora's
-- values (tests/waf/*.jsonl: URIs, bodies, headers, and those decoded) and over random
-- strings made of the bytes the transformations react to.
local ffi = require "ffi"
require "luaproxy.ffi"
local N = require "luaproxy.native"
local T = require "luaproxy.waf.transforms"

local NAMES = { "lowercase", "urldecode", "html_decode", "js_decode", "css_decode", "cmdline_modsec",
                "compress_ws", "remove_ws", "remove_nulls", "replace_comments", "normalize_path",
                "normalize_path_posix", "utf8_to_unicode", "base64_decode", "length", "trim",
                "trim_left", "trim_right", "uppercase", "replace_nulls", "hex_encode", "sha1" }

local function c_step(id, s)
  local out = ffi.new("char[?]", tonumber(N.lp_ffi_waf_transform_bound(id, #s)))
  local n = tonumber(N.lp_ffi_waf_transform(id, s, #s, out))
  if n < 0 then return s end
  return ffi.string(out, n)
end

local function corpus()
  local vals = {}
  for _, f in ipairs({ "tests/waf/attacks.jsonl", "tests/waf/ordinary.jsonl" }) do
    for line in io.lines(f) do
      local r = require("cjson").decode(line)
      vals[#vals + 1] = r.uri
      if type(r.body) == "string" then vals[#vals + 1] = r.body end
      for k, v in pairs(r.headers or {}) do
        vals[#vals + 1] = k
        if type(v) == "string" then vals[#vals + 1] = v end
      end
    end
  end
  local n = #vals
  for i = 1, n do
    vals[#vals + 1] = T.urldecode(vals[i])
    vals[#vals + 1] = T.html_decode(T.urldecode(vals[i]))
  end
  return vals
end

local ALPHABET = { "%", "u", "U", "+", "&", "#", "x", "X", ";", "\\", "/", ".", "*", "-", ",", "'", '"',
                   "^", " ", "\t", "\n", "\r", "\v", "\0", "\1", "a", "F", "Z", "0", "7", "9", "(", "=",
                   "_", "<", "!", "lt", "amp", "&#", "&#x", "%u", "\\u", "\\x", "/*", "*/", "..",
                   "\195\169", "\226\130\172", "\240\159\152\128", "\128", "\191", "\255", "\192",
                   "ff01", "FF5E", "d800", "10FFFF", "110000", "123456789" }

local function random_values(n, seed)
  math.randomseed(seed)
  local out = {}
  for i = 1, n do
    local parts = {}
    for k = 1, math.random(0, 24) do parts[k] = ALPHABET[math.random(#ALPHABET)] end
    out[i] = table.concat(parts)
  end
  return out
end

describe("waf transformations in C", function()
  it("has a step code for each transformation C implements, none for the others", function()
    for _, name in ipairs(NAMES) do assert.is_true(N.lp_ffi_waf_transform_id(name) > 0, name) end
    assert.equal(-1, N.lp_ffi_waf_transform_id("escape_seq_decode"))
    assert.equal(-1, N.lp_ffi_waf_transform_id("nope"))
  end)

  it("gives byte for byte what the Lua twins give, over the corpora and random strings", function()
    local vals = corpus()
    for _, v in ipairs(random_values(20000, 7)) do vals[#vals + 1] = v end
    local bad = {}
    for _, name in ipairs(NAMES) do
      local id = N.lp_ffi_waf_transform_id(name)
      for _, v in ipairs(vals) do
        local want, got = T[name](v), c_step(id, v)
        if want ~= got and #bad < 10 then
          bad[#bad + 1] = string.format("%s(%q): lua %q, C %q", name, v, want, got)
        end
      end
    end
    assert.same({}, bad)
  end)

  it("decodes as ModSecurity's reference manual describes", function()
    local function t(name, s) return c_step(N.lp_ffi_waf_transform_id(name), s) end
    assert.equal("a b<c", t("urldecode", "a+b%3Cc"))
    assert.equal("A", t("urldecode", "%uff21"))     -- full-width A
    assert.equal("%zz", t("urldecode", "%zz"))      -- invalid escape stays
    assert.equal("<a>\"'", t("html_decode", "&lt;a&GT;&quot;&#39;"))
    assert.equal("\226\130\172&unknown;", t("html_decode", "&#x20AC;&unknown;"))
    assert.equal("A\n<", t("js_decode", "\\x41\\n\\u003c"))
    assert.equal("javascript", t("css_decode", "jav\\61 script"))
    assert.equal("cat/etc/passwd", t("cmdline_modsec", "C^a\\t  \"/etc/passwd\""))  -- no space before /
    assert.equal("/etc/passwd", t("normalize_path_posix", "/var/www/../../etc/./passwd"))
    assert.equal("/a/c", t("normalize_path", "\\a\\b\\..\\c"))
    assert.equal("%u00e9", t("utf8_to_unicode", "\195\169"))
    assert.equal("hello world", t("base64_decode", "aGVsbG8gd29ybGQ="))
    assert.equal("5", t("length", "abcde"))
    assert.equal("a b", t("trim", " \t a b\0 "))
    assert.equal("select from", t("replace_comments", "select/* x */from"))
  end)
end)
