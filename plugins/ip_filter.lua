-- ip_filter: allows or denies requests by client address (CIDR lists from the config or
-- files, IPv4 and IPv6, the most specific entry winning) and by country (a MaxMind-format
-- database). Uses the real client address (req:client_ip(), after a listener's real_ip).
-- Docs: docs/plugins/ip_filter.md.
local ffi = require "ffi"
local C = require "luaproxy.native"
local format, upper = string.format, string.upper
local ipairs = ipairs
local ffi_string = ffi.string

local P = {
  name = "ip_filter",
  -- Before everything but request_id and request_limits: a refused address costs nothing.
  priority = 2800,
}

P.schema = {
  fields = {
    allow = { type = "array", elements = { type = "string" },
              description = "CIDRs or addresses allowed (\"10.0.0.0/8\", \"2001:db8::/32\", "
                .. "\"192.0.2.7\"); when any allow entry or country is given, an address "
                .. "matching none is denied" },
    deny = { type = "array", elements = { type = "string" },
             description = "CIDRs or addresses denied" },
    allow_file = { type = "string", description = "a file of allowed CIDRs, one per line (# comments), "
                     .. "read at every load and reload" },
    deny_file = { type = "string", description = "a file of denied CIDRs, as allow_file" },
    geoip_db = { type = "string", description = "a MaxMind-format database (GeoLite2-Country.mmdb, "
                   .. "GeoIP2-City.mmdb...) for the country lists" },
    allow_countries = { type = "array", elements = { type = "string", pattern = "^%a%a$" },
                        description = "ISO 3166 codes allowed (needs geoip_db)" },
    deny_countries = { type = "array", elements = { type = "string", pattern = "^%a%a$" },
                       description = "ISO 3166 codes denied (needs geoip_db)" },
    status = { type = "integer", default = 403, min = 400, max = 599,
               description = "status of a refused request" },
    message = { type = "string", default = "forbidden\n", description = "its body (text/plain)" },
    dry_run = { type = "boolean", default = false,
                description = "refuse nothing: log (info) what would have been refused" },
  },
  custom = function(conf)
    if (conf.allow_countries or conf.deny_countries) and not conf.geoip_db then
      return nil, "allow_countries and deny_countries need geoip_db"
    end
    return true
  end,
}

local EHOSTBITS = -404 -- engine/ipset.h LP_IPSET_EHOSTBITS
local ALLOW, DENY = 0, 1 -- values in the set: deny is larger, so the same prefix in both denies

-- Adds the entries of a list or a file to set s; nil, "where: problem" on a bad entry.
local function add_all(s, list, value, where)
  for i, cidr in ipairs(list) do
    local rc = C.lp_ffi_ipset_add(s, cidr, #cidr, value)
    if rc == EHOSTBITS then
      return nil, format("%s[%d]: %q has bits set past its prefix (did you mean the network "
        .. "address?)", where, i, cidr)
    elseif rc ~= 0 then
      return nil, format("%s[%d]: %q is not an address or CIDR", where, i, cidr)
    end
  end
  return true
end

local errbuf = ffi.new("char[512]")

local function add_file(s, path, value, where)
  if C.lp_ffi_ipset_add_file(s, path, value, errbuf, 512) ~= 0 then
    return nil, where .. ": " .. ffi_string(errbuf)
  end
  return true
end

local function code_set(list)
  if not list then return nil end
  local set = {}
  for _, c in ipairs(list) do set[upper(c)] = true end
  return set
end

function P.compile(conf)
  local s = ffi.gc(C.lp_ffi_ipset_new(), C.lp_ffi_ipset_free)
  if s == nil then return nil, "out of memory" end
  local ok, err = add_all(s, conf.allow or {}, ALLOW, "allow")
  if ok then ok, err = add_all(s, conf.deny or {}, DENY, "deny") end
  if ok and conf.allow_file then ok, err = add_file(s, conf.allow_file, ALLOW, "allow_file") end
  if ok and conf.deny_file then ok, err = add_file(s, conf.deny_file, DENY, "deny_file") end
  if not ok then return nil, err end
  if C.lp_ffi_ipset_build(s) ~= 0 then return nil, "out of memory" end
  local c = {
    set = s, status = conf.status, message = conf.message, dry_run = conf.dry_run,
    allow_countries = code_set(conf.allow_countries),
    deny_countries = code_set(conf.deny_countries),
  }
  -- With an allow list (addresses or countries), what matches nothing is denied.
  c.default_deny = (conf.allow and #conf.allow > 0) or conf.allow_file ~= nil
    or c.allow_countries ~= nil
  if conf.geoip_db then
    local db = C.lp_ffi_geoip_open(conf.geoip_db, errbuf, 512)
    if db == nil then
      return nil, format("geoip_db: %s: %s", conf.geoip_db, ffi_string(errbuf))
    end
    c.geoip = ffi.gc(db, C.lp_ffi_geoip_close)
  end
  return c
end

local country_buf = ffi.new("char[3]")

-- The client's country code, or nil (no database, or the address has none).
local function country_of(conf, ip)
  if conf.geoip and C.lp_ffi_geoip_country(conf.geoip, ip, #ip, country_buf) == 1 then
    return ffi_string(country_buf, 2)
  end
  return nil
end
P.country_of = country_of

-- Whether the address is refused, why (for the log), and the metric's reason.
local function refused(conf, ip)
  local v = C.lp_ffi_ipset_find(conf.set, ip, #ip)
  if v == DENY then return true, "address denied", "address" end
  if v == ALLOW then return false end
  -- An unknown client address (a unix socket):
  if v < -1 then return true, "not an address", "not_allowed" end
  local cc
  if conf.geoip then
    cc = country_of(conf, ip)
    if cc and conf.deny_countries and conf.deny_countries[cc] then
      return true, "country " .. cc .. " denied", "country"
    end
    if conf.allow_countries then
      if cc and conf.allow_countries[cc] then return false end
      return true, "country " .. (cc or "unknown") .. " not allowed", "country"
    end
  end
  if conf.default_deny then return true, "address not allowed", "not_allowed" end
  return false
end

local m_refused -- on GET /metrics (docs/metrics.md)

function P.init_worker()
  -- Declared by every entry's init_worker: a name declared again is the same metric.
  m_refused = proxy.metrics.counter("ip_filter_refused_total",
    "Requests the ip_filter plugin refused (dry runs included), by reason.", { "reason" })
end

function P.request(req, conf)
  local ip = req:client_ip()
  local no, why, reason = refused(conf, ip)
  if not no then return end
  if m_refused then m_refused:inc(1, reason) end
  if conf.dry_run then
    proxy.log.info(format("ip_filter: would refuse %s: %s (dry run)", ip, why))
    return
  end
  proxy.log.info(format("ip_filter: refused %s: %s", ip, why))
  return req:respond(conf.status, conf.message, { ["Content-Type"] = "text/plain" })
end

return P
