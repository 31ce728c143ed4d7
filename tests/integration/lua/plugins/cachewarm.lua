-- Test fixture: init_worker warms a cache zone (docs/lua-api.md lists it as an init_worker
-- use): it puts an entry, and the request phase reports what the put and a lookup of it
-- gave in X-Warm ("put=true got=BODYLEN").
local state = {}
local P = {
  name = "cachewarm",
  priority = 20,
  schema = { fields = { zone = { type = "string", default = "r", description = "the zone" } } },
}
local KEY = "GET http://a.test/warm"
function P.init_worker(conf)
  state.put = proxy.cache.zone(conf.zone):put(KEY, "", "h X-Warm\tyes\n", 60, "warm-body")
end
function P.request(req, conf)
  local _, blen = proxy.cache.zone(conf.zone):get(req, KEY, "")
  req:set_header("X-Warm", "put=" .. tostring(state.put) .. " got=" .. tostring(blen))
end
return P
