-- The schema of a whole config file (`.schema`), checked by luaproxy.schema like a plugin's (the
-- engine reads the validated table, defaults filled in: engine/config.c). The README's
-- table of keys is generated from it (lua/luaproxy/schema_doc.lua; a test compares them).
--
-- Durations are seconds (the engine keeps milliseconds). Addresses are checked for syntax
-- here; names are resolved and TLS contexts built after validation, in one later step.
local schema = require "luaproxy.schema"
local cidr = require "luaproxy.cidr"

local type, ipairs, pairs, format, concat = type, ipairs, pairs, string.format, table.concat

local YEAR = 86400 * 365

local function seconds(default, desc, min)
  return { type = "duration", default = default, min = min or 0.001, max = YEAR,
           description = desc }
end

local function non_empty(what)
  return function(list)
    if #list == 0 then return nil, "at least one " .. what .. " is required" end
    return true
  end
end

local function absolute(p)
  if p:sub(1, 1) ~= "/" then return nil, 'must start with "/"' end
  return true
end

local STATUS = { type = "integer", min = 100, max = 599 }

-- Route conditions (engine/router.c): a header or query argument's value, or true for
-- "present"; a client address or network.
local function present_or_string(v)
  if v == true or type(v) == "string" then return true end
  return nil, "expected a string (the value) or true (present)"
end

local function cidr_string(s)
  local ip, bits = s:match("^([^/]+)/?(%d*)$")
  if not ip then return nil, format("%q is not an address or CIDR", s) end
  local v6 = ip:find(":", 1, true) ~= nil
  if not v6 and not ip:match("^%d+%.%d+%.%d+%.%d+$") then
    return nil, format("%q is not an address or CIDR", s)
  end
  if bits ~= "" and tonumber(bits) > (v6 and 128 or 32) then
    return nil, format("%q: prefix length too long", s)
  end
  return true
end

-- `log.json = true`: the default text format's variables, and a few more, as members.
local JSON_LOG_DEFAULT = {
  time = "$time_iso8601", remote_addr = "$remote_addr", request = "$request",
  method = "$request_method", uri = "$uri", host = "$host", scheme = "$scheme",
  status = "$status", body_bytes_sent = "$body_bytes_sent", referer = "$http_referer",
  user_agent = "$http_user_agent", upstream_addr = "$upstream_addr",
  request_time = "$request_time", upstream_response_time = "$upstream_response_time",
}
local function json_log_default()
  local t = {}
  for k, v in pairs(JSON_LOG_DEFAULT) do t[k] = v end
  return t
end

local function statuses(desc, doc_default, default)
  return { type = "array", elements = STATUS, description = desc, doc_default = doc_default,
           default = default }
end

-- Log outputs (log.access, log.error): a path, "-"/"stdout"/"stderr", or a syslog table.
local SYSLOG_FACILITIES = {
  kern = 0, user = 1, mail = 2, daemon = 3, auth = 4, syslog = 5, lpr = 6, news = 7,
  uucp = 8, cron = 9, authpriv = 10, ftp = 11, local0 = 16, local1 = 17, local2 = 18,
  local3 = 19, local4 = 20, local5 = 21, local6 = 22, local7 = 23,
}
local SYSLOG_SEVERITIES = { emerg = 0, alert = 1, crit = 2, err = 3, error = 3, warning = 4,
  warn = 4, notice = 5, info = 6, debug = 7 }
local SYSLOG_KEYS = { syslog = true, facility = true, severity = true, app_name = true,
  hostname = true }
local function log_output(v, what)
  if v == false or (type(v) == "string" and v ~= "") then
    if type(v) == "string" and v:find("\0", 1, true) then return nil, "a NUL byte in a path" end
    return true
  end
  if type(v) ~= "table" then
    return nil, format('expected a path, %s, false or { syslog = "host:port" | "/dev/log", ... }',
      what)
  end
  for k in pairs(v) do
    if not SYSLOG_KEYS[k] then return nil, format("unknown key %s", tostring(k)) end
  end
  local s = v.syslog
  if type(s) ~= "string" or s == "" then
    return nil, 'syslog: expected "host:port" (UDP) or a unix socket path ("/dev/log")'
  end
  if s:sub(1, 1) ~= "/" then
    local ok, err = schema.check_address(s)
    if not ok then return nil, "syslog: " .. err end
  end
  if v.facility ~= nil and not SYSLOG_FACILITIES[v.facility] then
    return nil, format("facility: %s is not a syslog facility (user, daemon, local0-local7...)",
      tostring(v.facility))
  end
  if v.severity ~= nil and not SYSLOG_SEVERITIES[v.severity] then
    return nil, format("severity: %s is not a syslog severity (err, warning, notice, info...)",
      tostring(v.severity))
  end
  for _, k in ipairs({ "app_name", "hostname" }) do
    local x = v[k]
    if x ~= nil and (type(x) ~= "string" or x == "" or x:find("[^\33-\126]")) then
      return nil, format("%s: expected printable ASCII without spaces", k)
    end
  end
  return true
end

local OK_STATUSES = {}
for s = 200, 399 do OK_STATUSES[#OK_STATUSES + 1] = s end

-- Host names in routes: exact, "*.suffix" or "prefix.*" (engine/router.c).
local function host_pattern(h)
  local rest = h
  if h:sub(1, 1) == "*" then
    if h:sub(2, 2) ~= "." or #h < 3 then rest = "" else rest = h:sub(3) end
  elseif h:sub(-1) == "*" then
    if h:sub(-2, -2) ~= "." or #h < 3 then rest = "" else rest = h:sub(1, -3) end
  end
  if rest == "" or rest:find("[^%w%-%._]") then
    return nil, format("%q is not a host name, *.suffix or prefix.* wildcard", h)
  end
  return true
end

-- A target: "host:port", or http://host[:port] and https://host[:port] (a trailing "/"
-- allowed), which become host:port with the scheme's port by default, https marking the
-- target for TLS. A URL that is not of that form stays as written for the check to report.
local function url_target(v)
  if type(v) == "string" then v = { address = v } end
  if type(v) ~= "table" or type(v.address) ~= "string" then return v end
  local scheme, rest = v.address:match("^(https?)://(.*)$")
  if not scheme then return v end
  rest = rest:gsub("/$", "")
  if rest == "" or rest:find("[/@]") or #rest > 300 then return v end
  local has_port
  if rest:sub(1, 1) == "[" then has_port = rest:find("]:", 1, true) else has_port = rest:find(":", 1, true) end
  local out = {}
  for k, x in pairs(v) do out[k] = x end
  out.address = has_port and rest or rest .. (scheme == "https" and ":443" or ":80")
  out.https = scheme == "https"
  return out
end

local function target_address(s)
  if s:find("^https?://") then
    return nil, format("%q: expected scheme://host[:port] without a path", s)
  end
  return schema.check_address(s)
end

local function check_targets(list)
  if #list == 0 then return nil, "at least one target is required" end
  local https = 0
  for _, t in ipairs(list) do
    if t.https then https = https + 1 end
  end
  if https > 0 and https ~= #list then
    return nil, "https:// and plain targets cannot share an upstream"
  end
  return true
end

local HASH_ON = { ip = true, path = true }
local function check_hash_on(s)
  if HASH_ON[s] then return true end
  local kind, name = s:match("^(%a+):(.+)$")
  if kind == "header" or kind == "cookie" or kind == "query" then return true end
  return nil, format("%q: expected ip, path, header:NAME, cookie:NAME or query:NAME", s)
