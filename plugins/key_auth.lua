-- key_auth: API keys from request headers or query arguments, mapped to consumers. Sets
-- req.ctx.consumer; removes the key before the request goes upstream (hide_credentials).
-- Docs: docs/plugins/key_auth.md.
local common = require "luaproxy.auth_common"

local find, sub, format = string.find, string.sub, string.format
local pairs, type, next = pairs, type, next

local P = {
  name = "key_auth",
  priority = 2440, -- with the auth plugins: below redirect, above the router
}

P.schema = {
  fields = common.with_fields({
    keys = {
      type = "map", values = { type = "any" }, default = {}, secret = true,
      description = "valid keys: key = consumer id, or key = { id = ..., other fields } "
        .. "(the table becomes req.ctx.consumer)",
    },
    header_names = {
      type = "array", elements = { type = "string", pattern = "^[!#$%%&'*+.^_`|~%w-]+$" },
      default = { "X-Api-Key" },
      description = "request headers that may carry the key, tried in order",
    },
    query_names = {
      type = "array", elements = { type = "string", pattern = "^[%w%-_.~]+$" }, default = {},
      description = "query arguments that may carry the key, tried after the headers "
        .. "(none by default: keys in URLs end up in logs)",
    },
    max_key = {
      type = "integer", default = 256, min = 1,
      description = "longest key considered (bytes); a longer one is refused",
    },
  }),
}

function P.compile(conf)
  common.compile(conf)
  local consumers = {}
  for k, v in pairs(conf.keys) do
    if type(v) ~= "string" and not (type(v) == "table" and type(v.id) == "string") then
      return nil, "keys: each value is a consumer id or a table with an id"
    end
    consumers[k] = common.consumer(v, "key_auth")
  end
  if next(consumers) == nil then return nil, "keys: at least one key is needed" end
  conf.consumers = consumers
  conf.nheaders, conf.nquery = #conf.header_names, #conf.query_names
  conf.challenge = { ["WWW-Authenticate"] = format('Key realm="%s"', conf.realm),
                     ["Content-Type"] = "text/plain" }
  return conf
end

local m_refused

function P.init_worker()
  m_refused = proxy.metrics.counter("key_auth_refused_total",
    "Requests key_auth refused, by reason.", { "reason" })
end

local function refuse(req, conf, reason)
  if m_refused then m_refused:inc(1, reason) end
  proxy.log.info(format("key_auth: refused %s: %s", req:client_ip(), reason))
  common.clear_consumer(req, conf)
  return req:respond(401, "unauthorized\n", conf.challenge)
end


function P.request(req, conf)
  local key, hname, qname
  for i = 1, conf.nheaders do
    local n = conf.header_names[i]
    key = req:header(n)
    if key then hname = n break end
  end
  if not key then
    for i = 1, conf.nquery do
      local n = conf.query_names[i]
      key = req:query(n)
      if key then qname = n break end
    end
  end
  if not key then return refuse(req, conf, "no key") end
  if #key > conf.max_key then return refuse(req, conf, "key too long") end
  local consumer = conf.consumers[key]
  if not consumer then return refuse(req, conf, "unknown key") end
  if conf.hide_credentials then
    if hname then
      req:clear_header(hname)
    else
      local uri = req:uri()
      local q = find(uri, "?", 1, true)
      local rest = common.strip_arg(sub(uri, q + 1), qname)
      req:set_path(rest == "" and sub(uri, 1, q - 1) or sub(uri, 1, q) .. rest)
    end
  end
  common.set_consumer(req, conf, consumer)
end

return P
