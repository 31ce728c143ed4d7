-- Test fixture: a handler written as a module returning a table with `handler`.
local calls = 0
return {
  handler = function(req)
    calls = calls + 1
    return req:respond(200, "module handler call " .. calls, { ["X-Module"] = "module_handler" })
  end,
}