end

local TLS_VERSION = { type = "string", default = "TLSv1.2", one_of = { "TLSv1.2", "TLSv1.3" },
                      description = "lowest TLS version accepted" }

local function file(desc, extra)
  local f = { type = "string", min = 1, description = desc .. " (relative to the config file)" }
  for k, v in pairs(extra or {}) do f[k] = v end
  return f
end

local cert_fields = {
  cert = file("certificate chain file (PEM)", { required = true }),
  key = file("private key file (PEM)", { required = true, secret = true }),
  names = { type = "array", elements = { type = "string", min = 1 },
            description = "host names it serves (default: the certificate's own names)" },
}

local tls_server = {
  type = "record", doc_inline = true, doc_default = "off",
  description = "`{ cert =, key = }` or `{ certificates = { ... } }` and options (mTLS, "
    .. "versions, ciphers, sessions): HTTPS on this listener; see `docs/tls.md`",
  fields = {
    cert = file("certificate chain of the default certificate"),
    key = file("its private key", { secret = true }),
    certificates = {
      type = "array", custom = non_empty("certificate"),
      elements = { type = "record", fields = cert_fields },
      description = "more certificates, chosen by SNI",
    },
    client_ca = file("CA file client certificates are verified against (mTLS)"),
    verify_client = { type = "string", one_of = { "required", "optional" },
                      description = "client certificates: required (default with client_ca) "
                        .. "or optional" },
    ciphers = { type = "string", description = "TLS 1.2 cipher list (default: Mozilla intermediate)" },
    ciphersuites = { type = "string", description = "TLS 1.3 cipher suites" },
    min_version = TLS_VERSION,
    session_tickets = { type = "boolean", default = true, description = "session tickets" },
    session_cache = { type = "integer", default = 20480, min = 0, max = 1e7,
                      description = "sessions kept per listener (0: no server-side cache)" },
    session_timeout = seconds(3600, "session lifetime"),
    handshake_timeout = seconds(10, "seconds a TLS handshake may take"),
    session_ticket_keys = {
      type = "array", elements = file("ticket key file (80 bytes)", { secret = true }),
      description = "ticket key files, the first encrypts (default: a rotating ring)",
    },
  },
  custom = function(t)
    if not t.cert ~= not t.key then return nil, "cert and key go together" end
    if not t.cert and not t.certificates then
      return nil, "a certificate is required (cert and key, or certificates)"
    end
    if t.verify_client and not t.client_ca then return nil, "needs client_ca", "verify_client" end
    return true
  end,
}

local tls_client = {
  type = "record", doc_inline = true, doc_default = "off",
  description = "`true` (verify against the system CA store) or `{ ca =, sni =, verify =, "
    .. "cert =, key = }`: TLS to the targets (also turned on by `https://host[:port]` "
    .. "targets); see `docs/tls.md`",
  coerce = function(v)
    if v == true then return {} end
    if v == false then return nil end
    return v
  end,
  fields = {
    verify = { type = "boolean", default = true,
               description = "verify the server's certificate and name" },
    ca = file("CA file (default: the system store)"),
    sni = { type = "string", description = "server name sent and verified (default: the target's host)" },
    cert = file("client certificate"),
    key = file("client private key", { secret = true }),
    ciphers = { type = "string", description = "cipher list" },
    min_version = TLS_VERSION,
  },
  custom = function(t)
    if not t.cert ~= not t.key then return nil, "cert and key go together" end
    return true
  end,
}

local target = {
  type = "record",
  coerce = url_target,
  fields = {
    address = { type = "string", required = true, custom = target_address,
                description = "host:port, http://host[:port] or https://host[:port]" },
    weight = { type = "integer", default = 1, min = 1, max = 10000, description = "weight" },
    https = { type = "boolean", default = false,
              description = "TLS to this target (what an https:// address sets)" },
  },
}

local health = {
  type = "record", default = {},
  description = "health checks",
  doc_order = { "active", "passive" },
  fields = {
    active = {
      type = "record", doc_inline = true, doc_default = "off",
      description = '`{ type = "http"|"tcp", path = "/", interval = 5, timeout = 1, healthy = 2, '
        .. "unhealthy = 2, statuses = 200–399 }`: probes from the main thread, jittered; state "
        .. "shared by all workers",
      fields = {
        type = { type = "string", default = "http", one_of = { "http", "tcp" },
                 description = "http: GET path and check the status; tcp: a connect" },
        path = { type = "string", default = "/", custom = absolute, description = "path probed" },
        interval = seconds(5, "seconds between probes"),
        timeout = seconds(1, "seconds a probe may take"),
        healthy = { type = "integer", default = 2, min = 1, max = 100,
                    description = "consecutive passes that bring a target back" },
        unhealthy = { type = "integer", default = 2, min = 1, max = 100,
                      description = "consecutive failures that take it out" },
        statuses = statuses("statuses that pass", "200–399", OK_STATUSES),
      },
    },
    passive = {
      type = "record", default = {}, doc_inline = true, doc_default = "on",
      description = "`{ failures = 5, ejection = 10, statuses = {} }`: that many consecutive "
        .. "failures (connect errors, resets, timeouts, and the listed statuses) eject a target "
        .. "for `ejection` seconds, doubling on repeats (up to 32x); a success or a passing "
        .. "active check brings it back",
      fields = {
        failures = { type = "integer", default = 5, min = 0, max = 1000,
                     description = "consecutive failures that eject (0: passive checks off)" },
        ejection = seconds(10, "seconds a target stays ejected"),
        statuses = statuses("statuses that count as failures"),
      },
    },
  },
}

