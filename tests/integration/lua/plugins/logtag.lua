-- Test fixture: writes error log lines with proxy.log at every level from the request
-- phase (the docs say each line is tagged with the plugin name).
local P = { name = "logtag", priority = 5, schema = { fields = {} } }
function P.request(req)
  local key = req:query("logkey") or "nokey"
  proxy.log.err("LOGTAG-ERR", key)
  proxy.log.warn("LOGTAG-WARN", key)
  proxy.log.notice("LOGTAG-NOTICE", key)
  proxy.log.info("LOGTAG-INFO", key)
  proxy.log.debug("LOGTAG-DEBUG", key)
end
return P
