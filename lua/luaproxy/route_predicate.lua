-- Config routes' Lua predicates (`match.predicate`, docs/routing.md). The engine's router
-- (engine/router.c) finds the first route whose other conditions hold; when that route has a
-- predicate, conn.c calls this with the request's handle (made for that route) and the
-- route's number before any plugin runs. A false answer sends the router on to the next
-- route; an error fails the request with 500, its traceback logged, and never the worker.
--
-- Called with lua_pcall on the VM's main thread, not in the request's coroutine: a
-- predicate decides from what the request says and cannot wait (proxy.sleep, req:body()
-- and the like raise "attempt to yield across C-call boundary", which fails the request).
local proxy = require "proxy"
local request = require "luaproxy.request"
local type, xpcall, traceback = type, xpcall, debug.traceback

local M = {}

-- true or false, or nil and the error with its traceback. `r` is the engine's request (a
-- number, as request.bind's `enter` takes it) and `slot` its task's slot in the handle table:
-- the handle there is made for this route unless the request has one already.
function M.run(r, route_no, slot)
  local handles = request.handles
  local h = handles[slot]
  if not h then
    h = request.new(r, route_no)
    handles[slot] = h
  end
  local routes = proxy.config and proxy.config.routes
  local r = routes and routes[route_no]
  local p = r and r.match and r.match.predicate
  if type(p) ~= "function" then
    return nil, "routes[" .. route_no .. "].match.predicate: not a function in this worker"
  end
  local ok, res = xpcall(p, traceback, h)
  if not ok then return nil, res end
  return res and true or false
end

return M
