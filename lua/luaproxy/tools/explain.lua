-- `luaproxy explain`: what a request would meet before the upstream is contacted, without
-- contacting it: the listener and TLS certificate (SNI), routing (which route matched, why
-- the earlier ones did not, routes that can never match), each plugin's request and upstream
-- phase in order with its changes to headers, path and upstream, a local answer, the chosen
-- upstream, target and the balancer's reason, and what would be sent.
--
-- It runs on the proxy.test double (lua/proxy/test.lua): the plugins are the config's, loaded
-- and validated by the engine's own runtime.load; routes are matched by the engine's router
-- (engine/router.c through lp_native); proxy.http, proxy.tcp and proxy.redis reach nothing
-- (their calls fail with "connection refused" / no mock, and are listed as refused), timers
-- are scheduled on the double's clock and never run. Shared dicts start empty.
local format, concat, sort = string.format, table.concat, table.sort

local M = {}

-- ---- the request ----

-- "GET https://shop.example.com:8443/a?x=1" -> { method, scheme, host, port, uri, path }.
function M.parse_request_line(line)
  local method, url = line:match("^%s*(%u+)%s+(%S+)%s*$")
  if not method then
    url, method = line:match("^%s*(%S+)%s*$"), "GET"
  end
  if not url then return nil, "expected 'METHOD URL', got " .. format("%q", line) end
  local scheme, rest = url:match("^(https?)://(.*)$")
  if not scheme then return nil, "expected an http:// or https:// URL, got " .. url end
  local authority, uri = rest:match("^([^/?#]*)(.*)$")
  uri = uri:gsub("#.*$", "")
  if uri == "" or uri:sub(1, 1) == "?" then uri = "/" .. uri end
  local host, port = authority:match("^%[([^%]]+)%]:?(%d*)$")
  if not host then host, port = authority:match("^([^:]*):?(%d*)$") end
  if not host or host == "" then return nil, "no host in " .. url end
  port = tonumber(port) or (scheme == "https" and 443 or 80)
  return { method = method, scheme = scheme, host = host:lower(), port = port, uri = uri,
    path = uri:match("^[^?]*"), authority = authority }
end

-- ---- TLS ----

