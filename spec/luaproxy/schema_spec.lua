local schema = require "luaproxy.schema"

describe("luaproxy.schema", function()
  describe("validate", function()
    local s = {
      fields = {
        header = { type = "string", default = "X-Example", description = "d" },
        count = { type = "integer", min = 1, max = 10, default = 3, description = "d" },
        ratio = { type = "number", min = 0, max = 1, description = "d" },
        on = { type = "boolean", default = true, description = "d" },
        mode = { type = "string", one_of = { "a", "b" }, default = "a", description = "d" },
        token = { type = "string", pattern = "^%x+$", description = "d" },
        name = { type = "string", min = 2, max = 4, description = "d" },
        needed = { type = "string", required = true, description = "d" },
      },
    }

    it("fills defaults and keeps given values", function()
      local conf = assert(schema.validate(s, { needed = "x", count = 5 }))
      assert.same({ header = "X-Example", count = 5, on = true, mode = "a", needed = "x" }, conf)
    end)

    it("returns a new table, never the caller's", function()
      local input = { needed = "x" }
      local conf = schema.validate(s, input)
      assert.are_not.equal(input, conf)
      assert.is_nil(input.header)
    end)

    it("treats a nil conf as empty", function()
      local conf, err = schema.validate({ fields = { a = { type = "number", default = 1 } } }, nil)
      assert.is_nil(err)
      assert.same({ a = 1 }, conf)
    end)

    it("reports a missing required field with its path", function()
      local conf, err = schema.validate(s, {}, "plugins[1](x)")
      assert.is_nil(conf)
      assert.equal("plugins[1](x).needed: required field missing", err)
    end)

    it("rejects unknown keys", function()
      local _, err = schema.validate(s, { needed = "x", nope = 1 }, "p")
      assert.equal("p.nope: unknown field", err)
    end)

    it("checks types", function()
      local cases = {
        { { needed = 1 }, "needed: expected a string, got number" },
        { { needed = "x", count = "2" }, "count: expected an integer, got string" },
        { { needed = "x", count = 1.5 }, "count: expected an integer, got 1.5" },
        { { needed = "x", ratio = "1" }, "ratio: expected a number, got string" },
        { { needed = "x", on = "yes" }, "on: expected a boolean, got string" },
      }
      for _, c in ipairs(cases) do
        local conf, err = schema.validate(s, c[1])
        assert.is_nil(conf)
        assert.equal(c[2], err)
      end
    end)

    it("checks one_of, min, max and pattern", function()
      local _, err = schema.validate(s, { needed = "x", mode = "c" })
      assert.equal('mode: expected one of "a", "b", got "c"', err)
      _, err = schema.validate(s, { needed = "x", count = 0 })
      assert.equal("count: value 0 is below the minimum 1", err)
      _, err = schema.validate(s, { needed = "x", count = 11 })
      assert.equal("count: value 11 is above the maximum 10", err)
      _, err = schema.validate(s, { needed = "x", ratio = 1.5 })
      assert.equal("ratio: value 1.5 is above the maximum 1", err)
      _, err = schema.validate(s, { needed = "x", name = "a" })
      assert.equal("name: length 1 is below the minimum 2", err)
      _, err = schema.validate(s, { needed = "x", name = "abcde" })
      assert.equal("name: length 5 is above the maximum 4", err)
      _, err = schema.validate(s, { needed = "x", token = "xyz" })
      assert.equal('token: "xyz" does not match the pattern "^%x+$"', err)
      assert.truthy(schema.validate(s, { needed = "x", token = "beef", name = "ab" }))
    end)

    it("rejects NaN as a number", function()
      local _, err = schema.validate(s, { needed = "x", ratio = 0 / 0 })
      assert.equal("ratio: expected a number, got nan", err)
    end)

    describe("nested types", function()
      local n = {
        fields = {
          request = {
            type = "record", default = {}, description = "d",
            fields = {
              set = { type = "map", values = { type = "string" }, default = {}, description = "d" },
              remove = { type = "array", elements = { type = "string" }, default = {},
                         description = "d" },
              level = { type = "integer", default = 2, description = "d" },
            },
          },
          rules = {
            type = "array", description = "d", max = 2,
            elements = { type = "record", fields = {
              path = { type = "string", required = true },
              strip = { type = "boolean", default = false },
            } },
          },
          limits = { type = "map", keys = { type = "string", pattern = "^%l+$" },
                     values = { type = "integer", min = 0 }, description = "d" },
          anything = { type = "any", description = "d" },
          fn = { type = "function", description = "d" },
        },
      }

      it("builds record defaults from the nested fields", function()
        local conf = assert(schema.validate(n, {}))
        assert.same({ request = { set = {}, remove = {}, level = 2 } }, conf)
      end)

      it("names the map key in the path", function()
        local _, err = schema.validate(n, { request = { set = { ["X-Env"] = 1 } } },
          "plugins[2](headers)")
        assert.equal("plugins[2](headers).request.set.X-Env: expected a string, got number", err)
      end)

      it("names the array index in the path", function()
        local _, err = schema.validate(n, { rules = { { path = "/" }, { strip = true } } })
        assert.equal("rules[2].path: required field missing", err)
        _, err = schema.validate(n, { rules = { { path = "/", extra = 1 } } })
        assert.equal("rules[1].extra: unknown field", err)
        _, err = schema.validate(n, { request = { remove = { "a", 2 } } })
        assert.equal("request.remove[2]: expected a string, got number", err)
      end)

      it("fills defaults inside array elements", function()
        local conf = assert(schema.validate(n, { rules = { { path = "/a" } } }))
        assert.same({ { path = "/a", strip = false } }, conf.rules)
      end)

      it("rejects a map where an array is expected and the other way round", function()
        local _, err = schema.validate(n, { request = { remove = { a = "x" } } })
        assert.equal("request.remove: expected an array (keys 1..n), got a table with other keys",
          err)
        _, err = schema.validate(n, { request = { remove = "x" } })
        assert.equal("request.remove: expected an array, got string", err)
        _, err = schema.validate(n, { request = "x" })
        assert.equal("request: expected a record, got string", err)
      end)

      it("checks array length, map keys and values", function()
        local _, err = schema.validate(n, { rules = { { path = "/" }, { path = "/" }, { path = "/" } } })
        assert.equal("rules: length 3 is above the maximum 2", err)
        _, err = schema.validate(n, { limits = { ABC = 1 } })
        assert.equal('limits.ABC: "ABC" does not match the pattern "^%l+$"', err)
        _, err = schema.validate(n, { limits = { abc = -1 } })
        assert.equal("limits.abc: value -1 is below the minimum 0", err)
        _, err = schema.validate(n, { request = { set = { [1] = "x" } } })
        assert.equal("request.set.1: expected a string key, got number", err)
      end)

      it("accepts any and function values", function()
        local f = function() end
        local conf = assert(schema.validate(n, { anything = { 1, { 2 } }, fn = f }))
        assert.same({ 1, { 2 } }, conf.anything)
        assert.equal(f, conf.fn)
        local _, err = schema.validate(n, { fn = "f" })
        assert.equal("fn: expected a function, got string", err)
      end)
    end)

    it("deep-copies defaults: no two configs share a table", function()
      local d = { fields = { list = { type = "array", elements = { type = "string" },
                                      default = { "a" }, description = "d" },
                             any = { type = "any", default = { x = { 1 } }, description = "d" } } }
      local a = assert(schema.validate(d, {}))
      local b = assert(schema.validate(d, {}))
      assert.are_not.equal(a.list, b.list)
      assert.are_not.equal(a.list, d.fields.list.default)
      assert.are_not.equal(a.any.x, b.any.x)
      a.list[2] = "b"
      assert.same({ "a" }, b.list)
      assert.same({ "a" }, d.fields.list.default)
    end)

    it("runs custom checks on fields and on the whole conf", function()
      local c = {
        fields = { even = { type = "integer", description = "d",
                            custom = function(v) return v % 2 == 0 or nil, "must be even" end } },
        custom = function(conf) return conf.even ~= 4 or nil, "4 is not allowed" end,
      }
      local _, err = schema.validate(c, { even = 3 }, "p")
      assert.equal("p.even: must be even", err)
      _, err = schema.validate(c, { even = 4 }, "p")
      assert.equal("p: 4 is not allowed", err)
      assert.same({ even = 2 }, schema.validate(c, { even = 2 }))
    end)

    it("rejects a conf that is not a table", function()
      local _, err = schema.validate(s, "x", "plugins[1](x)")
      assert.equal("plugins[1](x): expected a record, got string", err)
    end)
  end)

  describe("validate_entry", function()
    local plugin = { name = "demo", priority = 1,
                     schema = { fields = { a = { type = "number", default = 1 } } } }

    it("accepts name and fail_open next to the plugin's fields", function()
      local conf = assert(schema.validate_entry(plugin, { name = "demo", fail_open = true, a = 2 }))
      assert.same({ name = "demo", fail_open = true, a = 2 }, conf)
      conf = assert(schema.validate_entry(plugin, {}))
      assert.same({ name = "demo", fail_open = false, a = 1 }, conf)
    end)

    it("rejects a wrong fail_open or name", function()
      local _, err = schema.validate_entry(plugin, { fail_open = "yes" }, "plugins[1](demo)")
      assert.equal("plugins[1](demo).fail_open: expected a boolean, got string", err)
      _, err = schema.validate_entry(plugin, { name = "other" }, "plugins[1](demo)")
      assert.equal('plugins[1](demo).name: name "other" does not match the plugin "demo"', err)
    end)
  end)

  describe("check_schema", function()
    it("accepts a good schema and warns about missing descriptions", function()
      local ok, warnings = schema.check_schema({ fields = {
        a = { type = "string", description = "d" },
        b = { type = "record", description = "d", fields = { c = { type = "number" } } },
      } })
      assert.is_true(ok)
      assert.same({ "schema.b.c: field has no description" }, warnings)
    end)

    it("rejects fields without a type or with an unknown type or option", function()
      local _, err = schema.check_schema({ fields = { a = { description = "d" } } })
      assert.equal("schema.a: field has no type", err)
      _, err = schema.check_schema({ fields = { a = { type = "str" } } })
      assert.equal('schema.a: unknown type "str"', err)
      _, err = schema.check_schema({ fields = { a = { type = "string", defualt = "x" } } })
      assert.equal('schema.a: unknown field option "defualt"', err)
      _, err = schema.check_schema({ fields = { a = { type = "array", elements = {} } } })
      assert.equal("schema.a[]: field has no type", err)
    end)

    it("rejects a default that does not validate", function()
      local _, err = schema.check_schema({ fields = { a = { type = "integer", default = "1" } } })
      assert.equal("bad default: schema.a(default): expected an integer, got string", err)
      _, err = schema.check_schema({ fields = { a = { type = "string", one_of = { "x" },
                                                      default = "y" } } })
      assert.equal('bad default: schema.a(default): expected one of "x", got "y"', err)
    end)

    it("rejects misplaced options and bad patterns", function()
      local _, err = schema.check_schema({ fields = { a = { type = "boolean", min = 1 } } })
      assert.equal("schema.a: min does not apply to type boolean", err)
      _, err = schema.check_schema({ fields = { a = { type = "string", pattern = "[a" } } })
      assert.equal("schema.a: bad Lua pattern: missing ]", err)
      _, err = schema.check_schema({ fields = { a = { type = "string", elements = { type = "string" } } } })
      assert.equal("schema.a: elements applies to arrays only", err)
      _, err = schema.check_schema({ fields = { fail_open = { type = "boolean" } } })
      assert.equal("schema.fail_open: reserved for every plugin entry", err)
    end)
  end)

  describe("check_plugin", function()
    it("checks the module shape", function()
      assert.truthy(schema.check_plugin({ name = "x", priority = 1, schema = { fields = {} },
                                          request = function() end }))
      local _, err = schema.check_plugin({ name = "x", priority = "1" })
      assert.equal("plugin(x): priority must be a number", err)
      _, err = schema.check_plugin({ name = "x", priority = 1, request = true })
      assert.equal("plugin(x).request: expected a function, got boolean", err)
    end)
  end)
end)

