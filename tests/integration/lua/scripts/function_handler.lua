-- Test fixture: a handler module returning the function itself.
return function(req)
  req:set_header("X-Function-Handler", "yes")
  req:set_path("/headers")
end