local upstream = {
  type = "record",
  doc_order = { "targets", "dns_ttl", "balance", "hash_on", "health", "retries", "retry_on",
                "retry_budget", "max_connections", "max_pending", "pending_timeout",
                "total_timeout", "keepalive", "keepalive_timeout", "keepalive_requests", "tls",
                "protocol", "max_streams" },
  fields = {
    targets = {
      type = "array", required = true, elements = target, custom = check_targets,
      doc_inline = true,
      description = 'list of `"host:port"` or `{ address =, weight = }` (weight 1–10000, '
        .. "default 1); a host name is a DNS target: every address it resolves to is a target "
        .. "(resolved when the config loads, then every `dns_ttl` without blocking; a name that "
        .. "does not resolve is logged, not an error)",
    },
    dns_ttl = seconds(30, "seconds between re-resolutions of DNS targets (each worker; a "
      .. "failed one keeps the last answer; a name with no address is asked again after at "
      .. "most 5 s)", 0.1),
    balance = {
      type = "string", default = "round_robin",
      one_of = { "round_robin", "least_conn", "p2c", "hash" },
      description = "`round_robin` (smooth weighted), `least_conn` (fewest active requests per "
        .. "weight), `p2c` (two random choices on peak-EWMA latency), `hash` (weighted Maglev "
        .. "consistent hashing); see `docs/balancing.md`",
    },
    hash_on = {
      type = "string", default = "ip", custom = check_hash_on,
      description = "the key of `hash`: `ip`, `path`, `header:NAME`, `cookie:NAME`, "
        .. "`query:NAME` (no key: a weighted random pick)",
    },
    health = health,
    retries = {
      type = "integer", default = 2, min = 0, max = 100,
      description = "further tries on another target after a failed connect, or a reset "
        .. "before any response byte / a `retry_on` status for idempotent requests without a "
        .. "body; the Lua `upstream` phase runs again before each",
    },
    retry_on = statuses("statuses (e.g. `{ 502, 503, 504 }`) that retry such a request "
      .. "elsewhere", "`{}`"),
    retry_budget = { type = "number", default = 0.2, min = 0, max = 10,
                     description = "retries per worker stay under 3 + this share of the last "
                       .. "10 s of requests" },
    max_connections = {
      type = "integer", default = 0, min = 0, max = 1e9, doc_default = "0 (off)",
      description = "per worker: tries in flight to the upstream; beyond it requests wait in "
        .. "the pending queue, or get 503 at once when it is full (circuit breaking)",
    },
    max_pending = {
      type = "integer", default = 0, min = 0, max = 1e9,
      description = "per worker: requests that may wait (first in, first out) for one of "
        .. "`max_connections`; 0: none wait",
    },
    pending_timeout = seconds(5, "seconds a request may wait in that queue before it gets 503"),
    total_timeout = {
      type = "duration", default = 0, min = 0, max = YEAR, doc_default = "0 (off)",
      description = "seconds from the first try to the response head across all tries "
        .. "(retries and queueing included): beyond it 504 and no further retry; the per-try "
        .. "limits are `timeouts.connect/send/read`",
    },
    keepalive = { type = "integer", default = 128, min = 0, max = 100000,
                  description = "idle connections kept per target per worker" },
    keepalive_timeout = seconds(60, "seconds an idle upstream connection is kept"),
    keepalive_requests = { type = "integer", default = 1000, min = 1, max = 1e9,
                           description = "requests per upstream connection before it is closed" },
    tls = tls_client,
    protocol = {
      type = "string", default = "http1", one_of = { "http1", "h2" },
      description = "`h2`: requests are multiplexed over pooled HTTP/2 connections to each "
        .. "target (TLS with ALPN `h2` when `tls` is set or targets are `https://`, else h2c "
        .. "with prior knowledge); needed for gRPC; see `docs/http2.md`",
    },
    max_streams = {
      type = "integer", default = 100, min = 1, max = 2147483647,
      description = "`h2`: streams at once per upstream connection (the lower of this and the "
        .. "target's SETTINGS_MAX_CONCURRENT_STREAMS); a full connection makes a new one",
    },
  },
}

-- error_pages: the proxy's own answers (404, 502, 503...) replaced per status by a page,
-- read when the config loads (engine/config.c reads files and keeps them; docs/error-pages.md).
local PAGE_MAX = 1048576

local PAGE_TYPES = {
  html = "text/html; charset=utf-8", htm = "text/html; charset=utf-8",
  json = "application/json", txt = "text/plain; charset=utf-8", xml = "application/xml",
}

-- `false` is the built-in answer (a route turning a global page off); a content type not
-- given follows the file's extension (text/html when unknown) or is text/plain for a body.
local function page_coerce(v)
  if v == false then return { builtin = true } end
  if type(v) ~= "table" or v.content_type ~= nil then return v end
  local out = {}
  for k, x in pairs(v) do out[k] = x end
  if type(v.file) == "string" then
    local ext = v.file:match("%.(%w+)$")
    out.content_type = PAGE_TYPES[ext and ext:lower()] or PAGE_TYPES.html
  elseif type(v.body) == "string" then
    out.content_type = PAGE_TYPES.txt
  end
  return out
end

local function page_check(p)
  local n = (p.file and 1 or 0) + (p.body and 1 or 0) + (p.builtin and 1 or 0)
  if n == 0 then return nil, "expected file, body, or false (the built-in answer)" end
  if n > 1 then return nil, "file, body and builtin are exclusive" end
  return true
end

local function status_key(k)
  if type(k) == "string" and k:match("^%d%d%d$") then return tonumber(k) end
  return k
end

local function check_status_key(k)
  if type(k) == "number" and k >= 400 and k <= 599 and k % 1 == 0 then return true end
  return nil, "expected an error status 400–599 as the key (`[502] = { ... }`), got "
    .. (type(k) == "string" and format("%q", k) or tostring(k))
end

local function error_pages(desc)
  return {
    type = "map", doc_inline = true, doc_default = "none", description = desc,
    keys = { type = "any", coerce = status_key, custom = check_status_key },
    values = {
      type = "record", coerce = page_coerce, custom = page_check,
      fields = {
        file = file("the page, read when the config loads (at most 1 MiB)"),
        body = { type = "string", max = PAGE_MAX, description = "the page itself" },
        content_type = {
          type = "string", min = 1, pattern = "^[^%c]+$",
          description = "Content-Type (default: by the file's extension, text/html when "
            .. "unknown; text/plain for a body)",
        },
        status = { type = "integer", min = 200, max = 599,
                   description = "the status sent instead (nginx's `error_page 404 =200`)" },
        builtin = { type = "boolean", description = "the built-in answer (what `false` means)" },
      },
    },
  }
end

local plugin_entry = {
  type = "any",
  custom = function(e)
    if type(e) ~= "table" then return nil, "expected { name = ..., ... }" end
    if type(e.name) ~= "string" then return nil, "required (a plugin name)", "name" end
    return true
  end,
}

