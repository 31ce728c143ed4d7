---@meta proxy.test
-- LuaLS annotations for the proxy.test double (lua/proxy/test.lua, docs/testing-plugins.md).
-- spec/luaproxy/api_types_spec.lua checks them against the double, as the integration test
-- test_api_types.py checks lua/types/proxy.lua against the engine.

---What T.run / T.run_chain return.
---@class proxy.test.Result
---@field status integer
---@field body string
---@field headers table<string, string|string[]> the response headers sent to the client
---@field request_headers table<string, string|string[]> the request headers sent upstream
---@field uri string the path and query sent upstream
---@field upstream string|nil
---@field responded boolean a plugin answered locally
---@field req proxy.test.Request

---A request of the double: the engine's request handle plus spec helpers.
---@class proxy.test.Request : proxy.Request
local TestRequest = {}
---Moves the request to another phase (T.phase does it for you).
---@param phase proxy.PhaseName
function TestRequest:set_phase(phase) end
---@return table<string, any> fields what req:log_field set
function TestRequest:log_fields() end

---The request double: `local T = require "proxy.test"` before requiring the plugin.
---@class proxy.test
---@field proxy proxy the fake proxy module (also the global `proxy` while specs run)
---@field logs {level: string, message: string, plugin: string?}[]
---@field config_warnings string[] what compile(conf, where, warn) said through warn, in order
---@field upstreams table<string, table>
---@field http_requests table[] the calls proxy.http made
---@field redis table fake Redis reply helpers
---@field metrics_max_series integer
local T = {}
---One request through a plugin: request, upstream, the simulated answer, response, body, log.
---@param plugin proxy.Plugin
---@param conf_overrides? table
---@param req_spec? table|proxy.test.Request
---@param resp_spec? table
---@return proxy.test.Result
function T.run(plugin, conf_overrides, req_spec, resp_spec) end
---Several plugins in priority order: `{ { plugin, conf }, ... }`.
---@param entries table[]
---@param req_spec? table|proxy.test.Request
---@param resp_spec? table
---@return proxy.test.Result
function T.run_chain(entries, req_spec, resp_spec) end
---A request double in the request phase.
---@param spec? table
---@return proxy.test.Request
function T.request(spec) end
---Gives `req` the upstream's answer and moves it to the response phase.
---@param req proxy.test.Request
---@param spec? table
function T.response(req, spec) end
---The conf the engine would hand the phases: validated, defaults, compiled.
---@param plugin proxy.Plugin
---@param overrides? table
---@param path? string
---@return table conf
function T.conf(plugin, overrides, path) end
---Runs one phase of a plugin; true when it answered locally.
---@param plugin proxy.Plugin
---@param phase proxy.PhaseName
---@param req proxy.test.Request
---@param conf table
---@param chunk? string
---@param eof? boolean
---@return boolean responded
---@return any result
function T.phase(plugin, phase, req, conf, chunk, eof) end
---Runs any function like a phase (coroutine; respond ends it).
---@param fn function
---@param ... any
---@return boolean responded
---@return any result
function T.call(fn, ...) end
---Ends the request: runs what the engine runs when it is over (sockets closed).
---@param req proxy.test.Request
function T.finish(req) end
---Forgets logs, timers, dicts, mocks, metric values: call it in before_each.
function T.reset() end
---@return number now the fake clock
function T.now() end
---Advances the fake clock, running due timers.
---@param seconds number
function T.advance(seconds) end
---Ends the generation: proxy.exiting() turns true, timers run premature.
function T.end_generation() end
---Runs the threads proxy.spawn started.
function T.run_spawned() end
---@param level? string
---@return string[] messages
function T.log_lines(level) end
---Declares an upstream's targets for proxy.upstream(name).
---@param name string
---@param targets string[]|table
function T.upstream_targets(name, targets) end
---Declares shared dicts: `{ name = "1m" }`.
---@param sizes table<string, string|integer>
function T.shared_dicts(sizes) end
---A scripted TCP peer for proxy.tcp().
---@param host string
---@param port integer
---@param fn function|"error"|"timeout"
---@param opts? table
---@return table server
function T.tcp_peer(host, port, fn, opts) end
---A fake Redis server for proxy.redis: `{ host =, port =, password =, user =, databases = }`.
---@param opts? table
---@return table server
function T.redis_server(opts) end
---Answers proxy.http calls to `url` (exact, else a Lua pattern).
---@param url string
---@param answer table|fun(req: table): table|nil, string?
function T.http_mock(url, answer) end
---Forgets the http mocks and calls.
function T.http_reset() end
---A metric's value: a number, or for histograms `{ buckets =, count =, sum = }`.
---@param name string
---@param labels? table<string, string>
---@return number|table
function T.metric(name, labels) end
---@param name string
---@return number
function T.metric_overflow(name) end
---Declares the response cache's zones for proxy.cache (empty ones): `{ name = {} }`.
---@param zones table<string, table>
function T.cache_zones(zones) end
---A zone's state for assertions: entries, counts, locks.
---@param name string
---@return table|nil
function T.cache_zone(name) end
---The request's response is through: its fill is stored with `body`, its lock released.
---@param req proxy.test.Request
---@param body string
function T.cache_finish(req, body) end
---Releases the request's cache lock without storing (a fill dropped).
---@param req proxy.test.Request
function T.cache_release(req) end
