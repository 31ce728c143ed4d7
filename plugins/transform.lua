-- transform: changes request and response headers, query arguments and JSON body fields.
-- Values may be small templates ($client_ip, $header_x_user, $consumer_id...). Body changes
-- are bounded by max_body. Docs: docs/plugins/transform.md.
local find, sub, lower, gsub, byte, format, char = string.find, string.sub, string.lower,
  string.gsub, string.byte, string.format, string.char
local concat, sort = table.concat, table.sort
local type, pairs, ipairs, tonumber, tostring, pcall, setmetatable, error =
  type, pairs, ipairs, tonumber, tostring, pcall, setmetatable, error

local text = require "luaproxy.text"
local json = require("cjson").new() -- an instance of its own: its settings are not shared
local json_encode = require "luaproxy.json_encode"

local TOKEN = "^[%w!#$%%&'*+%-.^_`|~]+$"

local function ops(which, names, values, rename_desc)
  local name = { type = "string", pattern = names }
  return {
    type = "record", default = {},
    description = which,
    fields = {
      remove = { type = "array", default = {}, elements = name,
        description = "names removed (first of the four)" },
      rename = { type = "map", default = {}, keys = name, values = name,
        description = rename_desc },
      replace = { type = "map", default = {}, keys = name, values = values,
        description = "name = value: replaces the value when the name is present" },
      add = { type = "map", default = {}, keys = name, values = values,
        description = "name = value: adds the name when it is absent (last of the four)" },
    },
  }
end

local STRING_VALUE = { type = "string", pattern = "^[^\r\n%z]*$" }

local function json_ops(which)
  local path = { type = "string", pattern = "^[^%.][^%z]*$" }
  return {
    type = "record", default = {},
    description = "changes to JSON " .. which .. " bodies (Content-Type application/json or "
      .. "*+json), fields named by a dotted path (a.b.c; a number indexes an array from 0)",
    fields = {
      remove = { type = "array", default = {}, elements = path,
        description = "paths removed (first)" },
      rename = { type = "map", default = {}, keys = path, values = path,
        description = "path = new path: moves a present field (second)" },
      set = { type = "map", default = {}, keys = path, values = { type = "any" },
        description = "path = value: sets the field, making missing objects on the way "
          .. "(last); a string value is a template, other JSON values go as they are" },
    },
  }
end

local function part(which)
  return {
    type = "record", default = {},
    description = "changes to the " .. which,
    fields = {
      headers = ops("header changes", TOKEN, STRING_VALUE,
        "old name = new name: moves the values of a present header"),
      query = which == "request" and ops("query argument changes (names and values "
        .. "percent-decoded; sent percent-encoded)", "^[^%z]+$", STRING_VALUE,
        "old name = new name: renames a present argument") or nil,
      json = json_ops(which),
    },
  }
end

local P = {
  name = "transform",
  -- After auth (which sets req.ctx.consumer for $consumer_id) and before mirror (450),
  -- whose copy is the client's body anyway.
  priority = 700,
  schema = {
    fields = {
      request = part("request"),
      response = part("response"),
      max_body = { type = "integer", default = 1048576, min = 0,
        description = "largest JSON body changed, in bytes; a larger one goes through unchanged "
          .. "(logged), or the request gets 413 (on_oversize)" },
      on_oversize = { type = "string", default = "pass", one_of = { "pass", "reject" },
        description = "a request body over max_body: pass it unchanged (logged) or answer 413 "
          .. "(responses always pass)" },
    },
  },
}

-- ---- templates ----

-- Variables: a fixed set, plus header_NAME and query_NAME (NAME lower case, _ for -).
local FIXED = { client_ip = true, consumer_id = true, host = true, method = true, path = true,
  uri = true, scheme = true, request_id = true }
local VARS = setmetatable({}, { __index = function(_, k)
  return FIXED[k] or sub(k, 1, 7) == "header_" or sub(k, 1, 6) == "query_" or nil
end })

local function var(req, k)
  if k == "consumer_id" then
    local c = req.ctx.consumer
    return c and c.id ~= nil and tostring(c.id) or ""
  end
  if sub(k, 1, 7) == "header_" then return req:header((gsub(sub(k, 8), "_", "-"))) or "" end
  if sub(k, 1, 6) == "query_" then return req:query(sub(k, 7)) or "" end
  return req:var(k) or ""