local route = {
  type = "record",
  doc_order = { "name", "match", "upstream", "strip_prefix", "plugins", "handler", "error_pages" },
  fields = {
    name = { type = "string", pattern = "^[%w_.:%-]+$", doc_default = "`route#N`",
             description = "the route's name: the `route` label of its metrics "
               .. "(docs/metrics.md); unique; `route#N` (its position) when not set" },
    match = {
      type = "record", default = {}, description = "what the route matches",
      doc_order = { "host", "prefix", "path", "regex", "methods", "headers", "header_regex",
                    "query", "query_regex", "cidr", "sni", "predicate" },
      custom = function(m)
        local n = (m.prefix and 1 or 0) + (m.path and 1 or 0) + (m.regex and 1 or 0)
        if n > 1 then return nil, "use one of prefix, path and regex" end
        return true
      end,
      fields = {
        host = { type = "string", custom = host_pattern, doc_default = "any",
                 description = "exact host (case-insensitive, port ignored), `*.example.com` "
                   .. "(any subdomain) or `api.*` (any name starting with `api.`)" },
        prefix = { type = "string", custom = absolute, doc_default = '"/"',
                   description = "path prefix (raw bytes of the path, before any `?`)" },
        path = { type = "string", custom = absolute, doc_default = "any",
                 description = "the whole path: literal, with `:name` segments and a last "
                   .. "`*name` (the rest), captured for `req:param(name)`" },
        regex = { type = "regex", doc_default = "any",
                  description = "PCRE2 regex the path must match (anchor it with ^); named "
                    .. "groups are captured for `req:param(name)`" },
        methods = { type = "array", elements = { type = "string", pattern = "^%a+$" },
                    doc_default = "any", description = "methods (case-insensitive)" },
        headers = { type = "map", keys = { type = "string", pattern = "^[%w!#$%%&'*+%-.^_`|~]+$" },
                    values = { type = "any", custom = present_or_string }, doc_default = "none",
                    description = "headers that must have exactly this value (`true`: be present)" },
        header_regex = { type = "map", keys = { type = "string", pattern = "^[%w!#$%%&'*+%-.^_`|~]+$" },
                         values = { type = "regex" }, doc_default = "none",
                         description = "headers that must be present with a value matching the regex" },
        query = { type = "map", values = { type = "any", custom = present_or_string },
                  doc_default = "none",
                  description = "query arguments that must have exactly this (decoded) value "
                    .. "(`true`: be present)" },
        query_regex = { type = "map", values = { type = "regex" }, doc_default = "none",
                        description = "query arguments whose (decoded) value must match the regex" },
        cidr = { type = "array", elements = { type = "string", custom = cidr_string },
                 doc_default = "any",
                 description = "client addresses (`10.0.0.0/8`, `::1`): any of them" },
        sni = { type = "string", custom = host_pattern, doc_default = "any",
                description = "TLS server name: exact or `*.example.com`; plain HTTP never matches" },
        -- The escape hatch (issue #22): Lua configs only (a function is not data).
        predicate = { type = "function", doc_default = "none",
                      description = "`function(req) return bool end`, run once every other "
                        .. "condition held; false tries the next route; an error fails the "
                        .. "request with 500 (docs/routing.md)" },
      },
    },
    upstream = { type = "upstream", doc_default = "required",
                 description = "upstream name (optional when a handler or plugins choose one)" },
    strip_prefix = { type = "boolean", default = false,
                     description = "remove the prefix before forwarding (`/api/x` → `/x`)" },
    plugins = {
      type = "array", elements = plugin_entry, doc_default = "none",
      description = "plugin entries for this route, run after/among the global ones by priority",
    },
    handler = {
      type = "any", doc_default = "none",
      custom = function(h)
        if type(h) == "function" or type(h) == "string" then return true end
        return nil, "expected a function or a script module name"
      end,
      description = "`function(req) ... end`, or the name of a module (next to the config or in "
        .. "`scripts/`) returning one; runs after the request phase of the plugins and may "
        .. "choose the upstream, rewrite, or answer",
    },
    error_pages = error_pages("as the top-level `error_pages`, for the requests of this route: "
      .. "a status given here wins over the global page (`[404] = false`: the built-in answer)"),
  },
}

-- shared: dict sizes as bytes or "64k", "10m", "1g" (engine/shdict.h).
local SIZE_UNITS = { [""] = 1, k = 1024, m = 1048576, g = 1073741824 }
local function size_coerce(v)
  if type(v) == "string" then
    local n, unit = v:match("^(%d+)([kKmMgG]?)$")
    if n then return tonumber(n) * SIZE_UNITS[unit:lower()] end
  end
  return v
end

local function size_check(v)
  if type(v) ~= "number" or v % 1 ~= 0 then
    return nil, format('expected a size (bytes, or "64k", "10m", "1g"), got %s',
                       type(v) == "string" and format("%q", v) or type(v))
  end
  if v < 8192 then return nil, format("%d bytes is below the minimum of 8k", v) end
  if v > 1099511627776 then return nil, "more than 1 TiB" end
  return true
end

local function size_text(v)
  for _, u in ipairs({ { 1073741824, "g" }, { 1048576, "m" }, { 1024, "k" } }) do
    if v % u[1] == 0 then return format('"%d%s"', v / u[1], u[2]) end
  end
  return format("%d bytes", v)
end

-- A zone's memory gathers every fill before it is linked (and written to a disk tier), so
-- an object larger than it could never be stored: such a max_object_size is refused, and
-- the default (8m) is lowered to a smaller memory.
local function check_zone_sizes(z)
  if z.max_object_size == nil then
    z.max_object_size = math.min(8388608, z.memory)
  elseif z.max_object_size > z.memory then
    return nil, format("max_object_size %s is larger than memory %s, which must hold the "
      .. "largest object (a fill is gathered in memory, also with a disk tier)",
      size_text(z.max_object_size), size_text(z.memory)), "max_object_size"
  end
  return true
end

-- tracing.export.endpoint: http://host[:port][/path] (no TLS: a collector on loopback or
-- a private network, docs/tracing.md).
local function collector_url(s)
  local hostport = s:match("^http://([^/]+)")
  if not hostport or hostport:find("[@%s]") then
    return nil, format("%q: expected http://host[:port][/path]", s)
  end
  if not hostport:find(":%d+$") then hostport = hostport .. ":80" end
  return schema.check_address(hostport)
end

local TRACING = {
  type = "record", default = {},
  description = "W3C trace context and span export (docs/tracing.md)",
  doc_order = { "enabled", "accept", "sample", "export" },
  fields = {
    enabled = {
      type = "boolean", default = true,
      description = "give every request a trace id and the proxy's span id, and send "
        .. "`traceparent` (and `tracestate`) upstream",
    },
    accept = {
      type = "boolean", default = true,
      description = "continue a valid incoming `traceparent`/`tracestate` (false: every "
        .. "request starts a new trace, for a proxy facing untrusted clients)",
    },
    sample = {
      type = "number", default = 1, min = 0, max = 1,
      description = "share of new traces sampled (a continued trace keeps its parent's "
        .. "sampled flag); only sampled requests are exported",
    },
    export = {
      type = "record", doc_default = "off",
      description = "one span per request (and one per upstream try) to an OTLP/HTTP JSON "
        .. "collector",
      doc_order = { "endpoint", "service_name", "batch_size", "interval", "max_queue",
                    "timeout" },
      fields = {
        endpoint = { type = "string", required = true, custom = collector_url,
                     doc_default = "none",
                     description = "the collector's URL, `http://host:port/v1/traces` (a "
                       .. "missing path is `/v1/traces`)" },
        service_name = { type = "string", default = "luaproxy", min = 1,
                         description = "the resource's `service.name`" },
        batch_size = { type = "integer", default = 512, min = 1, max = 100000,
                       description = "spans per POST: a batch goes once it holds this many "
                         .. "(a request's spans stay together, so it may hold a few more)" },
        interval = seconds(1, "seconds between POSTs of a partial batch"),
        max_queue = { type = "integer", default = 4096, min = 1, max = 10000000,
                      description = "spans waiting per worker at most; more are dropped and "
                        .. "counted (`GET /status` `tracing.dropped`)" },
        timeout = seconds(2, "seconds a POST may take (connect to answer); a slower one is "
                         .. "cut and its spans dropped"),
      },
    },
  },
}

