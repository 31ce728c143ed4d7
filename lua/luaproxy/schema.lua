-- Plugin config schemas: validation with defaults, and a check of the schemas themselves.
--
-- A schema is data: `{ fields = { name = <field>, ... }, custom = fn? }`, a field is
-- `{ type = ..., required =, default =, one_of =, min =, max =, pattern =, description =,
-- elements = <field> (array), keys = <field>, values = <field> (map), fields = {...} (record),
-- custom = fn (extension: `fn(value, ctx) -> true | nil, "problem" [, "sub.key"]`),
-- coerce = fn (`fn(value) -> value'`, before the checks: e.g. a string into a record),
-- secret = true (never shown: GET /config redacts it), doc_default =, doc_inline =,
-- doc_order = { names } (for the README's key table, see schema_doc.lua) }`.
--
-- Types beyond Lua's: `integer`; `duration` (seconds, a finite number >= 0 unless min says
-- otherwise); `address` ("host:port", "[v6]:port" or ":port", checked without DNS);
-- `upstream` (a string naming an upstream of the config: checked when the validation
-- context `ctx` carries `upstreams`, a set of names, as it does when a config loads);
-- `regex` (a string that must compile as a PCRE2 pattern with the field's `options`, ngx.re
-- letters: compiled with luaproxy.re at validation, so a bad pattern fails the load with
-- `<path>: invalid regex: <PCRE2's message> at offset N`).
--
-- This runs when a config is loaded, never per request, so it favours clear messages over
-- speed. Errors read `<path>.<key>: <problem>`, the caller passing the prefix, e.g.
-- `plugins[2](headers).request.set.X-Env: expected a string, got number`.
local type, pairs, ipairs, next, tostring, tonumber = type, pairs, ipairs, next, tostring, tonumber
local floor, huge = math.floor, math.huge
local concat, sort = table.concat, table.sort
local find, format, sub = string.find, string.format, string.sub

local M = {}

M.types = {
  string = true, number = true, integer = true, boolean = true, array = true, map = true,
  record = true, ["function"] = true, any = true, duration = true, address = true,
  upstream = true, regex = true,
}

-- Options a field may carry, and for which types they mean something.
local FIELD_OPTIONS = {
  type = true, required = true, default = true, one_of = true, min = true, max = true,
  pattern = true, description = true, elements = true, keys = true, values = true,
  fields = true, custom = true, coerce = true, secret = true, doc_default = true,
  doc_inline = true, doc_order = true, options = true,
}

-- Deep copy of plain data (defaults, `any` values). Functions and other values are shared;
-- `seen` keeps cycles and shared subtables shaped as in the source.
local function deep_copy(v, seen)
  if type(v) ~= "table" then return v end
  seen = seen or {}
  if seen[v] then return seen[v] end
  local out = {}
  seen[v] = out
  for k, x in pairs(v) do
    out[deep_copy(k, seen)] = deep_copy(x, seen)
  end
  return setmetatable(out, getmetatable(v))
end
M.deep_copy = deep_copy

local function join(path, key)
  if path == nil or path == "" then return tostring(key) end
  return path .. "." .. tostring(key)
end

local function describe(v)
  if type(v) == "string" then return format("%q", v) end
  return tostring(v)
end

local function an(t)
  return (t == "integer" or t == "array" or t == "any") and "an " .. t or "a " .. t
end

-- A Lua table counts as an array when its keys are exactly 1..n (the empty table is both an
-- empty array and an empty map).
local function is_array(t)
  local n = #t
  local count = 0
  for k in pairs(t) do
    if type(k) ~= "number" or k < 1 or k > n or floor(k) ~= k then return false end
    count = count + 1
  end
  return count == n
end

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  sort(keys, function(a, b)
    local ta, tb = type(a), type(b)
    if ta ~= tb then return ta < tb end
    if ta == "string" or ta == "number" then return a < b end
    return tostring(a) < tostring(b)
  end)
  return keys
end

