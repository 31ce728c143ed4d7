-- A config written as data: JSON (lua-cjson) or YAML (libyaml, from C), chosen by the
-- file's extension. The decoded table goes through the same schema as a Lua config's
-- (luaproxy.config.check); this module only turns the file into that table, so a data
-- config and a Lua config returning the same table are the same config.
--
-- Why data at all: generated configs (100,000 routes) are past what LuaJIT compiles as one
-- chunk (65,536 constants), and configs kept in etcd or produced by tools are data, not
-- code. What data cannot say is a Lua function: a route's `handler` names a module instead,
-- and plugin code lives in plugin files (docs/config-formats.md).
--
-- Errors read `<file>:<line>:<column>: <problem>` where the parser says where, and
-- `<file>: <key path>: <problem>` for what the schema cannot see (a null in a list).
local type, pairs, tostring, tonumber = type, pairs, tostring, tonumber
local find, format, lower, sub, match = string.find, string.format, string.lower,
  string.sub, string.match

local M = {}

-- "json", "yaml" or nil (a Lua config), by the path's extension, case-insensitively.
function M.format(path)
  if type(path) ~= "string" then return nil end
  local ext = match(lower(path), "%.([%a]+)$")
  if ext == "json" then return "json" end
  if ext == "yaml" or ext == "yml" then return "yaml" end
  return nil
end

local function read_file(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local s = f:read("*a")
  f:close()
  if not s then return nil, "cannot read" end
  return s
end

-- Line and column (1-based) of byte offset `pos` (1-based) in `s`.
local function line_col(s, pos)
  local line, start = 1, 1
  while true do
    local nl = find(s, "\n", start, true)
    if not nl or nl >= pos then break end
    line, start = line + 1, nl + 1
  end
  return line, pos - start + 1
end

-- Removes the parsers' null sentinel: a null member of a map counts as absent (as a nil
-- field of a Lua table does); a null in a list would leave a hole, so it is an error, whose
-- key path is built on the way back (nothing is built for a good file: 100k routes).
local function strip_nulls(v, null)
  for k, x in pairs(v) do
    if x == null then
      if type(k) == "number" then return nil, format("[%d]", k), "null is not allowed in a list" end
      v[k] = nil
    elseif type(x) == "table" then
      local ok, at, why = strip_nulls(x, null)
      if not ok then
        if type(k) == "number" then return nil, format("[%d]", k) .. at, why end
        return nil, "." .. tostring(k) .. at, why
      end
    end
  end
  return true
end

local function check_nulls(t, null, path)
  local ok, at, why = strip_nulls(t, null)
  if ok then return t end
  return nil, format("%s: %s: %s", path, (at:gsub("^%.", "")), why)
end

