-- proxy.metrics: plugins' own counters, gauges and histograms (docs/metrics.md).
--
-- One copy of the API for the engine (M.api(engine_backend())) and the proxy.test double
-- (lua/proxy/test.lua gives it a backend of Lua tables). A backend:
--   new(kind, name, help, labels, bounds) -> id, or nil and an error
--   cells(id)      -> the running worker's cells, indexed from 0 (a cdata double* in the
--                     engine: an update JIT-compiles to a load, an add and a store)
--   series(id, key)-> index of the series with label values `key` (joined by "\0")
--   in_init()      -> true while init_worker runs
--   max_series     -> series per metric before the overflow one
-- Series are found through a per-VM cache (label value -> cell offset); the backend is
-- asked only the first time a VM sees a label set.
local type, tostring, select, error, format, concat, ipairs, setmetatable =
  type, tostring, select, error, string.format, table.concat, ipairs, setmetatable

local M = {}

M.DEFAULT_BUCKETS = { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10 }
local KINDS = { counter = 0, gauge = 1, histogram = 2 }
M.KINDS = KINDS

-- Prometheus names: metric [a-zA-Z_:][a-zA-Z0-9_:]*, label [a-zA-Z_][a-zA-Z0-9_]* and not
-- starting with "__" (reserved).
local function valid_name(s) return type(s) == "string" and s:find("^[%a_:][%w_:]*$") ~= nil end
local function valid_label(s)
  return type(s) == "string" and s:find("^[%a_][%w_]*$") ~= nil and s:sub(1, 2) ~= "__"
end
M.valid_name, M.valid_label = valid_name, valid_label

-- Checks a declaration; raises at the plugin's line (level 3: here <- constructor <- caller).
function M.check(kind, name, help, labels, buckets)
  local what = "proxy.metrics." .. kind
  if not valid_name(name) then
    error(format("%s: invalid metric name %s (Prometheus: [a-zA-Z_:][a-zA-Z0-9_:]*)", what,
      type(name) == "string" and format("%q", name) or type(name)), 3)
  end
  if name:sub(1, 9) == "luaproxy_" then
    error(format("%s: %s: the luaproxy_ prefix is the engine's", what, name), 3)
  end
  if kind == "counter" and not name:find("_total$") then
    error(format("%s: %s: a counter's name ends in _total", what, name), 3)
  end
  if kind ~= "counter" and (name:find("_total$") or name:find("_bucket$") or name:find("_count$")
      or name:find("_sum$") or name:find("_created$")) then
    error(format("%s: %s: _total, _bucket, _count, _sum and _created end the samples of "
      .. "counters and histograms", what, name), 3)
  end
  if type(help) ~= "string" then error(what .. ": the help text must be a string", 3) end
  if labels == nil then labels = {} end
  if type(labels) ~= "table" then error(what .. ": labels must be a list of names", 3) end
  if #labels > 32 then error(what .. ": at most 32 labels", 3) end
  local seen = {}
  for i, l in ipairs(labels) do
    if not valid_label(l) then
      error(format("%s: invalid label name %s (Prometheus: [a-zA-Z_][a-zA-Z0-9_]*, not __...)",
        what, type(l) == "string" and format("%q", l) or type(l)), 3)
    end
    if kind == "histogram" and l == "le" then error(what .. ": le is the buckets' label", 3) end
    if seen[l] then error(format("%s: label %s given twice", what, l), 3) end
    seen[l] = i
  end
  if kind == "histogram" then
    if buckets == nil then buckets = M.DEFAULT_BUCKETS end
    if type(buckets) ~= "table" or #buckets == 0 or #buckets > 64 then
      error(what .. ": buckets must be a list of 1 to 64 increasing numbers", 3)
    end
    for i, b in ipairs(buckets) do
      if type(b) ~= "number" or b ~= b or (i > 1 and b <= buckets[i - 1]) then
        error(what .. ": buckets must be a list of 1 to 64 increasing numbers", 3)
      end
    end
  end
  return labels, buckets
end

-- ---- metric objects ----

local Metric = {}
Metric.__index = Metric

-- The cells, fetched on the first update in this VM (in a request phase or a timer).
local function bind(self)
  local b = self._b
  if b.in_init() then
    error(format("%s: updated in init_worker: metrics are updated from request phases and "
      .. "timers (init_worker does not run on the worker's thread)", self.name), 3)
  end
  local p = b.cells(self._id)
  if p == nil then error(self.name .. ": no metrics storage (not in a worker)", 3) end
  self._cells = p
  return p
end

local function label_string(self, v, i)
  local t = type(v)
  if t == "string" then
    if v:find("\0", 1, true) then error(self.name .. ": a label value cannot hold a NUL byte", 4) end
    return v
  end
  if t == "number" or t == "boolean" then return tostring(v) end
  error(format("%s: label value %d (%s) must be a string or a number, got %s", self.name, i,
    self.labels[i], t), 4)
end

-- A label set seen for the first time in this VM: checked, then asked of the backend.
local function miss(self, key, ...)
  local n = self._nlabels
  if select("#", ...) ~= n then
    error(format("%s: expected %d label value%s (%s), got %d", self.name, n, n == 1 and "" or "s",
      concat(self.labels, ", "), select("#", ...)), 3)
  end
  local parts = {}
  for i = 1, n do parts[i] = label_string(self, (select(i, ...)), i) end
  local joined = concat(parts, "\0")
  local idx = self._b.series(self._id, joined)
  if idx < 0 then error(self.name .. ": out of memory for a new series", 3) end
  local off = idx * self._cps
  self._idx[key] = off
  return off
end

