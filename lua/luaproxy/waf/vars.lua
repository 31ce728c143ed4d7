-- waf variables: what rules look at in a request, gathered lazily (a collection is built
-- the first time a rule needs it, once per request) into { n, names = {}, values = {} }.
-- Bodies are parsed as what they declare (form, JSON, multipart) so that each value is
-- inspected as the thing it is: a JSON document's structure, or a GraphQL query's
-- punctuation, is never a value. Docs: docs/plugins/waf.md, "Variables".
local T = require "luaproxy.waf.transforms"
local urldecode, lower = T.urldecode, string.lower
local byte, find, sub, match, gmatch = string.byte, string.find, string.sub, string.match,
  string.gmatch
local type, pairs, ipairs, tostring, pcall = type, pairs, ipairs, tostring, pcall

local M = {}

-- Collections a target may name. `names`: the collection whose names these are.
M.BASE = {
  method = true, path = true, uri = true, query_string = true, query_args = true,
  body_args = true, headers = true, cookies = true, files = true, body = true,
  body_error = true,
  -- ModSecurity's variables the OWASP Core Rule Set reads (issue #20; luaproxy/waf/seclang.lua)
  basename = true, request_line = true, protocol = true, body_length = true,
  args_combined_size = true, files_names = true, files_combined_size = true,
  remote_addr = true, reqbody_processor = true, body_error_flag = true,
  multipart_part_headers = true, unique_id = true, duration = true,
}
M.NAMES = { query_arg_names = "query_args", body_arg_names = "body_args",
            header_names = "headers", cookie_names = "cookies" }
-- Shorthands: a target naming one of these means each of the listed collections.
M.ALIAS = { args = { "query_args", "body_args" }, arg_names = { "query_arg_names", "body_arg_names" } }
-- Collections that need the body read.
M.BODY = { body_args = true, files = true, body = true, body_error = true,
           body_arg_names = true, body_length = true, files_names = true,
           files_combined_size = true, reqbody_processor = true, body_error_flag = true,
           multipart_part_headers = true, args_combined_size = true }

local function new() return { n = 0, names = {}, values = {} } end

local function one(value)
  local c = new()
  c.n, c.names[1], c.values[1] = 1, "", value
  return c
end

local function add(c, name, value, max)
  local n = c.n
  if n >= max then
    c.truncated = true
    return
  end
  n = n + 1
  c.n = n
  c.names[n] = name
  c.values[n] = value
end

-- a=1&b=2, decoded tolerantly (a bad %-escape stays as written).
local add_value -- below: a value that is a JSON document goes in as its leaves

local function parse_form(c, s, max)
  for pair in gmatch(s, "[^&]+") do
    local eq = find(pair, "=", 1, true)
    if eq then
      add_value(c, urldecode(sub(pair, 1, eq - 1)), urldecode(sub(pair, eq + 1)), max)
    else
      add(c, urldecode(pair), "", max)
    end
  end
end
M.parse_form = parse_form

-- The string literals of a GraphQL document ("..." with escapes, and """block""" ones):
-- the values a client put into it. Its names and punctuation are the API's, not data.
local function graphql_strings(c, name, q, max)
  local i, n = 1, #q
  local k = 0
  while i <= n do
    local s = find(q, '"', i, true)
    if not s then break end
    local from, to
    if sub(q, s, s + 2) == '"""' then
      local e = find(q, '"""', s + 3, true) or n + 1
      from, to, i = s + 3, e - 1, e + 3
    else
      local j = s + 1
      while j <= n do
        local b = byte(q, j)
        if b == 92 then j = j + 2
        elseif b == 34 or b == 10 then break
        else j = j + 1 end
      end
      from, to, i = s + 1, j - 1, j + 1
    end
    k = k + 1
    add(c, name .. "." .. k, sub(q, from, to), max)
  end
end

local function looks_graphql(q)
  return find(q, "^%s*{") or find(q, "^%s*query[%s{(]") or find(q, "^%s*mutation[%s{(]")
    or find(q, "^%s*subscription[%s{(]") or find(q, "^%s*fragment%s")
end

