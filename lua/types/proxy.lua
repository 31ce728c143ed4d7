---@meta proxy
-- LuaLS annotations for luaproxy's Lua API (docs/lua-api.md): the `proxy` module, the request
-- handle, shared dicts, timers, the tcp/http/redis clients, proxy.re, proxy.router,
-- proxy.metrics, the proxy.test double and the plugin table. Point LuaLS at this directory
-- (`.luarc.json`: `"workspace.library": ["<runtime>/lua/types"]`, which `luaproxy new plugin`
-- writes); `luaproxy check` reads the same file for the names it accepts.
--
-- Never loaded by the proxy: it only declares. A test (tests/integration/test_api_types.py)
-- walks what the engine exports to Lua at run time and fails when a function here does not
-- exist there, or one there has no annotation here. Conventions the test relies on: each
-- class is `---@class NAME` followed by `local VAR = {}` or `NAME = {}`, and its functions are
-- `function VAR.f(...) end` / `function VAR:m(...) end`, or `---@field f fun(...)` lines.

---@alias proxy.PhaseName "request"|"upstream"|"response"|"response_body"|"log"

-------------------------------------------------------------------------------------------
-- The plugin table
-------------------------------------------------------------------------------------------

---@class proxy.SchemaField
---@field type "string"|"number"|"integer"|"boolean"|"array"|"map"|"record"|"function"|"any"|"duration"|"address"|"upstream"|"regex"
---@field required? boolean
---@field default? any
---@field one_of? any[]
---@field min? number
---@field max? number
---@field pattern? string Lua pattern a string must match
---@field description? string shown in docs; a field without one is warned about at load
---@field elements? proxy.SchemaField for arrays
---@field keys? proxy.SchemaField for maps
---@field values? proxy.SchemaField for maps
---@field fields? table<string, proxy.SchemaField> for records
---@field custom? fun(value: any, ctx: table): true|nil, string?, string?
---@field coerce? fun(value: any): any
---@field secret? boolean redacted by GET /config
---@field options? string regex options (type "regex")

---@class proxy.PluginSchema
---@field fields table<string, proxy.SchemaField>
---@field custom? fun(conf: table, ctx: table): true|nil, string?

---A plugin module returns this table (docs/plugins.md).
---@class proxy.Plugin
---@field name string the name configs use; tags the plugin's log lines
---@field priority number higher runs first, in every phase
---@field version? string
---@field schema proxy.PluginSchema
---@field compile? fun(conf: table, where: string): table|nil, string? once per config load
---@field init_worker? fun(conf: table) once per worker per generation
---@field request? fun(req: proxy.Request, conf: table)
---@field upstream? fun(req: proxy.Request, conf: table)
---@field response? fun(req: proxy.Request, conf: table)
---@field response_body? fun(req: proxy.Request, chunk: string, eof: boolean, conf: table): string?
---@field log? fun(req: proxy.Request, conf: table)

-------------------------------------------------------------------------------------------
-- The request handle
-------------------------------------------------------------------------------------------

---The request handle given to every phase and handler (docs/lua-api.md "The request handle").
---@class proxy.Request
---@field ctx table a table per request shared by all plugins and the handler
local Request = {}

