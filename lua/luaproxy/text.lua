-- Text helpers the bundled plugins share: value templates ("text $var ${var} $$", and
-- %0..%9 pattern captures where a plugin allows them) compiled once and rendered per
-- request, and host-name patterns (exact, or *.example.com).
local find, sub, lower, byte = string.find, string.sub, string.lower, string.byte
local concat = table.concat
local type = type

local M = {}

-- Parses s into a plain string (nothing to substitute) or an odd-length array: literals at
-- odd indexes; at even ones a variable name (a key of `vars`) or, when `captures` is set, a
-- capture number 0..9. Unknown variables stay as written; "$$" is "$" and, with captures,
-- "%%" is "%".
function M.compile(s, vars, captures)
  local parts, lit = {}, {}
  local i, n = 1, #s
  local special = captures and "[%$%%]" or "%$"
  while i <= n do
    local d = find(s, special, i)
    if not d then lit[#lit + 1] = sub(s, i); break end
    lit[#lit + 1] = sub(s, i, d - 1)
    local c = sub(s, d + 1, d + 1)
    if byte(s, d) == 37 then -- %
      local k = byte(c)
      if k and k >= 48 and k <= 57 then
        parts[#parts + 1] = concat(lit)
        parts[#parts + 1] = k - 48
        lit = {}
      elseif c == "%" then
        lit[#lit + 1] = "%"
      else
        return nil, "% must be followed by a digit or % (write %% for a percent sign)"
      end
      i = d + 2
    elseif c == "$" then
      lit[#lit + 1] = "$"
      i = d + 2
    else
      local name, stop
      if c == "{" then
        local close = find(s, "}", d + 2, true)
        if close then name, stop = sub(s, d + 2, close - 1), close end
      else
        local a, b = find(s, "^[%a_][%w_]*", d + 1)
        if a then name, stop = sub(s, a, b), b end
      end
      if name and vars[name] then
        parts[#parts + 1] = concat(lit)
        parts[#parts + 1] = name
        lit = {}
        i = stop + 1
      else
        lit[#lit + 1] = "$"
        i = d + 1
      end
    end
  end
  local tail = concat(lit)
  if #parts == 0 then return tail end
  parts[#parts + 1] = tail
  return parts
end

-- Scratch buffer; phases of one worker never interleave inside render().
local buf = {}

-- A compiled template for this request: variables from req:var() (missing ones render
-- empty); capture k from caps[k], 0 from path:sub(s, e).
function M.render(tpl, req, caps, path, s, e)
  if type(tpl) == "string" then return tpl end
  local n = #tpl
  buf[1] = tpl[1]
  for i = 2, n, 2 do
    local k = tpl[i]
    local v
    if type(k) == "number" then
      v = (k == 0 and sub(path, s, e)) or caps[k]
    else
      v = req:var(k)
    end
    buf[i] = v or ""
    buf[i + 1] = tpl[i + 1]
  end
  return concat(buf, "", 1, n)
end

-- Schema check of a host pattern.
function M.valid_host(h)
  if find(h, "*", 1, true) and (sub(h, 1, 2) ~= "*." or find(h, "*", 2, true)) then
    return nil, "a wildcard host must look like *.example.com"
  end
  return true
end

-- A host pattern: the exact lower-case name, or (for *.example.com) nil, the suffix
-- ".example.com" and its length.
function M.compile_name(pattern)
  local h = lower(pattern)
  if sub(h, 1, 2) == "*." then return nil, sub(h, 2), #h - 1 end
  return h
end

-- name (lower case) against a compiled pattern: the subdomains of a suffix, at any depth.
function M.name_matches(name, exact, suffix, suffix_len)
  if exact then return name == exact end
  local n = #name
  return n > suffix_len and find(name, suffix, n - suffix_len + 1, true) ~= nil
end

return M
