-- Helpers for the admin API (engine/admin.c), run in a short-lived state of their own.
local cjson = require "cjson"

local M = {}

-- Keys whose values never leave the process.
local SECRET = { "secret", "password", "passwd", "token", "credential", "private", "key$", "auth" }

local function is_secret(k)
  if type(k) ~= "string" then return false end
  k = k:lower()
  for _, pat in ipairs(SECRET) do
    if k:find(pat) then return true end
  end
  return false
end

local function clean(v, seen)
  local t = type(v)
  if t == "function" then return "<function>" end
  if t == "userdata" or t == "thread" or t == "cdata" then return "<" .. t .. ">" end
  if t ~= "table" then return v end
  if seen[v] then return "<cycle>" end
  seen[v] = true
  local out, n, is_list = {}, 0, true
  for k in pairs(v) do
    n = n + 1
    if type(k) ~= "number" then is_list = false end
  end
  if is_list and n == #v then
    for i = 1, n do out[i] = clean(v[i], seen) end
    -- Debian's lua-cjson (2.1.0) has no empty_array: an empty table stays, as {}.
    if n == 0 then return cjson.empty_array or out end
  else
    for k, x in pairs(v) do
      out[tostring(k)] = is_secret(k) and "<redacted>" or clean(x, seen)
    end
  end
  seen[v] = nil
  return out
end

-- The config file's table as JSON, functions named and secrets redacted.
function M.config_json(path)
  local chunk = assert(loadfile(path))
  local cfg = chunk()
  cjson.encode_sparse_array(true)
  return cjson.encode({ ok = true, path = path, config = clean(cfg, {}) })
end

M.is_secret = is_secret
return M