---@return string method "GET"
function Request:method() end
---@return string path without the query
function Request:path() end
---@return string uri path with the query, as it will be sent
function Request:uri() end
---@param name string
---@return string|nil value first value of query argument `name`, percent-decoded
function Request:query(name) end
---@return table<string, string|string[]|true> args built per call
function Request:args() end
---@param name string case-insensitive
---@return string|nil value first value of the request header
function Request:header(name) end
---@return table<string, string|string[]> headers lower-case name → value (list when repeated)
function Request:headers() end
---@return integer
function Request:header_count() end
---@param names string[] filled with the lower-case names, in the request's order
---@param values string[] filled with the values
---@return integer n how many lines were filled in
function Request:header_list(names, values) end
---@return string host without port, lower-case ("" when absent)
function Request:host() end
---@return "http"|"https"
function Request:scheme() end
---@return number seconds when the first byte arrived (proxy.now()'s clock)
function Request:start_time() end
---@return string ip the client's address (after real-ip rules)
function Request:client_ip() end
---@return string ip the TCP peer's own address
function Request:peer_ip() end
---@return number version 1.1 or 1.0
function Request:http_version() end
---@param name "client_ip"|"host"|"method"|"path"|"uri"|"scheme"|"request_id"|"upstream"|"status"|"ssl_protocol"|"ssl_cipher"|"ssl_server_name"|"peer_ip"|"realip_remote_addr"
---@return string|nil
function Request:var(name) end
---@return proxy.PhaseName
function Request:phase() end
---@param name string a `:name`/`*name` segment or named regex group of the matched route
---@return string|nil
function Request:param(name) end
---@return string|nil
function Request:upstream_name() end
---@return {protocol: string, cipher: string, sni: string?, alpn: string?, resumed: boolean, client_verified: boolean, client_subject: string?}|nil
function Request:tls() end
---Phases: request, upstream. `value` nil clears.
---@param name string
---@param value string|number|(string|number)[]|nil
function Request:set_header(name, value) end
---Phases: request, upstream.
---@param name string
---@param value string|number|(string|number)[]
function Request:add_header(name, value) end
---Phases: request, upstream.
---@param name string
function Request:clear_header(name) end
---Phases: request, upstream. Path (and optional ?query) sent upstream; starts with "/".
---@param uri string
function Request:set_path(uri) end
---Phases: request, upstream. The query sent upstream, without "?" ("" removes it); the path
---and the route's strip_prefix are kept.
---@param query string
function Request:set_query(query) end
---Phases: request, upstream. Raises for an unknown upstream.
---@param name string
function Request:set_upstream(name) end
---Phases: request, upstream. Bypasses the balancer.
---@param host string
---@param port integer
function Request:set_target(host, port) end
---Phases: request, upstream. The key of the `hash` balancing policy.
---@param key string
function Request:set_hash_key(key) end
---Phase: request. 0: no limit.
---@param bytes integer
function Request:set_max_body_size(bytes) end
---Every phase: a member of this request's access log line.
---@param name string 1-64 letters, digits or _
---@param value string|number|boolean|nil
---@return true|nil ok
---@return string? err
function Request:log_field(name, value) end
---Phase: upstream, response. On a retry, why the last try failed; nil on the first try. In
---the response phase: why a try failed (the proxy's own 502/504 follows a connect, timeout or reset).
---@return "connect"|"timeout"|"reset"|"status"|nil kind
---@return integer? status
---@return string? address
function Request:last_failure() end
---Phase: request. Yields until the body is read.
---@param max_bytes? integer
---@return string|nil body
---@return string? err "too large"
function Request:body(max_bytes) end
---Phase: request. Keeps a copy of the request body as it streams upstream, up to max_bytes.
---@param max_bytes integer
function Request:tee_body(max_bytes) end
---Phase: log. The copy req:tee_body kept.
---@return string|nil body
---@return "too large"|"incomplete"|"not asked"|"out of memory"|nil why
function Request:teed_body() end
---Phase: request. Sends `body` upstream in place of the client's body.
---@param body string
function Request:set_body(body) end
---Phase: response. Sends the response body compressed by the engine (the compression
---plugin decides). false when the body is known to be shorter than min_length.
---@param coding "gzip"|"br"
---@param level? integer
---@param min_length? integer
---@return boolean
function Request:compress(coding, level, min_length) end
---Phase: request, upstream. The response cache's key for this request (docs/plugins/cache.md).
---@param key string
function Request:set_cache_key(key) end
---Phase: request, upstream. The cache plugin does not look this request up.
function Request:cache_bypass() end
---Phase: response. The cache plugin does not store this response.
function Request:cache_no_store() end
---Phase: response. This response's freshness for the cache plugin, instead of its headers'.
---@param seconds number
function Request:cache_ttl(seconds) end
---Every phase. What the four calls above set.
---@return {key: string?, bypass: boolean?, no_store: boolean?, ttl: number?}
function Request:cache_options() end
---Phases: request, upstream. Answers locally; code after it does not run.
---@param status integer
---@param body? string
---@param headers? table<string, string|number|(string|number)[]>
function Request:respond(status, body, headers) end
---Phases: request, upstream. 301/302/303/307/308 (default 302).
---@param url string
---@param status? integer
function Request:redirect(url, status) end
---Phases: response, response_body, log.
---@return integer
function Request:status() end
---Phase: response.
---@param code integer
function Request:set_status(code) end
---Phases: response, response_body, log.
---@param name string
---@return string|nil
function Request:resp_header(name) end
---Phases: response, response_body, log.
---@return table<string, string|string[]>
function Request:resp_headers() end
---Every phase but init_worker. The client's trailer fields (an HTTP/2 client's trailers),
---empty until its body ended (always complete in log).
---@return table<string, string|string[]>
function Request:trailers() end
---Phases: response_body (at eof), log. The upstream's trailer fields (HTTP/2 trailers,
---chunked trailers; grpc-status), empty when none came.
---@return table<string, string|string[]>
function Request:resp_trailers() end
---Phase: response. `value` nil clears.
---@param name string
---@param value string|number|(string|number)[]|nil
function Request:set_resp_header(name, value) end
---Phase: response.
---@param name string
---@param value string|number|(string|number)[]
function Request:add_resp_header(name, value) end
---Phase: response.
---@param name string
function Request:clear_resp_header(name) end
---Phases: response, response_body, log. The last try's target.
---@return string|nil address "127.0.0.1:9001"
function Request:upstream_addr() end
---@return string|nil trace_id 32 hex digits; nil when tracing is off
function Request:trace_id() end
---@return string|nil span_id 16 hex digits
function Request:span_id() end
---@return string|nil
function Request:parent_span_id() end
---@return boolean|nil
function Request:trace_sampled() end

