-- Checks that lua/luaproxy/ffi.lua declares exactly the functions engine/lua_api.h
-- exports, with the same prototypes (whitespace aside). Run: luajit check_ffi_decls.lua ROOT
local root = arg[1] or "."

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

local function normalize(proto)
  proto = proto:gsub("/%*.-%*/", ""):gsub("%s+", " "):gsub("%s*([%(%),%*])%s*", "%1")
  return (proto:gsub("^%s+", ""):gsub("%s+$", ""))
end

local function prototypes(text)
  local out, n = {}, 0
  text = text:gsub("/%*.-%*/", "")
  for proto in text:gmatch("[%w_ %*]+lp_ffi_[%w_]+%s*%b()%s*;") do
    local name = proto:match("(lp_ffi_[%w_]+)%s*%(")
    out[name] = normalize(proto)
    n = n + 1
  end
  return out, n
end

local header, nh = prototypes(read(root .. "/engine/lua_api.h"))
local cdef = read(root .. "/lua/luaproxy/ffi.lua"):match("ffi%.cdef%s*%[%[(.-)%]%]")
assert(cdef, "no ffi.cdef block in lua/luaproxy/ffi.lua")
local lua, nl = prototypes(cdef)

local bad = 0
for name, proto in pairs(header) do
  if not lua[name] then
    print("missing in ffi.lua: " .. proto); bad = bad + 1
  elseif lua[name] ~= proto then
    print("differs: " .. name .. "\n  lua_api.h: " .. proto .. "\n  ffi.lua:   " .. lua[name]); bad = bad + 1
  end
end
for name, proto in pairs(lua) do
  if not header[name] then print("not in lua_api.h: " .. proto); bad = bad + 1 end
end
-- lp_ffi_cache_fields' names: the C list (LP_FFI_CACHE_FIELDS) and K.CACHE_FIELDS agree.
local cnames = {}
local macro = read(root .. "/engine/lua_api.h"):match("#define LP_FFI_CACHE_FIELDS(.-)\nint ")
for name in (macro or ""):gmatch('"([^"]+)"') do cnames[#cnames + 1] = name end
local lnames = read(root .. "/lua/luaproxy/ffi.lua"):match("CACHE_FIELDS = (%b{})") or ""
local i = 0
for name in lnames:gmatch('"([^"]+)"') do
  i = i + 1
  if cnames[i] ~= name then print("CACHE_FIELDS differ at " .. i .. ": " .. name); bad = bad + 1 end
end
if i ~= #cnames or i == 0 then print("CACHE_FIELDS: lengths differ"); bad = bad + 1 end

print(string.format("%d passed, %d failed", (nh > nl and nh or nl) - bad, bad))
os.exit(bad == 0 and nh > 0 and 0 or 1)
