-- `luaproxy new plugin NAME [--dir DIR]`: a plugin to start from, with everything around
-- it: the plugin and its schema (DIR/plugins/NAME.lua), a spec on the proxy.test double
-- (DIR/spec/NAME_spec.lua), a docs page stub (DIR/docs/NAME.md), a config that uses it
-- (DIR/NAME.example.lua, valid for `luaproxy -t`) and a .luarc.json that points LuaLS at
-- the installed annotations. It passes its own spec (`luaproxy test DIR`) and
-- `luaproxy check DIR` as written. Existing files are never overwritten.
local format = string.format

local M = {}

local USAGE = [[
usage: luaproxy new plugin NAME [--dir DIR]
writes, in DIR (default: the current directory):
  plugins/NAME.lua      the plugin: name, priority, schema, a request phase
  spec/NAME_spec.lua    its spec, on the proxy.test double: luaproxy test DIR
  docs/NAME.md          a docs page to fill in
  NAME.example.lua      a config using it: luaproxy -t -c DIR/NAME.example.lua
  .luarc.json           LuaLS settings: the proxy API's annotations (unless one exists)
NAME: letters, digits and _, starting with a letter. Existing files are kept: it refuses.]]

local PLUGIN = [[
-- {{name}}: sets a request header before the request goes upstream (a starting point:
-- replace it with what your plugin does). Docs: docs/{{name}}.md; spec: spec/{{name}}_spec.lua.
---@type proxy.Plugin
local P = {
  name = "{{name}}",
  priority = 1000, -- higher runs first; see docs/plugins.md "Priority" for the bundled ones
  schema = {
    fields = {
      header = { type = "string", default = "{{header}}", pattern = "^[%w-]+$",
                 description = "the request header to set" },
      value = { type = "string", default = "on", description = "its value" },
    },
  },
}

---@param req proxy.Request
---@param conf table
function P.request(req, conf)
  req:set_header(conf.header, conf.value)
end

return P
]]

local SPEC = [[
-- Run it with `luaproxy test` from this directory, or `luaproxy test DIR` from anywhere.
local T = require "proxy.test"
local plugin = require "{{name}}"

describe("{{name}}", function()
  before_each(function() T.reset() end)

  it("sets its header on the request sent upstream", function()
    local res = T.run(plugin, {}, { uri = "/items?x=1", headers = { Host = "shop.test" } })
    assert.equal("on", res.request_headers["{{header}}"])
    assert.equal("/items?x=1", res.uri)
  end)

  it("takes the header and value from its config", function()
    local res = T.run(plugin, { header = "X-Env", value = "staging" })
    assert.equal("staging", res.request_headers["X-Env"])
  end)

  it("refuses a config its schema does not allow", function()
    assert.has_error(function() T.run(plugin, { header = "bad header" }) end)
    assert.has_error(function() T.run(plugin, { value = 42 }) end)
  end)
end)
]]

local DOC = [[
# `{{name}}`

What it does, in one paragraph: which requests it acts on, what it changes, what it answers
locally. (Written by `luaproxy new plugin`: replace this text.)

## Config
| field | type | default | meaning |
|---|---|---|---|
| `header` | string | `"{{header}}"` | the request header to set |
| `value` | string | `"on"` | its value |

```lua
plugins = { { name = "{{name}}", header = "X-Env", value = "staging" } }
```

## Phases
- `request`: sets `header` to `value` on the request sent upstream.

## Testing
`luaproxy test .` runs `spec/{{name}}_spec.lua` on the `proxy.test` double;
`luaproxy check .` checks the code against the proxy's API.
]]

local CONFIG = [[
-- A config using the {{name}} plugin: `luaproxy -t -c {{name}}.example.lua` checks it, and
-- `luaproxy -c {{name}}.example.lua` serves it (plugins/ next to this file is on the plugin path).
return {
  listen = { { address = "127.0.0.1:8080" } },
  upstreams = { app = { targets = { "127.0.0.1:9001" } } },
  routes = {
    { match = { prefix = "/" }, upstream = "app",
      plugins = { { name = "{{name}}", header = "{{header}}", value = "on" } } },
  },
}
]]

local LUARC = [[
{
  "$schema": "https://raw.githubusercontent.com/LuaLS/vscode-lua/master/setting/schema.json",
  "runtime.version": "LuaJIT",
  "workspace.library": ["{{types}}"],
  "workspace.checkThirdParty": false,
  "diagnostics.globals": ["proxy", "describe", "it", "before_each", "after_each", "setup", "teardown", "pending", "assert", "spy", "stub", "mock"]
}
]]

local function exists(path)
  local f = io.open(path, "r")
  if f then f:close() end
  return f ~= nil
end

local function json_str(s) return (s:gsub('[\\"]', "\\%0")) end

-- Writes the scaffold; returns the list of written paths, or nil, err (nothing written).
function M.write(name, dir, runtime_root)
  if type(name) ~= "string" or not name:match("^%a[%w_]*$") then
    return nil, format("invalid plugin name %q: letters, digits and _, starting with a letter",
      tostring(name))
  end
  local vars = { name = name, header = "X-" .. name:gsub("_", "-"),
    types = json_str(runtime_root .. "/lua/types") }
  local function fill(t) return (t:gsub("{{(%w+)}}", vars)) end
  local files = {
    { dir .. "/plugins/" .. name .. ".lua", fill(PLUGIN) },
    { dir .. "/spec/" .. name .. "_spec.lua", fill(SPEC) },
    { dir .. "/docs/" .. name .. ".md", fill(DOC) },
    { dir .. "/" .. name .. ".example.lua", fill(CONFIG) },
  }
  local luarc = dir .. "/.luarc.json"
  if not exists(luarc) then files[#files + 1] = { luarc, fill(LUARC) } end
  for _, f in ipairs(files) do
    if exists(f[1]) then return nil, f[1] .. " exists: nothing written" end
  end
  local q = function(s) return "'" .. s:gsub("'", "'\\''") .. "'" end
  if not os.execute("mkdir -p " .. q(dir .. "/plugins") .. " " .. q(dir .. "/spec") .. " "
      .. q(dir .. "/docs")) then
    return nil, "cannot create the directories in " .. dir
  end
  local written = {}
  for _, f in ipairs(files) do
    local fh, err = io.open(f[1], "w")
    if not fh then return nil, err end
    fh:write(f[2])
    fh:close()
    written[#written + 1] = f[1]
  end
  return written
end

function M.main(args, runtime_root)
  local what, name, dir = args[1], nil, "."
  local i = 2
  while i <= #args do
    local a = args[i]
    if a == "--dir" and args[i + 1] then dir = args[i + 1]; i = i + 1
    elseif a:sub(1, 6) == "--dir=" then dir = a:sub(7)
    elseif a == "-h" or a == "--help" then print(USAGE) return 0
    elseif not name and a:sub(1, 1) ~= "-" then name = a
    else io.stderr:write(USAGE, "\n") return 2 end
    i = i + 1
  end
  if what == "-h" or what == "--help" then print(USAGE) return 0 end
  if what ~= "plugin" or not name then io.stderr:write(USAGE, "\n") return 2 end
  local written, err = M.write(name, dir, runtime_root)
  if not written then
    io.stderr:write("luaproxy new plugin: ", err, "\n")
    return 2
  end
  for _, f in ipairs(written) do print("wrote " .. f) end
  print(format("next: luaproxy test %s && luaproxy check %s", dir, dir))
  return 0
end

return M
