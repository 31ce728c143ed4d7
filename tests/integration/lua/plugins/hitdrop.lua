-- Test fixture (test_cache_turn.py): a response_body filter that drops what it is given,
-- and a request that waits for it, so that a test can tell in what order one worker served
-- two connections without timing either. State is this worker's VM's (run one worker).
--   role "drop": the filter drops every chunk. A request with X-Hitdrop marks that the
--     filter ran for it (on its first call); one with X-Hitdrop-Error: N makes the filter
--     raise on its Nth call. At eof it sends "calls=N|waiter=W": its calls and what the
--     waiting request had become by then.
--   role "wait": the request phase sleeps a loop turn at a time (proxy.sleep(0)) until a
--     marked filter ran, then answers 200 "answered" (bounded: "gave up" after 60 s).
--   role "peek": answers 200 with the waiting request's state ("none", "waiting", ...).
local P = {
  name = "hitdrop",
  priority = 600,
  schema = {
    fields = {
      role = { type = "string", default = "drop", one_of = { "drop", "wait", "peek" },
               description = "what this route's requests do (see the file's head)" },
    },
  },
}

local marked = false   -- a marked filter ran since the waiter last went on
local waiter = "none"  -- the waiting request's state

function P.request(req, conf)
  if conf.role == "peek" then return req:respond(200, waiter) end
  if conf.role ~= "wait" then return end
  waiter = "waiting"
  local deadline = proxy.monotonic() + 60
  while not marked and proxy.monotonic() < deadline do proxy.sleep(0) end
  waiter = marked and "answered" or "gave up"
  marked = false
  return req:respond(200, waiter)
end

function P.response_body(req, chunk, eof, conf)
  if conf.role ~= "drop" then return chunk end
  local ctx = req.ctx
  local calls = (ctx.hitdrop_calls or 0) + 1
  ctx.hitdrop_calls = calls
  if calls == 1 and req:header("x-hitdrop") then marked = true end
  if tonumber(req:header("x-hitdrop-error") or "") == calls then
    error("hitdrop: error on call " .. calls)
  end
  if eof then return string.format("calls=%d|waiter=%s", calls, waiter) end
  return ""
end

return P
