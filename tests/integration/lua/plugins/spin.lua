-- Test fixture: a runaway loop (never yields) in the phase its config names, for the
-- lua.phase_timeout watchdog. With helper = true the loop sits in a module-level helper
-- function the phase calls, instead of in the phase function itself.
local P = {
  name = "spin",
  priority = 90,
  schema = {
    fields = {
      phase = { type = "string", required = true, one_of = { "request", "upstream", "response" },
                description = "the phase that never ends" },
      helper = { type = "boolean", default = false, description = "loop in a helper" },
    },
  },
}

local function spin_helper()
  local n = 0
  while true do n = n + 1 end
end

function P.request(req, conf)
  if conf.phase ~= "request" then return end
  if conf.helper then spin_helper() end
  local n = 0
  while true do n = n + 1 end
end

function P.upstream(req, conf)
  if conf.phase ~= "upstream" then return end
  if conf.helper then spin_helper() end
  local n = 0
  while true do n = n + 1 end
end

function P.response(req, conf)
  if conf.phase ~= "response" then return end
  if conf.helper then spin_helper() end
  local n = 0
  while true do n = n + 1 end
end

return P
