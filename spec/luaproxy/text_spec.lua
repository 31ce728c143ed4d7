-- luaproxy.text: the template compiler/renderer and the host-pattern check and matcher the
-- bundled plugins share.
local text = require "luaproxy.text"

local VARS = { host = true, path = true, uri = true, method = true, request_id = true }

-- What render() needs of a request: req:var(name), one string or nil.
local function req_with(vars)
  return { var = function(_, name) return vars[name] end }
end

describe("luaproxy.text", function()
  describe("compile", function()
    it("returns a plain string when there is nothing to substitute", function()
      assert.equal("", text.compile("", VARS))
      assert.equal("hello world", text.compile("hello world", VARS))
      assert.equal("100%", text.compile("100%", VARS, false)) -- % is plain without captures
      assert.equal("%1", text.compile("%1", VARS))
    end)

    it("turns $$ into $, and still gives a plain string", function()
      assert.equal("$", text.compile("$$", VARS))
      assert.equal("cost: $5", text.compile("cost: $$5", VARS))
      assert.equal("$host", text.compile("$$host", VARS))
      assert.equal("${host}", text.compile("$${host}", VARS))
      assert.equal("$$", text.compile("$$$$", VARS))
    end)

    it("splits $name and ${name} into literals at odd and names at even indexes", function()
      assert.same({ "", "host", "" }, text.compile("$host", VARS))
      assert.same({ "", "host", "" }, text.compile("${host}", VARS))
      assert.same({ "http://", "host", "", "uri", "" }, text.compile("http://$host$uri", VARS))
      assert.same({ "a ", "method", "_x" }, text.compile("a ${method}_x", VARS))
      assert.same({ "id=", "request_id", ";" }, text.compile("id=$request_id;", VARS))
    end)

    it("takes the longest identifier after $, so a suffix needs braces", function()
      -- "$host_x" names the unknown variable host_x: kept as written.
      assert.equal("$host_x", text.compile("$host_x", VARS))
      assert.same({ "", "host", "-x" }, text.compile("$host-x", VARS))
      assert.same({ "", "host", "_x" }, text.compile("${host}_x", VARS))
    end)

    it("keeps unknown variables and lone or unfinished $ as written", function()
      for _, s in ipairs({ "$nope", "${nope}", "$", "a$", "${host", "${}", "$1", "$ host", "$-" }) do
        assert.equal(s, text.compile(s, VARS))
      end
      -- An unknown one does not stop a known one after it.
      assert.same({ "$nope/", "path", "" }, text.compile("$nope/$path", VARS))
      assert.same({ "${", "host", "" }, text.compile("${$host", VARS))
    end)

    it("only knows the variables it is given", function()
      assert.equal("$status", text.compile("$status", VARS))
      assert.same({ "", "status", "" }, text.compile("$status", { status = true }))
    end)

    it("parses %0..%9 and %% when captures are allowed", function()
      assert.same({ "/new/", 1, "" }, text.compile("/new/%1", VARS, true))
      assert.same({ "", 0, "", 9, "" }, text.compile("%0%9", VARS, true))
      assert.same({ "", 1, "0" }, text.compile("%10", VARS, true)) -- one digit only
      assert.equal("50%", text.compile("50%%", VARS, true))
      assert.same({ "", "host", "/", 2, "?p=100%" }, text.compile("$host/%2?p=100%%", VARS, true))
      assert.same({ "$", 1, "" }, text.compile("$%1", VARS, true))
    end)

    it("rejects any other use of % when captures are allowed", function()
      for _, s in ipairs({ "%", "a%", "%a", "%%%", "100% sure" }) do
        local tpl, err = text.compile(s, VARS, true)
        assert.is_nil(tpl, s)
        assert.equal("% must be followed by a digit or % (write %% for a percent sign)", err)
      end
    end)
  end)

  describe("render", function()
    it("returns a plain string as it is", function()
      assert.equal("x", text.render("x", nil))
    end)

    it("fills variables from req:var(), missing ones empty", function()
      local req = req_with({ host = "example.com", uri = "/a?b=1" })
      assert.equal("http://example.com/a?b=1", text.render(text.compile("http://$host$uri", VARS), req))
      assert.equal("[]", text.render(text.compile("[${request_id}]", VARS), req))
      assert.equal("GET", text.render(text.compile("$method", VARS), req_with({ method = "GET" })))
    end)

    it("fills captures, %0 being the whole match in path", function()
      local path = "/old/items/42"
      local s, e, c1, c2 = path:find("^/old/(%w+)/(%d+)$")
      local tpl = text.compile("/new/%1?id=%2&was=%0", VARS, true)
      assert.equal("/new/items?id=42&was=/old/items/42", text.render(tpl, req_with({}), { c1, c2 }, path, s, e))
      -- A partial match: %0 is only the matched span.
      s, e = path:find("items")
      assert.equal("<items>", text.render(text.compile("<%0>", VARS, true), req_with({}), {}, path, s, e))
    end)

    it("renders a capture the pattern did not produce as empty", function()
      local tpl = text.compile("a%3b", VARS, true)
      assert.equal("ab", text.render(tpl, req_with({}), { "x" }, "/p", 1, 2))
    end)

    it("gives position captures as numbers", function()
      local tpl = text.compile("at %1", VARS, true)
      assert.equal("at 3", text.render(tpl, req_with({}), { 3 }, "/ab", 1, 3))
    end)

    it("leaves nothing from an earlier, longer template in a later result", function()
      local req = req_with({ host = "h", path = "/p", uri = "/u", method = "M" })
      local long = text.compile("$host-$path-$uri-$method-end", VARS)
      local short = text.compile("<$host>", VARS)
      assert.equal("h-/p-/u-M-end", text.render(long, req))
      assert.equal("<h>", text.render(short, req))
      assert.equal("h-/p-/u-M-end", text.render(long, req))
    end)

    it("is the inverse of compile for text without variables", function()
      for _, s in ipairs({ "$$a", "plain", "${x}", "$" }) do
        local tpl = text.compile(s, VARS)
        assert.equal((s:gsub("%$%$", "$")), text.render(tpl, req_with({})))
      end
    end)
  end)

  describe("host patterns", function()
    it("accept exact names and one leading *. wildcard", function()
      for _, h in ipairs({ "example.com", "EXAMPLE.com", "*.example.com", "*.com", "localhost" }) do
        assert.is_true(text.valid_host(h), h)
      end
    end)

    it("reject a wildcard anywhere else", function()
      for _, h in ipairs({ "*", "*example.com", "a.*.com", "*.*.example.com", "example.*", "**.a", "*.a*" }) do
        local ok, err = text.valid_host(h)
        assert.is_nil(ok, h)
        assert.equal("a wildcard host must look like *.example.com", err)
      end
    end)

    it("compile to a lower-case exact name, or a suffix and its length", function()
      assert.equal("example.com", text.compile_name("Example.COM"))
      local exact, suffix, len = text.compile_name("*.Example.com")
      assert.is_nil(exact)
      assert.equal(".example.com", suffix)
      assert.equal(12, len)
    end)

    it("match an exact name only as a whole", function()
      local exact = text.compile_name("Example.com")
      assert.is_true(text.name_matches("example.com", exact))
      assert.is_false(text.name_matches("www.example.com", exact))
      assert.is_false(text.name_matches("example.co", exact))
      assert.is_false(text.name_matches("example.com.evil", exact))
    end)

    it("match subdomains of a wildcard at any depth, never the bare domain or look-alikes", function()
      local m = function(name) return text.name_matches(name, text.compile_name("*.example.com")) end
      assert.is_true(m("a.example.com"))
      assert.is_true(m("a.b.c.example.com"))
      assert.is_false(m("example.com"))
      assert.is_false(m(".example.com")) -- no label before the dot
      assert.is_false(m("badexample.com"))
      assert.is_false(m("xbadexample.com"))
      assert.is_false(m("a.example.com.evil.net"))
      assert.is_false(m("a.example.comx"))
      assert.is_false(m(""))
    end)

    it("expect a lower-case name, as the plugins pass req:host()", function()
      assert.is_false(text.name_matches("A.EXAMPLE.COM", text.compile_name("*.example.com")))
      assert.is_false(text.name_matches("EXAMPLE.COM", text.compile_name("example.com")))
    end)
  end)
end)