end

local buf = {}
local function render(tpl, req)
  if type(tpl) ~= "table" then return tpl end
  local n = #tpl
  buf[1] = tpl[1]
  for i = 2, n, 2 do
    buf[i] = var(req, tpl[i])
    buf[i + 1] = tpl[i + 1]
  end
  return concat(buf, "", 1, n)
end
P.render = render

local function tpl(v)
  if type(v) ~= "string" then return v end
  return text.compile(v, VARS, false)
end

-- ---- compiling ----

local function sorted_pairs(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  sort(keys)
  local out = {}
  for i, k in ipairs(keys) do out[i] = { k, t[k] } end
  return out
end

local function compile_ops(o)
  if not o then return nil end
  local c = { remove = {}, rename = sorted_pairs(o.rename), replace = {}, add = {} }
  for i, n in ipairs(o.remove) do c.remove[i] = n end
  for i, kv in ipairs(sorted_pairs(o.replace)) do c.replace[i] = { kv[1], tpl(kv[2]) } end
  for i, kv in ipairs(sorted_pairs(o.add)) do c.add[i] = { kv[1], tpl(kv[2]) } end
  if #c.remove + #c.rename + #c.replace + #c.add == 0 then return nil end
  return c
end

local function split_path(p)
  local segs = {}
  for s in (p .. "."):gmatch("([^%.]*)%.") do
    if s == "" then return nil end
    segs[#segs + 1] = s
  end
  return segs
end

local function compile_json(o, where)
  local c = { remove = {}, rename = {}, set = {} }
  for i, p in ipairs(o.remove) do
    c.remove[i] = split_path(p) or error(where .. ".remove: empty segment in " .. p, 0)
  end
  for _, kv in ipairs(sorted_pairs(o.rename)) do
    local a, b = split_path(kv[1]), split_path(kv[2])
    if not a or not b then return nil, where .. ".rename." .. kv[1] .. ": empty path segment" end
    c.rename[#c.rename + 1] = { a, b }
  end
  for _, kv in ipairs(sorted_pairs(o.set)) do
    local a = split_path(kv[1])
    if not a then return nil, where .. ".set." .. kv[1] .. ": empty path segment" end
    local v = kv[2]
    if type(v) == "string" then
      local t = tpl(v)
      c.set[#c.set + 1] = { a, t, type(t) == "table" } -- [3]: a template to render
    else
      c.set[#c.set + 1] = { a, v }
    end
  end
  if #c.remove + #c.rename + #c.set == 0 then return nil end
  return c
end

function P.compile(conf)
  local ok, r = pcall(function()
    local rq, rs = conf.request, conf.response
    local c = {
      max_body = conf.max_body, reject = conf.on_oversize == "reject",
      req_headers = compile_ops(rq.headers), query = compile_ops(rq.query),
      resp_headers = compile_ops(rs.headers),
    }
    local err
    c.req_json, err = compile_json(rq.json, "request.json")
    if err then error(err, 0) end
    c.resp_json, err = compile_json(rs.json, "response.json")
    if err then error(err, 0) end
    -- Phases without rules are left out of the route's chains (the runtime's skip_phases):
    -- no Lua runs for them, and without response JSON rules no body filter changes the
    -- response's framing.
    c.skip_phases = {
      request = not (c.req_headers or c.query or c.req_json),
      response = not (c.resp_headers or c.resp_json),
      response_body = not c.resp_json,
    }
    return c
  end)
  if not ok then return nil, r end
  return r
end

-- ---- headers ----

local function headers_req(req, c)
  for _, n in ipairs(c.remove) do req:clear_header(n) end
  for _, kv in ipairs(c.rename) do
    local all = req:headers()[lower(kv[1])]
    if all ~= nil then
      req:clear_header(kv[1])
      req:set_header(kv[2], all)
    end
  end
  for _, kv in ipairs(c.replace) do
    if req:header(kv[1]) ~= nil then req:set_header(kv[1], render(kv[2], req)) end
  end
  for _, kv in ipairs(c.add) do
    if req:header(kv[1]) == nil then req:set_header(kv[1], render(kv[2], req)) end
  end
end

local function headers_resp(req, c)
  for _, n in ipairs(c.remove) do req:clear_resp_header(n) end
  for _, kv in ipairs(c.rename) do
    local all = req:resp_headers()[lower(kv[1])]
    if all ~= nil then
      req:clear_resp_header(kv[1])
      req:set_resp_header(kv[2], all)
    end
  end
  for _, kv in ipairs(c.replace) do
    if req:resp_header(kv[1]) ~= nil then req:set_resp_header(kv[1], render(kv[2], req)) end
  end
  for _, kv in ipairs(c.add) do
    if req:resp_header(kv[1]) == nil then req:set_resp_header(kv[1], render(kv[2], req)) end
  end
end

-- ---- query arguments ----

local function unescape(s)
  s = gsub(s, "+", " ")
  return (gsub(s, "%%(%x%x)", function(h) return char(tonumber(h, 16)) end))
end
local function escape(s)
  return (gsub(s, "[^%w%-._~]", function(ch) return format("%%%02X", byte(ch)) end))
end

local function gmatch_pieces(query)
  return query:gmatch("[^&]+")
end

-- The query as a list of { raw text, decoded name }, kept in order; changed entries get
-- new raw text.
local function query_req(req, c)
  local uri = req:uri()
  local q = find(uri, "?", 1, true)
  local query = q and sub(uri, q + 1) or ""
  local args = {}
  for piece in gmatch_pieces(query) do
    local eq = find(piece, "=", 1, true)
    local name = unescape(eq and sub(piece, 1, eq - 1) or piece)
    args[#args + 1] = { piece, name, eq and sub(piece, eq + 1) or nil }
  end
  local changed = false
  local function has(name)
    for _, a in ipairs(args) do if a[2] == name then return true end end
  end
  for _, n in ipairs(c.remove) do
    for i = #args, 1, -1 do
      if args[i][2] == n then table.remove(args, i); changed = true end
    end
  end
  for _, kv in ipairs(c.rename) do
    for _, a in ipairs(args) do
      if a[2] == kv[1] then
        a[2] = kv[2]
        a[1] = escape(kv[2]) .. (a[3] and "=" .. a[3] or "")
        changed = true
      end
    end
  end
  for _, kv in ipairs(c.replace) do
    local v
    for _, a in ipairs(args) do
      if a[2] == kv[1] then
        v = v or escape(render(kv[2], req))
        a[3] = v
        a[1] = escape(a[2]) .. "=" .. v
        changed = true
      end
    end
  end
  for _, kv in ipairs(c.add) do
    if not has(kv[1]) then
      args[#args + 1] = { escape(kv[1]) .. "=" .. escape(render(kv[2], req)), kv[1] }
      changed = true
    end
  end
  if not changed then return end
  local out = {}
  for i, a in ipairs(args) do out[i] = a[1] end
  req:set_query(concat(out, "&"))
end

-- ---- JSON ----

local function is_json(ct)
  if not ct then return false end
  ct = lower(ct)
  local semi = find(ct, ";", 1, true)
  if semi then ct = sub(ct, 1, semi - 1) end
  ct = gsub(ct, "%s+$", "")
  return ct == "application/json" or sub(ct, -5) == "+json"
end
P.is_json = is_json

-- The container holding the last segment, and that key (a number for arrays, 1-based);
-- `make` creates missing objects on the way. An array has no named fields: a name on the
-- way through one matches nothing (setting it would turn the array into an object).
-- root_array: the document is an empty array (cjson decodes [] and {} alike).
local function walk(doc, segs, make, root_array)
  local t = doc
  for i = 1, #segs do
    local s = segs[i]
    local k = s
    local n = tonumber(s)
    if type(t) ~= "table" then return nil end
    local index = n and n >= 0 and n % 1 == 0
    if t[1] ~= nil or (t == doc and root_array) then
      if not index then return nil end
      k = n + 1 -- an array index
    end
    if i == #segs then return t, k end
    local nx = t[k]
    if nx == nil or nx == json.null then
      if not make then return nil end
      nx = {}
      t[k] = nx
    end
    t = nx
  end
end

local function apply_json(doc, c, req, root_array)
  for _, segs in ipairs(c.remove) do
    local t, k = walk(doc, segs, false, root_array)
    if t then
      if type(k) == "number" then
        if t[k] ~= nil then table.remove(t, k) end
      else
        t[k] = nil
      end
    end
  end
  for _, ab in ipairs(c.rename) do
    local t, k = walk(doc, ab[1], false, root_array)
    if t and t[k] ~= nil then
      local v = t[k]
      if type(k) == "number" then table.remove(t, k) else t[k] = nil end
      local t2, k2 = walk(doc, ab[2], true, root_array)
      if t2 then t2[k2] = v end
    end
  end
  for _, sv in ipairs(c.set) do
    local t, k = walk(doc, sv[1], true, root_array)
    if t then
      local v = sv[2]
      if sv[3] then v = render(v, req) end
      t[k] = v
    end
  end
end

-- The encoder is the engine's (luaproxy.json_encode), over cjson's decoder: see there.
local encode = json_encode.encode
P.encode = encode

-- Whether the text has an empty array ([] with only blanks inside) or object: plain finds
-- of the bracket, then a look at what follows (a pattern search over a 4 KiB body costs
-- 20-50 us; this costs well under one).
local function has_empty(s, open, close)
  local i = find(s, open, 1, true)
  while i do
    local j = i + 1
    local b = byte(s, j)
    while b == 32 or b == 9 or b == 10 or b == 13 do j = j + 1; b = byte(s, j) end
    if b == close then return true end
    i = find(s, open, j, true)
  end
  return false
end

local function transform_json(s, c, req)
  local ok, doc = pcall(json.decode, s)
  if not ok or type(doc) ~= "table" then return nil, "not a JSON object or array" end
  apply_json(doc, c, req, next(doc) == nil and find(s, "^%s*%[") ~= nil)
  local empty_array = has_empty(s, "[", 93) and not has_empty(s, "{", 125)
  local ok2, out = pcall(encode, doc, empty_array)
  if not ok2 then return nil, out end
  return out
end
P.transform_json = transform_json

-- ---- phases ----

function P.request(req, conf)
  if conf.req_headers then headers_req(req, conf.req_headers) end
  if conf.query then query_req(req, conf.query) end
  local jc = conf.req_json
  if not jc or not is_json(req:header("content-type")) then return end
  local body = req:body(conf.max_body)
  if not body then
    if conf.reject then
      return req:respond(413, "request body too large\n", { ["Content-Type"] = "text/plain" })
    end
    proxy.log.warn(format("request body over max_body (%d bytes): passed unchanged",
      conf.max_body))
    return
  end
  local out, err = transform_json(body, jc, req)
  if not out then
    proxy.log.warn(format("request body: %s: passed unchanged", err))
    return
  end
  req:set_body(out)
end

local KEY = "\0transform" -- req.ctx key of its own: the response body being gathered

function P.response(req, conf)
  if conf.resp_headers then headers_resp(req, conf.resp_headers) end
  if conf.resp_json and is_json(req:resp_header("content-type")) then
    local st = req:status()
    if st ~= 204 and st ~= 304 and req:method() ~= "HEAD" then
      req.ctx[KEY] = { n = 0, size = 0 }
    end
  end
end

-- Gathers the body up to max_body, changes it once at eof; over the bound, what was
-- held goes out and the rest passes unchanged.
function P.response_body(req, chunk, eof, conf)
  local g = req.ctx[KEY]
  if not g then return nil end
  if g.passing then return nil end
  g.size = g.size + #chunk
  if g.size > conf.max_body then
    g.passing = true
    proxy.log.warn(format("response body over max_body (%d bytes): passed unchanged",
      conf.max_body))
    local held = concat(g, "", 1, g.n)
    for i = 1, g.n do g[i] = nil end
    return held .. chunk
  end
  g.n = g.n + 1
  g[g.n] = chunk
  if not eof then return "" end
  local whole = concat(g, "", 1, g.n)
  req.ctx[KEY] = nil
  local out, err = transform_json(whole, conf.resp_json, req)
  if not out then
    proxy.log.warn(format("response body: %s: passed unchanged", err))
    return whole
  end
  return out
end

return P
