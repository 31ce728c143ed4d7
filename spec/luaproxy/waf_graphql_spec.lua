-- luaproxy/waf/graphql.lua: a GraphQL document's string literals, decoded as the server
-- reads them (the spec's "String Value"), so that an escape does not hide what it stands for.
local G = require "luaproxy.waf.graphql"
local T = require "proxy.test"
local V = require "luaproxy.waf.vars"

local function add(c, name, v) c[#c + 1] = name .. "=" .. v end
-- The literals (and comments) only; with_names: q.names too.
local function strings(q, with_names)
  local c = {}
  G.strings(c, "q", q, 1024, function(cc, name, v)
    if with_names or name ~= "q.names" then add(cc, name, v) end
  end)
  return c
end

-- The body_args of a JSON body.
local function json(body)
  local out
  T.phase({ name = "probe", request = function(req)
    local v = V.new(req, { max_args = 1024 })
    v.body = body
    local c = v:coll("body_args")
    out = {}
    for i = 1, c.n do -- (the names' value, checked apart, left out)
      if not c.names[i]:find("%.names$") then out[#out + 1] = c.names[i] .. "=" .. c.values[i] end
    end
  end }, "request", T.request({ method = "POST", uri = "/", body = body,
                                headers = { ["Content-Type"] = "application/json" } }), {})
  return out
end

describe("waf graphql", function()
  it("inspects the document's names and numbers too, without its punctuation", function()
    assert.same({ "q.names=UNION SELECT password FROM users" },
      strings("{ UNION: SELECT password: FROM users }", true))
    assert.same({ "q.1=x", "q.names=query Q user id 1 name f n 2.5" },
      strings('query Q { user(id: 1, name: "x") { f(n: 2.5) } }', true))
  end)

  it("decodes every escape of a string literal", function()
    assert.same({ [[q.1=" \ / ]] .. "\b\f\n\r\t" }, strings([[{ a(s: "\" \\ \/ \b\f\n\r\t") }]]))
    assert.same({ "q.1=x' OR '1'='1" }, strings([[{ user(name: "x\u0027 OR \u00271\u0027=\u00271") }]]))
    assert.same({ "q.1=; cat /etc/passwd" }, strings([[{ f(a: "\u003b cat \u002fetc\u002fpasswd") }]]))
    -- \u is UTF-16: a surrogate pair is one code point; the newer \u{...} form, any length
    assert.same({ "q.1=\240\159\152\128 \195\169" }, strings([[{ f(a: "\uD83D\uDE00 \u00E9") }]]))
    assert.same({ "q.1=' \240\159\152\128 <" }, strings([[{ f(a: "\u{27} \u{1F600} \u{00003C}") }]]))
  end)

  it("inspects a literal with an invalid escape as written, and with its valid escapes decoded", function()
    assert.same({ [[q.1=\q \u0027]], [[q.1=\q ']] }, strings([[{ f(a: "\q \u0027") }]]))
    -- a lone surrogate, a short \u, a \u{} past U+10FFFF or a surrogate
    assert.same({ [[q.1=\uD83D']] }, strings([[{ f(a: "\uD83D'") }]]))
    assert.same({ [[q.1=\uDE00]] }, strings([[{ f(a: "\uDE00") }]]))
    assert.same({ [[q.1=\u27']] }, strings([[{ f(a: "\u27'") }]]))
    assert.same({ [[q.1=\u{110000}]] }, strings([[{ f(a: "\u{110000}") }]]))
    assert.same({ [[q.1=\u{D800}]] }, strings([[{ f(a: "\u{D800}") }]]))
    -- unterminated (a line's end or the document's): no document, so the caller inspects
    -- the whole text (never dropped; a server refuses it as a syntax error anyway)
    assert.same({}, strings('{ f(a: "x\\u0027 OR 1\n b: "b") }'))
    assert.same({}, strings([[{ f(a: "x\u0027]]))
    assert.same({ [[query={ f(a: "x\u0027]] }, json([[{"query":"{ f(a: \"x\\u0027"}]]))
  end)

  it("reads block strings: \\\"\"\", no other escape, the common indentation and blank lines gone", function()
    assert.same({ [[q.1=a \u0027 """ ]] }, strings([[{ f(a: """a \u0027 \""" """) }]]))
    local q = '{ f(a: """\n    first\n      second\r\n    third\r  \n\n  """) }'
    assert.same({ "q.1=first\n  second\nthird" }, strings(q))
    assert.same({ "q.1=  one line  " }, strings('{ f(a: """  one line  """) }'))
    assert.same({ "q.1=", "q.2=x" }, strings('{ f(a: """ \t """, b: "x") }'))
    -- an escaped closing quote, then the real one; unterminated: up to the end
    assert.same({ 'q.1=a""""b' }, strings([[{ f(a: """a\""""b""") }]]))
    assert.same({}, strings([[{ f(a: """x' OR 1]]))
  end)

  it("reads comments as comments: a quote in one opens no string; their text is inspected", function()
    -- a """ in a comment swallowed the literal after it, undecoded
    local q = '# """\n{ user(name: "x\\u0027 OR 1") { id } } # """'
    assert.same({ "q.1=x' OR 1", 'q.2= """', 'q.3= """' }, strings(q))
    assert.same({ "q.1=a#b", 'q.2= "c' }, strings('{ f(a: "a#b") } # "c'))
    -- a server ignores them, an API that is no GraphQL reads the whole text (review)
    assert.same({ "query.1=' UNION SELECT password FROM users--" },
      json([[{"query":"{a}#' UNION SELECT password FROM users--"}]]))
    -- no escaped line end in a string (the spec has none): no document, inspected whole
    assert.same({}, strings('{ f(a: "x\\\ny") }'))
  end)

  it("knows a document after what the lexer ignores", function()
    assert.truthy(G.looks("query Q { a }"))
    assert.truthy(G.looks("\239\187\191 , # a comment\n  { a }"))
    assert.truthy(G.looks("mutation($x: ID) { a }"))
    assert.truthy(G.looks("fragment F on User { id }"))
    assert.falsy(G.looks("# only a comment"))
    assert.falsy(G.looks("select * from users"))
    assert.falsy(G.looks("queryable"))
  end)

  it("takes a text GraphQL's tokens do not make for no document: inspected whole", function()
    -- a JSON API's "query" that starts like a document: it has no literals to read
    assert.same({ "query={ ' OR 1=1 }" }, json([[{"query":"{ ' OR 1=1 }"}]]))
    assert.same({ "query=query UNION SELECT password FROM users--" },
      json([[{"query":"query UNION SELECT password FROM users--"}]]))
    assert.same({ "1.query={ a } ; cat /etc/passwd", "2.query.1=x" },
      json([=[[{"query":"{ a } ; cat /etc/passwd"},{"query":"{ f(a: \"x\") }"}]]=]))
    -- what documents hold: numbers, spreads, directives, variables' defaults, a BOM
    local doc = [[query Q($n: Int = -1, $f: Float = 1.5e+3) @live { ...F a(x: [1, -2.0E-3]) }]]
    assert.same({ "query.1=s", 'query.2= "c"' }, json([[{"query":"\ufeff]] .. doc .. [[ # \"c\"\n{ b(s: \"s\") }"}]]))
  end)

  it("takes what GraphQL's tokens make but its grammar does not for no document", function()
    -- every character a GraphQL token, the attack made of names and numbers: a lexer alone
    -- read no literal in it and nothing was inspected (review of wafgql)
    local sqli = "query { user(id: 1 UNION SELECT password FROM users WHERE 1=1) { id } }"
    assert.same({}, strings(sqli))
    assert.same({ "query=" .. sqli }, json('{"query":"' .. sqli .. '"}'))
    assert.same({ "1.query=" .. sqli }, json('[{"query":"' .. sqli .. '"}]'))
    for _, q in ipairs({
      "{ a } { b(c: 1 2) }",               -- an argument with two values
      "{ a(b: $v) } fragment on on T { a }", -- a fragment named on
      "query ($v: Int = $w) { a }",         -- a variable in a default value
      "type T { a: String }",               -- a type system definition
      "{ a(b: 01) }", "{ a(b: 1.5.3) }",    -- numbers the spec does not have
      "{ " .. ("a { "):rep(100) .. ("} "):rep(101), -- nested past the bound
    }) do
      assert.same({}, strings(q), q)
    end
    -- and what documents hold is read: aliases, inline fragments, directives, object values
    assert.same({ "q.1=x", "q.2=y" }, strings(
      'query Q($a: [In!]! = [{k: "x"}]) { al: f(o: {p: [1, ENUM, null, $a]}) @include(if: true) ' ..
      '{ ... on T { g } ... @skip(if: false) { h(s: "y") } ...Frag } } fragment Frag on T { i }'))
  end)

  it("decodes the strings of a single request, a batch and a commented document", function()
    local q = [["{ user(name: \"x\\u0027 OR \\u00271\\u0027=\\u00271\") { id } }"]]
    assert.same({ "query.1=x' OR '1'='1" }, json('{"query":' .. q .. '}'))
    assert.same({ "1.query.1=x' OR '1'='1", "2.query.1=x' OR '1'='1" },
      json('[{"query":' .. q .. '},{"query":' .. q .. '}]'))
    -- variables are JSON, decoded as JSON
    assert.same({ "query.1=a", "variables.n=x' OR 1" },
      json([[{"query":"query($n: String) { f(a: \"a\", n: $n) }","variables":{"n":"x\u0027 OR 1"}}]]))
    -- a document opening with a comment is still one
    assert.same({ "query.1=x' OR '1'='1", "query.2= c" }, json([[{"query":"# c\n]] .. q:sub(2) .. '}'))
  end)
end)
