-- lower(s), kept per VM, for names (header, cookie and argument names): a request's names are
-- mostly the last request's, and lower() makes (hashes and interns) a string each time. A
-- pure function of s, so nothing of one request shows in another's; bounded (emptied when
-- full: names are the clients'). Only short names: a JSON leaf's name is its whole path, and
-- 1000 leaves under a 100 KB key kept 200 MB per request.
local lower = string.lower

local MAX, LEN = 4096, 64
local memo, n = {}, 0

return function(s)
  local l = memo[s]
  if l then return l end
  l = lower(s)
  if #s > LEN then return l end
  if n >= MAX then memo, n = {}, 0 end
  memo[s], n = l, n + 1
  return l
end
