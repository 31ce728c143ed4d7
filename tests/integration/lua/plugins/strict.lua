-- Test fixture for config checking: a schema with a required bounded integer.
local P = {
  name = "strict",
  priority = 10,
  schema = {
    fields = {
      level = { type = "integer", required = true, min = 1, max = 5, description = "1..5" },
      mode = { type = "string", default = "a", one_of = { "a", "b" }, description = "a or b" },
    },
  },
}
function P.request(req, conf) req:set_header("X-Strict-Level", conf.level) end
return P
