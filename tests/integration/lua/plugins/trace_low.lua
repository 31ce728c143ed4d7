-- Test fixture: the trace plugin (trace.lua) at priority 100 instead of 200.
local name = ...
local dir = debug.getinfo(1, "S").source:sub(2):match("^(.*)/[^/]*$") or "."
local chunk = assert(loadfile(dir .. "/trace.lua"))
return chunk(name, 100)