-------------------------------------------------------------------------------------------
-- The proxy module
-------------------------------------------------------------------------------------------

---The `proxy` module: a global in configs, scripts and plugins; `require "proxy"` returns it.
---@class proxy
---@field version string
---@field config table the loaded config, validated, defaults filled in (read-only use)
---@field shared table<string, proxy.SharedDict> the config's shared dicts by name
---@field null userdata the nil-bulk sentinel (cjson.null)
proxy = {}

---Yields the current phase, timer or thread for `seconds`.
---@param seconds number
function proxy.sleep(seconds) end
---@return number seconds since the epoch (microsecond resolution)
function proxy.now() end
---@return number seconds on a monotonic clock
function proxy.monotonic() end
---@return integer id 1..N
function proxy.worker_id() end
---The upstream `name` of this generation in this worker; raises for an unknown name.
---@param name string
---@return proxy.Upstream
function proxy.upstream(name) end
---Runs `fn(...)` in a detached light thread.
---@param fn function
---@param ... any
---@return true|nil ok
---@return string? err
function proxy.spawn(fn, ...) end
---@return boolean exiting true once this generation is ending
function proxy.exiting() end
---A new non-blocking TCP/TLS socket.
---@return proxy.TcpSocket
function proxy.tcp() end

---@class proxy.log
proxy.log = {}
---@param ... any joined by spaces
function proxy.log.err(...) end
---Same as proxy.log.err.
---@param ... any
function proxy.log.error(...) end
---@param ... any
function proxy.log.warn(...) end
---@param ... any
function proxy.log.notice(...) end
---@param ... any
function proxy.log.info(...) end
---@param ... any
function proxy.log.debug(...) end

