-- Helpers for the admin API (engine/admin.c): GET /config's JSON, made once per loaded
-- config in the config VM (engine/config.c), where the plugins' schemas are loaded.
local cjson = require "cjson"
local config_schema = require "luaproxy.config_schema"

local type, pairs, tostring = type, pairs, tostring
local find, lower = string.find, string.lower

local M = {}

local REDACTED = "<redacted>"

-- Key names whose values never leave the process, whatever the schema says.
local SECRET = { "password", "passwd", "secret", "token", "key", "credential", "private", "auth" }

-- Answers per key name, kept: a config's keys repeat (100,000 routes have the same few).
-- This runs in the config VM, which lives for one load, so the memo does not grow forever.
local secret_memo = {}

local function is_secret(k)
  if type(k) ~= "string" then return false end
  local memo = secret_memo[k]
  if memo ~= nil then return memo end
  local lk = lower(k)
  memo = false
  for i = 1, #SECRET do
    if find(lk, SECRET[i], 1, true) then memo = true break end
  end
  secret_memo[k] = memo
  return memo
end
M.is_secret = is_secret

-- The schema field describing key k of a value described by `field` (nil: unknown).
local function child(field, k)
  if not field then return nil end
  local t = field.type
  if t == "record" then return field.fields and field.fields[k] end
  if t == "array" then return field.elements end
  if t == "map" then return field.values end
  return nil
end

-- A plugin entry is described by its plugin's schema (loaded by the runtime by now).
local function entry_field(entry)
  local rt = package.loaded["luaproxy.runtime"]
  local plugin = rt and type(entry.name) == "string" and rt.plugin(entry.name)
  if not plugin then return nil end
  return { type = "record", fields = (plugin.schema or {}).fields or {} }
end

local function clean(v, field, seen)
  if field and field.secret then return REDACTED end
  local t = type(v)
  if t == "function" then return "<function>" end
  if t == "userdata" or t == "thread" or t == "cdata" then return "<" .. t .. ">" end
  if t ~= "table" then return v end
  if seen[v] then return "<cycle>" end
  seen[v] = true
  if field == config_schema.PLUGIN_ENTRY then field = entry_field(v) end
  local out, n, is_list = {}, 0, true
  for k in pairs(v) do
    n = n + 1
    if type(k) ~= "number" then is_list = false end
  end
  if is_list and n == #v then
    for i = 1, n do out[i] = clean(v[i], child(field, i), seen) end
    -- Debian's lua-cjson (2.1.0) has no empty_array: an empty table stays, as {}.
    if n == 0 then out = cjson.empty_array or out end
  else
    for k, x in pairs(v) do
      out[tostring(k)] = is_secret(k) and REDACTED or clean(x, child(field, k), seen)
    end
  end
  seen[v] = nil
  return out
end

-- The config table as JSON: functions named; secrets (fields marked `secret = true` in the
-- config's or a plugin's schema, and keys named like one) redacted.
function M.config_json(path, cfg)
  cjson.encode_sparse_array(true)
  local top = { type = "record", fields = config_schema.schema.fields }
  return cjson.encode({ ok = true, path = path, config = clean(cfg, top, {}) })
end

return M