-- Checks the syntax of a Lua pattern without running it: find("", p) alone misses errors
-- past the first mismatch (an unclosed capture after a literal). For `custom =` in schemas
-- whose strings are patterns. Returns true and the number of captures, or nil, "problem".
function M.check_lua_pattern(p)
  if type(p) ~= "string" then return nil, "a pattern must be a string" end
  local i, n, depth, count = 1, #p, 0, 0
  if sub(p, 1, 1) == "^" then i = 2 end
  while i <= n do
    local c = sub(p, i, i)
    if c == "%" then
      local x = sub(p, i + 1, i + 1)
      if x == "" then return nil, "bad Lua pattern: ends with %" end
      if x == "b" then
        if i + 3 > n then return nil, "bad Lua pattern: %b needs two characters" end
        i = i + 4
      elseif x == "f" then
        if sub(p, i + 2, i + 2) ~= "[" then return nil, "bad Lua pattern: missing [ after %f" end
        i = i + 2
      else
        i = i + 2
      end
    elseif c == "[" then
      local j = i + 1
      if sub(p, j, j) == "^" then j = j + 1 end
      if sub(p, j, j) == "]" then j = j + 1 end
      while true do
        local d = sub(p, j, j)
        if d == "" then return nil, "bad Lua pattern: missing ]" end
        if d == "]" then break end
        j = j + (d == "%" and 2 or 1)
      end
      i = j + 1
    elseif c == "(" then
      depth = depth + 1
      count = count + 1
      if count > 32 then return nil, "bad Lua pattern: too many captures" end
      i = i + 1
    elseif c == ")" then
      depth = depth - 1
      if depth < 0 then return nil, "bad Lua pattern: ) without (" end
      i = i + 1
    else
      i = i + 1
    end
  end
  if depth ~= 0 then return nil, "bad Lua pattern: unfinished capture" end
  local ok, err = pcall(find, "", p)
  if not ok then return nil, "bad Lua pattern: " .. tostring(err) end
  return true, count
end

-- Rejects %N references, in a template compiled to { literal, N, literal, ... }, to captures
-- the pattern does not have (%1 is the whole match when it has none, like gsub). Shared by
-- the router's rewrite and the redirect plugin's `to`.
function M.check_captures(tpl, pattern)
  if type(tpl) ~= "table" then return true end
  local _, count = M.check_lua_pattern(pattern)
  local max = count == 0 and 1 or count
  for i = 2, #tpl, 2 do
    local k = tpl[i]
    if type(k) == "number" and k > max then
      return nil, "%" .. k .. " refers to a capture the pattern does not have (" .. count
        .. (count == 1 and " capture)" or " captures)")
    end
  end
  return true
end

-- "host:port", "[v6]:port" or ":port" (engine/config.c lp_addr_split reads it the same
-- way). Returns true or nil, "problem".
function M.check_address(s)
  if type(s) ~= "string" then return nil, "expected an address string \"host:port\"" end
  local host, port
  if sub(s, 1, 1) == "[" then
    host, port = s:match("^%[([^%]]*)%]:(.*)$")
    if not host then return nil, format("%q is not [ipv6]:port", s) end
  else
    host, port = s:match("^(.*):(.*)$")
    if not host then return nil, format("%q has no :port", s) end
  end
  if #host > 255 then return nil, format("%q: host too long", s) end
  if not port:match("^%d+$") or tonumber(port) > 65535 then
    return nil, format("%q has an invalid port", s)
  end
  return true
end

local validate_value

-- Key paths are built only for an error: a config with 100,000 routes would otherwise build
-- a million strings that nobody reads. The walk keeps the keys on a stack `P` (P.base: the
-- caller's prefix string or nil; P[1..d]: record field names and map keys as strings, array
-- indexes as numbers) and `path(P, d)` renders "base.key[3].key" as join() would.
local function path(P, d)
  local s = P.base
  for i = 1, d do
    local k = P[i]
    if type(k) == "number" then s = (s or "") .. "[" .. k .. "]" else s = join(s, k) end
  end
  return s
end

