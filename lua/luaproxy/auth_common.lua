-- What the authentication plugins (basic_auth, key_auth, jwt, forward_auth) share: the
-- schema fields that pass the identity upstream, and setting it on a request.
local type, pairs, gsub = type, pairs, string.gsub

local M = {}

M.fields = {
  consumer_header = {
    type = "string", default = "X-Consumer-Id", pattern = "^[!#$%%&'*+.^_`|~%w-]*$",
    description = "request header telling the upstream the consumer's id (a value the client "
      .. "sent in it is always replaced or removed); \"\" for none",
  },
  hide_credentials = {
    type = "boolean", default = true,
    description = "remove the credentials (header, query argument or cookie) before the "
      .. "request goes upstream; false forwards them",
  },
  realm = {
    type = "string", default = "luaproxy", pattern = '^[^"\\%c]*$',
    description = "realm in the WWW-Authenticate header of a refusal",
  },
}

-- Adds the shared fields to a plugin's own.
function M.with_fields(fields)
  for k, v in pairs(M.fields) do
    if fields[k] == nil then fields[k] = v end
  end
  return fields
end

-- The compiled header name, nil for none.
function M.compile(conf)
  if conf.consumer_header == "" then conf.consumer_header = nil end
  return conf
end

-- Records the consumer for later plugins and the upstream. `consumer` is a table with at
-- least `id` (shared between requests: plugins read it, never change it).
function M.set_consumer(req, conf, consumer)
  req.ctx.consumer = consumer
  local h = conf.consumer_header
  if h then req:set_header(h, consumer.id) end
end

-- A client must never choose the identity the upstream sees: on the way to a refusal or an
-- anonymous pass, any consumer header the client sent is dropped.
function M.clear_consumer(req, conf)
  local h = conf.consumer_header
  if h then req:clear_header(h) end
end

-- The query string without argument `name` (every occurrence, also valueless), for
-- hide_credentials.
function M.strip_arg(query, name)
  local q = gsub(name, "%p", "%%%0")
  local out = gsub(gsub("&" .. query .. "&", "&" .. q .. "=[^&]*", ""), "&" .. q .. "&", "&")
  out = gsub(out, "&&+", "&")
  return (gsub(gsub(out, "^&", ""), "&$", ""))
end

-- A consumer table from a config value: a string is the id.
function M.consumer(v, plugin)
  if type(v) == "table" then
    local c = {}
    for k, x in pairs(v) do c[k] = x end
    c.plugin = plugin
    return c
  end
  return { id = v, plugin = plugin }
end

return M