local function offset(self, ...)
  local key
  local n = self._nlabels
  if n == 0 then
    key = ""
  elseif n == 1 then
    key = ...
    if key == nil then return miss(self, "", ...) end
  else
    key = concat({ ... }, "\0")
  end
  local off = self._idx[key]
  if off then return off end
  return miss(self, key, ...)
end

local function count_overflow(self, p, off)
  if off == self._ovf then p[self._ovfc] = p[self._ovfc] + 1 end
end

-- counter:inc(v, labels...): v >= 0 (1 when nil).
local Counter = setmetatable({}, { __index = Metric })
Counter.__index = Counter
function Counter:inc(v, ...)
  if v == nil then
    v = 1
  elseif type(v) ~= "number" or not (v >= 0) then
    error(self.name .. ": a counter goes up by a number >= 0", 2)
  end
  local p = self._cells or bind(self)
  local off = offset(self, ...)
  p[off] = p[off] + v
  count_overflow(self, p, off)
end

-- gauge:set(v, labels...), gauge:inc(v, labels...), gauge:dec(v, labels...). Each worker
-- has its own value; /metrics shows their sum.
local Gauge = setmetatable({}, { __index = Metric })
Gauge.__index = Gauge
local function gauge_num(self, v, what)
  if v == nil and what ~= "set" then return 1 end
  if type(v) ~= "number" then error(format("%s: %s takes a number", self.name, what), 3) end
  return v
end
function Gauge:set(v, ...)
  v = gauge_num(self, v, "set")
  local p = self._cells or bind(self)
  local off = offset(self, ...)
  p[off] = v
  count_overflow(self, p, off)
end
function Gauge:inc(v, ...)
  v = gauge_num(self, v, "inc")
  local p = self._cells or bind(self)
  local off = offset(self, ...)
  p[off] = p[off] + v
  count_overflow(self, p, off)
end
function Gauge:dec(v, ...)
  v = gauge_num(self, v, "dec")
  local p = self._cells or bind(self)
  local off = offset(self, ...)
  p[off] = p[off] - v
  count_overflow(self, p, off)
end

-- histogram:observe(v, labels...): the bucket of the first bound >= v, and the sum.
local Histogram = setmetatable({}, { __index = Metric })
Histogram.__index = Histogram
function Histogram:observe(v, ...)
  if type(v) ~= "number" or v ~= v then error(self.name .. ": observe takes a number", 2) end
  local p = self._cells or bind(self)
  local off = offset(self, ...)
  local b, nb = self._bounds, self._nb
  local i = 1
  while i <= nb and v > b[i] do i = i + 1 end
  p[off + i - 1] = p[off + i - 1] + 1
  p[off + nb + 1] = p[off + nb + 1] + v
  count_overflow(self, p, off)
end

local CLASSES = { counter = Counter, gauge = Gauge, histogram = Histogram }

-- The cells and the offset of a series (the engine's own per-plugin costs keep them).
function Metric:cell(...)
  local p = self._cells or bind(self)
  return p, offset(self, ...)
end

local function object(b, kind, name, help, labels, buckets)
  local id, err = b.new(kind, name, help, labels, buckets)
  if not id then error(format("proxy.metrics.%s: %s", kind, err), 4) end
  local nb = buckets and #buckets or 0
  local cps = kind == "histogram" and nb + 2 or 1
  local max = #labels > 0 and b.max_series() or 1
  local copy = {}
  for i, l in ipairs(labels) do copy[i] = l end
  return setmetatable({
    name = name, kind = kind, labels = copy,
    _b = b, _id = id, _cells = false, _idx = {}, _nlabels = #labels, _cps = cps,
    _bounds = buckets, _nb = nb,
    _ovf = max * cps, _ovfc = (max + 1) * cps,
  }, CLASSES[kind])
end

-- The engine's own metrics of Lua (runtime.lua): no name rules, made anywhere.
function M.internal(b, kind, name, help, labels)
  return object(b, kind, name, help, labels)
end

-- The proxy.metrics table over a backend.
function M.api(b)
  local api = {}
  local function make(kind, name, help, labels, buckets)
    labels, buckets = M.check(kind, name, help, labels, buckets)
    if not b.in_init() then
      error(format("proxy.metrics.%s: %s: metrics are created in init_worker", kind, name), 3)
    end
    return object(b, kind, name, help, labels, buckets)
  end
  function api.counter(name, help, labels) return make("counter", name, help, labels) end
  function api.gauge(name, help, labels) return make("gauge", name, help, labels) end
  function api.histogram(name, help, labels, buckets)
    return make("histogram", name, help, labels, buckets)
  end
  return api
end

-- The engine's backend (engine/metrics_lua.c), made on first use of proxy.metrics.
function M.engine_backend()
  local ffi = require "ffi"
  local C = ffi.C
  local runtime -- loaded on first use (proxy.lua loads this module anywhere)
  local err = ffi.new("char[256]")
  local b = {}
  function b.new(kind, name, help, labels, buckets)
    local names = concat(labels, "\0")
    local nb = buckets and #buckets or 0
    local bounds = ffi.new("double[?]", nb + 1)
    for i = 1, nb do bounds[i - 1] = buckets[i] end
    local id = C.lp_ffi_metric_new(KINDS[kind], name, help, names, #names, #labels, bounds, nb,
      b.max_series(), err, 256)
    if id < 0 then return nil, ffi.string(err) end
    return id
  end
  function b.cells(id)
    local p = C.lp_ffi_metric_cells(id)
    if p == nil then return nil end
    return p
  end
  function b.series(id, key) return C.lp_ffi_metric_series(id, key, #key) end
  function b.in_init()
    runtime = runtime or require "luaproxy.runtime"
    return runtime.current_phase == "init_worker"
  end
  function b.max_series()
    local cfg = require("proxy").config
    return cfg and cfg.metrics and cfg.metrics.max_series or 1000
  end
  return b
end

return M
