-- Test fixture (a user plugin, outside the source tree's plugins/): real work in a loop on
-- every request, to show that user code is JIT-compiled. With `jitlog` set, init_worker
-- starts LuaJIT's jit.v, which writes one line per trace to that file.
local byte, tostring = string.byte, tostring

local P = {
  name = "hot",
  priority = 80,
  schema = {
    fields = {
      jitlog = { type = "string", description = "file jit.v writes its trace lines to" },
    },
  },
}

local function checksum(s)
  local h = 0
  for i = 1, #s do
    h = (h * 31 + byte(s, i)) % 4294967296
  end
  return h
end

function P.init_worker(conf)
  if conf.jitlog then require("jit.v").start(conf.jitlog) end
end

function P.request(req, conf)
  req:set_header("X-Hot", tostring(checksum(req:uri())))
end

return P
