-- The line of a config file that a validation error's key path names: "config.lua:14:
-- routes[2].plugins[1](cache).stale_while_revalidat: unknown field" rather than the key path
-- alone (README, "Reload": a failure says file:line). The config is evaluated Lua, so its
-- tables keep no positions; this reads the file's text instead, once per failed load.
--
-- Every table constructor in the file is walked and each of its fields recorded with its
-- line and its key path from the outermost constructor it is in. A config built in pieces
-- (`local api = { ... }` then `routes = { api }`) keeps short paths for the pieces: the
-- field whose path is the longest suffix of the error's path wins, and only when that is
-- unambiguous (one line) is a line given. An error about a field the file does not write
-- (a missing one, a default's check) names its table's line. JSON configs (docs/
-- config-formats.md) are read the same way (`"key":`, arrays as `[ ]`); YAML is left as is.
local find, sub, byte, format, tonumber = string.find, string.sub, string.byte, string.format, tonumber

local M = {}

local MAX_BYTES = 1024 * 1024

-- Lua (or JSON) text as a list of tokens: { kind, text, line }. kind: "name", "string",
-- "number", or the punctuation itself ("{", "==", ...). Comments and long strings skipped
-- or kept as strings, line numbers counted through them.
function M._tokens(s)
  local out, i, line, n = {}, 1, 1, #s
  local function push(kind, text, at) out[#out + 1] = { kind, text, at } end
  local function lines_in(a, b)
    local c = 0
    for _ in sub(s, a, b):gmatch("\n") do c = c + 1 end
    return c
  end
  -- A long bracket [==[ at position p: its closing position, or nil.
  local function long_end(p)
    local eq = s:match("^%[(=*)%[", p)
    if not eq then return nil end
    local _, e = find(s, "]" .. eq .. "]", p + #eq + 2, true)
    return e or n, p + #eq + 2
  end
  while i <= n do
    local c = byte(s, i)
    if c == 10 then
      line, i = line + 1, i + 1
    elseif c == 32 or c == 9 or c == 13 then
      i = i + 1
    elseif c == 45 and byte(s, i + 1) == 45 then -- "--": a comment, long or to the line's end
      local e = long_end(i + 2)
      if e then
        line = line + lines_in(i, e)
        i = e + 1
      else
        local _, le = find(s, "\n", i, true)
        i = le or n + 1
      end
    elseif c == 34 or c == 39 then -- a quoted string, escapes skipped
      local j, at = i + 1, line
      while j <= n do
        local d = byte(s, j)
        if d == 92 then
          if byte(s, j + 1) == 10 then line = line + 1 end
          j = j + 2
        elseif d == c then
          break
        else
          if d == 10 then line = line + 1 end
          j = j + 1
        end
      end
      push("string", sub(s, i + 1, j - 1), at)
      i = j + 1
    elseif c == 91 and (byte(s, i + 1) == 91 or byte(s, i + 1) == 61) and long_end(i) then
      local e, body = long_end(i)
      local at = line
      line = line + lines_in(i, e)
      push("string", sub(s, body, e), at)
      i = e + 1
    else
      local a, b = find(s, "^[%a_][%w_]*", i)
      if a then
        push("name", sub(s, a, b), line)
        i = b + 1
      else
        a, b = find(s, "^%d[%w%.]*", i)
        if a then
          push("number", sub(s, a, b), line)
          i = b + 1
        else
          local two = sub(s, i, i + 1)
          if two == "==" or two == "~=" or two == "<=" or two == ">=" or two == ".." then
            push(two, two, line)
            i = i + 2
          else
            local one = sub(s, i, i)
            push(one, one, line)
            i = i + 1
          end
        end
      end
    end
  end
  return out
end

-- Lua keywords that open a block closed by `end` (or `until`): a comma inside a function
-- body is not a field separator of the table around it.
local OPENS = { ["function"] = true, ["if"] = true, ["do"] = true, ["repeat"] = true }
local CLOSES = { ["end"] = true, ["until"] = true }

-- Every constructor field of the token list: { path = { k1, k2, ... }, line = N, root = R,
-- ref = NAME? }. path runs from the outermost constructor R the field is in; R.name is the
-- variable it was assigned to (`local api = {`), if any. ref: the field's value is that one
-- variable (`routes = { api }`), how a piece built apart is put in place.
function M._fields(toks, json)
  local out = {}
  local frames = {} -- open constructors: { path, root, index, state, depth, blocks, close }
  local function record(f, key, line)
    local p = {}
    for k = 1, #f.path do p[k] = f.path[k] end
    p[#p + 1] = key
    local e = { path = p, line = line, root = f.root }
    out[#out + 1] = e
    return e
  end
  local function push(path, root, kind)
    frames[#frames + 1] = { path = path, root = root, index = 0, state = "start", depth = 0,
                            blocks = 0, close = kind == "{" and "}" or "]" }
  end
  -- toks[i] is one name and the value ends after it: the field refers to that variable
  local function ref_at(i, f)
    local t, nx = toks[i], toks[i + 1]
    if t[1] == "name" and nx and (nx[1] == "," or nx[1] == ";" or nx[1] == f.close) then
      return t[2]
    end
  end
  local i, n = 1, #toks
  local top_blocks = 0 -- function bodies and blocks open outside any constructor
  while i <= n do
    local t = toks[i]
    local kind, line = t[1], t[3]
    local f = frames[#frames]
    if not f and kind == "name" then
      if OPENS[t[2]] then top_blocks = top_blocks + 1 elseif CLOSES[t[2]] then top_blocks = top_blocks - 1 end
    end
    local opener = kind == "{" or (json and kind == "[")
    if f and f.state == "start" and kind == f.close then
      frames[#frames] = nil
      local up = frames[#frames]
      if up then up.state = "value" end
    elseif f and f.state == "start" and opener then
      -- a positional field that is a table
      f.index = f.index + 1
      push(record(f, f.index, line).path, f.root, kind)
    elseif f and f.state == "start" and not json and kind == "name" and toks[i + 1]
      and toks[i + 1][1] == "=" then
      f.key = record(f, t[2], line)
      f.state = "after"
      i = i + 1
    elseif f and f.state == "start" and json and kind == "string" and toks[i + 1]
      and toks[i + 1][1] == ":" and f.close == "}" then
      f.key = record(f, t[2], line)
      f.state = "after"
      i = i + 1
    elseif f and f.state == "start" and not json and kind == "[" and toks[i + 2]
      and toks[i + 2][1] == "]" and toks[i + 3] and toks[i + 3][1] == "=" then
      local k = toks[i + 1]
      local key = k[1] == "number" and tonumber(k[2]) or k[2]
      f.key = record(f, key, line)
      f.state = "after"
      i = i + 3
    elseif f and f.state == "after" and opener then
      push(f.key.path, f.root, kind)
    elseif opener and not (f and f.state == "start") then
      -- a constructor inside an expression (a call's argument, a function body's local) or
      -- outside any: a root of its own, named by the variable it is assigned to
      if f then f.state = "value" end
      local pt, pn = toks[i - 1], toks[i - 2]
      local name = pt and pt[1] == "=" and pn and pn[1] == "name" and pn[2] or nil
      -- the config's own table: the file's last word (`return {` at the chunk's level), or
      -- a JSON document's
      local top = not f and (json or (pt and pt[1] == "name" and pt[2] == "return" and top_blocks <= 0))
      push({}, { name = name, top = top }, kind)
    elseif f then
      if f.state == "start" then -- a positional field that is not a table
        f.index = f.index + 1
        record(f, f.index, line).ref = not json and ref_at(i, f) or nil
        f.state = "value"
      elseif f.state == "after" then
        f.key.ref = not json and ref_at(i, f) or nil
        f.state = "value"
      end
      local outside = f.depth <= 0 and f.blocks <= 0
      if kind == f.close and outside then
        frames[#frames] = nil
        local up = frames[#frames]
        if up then up.state = "value" end
      elseif kind == "(" or kind == "[" then
        f.depth = f.depth + 1
      elseif kind == ")" or kind == "]" then
        f.depth = f.depth - 1
      elseif kind == "name" and OPENS[t[2]] then
        f.blocks = f.blocks + 1 -- `while ... do` and `for ... do` open with their `do`
      elseif kind == "name" and CLOSES[t[2]] then
        f.blocks = f.blocks - 1
      elseif (kind == "," or kind == ";") and outside then
        f.state = "start"
      end
    end
    i = i + 1
  end
  return out
end

-- "routes[2].plugins[1](cache).x" -> { "routes", 2, "plugins", 1, "x" }
local function split(keypath)
  local out = {}
  for seg in keypath:gsub("%b()", ""):gmatch("[^%.]+") do
    local name = seg:match("^[^%[]*")
    if name ~= "" then out[#out + 1] = tonumber(name) or name end
    for d in seg:gmatch("%[(%d+)%]") do out[#out + 1] = tonumber(d) end
  end
  return out
end

-- Is path p the end of want[1..len]?
local function ends(p, want, len)
  if #p > len then return false end
  for k = 0, #p - 1 do
    if p[#p - k] ~= want[len - k] then return false end
  end
  return true
end

-- Whether field fl stands at want[1..len]: a field of an unnamed root (the returned table)
-- by its whole path; one of a piece built apart (`local api = { ... }`) only where a field
-- of the file puts that variable, at the path before fl's own. Anything else (a table a
-- function returns, one from another file) is no evidence: no line rather than a wrong one.
local function placed(all, fl, want, len, mutated)
  local p = fl.path
  if not ends(p, want, len) then return false end
  -- a list the file changes after building it (table.insert, t[#t + 1] = ...): its
  -- places are not the ones written
  for k = 1, #p do
    if type(p[k]) == "number" and mutated[k == 1 and fl.root.name or p[k - 1]] then return false end
  end
  local name = fl.root.name
  if not name then return fl.root.top and #p == len end
  local before = len - #p
  for _, r in ipairs(all) do
    if r.ref == name and ends(r.path, want, before) and (r.root.name or (r.root.top and #r.path == before)) then
      return true
    end
  end
  return false
end

-- The line the key path names in text, or nil when the text does not say unambiguously.
function M.find(text, keypath, json)
  local want = split(keypath)
  if #want == 0 then return nil end
  local all = M._fields(M._tokens(text), json)
  local mutated = {}
  if not json then
    for nm in text:gmatch("table%.insert%s*%(%s*[%w_%.]-([%w_]+)%s*,") do mutated[nm] = true end
    for nm in text:gmatch("table%.remove%s*%(%s*[%w_%.]-([%w_]+)%s*[,%)]") do mutated[nm] = true end
    for nm in text:gmatch("([%w_]+)%s*%[%s*#") do mutated[nm] = true end
  end
  -- the error's own field, else the nearest table above it that the file writes
  for len = #want, 1, -1 do
    local best, best_line, ambiguous = 0, nil, false
    for _, fl in ipairs(all) do
      if #fl.path > 0 and placed(all, fl, want, len, mutated) then
        local d = #fl.path
        if d > best then
          best, best_line, ambiguous = d, fl.line, false
        elseif d == best and fl.line ~= best_line then
          ambiguous = true
        end
      end
    end
    if best_line and not ambiguous then return best_line end
    if best_line then return nil end -- the file writes it in several places: no guess
  end
  return nil
end

-- err: "PATH: KEYPATH: problem" from a config load; the same with PATH:LINE when the file
-- says where. Anything else is returned unchanged.
function M.annotate(path, err)
  if type(err) ~= "string" or sub(err, 1, #path + 2) ~= path .. ": " then return err end
  local rest = sub(err, #path + 3)
  -- (or a path whose last key is no identifier, a map's: `cache.zones.bad name: ...`)
  local keypath = rest:match("^([%w_][%w_%.%[%]%(%)%-]*):")
    or rest:match("^([%w_][%w_%.%[%]%(%)%-]*%.[^:%.\"]+):")
  if not keypath then return err end
  local lower = path:lower()
  if lower:find("%.ya?ml$") then return err end
  local fh = io.open(path, "rb")
  if not fh then return err end
  -- A generated config of many MiB (100,000 routes) is a tool's, read by key path: its
  -- tokens would cost seconds and a hundred MB here.
  if (fh:seek("end") or 0) > MAX_BYTES then
    fh:close()
    return err
  end
  fh:seek("set")
  local text = fh:read("*a")
  fh:close()
  local json = lower:find("%.json$") ~= nil
  -- a plugin's own message may go on down its entry: "routes[1].plugins[1](waf): rules[2]
  -- (rule 9002): unknown key": the rule's line rather than the plugin's, when the file has it
  local deeper = rest:match("^[^:]*: ([%a_][%w_]*%[%d+%])[ :]")
  local ok, line = true, nil
  if deeper then ok, line = pcall(M.find, text, keypath .. "." .. deeper, json) end
  if not ok or not line then ok, line = pcall(M.find, text, keypath, json) end
  if not ok or not line then return err end
  return format("%s:%d: %s", path, line, rest)
end

-- The error as a user should read it (engine/config.c calls this for every failed load): an
-- etcd document's key names the etcd key (luaproxy.config_source, when it merged one), a
-- key the file writes its line.
function M.locate(path, err)
  local src = package.loaded["luaproxy.config_source"]
  if type(src) == "table" then
    local moved = src.locate(path, err)
    if moved ~= err then return moved end
  end
  return M.annotate(path, err)
end

return M