---lua-cjson.
---@class proxy.json
---@field null lightuserdata
proxy.json = {}
---@param value any
---@return string
function proxy.json.encode(value) end
---@param text string
---@return any
function proxy.json.decode(text) end
---@param convert? boolean|integer
---@param ratio? integer
---@param safe? integer
function proxy.json.encode_sparse_array(convert, ratio, safe) end
---@param depth? integer
function proxy.json.encode_max_depth(depth) end
---@param depth? integer
function proxy.json.decode_max_depth(depth) end
---@param precision? integer
function proxy.json.encode_number_precision(precision) end
---@param enabled? boolean
function proxy.json.encode_keep_buffer(enabled) end
---@param setting? boolean|"on"|"off"|"null"
function proxy.json.encode_invalid_numbers(setting) end
---@param setting? boolean|"on"|"off"|"null"
function proxy.json.decode_invalid_numbers(setting) end
---@return proxy.json a new cjson instance with its own settings
function proxy.json.new() end

---The response cache's zones (docs/plugins/cache.md).
---@class proxy.cache
proxy.cache = {}
---Removes every variant stored under `key` in zone `zone`; `{ prefix = p }` every key
---starting with p, `{ all = true }` everything. Raises for an undeclared zone.
---@param zone string
---@param key string|{prefix: string}|{all: boolean}
---@return integer purged
function proxy.cache.purge(zone, key) end
---The store's zone as the cache plugin uses it (lua/luaproxy/cache.lua), nil when undeclared.
---@param name string
---@return table|nil
function proxy.cache.zone(name) end

---@class proxy.timer
proxy.timer = {}
---Runs `fn(premature, ...)` once after `delay` seconds.
---@param delay number
---@param fn fun(premature: boolean, ...)
---@param ... any
---@return proxy.Timer|nil handle
---@return string? err
function proxy.timer.at(delay, fn, ...) end
---Runs `fn(premature, ...)` every `interval` seconds (runs never overlap).
---@param interval number
---@param fn fun(premature: boolean, ...)
---@param ... any
---@return proxy.Timer|nil handle
---@return string? err
function proxy.timer.every(interval, fn, ...) end
---@return integer
function proxy.timer.pending_count() end
---@return integer
function proxy.timer.running_count() end

---@class proxy.Timer
---@field id integer
local Timer = {}
---@return true|nil ok
---@return string? err
function Timer:cancel() end

---@class proxy.Upstream
---@field name string
local Upstream = {}
---@param addr string "ip:port"
---@param weight? integer 1-10000
---@return true|nil ok
---@return string? err
function Upstream:add_target(addr, weight) end
---@param addr string
---@return true|nil ok
---@return string? err
function Upstream:remove_target(addr) end
---@param addr string
---@param weight integer
---@return true|nil ok
---@return string? err
function Upstream:set_weight(addr, weight) end
---@return {address: string, weight: integer, state: string}[]
function Upstream:targets() end

-------------------------------------------------------------------------------------------
-- Shared dicts
-------------------------------------------------------------------------------------------

