-- The engine's native helpers that Lua calls through the FFI (the compiled router, IP sets,
-- GeoIP: see engine/lua_api.h). In the proxy they are the binary's own functions (ffi.C); under the
-- proxy.test double (busted, `luaproxy test`) they come from the lp_native library, built
-- and installed with the project from the same sources, which `luaproxy test` and ctest
-- name in LP_NATIVE_LIB. So a plugin spec runs the same C code as the proxy.
local ffi = require "ffi"
require "luaproxy.ffi"

if pcall(function() return ffi.C.lp_ffi_ipset_new end) then return ffi.C end

local path = os.getenv("LP_NATIVE_LIB")
if not path or path == "" then
  error("luaproxy.native: the engine's native library is not loaded: run specs with "
    .. "`luaproxy test`, or set LP_NATIVE_LIB to liblp_native.so", 2)
end
return ffi.load(path)
