-- request_limits: per-route bounds on what a request may be (its methods, URI length,
-- header count, body size), each refused with the status HTTP has for it. The engine's
-- global `limits` still apply first to what it must bound to read a head at all (header
-- bytes, URI bytes, header count); this plugin narrows them per route, and sets the route's
-- body size either way (an upload route may take more than the global limit).
-- Docs: docs/plugins/request_limits.md.
local upper = string.upper
local concat, sort = table.concat, table.sort
local ipairs = ipairs

local P = {
  name = "request_limits",
  -- Early: a request refused for its shape costs nothing else (request_id, at 3000, runs
  -- first so that the refusal is logged with an id).
  priority = 2900,
  schema = {
    fields = {
      max_body_size = {
        type = "integer", min = 0, max = 9e15,
        description = "largest request body in bytes (0: no limit), instead of "
          .. "limits.max_body_size, larger or smaller: 413. A declared Content-Length is "
          .. "refused before any of the body is read; a chunked body when it passes the limit",
      },
      max_headers = { type = "integer", min = 1, max = 10000,
                      description = "most header lines: 431" },
      max_uri_length = { type = "integer", min = 1, max = 1048576,
                         description = "longest request target (path and query) in bytes: 414" },
      methods = {
        type = "array", min = 1, elements = { type = "string", pattern = "^[%w!#$%%&'*+%-.^_`|~]+$" },
        description = "the methods allowed (e.g. { \"GET\", \"HEAD\" }); others get 405 with Allow",
      },
    },
  },
}

function P.compile(conf)
  local c = {
    max_body_size = conf.max_body_size,
    max_headers = conf.max_headers,
    max_uri_length = conf.max_uri_length,
  }
  if conf.methods then
    local set, list = {}, {}
    local function add(m)
      if not set[m] then
        set[m] = true
        list[#list + 1] = m
      end
    end
    for _, m in ipairs(conf.methods) do add(upper(m)) end
    -- GET allows HEAD (RFC 9110 9.3.2: the same answer without its body), as nginx's
    -- limit_except does: health checkers and caches send HEAD where GET is allowed.
    if set.GET then add("HEAD") end
    sort(list)
    c.methods, c.allow = set, concat(list, ", ")
  end
  return c
end

local TEXT = { ["Content-Type"] = "text/plain" }

function P.request(req, conf)
  local methods = conf.methods
  if methods and not methods[req:method()] then
    return req:respond(405, "method not allowed\n",
      { ["Content-Type"] = "text/plain", Allow = conf.allow })
  end
  local n = conf.max_uri_length
  if n and #req:uri() > n then return req:respond(414, "URI too long\n", TEXT) end
  n = conf.max_headers
  if n and req:header_count() > n then
    return req:respond(431, "too many request headers\n", TEXT)
  end
  n = conf.max_body_size
  if n then req:set_max_body_size(n) end
end

return P
