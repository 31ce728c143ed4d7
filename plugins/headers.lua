-- headers: sets, adds and removes request headers (request phase) and response headers
-- (response phase). Values may carry variables ($host, ${request_id}, ...) that are parsed
-- once, at config load, into templates. Docs: docs/plugins/headers.md.
local find = string.find
local sort = table.sort
local type, pairs, ipairs = type, pairs, ipairs

local text = require "luaproxy.text"

local TOKEN = "^[%w!#$%%&'*+%-.^_`|~]+$"

local function no_crlf(v)
  if find(v, "[\r\n%z]") then return nil, "header values must not contain CR, LF or NUL" end
  return true
end

local function string_or_list(v)
  if type(v) == "string" then return no_crlf(v) end
  if type(v) ~= "table" or #v == 0 then return nil, "expected a string or a non-empty list of strings" end
  local n = 0
  for _ in pairs(v) do n = n + 1 end
  if n ~= #v then return nil, "expected a string or a non-empty list of strings" end
  for i = 1, #v do
    if type(v[i]) ~= "string" then return nil, "expected a string or a non-empty list of strings" end
    local ok, err = no_crlf(v[i])
    if not ok then return nil, err end
  end
  return true
end

local function part(which)
  local name = { type = "string", pattern = TOKEN }
  return {
    type = "record", default = {},
    description = "changes to the " .. which .. " headers",
    fields = {
      set = {
        type = "map", default = {}, keys = name,
        values = { type = "string", custom = no_crlf, secret = which == "request" },
        description = "name = value: replaces every " .. which .. " header of that name",
      },
      add = {
        type = "map", default = {}, keys = name,
        values = { type = "any", custom = string_or_list, secret = which == "request" },
        description = "name = value or { values }: adds header lines, keeping existing ones",
      },
      remove = {
        type = "array", default = {}, elements = name,
        description = "names of " .. which .. " headers to remove",
      },
    },
  }
end

local P = {
  name = "headers",
  priority = 800,
  schema = {
    fields = {
      request = part("request"),
      response = part("response"),
      hsts = {
        type = "record",
        description = "send Strict-Transport-Security on responses to https requests "
          .. "(never over plain http, RFC 6797 7.2)",
        fields = {
          max_age = {
            type = "integer", default = 31536000, min = 0,
            description = "seconds browsers keep to https (0 tells them to forget)",
          },
          include_subdomains = { type = "boolean", default = false,
            description = "cover every subdomain too" },
          preload = { type = "boolean", default = false,
            description = "ask to be in browsers' preload lists (needs include_subdomains "
              .. "and a max_age of at least a year)" },
        },
      },
    },
  },
}

-- Variables a value may use; status only in the response part.
local VARS = {
  client_ip = true, request_id = true, host = true, upstream = true, method = true,
  path = true, uri = true, scheme = true, status = true,
}

-- Compiles a value (luaproxy.text): "text $var ${var} $$" into a plain string or a template.
-- Unknown variables stay as written.
local function compile_template(s, response)
  local tpl = text.compile(s, VARS, false)
  if not response and type(tpl) == "table" then
    for i = 2, #tpl, 2 do
      if tpl[i] == "status" then return nil, "$status is only known in the response part" end
    end
  end
  return tpl
end
P.compile_template = compile_template

local render = text.render -- (tpl, req): headers templates have no captures
P.render = render

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  sort(keys)
  return keys
end

-- One part becomes flat arrays, in a fixed order (names sorted), walked with numeric loops.
local function compile_part(p, which)
  local c = { remove = {}, set_names = {}, set_values = {}, add_names = {}, add_values = {} }
  for i, name in ipairs(p.remove) do c.remove[i] = name end
  for _, name in ipairs(sorted_keys(p.set)) do
    local tpl, err = compile_template(p.set[name], which == "response")
    if not tpl then return nil, which .. ".set." .. name .. ": " .. err end
    c.set_names[#c.set_names + 1] = name
    c.set_values[#c.set_values + 1] = tpl
  end
  for _, name in ipairs(sorted_keys(p.add)) do
    local v = p.add[name]
    if type(v) == "string" then v = { v } end
    for _, one in ipairs(v) do
      local tpl, err = compile_template(one, which == "response")
      if not tpl then return nil, which .. ".add." .. name .. ": " .. err end
      c.add_names[#c.add_names + 1] = name
      c.add_values[#c.add_values + 1] = tpl
    end
  end
  c.empty = #c.remove + #c.set_names + #c.add_names == 0
  return c
end

function P.compile(conf)
  local request, err = compile_part(conf.request, "request")
  if not request then return nil, err end
  local response
  response, err = compile_part(conf.response, "response")
  if not response then return nil, err end
  local hsts
  if conf.hsts then
    local h = conf.hsts
    if h.preload and not (h.include_subdomains and h.max_age >= 31536000) then
      return nil, "hsts.preload needs include_subdomains and a max_age of at least 31536000"
    end
    hsts = "max-age=" .. h.max_age .. (h.include_subdomains and "; includeSubDomains" or "")
      .. (h.preload and "; preload" or "")
    response.empty = false
  end
  return { request = request, response = response, hsts = hsts }
end

-- Order inside a part: remove, then set, then add.
function P.request(req, conf)
  local c = conf.request
  if c.empty then return end
  local list = c.remove
  for i = 1, #list do req:clear_header(list[i]) end
  local names, values = c.set_names, c.set_values
  for i = 1, #names do req:set_header(names[i], render(values[i], req)) end
  names, values = c.add_names, c.add_values
  for i = 1, #names do req:add_header(names[i], render(values[i], req)) end
end

function P.response(req, conf)
  local c = conf.response
  if c.empty then return end
  if conf.hsts and req:scheme() == "https" then
    req:set_resp_header("Strict-Transport-Security", conf.hsts)
  end
  local list = c.remove
  for i = 1, #list do req:clear_resp_header(list[i]) end
  local names, values = c.set_names, c.set_values
  for i = 1, #names do req:set_resp_header(names[i], render(values[i], req)) end
  names, values = c.add_names, c.add_values
  for i = 1, #names do req:add_resp_header(names[i], render(values[i], req)) end
end

return P
