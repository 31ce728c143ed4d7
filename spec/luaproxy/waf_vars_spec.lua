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

  it("drops a lone surrogate escape, not a body error (JSON.stringify sends one)", function()
    assert.same({ "a=hi ", "b=\240\159\152\128", "c=\\ud800", "d=x" },
      json('{"a":"hi \\ud83d","b":"\\ud83d\\ude00","c":"\\\\ud800","d":"\\udc00x"}'))
    -- what follows it is inspected as before, and a keyword it splits is whole again
    assert.same({ "a=' OR 1=1" }, json('{"a":"\\ud800\' OR 1=1"}'))
    assert.same({ "q=1' UNION SELECT" }, json('{"q":"1\' UNI\\ud800ON SEL\\udbffECT"}'))
  end)

  it("gives every value of a repeated key, and stops at max_args", function()
    assert.same({ "a=1", "a=2" }, json('{"a":1,"a":2}'))
    assert.same({ "a.1=1", "a.2=2" }, json('{"a":[1,2,3]}', 2))
  end)

  it("looks into a GraphQL document's strings where its query stands", function()
    local body = '{"operationName":"Q","query":"query Q { user(name: \\"O\'Neil\\") { id } }",'
      .. '"variables":{"id":"5"}}'
    assert.same({ "operationName=Q", "query.1=O'Neil", "query.names=query Q user name id", "variables.id=5" },
      json(body))
  end)

  it("does not look into containers nested deeper than 64, and says so in body_error", function()
    local body = '{"deep":' .. ("["):rep(70) .. '"x"' .. ("]"):rep(70) .. ',"z":"end"}'
    assert.same({ "z=end" }, json(body))
    local spec = { method = "POST", uri = "/", body = body, headers = { ["Content-Type"] = "application/json" } }
    assert.same({ "=body_args: JSON nested deeper than 64" }, coll(spec, "body_error"))
    assert.same({ "=1" }, coll(spec, "body_error_flag"))
    -- 64 levels are read
    spec.body = ("["):rep(65) .. '"x"' .. ("]"):rep(65)
    assert.same({}, coll(spec, "body_error"))
    assert.same({ "=0" }, coll(spec, "body_error_flag"))
  end)

  it("makes a collection over max_args a body error: the values past it are not inspected", function()
    local function pairs_of(n, sep)
      local t = {}
      for i = 1, n do t[i] = "k" .. i .. "=0" end
      return table.concat(t, sep or "&")
    end
    local form = { method = "POST", uri = "/", body = pairs_of(3),
                   headers = { ["Content-Type"] = "application/x-www-form-urlencoded" } }
    assert.same({}, coll(form, "body_error", 3))
    form.body = pairs_of(4)
    assert.same({ "=body_args: more than max_args (3) values" }, coll(form, "body_error", 3))
    assert.same({ "=1" }, coll(form, "body_error_flag", 3))
    local js = { method = "POST", uri = "/", body = '{"a":1,"b":2,"c":3,"d":4}',
                 headers = { ["Content-Type"] = "application/json" } }
    assert.same({ "=body_args: more than max_args (3) values" }, coll(js, "body_error", 3))
    -- no body: the query, the headers, the cookies
    assert.same({}, coll({ uri = "/?" .. pairs_of(3) }, "body_error", 3))
    assert.same({ "=query_args: more than max_args (3) values" },
      coll({ uri = "/?" .. pairs_of(4) }, "body_error", 3))
    assert.same({ "=1" }, coll({ uri = "/?" .. pairs_of(4) }, "body_error_flag", 3))
    assert.same({ "=cookies: more than max_args (3) values" },
      coll({ uri = "/", headers = { Cookie = pairs_of(4, "; ") } }, "body_error", 3))
    assert.same({ "=headers: more than max_args (3) values" },
      coll({ uri = "/", headers = { A = "1", B = "2", C = "3", D = "4" } }, "body_error", 3))
    -- a JSON document in a query argument, too deep
    assert.same({ "=query_args: JSON nested deeper than 64" },
      coll({ uri = "/?f=" .. ("%5B"):rep(70) .. "1" .. ("%5D"):rep(70) }, "body_error"))
    -- and a body error with them
    form.uri, form.body = "/?" .. pairs_of(4), "a=%zz&" .. pairs_of(4)
    assert.same({ "=body_args: more than max_args (3) values; query_args: more than max_args (3) values" },
      coll(form, "body_error", 3))
  end)

  it("splits a form or cookies in time linear in their length (a&a&...&b=1)", function()
    -- the bytes string.find looks at while vars.lua splits, counted through a wrapper
    local real_find, scanned = string.find, 0
    string.find = function(s, p, init, plain) -- luacheck: ignore
      local a, b = real_find(s, p, init, plain)
      scanned = scanned + ((b or #s) - (init or 1) + 1)
      return a, b
    end
    package.loaded["luaproxy.waf.vars"] = nil
    local ok, W = pcall(require, "luaproxy.waf.vars")
    string.find = real_find -- luacheck: ignore
    package.loaded["luaproxy.waf.vars"] = V
    assert(ok, W)
    local function work(parse, n, sep, max)
      local s = ("a" .. sep):rep(n) .. "b=1"
      scanned = 0
      local c = { n = 0, names = {}, values = {} }
      parse(c, s, max)
      return scanned, c
    end
    for _, case in ipairs({ { W.parse_form, "&" }, { W.parse_cookies, ";" } }) do
      local small = work(case[1], 4096, case[2], 1e9)
      local big, c = work(case[1], 65536, case[2], 1e9)
      assert.are.equal(65537, c.n)
      assert.are.equal("b", c.names[c.n])
      -- 16 times the length, at most ~16 times the bytes looked at (quadratic: 256 times)
      assert.is_true(big < 20 * small, big .. " vs " .. small)
      -- at max_args it stops (and says so)
      c = select(2, work(case[1], 65536, case[2], 1024))
      assert.are.equal(1024, c.n)
      assert.is_true(c.truncated)
    end
  end)

  it("stops a multipart body at max_args, as a form: a body error, nothing past it read", function()
    local function part(i, file)
      return "--B\r\nContent-Disposition: form-data; name=\"f" .. i .. "\""
        .. (file and '; filename="f' .. i .. '.txt"' or "") .. "\r\n\r\nv" .. i .. "\r\n"
    end
    -- parts: fields (or files) 1..n, then one that is not a part (no Content-Disposition)
    local function mp(n, file)
      local t = {}
      for i = 1, n do t[i] = part(i, file) end
      return { method = "POST", uri = "/", body = table.concat(t) .. "--B\r\nX: y\r\n\r\nz\r\n--B--\r\n",
               headers = { ["Content-Type"] = "multipart/form-data; boundary=B" } }
    end
    -- within max_args: every part read, the bad one too
    assert.same({ "=multipart: part without Content-Disposition" }, coll(mp(3), "body_error", 4))
    -- over: the parts past max_args are not read (the bad one neither)
    assert.same({ "=body_args: more than max_args (3) values" }, coll(mp(4), "body_error", 3))
    assert.same({ "f1=v1", "f2=v2", "f3=v3" }, coll(mp(4), "body_args", 3))
    assert.same({ "=files: more than max_args (3) values" }, coll(mp(4, true), "body_error", 3))
    assert.same({ "f1=f1.txt", "f2=f2.txt", "f3=f3.txt" }, coll(mp(4, true), "files", 3))
    -- the parts' header lines: two per part here
    local two = mp(2)
    two.body = two.body:gsub('(name="f%d")\r\n', '%1\r\nContent-Type: text/plain\r\n')
    assert.same({ "=multipart_part_headers: more than max_args (3) values" }, coll(two, "body_error", 3))
    assert.same({ "f1=v1", "f2=v2" }, coll(two, "body_args", 3))
  end)

  it("reads a part's headers as headers and its Content-Disposition with quoted strings", function()
    local function mp(heads, ct)
      return { method = "POST", uri = "/", headers = { ["Content-Type"] = ct or "multipart/form-data; boundary=B" },
               body = "--B\r\n" .. heads .. "\r\n\r\nv\r\n--B--\r\n" }
    end
    local function err(heads, ct) return coll(mp(heads, ct), "body_error")[1] end
    -- a filename= inside a quoted value is that value's: a field, not a file
    local quoted = mp('Content-Disposition: form-data; name="id"; x="; filename=y.jpg "')
    assert.same({ "id=v" }, coll(quoted, "body_args"))
    assert.same({}, coll(quoted, "files"))
    -- a header whose name ends in Content-Disposition is not it
    local x = mp('X-Content-Disposition: form-data; filename="a.jpg"\r\nContent-Disposition: form-data; name="id"')
    assert.same({ "id=v" }, coll(x, "body_args"))
    assert.same({}, coll(x, "files"))
    -- names case-insensitive, values unquoted or quoted with escapes
    assert.same({ 'f=a "b".jpg' }, coll(mp('content-DISPOSITION: Form-Data; NAME=f; FILENAME="a \\"b\\".jpg"'), "files"))
    -- filename*: decoded; both names when both are given
    -- (filename* alone: PHP and others read only filename, so the part is their field)
    assert.equal("=multipart: filename* without filename",
      err("Content-Disposition: form-data; name=f; filename*=UTF-8''shell.php"))
    assert.same({ "f=a.jpg", "f=sh\195\169ll.php" },
      coll(mp("Content-Disposition: form-data; name=f; filename=\"a.jpg\"; filename*=UTF-8''sh%C3%A9ll.php"), "files"))
    -- what does not say once, plainly, what the part is: a body error
    assert.equal("=multipart: two Content-Disposition headers in a part",
      err('Content-Disposition: form-data; filename="a"\r\nContent-Disposition: form-data; name="id"'))
    assert.equal("=multipart: bad Content-Disposition", err('Content-Disposition: form-data; name="id'))
    assert.equal("=multipart: bad Content-Disposition", err('Content-Disposition: form-data; name=i"d'))
    assert.equal("=multipart: two filenames in a Content-Disposition",
      err('Content-Disposition: form-data; name=f; filename=a; Filename=b'))
    assert.equal("=multipart: a bare CR or LF in a part's headers",
      err('Content-Disposition: form-data; name="id"\nContent-Disposition: form-data; name=f; filename=a'))
    assert.equal("=multipart: bad part header line", err('Content-Disposition form-data; name="id"'))
    assert.equal("=multipart: Content-Disposition not form-data", err('Content-Disposition: attachment; name="id"'))
    -- RFC 7578 parts do not fold
    assert.equal("=multipart: a folded part header line", err('Content-Disposition: form-data;\r\n name="id"'))
    -- what PHP reads otherwise: a space before "=", a ' quote, a \\ in a quoted value
    assert.equal("=multipart: bad Content-Disposition", err('Content-Disposition: form-data; name="q"; filename ="a.txt"'))
    assert.equal("=multipart: bad Content-Disposition", err("Content-Disposition: form-data; name=q; x='; filename=a.txt'"))
    assert.equal("=multipart: bad Content-Disposition", err('Content-Disposition: form-data; name="q"; x="\\\\"; filename="a.txt"'))
    -- a long run of white space costs a byte walk, not a quadratic pattern
    assert.same({ "a" .. (" "):rep(100000) .. "b=v" },
      coll(mp('Content-Disposition: form-data; name=a' .. (" "):rep(100000) .. 'b'), "body_args"))
  end)

  it("takes the boundary parameter alone, and refuses a delimiter after a bare LF", function()
    assert.equal("REAL", V.multipart_boundary('multipart/form-data; boundary=REAL; xboundary="FAKE"'))
    -- PHP takes the first "boundary" text, case-sensitive first: FAKE here
    assert.is_nil(V.multipart_boundary('multipart/form-data; x="; boundary=FAKE"; BOUNDARY="REAL"'))
    assert.is_nil(V.multipart_boundary('multipart/form-data; xboundary=FAKE; boundary=REAL'))
    assert.equal("----WebKitFormBoundaryAb1", V.multipart_boundary("multipart/form-data; boundary=----WebKitFormBoundaryAb1"))
    assert.equal("ReAl", V.multipart_boundary("Multipart/Form-Data;boundary=ReAl ; charset=utf-8"))
    assert.is_nil(V.multipart_boundary("text/plain; boundary=B"))
    assert.same({ nil, "multipart: two boundary parameters" },
      { V.multipart_boundary("multipart/form-data; boundary=A; boundary=B") })
    local body = "--A\r\nContent-Disposition: form-data; name=a\r\n\r\nv\r\n--A--\r\n"
    local function err(ct, b)
      return coll({ method = "POST", uri = "/", headers = { ["Content-Type"] = ct }, body = b or body }, "body_error")[1]
    end
    assert.is_nil(err("multipart/form-data; boundary=A"))
    assert.equal("=multipart: two boundary parameters", err("multipart/form-data; boundary=A; boundary=B"))
    assert.equal("=multipart: bad Content-Type parameters", err('multipart/form-data; boundary="A'))
    -- PHP reads a delimiter after a bare LF as one (a part the WAF did not see)
    local lf = "--A\r\nContent-Disposition: form-data; name=f; filename=a.jpg\r\n\r\nxx"
      .. "\n--A\nContent-Disposition: form-data; name=t\n\nattack\r\n--A--\r\n"
    assert.equal("=multipart: a delimiter after a bare LF", err("multipart/form-data; boundary=A", lf))
    assert.same({ nil, "multipart: a delimiter after a bare LF" }, { V.without_files(lf, "A", 10) })
    assert.equal("=multipart: a delimiter after a bare LF", err("multipart/form-data; boundary=A", "x\n" .. body))
    assert.is_nil(err("multipart/form-data; boundary=A", "x\r\n" .. body))
    -- the boundary mid-line in the preamble (PHP starts at the next line), a part's content
    -- opening with a delimiter, a delimiter line among a part's headers (boundary with ":")
    local ct = "multipart/form-data; boundary=A"
    assert.equal("=multipart: the boundary inside the preamble", err(ct, "x" .. body))
    local hidden = "--A\r\nContent-Disposition: form-data; name=f; filename=a.txt\r\n\r\n--A\r\n"
      .. "Content-Disposition: form-data; name=q\r\n\r\nattack\r\n--A--\r\n"
    assert.equal("=multipart: a delimiter inside a part's headers", err(ct, hidden))
    local colon = "--x:y\r\nContent-Disposition: form-data; name=f; filename=a.txt\r\n--x:y\r\n"
      .. "Content-Disposition: form-data; name=q\r\n\r\nattack\r\n--x:y--\r\n"
    assert.equal("=multipart: a delimiter inside a part's headers", err('multipart/form-data; boundary="x:y"', colon))
    assert.equal("=multipart: a delimiter after the closing delimiter",
      err("multipart/form-data; boundary=A", body .. "\n--A\nContent-Disposition: form-data; name=t\n\nattack"))
    assert.same({ nil, "multipart: a delimiter after the closing delimiter" },
      { V.without_files(body .. "x\n--A\n", "A", 1000) })
  end)

  it("gives FILES_COMBINED_SIZE, the file parts' contents' size", function()
    local body = "--B\r\nContent-Disposition: form-data; name=t\r\n\r\nhello\r\n"
      .. "--B\r\nContent-Disposition: form-data; name=f; filename=a.jpg\r\n\r\n" .. ("x"):rep(300) .. "\r\n"
      .. "--B\r\nContent-Disposition: form-data; name=g; filename=b.jpg\r\n\r\n" .. ("y"):rep(20) .. "\r\n--B--\r\n"
    assert.same({ "=320" }, coll({ method = "POST", uri = "/", body = body,
      headers = { ["Content-Type"] = "multipart/form-data; boundary=B" } }, "files_combined_size"))
    assert.same({ "=0" }, coll({ method = "POST", uri = "/", body = "a=1",
      headers = { ["Content-Type"] = "application/x-www-form-urlencoded" } }, "files_combined_size"))
  end)

  it("reads a GraphQL document only at the body's root (not under an empty key or name)", function()
    local q = '"query { user(id: 1) { id } }"'
    assert.same({ "query=query { user(id: 1) { id } }" }, json('{"":{"query":' .. q .. '}}'))
    assert.same({ "query=query { user(id: 1) { id } }" },
      coll({ uri = "/?=%7B%22query%22%3A%22query%20%7B%20user(id%3A%201)%20%7B%20id%20%7D%20%7D%22%7D" },
        "query_args"))
    assert.same({ "query=query { user(id: 1) { id } }" },
      coll({ uri = "/", headers = { Cookie = '={"query":' .. q .. '}' } }, "cookies"))
  end)

  it("reads a query argument named query as a GraphQL request sent by GET, when it is one", function()
    local uri = "/graphql?operationName=Q&query=query%20Q%20%7B%20user(name%3A%20%22O'Neil%22)%20%7B%20id%20%7D%20%7D"
      .. "&variables=%7B%22id%22%3A%225%22%7D"
    assert.same({ "operationName=Q", "query.1=O'Neil", "query.names=query Q user name id", "variables.id=5" },
      coll({ uri = uri }, "query_args"))
    -- no executable document: whole, as any value (a search, SQL in GraphQL's clothes, an
    -- unterminated string, a type definition)
    for _, q in ipairs({ "shoes", "query { user(id: 1 UNION SELECT 2) { id } }", '{ a(b: "x) }',
      "type Q { a: Int }" }) do
      local e = q:gsub("[^%w]", function(ch) return string.format("%%%02X", ch:byte()) end)
      assert.same({ "query=" .. q }, coll({ uri = "/graphql?query=" .. e }, "query_args"))
    end
    -- only on a path naming GraphQL, or beside operationName / variables / extensions:
    -- elsewhere `query` is a search term, and a document of bare names is read whole
    local names = "query=%7B%20UNION%3A%20SELECT%20password%3A%20FROM%20users%20%7D"
    assert.same({ "query={ UNION: SELECT password: FROM users }" }, coll({ uri = "/search?" .. names }, "query_args"))
    local words = "query.names=UNION SELECT password FROM users" -- (its names: nothing dropped)
    assert.same({ words }, coll({ uri = "/api/gql?" .. names }, "query_args"))
    assert.same({ "variables.a=1", words },
      coll({ uri = "/search?variables=%7B%22a%22%3A1%7D&" .. names }, "query_args"))
    -- another name, or a form body: as before
    assert.same({ "q={ a }" }, coll({ uri = "/?q=%7B%20a%20%7D" }, "query_args"))
    assert.same({ "query={ a }" }, coll({ method = "POST", uri = "/", body = "query=%7B%20a%20%7D",
      headers = { ["Content-Type"] = "application/x-www-form-urlencoded" } }, "body_args"))
  end)

  it("reads each GraphQL request of a batch (an array at the body's root) as a single one", function()
    local function op(name, arg, extra)
      return '{"operationName":"' .. name .. '","query":"query ' .. name .. ' { user(name: \\"'
        .. arg .. '\\") { id } }","variables":{"id":' .. (extra or '"5"') .. "}}"
    end
    local want = { "1.operationName=A", "1.query.1=O'Neil", "1.query.names=query A user name id",
                   "1.variables.id=5", "2.operationName=B", "2.query.1=x",
                   "2.query.names=query B user name id", "2.variables.id=5" }
    assert.same(want, json("[" .. op("A", "O'Neil") .. "," .. op("B", "x") .. "]"))
    -- the same through the decoded table, keys sorted, when the scanner does not follow a
    -- text (no text known to cjson: here its reading of one string token fails); in an
    -- argument, not a batch
    local decode = proxy.json.decode
    package.loaded["luaproxy.waf.vars"] = nil
    local W = require "luaproxy.waf.vars"
    package.loaded["luaproxy.waf.vars"] = V
    local batch = "[" .. op("A", "O'Neil", "16") .. "," .. op("B", "x") .. "]"
    local body, arg = {}, {}
    T.phase({ name = "probe", request = function(req)
      proxy.json.decode = function(t) -- luacheck: ignore
        if t:sub(1, 1) == '"' then error("not this one") end
        return decode(t)
      end
      local ok, err = pcall(function()
        local v = W.new(req, { max_args = 1024 })
        v.body = batch
        local c = v:coll("body_args")
        for i = 1, c.n do body[i] = c.names[i] .. "=" .. c.values[i] end
        c = { n = 0, names = {}, values = {} }
        W.add_value(c, "b", batch, 1024)
        for i = 1, c.n do arg[i] = c.names[i] .. "=" .. c.values[i] end
      end)
      proxy.json.decode = decode -- luacheck: ignore
      assert(ok, err)
    end }, "request", T.request({ method = "POST", uri = "/",
      headers = { ["Content-Type"] = "application/json" } }), {})
    assert.same({ "1.query.1=O'Neil", "1.query.names=query A user name id", "1.operationName=A",
                  "1.variables.id=16", "2.query.1=x", "2.query.names=query B user name id",
                  "2.operationName=B", "2.variables.id=5" }, body)
    assert.same({ "b.1.operationName=A", "b.1.query=query A { user(name: \"O'Neil\") { id } }",
                  "b.1.variables.id=16", "b.2.operationName=B", "b.2.query=query B { user(name: \"x\") { id } }",
                  "b.2.variables.id=5" }, arg)
    -- only directly in the root array: not deeper, not under a key, not in an argument
    local q = '{"query":"query { user(id: 1) { id } }"}'
    assert.same({ "1.1.query=query { user(id: 1) { id } }" }, json("[[" .. q .. "]]"))
    assert.same({ "a.1.query=query { user(id: 1) { id } }" }, json('{"a":[' .. q .. "]}"))
    assert.same({ "f.1.query=query { user(id: 1) { id } }" },
      coll({ uri = "/?f=" .. ("[" .. q .. "]"):gsub("[^%w]", function(ch)
        return ("%%%02X"):format(ch:byte()) end) }, "query_args"))
  end)

  it("makes a JSON body with a NUL byte a body error, and reads no such value as JSON", function()
    -- cjson reads no further than a NUL: what followed went uninspected
    local spec = { method = "POST", uri = "/", body = '{"a":1}\0{"q":"x"}',
                   headers = { ["Content-Type"] = "application/json" } }
    assert.same({ "=JSON: a NUL byte" }, coll(spec, "body_error"))
    assert.same({}, coll(spec, "body_args"))
    local enc = "%7B%22a%22%3A1%7D%00%7B%22q%22%3A%22x%22%7D"
    assert.same({ 'f={"a":1}\0{"q":"x"}' }, coll({ uri = "/?f=" .. enc }, "query_args"))
    assert.same({ 'c={"a":1}\0{"q":"x"}' }, coll({ uri = "/", headers = { Cookie = "c=" .. enc } }, "cookies"))
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

  it("gives a request without a body empty body collections, shared and read-only", function()
    assert.same({}, coll({ uri = "/" }, "body_args"))
    local colls, method
    T.phase({ name = "probe", request = function(req)
      local v = V.new(req, { max_args = 8 })
      colls = { v:coll("body_args"), v:coll("body_length"), v:coll("reqbody_processor"),
                v:coll("body_error"), v:coll("body_error_flag") }
      method = v:coll("method")
    end }, "request", T.request({ uri = "/" }), {})
    for i, c in ipairs(colls) do
      for _, write in ipairs({ function() c.n = 2 end, function() c.extra = 1 end,
        function() c.names[1] = "x" end, function() c.values[1] = "x" end,
        function() c.values[2] = "x" end, function() setmetatable(c, nil) end }) do
        assert.is_false(pcall(write), "collection " .. i)
      end
    end
    assert.same({ 0, 0, 1, "0", 1, "", 0, 1, "0" }, { colls[1].n, colls[1].names[1] or 0, colls[2].n,
      colls[2].values[1], colls[3].n, colls[3].values[1], colls[4].n, colls[5].n, colls[5].values[1] })
    -- a request's one-value collection is its own; the list of its one name is shared
    assert.is_false(pcall(function() method.names[1] = "x" end))
    assert.are.equal("", method.names[1])
    assert.same({ "=0" }, coll({ uri = "/" }, "body_length"))
    assert.same({ "=" }, coll({ uri = "/" }, "reqbody_processor"))
    assert.same({ "=JSON" }, coll({ method = "POST", uri = "/", body = "{}",
      headers = { ["Content-Type"] = "application/json" } }, "reqbody_processor"))
  end)
end)