local function walk(c, v, path, max, depth)
  local t = type(v)
  if t == "table" then
    if depth > 64 then return end
    if path == "" and type(v.query) == "string" and looks_graphql(v.query) then
      graphql_strings(c, "query", v.query, max)
      for k, x in pairs(v) do
        if k ~= "query" then walk(c, x, tostring(k), max, depth + 1) end
      end
      return
    end
    local prefix = path == "" and "" or path .. "."
    for k, x in pairs(v) do walk(c, x, prefix .. tostring(k), max, depth + 1) end
  elseif t == "string" then
    add(c, path, v, max)
  elseif t == "number" or t == "boolean" then
    add(c, path, tostring(v), max)
  end
  -- null (a lightuserdata) is no value.
end

-- A value that is a JSON object or array (a cookie holding a cart, a query parameter
-- holding a filter) goes in as its leaves, named name.key.index: its braces and quotes are
-- the format's, not data. Anything else goes in as it is.
add_value = function(c, name, v, max)
  local b = byte(v, 1)
  if (b == 123 or b == 91) and #v >= 2 and find(v, "^%s*[%[{].*[%]}]%s*$") then
    local ok, doc = pcall(proxy.json.decode, v)
    if ok and type(doc) == "table" then
      walk(c, doc, name, max, 1)
      return
    end
  end
  add(c, name, v, max)
end
M.add_value = add_value

-- One multipart/form-data body: fields into body_args, file names into files. Returns
-- nil, problem for a body that does not follow its own boundary.
local function parse_multipart(args, files, body, boundary, max, pheaders)
  local delim = "--" .. boundary
  local pos = find(body, delim, 1, true)
  if not pos then return nil, "multipart: no boundary" end
  pos = pos + #delim
  local parts = 0
  while true do
    if sub(body, pos, pos + 1) == "--" then return true end
    if sub(body, pos, pos + 1) ~= "\r\n" then return nil, "multipart: bad delimiter line" end
    local hend = find(body, "\r\n\r\n", pos, true)
    if not hend then return nil, "multipart: part without a blank line" end
    local head = sub(body, pos + 2, hend + 1)
    if pheaders then
      for hl in gmatch(head, "[^\r\n]+") do add(pheaders, "", hl, max) end
    end
    local nxt = find(body, "\r\n" .. delim, hend + 4, true)
    if not nxt then return nil, "multipart: part without an end" end
    local value = sub(body, hend + 4, nxt - 1)
    local disp = match(head, "[Cc][Oo][Nn][Tt][Ee][Nn][Tt]%-[Dd][Ii][Ss][Pp][Oo][Ss][Ii][Tt][Ii][Oo][Nn]:([^\r\n]*)")
    if not disp then return nil, "multipart: part without Content-Disposition" end
    local name = match(disp, ';%s*name="([^"]*)"') or match(disp, ";%s*name=([^;%s]+)") or ""
    local filename = match(disp, ';%s*filename="([^"]*)"') or match(disp, ";%s*filename=([^;%s]+)")
    if filename then
      add(files, name, filename, max)
    else
      add(args, name, value, max)
    end
    parts = parts + 1
    pos = nxt + 2 + #delim
  end
end

-- The request's variable state for one evaluation.
local State = {}
State.__index = State

function M.new(req, opts)
  return setmetatable({ req = req, max = opts.max_args, colls = {}, cache = {} }, State)
end

