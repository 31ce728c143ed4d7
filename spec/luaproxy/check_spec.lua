-- `luaproxy check` (lua/luaproxy/tools/check.lua): each of the 20 common mistakes kept in
-- tests/check/ is found at its line, and the bundled plugins, scripts and specs give no
-- warning at all. Needs luacheck (Debian: lua-check): without it this fails, never skips.
local check = require "luaproxy.tools.check"

local function files_in(dir)
  local p = io.popen("ls " .. dir .. "/*.lua")
  local out = {}
  for f in p:lines() do out[#out + 1] = f end
  p:close()
  return out
end

describe("luaproxy check", function()
  it("has luacheck", function()
    assert.truthy(check.luacheck())
  end)

  local fixtures = files_in("tests/check")
  it("keeps 20 mistakes as fixtures", function()
    assert.equal(20, #fixtures)
  end)

  for _, file in ipairs(fixtures) do
    it("finds the mistake in " .. file, function()
      local first = io.open(file):read("*l")
      local code, line = first:match("^%-%- expect: (%w+) (%d+)$")
      assert.truthy(code, file .. ": the first line must be -- expect: CODE LINE")
      local ws, note = check.check_files({ file })
      assert.is_nil(note)
      local found = {}
      for _, w in ipairs(ws) do
        if w.code == code and w.line == tonumber(line) then found[#found + 1] = w end
      end
      assert.truthy(#found > 0, file .. ": no " .. code .. " at line " .. line .. ", got:\n"
        .. table.concat((function()
          local t = {}
          for i, w in ipairs(ws) do t[i] = check.format(w) end
          return t
        end)(), "\n"))
    end)
  end

  it("gives no warning on the bundled plugins, scripts, specs and cookbook", function()
    local files = check.collect({ "plugins", "scripts", "spec", "docs/cookbook" })
    assert.truthy(#files > 50)
    local ws, note = check.check_files(files)
    assert.is_nil(note)
    local lines = {}
    for i, w in ipairs(ws) do lines[i] = check.format(w) end
    assert.same({}, lines)
  end)

  it("suggests the nearest name and the proxy equivalent of ngx", function()
    local ws = check.check_source([[
local P = { name = "x", priority = 1, schema = { fields = {} } }
function P.request(req)
  proxy.log.warning(req.cxt, ngx.now())
end
return P
]])
    local msgs = {}
    for _, w in ipairs(ws) do msgs[#msgs + 1] = w.message end
    local all = table.concat(msgs, "\n")
    assert.matches("did you mean proxy.log.warn?", all, 1, true)
    assert.matches("did you mean req.ctx?", all, 1, true)
    assert.matches("use proxy.now()", all, 1, true)
  end)

  it("reuses the results of an unchanged file (the memo a reload keeps)", function()
    local file = "tests/check/01_misspelled_method.lua"
    local ws, _, memo = check.check_files({ file })
    assert.equal("LP01", ws[1].code)
    assert.truthy(memo[file].src)
    -- Same text: the memo's results, not a new check (a planted result shows it).
    memo[file].ws = { { line = 9, column = 9, code = "X", message = "from the memo" } }
    local again = check.check_files({ file }, { memo = memo })
    assert.same({ { file = file, line = 9, column = 9, code = "X", message = "from the memo" } },
      again)
    -- Changed text: checked again.
    memo[file].src = "-- another text"
    again = check.check_files({ file }, { memo = memo })
    assert.equal("LP01", again[1].code)
  end)

  it("ignores names in strings and comments", function()
    local ws = check.check_source([=[
-- req:heder() in a comment, ngx.say too
local s = "req:heder() proxy.nope" .. [[ ngx.var ]]
return s
]=])
    assert.same({}, ws)
  end)
end)
