-- Test fixture (a user plugin): a runaway loop in the request phase, either in this file
-- (`where = "here"`) or in a module it requires (`where = "module"`: spinlib.lua, beside
-- the config, on package.path). Any other path of the request is served normally.
local spinlib = require "spinlib"

local P = {
  name = "spinreq",
  priority = 70,
  schema = {
    fields = {
      where = { type = "string", one_of = { "here", "module" }, description = "where it spins" },
    },
  },
}

function P.request(req, conf)
  if not req:path():find("/spin$") then return end
  if conf.where == "module" then return spinlib.spin() end
  while true do end
end

return P
