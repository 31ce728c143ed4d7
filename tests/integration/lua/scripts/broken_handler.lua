-- Test fixture: a handler module with a syntax error on line 5 (an `if` without `then`).
return {
  handler = function(req)
    local x = req:path()
    if x == "/" req:respond(200, "never")
    end
  end,
}
