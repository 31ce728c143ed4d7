-- proxy.cache in the proxy.test double: the engine's store (engine/cache_store.h, through
-- lua/luaproxy/cache.lua) as Lua tables on the fake clock, with the same Zone methods. The
-- engine gathers a stored body as it streams; here proxy.test's run_chain hands the
-- upstream's body over once the response is through (commit), and releases key locks as the
-- engine does when the head goes out. A spec declares zones with T.cache_zones{ name = {} }.
local M = {}

local type, pairs, ipairs, setmetatable, sub = type, pairs, ipairs, setmetatable, string.sub

function M.registry(now, hooks)
  local reg = {}
  local zones = {}

  local Zone = {}
  Zone.__index = Zone

  local function entry(z, key, sec)
    local t = z.entries[key]
    local e = t and t[sec]
    if e and e.keep_until < now() then
      t[sec] = nil
      return nil
    end
    return e
  end

  function Zone:get(req, key, sec)
    local e = entry(self, key, sec or "")
    req._cache_hit = e
    if not e then return nil end
    self.lookups = self.lookups + 1
    return e.head, #e.body
  end

  function Zone:lock(req, key)
    if self.locks[key] and self.locks[key] ~= req then return false end
    self.locks[key] = req
    req._cache_lock = { zone = self, key = key }
    return true
  end

  function Zone:locked(key) return self.locks[key] ~= nil end

  -- A run of proxy.test is one request at a time: a held lock is never released meanwhile,
  -- so waiting is the fake clock passing.
  function Zone:wait(key, seconds) hooks.sleep(seconds) return false end

  -- No other request's fill is ever in flight to follow as it fills.
  function Zone:get_filling() return nil end

  function Zone:store(req, key, sec, head, keep)
    if req:method() ~= "GET" or req._cache_fill then return false end
    if self:too_large(req) then
      self.counts.abandoned = (self.counts.abandoned or 0) + 1
      return false
    end
    req._cache_fill = { zone = self, key = key, sec = sec, head = head, keep_until = now() + keep }
    return true
  end

  function Zone:put(key, sec, head, keep, body)
    local t = self.entries[key] or {}
    self.entries[key] = t
    t[sec] = { head = head, body = body or "", keep_until = now() + keep }
    return true
  end

  function Zone:respond(req, status, headers, first, last)
    local e = req._cache_hit
    if not e then error("cache: no entry looked up", 2) end
    local body = e.body
    if (first and first <= -2) or status == 204 or status == 304 then
      body = ""
    elseif first and first >= 0 then
      body = sub(body, first + 1, last + 1)
    end
    if headers.wire and #headers == 0 then -- only as lines (the cache plugin's plain hit)
      local pairs_of = {}
      for name, value in headers.wire:gmatch("([^:\r\n]+): ([^\r\n]*)\r\n") do
        pairs_of[#pairs_of + 1] = { name, value }
      end
      pairs_of.base = headers.base
      headers = pairs_of
    end
    if headers.base then -- a shared list's fields first (the engine's Zone:respond)
      local all = {}
      for i, kv in ipairs(headers.base) do all[i] = kv end
      for _, kv in ipairs(headers) do all[#all + 1] = kv end
      headers = all
    end
    hooks.respond(req, status, headers, body)
  end

  function Zone:read(req, first, n, prefix)
    local e = req._cache_hit
    if not e then error("cache: no looked-up entry to read", 2) end
    return (prefix or "") .. sub(e.body, first + 1, first + n)
  end

  -- The client's slice of the upstream's body (proxy.test's run_chain applies it); the
  -- upstream's Content-Length must hold it, as in the engine.
  function Zone:upstream_length(req) return tonumber(req:resp_header("content-length")) end

  -- Over the declared max_object_size (T.cache_zones{ z = { max_object_size = n } }, bytes;
  -- none: no limit) by the upstream's Content-Length.
  function Zone:too_large(req)
    local n = self:upstream_length(req)
    return n ~= nil and self.max_object ~= nil and n > self.max_object
  end

  function Zone:window(req, first, n)
    local len = self:upstream_length(req)
    if not len or first < 0 or n < 0 or first + n > len then return false end
    req._cache_window = { first, n }
    return true
  end

  -- The double keeps no field names' case: every name is served lower-case.
  function Zone:names() return {} end
  function Zone:resp_fields(req) return req:resp_headers(), {} end
  function Zone:default_key(req)
    return "GET " .. (req:scheme() or "http") .. "://" .. req:host() .. req:uri()
  end

  -- The engine's views read fields as they are indexed; the double's are whole tables.
  function Zone:req_view(req) return req:headers() end
  function Zone:resp_view(req) return req:resp_headers() end

  -- The engine writes the fields after `meta`; the double in Lua, every field but the
  -- hop-by-hop ones (engine/cache_ffi.c never_stored), lower-case.
  local NEVER_STORED = { connection = true, ["keep-alive"] = true, ["proxy-connection"] = true,
    te = true, ["transfer-encoding"] = true, upgrade = true, trailer = true,
    ["proxy-authenticate"] = true, ["proxy-authentication-info"] = true,
    ["proxy-authorization"] = true }
  function Zone:store_fields(req, key, sec, meta, keep)
    local out = { meta }
    for name, v in pairs(req:resp_headers()) do
      if not NEVER_STORED[name] then
        for _, x in ipairs(type(v) == "table" and v or { v }) do
          out[#out + 1] = "h " .. name .. "\t" .. x .. "\n"
        end
      end
    end
    return self:store(req, key, sec, table.concat(out), keep)
  end

  function Zone:miss_status(req, status, stored, ttl)
    req:set_resp_header("Cache-Status", "luaproxy; fwd=uri-miss; fwd-status=" .. string.format("%d", status)
      .. (stored and ("; stored; ttl=" .. string.format("%d", math.floor(ttl))) or ""))
  end

  function Zone:set_status(req, value) req:set_resp_header("Cache-Status", value) end

  function Zone:add_field(req, name, value)
    req:add_resp_header(name, value)
    return true
  end

  -- The engine's run of the plugin's common hit and miss (engine/cache_native.c) replays
  -- decisions the plugin made; the double has no engine path: every request runs the plugin.
  function Zone:native_t0() return nil end
  function Zone:native_learn() end
  function Zone:native_hit() end

  -- The double's requests have no fixed header slots.
  function Zone:hit_room() return math.huge end

  function Zone:answer(req, res)
    local list = {}
    for name, v in pairs(res.headers or {}) do
      for _, x in ipairs(type(v) == "table" and v or { v }) do list[#list + 1] = { name, x } end
    end
    hooks.respond(req, res.status, list, res.body or "")
    return true
  end

  function Zone:refresh(req, head, keep)
    local e = req._cache_hit
    if not e then return false end
    e.head, e.keep_until = head, now() + keep
    return true
  end

  -- The responses among a key's entries, as the engine counts a purge: not the key's Vary
  -- marker ("V ..." without a secondary key), nor an empty marker.
  local function responses(t)
    local n = 0
    for sec, e in pairs(t or {}) do
      if e.head ~= "" and not (sec == "" and sub(e.head, 1, 2) == "V ") then n = n + 1 end
    end
    return n
  end

  function Zone:purge(key)
    local n = responses(self.entries[key])
    self.entries[key] = nil
    return n
  end

  function Zone:purge_prefix(prefix)
    local n = 0
    for key, t in pairs(self.entries) do
      if sub(key, 1, #prefix) == prefix then
        n = n + responses(t)
        self.entries[key] = nil
      end
    end
    return n
  end

  function Zone:purge_all() return self:purge_prefix("") end

  function Zone:count(what) self.counts[what] = (self.counts[what] or 0) + 1 end

  local function new_zone(name, conf)
    return setmetatable({ name = name, entries = {}, locks = {}, counts = {}, lookups = 0,
      max_object = type(conf) == "table" and tonumber(conf.max_object_size) or nil }, Zone)
  end

  -- proxy.cache as plugins see it.
  reg.api = {
    zone = function(name) return zones[name] end,
    purge = function(name, key)
      local z = zones[name]
      if not z then error("proxy.cache.purge(): no cache zone named " .. tostring(name), 2) end
      if type(key) == "string" then return z:purge(key) end
      if type(key) == "table" and key.prefix then return z:purge_prefix(key.prefix) end
      return z:purge_all()
    end,
  }

  -- T.cache_zones{ name = { memory = "1m" }, ... }: declares zones (empty ones).
  function reg.declare(names)
    for k in pairs(zones) do zones[k] = nil end
    for name, conf in pairs(names or {}) do zones[name] = new_zone(name, conf) end
  end

  -- The zone's state for assertions: entries, counts, locks.
  function reg.zone(name) return zones[name] end

  -- The request's response is through: its fill is linked with the upstream's body, its
  -- lock released.
  function reg.finish(req, body)
    local f = req._cache_fill
    if f then
      req._cache_fill = nil
      local t = f.zone.entries[f.key] or {}
      f.zone.entries[f.key] = t
      t[f.sec] = { head = f.head, body = body, keep_until = f.keep_until }
    end
    reg.release(req)
  end

  -- The head went out: a lock the request holds goes.
  function reg.release(req)
    local l = req._cache_lock
    if l and l.zone.locks[l.key] == req then l.zone.locks[l.key] = nil end
    req._cache_lock = nil
  end

  function reg.reset() reg.declare({}) end

  return reg
end

return M