-- A record schema's field names, sorted once (schemas are data that does not change while
-- configs are checked against them), so the defaults and errors come in a fixed order.
local field_order = setmetatable({}, { __mode = "k" })
local field_needed = setmetatable({}, { __mode = "k" })

-- Validates a record's keys against `fields`; returns a new table with defaults filled in.
local function validate_record(fields, value, P, d, ctx)
  local out = {}
  for k in pairs(value) do
    if type(k) ~= "string" or fields[k] == nil then
      -- the first unknown key in sorted order, as the message always named
      for _, k2 in ipairs(sorted_keys(value)) do
        if type(k2) ~= "string" or fields[k2] == nil then
          return nil, join(path(P, d), k2) .. ": unknown field"
        end
      end
    end
  end
  local names = field_order[fields]
  if not names then
    names = sorted_keys(fields)
    field_order[fields] = names
    -- The fields an absent key still means something for (a default, or required): the
    -- others are skipped without a call (100k routes have a dozen absent keys each).
    local needed = {}
    for i = 1, #names do
      local f = fields[names[i]]
      needed[names[i]] = f.default ~= nil or f.required or nil
    end
    field_needed[fields] = needed
  end
  local needed = field_needed[fields]
  d = d + 1
  for i = 1, #names do
    local name = names[i]
    local fv = value[name]
    if fv ~= nil or needed[name] then
      P[d] = name
      local v, err = validate_value(fields[name], fv, P, d, ctx)
      if err then return nil, err end
      out[name] = v
    end
  end
  return out
end

local function check_bounds(field, value, n, what, P, d)
  if field.min and n < field.min then
    return nil, format("%s: %s %s is below the minimum %s", path(P, d), what, tostring(n),
      tostring(field.min))
  end
  if field.max and n > field.max then
    return nil, format("%s: %s %s is above the maximum %s", path(P, d), what, tostring(n),
      tostring(field.max))
  end
  return true
end