---A shared dict: `proxy.shared.NAME` (all workers).
---@class proxy.SharedDict
---@field name string
local SharedDict = {}
---@param key string
---@return any value
---@return integer|string? flags_or_err
function SharedDict:get(key) end
---@param key string
---@return any value
---@return integer? flags
---@return boolean? stale
function SharedDict:get_stale(key) end
---@param key string
---@param value any nil deletes
---@param exptime? number
---@param flags? integer
---@return boolean ok
---@return string? err
---@return boolean? forcible
function SharedDict:set(key, value, exptime, flags) end
---@param key string
---@param value any
---@param exptime? number
---@param flags? integer
---@return boolean ok
---@return string? err
---@return boolean? forcible
function SharedDict:safe_set(key, value, exptime, flags) end
---@param key string
---@param value any
---@param exptime? number
---@param flags? integer
---@return boolean ok
---@return string? err
---@return boolean? forcible
function SharedDict:add(key, value, exptime, flags) end
---@param key string
---@param value any
---@param exptime? number
---@param flags? integer
---@return boolean ok
---@return string? err
---@return boolean? forcible
function SharedDict:safe_add(key, value, exptime, flags) end
---@param key string
---@param value any
---@param exptime? number
---@param flags? integer
---@return boolean ok
---@return string? err
---@return boolean? forcible
function SharedDict:replace(key, value, exptime, flags) end
---@param key string
---@return true
function SharedDict:delete(key) end
---@param key string
---@param step number
---@param init? number
---@param init_ttl? number
---@return number|nil value
---@return string|boolean|nil err_or_forcible
function SharedDict:incr(key, step, init, init_ttl) end
---@param key string
---@return number|nil ttl
---@return string? err
function SharedDict:ttl(key) end
---A rate-limit decision, atomic for every worker.
---@param key string
---@param rate number
---@param period? number
---@param burst? number
---@param cost? number
---@return boolean|nil allowed
---@return number|string remaining_or_err
---@return number? retry_after
---@return number? reset_after
function SharedDict:gcra(key, rate, period, burst, cost) end
---@param key string
---@param exptime number
---@return true|nil ok
---@return string? err
function SharedDict:expire(key, exptime) end
function SharedDict:flush_all() end
---@param max? integer
---@return integer freed
function SharedDict:flush_expired(max) end
---@param max? integer
---@return string[]
function SharedDict:get_keys(max) end
---@param key string
---@param value string|number
---@return integer|nil length
---@return string? err
function SharedDict:lpush(key, value) end
---@param key string
---@param value string|number
---@return integer|nil length
---@return string? err
function SharedDict:rpush(key, value) end
---@param key string
---@return string|number|nil value
---@return string? err
function SharedDict:lpop(key) end
---@param key string
---@return string|number|nil value
---@return string? err
function SharedDict:rpop(key) end
---@param key string
---@return integer|nil length
---@return string? err
function SharedDict:llen(key) end
---@return integer bytes
function SharedDict:capacity() end
---@return integer bytes
function SharedDict:free_space() end

-------------------------------------------------------------------------------------------
-- TCP sockets
-------------------------------------------------------------------------------------------

---@class proxy.TcpSocket
local TcpSocket = {}
---@param ms integer
function TcpSocket:settimeout(ms) end
---@param connect_ms? integer
---@param send_ms? integer
---@param read_ms? integer
function TcpSocket:settimeouts(connect_ms, send_ms, read_ms) end
---@param host string
---@param port integer
---@param opts? {pool: string?, pool_size: integer?}
---@return 1|nil ok
---@return string? err
function TcpSocket:connect(host, port, opts) end
---@param reused_session? any
---@param server_name? string
---@param ssl_verify? boolean
---@return any session
---@return string? err
function TcpSocket:sslhandshake(reused_session, server_name, ssl_verify) end
---@param data string|number|table
---@return integer|nil bytes
---@return string? err
function TcpSocket:send(data) end
---@param pattern? integer|"*l"|"*a"
---@return string|nil data
---@return string? err
---@return string? partial
function TcpSocket:receive(pattern) end
---@param max integer
---@return string|nil data
---@return string? err
function TcpSocket:receiveany(max) end
---@param pattern string
---@param opts? {inclusive: boolean?}
---@return fun(size?: integer): string|nil, string?, string?
function TcpSocket:receiveuntil(pattern, opts) end
---@return 1|nil ok
---@return string? err
function TcpSocket:close() end
---@param idle_ms? integer
---@param pool_size? integer
---@return 1|nil ok
---@return string? err
function TcpSocket:setkeepalive(idle_ms, pool_size) end
---@return integer|nil times
---@return string? err
function TcpSocket:getreusedtimes() end

-------------------------------------------------------------------------------------------
-- proxy.http
-------------------------------------------------------------------------------------------

