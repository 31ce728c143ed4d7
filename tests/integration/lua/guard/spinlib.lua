-- Test fixture: a module a user plugin requires, with a loop that never ends.
local M = {}

function M.spin()
  local n = 0
  repeat n = n + 1 until n < 0 -- never: n only grows (a double never wraps)
end

return M