local S = {
  description = "a luaproxy config file",
  doc_order = { "workers", "listen", "upstreams", "routes", "error_pages", "timeouts", "limits",
                "normalize_path", "merge_slashes", "log", "plugins", "lua", "shared", "admin", "metrics",
                "client_abort", "pid_file",
                "watch", "tracing", "lint", "cache", "http2" },
  fields = {
    workers = { type = "integer", min = 1, max = 256, doc_default = "CPU count",
                description = "worker threads, each with its own loop and listening socket "
                  .. "(`SO_REUSEPORT`)" },
    listen = {
      type = "array", required = true, custom = non_empty("listener"),
      elements = {
        type = "record",
        doc_order = { "address", "backlog", "tls", "proxy_protocol", "real_ip", "http2" },
        fields = {
          address = { type = "address", required = true, description = "address to listen on" },
          backlog = { type = "integer", default = 511, min = 1, max = 65535,
                      description = "listen backlog" },
          tls = tls_server,
          -- #14: the real client address (docs/real-ip.md).
          proxy_protocol = {
            type = "boolean", default = false,
            description = "every connection starts with a PROXY protocol header (v1 or v2, "
              .. "before TLS on a TLS listener) from an L4 balancer; its source address is "
              .. "the client's. A missing or malformed header, or none within "
              .. "`timeouts.client_header`, closes the connection (docs/real-ip.md)",
          },
          real_ip = {
            type = "record", doc_default = "off",
            description = "take the client address from a header when the peer is a "
              .. "trusted proxy (docs/real-ip.md)",
            doc_order = { "trusted", "header" },
            fields = {
              trusted = {
                type = "array", required = true, custom = non_empty("trusted network"),
                elements = { type = "string", custom = cidr.check },
                description = "`{ \"10.0.0.0/8\", \"::1\" }`: proxies (CIDRs, IPv4 or IPv6) "
                  .. "whose headers are believed; from anyone else they are ignored",
              },
              header = {
                type = "string", default = "X-Forwarded-For", pattern = "^[%w!#$%%&'*+%-.^_`|~]+$",
                description = "`X-Forwarded-For` (the right-most untrusted hop, walking left "
                  .. "over trusted ones), `Forwarded` (RFC 7239 `for=`), or another header "
                  .. "holding an address or a list of them (`X-Real-IP`)",
              },
            },
          },
          -- #17: HTTP/2 downstream (engine/h2.c, docs/http2.md).
          http2 = {
            type = "boolean", default = false,
            description = "serve HTTP/2 too: on a TLS listener ALPN offers `h2,http/1.1`; on a "
              .. "cleartext one a connection that starts with the HTTP/2 preface speaks h2c "
              .. "(prior knowledge), others HTTP/1.1. Limits: the top-level `http2` section",
          },
        },
      },
      description = "listeners",
    },
    upstreams = { type = "map", default = {}, values = upstream, description = "upstreams by name" },
    routes = { type = "array", required = true, elements = route,
               description = "routes, first match wins (docs/routing.md)" },
    error_pages = error_pages(
      "`{ [502] = { file = \"50x.html\" }, [503] = { body = \"busy: ${detail}\", status = 503 } }`: "
      .. "pages in place of the proxy's own answers (404, 408, 413, 431, 500, 502, 503, 504...) "
      .. "by status; a file is read when the config loads (relative to it, at most 1 MiB); "
      .. "`${status}`, `${reason}` and `${detail}` are replaced; see `docs/error-pages.md`"),
    timeouts = {
      type = "record", default = {}, description = "timeouts, in seconds",
      doc_order = { "connect", "read", "send", "client_header", "client_body", "keepalive",
                    "tunnel", "drain" },
      fields = {
        connect = seconds(5, "seconds to connect to an upstream (→ 504)"),
        read = seconds(60, "seconds between two reads from an upstream (→ 504 before the "
          .. "response, else the client connection is closed)"),
        send = seconds(60, "seconds a write to a client or upstream may stall (HTTP/2: also "
          .. "a stream's or the connection's window the client keeps shut: RST_STREAM, GOAWAY)"),
        client_header = seconds(10, "seconds to receive a whole request head (→ 408)"),
        client_body = seconds(60, "seconds between two reads of a request body (→ 408)"),
        keepalive = seconds(75, "seconds an idle client connection is kept"),
        tunnel = seconds(3600, "seconds an upgraded connection (WebSocket, 101) may carry no "
          .. "byte either way before both sides are closed"),
        drain = seconds(30, "seconds shutdown waits for requests in flight"),
      },
    },
    -- #17: HTTP/2 downstream limits (engine/h2.c, docs/http2.md); listen[].http2 turns it on.
    http2 = {
      type = "record", default = {},
      description = "HTTP/2 connections (listeners with `http2 = true`): limits and protections",
      doc_order = { "max_concurrent_streams", "initial_window_size", "max_header_list_size",
                    "hpack_table_size", "max_resets", "max_control_frames", "max_continuations",
                    "idle_timeout", "max_requests" },
      fields = {
        max_concurrent_streams = {
          type = "integer", default = 128, min = 1, max = 65535,
          description = "streams a client may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS; "
            .. "more are refused with RST_STREAM)" },
        initial_window_size = {
          type = "integer", default = 65535, min = 1024, max = 16777215,
          description = "bytes of request body a stream may send ahead of the upstream "
            .. "(per-stream flow control window; the connection's is this times the streams)" },
        max_header_list_size = {
          type = "integer", default = 32768, min = 1024, max = 1048576,
          description = "bytes of decoded request header fields (name + value + 32 each, "
            .. "SETTINGS_MAX_HEADER_LIST_SIZE); beyond it the stream is answered 431 (HPACK bombs)" },
        hpack_table_size = {
          type = "integer", default = 4096, min = 0, max = 65536,
          description = "bytes of the HPACK dynamic table clients may use for requests "
            .. "(SETTINGS_HEADER_TABLE_SIZE); responses are encoded without one" },
        max_resets = {
          type = "integer", default = 200, min = 1, max = 1000000,
          description = "RST_STREAM frames a client may send in 10 seconds; beyond it the "
            .. "connection ends with GOAWAY ENHANCE_YOUR_CALM (rapid reset, CVE-2023-44487)" },
        max_control_frames = {
          type = "integer", default = 1000, min = 1, max = 1000000,
          description = "SETTINGS, PING, PRIORITY and empty DATA frames a client "
            .. "may send in 10 seconds; beyond it GOAWAY ENHANCE_YOUR_CALM (floods)" },
        max_continuations = {
          type = "integer", default = 8, min = 1, max = 1024,
          description = "CONTINUATION frames after one HEADERS; beyond it the connection ends "
            .. "(CONTINUATION floods)" },
        idle_timeout = seconds(75, "seconds an HTTP/2 connection without open streams is kept"),
        max_requests = {
          type = "integer", default = 10000, min = 1, max = 4294967295,
          description = "streams per connection; the last one gets GOAWAY, open streams finish" },
      },
    },
    limits = {
      type = "record", default = {}, description = "request size and connection limits",
      doc_order = { "max_header_size", "max_uri_size", "max_body_size", "max_headers",
                    "max_connections" },
      fields = {
        max_header_size = { type = "integer", default = 16384, min = 256, max = 1048576,
                            description = "bytes of request header fields (→ 431)" },
        max_uri_size = { type = "integer", default = 8192, min = 16, max = 1048576,
                         description = "bytes of request target (→ 414)" },
        max_body_size = { type = "integer", default = 1048576, min = 0, max = 9e15,
                          description = "bytes of request body, 0 = unlimited (→ 413, also "
                            .. "mid-stream for chunked bodies)" },
        -- min 1: cache_ffi.c's FIELDS_ALWAYS_FIT counts on it
        max_headers = { type = "integer", default = 100, min = 1, max = 10000,
                        description = "number of request header fields (→ 431)" },
        max_connections = {
          type = "integer", default = 10000, min = 0, max = 16777216,
          description = "client connections per worker (nginx's `worker_connections`); beyond "
            .. "it new connections are closed at once and a warning is logged (once a "
            .. "second); 0: no limit",
        },
      },
    },
    log = {
      type = "record", default = {}, description = "the access log and the error log",
      doc_order = { "access", "format", "json", "level", "error", "error_format", "sample",
                    "always_status", "always_slower", "flush", "buffer", "max_fields" },
      custom = function(v)
        if v.format ~= nil and v.json ~= nil then
          return nil, "set format (text lines) or json (JSON lines), not both", "json"
        end
        return true
      end,
      fields = {
        access = {
          type = "any", default = "-", doc_default = '`"-"` (stdout)',
          custom = function(v) return log_output(v, '"-" (stdout)') end,
          description = 'access log: a path, `"-"` (stdout), `false`, or syslog: '
            .. '`{ syslog = "host:port" | "/dev/log", facility = "local7", severity = "info", '
            .. 'app_name = "luaproxy", hostname = ... }` (RFC 5424; see docs/access-log.md)',
        },
        format = { type = "string", doc_default = "see below",
                   description = "access log template (text lines; see docs/access-log.md)" },
        json = {
          type = "map", keys = { type = "string", min = 1 }, values = { type = "string" },
          doc_default = "off",
          coerce = function(v)
            if v == true then return json_log_default() end
            if v == false then return nil end
            return v
          end,
          custom = function(v)
            if next(v) == nil then return nil, "expected at least one member" end
            for k, t in pairs(v) do
              -- The engine reads C strings: a NUL would cut the name or the template short.
              if k:find("\0", 1, true) or t:find("\0", 1, true) then
                return nil, "a NUL byte cannot be logged from the config", k
              end
            end
            return true
          end,
          description = "access log as one JSON object per line instead of `format`: "
            .. '`{ member = "template", ... }` (members in name order; a value that is one '
            .. "variable is a number, a string or null, any other template a string), or "
            .. "`true` for the default members; see docs/access-log.md",
        },
        level = { type = "string", default = "info",
                  one_of = { "error", "warn", "notice", "info", "debug" },
                  description = "error log level: error, warn, notice, info, debug" },
        -- log outputs, sampling and the writer (docs/access-log.md)
        error = {
          type = "any", default = "stderr", doc_default = '`"stderr"`',
          custom = function(v)
            if v == false then return nil, "the error log cannot be turned off" end
            return log_output(v, '"stderr", "stdout"')
          end,
          description = 'error log: `"stderr"`, `"stdout"`, a path, or syslog as for `access` '
            .. "(facility local7 by default; each line's severity follows its level)",
        },
        error_format = { type = "string", default = "text", one_of = { "text", "json" },
                         description = "error log lines: `text`, or `json` (one object per "
                           .. "line: time, level, worker, message, and the request's fields)" },
        sample = { type = "number", default = 1, min = 0, max = 1,
                   description = "fraction of requests written to the access log (the "
                     .. "always_* rules log more)" },
        always_status = { type = "integer", default = 500, min = 0, max = 999,
                          description = "with `sample` below 1: requests whose status is at "
                            .. "least this are always logged (0: no such rule)" },
        always_slower = { type = "duration", default = 0, min = 0, max = YEAR,
                          description = "with `sample` below 1: requests that took longer than "
                            .. "this many seconds are always logged (0: no such rule)" },
        flush = seconds(0.1, "seconds a worker may keep access log lines before handing them "
                          .. "to the log writer thread (also when its 32 KiB buffer fills)"),
        buffer = { type = "integer", default = 4194304, min = 65536, max = 1073741824,
                   description = "bytes of log lines queued for the writer thread; when the "
                     .. "output falls behind further, lines are dropped and counted "
                     .. "(`log.lines_dropped` in GET /status)" },
        max_fields = { type = "integer", default = 16, min = 0, max = 64,
                       description = "fields a request may add with `req:log_field()`" },
      },
    },
    plugins = {
      type = "array", elements = plugin_entry, doc_default = "none",
      description = 'global plugin entries `{ name = "...", <its config>, fail_open = false }`, '
        .. "run for every request (also those no route matched)",
    },
    lua = {
      type = "record", default = {}, description = "the Lua runtime",
      fields = {
        phase_timeout = {
          type = "duration", default = 1, min = 0, max = 3600,
          description = "seconds of wall clock a Lua phase (or `init_worker`; loading is bounded "
            .. "by `init_timeout`) may run without "
            .. "yielding before the request fails with 500 (0: no limit); user code stays "
            .. "JIT-compiled (docs/lua-api.md, \"Errors and limits\")",
        },
        init_timeout = {
          type = "duration", default = 10, min = 0.001, max = 3600,
          description = "seconds loading may take (plugins' main chunks and `compile`, run "
            .. "without yielding) and `init_worker` may wait (sleeps, sockets) in all before the "
            .. "load or reload fails: both run while the generation is built, holding up the "
            .. "reload and signals",
        },
        max_timers = {
          type = "integer", default = 1024, min = 1, max = 1000000,
          description = "timers (`proxy.timer.at`/`every`) pending per worker; one more is "
            .. "refused with an error and counted in `GET /status` (`lua.timers_refused`)",
        },
        max_running_timers = {
          type = "integer", default = 256, min = 1, max = 1000000,
          description = "timers and `proxy.spawn` threads running at once per worker; a due "
            .. "timer over the bound waits for a slot, a spawn over it is refused",
        },
        regex_cache_max = {
          type = "integer", default = 1024, min = 0, max = 1000000,
          description = "compiled `proxy.re` patterns kept per worker (least recently used "
            .. "evicted first; 0: compile on every call)",
        },
        regex_match_limit = {
          type = "integer", default = 10000000, min = 1000, max = 4294967295,
          description = "PCRE2 match limit of one `proxy.re` call: a pattern that backtracks "
            .. "more returns `nil, \"pcre2_match: match limit exceeded\"` (about 15 ms with "
            .. "the JIT at the default; `lua.phase_timeout` cannot stop a call inside C)",
        },
        ssl_trusted_certificate = {
          type = "string", min = 1, doc_default = "the system store",
          description = "CA file (PEM, relative to the config file) that `proxy.tcp()` "
            .. "sockets verify servers against when `sslhandshake` is asked to verify "
            .. "(docs/lua-api.md)",
        },
        plugin_paths = {
          type = "array", elements = { type = "string", min = 1 }, doc_default = "none",
          description = "extra plugin directories (relative to the config file), searched "
            .. "before `plugins/` next to the config and the bundled `plugins/`",
        },
      },
    },
    shared = {
      type = "map", default = {}, doc_default = "none",
      description = '`{ limits = "10m", sessions = "64m" }`: shared dicts by name, '
        .. "`proxy.shared.NAME` in Lua, one store per name used by every worker; the size "
        .. 'is bytes or "64k", "10m", "1g" (at least 8k); a reload keeps the content of a '
        .. "dict it keeps (a resized one keeps what fits); see docs/lua-api.md",
      keys = { type = "string", pattern = "^[%a_][%w_]*$" },
      values = { type = "any", coerce = size_coerce, custom = size_check },
    },
    admin = {
      type = "record", doc_default = "off", description = "the admin API",
      fields = {
        address = { type = "address", required = true, doc_default = "off",
                    description = "admin API address, never a public listener (`GET /` the "
                      .. "status page, `GET /status`, `GET /metrics`, `POST /reload`, "
                      .. "`POST /stop`, `GET /config`, `GET /upstreams`, "
                      .. "`POST /upstreams/NAME/targets/ADDRESS`, `GET /reloads`, `GET /errors`, "
                      .. "`GET /routes`, `POST /routes`, `POST /explain`; see "
                      .. "`docs/admin-api.md`); port "
                      .. "0 takes a free port, logged at start; an address that is not loopback "
                      .. "needs `token_file`" },
        token_file = { type = "string", doc_default = "none",
                       description = "file holding a bearer token (one line, at least 16 "
                         .. "characters, relative to the config) that every admin request must "
                         .. "send as `Authorization: Bearer TOKEN`; required when `address` is "
                         .. "not a loopback address" },
      },
    },
    metrics = {
      type = "record", default = {}, description = "`GET /metrics` on the admin API "
        .. "(docs/metrics.md)",
      doc_order = { "enabled", "buckets", "max_series" },
      fields = {
        enabled = { type = "boolean", default = true,
                    description = "count requests, bytes and latencies per route and upstream "
                      .. "(per worker, no lock; `false` leaves those series at their last value)" },
        buckets = {
          type = "array", elements = { type = "number", min = 0 },
          default = { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10 },
          doc_default = "0.005 … 10 (11 bounds)",
          custom = function(b)
            if #b == 0 then return nil, "at least one bound" end
            if #b > 64 then return nil, "at most 64 bounds" end
            for i = 2, #b do
              if b[i] <= b[i - 1] then
                return nil, format("bounds must increase (%s after %s)", b[i], b[i - 1])
              end
            end
            return true
          end,
          description = "bounds in seconds of the latency histograms "
            .. "(`luaproxy_request_duration_seconds`, `luaproxy_upstream_response_seconds`); "
            .. "read at start: a reload that changes them keeps the first ones, with a warning",
        },
        max_series = {
          type = "integer", default = 1000, min = 1, max = 100000,
          description = "label sets per plugin metric (`proxy.metrics`); updates with further "
            .. "label values go to one series whose labels are all `__overflow__`, counted in "
            .. "`luaproxy_metrics_overflow_total`",
        },
      },
    },
    normalize_path = {
      type = "boolean", default = true,
      description = "request paths are normalised before anything reads them (routing, "
        .. "plugins, the cache key, the WAF, the upstream request line): escapes of unreserved "
        .. "characters decoded, `.` and `..` segments removed (RFC 3986), a path climbing above "
        .. "`/` or with a bad `%` escape refused with 400 (docs/routing.md)",
    },
    merge_slashes = {
      type = "boolean", default = false,
      description = "runs of `/` in request paths become one before routing (nginx's "
        .. "`merge_slashes`); off because `//` can mean something to the upstream "
        .. "(docs/routing.md)",
    },
    client_abort = {
      type = "string", default = "answer", one_of = { "answer", "close" },
      description = "a client that closes its side (FIN) after its request was read, before "
        .. "its answer is out: `answer` sends the answer anyway (a half-close, RFC 9112; a "
        .. "client that is really gone is noticed when the answer cannot be written), `close` "
        .. "takes it as gone, as nginx does: the upstream request is abandoned, the log says "
        .. "499 and the log phase runs at once (limit_conn's slot comes back)",
    },
    pid_file = { type = "string", doc_default = "none",
                 description = "file the pid is written to (used by `luaproxy -s` when there "
                   .. "is no admin API)" },
    tracing = TRACING,
    -- cache (issue #13): the response cache's zones (engine/cache_store.h); the policy is the
    -- bundled `cache` plugin's (docs/plugins/cache.md).
    cache = {
      type = "record", default = {}, doc_default = "none",
      description = "response cache zones, shared by every worker; the `cache` plugin "
        .. "stores into and serves from them (docs/plugins/cache.md)",
      fields = {
        zones = {
          type = "map", default = {}, doc_default = "none",
          description = '`{ api = { memory = "256m", max_object_size = "8m" } }`: zones by '
            .. "name; a reload keeps the entries of a zone it keeps (new limits apply at the "
            .. "switch: a smaller `memory` evicts the least recently used)",
          keys = { type = "string", pattern = "^[%a_][%w_]*$" },
          values = {
            type = "record",
            custom = check_zone_sizes,
            fields = {
              memory = { type = "any", required = true, coerce = size_coerce, custom = size_check,
                         description = 'the zone\'s byte budget (bytes, or "64k", "10m", "1g"): '
                           .. "entries, keys, heads and bodies; least recently used go first" },
              max_object_size = {
                type = "any", coerce = size_coerce, custom = size_check,
                doc_default = '"8m", or `memory` when smaller',
                description = "a larger response passes through uncached (its fill is dropped "
                  .. "when the body goes over, or at once when its Content-Length says so); "
                  .. "at most `memory`, which gathers every fill, a disk tier's included" },
              -- #13 disk tier (engine/cache_disk.c)
              disk = {
                type = "record", doc_default = "none",
                description = '`{ path = "/var/cache/luaproxy/api", size = "10g" }`: entries '
                  .. "are also written to files there as they complete and survive reloads and "
                  .. "restarts (the directory is indexed in the background at start); memory "
                  .. "keeps the hottest, the disk the rest (docs/plugins/cache.md)",
                fields = {
                  path = { type = "string", required = true,
                           description = "the zone's directory (made when missing; relative: "
                             .. "to the config's directory); one zone per directory" },
                  size = { type = "any", required = true, coerce = size_coerce,
                           custom = size_check,
                           description = "the files' byte budget; least recently used go "
                             .. "first" },
                },
              },
            },
          },
        },
      },
    },
    watch = {
      type = "boolean", default = false,
      description = "reload when a `.lua` file changes next to the config (and in its "
        .. "`plugins/`, `lib/`) or in the bundled `plugins/` and `scripts/`, or a certificate, "
        .. "key, CA or error page file the config names",
    },
    -- #21: `luaproxy check` on the config's own scripts and plugins at start, reload, -t.
    lint = {
      type = "record", default = {}, doc_default = "on, warnings logged",
      description = "`luaproxy check` (luacheck and the proxy API) on the plugins and "
        .. "handler scripts the config uses, except the bundled ones, whenever it loads "
        .. "(start, reload, `-t`); see docs/plugins.md",
      fields = {
        enabled = { type = "boolean", default = true,
                    description = "false: no check when the config loads" },
        warnings_are_errors = {
          type = "boolean", default = false,
          description = "a warning refuses the load (`file:line:col: message`; on a "
            .. "reload the running config keeps serving) instead of being logged",
        },
      },
    },
    -- #18: the config proper from etcd (engine/etcd.c, lua/luaproxy/config_source.lua,
    -- docs/fleet.md); read at start only, like pid_file.
    config_source = {
      type = "record", doc_default = "none",
      description = "where the config comes from when not from this file alone "
        .. "(docs/fleet.md); read at start only",
      fields = {
        etcd = {
          type = "record", required = true,
          description = "watch a prefix in etcd (v3 JSON gateway): the JSON document at "
            .. "`PREFIX config` is merged into this file (its top-level keys this file does "
            .. "not set) and applied as a reload; the last good one is kept in `state_file`",
          doc_order = { "endpoints", "prefix", "instance", "state_file", "timeout", "auth", "tls" },
          fields = {
            endpoints = {
              type = "array", required = true, custom = non_empty("endpoint"),
              elements = { type = "string", pattern = "^https?://[^/]+$" },
              description = '`{ "http://10.0.0.1:2379", ... }` (or `https://`): tried in turn',
            },
            prefix = { type = "string", default = "/luaproxy/", pattern = "^/.*/$",
                       description = "key prefix: `PREFIX config`, `PREFIX status/INSTANCE`" },
            instance = { type = "string", pattern = "^[%w_.:%-]+$", doc_default = "HOST:PID",
                         description = "this instance's name under `PREFIX status/`" },
            state_file = { type = "string", doc_default = '"BOOTSTRAP.etcd.json"',
                           description = "the last good document (relative to this file); "
                             .. "served at a start while etcd is down" },
            timeout = seconds(2, "connect and request timeout for etcd"),
            auth = {
              type = "record", doc_default = "none",
              description = "etcd user and password (`/v3/auth/authenticate`)",
              fields = {
                user = { type = "string", required = true, description = "etcd user" },
                password = { type = "string", required = true, secret = true,
                             description = "its password" },
              },
            },
            tls = {
              type = "record", doc_default = "none",
              description = "TLS settings of `https://` endpoints (OpenSSL, the context "
                .. "upstreams use); without it `https://` verifies against the system store",
              doc_order = { "ca", "cert", "key", "verify", "server_name" },
              fields = {
                ca = { type = "string", description = "CA file the server certificate is "
                         .. "verified against (default: the system store)" },
                cert = { type = "string", description = "client certificate (PEM), for "
                           .. "etcd's `--client-cert-auth`" },
                key = { type = "string", description = "its private key (PEM)" },
                verify = { type = "boolean", default = true,
                           description = "verify the server's certificate and name" },
                server_name = { type = "string", description = "name sent as SNI and "
                                  .. "verified (default: the endpoint's host)" },
              },
              custom = function(t)
                if (t.cert == nil) ~= (t.key == nil) then
                  return nil, "cert and key go together"
                end
                return true
              end,
            },
          },
        },
      },
    },
  },
}

