-- Test fixture (test_cache.py): a site's rule before the cache plugin, bypassing the cache
-- (req:cache_bypass(): no lookup) for requests carrying X-Bypass.
local P = { name = "cachebypass", priority = 900, schema = { fields = {} } }
function P.request(req)
  if req:header("X-Bypass") then req:cache_bypass() end
end
return P