function State:body_collections()
  local args, files, raw, err = new(), new(), new(), new()
  local colls = self.colls
  colls.body_args, colls.files, colls.body, colls.body_error = args, files, raw, err
  local ph = new()
  colls.multipart_part_headers = ph
  colls.reqbody_processor = one("")
  colls.body_error_flag = one("0")
  local body = self.body
  colls.body_length = one(tostring(body and #body or 0))
  if not body or body == "" then return end
  raw.n, raw.names[1], raw.values[1] = 1, "", body
  local ct = lower(self.req:header("content-type") or "")
  local proc = self.body_processor
  if proc == "JSON" then ct = "application/json"
  elseif proc == "URLENCODED" then ct = "application/x-www-form-urlencoded" end
  local problem
  if find(ct, "^application/x%-www%-form%-urlencoded") then
    colls.reqbody_processor.values[1] = "URLENCODED"
    parse_form(args, body, self.max)
  elseif find(ct, "^application/[%w.+-]*json") then
    colls.reqbody_processor.values[1] = "JSON"
    local ok, doc = pcall(proxy.json.decode, body)
    if ok then
      walk(args, doc, "", self.max, 0)
    else
      problem = "JSON: " .. tostring(doc):gsub("^.-: ", "")
    end
  elseif find(ct, "^multipart/form%-data") then
    colls.reqbody_processor.values[1] = "MULTIPART"
    local b = match(ct, 'boundary="([^"]+)"') or match(ct, "boundary=([^;%s]+)")
    if not b then
      problem = "multipart: no boundary parameter"
    else
      -- The boundary's case is the client's: read it from the original header.
      local orig = self.req:header("content-type")
      b = match(orig, 'oundary="([^"]+)"') or match(orig, "oundary=([^;%s]+)")
      local ok, perr = parse_multipart(args, files, body, b, self.max, ph)
      if not ok then problem = perr end
    end
  end
  if problem then
    err.n, err.names[1], err.values[1] = 1, "", problem
    colls.body_error_flag.values[1] = "1"
  end
end

-- Collection `name` (a base or a names collection), built on first use.
function State:coll(name)
  local c = self.colls[name]
  if c then return c end
  local req = self.req
  local base = M.NAMES[name]
  if base then
    local b = self:coll(base)
    c = { n = b.n, names = b.names, values = b.names }
  elseif name == "method" then
    c = one(req:method())
  elseif name == "path" then
    c = one(req:path())
  elseif name == "uri" then
    c = one(req:uri())
  elseif name == "query_string" then
    local u = req:uri()
    local q = find(u, "?", 1, true)
    c = one(q and sub(u, q + 1) or "")
  elseif name == "query_args" then
    c = new()
    local u = req:uri()
    local q = find(u, "?", 1, true)
    if q then parse_form(c, sub(u, q + 1), self.max) end
  elseif name == "headers" or name == "cookies" then
    local h, ck = new(), new()
    for k, v in pairs(req:headers()) do
      if type(v) == "table" then
        for _, x in ipairs(v) do add(h, k, x, self.max) end
      else
        add(h, k, v, self.max)
      end
    end
    for i = 1, h.n do
      if h.names[i] == "cookie" then
        for pair in gmatch(h.values[i], "[^;]+") do
          local k, v = match(pair, "^%s*([^=]-)%s*=%s*(.-)%s*$")
          if k then
            local b = byte(v, 1)
            if b == 37 or b == 123 or b == 91 then
              -- %7B... (a URL-encoded JSON document) is looked at decoded
              local d = b == 37 and urldecode(v) or v
              local db = byte(d, 1)
              if db == 123 or db == 91 then add_value(ck, k, d, self.max) else add(ck, k, v, self.max) end
            else
              add(ck, k, v, self.max)
            end
          else add(ck, (match(pair, "^%s*(.-)%s*$")), "", self.max) end
        end
      end
    end
    self.colls.headers, self.colls.cookies = h, ck
    return self.colls[name]
  elseif M.BODY[name] and name ~= "files_names" and name ~= "files_combined_size"
    and name ~= "args_combined_size" then
    self:body_collections()
    return self.colls[name]
  elseif name == "basename" then
    c = one(match(req:path(), "[^/]*$") or "")
  elseif name == "protocol" then
    c = one("HTTP/" .. tostring(req:http_version()))
  elseif name == "request_line" then
    c = one(req:method() .. " " .. req:uri() .. " HTTP/" .. tostring(req:http_version()))
  elseif name == "remote_addr" then
    c = one(tostring(req:client_ip() or ""))
  elseif name == "files_names" then
    local f = self:coll("files")
    c = { n = f.n, names = f.names, values = f.names }
  elseif name == "files_combined_size" then
    c = one("0")
  elseif name == "args_combined_size" then
    local total = 0
    for _, cn in ipairs({ "query_args", "body_args" }) do
      local a = self:coll(cn)
      for i = 1, a.n do total = total + #a.names[i] + #a.values[i] end
    end
    c = one(tostring(total))
  elseif name == "unique_id" then
    c = one(tostring(req.ctx and req.ctx.request_id or ""))
  elseif name == "duration" then
    c = one("0")
  else
    error("waf: unknown collection " .. tostring(name))
  end
  self.colls[name] = c
  return c
end

return M