---@class proxy.http.RequestOptions
---@field method? string
---@field url string
---@field query? string|table
---@field headers? table<string, string|number|(string|number)[]>
---@field body? string
---@field timeout? number seconds
---@field ssl_verify? boolean
---@field server_name? string
---@field keepalive? boolean|{idle_timeout: number?, pool_size: integer?}
---@field max_body? integer
---@field stream? boolean

---@class proxy.http
proxy.http = {}
---@param opts proxy.http.RequestOptions
---@return proxy.http.Response|nil res
---@return string? err
function proxy.http.request(opts) end
---@param opts proxy.http.RequestOptions
---@return proxy.http.Response|nil res
---@return string? err
function proxy.http.request_stream(opts) end
---@param url string
---@return {scheme: string, host: string, port: integer, path: string}|nil parts
---@return string? err
function proxy.http.parse_url(url) end

---@class proxy.http.Response
---@field status integer
---@field headers table<string, string|string[]>
---@field body string|nil nil for a stream
local HttpResponse = {}
---@return fun(max?: integer): string|nil, string?
function HttpResponse:body_reader() end
---@return string|nil body
---@return string? err
function HttpResponse:read_body() end
function HttpResponse:close() end

-------------------------------------------------------------------------------------------
-- proxy.redis
-------------------------------------------------------------------------------------------

---@class proxy.redis.ConnectOptions
---@field host? string
---@field port? integer
---@field password? string
---@field user? string
---@field db? integer
---@field timeout? integer ms
---@field connect_timeout? integer
---@field send_timeout? integer
---@field read_timeout? integer
---@field pool? string
---@field pool_size? integer
---@field ssl? boolean
---@field ssl_verify? boolean
---@field server_name? string

---@class proxy.redis
---@field null userdata
proxy.redis = {}
---@return proxy.redis.Client|nil client
---@return string? err
function proxy.redis.new() end
---@param opts proxy.redis.ConnectOptions
---@return proxy.redis.Client|nil client
---@return string? err
function proxy.redis.connect(opts) end
---@param t any[]
---@return table<string, any>
function proxy.redis.array_to_hash(t) end

---A Redis client. Every Redis command is a method too (`red:get(k)`, `red:hgetall(k)`...).
---@class proxy.redis.Client
---@field [string] fun(self: proxy.redis.Client, ...: any): any, string?
---@field pipeline fun(self: proxy.redis.Client) same as init_pipeline
---@field commit fun(self: proxy.redis.Client): table|nil, string? same as commit_pipeline
local RedisClient = {}
---@param ms integer
---@return true|nil ok
---@return string? err
function RedisClient:set_timeout(ms) end
---@param connect_ms integer
---@param send_ms integer
---@param read_ms integer
---@return true|nil ok
---@return string? err
function RedisClient:set_timeouts(connect_ms, send_ms, read_ms) end
---@param host string
---@param port integer
---@param opts? {pool: string?, pool_size: integer?, ssl: boolean?, ssl_verify: boolean?, server_name: string?}
---@return true|nil ok
---@return string? err
function RedisClient:connect(host, port, opts) end
---@return integer|nil times
---@return string? err
function RedisClient:get_reused_times() end
---@param idle_ms? integer
---@param pool_size? integer
---@return 1|nil ok
---@return string? err
function RedisClient:set_keepalive(idle_ms, pool_size) end
---@return 1|nil ok
---@return string? err
function RedisClient:close() end
function RedisClient:init_pipeline() end
function RedisClient:cancel_pipeline() end
---@return table|nil replies
---@return string? err
function RedisClient:commit_pipeline() end
---@return any reply
---@return string? err
function RedisClient:read_reply() end
---@param key string
---@param ... any field, value pairs or one table
---@return any reply
---@return string? err
function RedisClient:hmset(key, ...) end
---@param t any[]
---@return table<string, any>
function RedisClient:array_to_hash(t) end