describe("luaproxy.schema.check_lua_pattern", function()
  local check = require("luaproxy.schema").check_lua_pattern
  it("accepts good patterns", function()
    for _, p in ipairs({ "^/a/(%d+)$", "[%]]", "[]x]", "[^]]", "%b()", "%f[%w]%w+", "()", "a%%" }) do
      assert.is_true(check(p), p)
    end
  end)
  it("rejects bad ones, even past the first mismatch", function()
    for _, p in ipairs({ "^/(%d+", "a)", "[a", "%", "%b(", "%fx", "^/x[%" }) do
      local ok, err = check(p)
      assert.is_nil(ok, p)
      assert.matches("^bad Lua pattern", err)
    end
  end)
end)

describe("check_lua_pattern capture count", function()
  it("counts captures outside sets and escapes", function()
    local check = require("luaproxy.schema").check_lua_pattern
    assert.same({ true, 0 }, { check("^/a%(b[(]") })
    assert.same({ true, 3 }, { check("^/(a)(b(c))") })
    assert.same({ true, 1 }, { check("()") })
  end)
end)

describe("luaproxy.schema config types and options", function()
  local s = {
    fields = {
      wait = { type = "duration", default = 1.5, description = "d" },
      short = { type = "duration", min = 0.1, max = 10, description = "d" },
      at = { type = "address", description = "d" },
      to = { type = "upstream", description = "d" },
      pair = {
        type = "record", description = "d",
        coerce = function(v) if type(v) == "string" then return { a = v } end return v end,
        fields = { a = { type = "string", description = "d" }, b = { type = "string", description = "d" } },
        custom = function(p, ctx)
          if p.b and not p.a then return nil, "needs a", "b" end
          if ctx and ctx.forbid == p.a then return nil, "forbidden" end
          return true
        end,
      },
      pw = { type = "string", secret = true, description = "d" },
    },
  }

  it("checks durations", function()
    assert.same({ wait = 1.5 }, assert(schema.validate(s, {})))
    local _, err = schema.validate(s, { wait = -1 })
    assert.equal("wait: value -1 is below the minimum 0", err)
    _, err = schema.validate(s, { wait = math.huge })
    assert.equal("wait: expected a finite number of seconds", err)
    _, err = schema.validate(s, { short = 0.05 })
    assert.equal("short: value 0.05 is below the minimum 0.1", err)
    _, err = schema.validate(s, { wait = "5s" })
    assert.equal("wait: expected a number of seconds, got string", err)
  end)

  it("checks addresses without DNS", function()
    for _, a in ipairs({ "127.0.0.1:80", "[::1]:8080", ":80", "name.example:443" }) do
      assert.is_truthy(schema.validate(s, { at = a }), a)
    end
    for a, want in pairs({ nohost = "has no :port", ["h:99999"] = "invalid port",
                           ["h:"] = "invalid port", ["[::1]80"] = "is not [ipv6]:port" }) do
      local _, err = schema.validate(s, { at = a })
      assert.matches(want, err, 1, true)
      assert.matches("^at: ", err)
    end
  end)

  it("checks upstream names when the context has them", function()
    assert.is_truthy(schema.validate(s, { to = "anything" }))
    local ctx = { upstreams = { app = true } }
    assert.is_truthy(schema.validate(s, { to = "app" }, nil, ctx))
    local _, err = schema.validate(s, { to = "ap" }, "p", ctx)
    assert.equal('p.to: no upstream named "ap"', err)
  end)

  it("coerces before checking, and custom checks may name a key below", function()
    assert.same({ a = "x" }, assert(schema.validate(s, { pair = "x" })).pair)
    local _, err = schema.validate(s, { pair = { b = "y" } })
    assert.equal("pair.b: needs a", err)
    _, err = schema.validate(s, { pair = "z" }, nil, { forbid = "z" })
    assert.equal("pair: forbidden", err)
  end)

  it("checks the new options in schemas", function()
    assert.is_true((schema.check_schema(s)))
    local _, err = schema.check_schema({ fields = { x = { type = "string", secret = "yes" } } })
    assert.equal("schema.x: secret must be a boolean", err)
    _, err = schema.check_schema({ fields = { x = { type = "string", coerce = 1 } } })
    assert.equal("schema.x: coerce must be a function", err)
  end)
end)
