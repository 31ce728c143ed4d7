-- Test fixture: a response_body filter.
--   upper : every chunk upper-cased (same length)
--   double: every chunk sent twice (the body grows)
--   hold  : chunks held back ("" returned) and sent at once, upper-cased, at eof
local upper, concat = string.upper, table.concat
local P = {
  name = "bodyfilter",
  priority = 600,
  schema = {
    fields = {
      mode = { type = "string", default = "upper", one_of = { "upper", "double", "hold" },
               description = "what to do with the body" },
    },
  },
}

function P.response_body(req, chunk, eof, conf)
  local ctx = req.ctx
  ctx.bodyfilter_calls = (ctx.bodyfilter_calls or 0) + 1
  if conf.mode == "upper" then return upper(chunk) end
  if conf.mode == "double" then return chunk .. chunk end
  local held = ctx.bodyfilter_held
  if not held then
    held = {}
    ctx.bodyfilter_held = held
  end
  held[#held + 1] = chunk
  if eof then return upper(concat(held)) end
  return ""
end

return P
