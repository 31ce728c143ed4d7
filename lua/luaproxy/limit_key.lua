-- What a limit counts by: the schema fields and the per-request key of the limiting plugins
-- (rate_limit, limit_conn), one copy for both. A request whose chosen key is missing (no
-- consumer yet, no such header, the function returned nil) is counted by its client
-- address, as Kong does: a missing header must not be a way around the limit.
local type, tostring, pairs = type, tostring, pairs
local format = string.format

local M = {}

M.fields = {
  limit_by = {
    type = "string", default = "ip", one_of = { "ip", "consumer", "header", "route", "function" },
    description = "what is counted: ip (the client address, after real_ip), consumer "
      .. "(req.ctx.consumer.id, set by an auth plugin), header (the value of `header`), route "
      .. "(every request this plugin instance sees, together) or function (`key(req)`); a "
      .. "missing consumer, header or function result falls back to the client address",
  },
  header = {
    type = "string", pattern = "^[%w!#$%%&'*+%-.^_`|~]+$",
    description = "request header counted by for limit_by = header",
  },
  key = {
    type = "function",
    description = "function(req) returning the key (a string) for limit_by = function",
  },
}

-- Checks the fields together (the schema checks each alone); nil, message on a mistake.
function M.check(conf)
  if conf.limit_by == "header" and not conf.header then
    return nil, "limit_by = \"header\" needs `header`"
  end
  if conf.limit_by == "function" and not conf.key then
    return nil, "limit_by = \"function\" needs `key`"
  end
  return true
end

-- The shared dict named `conf.dict`, or an error that says how to declare it.
function M.dict(conf, plugin)
  local d = proxy.shared[conf.dict]
  if not d then
    error(format("%s: no shared dict %q: declare it in the config, e.g. "
      .. "shared = { %s = \"10m\" }", plugin, conf.dict, conf.dict), 0)
  end
  return d
end

-- What both plugins compile: a copy of conf with `keyfn`, the counter namespace `ns` (the
-- entry's id, else its place in the config, then limit_by) and `ctx_key`, this entry's
-- slot in req.ctx.
function M.compile_entry(conf, where, plugin)
  local c = {}
  for k, v in pairs(conf) do c[k] = v end
  c.keyfn = M.compile(conf)
  c.ns = (conf.id or where or plugin) .. "|" .. conf.limit_by .. "|"
  c.ctx_key = {}
  return c
end

-- A function(req) returning the request's key, prefixed by its kind so that an address
-- and a header value never share a counter.
function M.compile(conf)
  local by = conf.limit_by
  if by == "ip" then
    return function(req) return "ip:" .. req:client_ip() end
  elseif by == "route" then
    return function() return "route" end
  elseif by == "consumer" then
    return function(req)
      local c = req.ctx.consumer
      if type(c) == "table" then c = c.id end
      if c == nil then return "ip:" .. req:client_ip() end
      return "consumer:" .. tostring(c)
    end
  elseif by == "header" then
    local name = conf.header
    return function(req)
      local v = req:header(name)
      if v == nil then return "ip:" .. req:client_ip() end
      return "header:" .. v
    end
  end
  local fn = conf.key
  return function(req)
    local v = fn(req)
    if v == nil then return "ip:" .. req:client_ip() end
    return "fn:" .. tostring(v)
  end
end

return M