-- "routes[1].match" from the keys and indices of the enclosing containers, as the schema
-- writes a key path; "" at the top level.
local function key_path(frames, n)
  local out = {}
  for i = 1, n do
    local k = frames[i]
    if type(k) == "number" then out[#out + 1] = format("[%d]", k)
    else out[#out + 1] = (i > 1 and "." or "") .. tostring(k) end
  end
  return table.concat(out)
end

local function dup_message(path, line, col, key, where, first_line)
  return format("%s:%d:%d: duplicate key %q %s (first at line %d)", path, line, col,
    tostring(key), where == "" and "at the top level" or "in " .. where, first_line)
end

-- lua-cjson keeps the last of two equal names in an object silently; RFC 8259 says names
-- SHOULD be unique, and a config that says `listen` twice is a mistake either way. One pass
-- over text cjson has already accepted (so it is valid JSON), byte by byte through an FFI
-- pointer (a loop LuaJIT compiles; string.find between tokens took twice as long as cjson's
-- decode): each nesting level remembers its object's keys, and nothing but the keys is
-- built unless a duplicate is found (100,000 routes: docs/config-formats.md).
-- seen[d][key] is the offset of the key's last occurrence at depth d; it belongs to the
-- current object when it is past the object's opening brace, so one table per depth
-- serves every object at that depth without clearing.
local ffi = require("ffi")
local function json_duplicate(src, unescape)
  local p = ffi.cast("const uint8_t *", src)
  local n = #src
  local depth, i = 0, 0
  local is_obj, opened, want_key, seen = {}, {}, {}, {}
  while i < n do
    local c = p[i]
    if c == 34 then -- '"': a string, up to the first quote not escaped
      local start, escaped = i, false
      i = i + 1
      c = p[i]
      while c ~= 34 do
        if c == 92 then escaped, i = true, i + 1 end
        i = i + 1
        c = p[i]
      end
      if want_key[depth] then -- only ever true in an object
        want_key[depth] = false
        local key = escaped and unescape(sub(src, start + 1, i + 1))
          or sub(src, start + 2, i)
        local keys = seen[depth]
        local prev = keys[key]
        if prev and prev > opened[depth] then return key, start + 1, prev end
        keys[key] = start + 1
      end
    elseif c == 123 then -- '{'
      depth = depth + 1
      is_obj[depth], opened[depth], want_key[depth] = true, i + 1, true
      if not seen[depth] then seen[depth] = {} end
    elseif c == 91 then -- '['
      depth = depth + 1
      is_obj[depth], want_key[depth] = false, false
    elseif c == 44 then -- ','
      if is_obj[depth] then want_key[depth] = true end
    elseif c == 125 or c == 93 then -- '}' or ']'
      depth = depth - 1
    end
    i = i + 1
  end
  return nil
end

-- The key path of the map holding the duplicate at offset `stop_at`: a second, slower
-- pass up to it that also counts array elements, run only to word the error.
local function json_path_at(src, stop_at, unescape)
  local frames, depth, pos = {}, 0, 1
  local is_obj, want_key = {}, {}
  local byte = string.byte
  while true do
    local at = find(src, '[{}%[%],"]', pos)
    if not at or at >= stop_at then return key_path(frames, depth - 1) end
    local c = byte(src, at)
    if c == 34 then
      local stop, escaped = at, false
      repeat
        stop = find(src, '["\\]', stop + 1)
        if byte(src, stop) == 92 then escaped, stop = true, stop + 1 else break end
      until false
      if is_obj[depth] and want_key[depth] then
        want_key[depth] = false
        frames[depth] = escaped and unescape(sub(src, at, stop)) or sub(src, at + 1, stop - 1)
      end
      pos = stop + 1
    elseif c == 123 or c == 91 then
      depth = depth + 1
      is_obj[depth], want_key[depth] = c == 123, true
      if c == 91 then frames[depth] = 1 end
      pos = at + 1
    elseif c == 44 then
      if is_obj[depth] then want_key[depth] = true else frames[depth] = frames[depth] + 1 end
      pos = at + 1
    else
      depth = depth - 1
      pos = at + 1
    end
  end
end

local cjson_dec
local function decode_json(src, path)
  if not cjson_dec then
    cjson_dec = require("cjson").new()
    -- Deep configs are fine; a runaway nesting is refused rather than overflowing the C stack.
    cjson_dec.decode_max_depth(200)
    -- 1e400 and friends are not values a config means.
    cjson_dec.decode_invalid_numbers(false)
  end
  local ok, t = pcall(cjson_dec.decode, src)
  if not ok then
    local msg = tostring(t)
    local pos = tonumber(match(msg, "at character (%d+)"))
    msg = msg:gsub("^.-:%d+: ", "") -- a Lua error position, if any
    if pos then
      local line, col = line_col(src, pos)
      return nil, format("%s:%d:%d: invalid JSON: %s", path, line, col, msg)
    end
    return nil, format("%s: invalid JSON: %s", path, msg)
  end
  if type(t) ~= "table" or #t > 0 then
    return nil, format("%s: the file must hold a JSON object, got %s", path,
      t == cjson_dec.null and "null" or type(t) == "table" and "an array" or type(t))
  end
  local dup, at, first = json_duplicate(src, cjson_dec.decode)
  if dup then
    local line, col = line_col(src, at)
    return nil, dup_message(path, line, col, dup, json_path_at(src, at, cjson_dec.decode),
      (line_col(src, first)))
  end
  return check_nulls(t, cjson_dec.null, path)
end

-- Plain (unquoted) scalars read by YAML 1.2's core schema, not lyaml's YAML 1.1 default:
-- `on`, `no`, `8:30` or `0b1` stay strings, where YAML 1.1 makes them a boolean, a number
-- of minutes (sexagesimal) or binary; the core schema is what JSON-minded tools write.
local CORE_BOOL = { ["true"] = true, True = true, TRUE = true,
                    ["false"] = false, False = false, FALSE = false }
local CORE_NULL = { [""] = true, ["~"] = true, null = true, Null = true, NULL = true }
local function core_scalar(null)
  return function(v)
    if CORE_NULL[v] then return null end
    local b = CORE_BOOL[v]
    if b ~= nil then return b end
    if find(v, "^[-+]?%d+$") then return tonumber(v) end
    if find(v, "^0o[0-7]+$") then return tonumber(sub(v, 3), 8) end
    if find(v, "^0x%x+$") then return tonumber(sub(v, 3), 16) end
    if find(v, "^[-+]?%.?%d[%d]*%.?%d*[eE]?[-+]?%d*$") or find(v, "^[-+]?%d+%.%d*$") then
      local n = tonumber(v)
      if n then return n end
    end
    if v == ".inf" or v == ".Inf" or v == ".INF" or v == "+.inf" then return math.huge end
    if v == "-.inf" or v == "-.Inf" or v == "-.INF" then return -math.huge end
    if v == ".nan" or v == ".NaN" or v == ".NAN" then return 0 / 0 end
    return v
  end
end

-- libyaml and lyaml keep the last of two equal keys in a mapping silently, where YAML 1.2
-- requires keys to be unique: a second pass over libyaml's events (run once the file has
-- loaded, so it is well-formed) finds a key already seen in the same mapping, with its
-- mark. Keys compare as the loaded table's keys do: a plain scalar by its core-schema value
-- (`404` and `0x194` are the same key), any other scalar by its text. A merge key (`<<`),
-- whose keys an explicit key may override, and keys that are themselves collections or
-- aliases are not compared.
local function yaml_duplicate(yaml, src, scalar)
  local depth = 0
  local is_map, want_key, seen, at = {}, {}, {}, {}
  for ev in yaml.parser(src) do
    local t = ev.type
    if t == "SCALAR" or t == "ALIAS" or t == "MAPPING_START" or t == "SEQUENCE_START" then
      if is_map[depth] then
        if want_key[depth] then
          want_key[depth] = false
          local key = "?"
          if t == "SCALAR" then
            key = ev.value
            if ev.style == "PLAIN" and not ev.tag then key = scalar(key) end
            if key == key and not (key == "<<" and ev.style == "PLAIN") then
              local first = seen[depth][key]
              if first then
                return key, ev.start_mark.line + 1, ev.start_mark.column + 1, first,
                  key_path(at, depth - 1)
              end
              seen[depth][key] = ev.start_mark.line + 1
            end
          end
          at[depth] = key
        else
          want_key[depth] = true
        end
      elseif depth > 0 then
        at[depth] = at[depth] + 1
      end
      if t == "MAPPING_START" then
        depth = depth + 1
        is_map[depth], want_key[depth], seen[depth] = true, true, {}
      elseif t == "SEQUENCE_START" then
        depth = depth + 1
        is_map[depth], at[depth] = false, 0
      end
    elseif t == "MAPPING_END" or t == "SEQUENCE_END" then
      depth = depth - 1
    end
  end
  return nil
end

-- libyaml's "did not find expected node content" at a `[` is, in a config, most often an
-- unquoted IPv6 address: `[::1]:8080` starts a flow sequence.
local function yaml_hint(src, msg, line, col)
  if not find(msg, "did not find expected node content", 1, true) then return msg end
  local l = 1
  for text in (src .. "\n"):gmatch("([^\n]*)\n") do
    if l == line then
      if sub(text, col, col) == "[" then
        return msg .. '; a value starting with "[" is a flow sequence: quote it, as an IPv6 '
          .. 'address must be (address: "[::1]:8080")'
      end
      break
    end
    l = l + 1
  end
  return msg
end

-- The C reader (engine/yaml_load.c): one pass over libyaml's events that builds the table
-- and finds duplicate keys and nulls in lists on the way (100,000 routes: 15 s of CPU
-- through lyaml and a second parse, under 1.5 s this way). In the proxy it is the engine's
-- module luaproxy.yaml_native; under busted, the same code from the native library
-- (LP_NATIVE_LIB); without either, lyaml below.
local native_yaml
local function yaml_native()
  if native_yaml == nil then
    local ok, m = pcall(require, "luaproxy.yaml_native")
    if not ok then
      m = nil
      local lib = os.getenv("LP_NATIVE_LIB")
      local open = lib and lib ~= "" and package.loadlib(lib, "luaopen_luaproxy_yaml_native")
      if open then m = open() end
    end
    native_yaml = m or false
  end
  return native_yaml
end

local NATIVE_NULL = setmetatable({}, { __tostring = function() return "null" end })

local function decode_yaml_native(y, src, path)
  local t, what, a, b, c, d, e = y.load(src, NATIVE_NULL)
  if what == "syntax" then
    return nil, format("%s:%d:%d: invalid YAML: %s", path, b, c, yaml_hint(src, a, b, c))
  elseif what == "dup" then
    return nil, dup_message(path, b, c, a, e, d)
  elseif what == "null" then
    return nil, format("%s: %s: null is not allowed in a list", path, a)
  elseif what == "docs" then
    if a == 0 then return nil, format("%s: the file holds no YAML document", path) end
    return nil, format("%s: the file holds %d YAML documents, a config is one", path, a)
  end
  if type(t) ~= "table" or t == NATIVE_NULL or #t > 0 then
    return nil, format("%s: the file must hold a YAML mapping, got %s", path,
      t == NATIVE_NULL and "null" or type(t) == "table" and "a sequence" or type(t))
  end
  return t
end

local yaml_opts
local force_lyaml = false -- M.yaml_reader("lyaml"): the specs compare the two readers
local function decode_yaml(src, path)
  local y = not force_lyaml and yaml_native()
  if y then return decode_yaml_native(y, src, path) end
  local ok_mod, lyaml = pcall(require, "lyaml")
  if not ok_mod then
    return nil, format("%s: YAML configs need lyaml (Debian: lua-yaml): %s", path,
      tostring(lyaml))
  end
  yaml_opts = yaml_opts or { all = true, implicit_scalar = core_scalar(lyaml.null) }
  local ok, t = pcall(lyaml.load, src, yaml_opts)
  if not ok then
    local msg = tostring(t):gsub("^.-%.lua:%d+: ", "")
    -- lyaml reports "line:column: problem" (1-based)
    local line, col, rest = match(msg, "^(%d+):(%d+): (.*)$")
    if line then
      rest = yaml_hint(src, rest, tonumber(line), tonumber(col))
      return nil, format("%s:%s:%s: invalid YAML: %s", path, line, col, rest)
    end
    return nil, format("%s: invalid YAML: %s", path, msg)
  end
  if type(t) ~= "table" or #t == 0 then
    return nil, format("%s: the file holds no YAML document", path)
  end
  if #t > 1 then
    return nil, format("%s: the file holds %d YAML documents, a config is one", path, #t)
  end
  t = t[1]
  local null = lyaml.null
  if type(t) ~= "table" or t == null or #t > 0 then
    return nil, format("%s: the file must hold a YAML mapping, got %s", path,
      t == null and "null" or type(t) == "table" and "a sequence" or type(t))
  end
  local dup, line, col, first, where = yaml_duplicate(require("yaml"), src,
    yaml_opts.implicit_scalar)
  if dup then return nil, dup_message(path, line, col, dup, where, first) end
  return check_nulls(t, null, path)
end

-- Which YAML reader load() uses: "native" (engine/yaml_load.c, when present) or "lyaml";
-- returns the one in use before. For the specs, which check they agree.
function M.yaml_reader(which)
  local was = (not force_lyaml and yaml_native()) and "native" or "lyaml"
  if which then force_lyaml = which == "lyaml" end
  return was
end

-- Reads and decodes the file: the table, or nil and "<file>[:line:col]: problem".
function M.load(path)
  local fmt = M.format(path)
  if not fmt then return nil, format("%s: not a JSON or YAML file", tostring(path)) end
  local src, err = read_file(path)
  if not src then return nil, format("cannot open %s: %s", path, tostring(err)) end
  -- A UTF-8 byte order mark, as some editors write, is not part of the document.
  if sub(src, 1, 3) == "\239\187\191" then src = sub(src, 4) end
  if fmt == "json" then return decode_json(src, path) end
  return decode_yaml(src, path)
end

-- A chunk standing for the file, as loadfile would return for a Lua config: the engine
-- evaluates whatever this returns (lua_vm.c). nil, message when the file does not decode.
function M.loader(path)
  local t, err = M.load(path)
  if not t then return nil, err end
  return function() return t end
end

-- The hint a Lua config past LuaJIT's per-function constant limit gets (lua_vm.c).
function M.limit_hint(msg)
  if type(msg) == "string" and find(msg, "has more than %d+ constants") then
    return msg .. "; a config this large is data, not code: write it as JSON or YAML "
      .. "(a file ending in .json, .yaml or .yml), or build the table in a loop "
      .. "(docs/config-formats.md)"
  end
  return msg
end

return M
