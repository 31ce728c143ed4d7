-- Test fixture: answers with the head stored in a cache zone under the default key of
-- http://a.test plus the `p` query argument (404 without one), to compare the heads the
-- cache plugin and the engine (cache_native.c) store.
local P = {
  name = "cachehead",
  priority = 900,
  schema = {
    fields = {
      zone = { type = "string", required = true, description = "cache zone" },
    },
  },
}
function P.request(req, conf)
  local head = proxy.cache.zone(conf.zone):get(req, "GET http://a.test" .. (req:query("p") or ""))
  req:respond(head and 200 or 404, head or "")
end
return P
