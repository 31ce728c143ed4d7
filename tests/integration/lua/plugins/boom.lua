-- Test fixture: raises an error in the phase its config names (only there).
local P = {
  name = "boom",
  priority = 500,
  schema = {
    fields = {
      phase = { type = "string", required = true,
                one_of = { "request", "upstream", "response", "response_body", "log" },
                description = "the phase that fails" },
      message = { type = "string", default = "boom-fixture-error", description = "error text" },
    },
  },
}

local function fail(conf)
  error(conf.message .. " in " .. conf.phase)
end

function P.request(req, conf)
  if conf.phase == "request" then fail(conf) end
  req.ctx.boom_request_ran = true
end

function P.upstream(req, conf)
  if conf.phase == "upstream" then fail(conf) end
end

function P.response(req, conf)
  if conf.phase == "response" then fail(conf) end
end

function P.response_body(req, chunk, eof, conf)
  if conf.phase == "response_body" then fail(conf) end
  return nil
end

function P.log(req, conf)
  if conf.phase == "log" then fail(conf) end
end

return P
