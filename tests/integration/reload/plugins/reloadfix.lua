-- Test fixture for the reload and admin tests: init_worker can be told to fail, and the
-- schema has secret-looking fields (api_token, password) the admin API must redact.
local state = { inits = 0 }
local P = {
  name = "reloadfix",
  priority = 15,
  schema = {
    fields = {
      label = { type = "string", default = "none", description = "X-Reloadfix on responses" },
      fail = { type = "boolean", default = false, description = "init_worker raises an error" },
      api_token = { type = "string", description = "a secret: redacted by GET /config" },
      password = { type = "string", description = "a secret: redacted by GET /config" },
      level = { type = "integer", min = 1, max = 5, description = "1..5" },
    },
  },
}
function P.init_worker(conf)
  if conf.fail then
    error("reloadfix: init_worker failed on purpose")
  end
  state.inits = state.inits + 1
end
function P.response(req, conf)
  req:set_resp_header("X-Reloadfix", conf.label .. " inits=" .. state.inits)
end
return P
