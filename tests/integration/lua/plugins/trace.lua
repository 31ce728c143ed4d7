-- Test fixture: records the order in which phases run, as "<label>:<phase>" entries in
-- req.ctx.trace (one list shared by every plugin of the request).
--   response      : sets X-Trace to the entries so far (a later plugin overwrites it
--                   with a longer list, so the client sees everything up to `response`)
--   response_body : records "<label>:body" once, on the last chunk
--   log           : records "<label>:log", then keeps the whole list under the request's
--                   ?trace=KEY (module-level, per worker) and writes it to the error log
-- A request for /trace-result?key=KEY is answered locally with what was kept for KEY.
-- trace_low.lua is the same plugin at a lower priority.
local concat = table.concat

-- Shared by trace and trace_low (both modules load in the same worker VM).
local results = package.loaded["fixture.trace_results"] or {}
package.loaded["fixture.trace_results"] = results

local function new(name, priority)
  local P = {
    name = name,
    priority = priority,
    schema = {
      fields = {
        label = { type = "string", default = name, description = "entry prefix" },
        answer_results = { type = "boolean", default = false,
                           description = "answer /trace-result?key=KEY" },
      },
    },
  }

  local function add(req, what)
    local t = req.ctx.trace
    if not t then
      t = {}
      req.ctx.trace = t
    end
    t[#t + 1] = what
  end

  function P.request(req, conf)
    if conf.answer_results and req:path() == "/trace-result" then
      return req:respond(200, results[req:query("key") or ""] or "none",
                         { ["Content-Type"] = "text/plain" })
    end
    add(req, conf.label .. ":request")
  end

  function P.upstream(req, conf) add(req, conf.label .. ":upstream") end

  function P.response(req, conf)
    add(req, conf.label .. ":response")
    req:set_resp_header("X-Trace", concat(req.ctx.trace, ","))
  end

  function P.response_body(req, chunk, eof, conf)
    if eof then add(req, conf.label .. ":body") end
    return nil
  end

  function P.log(req, conf)
    add(req, conf.label .. ":log")
    local key = req:query("trace")
    if key then
      results[key] = concat(req.ctx.trace, ",")
      proxy.log.notice("TRACE", key, results[key])
    end
  end

  return P
end

local name, priority = ...
return new(name, priority or 200)
