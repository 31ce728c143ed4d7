-- A bootstrap file with `config_source = { etcd = {...} }` (issue #18): the config proper
-- comes from etcd, as one JSON document the engine keeps in a local file (engine/etcd.c
-- writes it; docs/fleet.md). Every evaluation of the bootstrap (start, reload, -t, the
-- workers' fallback) merges that document here, before validation, so a document from
-- etcd is checked and applied by the one reload path, all or nothing.
local cjson = require "cjson.safe"

local type, pairs, open, format = type, pairs, io.open, string.format

local M = {}

-- The default local copy: next to the bootstrap, "<bootstrap>.etcd.json".
function M.state_path(path, etcd)
  local f = etcd and etcd.state_file
  if type(f) ~= "string" then return path .. ".etcd.json" end
  if f:sub(1, 1) == "/" then return f end
  local dir = path:match("^(.*)/[^/]*$")
  return dir and (dir .. "/" .. f) or f
end

local function read(p)
  local f = open(p, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

-- t: the evaluated bootstrap; the document's top-level keys are added where the bootstrap
-- has none. doc: the document file to merge (the engine names a
-- candidate while it applies one from etcd), else the last good copy. Returns the merged
-- table, or nil and an error. A bootstrap without config_source.etcd is returned as is.
function M.merge(path, t, doc)
  if type(t) ~= "table" or type(t.config_source) ~= "table"
    or type(t.config_source.etcd) ~= "table" then
    return t
  end
  doc = doc or M.state_path(path, t.config_source.etcd)
  local s = read(doc)
  if not s then
    -- Nothing from etcd yet: the bootstrap alone serves (404 for every request, and
    -- GET /ready says 503) until the first document comes.
    if t.routes == nil then t.routes = {} end
    return t
  end
  local d, err = cjson.decode(s)
  if type(d) ~= "table" or type(d.config) ~= "table" then
    return nil, format("%s: not a config document from etcd: %s", doc, err or "no config object")
  end
  -- Where the document's keys came from, for errors about them (M.locate).
  local name = type(d.key) == "string"
    and format("etcd:%s (revision %s)", d.key, tostring(d.revision))
    or format("etcd revision %s", tostring(d.revision))
  M.merged = { name = name, keys = {} }
  M.plugins = { doc = doc, sources = type(d.plugins) == "table" and d.plugins or {},
                prefix = type(d.plugin_prefix) == "string" and d.plugin_prefix or "plugins/" }
  for k, v in pairs(d.config) do
    if t[k] == nil then M.merged.keys[k] = true end
    if k == "config_source" then
      return nil, format("%s: config_source may only be set in the bootstrap file",
                         M.merged.name)
    end
    -- The bootstrap's own keys win: it holds what is this instance's (listen, admin,
    -- workers...), the document what the fleet shares.
    if t[k] == nil then t[k] = v end
  end
  return t
end

-- An error about the merged config ("BOOTSTRAP: routes[2].upstream: ...") names the etcd
-- key instead of the bootstrap file when the key path's top-level key came from the document
-- (the bootstrap file holds no such line: a user would look for it there in vain). Other
-- errors come back as they were.
function M.locate(path, err)
  local m = M.merged
  if not m or type(err) ~= "string" then return err end
  local rest = err:sub(1, #path + 2) == path .. ": " and err:sub(#path + 3) or nil
  local top = rest and rest:match("^([%a_][%w_]*)[%.%[:]")
  if top and m.keys[top] then return m.name .. ": " .. rest end
  return err
end

-- A plugin's Lua source from etcd (PREFIX plugins/NAME, handed over with the document),
-- and the chunk name errors about it carry ("@etcd:/luaproxy/plugins/NAME": a syntax error
-- reads "etcd:/luaproxy/plugins/NAME:3: ..."); nil when the config is not from etcd or has
-- no such plugin. A VM that merged the document (the config check) has the sources at hand;
-- a worker VM given the checked config reads them from the same document file: the
-- candidate its generation was checked with (opts.source_doc), else the last good copy
-- (the candidate becomes it when the reload succeeds).
function M.plugin(name, cfg, opts)
  local p = M.plugins
  if not p and opts and opts.push_plugins then -- `luaproxy push`'s check (etcd_push.c)
    local d = cjson.decode(opts.push_plugins)
    p = { sources = type(d) == "table" and type(d.sources) == "table" and d.sources or {},
          prefix = type(d) == "table" and type(d.prefix) == "string" and d.prefix or "plugins/" }
    M.plugins = p
  end
  if not p then
    local etcd = type(cfg) == "table" and type(cfg.config_source) == "table"
      and cfg.config_source.etcd
    if type(etcd) ~= "table" or not opts or not opts.config_path then return nil end
    local s = opts.source_doc and read(opts.source_doc)
      or read(M.state_path(opts.config_path, etcd))
    local d = s and cjson.decode(s)
    p = { sources = type(d) == "table" and type(d.plugins) == "table" and d.plugins or {},
          prefix = type(d) == "table" and type(d.plugin_prefix) == "string" and d.plugin_prefix
            or "plugins/" }
    M.plugins = p
  end
  local src = p.sources[name]
  if type(src) ~= "string" then return nil end
  return src, "@etcd:" .. p.prefix .. name
end

local function has_function(v, seen)
  if type(v) == "function" or type(v) == "userdata" then return true end
  if type(v) ~= "table" or seen[v] then return false end
  seen[v] = true
  for k, x in pairs(v) do
    if has_function(k, seen) or has_function(x, seen) then return true end
  end
  return false
end

-- `luaproxy push`: the file's table (Lua, JSON or YAML) as a JSON document, or nil, error.
function M.encode_file(path)
  local data = require "luaproxy.config_data"
  local t, err
  if data.format(path) then
    local chunk
    chunk, err = data.loader(path)
    if chunk then t = chunk() end
  else
    local chunk
    chunk, err = loadfile(path)
    if chunk then
      local ok, v = pcall(chunk)
      if ok then t = v else err = v end
    end
  end
  if type(t) ~= "table" then return nil, err or (path .. ": the file must return a table") end
  if t.config_source ~= nil then
    return nil, path .. ": config_source belongs in the bootstrap file, not in etcd"
  end
  if has_function(t, {}) then
    return nil, path .. ": a config holding functions cannot go to etcd (JSON): name handler "
      .. "modules and plugins instead"
  end
  local s
  s, err = cjson.encode(t)
  if not s then return nil, path .. ": " .. tostring(err) end
  return s
end

return M
