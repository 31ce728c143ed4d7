-- Test fixture: a response_body filter that shows how it was called. Every chunk goes out
-- upper-cased (same length); with `wait`, the filter sleeps (proxy.sleep, a yield) on every
-- `wait`th chunk; at eof it appends "|calls=N|max=M": its calls and the largest chunk it got.
local upper, format = string.upper, string.format
local P = {
  name = "hitfilter",
  priority = 600,
  schema = {
    fields = {
      wait = { type = "integer", default = 0, min = 0,
               description = "sleep on every wait-th chunk (0: never)" },
    },
  },
}

function P.response_body(req, chunk, eof, conf)
  local ctx = req.ctx
  local calls = (ctx.hitfilter_calls or 0) + 1
  ctx.hitfilter_calls = calls
  if #chunk > (ctx.hitfilter_max or 0) then ctx.hitfilter_max = #chunk end
  if conf.wait > 0 and calls % conf.wait == 0 then proxy.sleep(0.001) end
  local out = upper(chunk)
  if eof then out = out .. format("|calls=%d|max=%d", calls, ctx.hitfilter_max or 0) end
  return out
end

return P
