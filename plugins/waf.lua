-- waf: a web application firewall. Rules (Lua tables: the bundled default set, files, or
-- inline) test request variables (method, path, query and body arguments, headers, cookies,
-- uploads' file names, the raw body) through transformations with operators; a match adds
-- to the request's anomaly score, denies at once, or is only logged. At the inbound
-- threshold the request is refused (or, with mode = "detect", only logged). The rule set is
-- compiled once per config load (luaproxy/waf/engine.lua); per request the plugin gathers
-- only the variables some rule needs, and reads the body only when a rule looks at it.
-- Docs: docs/plugins/waf.md.
local engine = require "luaproxy.waf.engine"
local sanitize = engine.sanitize
local V = require "luaproxy.waf.vars"
local seclang = require "luaproxy.waf.seclang"
local format, concat, find = string.format, table.concat, string.find
local ipairs, type, tostring = ipairs, type, tostring
local traceback = debug.traceback
local new_tab, clone
do
  local ok, tnew = pcall(require, "table.new")
  new_tab = ok and tnew or function() return {} end
  local okc, tclone = pcall(require, "table.clone")
  clone = okc and tclone or function(t)
    local out = {}
    for k, v in pairs(t) do out[k] = v end
    return out
  end
end

-- The bundled rule files, next to this file.
local HERE = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or ".")
local DEFAULT_DIR = HERE .. "/waf/rules"
local DEFAULT_FILES = { "protocol", "scanners", "traversal", "rfi", "shell", "php", "java",
                        "sqli", "xss" }

local P = {
  name = "waf",
  -- After request_limits (2900: a request refused for its shape costs nothing), before
  -- redirects, routing, authentication and rate limits.
  priority = 2700,
}

P.schema = {
  fields = {
    mode = { type = "string", default = "block", one_of = { "block", "detect", "learn" },
             description = "block: refuse requests at the threshold or matching a deny rule; "
               .. "detect: refuse nothing, log what would have been refused (detect_only); "
               .. "learn: refuse nothing, take the traffic as ordinary and log each rule and "
               .. "variable that fires as an exclusion ready to paste" },
    crs = { type = "any", doc_default = '"/usr/share/modsecurity-crs" when installed',
            custom = function(v)
              if v == false or (type(v) == "string" and v ~= "") then return true end
              return nil, "expected a path (a CRS directory or a .conf file) or false"
            end,
            description = "the OWASP Core Rule Set (or any SecLang rules) to run: a CRS "
              .. "directory (its rules/*.conf are read) or one .conf file. Unset: Debian's "
              .. "modsecurity-crs (/usr/share/modsecurity-crs) when it is installed, else the "
              .. "bundled Lua rules; false: the bundled Lua rules. With CRS the bundled attack "
              .. "rules are not loaded (rules and rule_files still run); a path that does "
              .. "not exist refuses the config" },
    crs_files = { type = "array", default = {}, elements = { type = "string" },
                  description = "more SecLang .conf files read after crs (exclusions, your "
                    .. "own SecRules); with crs = false, run alone beside the bundled Lua rules" },
    crs_tx = { type = "map", default = {}, keys = { type = "string" },
               -- (numbers as crs-setup.conf writes them: 10, not "10")
               values = { type = "string",
                          coerce = function(v) return type(v) == "number" and tostring(v) or v end },
               custom = function(t)
                 -- what CRS compares as numbers: a word there made every request score past it
                 for k, v in pairs(t) do
                   local lk = type(k) == "string" and string.lower(k):gsub("^tx[.:]", "") or ""
                   if (lk:find("_threshold$") or lk:find("paranoia_level$")
                       or lk:find("_anomaly_score$") or lk:find("_length$") or lk:find("^max_")
                       or lk == "combined_file_sizes" or lk == "sampling_percentage")
                       and not tostring(v):find("^%d+$") then
                     return nil, format("expected a whole number for %s (0 or more), got %q", k, tostring(v)), k
                   end
                   -- a threshold of 0: every request, score 0 included, reaches it
                   if lk:find("_threshold$") and tonumber(v) == 0 then
                     return nil, format("%s: a threshold of 0 refuses every request (at least 1)", k), k
                   end
                 end
                 return true
               end,
               description = "TX variables set before the rules run (CRS's crs-setup.conf "
                 .. "settings, e.g. allowed_methods); paranoia and inbound_threshold set "
                 .. "theirs" },
    crs_confirm = { type = "array", default = { "shell", "sql", "filename" },
                    elements = { type = "string", one_of = { "shell", "sql", "filename" } },
                    description = "rule families whose CRS matches are confirmed by parsing "
                      .. "the value (shell: command injection 932xxx read as a command line; "
                      .. "sql: 942190/942350 read by the SQL tokenizer; filename: 920120 on "
                      .. "an apostrophe inside a file name); {}: CRS raw (docs/plugins/waf.md)" },
    unsupported = { type = "string", default = "log", one_of = { "log", "refuse", "refuse_own" },
                    description = "a real ModSecurity construct the engine does not run (an "
                      .. "operator, variable or action it lacks; a name that is no SecLang is "
                      .. "always refused): log the list with file:line at load, refuse the "
                      .. "config, or refuse_own: refuse those in crs_files (and what they "
                      .. "include), list those in crs" },
    time_budget = { type = "number", default = 0.5, min = 0,
                    description = "most seconds of rule evaluation per request (0: none); "
                      .. "past it the rest is not evaluated" },
    over_budget = { type = "string", default = "block", one_of = { "block", "pass" },
                    description = "a request whose evaluation ran out of time_budget, or "
                      .. "raised an error: refuse it, or pass it (logged either way)" },
    paranoia = { type = "integer", default = 1, min = 1, max = 4,
                 description = "rules of this paranoia level and below run (higher: more "
                   .. "detection, more false positives)" },
    inbound_threshold = { type = "integer", default = 5, min = 1,
                          description = "anomaly score at which a request is refused "
                            .. "(critical 5, error 4, warning 3, notice 2 per matching rule)" },
    status = { type = "integer", default = 403, min = 400, max = 599,
               description = "status of a refused request (a deny rule may set its own)" },
    message = { type = "string", default = "request refused by the web application firewall\n",
                description = "body of a refused request (text/plain)" },
    default_rules = { type = "boolean", default = true,
                      description = "load the bundled rule set (plugins/waf/rules/*.lua)" },
    rule_files = { type = "array", default = {}, elements = { type = "string" },
                   description = "more rule files (Lua; relative paths from the config's "
                     .. "directory), read at each config load" },
    rules = { type = "array", default = {}, elements = { type = "any" },
              description = "more rules, inline (the rule format: docs/plugins/waf.md)" },
    exclusions = {
      type = "array", default = {},
      description = "rules (by id, id range or tag) taken out, or targets taken out of them",
      elements = {
        type = "record",
        fields = {
          ids = { type = "array", elements = { type = "integer" }, description = "rule ids" },
          id_ranges = { type = "array", elements = { type = "array", elements = { type = "integer" } },
                        description = "{ first, last } id ranges" },
          tags = { type = "array", elements = { type = "string" }, description = "rule tags" },
          targets = { type = "array", elements = { type = "string" },
                      description = "targets taken out of those rules (e.g. \"args:password\", "
                        .. "\"cookies\"); none: the rules are taken out whole" },
        },
      },
    },
    body_limit = { type = "integer", default = 131072, min = 0, max = 1073741824,
                   description = "most body bytes read to inspect" },
    body_limit_files = { type = "integer", default = 13107200, min = 0, max = 1073741824,
                         description = "most body bytes read of a multipart/form-data body "
                           .. "(an upload; ModSecurity's SecRequestBodyLimit): its files' "
                           .. "contents are not inspected, the rest must fit body_limit. "
                           .. "Buffered whole while read; at most body_limit: off" },
    body_over_limit = { type = "string", default = "refuse", one_of = { "refuse", "pass" },
                        description = "a body over body_limit (or body_limit_files): refuse "
                          .. "it (413), or pass it with its body uninspected (headers, path "
                          .. "and query still are)" },
    max_args = { type = "integer", default = 1024, min = 1,
                 description = "most values read per collection (arguments, headers, "
                   .. "cookies); a request with more is a body error (body_error), refused" },
    regex_error = { type = "string", default = "match", one_of = { "match", "ignore" },
                    description = "a regex that gives up on a value (PCRE2 match limit): "
                      .. "count as the rule matching, or as not matching (logged either way)" },
    hyperscan = { type = "boolean", default = true,
                  description = "match many patterns in one pass with Hyperscan when it is "
                    .. "installed (else every regex runs through PCRE2 alone)" },
  },
}