local function cert_names(c, dir)
  if type(c.names) == "table" and #c.names > 0 then return c.names, "names" end
  local file = c.cert
  if type(file) ~= "string" then return {}, "none" end
  if file:sub(1, 1) ~= "/" then file = dir .. "/" .. file end
  local p = io.popen("openssl x509 -noout -ext subjectAltName -subject -in '"
    .. file:gsub("'", "'\\''") .. "' 2>/dev/null")
  local text = p and p:read("*a") or ""
  if p then p:close() end
  local names = {}
  for n in text:gmatch("DNS:([^,%s]+)") do names[#names + 1] = n:lower() end
  if #names == 0 then
    local cn = text:match("CN%s*=%s*([^,/\n]+)")
    if cn then names[1] = cn:lower() end
  end
  return names, "certificate"
end

local function name_matches(pattern, host)
  pattern = pattern:lower()
  if pattern == host then return "exact" end
  local suffix = pattern:match("^%*(%..+)$")
  if suffix and host:sub(-#suffix) == suffix then
    local label = host:sub(1, #host - #suffix)
    if label ~= "" and not label:find(".", 1, true) then return "wildcard" end
  end
end

-- The listener a request to scheme://host:port reaches, and the certificate its SNI picks.
local function tls_choice(cfg, req, dir)
  local want_tls = req.scheme == "https"
  local cands = {}
  for i, l in ipairs(cfg.listen or {}) do
    if (l.tls ~= nil and l.tls ~= false) == want_tls then cands[#cands + 1] = { i = i, l = l } end
  end
  local out = {}
  if #cands == 0 then
    out.note = format("no %s listener in the config: the request could not arrive",
      want_tls and "TLS" or "plain HTTP")
    return out
  end
  local pick = cands[1]
  for _, c in ipairs(cands) do
    local port = tonumber(tostring(c.l.address):match(":(%d+)$"))
    if port == req.port then pick = c break end
  end
  out.listener = { index = pick.i, address = pick.l.address, tls = want_tls }
  if not want_tls then return out end
  local tls = pick.l.tls
  local certs = {}
  if tls.cert then certs[#certs + 1] = { cert = tls.cert, key = tls.key, names = tls.names } end
  for _, c in ipairs(tls.certificates or {}) do certs[#certs + 1] = c end
  local sni = req.host:match("^%d+%.%d+%.%d+%.%d+$") and nil or req.host
  local exact, wild
  for i, c in ipairs(certs) do
    local names = cert_names(c, dir)
    for _, n in ipairs(names) do
      local how = sni and name_matches(n, sni)
      if how == "exact" and not exact then exact = { index = i, file = c.cert, name = n } end
      if how == "wildcard" and not wild then wild = { index = i, file = c.cert, name = n } end
    end
  end
  local chosen = exact or wild
  if chosen then
    chosen.why = format("%s name %s", exact and "exact" or "wildcard", chosen.name)
  elseif certs[1] then
    chosen = { index = 1, file = certs[1].cert,
      why = sni and format("no certificate names %s: the default (the first)", sni)
        or "no SNI (an IP address): the default (the first)" }
  end
  out.tls = { sni = sni, certificate = chosen }
  return out
end

-- ---- routing ----

local function describe_value(v)
  if type(v) == "function" then return "(a Lua function)" end
  if type(v) == "table" then
    local parts = {}
    for k, x in pairs(v) do
      parts[#parts + 1] = type(k) == "number" and tostring(x) or (k .. "=" .. tostring(x))
    end
    sort(parts)
    return "{" .. concat(parts, ", ") .. "}"
  end
  return format("%q", tostring(v))
end

local CONDITIONS = { "host", "sni", "prefix", "path", "regex", "methods", "headers",
  "header_regex", "query", "query_regex", "cidr", "predicate" }

-- The route's match with its predicate (if any) run as the proxy runs it: last, and an
-- error is the answer 500, noted rather than raised. `note` receives the error.
local function explainable(m, note)
  if type(m.predicate) ~= "function" then return m end
  local copy = {}
  for k, v in pairs(m) do copy[k] = v end
  local p = m.predicate
  copy.predicate = function(req)
    local ok, res = xpcall(p, debug.traceback, req)
    if not ok then note(res) return false end
    return res and true or false
  end
  return copy
end

local function route_name(r, i)
  return r.name or format("route#%d", i)
end

-- Routes no request can reach because an earlier route catches all they would: the engine's
-- own check (engine/router.c, lp_router_shadows) over the whole table, and its one sentence
-- (lp_router_shadow_text), as `luaproxy -t`, every load and POST /routes say them.
local function shadows(routes)
  local ffi = require "ffi"
  local C = require "luaproxy.native"
  local router = require "luaproxy.router"
  local all = {}
  for i, r in ipairs(routes) do all[i] = { match = r.match or {} } end
  local rr = router.new(all)
  if not rr then return {} end -- a route that does not compile is reported on its own
  local max = #routes
  local pairs_ = ffi.new("int[?]", 2 * max + 2)
  local n = math.min(C.lp_ffi_router_shadows(rr._r, pairs_, max), max)
  local buf = ffi.new("char[1024]")
  local out = {}
  for k = 0, n - 1 do
    local j, i = pairs_[2 * k] + 1, pairs_[2 * k + 1] + 1
    local len = C.lp_ffi_router_shadow_text(buf, 1024, j - 1, routes[j].given_name, i - 1,
      routes[i].given_name)
    out[#out + 1] = { index = j, name = routes[j].name, by = i,
      by_name = routes[i].name, message = ffi.string(buf, math.min(len, 1023)) }
  end
  return out
end

-- The route table as the config alone gives it: what the proxy loads without an overlay.
function M.config_table(cfg)
  local t = { routes = {} }
  for i, r in ipairs(cfg.routes or {}) do
    t.routes[i] = { name = route_name(r, i), given_name = r.name, match = r.match,
      upstream = r.upstream, strip_prefix = r.strip_prefix, config_route = i }
  end
  return t
end

local function shell_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

-- The route table the proxy would load from `config`: the config's routes with the admin
-- API's overlay (FILE.routes.json, written by POST /routes) applied by the engine itself
-- (`luaproxy routes`: the load's own code, engine/config.c and rtable.c), so that explain
-- routes as the proxy would. Config routes keep the config's match (a Lua predicate too),
-- plugins and handler; a route from the overlay has its match, upstream and strip_prefix
-- and meets the global plugins only, as in the engine. `no_overlay`: the config's routes.
-- Returns the table { routes = {...}, overlay = { file, applied, error, skipped, ... } }
-- (overlay nil when there is no overlay file).
function M.route_table(config, cfg, no_overlay)
  local t = M.config_table(cfg)
  local file = config .. ".routes.json"
  local f = io.open(file, "r")
  if not f then return t end
  f:close()
  t.overlay = { file = file, applied = false }
  if no_overlay then
    t.overlay.skipped = true
    return t
  end
  local bin = os.getenv("LUAPROXY_BIN")
  if not bin or bin == "" then
    t.overlay.error = "the engine binary is unknown (run explain as `luaproxy explain`)"
    return t
  end
  local p = io.popen(format("%s routes -c %s 2>/dev/null", shell_quote(bin),
    shell_quote(config)))
  local text = p and p:read("*a") or ""
  if p then p:close() end
  local ok, doc = pcall(require("cjson").decode, text)
  if not ok or type(doc) ~= "table" then
    t.overlay.error = "`luaproxy routes` gave no route table"
    return t
  end
  if type(doc.error) == "string" then
    t.overlay.error = "the engine does not load this config: " .. doc.error
    return t
  end
  local ov = type(doc.overlay) == "table" and doc.overlay or {}
  if type(ov.error) == "string" then
    -- an operation that does not apply names the route, not the file
    t.overlay.error = ov.error:find(file, 1, true) and ov.error or (file .. ": " .. ov.error)
    return t
  end
  if ov.applied ~= true or type(doc.routes) ~= "table" then return t end
  local routes, kept, from = {}, {}, {}
  for i, e in ipairs(doc.routes) do
    local ci = type(e.config_route) == "number" and e.config_route or nil
    if ci and t.routes[ci] then
      local c = t.routes[ci]
      routes[i] = { name = e.name, given_name = c.given_name, match = c.match,
        upstream = c.upstream, strip_prefix = c.strip_prefix, config_route = ci }
      kept[ci] = true
    else
      routes[i] = { name = e.name, given_name = e.name, source = "overlay",
        match = type(e.match) == "table" and e.match or {},
        upstream = type(e.upstream) == "string" and e.upstream or nil,
        strip_prefix = e.strip_prefix == true }
      from[#from + 1] = { index = i, name = e.name }
    end
  end
  local removed = {}
  for ci, c in ipairs(t.routes) do
    if not kept[ci] then removed[#removed + 1] = { config_route = ci, name = c.name } end
  end
  t.routes = routes
  t.overlay.applied, t.overlay.routes, t.overlay.removed = true, from, removed
  return t
end

local function routing(tbl, req, T)
  local router = require "luaproxy.router"
  local routes = tbl.routes
  local out = { tried = {}, shadowed = {}, overlay = tbl.overlay }
  for i, r in ipairs(routes) do
    local entry = { index = i, name = r.name, upstream = r.upstream,
      config_route = r.config_route, source = r.source or "config" }
    local whole = false -- the predicate's error counts when the other conditions held
    local m = explainable(r.match or {}, function(e)
      if whole then entry.predicate_error = e:match("^[^\n]*") end
    end)
    local rr, err = router.new({ { match = m } })
    if not rr then
      entry.matched, entry.reasons = false, { "does not compile: " .. tostring(err) }
    else
      whole = true
      local hit, caps = rr:match(req)
      whole = false
      entry.matched = hit ~= nil
      if hit then
        entry.params = caps
        local held = {}
        for _, k in ipairs(CONDITIONS) do
          if m[k] ~= nil then held[#held + 1] = k .. " " .. describe_value(m[k]) end
        end
        entry.reasons = #held > 0 and held or { "no conditions: matches every request" }
      else
        entry.reasons = {}
        -- The predicate runs only once every other condition held (docs/routing.md): it is
        -- named only when nothing else failed, and never run alone here.
        for _, k in ipairs(CONDITIONS) do
          if m[k] ~= nil and k ~= "predicate" then
            local one = router.new({ { match = { [k] = m[k] } } })
            if one and not one:match(req) then
              entry.reasons[#entry.reasons + 1] = format("%s %s does not hold", k,
                describe_value(m[k]))
            end
          end
        end
        if #entry.reasons == 0 and m.predicate ~= nil then
          entry.reasons[1] = format("predicate %s does not hold", describe_value(m.predicate))
        end
        if #entry.reasons == 0 then entry.reasons[1] = "its conditions do not hold together" end
        if entry.predicate_error then
          -- the proxy answers 500 here: no later route is tried, no plugin runs
          entry.reasons = { "predicate failed (the proxy answers 500): "
            .. tostring(entry.predicate_error) }
          out.failed = entry
        end
      end
    end
    out.tried[#out.tried + 1] = entry
    if out.failed then break end
    if entry.matched then
      out.route = entry
      out.route.strip_prefix = r.strip_prefix and m.prefix or nil
      break
    end
  end
  out.shadowed = shadows(routes)
  local _ = T
  return out
end

-- ---- plugins ----

local function headers_copy(req)
  local h = {}
  for k, v in pairs(req:headers()) do h[k] = v end
  return h
end

local function hval(v) return type(v) == "table" and concat(v, ", ") or v end

local function diff_headers(before, after)
  local changes = {}
  local names = {}
  for k in pairs(before) do names[k] = true end
  for k in pairs(after) do names[k] = true end
  local sorted = {}
  for k in pairs(names) do sorted[#sorted + 1] = k end
  sort(sorted)
  for _, k in ipairs(sorted) do
    local a, b = hval(before[k]), hval(after[k])
    if a ~= b then
      changes[#changes + 1] = { name = k, from = a, to = b,
        op = a == nil and "added" or b == nil and "removed" or "set" }
    end
  end
  return changes
end

local function snapshot(req)
  return { headers = headers_copy(req), uri = req:uri(), upstream = req:upstream_name(),
    target = req._target and format("%s:%s", req._target[1] or req._target.host or "?",
      req._target[2] or req._target.port or "?") }
end

local function target_text(t)
  if type(t) ~= "table" then return t and tostring(t) or nil end
  local host = t.host or t[1]
  local port = t.port or t[2]
  return host and format("%s:%s", tostring(host), tostring(port)) or nil
end

local function run_phase(T, chain, phase, req, out)
  for _, inst in ipairs(chain or {}) do
    local before = snapshot(req)
    local nhttp = #T.http_requests
    local nlog = #T.logs
    local pending = T.proxy.timer.pending_count()
    -- A route's handler runs last (priority -inf, which JSON cannot say).
    local prio = inst.priority
    if prio ~= prio or prio == math.huge or prio == -math.huge then prio = "last" end
    local step = { name = inst.name, priority = prio, where = inst.where, phase = phase }
    local ok, responded = pcall(T.phase, inst, phase, req, inst.conf)
    local after = snapshot(req)
    step.headers = diff_headers(before.headers, after.headers)
    if before.uri ~= after.uri then step.uri = { from = before.uri, to = after.uri } end
    if before.upstream ~= after.upstream then
      step.upstream = { from = before.upstream, to = after.upstream }
    end
    local tt = target_text(req._target)
    if tt and tt ~= out._target_seen then
      step.target = tt
      out._target_seen = tt
    end
    step.notes = {}
    for i = nhttp + 1, #T.http_requests do
      local c = T.http_requests[i]
      step.notes[#step.notes + 1] = format("proxy.http %s %s: refused (explain contacts "
        .. "nothing; the plugin got an error)", tostring(c.method), tostring(c.url))
    end
    for i = nlog + 1, #T.logs do
      local l = T.logs[i]
      step.notes[#step.notes + 1] = format("log %s: %s", l.level, l.message)
    end
    local np = T.proxy.timer.pending_count()
    if np > pending then
      step.notes[#step.notes + 1] = format("%d timer(s) scheduled: not run by explain",
        np - pending)
    end
    out.steps[#out.steps + 1] = step
    if not ok then
      step.error = tostring(responded)
      out.error = { plugin = inst.name, phase = phase, message = step.error }
      if inst.fail_open then
        step.notes[#step.notes + 1] = "fail_open: the request goes on"
      else
        out.answer = { status = 500, reason = "the plugin raised an error: the engine answers 500" }
        return true
      end
    elseif responded == true then
      req:set_phase("response") -- the answer's head, as the response phase would see it
      out.answer = { status = req._status, headers = req:resp_headers(),
        body = req._resp_body, by = inst.name }
      step.responded = req._status
      return true
    end
  end
  return false
end

-- ---- balancing ----

local function balancer(cfg, name, req, target)
  local u = cfg.upstreams and cfg.upstreams[name]
  if not u then return { name = name, reason = "no such upstream in the config" } end
  local out = { name = name, policy = u.balance or "round_robin", targets = {} }
  for _, t in ipairs(u.targets or {}) do
    if type(t) == "table" then
      out.targets[#out.targets + 1] = { address = t.address or t[1], weight = t.weight or 1 }
    else
      out.targets[#out.targets + 1] = { address = tostring(t), weight = 1 }
    end
  end
  if target then
    out.target = target
    out.reason = "req:set_target() chose it: the balancer is bypassed"
    return out
  end
  if #out.targets == 1 then
    out.target = out.targets[1].address
    out.reason = "the only target"
    return out
  end
  local p = out.policy
  if p == "round_robin" then
    out.reason = format("smooth weighted round robin over %d targets: which one depends on "
      .. "the worker's earlier picks (and health)", #out.targets)
  elseif p == "least_conn" then
    out.reason = "least active requests per weight: depends on live traffic"
  elseif p == "p2c" then
    out.reason = "two random choices on peak-EWMA latency: depends on live latency"
  else
    local on = u.hash_on or "ip"
    local key
    if on == "ip" then key = req:client_ip()
    elseif on == "path" then key = req:path()
    else
      local kind, n = on:match("^(%w+):(.+)$")
      if kind == "header" then key = req:header(n)
      elseif kind == "query" then key = req:query(n)
      elseif kind == "cookie" then
        local c = "; " .. (req:header("cookie") or "")
        key = c:match("[;%s]" .. n:gsub("%p", "%%%0") .. "=([^;]*)")
      end
    end
    out.hash_key = key
    out.reason = key and format("Maglev consistent hash on %s = %q (req:set_hash_key wins)",
      on, key) or format("hash on %s: no key in this request, a weighted random pick", on)
  end
  return out
end

-- ---- the whole ----

-- cfg: the validated config; opts: runtime.load's (plugin_path, script_path, config_dir);
-- spec: { line = "GET https://...", headers = { { name, value }, ... }, client_ip = ,
-- table = M.route_table's (default: the config's routes) }.
-- The path as the proxy routes it: the engine's own normaliser (engine/pathnorm.c), with the
-- config's normalize_path and merge_slashes, so explain's answer matches the proxy's.
local function normalize_uri(cfg, uri)
  local flags = (cfg.normalize_path ~= false and 1 or 0) + (cfg.merge_slashes and 2 or 0)
  if flags == 0 or uri:sub(1, 1) ~= "/" then return uri end
  local ffi = require "ffi"
  local C = require "luaproxy.native"
  local buf = ffi.new("char[?]", #uri)
  ffi.copy(buf, uri, #uri)
  local n = tonumber(C.lp_ffi_path_normalize(buf, #uri, flags))
  if n == -1 then return nil, "the proxy answers 400: the path climbs above the root" end
  if n < 0 then return nil, "the proxy answers 400: a bad percent-escape in the path" end
  return ffi.string(buf, n)
end

function M.explain(cfg, opts, spec)
  local req_line, perr = M.parse_request_line(spec.line)
  if not req_line then return nil, perr end
  local uri, nerr = normalize_uri(cfg, req_line.uri)
  if not uri then return nil, nerr end
  req_line.uri, req_line.path = uri, uri:match("^[^?]*")
  local T = require "proxy.test"
  T.reset()
  -- The double's clock starts in 2023; tokens' exp/nbf/iat and freshness are judged at the
  -- real time, as the engine does (timers are still only noted, never run).
  local behind = os.time() - T.now()
  if behind > 0 then T.advance(behind) end
  if type(cfg.shared) == "table" and next(cfg.shared) then T.shared_dicts(cfg.shared) end
  local cache = type(cfg.cache) == "table" and cfg.cache.zones
  if type(cache) == "table" and next(cache) then T.cache_zones(cache) end
  T.proxy.config = cfg
  local runtime = require "luaproxy.runtime"
  local state, lerr = runtime.load(cfg, opts)
  if not state then return nil, lerr end

  local headers, has_host = {}, false
  for _, h in ipairs(spec.headers or {}) do
    local name, value = h[1], h[2]
    if name:lower() == "host" then has_host = true end
    local cur = headers[name]
    if cur == nil then headers[name] = value
    elseif type(cur) == "table" then cur[#cur + 1] = value
    else headers[name] = { cur, value } end
  end
  if not has_host then
    local default_port = req_line.scheme == "https" and 443 or 80
    headers.Host = req_line.port == default_port and req_line.host
      or (req_line.host .. ":" .. req_line.port)
  end
  local out = { request = { method = req_line.method, url = spec.line:match("%S+$"),
    uri = req_line.uri, host = req_line.host, headers = spec.headers or {},
    client_ip = spec.client_ip or "127.0.0.1" }, steps = {}, notes = {} }
  local conn = tls_choice(cfg, req_line, opts.config_dir or ".")
  out.listener, out.tls = conn.listener, conn.tls
  if conn.note then out.notes[#out.notes + 1] = conn.note end
  local l = conn.listener and cfg.listen[conn.listener.index]
  if l and (l.real_ip or l.proxy_protocol) and not spec.client_ip then
    out.notes[#out.notes + 1] = "this listener takes the client address from a trusted "
      .. "proxy (real_ip / PROXY protocol), which explain does not read: give it with "
      .. "--client-ip (127.0.0.1 was used)"
  end

  local upstream_names = {}
  for name in pairs(cfg.upstreams or {}) do upstream_names[#upstream_names + 1] = name end
  sort(upstream_names)
  local tls_spec = out.tls and { protocol = "TLSv1.3", sni = out.tls.sni } or nil
  local req = T.request({ method = req_line.method, uri = req_line.uri, headers = headers,
    client_ip = spec.client_ip, scheme = req_line.scheme, tls = tls_spec,
    upstreams = upstream_names, trace = false })
  out.routing = routing(spec.table or M.config_table(cfg), req, T)
  if out.routing.failed then
    out.answer = { status = 500, reason = format("routes[%d].match.predicate failed",
      out.routing.failed.config_route or out.routing.failed.index) }
    return out
  end
  local route = out.routing.route
  local chain
  if route then
    -- A route from the overlay has no plugins of its own: the global ones run (conn.c).
    chain = route.config_route and state.routes[route.config_route] or state.fallback
    req._upstream = route.upstream
    req._params = route.params or {}
  else
    chain = state.fallback
    out.notes[#out.notes + 1] = "no route matched: the global plugins run; without an "
      .. "upstream chosen by one, the engine answers 404"
  end
  local initial = snapshot(req)
  local PID = runtime.PHASE_ID
  local answered = run_phase(T, chain[PID.request], "request", req, out)
  if not answered then answered = run_phase(T, chain[PID.upstream], "upstream", req, out) end
  out._target_seen = nil
  if not answered then
    local up = req:upstream_name()
    if not up then
      out.answer = { status = 404, reason = "no route and no plugin chose an upstream" }
    else
      out.upstream = balancer(cfg, up, req, target_text(req._target))
      local final = snapshot(req)
      local uri = final.uri
      local strip = route and route.strip_prefix
      if strip and #strip > 1 and uri == initial.uri then
        local path, q = uri:match("^([^?]*)(.*)$")
        if path:sub(1, #strip) == strip then
          local rest = path:sub(#strip + 1)
          if rest:sub(1, 1) ~= "/" then rest = "/" .. rest end
          uri = rest .. q
          out.notes[#out.notes + 1] = format("strip_prefix: %s removed from the path", strip)
        end
      end
      out.sent = { method = req_line.method, uri = uri, headers = final.headers,
        changes = diff_headers(initial.headers, final.headers) }
    end
  end
  T.reset()
  return out
end

-- ---- text ----

function M.text(r)
  local L = {}
  local function add(...) L[#L + 1] = format(...) end
  add("request    %s %s", r.request.method, r.request.url)
  if r.listener then
    add("listener   listen[%d] %s%s", r.listener.index, tostring(r.listener.address),
      r.listener.tls and " (TLS)" or "")
  end
  if r.tls then
    local c = r.tls.certificate
    add("tls        SNI %s -> %s", tostring(r.tls.sni or "(none)"), c and format(
      "certificate #%d (%s): %s", c.index, tostring(c.file), c.why) or "no certificate")
  end
  add("routing")
  local ov = r.routing.overlay
  if ov and ov.applied then
    local names = {}
    for _, e in ipairs(ov.routes or {}) do names[#names + 1] = format("#%d %s", e.index, e.name) end
    local gone = {}
    for _, e in ipairs(ov.removed or {}) do
      gone[#gone + 1] = format("routes[%d] (%s)", e.config_route, e.name)
    end
    add("  overlay: %s applied, as the proxy applies it at load: %s%s", ov.file,
      #names > 0 and ("routes " .. concat(names, ", ") .. " come from the admin API")
        or "no route comes from the admin API",
      #gone > 0 and ("; it removed or replaced config " .. concat(gone, ", ")) or "")
  elseif ov and ov.skipped then
    add("  overlay: %s left out (--no-overlay): the config's routes only", ov.file)
  end
  for _, t in ipairs(r.routing.tried) do
    local from = t.source == "overlay" and " [admin overlay]"
      or (t.config_route and t.config_route ~= t.index
        and format(" [config routes[%d]]", t.config_route)) or ""
    add("  %s #%d %s%s: %s (%s)", t.matched and "->" or "  ", t.index, t.name, from,
      t.matched and "matched" or "no", concat(t.reasons, "; "))
    -- What the route binds (regex named groups, :name and *name), as req:param sees it.
    local caps = {}
    for name, v in pairs(t.matched and t.params or {}) do
      caps[#caps + 1] = format("%s=%q", name, v)
    end
    sort(caps)
    if #caps > 0 then add("       captures: %s", concat(caps, ", ")) end
  end
  if not r.routing.route then add("  no route matched") end
  for _, s in ipairs(r.routing.shadowed) do add("  warning: %s", s.message) end
  if ov and ov.error then
    add("  warning: the admin overlay is not applied: %s. The proxy refuses this config while "
      .. "the overlay fails (a start fails; a reload keeps the routes it serves): the "
      .. "config's own routes are explained", ov.error)
  end
  if #r.steps > 0 then add("plugins (priority order)") end
  for i, s in ipairs(r.steps) do
    local ch = {}
    for _, h in ipairs(s.headers) do
      if h.op == "removed" then ch[#ch + 1] = "removed header " .. h.name
      else ch[#ch + 1] = format("%s header %s: %s", h.op, h.name, tostring(h.to)) end
    end
    if s.uri then ch[#ch + 1] = format("path %s -> %s", s.uri.from, s.uri.to) end
    if s.upstream then
      ch[#ch + 1] = format("upstream %s -> %s", tostring(s.upstream.from), tostring(s.upstream.to))
    end
    if s.target then ch[#ch + 1] = "target " .. s.target end
    if s.responded then ch[#ch + 1] = format("answered %d locally", s.responded) end
    if s.error then ch[#ch + 1] = "error: " .. s.error end
    add("  %d. %s [%s] (priority %s, %s): %s", i, s.name, s.phase, tostring(s.priority),
      tostring(s.where), #ch > 0 and concat(ch, "; ") or "no change")
    for _, n in ipairs(s.notes) do add("       note: %s", n) end
  end
  if r.answer then
    add("answer     %d%s%s", r.answer.status or 0, r.answer.by and " from " .. r.answer.by or "",
      r.answer.reason and " (" .. r.answer.reason .. ")" or "")
    if r.answer.body and r.answer.body ~= "" then
      local b = r.answer.body
      add("           body: %s", #b > 200 and (b:sub(1, 200) .. "...") or b)
    end
  end
  if r.upstream then
    local ts = {}
    for _, t in ipairs(r.upstream.targets or {}) do
      ts[#ts + 1] = format("%s (weight %s)", tostring(t.address), tostring(t.weight))
    end
    add("upstream   %s (%s): %s", r.upstream.name, tostring(r.upstream.policy), concat(ts, ", "))
    add("target     %s: %s", r.upstream.target or "(not computed)", tostring(r.upstream.reason))
  end
  if r.sent then
    add("sent       %s %s", r.sent.method, r.sent.uri)
    local names = {}
    for k in pairs(r.sent.headers) do names[#names + 1] = k end
    sort(names)
    for _, k in ipairs(names) do add("           %s: %s", k, hval(r.sent.headers[k])) end
  end
  for _, n in ipairs(r.notes) do add("note       %s", n) end
  return concat(L, "\n") .. "\n"
end

-- ---- command line ----

local USAGE = [[
usage: luaproxy explain -c CONFIG 'METHOD URL' [-H 'Name: value']... [--client-ip IP] [--json]
                        [--no-overlay]
what a request would meet before the upstream is contacted, without contacting it: the
listener and TLS certificate (SNI), routing (which route matched and why the earlier ones did
not; routes that can never match), each plugin's request and upstream phase in order and its
changes (headers, path, upstream, target), a local answer, the upstream, target and the
balancer's reason, and what would be sent. Plugins run on the proxy.test double: network
calls are refused, timers do not run, shared dicts start empty. The routes are those the
proxy loads: the config's, with the admin API's changes (CONFIG.routes.json) applied.
  --json        the same as a JSON document
  --no-overlay  the config's routes only, without the admin API's changes]]

function M.main(args, env)
  local config, line, headers, json, client_ip, no_overlay = nil, nil, {}, false, nil, false
  local i = 1
  while i <= #args do
    local a = args[i]
    if a == "-c" then config = args[i + 1]; i = i + 1
    elseif a == "-H" then
      local h = args[i + 1] or ""
      local n, v = h:match("^%s*([^:%s]+)%s*:%s*(.-)%s*$")
      if not n then io.stderr:write("luaproxy explain: -H expects 'Name: value'\n") return 2 end
      headers[#headers + 1] = { n, v }
      i = i + 1
    elseif a == "--json" then json = true
    elseif a == "--client-ip" then client_ip = args[i + 1]; i = i + 1
    elseif a == "--no-overlay" then no_overlay = true
    elseif a == "-h" or a == "--help" then print(USAGE) return 0
    elseif not line and a:sub(1, 1) ~= "-" then line = a
    else io.stderr:write(USAGE, "\n") return 2 end
    i = i + 1
  end
  if not config or not line then io.stderr:write(USAGE, "\n") return 2 end
  local raw, opts = env.load_config(config)
  if not raw then io.stderr:write("luaproxy explain: ", opts, "\n") return 1 end
  local cfg, verr = require("luaproxy.config").check(raw)
  if not cfg then io.stderr:write("luaproxy explain: ", config, ": ", verr, "\n") return 1 end
  local r, err = M.explain(cfg, opts, { line = line, headers = headers, client_ip = client_ip,
    table = M.route_table(config, cfg, no_overlay) })
  if not r then io.stderr:write("luaproxy explain: ", err, "\n") return 1 end
  if json then
    local cjson = require "cjson"
    print(cjson.encode(M.data(r)))
  else
    io.stdout:write(M.text(r))
  end
  return 0
end

-- The report as plain data for JSON (header tables as objects, lists as arrays).
function M.data(r)
  r._target_seen = nil
  return r
end

return M
