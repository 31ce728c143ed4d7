-- Test fixture: writes req.ctx.shared_by_writer in the request phase (priority 300).
local P = { name = "ctx_writer", priority = 300, schema = { fields = {} } }
function P.request(req) req.ctx.shared_by_writer = "written-by-ctx_writer" end
return P