-- Returns the validated value (a fresh table for table types), or nil, "path: problem".
-- A nil value takes a deep copy of the default, which is itself validated, so a record
-- default of `{}` comes back with its own fields' defaults filled in.
function validate_value(field, value, P, d, ctx)
  if field.coerce and value ~= nil then value = field.coerce(value) end
  if value == nil then
    if field.default == nil then
      if field.required then return nil, path(P, d) .. ": required field missing" end
      return nil
    end
    value = deep_copy(field.default)
  end

  local ft, vt = field.type, type(value)
  local out = value
  if ft == "any" then
    out = deep_copy(value)
  elseif ft == "integer" then
    if vt ~= "number" then
      return nil, format("%s: expected an integer, got %s", path(P, d), vt)
    end
    if value ~= value or value == huge or value == -huge or floor(value) ~= value then
      return nil, format("%s: expected an integer, got %s", path(P, d), tostring(value))
    end
  elseif ft == "number" or ft == "duration" then
    if vt ~= "number" then
      return nil, format("%s: expected a number%s, got %s", path(P, d),
        ft == "duration" and " of seconds" or "", vt)
    end
    if value ~= value then return nil, path(P, d) .. ": expected a number, got nan" end
    if ft == "duration" then
      if value == huge or value == -huge then
        return nil, path(P, d) .. ": expected a finite number of seconds"
      end
      if not field.min and value < 0 then
        return nil, format("%s: value %s is below the minimum 0", path(P, d), tostring(value))
      end
    end
  elseif ft == "address" or ft == "upstream" then
    if vt ~= "string" then
      return nil, format("%s: expected %s, got %s", path(P, d),
        ft == "address" and 'an address string "host:port"' or "an upstream name", vt)
    end
    if ft == "address" then
      local ok, err = M.check_address(value)
      if not ok then return nil, path(P, d) .. ": " .. err end
    elseif ctx and ctx.upstreams and not ctx.upstreams[value] then
      return nil, format("%s: no upstream named %s", path(P, d), describe(value))
    end
  elseif ft == "regex" then
    if vt ~= "string" then return nil, format("%s: expected a regex string, got %s", path(P, d), vt) end
    local ok, err = require("luaproxy.re").compile(value, field.options)
    if not ok then return nil, format("%s: invalid regex: %s", path(P, d), err) end
  elseif ft == "array" then
    if vt ~= "table" then return nil, format("%s: expected an array, got %s", path(P, d), vt) end
    if not is_array(value) then
      return nil, path(P, d) .. ": expected an array (keys 1..n), got a table with other keys"
    end
    out = {}
    local el = field.elements
    local di = d + 1
    for i = 1, #value do
      local v, err
      if el then
        P[di] = i
        v, err = validate_value(el, value[i], P, di, ctx)
        if err then return nil, err end
        if v == nil then return nil, path(P, di) .. ": required field missing" end
      else
        v = deep_copy(value[i])
      end
      out[i] = v
    end
  elseif ft == "map" then
    if vt ~= "table" then return nil, format("%s: expected a map, got %s", path(P, d), vt) end
    out = {}
    local kf, vf = field.keys, field.values
    local dk = d + 1
    for _, k in ipairs(sorted_keys(value)) do
      P[dk] = type(k) == "string" and k or tostring(k)
      local nk, err = k, nil
      if kf then
        nk, err = validate_value(kf, k, P, dk, ctx)
      elseif type(k) ~= "string" then
        err = format("%s: expected a string key, got %s", path(P, dk), type(k))
      end
      if err then return nil, err end
      local nv = value[k]
      if vf then
        nv, err = validate_value(vf, nv, P, dk, ctx)
        if err then return nil, err end
      else
        nv = deep_copy(nv)
      end
      out[nk] = nv
    end
  elseif ft == "record" then
    if vt ~= "table" then return nil, format("%s: expected a record, got %s", path(P, d), vt) end
    local err
    out, err = validate_record(field.fields or {}, value, P, d, ctx)
    if err then return nil, err end
  else -- string, boolean, function
    if vt ~= ft then
      return nil, format("%s: expected %s, got %s", path(P, d), an(ft), vt)
    end
  end

  if field.one_of then
    local found = false
    for _, allowed in ipairs(field.one_of) do
      if allowed == value then found = true break end
    end
    if not found then
      local list = {}
      for i, allowed in ipairs(field.one_of) do list[i] = describe(allowed) end
      return nil, format("%s: expected one of %s, got %s", path(P, d), concat(list, ", "),
        describe(value))
    end
  end

  if field.min or field.max then
    local ok, err = true, nil
    if ft == "number" or ft == "integer" or ft == "duration" then
      ok, err = check_bounds(field, value, value, "value", P, d)
    elseif ft == "string" then
      ok, err = check_bounds(field, value, #value, "length", P, d)
    elseif ft == "array" then
      ok, err = check_bounds(field, value, #value, "length", P, d)
    end
    if not ok then return nil, err end
  end

  if field.pattern and ft == "string" and not find(value, field.pattern) then
    return nil, format("%s: %s does not match the pattern %s", path(P, d), describe(value),
      describe(field.pattern))
  end

  if field.custom then
    local ok, err, key = field.custom(out, ctx)
    if not ok then
      local at = path(P, d)
      return nil, (key and join(at, key) or at) .. ": " .. tostring(err or "invalid value")
    end
  end
  return out
end

-- Validates `conf` (nil counts as `{}`) against `schema`. Returns a new table with the
-- defaults filled in (deep copies: no two configs share a table), or nil, "path.key: problem".
-- `ctx` (optional) is handed to custom checks; ctx.upstreams (a set of names) checks
-- fields of type upstream.
function M.validate(schema, conf, path, ctx)
  if conf == nil then conf = {} end
  if type(conf) ~= "table" then
    return nil, format("%s: expected a record, got %s", path or "conf", type(conf))
  end
  local out, err = validate_record(schema.fields or {}, conf, { base = path }, 0, ctx)
  if err then return nil, err end
  if schema.custom then
    local ok, cerr, key = schema.custom(out, ctx)
    if not ok then
      local where = key and join(path, key) or path
      return nil, (where and where ~= "" and where .. ": " or "") .. tostring(cerr or "invalid")
    end
  end
  return out
end

-- Validates one entry of a `plugins` list: the plugin's own fields plus `name` and
-- `fail_open` (boolean, default false), which every entry accepts. The returned conf keeps
-- both, so the runtime finds `conf.fail_open` next to the plugin's settings.
function M.validate_entry(plugin, entry, path, ctx)
  if entry == nil then entry = {} end
  if type(entry) ~= "table" then
    return nil, format("%s: expected a record, got %s", path or "plugin", type(entry))
  end
  local name, fail_open = entry.name, entry.fail_open
  if name ~= nil and name ~= plugin.name then
    return nil, format("%s: name %s does not match the plugin %s", join(path, "name"),
      describe(name), describe(plugin.name))
  end
  if fail_open ~= nil and type(fail_open) ~= "boolean" then
    return nil, format("%s: expected a boolean, got %s", join(path, "fail_open"),
      type(fail_open))
  end
  local rest = entry
  if name ~= nil or fail_open ~= nil then
    rest = {}
    for k, v in pairs(entry) do
      if k ~= "name" and k ~= "fail_open" then rest[k] = v end
    end
  end
  local conf, err = M.validate(plugin.schema or { fields = {} }, rest, path, ctx)
  if not conf then return nil, err end
  conf.name = plugin.name
  conf.fail_open = fail_open == true
  return conf
end

local check_field

local function check_fields(fields, path, warnings)
  if type(fields) ~= "table" then
    return nil, path .. ": fields must be a table of name = field"
  end
  for _, name in ipairs(sorted_keys(fields)) do
    if type(name) ~= "string" then
      return nil, join(path, tostring(name)) .. ": field names must be strings"
    end
    local ok, err = check_field(fields[name], join(path, name), warnings, true)
    if not ok then return nil, err end
  end
  return true
end

function check_field(field, path, warnings, named)
  if type(field) ~= "table" then return nil, path .. ": a field must be a table" end
  for k in pairs(field) do
    if not FIELD_OPTIONS[k] then
      return nil, format("%s: unknown field option %s", path, describe(k))
    end
  end
  local ft = field.type
  if ft == nil then return nil, path .. ": field has no type" end
  if not M.types[ft] then return nil, format("%s: unknown type %s", path, describe(ft)) end
  if named and field.description == nil then
    warnings[#warnings + 1] = path .. ": field has no description"
  end
  if field.description ~= nil and type(field.description) ~= "string" then
    return nil, path .. ": description must be a string"
  end
  if field.required ~= nil and type(field.required) ~= "boolean" then
    return nil, path .. ": required must be a boolean"
  end
  for _, opt in ipairs({ "min", "max" }) do
    if field[opt] ~= nil then
      if type(field[opt]) ~= "number" then return nil, path .. ": " .. opt .. " must be a number" end
      if ft ~= "number" and ft ~= "integer" and ft ~= "duration" and ft ~= "string"
         and ft ~= "array" then
        return nil, format("%s: %s does not apply to type %s", path, opt, ft)
      end
    end
  end
  if field.min and field.max and field.min > field.max then
    return nil, path .. ": min is above max"
  end
  if field.pattern ~= nil then
    if ft ~= "string" then return nil, path .. ": pattern applies to strings only" end
    if type(field.pattern) ~= "string" then return nil, path .. ": pattern must be a string" end
    local ok, err = M.check_lua_pattern(field.pattern)
    if not ok then return nil, path .. ": " .. err end
  end
  if field.options ~= nil then
    if ft ~= "regex" then return nil, path .. ": options applies to regexes only" end
    if type(field.options) ~= "string" or not find(field.options, "^[imsxuUaDJjo]*$") then
      return nil, path .. ": options must be a string of proxy.re option letters"
    end
  end
  if field.one_of ~= nil then
    if type(field.one_of) ~= "table" or #field.one_of == 0 or not is_array(field.one_of) then
      return nil, path .. ": one_of must be a non-empty list"
    end
  end
  for _, opt in ipairs({ "custom", "coerce" }) do
    if field[opt] ~= nil and type(field[opt]) ~= "function" then
      return nil, path .. ": " .. opt .. " must be a function"
    end
  end
  for _, opt in ipairs({ "secret", "doc_inline" }) do
    if field[opt] ~= nil and type(field[opt]) ~= "boolean" then
      return nil, path .. ": " .. opt .. " must be a boolean"
    end
  end
  if field.doc_default ~= nil and type(field.doc_default) ~= "string" then
    return nil, path .. ": doc_default must be a string"
  end
  if field.doc_order ~= nil and type(field.doc_order) ~= "table" then
    return nil, path .. ": doc_order must be a list of field names"
  end
  if field.elements ~= nil then
    if ft ~= "array" then return nil, path .. ": elements applies to arrays only" end
    local ok, err = check_field(field.elements, path .. "[]", warnings, false)
    if not ok then return nil, err end
  end
  for _, opt in ipairs({ "keys", "values" }) do
    if field[opt] ~= nil then
      if ft ~= "map" then return nil, path .. ": " .. opt .. " applies to maps only" end
      local ok, err = check_field(field[opt], path .. "." .. opt, warnings, false)
      if not ok then return nil, err end
    end
  end
  if field.keys ~= nil and field.keys.type ~= "string" and field.keys.type ~= "number"
     and field.keys.type ~= "integer" and field.keys.type ~= "any" then
    return nil, path .. ": map keys must be strings or numbers"
  end
  if field.fields ~= nil then
    if ft ~= "record" then return nil, path .. ": fields applies to records only" end
    local ok, err = check_fields(field.fields, path, warnings)
    if not ok then return nil, err end
  end
  if field.default ~= nil then
    local _, err = validate_value(field, field.default, { base = path .. "(default)" }, 0)
    if err then return nil, "bad default: " .. err end
  end
  return true
end

-- Checks a plugin's schema itself. Returns true, warnings (a list, possibly empty: fields
-- without a description) or nil, "path: problem".
function M.check_schema(schema, path)
  path = path or "schema"
  if type(schema) ~= "table" then return nil, path .. ": a schema must be a table" end
  for k in pairs(schema) do
    if k ~= "fields" and k ~= "custom" and k ~= "description" and k ~= "doc_order" then
      return nil, format("%s: unknown schema key %s", path, describe(k))
    end
  end
  if schema.custom ~= nil and type(schema.custom) ~= "function" then
    return nil, path .. ": custom must be a function"
  end
  local warnings = {}
  local ok, err = check_fields(schema.fields or {}, path, warnings)
  if not ok then return nil, err end
  for _, reserved in ipairs({ "name", "fail_open" }) do
    if (schema.fields or {})[reserved] then
      return nil, join(path, reserved) .. ": reserved for every plugin entry"
    end
  end
  return true, warnings
end

-- Checks a whole plugin module: name, priority, schema, phase functions, compile.
local PLUGIN_KEYS = {
  name = "string", priority = "number", schema = "table", version = "string",
  init_worker = "function", request = "function", upstream = "function",
  response = "function", response_body = "function", log = "function",
  compile = "function",
}

function M.check_plugin(plugin, path)
  path = path or "plugin"
  if type(plugin) ~= "table" then return nil, path .. ": a plugin module must return a table" end
  if type(plugin.name) ~= "string" or plugin.name == "" then
    return nil, path .. ": plugin has no name"
  end
  if type(plugin.priority) ~= "number" then
    return nil, path .. "(" .. plugin.name .. "): priority must be a number"
  end
  for k, v in pairs(plugin) do
    local want = PLUGIN_KEYS[k]
    if want and type(v) ~= want then
      return nil, format("%s(%s).%s: expected %s, got %s", path, plugin.name, tostring(k),
        an(want), type(v))
    end
  end
  return M.check_schema(plugin.schema or { fields = {} }, path .. "(" .. plugin.name .. ").schema")
end

return M