-- Checks across keys, after the fields: every route has an upstream or something in Lua
-- that may choose one.
S.custom = function(c)
  local global = c.plugins and #c.plugins > 0
  -- Route names label metrics: two routes with one name would share their counts.
  -- An unnamed route is route#i, which only a given name of that form can clash with: when
  -- no route is given one, the unnamed ones are not named at all (100k routes, no strings).
  local names, auto = {}, false
  for _, r in ipairs(c.routes) do
    if type(r.name) == "string" and r.name:sub(1, 6) == "route#" then auto = true break end
  end
  for i, r in ipairs(c.routes) do
    local name = r.name or (auto and ("route#" .. i))
    if name then
      if names[name] then
        return nil, format("route name %q is already used by routes[%d]", name, names[name]),
          format("routes[%d].name", i)
      end
      names[name] = i
    end
  end
  for i, r in ipairs(c.routes) do
    if r.upstream == nil and r.handler == nil and not global
       and not (r.plugins and #r.plugins > 0) then
      return nil, "required (or a handler or plugins that choose one)",
        format("routes[%d].upstream", i)
    end
  end
  return true
end

local M = { schema = S }

-- GET /config finds plugin entries by this field (lua/luaproxy/admin.lua).
M.PLUGIN_ENTRY = plugin_entry

-- The validation context of a config table: the upstream names it defines, so fields of
-- type upstream (here and in plugin schemas) are checked, and its cache zones' names
-- (`cache_zones`), which the cache plugin's `zone` must be one of.
-- Upstreams (or zones) that are not a table leave those names unchecked: that error is
-- reported instead.
function M.context(raw)
  local ctx = {}
  local ups = type(raw) == "table" and raw.upstreams
  if ups == nil or type(ups) == "table" then
    ctx.upstreams = {}
    for k in pairs(ups or {}) do ctx.upstreams[k] = true end
  end
  local cache = type(raw) == "table" and raw.cache
  local zones = type(cache) == "table" and cache.zones
  if cache == nil or zones == nil or type(zones) == "table" then
    ctx.cache_zones = {}
    for k in pairs(zones or {}) do ctx.cache_zones[k] = true end
  end
  ctx.cache_warnings = M.cache_zone_sharing(raw)
  if type(zones) == "table" then
    -- A disk tier smaller than the largest object the config allows: writing one such
    -- response evicts every file (its own too: engine/cache_store.c evict_over). A warning,
    -- not a refusal: a small disk of small objects works (test_cache_disk.py has one).
    local names = {}
    for name in pairs(zones) do names[#names + 1] = name end
    table.sort(names, function(a, b) return tostring(a) < tostring(b) end)
    for _, name in ipairs(names) do
      local z = zones[name]
      local disk = type(z) == "table" and z.disk
      local size = type(disk) == "table" and size_coerce(disk.size)
      local mos = type(z) == "table" and size_coerce(z.max_object_size)
      if mos == nil and type(z) == "table" then -- the default: 8m, or memory when smaller
        local mem = size_coerce(z.memory)
        mos = type(mem) == "number" and math.min(8388608, mem) or nil
      end
      if type(size) == "number" and type(mos) == "number" and size < mos then
        ctx.cache_warnings[#ctx.cache_warnings + 1] = format("cache zone %q: disk.size %s is "
          .. "smaller than max_object_size %s: a response larger than the disk tier, written "
          .. "to it, evicts every file (its own too); make max_object_size at most disk.size",
          tostring(name), size_text(size), size_text(mos))
      end
    end
  end
  return ctx
end

-- Plugins that choose a request's upstream (req:set_upstream) among several.
local UPSTREAM_CHOOSERS = { ab = true, router = true }

-- Routes sharing a cache zone whose requests may go to different upstreams, one of them
-- with the default key (method, scheme, host:port, target: no upstream in it), serve each
-- other's entries (a header-matched canary route to `beta` and `/` to `stable`). The key
-- format stays (purge by key and disk entries depend on it): the cache plugin adds these
-- texts to the load's warnings (plugins/cache.lua check_zone). Returns a list of texts.
-- Only a config's own cache_key functions are seen: a plugin's req:set_cache_key() is not.
function M.cache_zone_sharing(raw)
  local out = {}
  if type(raw) ~= "table" or type(raw.routes) ~= "table" then return out end
  local function entries(list, found)
    if type(list) ~= "table" then return found end
    for _, e in ipairs(list) do
      if type(e) == "table" and e.name == "cache" and type(e.zone) == "string" then
        found.cache[#found.cache + 1] = e
      elseif type(e) == "table" and UPSTREAM_CHOOSERS[e.name] then
        found.chooser = found.chooser or e.name
      end
    end
    return found
  end
  local global = entries(raw.plugins, { cache = {} })
  local zones, order = {}, {}
  for i, r in ipairs(raw.routes) do
    if type(r) == "table" then
      local own = entries(r.plugins, { cache = {}, chooser = global.chooser })
      local list = {}
      for _, e in ipairs(global.cache) do list[#list + 1] = e end
      for _, e in ipairs(own.cache) do list[#list + 1] = e end
      for _, e in ipairs(list) do
        local z = zones[e.zone]
        if not z then
          z = { uses = {}, ups = {}, nups = 0 }
          zones[e.zone] = z
          order[#order + 1] = e.zone
        end
        local name = type(r.name) == "string" and format("routes[%d] (%q)", i, r.name)
          or format("routes[%d]", i)
        local up = type(r.upstream) == "string" and r.upstream or nil
        z.uses[#z.uses + 1] = { route = name, upstream = up, chooser = own.chooser,
          default_key = e.cache_key == nil }
        if own.chooser then z.chooser = true end
        if up and not z.ups[up] then z.ups[up], z.nups = true, z.nups + 1 end
      end
    end
  end
  for _, zname in ipairs(order) do
    local z = zones[zname]
    local defaults, where = {}, {}
    for _, u in ipairs(z.uses) do
      if u.default_key then defaults[#defaults + 1] = u.route end
      local to = u.upstream and format("upstream %q", u.upstream) or "no upstream"
      if u.chooser then to = to .. format(", or one plugin %q chooses", u.chooser) end
      where[#where + 1] = u.route .. " -> " .. to
    end
    if #defaults > 0 and (z.nups > 1 or z.chooser) then
      out[#out + 1] = format("cache zone %q is shared by routes whose requests go to different "
        .. "upstreams (%s), and %s %s the default cache key, which does not name the upstream: "
        .. "their responses would be served to each other's requests. Give them a cache_key "
        .. "that includes the upstream (req:upstream_name()), or one zone per upstream "
        .. "(docs/plugins/cache.md, \"Routes sharing a zone\")", zname, concat(where, "; "),
        concat(defaults, ", "), #defaults > 1 and "use" or "uses")
    end
  end
  return out
end

return M