-------------------------------------------------------------------------------------------
-- proxy.re
-------------------------------------------------------------------------------------------

---PCRE2 regular expressions, shaped like ngx.re.
---@class proxy.re
---@field jit_available boolean
proxy.re = {}
---@param subject string
---@param regex string
---@param options? string
---@param ctx? {pos: integer?}
---@param res_table? table
---@return table|nil captures
---@return string? err
function proxy.re.match(subject, regex, options, ctx, res_table) end
---@param subject string
---@param regex string
---@param options? string
---@param ctx? {pos: integer?}
---@param nth? integer
---@return integer|nil from
---@return integer|nil to
---@return string? err
function proxy.re.find(subject, regex, options, ctx, nth) end
---@param subject string
---@param regex string
---@param options? string
---@return (fun(): table|nil, string?)|nil iterator
---@return string? err
function proxy.re.gmatch(subject, regex, options) end
---@param subject string
---@param regex string
---@param replace string|fun(m: table): string
---@param options? string
---@return string|nil newstr
---@return integer|nil n
---@return string? err
function proxy.re.sub(subject, regex, replace, options) end
---@param subject string
---@param regex string
---@param replace string|fun(m: table): string
---@param options? string
---@return string|nil newstr
---@return integer|nil n
---@return string? err
function proxy.re.gsub(subject, regex, replace, options) end
---Compiles (through the cache) without matching.
---@param regex string
---@param options? string
---@return any|nil compiled
---@return string? err
function proxy.re.compile(regex, options) end
---@return {size: integer, max: integer, compiles: integer, evictions: integer, jit: boolean}
function proxy.re.cache_stats() end
---@param template string a `sub`/`gsub` replacement template
---@param compiled any
---@return any
function proxy.re.compile_template(template, compiled) end

-------------------------------------------------------------------------------------------
-- proxy.router
-------------------------------------------------------------------------------------------

---@class proxy.router
proxy.router = {}
---Compiles routes into the engine's router.
---@param routes table[]
---@return proxy.Router|nil router
---@return string? err
function proxy.router.new(routes) end

---@class proxy.Router
---@field routes table[]
local Router = {}
---@param req proxy.Request
---@return table|nil route
---@return table<string, string>? captures
---@return integer? index
function Router:match(req) end

-------------------------------------------------------------------------------------------
-- proxy.metrics (created in init_worker)
-------------------------------------------------------------------------------------------

---@class proxy.metrics
proxy.metrics = {}
---@param name string ends in _total
---@param help string
---@param labels? string[]
---@return proxy.metrics.Counter
function proxy.metrics.counter(name, help, labels) end
---@param name string
---@param help string
---@param labels? string[]
---@return proxy.metrics.Gauge
function proxy.metrics.gauge(name, help, labels) end
---@param name string
---@param help string
---@param labels? string[]
---@param buckets? number[]
---@return proxy.metrics.Histogram
function proxy.metrics.histogram(name, help, labels, buckets) end

---@class proxy.metrics.Metric
---@field name string
local Metric = {}
---The cell of these label values (internal to the metric types; use inc/set/observe).
---@param ... string label values
---@return any
function Metric:cell(...) end

---@class proxy.metrics.Counter : proxy.metrics.Metric
local Counter = {}
---@param v? number >= 0, default 1
---@param ... string label values
function Counter:inc(v, ...) end

---@class proxy.metrics.Gauge : proxy.metrics.Metric
local Gauge = {}
---@param v number
---@param ... string label values
function Gauge:set(v, ...) end
---@param v? number
---@param ... string
function Gauge:inc(v, ...) end
---@param v? number
---@param ... string
function Gauge:dec(v, ...) end

---@class proxy.metrics.Histogram : proxy.metrics.Metric
local Histogram = {}
---@param v number
---@param ... string label values
function Histogram:observe(v, ...) end