local function config_path(p)
  if p:sub(1, 1) == "/" then return p end
  local ok, rt = pcall(require, "luaproxy.runtime")
  local dir = ok and rt.config_dir
  if dir then return dir .. "/" .. p end
  return p
end

-- CRS where Debian's modsecurity-crs installs it: the rule set when `crs` is not set.
P.CRS_DEFAULT = "/usr/share/modsecurity-crs"

-- The CRS a config runs (a path), or nil for the bundled Lua rules.
function P.crs_path(conf)
  local c = conf.crs
  if c == false then return nil end
  if c == nil then
    return seclang.list_dir(P.CRS_DEFAULT .. "/rules") and P.CRS_DEFAULT or nil
  end
  return c
end

-- The rule files of a config: { { path, text }, ... }, or nil, problem.
local function rule_files(conf)
  local files = {}
  local paths = {}
  if conf.default_rules then
    -- With CRS, of the bundled set only its request-shape checks (protocol.lua: bad
    -- encodings, a body that does not parse, smuggling): what ModSecurity's recommended
    -- setup (200002) and nginx itself refuse beside CRS. CRS has the attack rules.
    for _, name in ipairs(P.crs_path(conf) and { "protocol" } or DEFAULT_FILES) do
      paths[#paths + 1] = DEFAULT_DIR .. "/" .. name .. ".lua"
    end
  end
  for _, f in ipairs(conf.rule_files or {}) do paths[#paths + 1] = config_path(f) end
  for i, path in ipairs(paths) do
    local text, err = engine.read_file(path)
    if not text then return nil, err end
    files[i] = { path, text }
  end
  return files
end

-- Loads (and checks) the rules of a config (files read by rule_files); nil, problem with
-- the rule's place.
function P.load_rules(conf, files)
  local err
  if not files then
    files, err = rule_files(conf)
    if not files then return nil, err end
  end
  local all = {}
  local function add(list) for _, r in ipairs(list) do all[#all + 1] = r end end
  for _, f in ipairs(files) do
    local list, lerr = engine.load_file(f[1], f[2])
    if not list then return nil, lerr end
    add(list)
  end
  if conf.rules and #conf.rules > 0 then
    local list, lerr = engine.load_list(conf.rules, "rules")
    if not list then return nil, lerr end
    add(list)
  end
  return all
end

-- A canonical text of plain data (for the cache key below); nil for anything else
-- (functions, userdata): such a config is compiled on its own.
local function canon(v, out)
  local t = type(v)
  if t == "string" then out[#out + 1] = format("%q", v)
  elseif t == "number" or t == "boolean" then out[#out + 1] = tostring(v)
  elseif t == "table" then
    local keys = {}
    for k in pairs(v) do
      if type(k) ~= "string" and type(k) ~= "number" then return nil end
      keys[#keys + 1] = k
    end
    table.sort(keys, function(a, b)
      if type(a) == type(b) then return a < b end
      return type(a) == "number"
    end)
    out[#out + 1] = "{"
    for _, k in ipairs(keys) do
      out[#out + 1] = tostring(k) .. "="
      if not canon(v[k], out) then return nil end
      out[#out + 1] = ","
    end
    out[#out + 1] = "}"
  else
    return nil
  end
  return true
end

-- Compiled rule sets of this VM by what they were compiled from (the rule files' text
-- included, so an edited file is parsed and checked again at a reload): routes with the
-- same waf settings share one. Weak values: a set no config uses any more is collected.
local compiled = setmetatable({}, { __mode = "v" })

local parsed = setmetatable({}, { __mode = "v" })

local function config_paths(list)
  local out = {}
  for _, p in ipairs(list) do out[#out + 1] = config_path(p) end
  return out
end

-- Compiles the SecLang rules of a config (crs, crs_files): once per distinct text and
-- settings in this VM. Raises "file:line: problem" (the config load then fails and the
-- old generation keeps serving).
local function compile_crs(conf, crs)
  local files = {}
  if crs then
    local paths = config_paths({ crs })
    if not seclang.list_dir(paths[1]) then
      local f = io.open(paths[1], "rb")
      if not f then
        error(format("waf: crs: %s does not exist (install Debian's modsecurity-crs, or set "
          .. "crs to a CRS directory or .conf file, or crs = false for the bundled rules)", paths[1]), 0)
      end
      f:close()
    end
    local err
    files, err = seclang.collect(paths)
    if not files then error(err, 0) end
  end
  -- crs's own files: unsupported = "refuse_own" lists what they do not run and refuses
  -- what the operator's crs_files (and what they include) do not
  local crs_own = {}
  for _, f in ipairs(files) do crs_own[f[1]] = true end
  local own, oerr = seclang.collect(config_paths(conf.crs_files or {}))
  if not own then error(oerr, 0) end
  for _, f in ipairs(own) do files[#files + 1] = f end
  local parts = { "crs\0" }
  for _, f in ipairs(files) do parts[#parts + 1] = f[1] .. "\0" .. f[2] .. "\0" end
  local key
  -- The walk is folded against the TX a request starts with (luaproxy.waf.fold): the
  -- settings seeding it are part of what the set is compiled from.
  local seed = P.seed_tx(conf)
  if canon({ conf.paranoia, conf.exclusions, conf.hyperscan, conf.unsupported, conf.crs_confirm, seed }, parts) then
    key = concat(parts)
  end
  local sec = key and compiled[key]
  if sec then return sec end
  -- The parsed files, shared by the settings compiled from them (paranoia levels).
  local tkey = concat(parts, "", 1, #files + 1)
  local set = parsed[tkey]
  if not set then
    local lerr
    set, lerr = seclang.load(files)
    if not set then error(lerr, 0) end
    parsed[tkey] = set
  end
  local refused = {}
  if conf.unsupported == "refuse" then
    refused = set.unsupported
  elseif conf.unsupported == "refuse_own" then
    for _, u in ipairs(set.unsupported) do
      if not crs_own[u:match("^(.-):%d+: ")] then refused[#refused + 1] = u end
    end
  end
  if #refused > 0 then
    local list = {}
    for i = 1, math.min(#refused, 5) do list[i] = refused[i] end
    error(format("waf: %d SecLang constructs the engine does not run (unsupported = \"%s\"): %s%s",
      #refused, conf.unsupported, concat(list, "; "), #refused > 5 and "; ..." or ""), 0)
  end
  local cerr
  sec, cerr = engine.compile_seclang(set, setmetatable({ tx = seed }, { __index = conf }))
  if not sec then error(cerr, 0) end
  sec.parsed = set -- keeps the parse alive for the other settings of this load
  if key then compiled[key] = sec end
  return sec
end

-- A summary of what a SecLang set does not run: "n× what (first at file:line)".
function P.unsupported_summary(sec)
  local by, order = {}, {}
  for _, u in ipairs(sec.unsupported) do
    local place, what = u:match("^(.-:%d+): (.*)$")
    if not place then place, what = "?", u end
    local e = by[what]
    if not e then
      e = { n = 0, first = place }
      by[what] = e
      order[#order + 1] = what
    end
    e.n = e.n + 1
  end
  local out = {}
  for _, what in ipairs(order) do
    out[#out + 1] = format("%d x %s (first at %s)", by[what].n, what, by[what].first)
  end
  return concat(out, "; ")
end

-- The TX collection a request starts with (what crs-setup.conf would set).
function P.seed_tx(conf)
  local tx = {
    crs_setup_version = "334", paranoia_level = tostring(conf.paranoia),
    executing_paranoia_level = tostring(conf.paranoia),
    inbound_anomaly_score_threshold = tostring(conf.inbound_threshold),
    outbound_anomaly_score_threshold = "4",
    allowed_methods = "GET HEAD POST OPTIONS PUT PATCH DELETE",
  }
  -- (a key as crs-setup.conf writes it, tx.name or TX:name, is the name)
  for k, v in pairs(conf.crs_tx or {}) do tx[(string.lower(k):gsub("^tx[.:]", ""))] = tostring(v) end
  return tx
end

local function compile(conf)
  local files, err = rule_files(conf)
  if not files then error(err, 0) end
  local parts = {}
  for _, f in ipairs(files) do parts[#parts + 1] = f[1] .. "\0" .. f[2] .. "\0" end
  local key
  local crs = P.crs_path(conf)
  if canon({ conf.paranoia, conf.exclusions, conf.rules, conf.hyperscan, crs or false }, parts) then
    key = concat(parts)
  end
  -- Rules are parsed and checked only for a rule set not compiled yet: a config load
  -- with the waf on many routes checks them once.
  local cs = key and compiled[key]
  if not cs then
    local rules, lerr = P.load_rules(conf, files)
    if not rules then error(lerr, 0) end
    local ok, res, cerr = pcall(engine.compile, rules, conf)
    if not ok then
      error(type(res) == "table" and res.msg or tostring(res), 0)
    end
    if not res then error(cerr, 0) end
    cs = res
    -- every Lua rule's id and tag, whatever its paranoia level (check_exclusions)
    cs.known_ids, cs.known_tags = {}, {}
    for _, r in ipairs(rules) do
      cs.known_ids[r.id] = true
      for t in pairs(r.tags or {}) do cs.known_tags[t] = true end
    end
    if key then compiled[key] = cs end
  end
  local c = {}
  for k, v in pairs(conf) do c[k] = v end
  c.cs = cs
  c.lua_ids, c.lua_tags = cs.known_ids, cs.known_tags -- kept when c.cs goes (check_exclusions)
  -- crs_files without crs (crs = false, or no CRS installed): those SecLang files alone,
  -- beside the bundled Lua rules
  if crs or #(conf.crs_files or {}) > 0 then
    c.crs = crs
    c.sec = compile_crs(conf, crs)
    -- the seed with what the set's initialisation rules (folded at load) add to it
    c.tx = c.sec.tx_start or P.seed_tx(conf)
    -- Each request's TX is one table.clone of c.tx_seed, made here to size with room for
    -- what the rules add (40 keys with CRS's initialisation folded in: a table grown key by
    -- key rehashes six times; copied key by key, 40 stores and look-ups per request). Never
    -- written: only its clones are.
    local n = 0
    for _ in pairs(c.tx) do n = n + 1 end
    c.tx_seed = new_tab(0, n + 16)
    for k, v in pairs(c.tx) do c.tx_seed[k] = v end
    -- The Lua rules (rules, rule_files) run beside CRS; with none, nothing else runs.
    if #cs.rules == 0 then c.cs = nil end
    -- SecRuleEngine in the files (ModSecurity's recommended modsecurity.conf says
    -- DetectionOnly): DetectionOnly makes the SecLang rules' verdict a would-block, as
    -- mode = "detect" does; Off leaves them out (the Lua rules still run)
    local set = c.sec.parsed
    c.sec_engine = set and set.engine or "on"
    c.sec_engine_at = set and set.engine_at
  end
  c.vopts = { max_args = conf.max_args }
  c.text = { ["Content-Type"] = "text/plain" }
  return c
end

-- Exclusions naming an id, a range or a tag no rule of the set has (a typo: the rule the
-- operator meant is not taken out): "exclusions[i].ids[j]: ..." texts.
function P.check_exclusions(c)
  local ids, tags = {}, {}
  local function add(known_ids, known_tags)
    for id in pairs(known_ids or {}) do ids[#ids + 1] = id end
    for t in pairs(known_tags or {}) do tags[t] = true end
  end
  add(c.lua_ids, c.lua_tags)
  local set = c.sec and c.sec.parsed
  if set then add(set.ids, set.tags) end
  local function any_in(lo, hi)
    for _, id in ipairs(ids) do if id >= lo and id <= hi then return true end end
    return false
  end
  local out = {}
  for i, ex in ipairs(c.exclusions or {}) do
    for j, id in ipairs(ex.ids or {}) do
      if not any_in(id, id) then
        out[#out + 1] = format("exclusions[%d].ids[%d]: no rule has id %d: it excludes nothing", i, j, id)
      end
    end
    for j, r in ipairs(ex.id_ranges or {}) do
      if not (r[1] and r[2] and any_in(r[1], r[2])) then
        out[#out + 1] = format("exclusions[%d].id_ranges[%d]: no rule has an id in %s..%s: it excludes "
          .. "nothing", i, j, tostring(r[1]), tostring(r[2]))
      end
    end
    for j, t in ipairs(ex.tags or {}) do
      if not tags[t] then
        out[#out + 1] = format("exclusions[%d].tags[%d]: no rule has the tag %q: it excludes nothing", i, j, t)
      end
    end
  end
  return out
end

-- One line for what the SecLang set does not run (unsupported = "log"), grouped by kind.
local function not_run_line(sec, mode)
  local kinds = {}
  for kind in P.unsupported_summary(sec):gmatch("[^;]+") do kinds[#kinds + 1] = kind:gsub("^%s+", "") end
  -- under the log's line length (2 KiB): the rest counted
  local out, len = {}, 0
  for i, k in ipairs(kinds) do
    if len + #k > 1500 then
      out[#out + 1] = format("%d more kinds", #kinds - i + 1)
      break
    end
    out[#out + 1] = k
    len = len + #k + 2
  end
  return format("waf: %d SecLang constructs not run (unsupported = %q): %s", #sec.unsupported, mode,
    concat(out, "; "))
end

-- A config problem (a missing crs path, a rule file's "file:line: problem") is returned,
-- not raised: the loader adds a Lua stack traceback to what compile raises, which says
-- nothing to someone fixing a config. A bug here still names its waf.lua line.
function P.compile(conf, where, warn)
  local ok, res = pcall(compile, conf)
  if ok then
    if warn then
      for _, w in ipairs(P.check_exclusions(res)) do warn(format("%s.%s", where or "waf", w)) end
      -- said once per load, however many routes run the same set
      if res.sec and #res.sec.unsupported > 0 then warn(not_run_line(res.sec, conf.unsupported)) end
      local lone = res.sec and res.sec.parsed and seclang.crs_incomplete(res.sec.parsed)
      if lone then warn("waf: " .. lone) end
      if res.sec and res.sec_engine ~= "on" then
        warn(format("waf: %s: SecRuleEngine %s: the SecLang rules %s", res.sec_engine_at or "?",
          res.sec_engine == "off" and "Off" or "DetectionOnly",
          res.sec_engine == "off" and "do not run (the Lua rules do)"
            or "refuse nothing, their verdicts are logged as would block"))
      end
    end
    return res
  end
  if type(res) == "string" then return nil, res end
  error(res, 0)
end

-- The Hyperscan databases are asked for here rather than in compile(): they are the slow
-- part, and the config check on the main thread does not need them (a pattern Hyperscan
-- refuses runs through PCRE2, never an error). They are compiled once per process, on the
-- engine's compile thread (luaproxy/waf/hs.lua; in busted, here, yielding between two
-- databases so that lua.phase_timeout holds).
local m_requests -- decisions on GET /metrics (docs/metrics.md)
local m_errors -- errors the rules raised (docs/metrics.md)

function P.init_worker(conf)
  local ok, err
  local cs = conf.cs
  if cs and not cs.ready then
    ok, err = engine.finish(cs, function() proxy.sleep(0) end)
    if not ok then error(err, 0) end
    if cs.pending then
      -- compiled on the registry's thread (luaproxy/waf/hs.lua): take them when ready
      local timer
      timer = proxy.timer.every(0.05, function(premature)
        if not premature and engine.poll(cs) then timer:cancel() end
      end)
    end
  end
  if conf.sec then
    local sec = conf.sec
    local first = not sec.ready
    local t0 = proxy.monotonic()
    ok, err = engine.finish_seclang(sec, function() proxy.sleep(0) end)
    if not ok then error(err, 0) end
    if first then
      -- Each database is compiled once per process, by the engine's compile thread or the
      -- first VM that needs it, and shared (luaproxy/waf/hs.lua): the other workers and a
      -- reload with the same rules say 0 compiled here. Until a database is there its
      -- rules run through PCRE2 alone; a timer takes it when it is.
      local function ready()
        proxy.log.info(format("waf: %d Hyperscan databases ready in %.3f s (%d compiled here, "
          .. "%d shared)", sec.hs_dbs or 0, proxy.monotonic() - t0, sec.hs_compiled or 0,
          (sec.hs_dbs or 0) - (sec.hs_compiled or 0)))
        -- The set's summary, with the patterns counted once the databases are there; by
        -- one worker (each VM compiles the same set from the same files).
        if not sec.reported and proxy.worker_id() == 1 then
          sec.reported = true
          local c = sec.counts
          proxy.log.info(format("waf: SecLang rules: %d read, %d compiled (%d above paranoia %d "
            .. "left out), %d response rules not run, %d excluded, %d folded at load (%d walked); "
            .. "%s", c.rules, c.compiled, c.paranoia_skipped, conf.paranoia, c.response,
            c.excluded, c.folded or 0, c.compiled - (c.folded or 0),
            sec.use_hs and format("%d Hyperscan patterns, %d PCRE2-only", sec.hs_patterns, #sec.pcre_only)
              or "no Hyperscan: every regex through PCRE2"))
        end
      end
      if not sec.pending then
        ready()
      else
        local timer
        timer = proxy.timer.every(0.05, function(premature)
          if premature then return end
          if engine.poll_seclang(sec) then
            timer:cancel()
            ready()
          end
        end)
      end
    end
  end
  -- Declared by every entry's init_worker: a name declared again is the same metric.
  m_requests = proxy.metrics.counter("waf_requests_total",
    "Requests the waf plugin inspected, by result.", { "result" })
  m_errors = proxy.metrics.counter("waf_rule_errors_total",
    "Errors raised while the waf plugin's rules ran (the request decided by over_budget), "
      .. "by rule kind.", { "rules" })
end

local function has_body(req)
  local cl = req:header("content-length")
  if cl then return cl ~= "0" end
  return req:header("transfer-encoding") ~= nil
end

-- The body the rules inspect: read up to body_limit, or, for a multipart/form-data body
-- when body_limit_files is the larger, up to body_limit_files with its files' contents
-- then left out (vars.without_files), the rest held to body_limit: ModSecurity's
-- SecRequestBodyLimit beside SecRequestBodyNoFilesLimit, so that an upload is not refused
-- for its file while its fields, part headers and file names are still all inspected.
-- Returns the body, or nil, err ("too large": over a limit, the third value saying which).
local function read_body(req, conf, vars)
  local limit, boundary = conf.body_limit, nil
  if conf.body_limit_files > limit then
    local berr
    boundary, berr = V.multipart_boundary(req:header("content-type"))
    vars.boundary, vars.boundary_error = boundary or false, berr -- (read once a request)
    if boundary then limit = conf.body_limit_files end
  end
  local body, err = req:body(limit)
  if not body then
    return nil, err, format("body over %s (%d bytes)", boundary and "body_limit_files" or "body_limit", limit)
  end
  if #body <= conf.body_limit then return body end
  -- (only a multipart body gets here)
  local whole = #body
  local rest, cut = V.without_files(body, boundary, conf.body_limit) -- (cut: the problem, on nil)
  if rest == nil then
    -- unparsed, its files could not be told from its fields: as any body over body_limit
    return nil, "too large", format("body over body_limit (%d bytes), and %s", conf.body_limit, cut)
  elseif not rest then
    return nil, "too large", format("multipart body over body_limit (%d bytes) without its files' contents",
      conf.body_limit)
  end
  vars.body_length, vars.files_cut = whole, cut
  return rest
end

-- The variables that say a body error happened: a match on one of them logs why
-- (REQBODY_ERROR_MSG, luaproxy/waf/vars.lua's body_error), not only "1".
local BODY_ERROR = { body_error = true, body_error_flag = true, REQBODY_ERROR = true,
                     REQBODY_ERROR_MSG = true, MULTIPART_STRICT_ERROR = true }

local function describe(matches, vars)
  local parts = {}
  for i, m in ipairs(matches) do
    if i > 8 then
      parts[#parts + 1] = format("(%d more)", #matches - 8)
      break
    end
    local why = m.regex_error and " (" .. m.regex_error .. ")" or ""
    if BODY_ERROR[m.var:match("^&?([^:]*)")] then
      local e = vars:coll("body_error").values[1]
      -- (its parts name what the client sent: escaped as excerpts are, and not all of a
      -- long list)
      if e then why = " (" .. sanitize(e:sub(1, 200)) .. ")" end
    end
    -- a variable's name is the client's too (a JSON key, a cookie's name): escaped, or a
    -- newline in it would forge a log line
    parts[#parts + 1] = format('%d %s "%s"%s', m.id, sanitize(m.var), m.excerpt, why)
  end
  return concat(parts, "; ")
end

-- learn mode: (rule id, variable) pairs seen in this worker, each logged once with the
-- exclusion that would take it out (paste it into the route's waf.exclusions).
-- (bounded: the names are the client's, and each worker keeps what it logged)
local learned, nlearned, MAX_LEARNED = {}, 0, 10000
-- Rules that refuse a body the WAF could not read whole (the bundled 1009; the 200002 and
-- 200003 of ModSecurity's recommended modsecurity.conf): learn mode says what excluding them costs.
local BODY_GUARDS = { [1009] = true, [200002] = true, [200003] = true }
local function learn(list)
  for _, l in ipairs(list) do
    local var = sanitize((l.var:gsub("^&", "")))
    local key = l.id .. " " .. var
    if not learned[key] and l.id < 949000 and nlearned < MAX_LEARNED then
      learned[key] = true
      nlearned = nlearned + 1
      if nlearned == MAX_LEARNED then
        proxy.log.warn(format("waf learn: %d (rule, variable) pairs logged by this worker: no more", MAX_LEARNED))
      end
      proxy.log.warn(format('waf learn: rule %d fires on %s; exclusion: { ids = { %d }, targets = { "%s" } }%s',
        l.id, var, l.id, var, BODY_GUARDS[l.id] and
          " (a body the WAF could not read: excluded, such bodies pass uninspected; fix the client or raise the limit instead)" or ""))
    end
  end
end

-- What learn mode saw in this VM, as Lua exclusions (for specs under proxy.test; the proxy's
-- users read the `waf learn:` log lines).
function P.learned()
  local out = {}
  for key in pairs(learned) do
    local id, var = key:match("^(%d+) (.*)$")
    out[#out + 1] = format('{ ids = { %s }, targets = { "%s" } },', id, var)
  end
  table.sort(out)
  return concat(out, "\n")
end

-- xpcall's handler for the SecLang walk: engine.run_seclang raises again what its walk
-- raised, with the walk's traceback already (one is enough).
local function with_traceback(e)
  if type(e) == "string" and find(e, "\nstack traceback:", 1, true) then return e end
  return traceback(tostring(e), 2)
end

-- A SecLang walk that raised (a bug, the runaway guard's stop) after scoring: never a 500.
-- What it found before counts as it would have: a deny already taken (sst.deny), or the
-- anomaly score so far at CRS's inbound threshold (tx.inbound_anomaly_score_threshold),
-- as CRS's 949 rules, which sum it at the walk's end and may not have run, would have
-- decided. The score so far is the larger of tx.anomaly_score and the sum of the
-- per-paranoia-level scores CRS adds up (3.x anomaly_score_plN, 4.x
-- inbound_anomaly_score_plN, up to tx.paranoia_level): never points counted twice. Else
-- over_budget decides. Logged with the last rule the walk reached and the traceback,
-- counted. Returns the score; sets sst.deny and sst.matches.
local function seclang_failed(conf, sst, score, err)
  local tx, r = sst.tx, sst.rule
  local pl = tonumber(tx.paranoia_level) or conf.paranoia
  local sum3, sum4 = 0, 0
  for n = 1, pl do
    sum3 = sum3 + (tonumber(tx["anomaly_score_pl" .. n]) or 0)
    sum4 = sum4 + (tonumber(tx["inbound_anomaly_score_pl" .. n]) or 0)
  end
  if sum3 > score then score = sum3 end
  if sum4 > score then score = sum4 end
  local id = r and r.id or "-"
  proxy.log.err(format("waf: SecLang rules failed, the last rule reached %s (over_budget = \"%s\"): %s",
    r and format("%s (rule %s)", r.place or "?", id) or "(none: reading the request's values)",
    conf.over_budget, tostring(err)))
  if m_errors then m_errors:inc(1, "seclang") end
  local list = sst.matches or {}
  sst.matches = list
  list[#list + 1] = { id = 0, var = "-", msg = "rule error", excerpt = format("SecLang rule %s failed", id) }
  local threshold = tonumber(tx.inbound_anomaly_score_threshold) or conf.inbound_threshold
  if sst.deny then
    return score
  elseif score >= threshold then
    sst.deny = { id = 0, why = format("score %d earned before SecLang rule %s failed", score, id) }
  elseif conf.over_budget == "block" then
    sst.deny = { id = 0, why = format("SecLang rule %s failed, over_budget = \"block\"", id) }
  end
  return score
end

function P.request(req, conf)
  local cs, sec = conf.cs, conf.sec
  local vars = V.new(req, conf.vopts)
  local body_state
  if ((cs and cs.needs_body) or (sec and sec.needs_body)) and has_body(req) then
    local body, err, over = read_body(req, conf, vars)
    if body then
      vars.body = body
    elseif err == "too large" then
      if conf.body_over_limit == "refuse" and conf.mode == "block" then
        req.ctx.waf = { action = "refuse", reason = "body over limit", score = 0, matches = {} }
        if m_requests then m_requests:inc(1, "refused_body") end
        proxy.log.warn(format("waf: refused %s %s: %s", req:method(), req:path(), over))
        return req:respond(413, "request body too large to inspect\n", conf.text)
      elseif conf.body_over_limit == "refuse" then
        -- detect and learn refuse nothing: say what block would have done, inspect the rest
        proxy.log.warn(format("waf: would refuse %s %s (%s mode): %s, not inspected",
          req:method(), req:path(), conf.mode, over))
      end
      body_state = "uninspected"
    else
      body_state = "unread: " .. tostring(err)
    end
  end
  local matches, score, deny, status = nil, 0, nil, conf.status
  -- The score refuses at CRS's own threshold when the SecLang rules ran: the request's
  -- tx.inbound_anomaly_score_threshold (inbound_threshold seeds it; crs_tx or the operator's
  -- crs-setup SecAction may change it, and CRS's 949 rules compare against that value).
  -- The Lua rules' points (protocol.lua beside CRS) count toward it too, and still refuse
  -- on their own at inbound_threshold: raising CRS's threshold while tuning it (CRS's
  -- advice starts at 10000) must not switch the protocol checks off.
  local threshold, lua_score = conf.inbound_threshold, 0
  local sec_would -- the SecLang rules would have refused, under DetectionOnly
  local outcome, unconfirmed
  if sec and conf.sec_engine == "off" then sec = nil end
  if sec then
    local tx = clone(conf.tx_seed)
    local sst = { vars = vars, tx = tx, regex_error = conf.regex_error,
                  paranoia = conf.paranoia,
                  learn = conf.mode == "learn" and {} or nil,
                  -- While the Hyperscan databases still compile (after a start or a rule
                  -- change, sec.pending), every rule runs through PCRE2 alone: slower but the
                  -- same verdicts. The budget is not applied then, so over_budget = "block"
                  -- does not refuse ordinary requests for the proxy's own warm-up.
                  deadline = conf.time_budget > 0 and not sec.pending
                    and proxy.monotonic() + conf.time_budget or nil }
    if conf.sec_engine == "detectiononly" then sst.detect_only = true end
    local ok, m, out = xpcall(engine.run_seclang, with_traceback, sec, sst)
    local failed
    if not ok then failed, m, out = m, nil, nil end
    matches, outcome = m, out
    unconfirmed = sst.unconfirmed
    score = tonumber(tx.anomaly_score) or tonumber(tx.inbound_anomaly_score) or 0
    threshold = tonumber(tx.inbound_anomaly_score_threshold) or threshold
    if failed then
      -- As for the Lua rules (below): what the walk found before the error counts
      score = seclang_failed(conf, sst, score, failed)
      matches, deny = sst.matches, sst.deny
      if deny then status = deny.status or conf.status end
    elseif outcome == "deny" then
      deny = sst.deny
      status = deny.status or conf.status
    elseif outcome == "budget" then
      matches = matches or {}
      matches[#matches + 1] = { id = 0, var = "-", excerpt = "time budget exceeded", msg = "time budget" }
      if conf.over_budget == "block" then
        deny = { id = 0, why = format("time_budget %gs used up, over_budget = \"block\"", conf.time_budget) }
      end
    end
    -- ctl:ruleEngine=DetectionOnly, or SecRuleEngine DetectionOnly in the files: the
    -- SecLang rules' verdict (deny or score alike) is logged as detect mode logs it; the
    -- Lua rules below still refuse
    if sst.detect_only and conf.mode == "block" then
      sec_would = (deny ~= nil or score >= threshold) and { score = score, deny = deny }
      deny, score, status = nil, 0, conf.status
    end
    if sst.learn then learn(sst.learn) end
  end
  if cs then
    local lst = { vars = vars }
    local ok, lm = xpcall(engine.run, traceback, cs, lst)
    local failed
    if not ok then
      -- The matches found before the error count as they would have (a deny or a score
      -- already earned still refuses, whatever over_budget says); the error itself is
      -- then decided as running out of time_budget is (below)
      failed, lm = lm, lst.matches
    end
    if lm then
      -- learn mode: the Lua rules' (the bundled protocol.lua beside CRS: 1009 on a body
      -- error) as the SecLang rules' (their var is the Lua exclusion's target already)
      if conf.mode == "learn" then learn(lm) end
      matches = matches or {}
      for _, m in ipairs(lm) do
        matches[#matches + 1] = m
        local r = cs.by_id[m.id]
        if m.regex_error and conf.regex_error == "ignore" then
          m.ignored = true
        elseif r.action == "score" then
          score = score + r.score
          lua_score = lua_score + r.score
        elseif r.action == "deny" and not deny then
          deny = r
          status = r.status or conf.status
        end
      end
    end
    if failed then
      -- As for the SecLang rules: an error (a bug, a guard stop) is decided as running out
      -- of time_budget is (over_budget; "block", fail-closed, by default), never a 500;
      -- logged with the rule that raised and the traceback, and counted
      local r = lst.rule
      proxy.log.err(format("waf: Lua rule %s failed (over_budget = \"%s\"): %s",
        r and r.place or "(none: reading the request's values)", conf.over_budget, tostring(failed)))
      if m_errors then m_errors:inc(1, "lua") end
      matches = matches or {}
      matches[#matches + 1] = { id = 0, var = "-", msg = "rule error",
        excerpt = format("Lua rule %s failed", r and r.id or "-") }
      if conf.over_budget == "block" and not deny then
        deny = { id = 0, why = format("Lua rule %s failed, over_budget = \"block\"", r and r.id or "-") }
      end
    end
  end
  if not matches then
    if m_requests then m_requests:inc(1, "pass") end
    if body_state or unconfirmed then
      req.ctx.waf = { action = "pass", score = 0, matches = {}, body = body_state, unconfirmed = unconfirmed }
    end
    return
  end
  local block = deny ~= nil or score >= threshold or lua_score >= conf.inbound_threshold
  local action = block and (conf.mode == "block" and "block" or "detect") or (sec_would and "detect") or "pass"
  local why_detect = conf.mode .. " mode"
  if not block and sec_would then
    -- (what the SecLang rules would have done, for the log)
    score, deny, why_detect = sec_would.score, sec_would.deny, "SecRuleEngine DetectionOnly"
  end
  req.ctx.waf = { action = action, score = score, matches = matches, body = body_state,
                  unconfirmed = unconfirmed }
  if m_requests then
    m_requests:inc(1, action == "detect" and (block and conf.mode or "detect") or action)
  end
  local what = describe(matches, vars)
  if action == "block" then
    proxy.log.warn(format("waf: blocked %s %s (score %d%s): %s", req:method(), req:path(),
      score, deny and ", " .. (deny.why or "deny rule " .. deny.id) or "", what))
    return req:respond(status, conf.message, conf.text)
  elseif action == "detect" then
    proxy.log.warn(format("waf: would block %s %s (score %d%s, %s): %s", req:method(),
      req:path(), score, deny and ", " .. (deny.why or "deny rule " .. deny.id) or "", why_detect, what))
  else
    proxy.log.info(format("waf: matched %s %s (score %d, under %d): %s", req:method(),
      req:path(), score, threshold, what))
  end
end

return P
