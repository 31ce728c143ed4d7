-- Adds a field name to the response's Vary (RFC 9110 12.5.5) without duplicating it: the
-- cors and compression plugins use it. Response phase.
--   vary.add(req, "Origin")
-- No Vary yet: one is set. Vary lines already there (the upstream's, another plugin's) are
-- merged into one line with the name appended when it is not among them (names compare
-- without regard to case). `Vary: *` already covers everything: left as it is.
local find, lower, gsub, concat = string.find, string.lower, string.gsub, table.concat
local type = type

local M = {}

-- Whether the comma-separated list `v` (lower-case) holds the token `lname`.
local function has(v, lname)
  local from = 1
  while true do
    local s, e = find(v, lname, from, true)
    if not s then return false end
    local before = s == 1 and "," or v:sub(s - 1, s - 1)
    local after = e == #v and "," or v:sub(e + 1, e + 1)
    if (before == "," or before == " " or before == "\t")
      and (after == "," or after == " " or after == "\t") then
      return true
    end
    from = e + 1
  end
end
M.has = has

function M.add(req, name)
  local v = req:resp_header("Vary")
  if v == nil then
    req:set_resp_header("Vary", name)
    return
  end
  -- Every Vary line (rarely more than one), joined.
  local all = req:resp_headers()["vary"]
  if type(all) == "table" then v = concat(all, ", ") end
  local lv = lower(v)
  if has(lv, lower(name)) or has(lv, "*") then
    if type(all) == "table" then req:set_resp_header("Vary", v) end -- one line from now on
    return
  end
  v = gsub(v, "^[%s,]+", "")
  v = gsub(v, "[%s,]+$", "")
  req:set_resp_header("Vary", v == "" and name or v .. ", " .. name)
end

return M
