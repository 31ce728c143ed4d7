-- luaproxy/waf/vars.lua: the request variables the waf's rules read, as the parsers give
-- them. Values come in document order, the same at every run (pairs() order is not: it
-- changes from one process to the next, and with it which rule matched first and which
-- values a capped collection kept).
local T = require "proxy.test"
local V = require "luaproxy.waf.vars"

-- The collection `name` of a request, as { "name=value", ... } in order.
local function coll(spec, name, max)
  local out
  T.phase({ name = "probe", request = function(req)
    local v = V.new(req, { max_args = max or 1024 })
    v.body = spec.body
    local c = v:coll(name)
    out = {}
    for i = 1, c.n do out[i] = c.names[i] .. "=" .. c.values[i] end
  end }, "request", T.request(spec), {})
  return out
end

local function json(body, max)
  return coll({ method = "POST", uri = "/", body = body,
                headers = { ["Content-Type"] = "application/json" } }, "body_args", max)
end

describe("waf vars", function()
  it("gives a JSON body's leaves in document order, named by their paths", function()
    local body = '{"z":1,"a":{"y":"x","b":[true,false,null,2.5,"s"]},"m":[],"k":{},"c":-0}'
    local want = { "z=1", "a.y=x", "a.b.1=true", "a.b.2=false", "a.b.4=2.5", "a.b.5=s", "c=-0" }
    assert.same(want, json(body))
    -- many keys: the order a hash table would give is not the document's
    local keys, parts = {}, {}
    for i = 1, 40 do
      local k = "k" .. ((i * 7919) % 1000)
      keys[i] = k .. "=" .. i
      parts[i] = '"' .. k .. '":' .. i
    end
    assert.same(keys, json("{" .. table.concat(parts, ",") .. "}"))
  end)

  it("reads JSON values as cjson does: escapes, numbers, white space", function()
    local body = ' { "a\\"b" : "x\\u00e9\\n" ,\n "n":[1e3, 12345678901234567890, 0.10, 7] } '
    assert.same({ 'a"b=x\195\169\n', "n.1=1000", "n.2=1.2345678901235e+19", "n.3=0.1", "n.4=7" },
      json(body))
  end)

  it("gives every value of a repeated key, and stops at max_args", function()
    assert.same({ "a=1", "a=2" }, json('{"a":1,"a":2}'))
    assert.same({ "a.1=1", "a.2=2" }, json('{"a":[1,2,3]}', 2))
  end)

  it("looks into a GraphQL document's strings where its query stands", function()
    local body = '{"operationName":"Q","query":"query Q { user(name: \\"O\'Neil\\") { id } }",'
      .. '"variables":{"id":"5"}}'
    assert.same({ "operationName=Q", "query.1=O'Neil", "variables.id=5" }, json(body))
  end)

  it("does not look into containers nested deeper than 64", function()
    local body = '{"deep":' .. ("["):rep(70) .. '"x"' .. ("]"):rep(70) .. ',"z":"end"}'
    assert.same({ "z=end" }, json(body))
  end)

  it("reads the numbers cjson takes beyond JSON as it does (hexadecimal)", function()
    assert.same({ "b=16", "a=1" }, json('{"b":0x10,"a":1}'))
  end)

  it("gives query and form arguments in order, empty pairs skipped, decoded", function()
    assert.same({ "a=1", "b=", "c d=%zz", "a=x y" },
      coll({ uri = "/p?a=1&&b&c+d=%zz&a=x%20y&" }, "query_args"))
    assert.same({ "f.x=1" }, coll({ uri = "/p?f=%7B%22x%22%3A1%7D" }, "query_args"))
  end)

  it("splits cookies on ; and trims names and values", function()
    assert.same({ "a=1", "b=x = y", "flag=", "c=", "j.k=v" },
      coll({ uri = "/", headers = { Cookie = " a = 1 ;; b=x = y ; flag ; c= ;j=%7B%22k%22%3A%22v%22%7D" } },
        "cookies"))
  end)

  it("gives a request without a body empty body collections", function()
    assert.same({}, coll({ uri = "/" }, "body_args"))
    assert.same({ "=0" }, coll({ uri = "/" }, "body_length"))
    assert.same({ "=" }, coll({ uri = "/" }, "reqbody_processor"))
    assert.same({ "=JSON" }, coll({ method = "POST", uri = "/", body = "{}",
      headers = { ["Content-Type"] = "application/json" } }, "reqbody_processor"))
  end)
end)
