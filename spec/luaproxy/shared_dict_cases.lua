-- The behaviour every proxy.shared dict has, engine binding (shared_spec.lua) and test
-- double (spec/proxy/test_shared_spec.lua) alike: OpenResty's ngx.shared.DICT results, and
-- the byte accounting of engine/shdict.h. `make(name, capacity)` returns an empty dict;
-- `advance(seconds)` moves the clock its TTLs read; busted's `it` and `assert` are passed in.
return function(it, assert, make, advance)
  local ENTRY, ITEM = 112, 48

  it("gets and sets strings, numbers and booleans, with flags", function()
    local d = make("a", 65536)
    assert.same({ true, nil, false }, { d:set("s", "hello", 0, 7) })
    assert.same({ "hello", 7 }, { d:get("s") })
    assert.is_true(d:set("n", 3.5))
    assert.same({ 3.5 }, { d:get("n") })
    assert.is_true(d:set("t", true))
    assert.is_true(d:set("f", false))
    assert.is_true(d:get("t"))
    assert.is_false(d:get("f"))
    assert.is_true(d:set("e", ""))
    assert.equal("", d:get("e"))
    assert.is_nil(d:get("none"))
    assert.is_true(d:set("s", nil)) -- nil deletes
    assert.is_nil(d:get("s"))
    assert.is_true(d:delete("n"))
    assert.is_nil(d:get("n"))
    assert.is_true(d:set(12, "num key")) -- keys are tostring'ed
    assert.equal("num key", d:get("12"))
  end)

  it("refuses bad keys and values with OpenResty's messages", function()
    local d = make("a", 65536)
    assert.same({ nil, "nil key" }, { d:get(nil) })
    assert.same({ nil, "empty key" }, { d:set("", 1) })
    assert.same({ nil, "key too long" }, { d:get(string.rep("k", 65536)) })
    assert.same({ nil, "bad value type" }, { d:set("k", {}) })
    assert.has_error(function() d:set("k", 1, -1) end, 'bad "exptime" argument')
    assert.has_error(function() d:set("k", 1, 0, "x") end, 'bad "flags" argument')
    assert.has_error(function() d.get("k") end)
  end)

  it("adds only when absent, replaces only when present", function()
    local d = make("a", 65536)
    assert.same({ false, "not found", false }, { d:replace("k", 1) })
    assert.same({ true, nil, false }, { d:add("k", 1) })
    assert.same({ false, "exists", false }, { d:add("k", 2) })
    assert.same({ false, "exists", false }, { d:safe_add("k", 2) })
    assert.same({ true, nil, false }, { d:replace("k", "two") })
    assert.equal("two", d:get("k"))
  end)

  it("decides rate limits by GCRA: rate, burst, refill, cost and retry times", function()
    local d = make("a", 65536)
    -- 10 per second with a burst of 2: three at once, then one every 0.1 s.
    for i = 1, 3 do
      local ok, remaining, retry = d:gcra("ip", 10, 1, 2)
      assert.is_true(ok)
      assert.equal(3 - i, remaining)
      assert.equal(0, retry)
    end
    local ok, remaining, retry, reset = d:gcra("ip", 10, 1, 2)
    assert.is_false(ok)
    assert.equal(0, remaining)
    assert.near(0.1, retry, 1e-6)
    assert.near(0.3, reset, 1e-6)
    advance(0.1)
    assert.is_true((d:gcra("ip", 10, 1, 2)))
    assert.is_false((d:gcra("ip", 10, 1, 2)))
    -- Refused requests are not counted; a look (cost 0) takes nothing.
    advance(0.3)
    ok, remaining = d:gcra("ip", 10, 1, 2, 0)
    assert.same({ true, 3 }, { ok, remaining })
    assert.is_true((d:gcra("ip", 10, 1, 2, 3)))
    ok, remaining, retry, reset = d:gcra("ip", 10, 1, 2, 0)
    assert.same({ true, 0, 0 }, { ok, remaining, retry })
    assert.near(0.3, reset, 1e-6)
    -- Keys are independent, and expire once their bucket is full again.
    assert.is_true((d:gcra("other", 10, 1, 2)))
    advance(1)
    assert.is_nil(d:get("ip"))
    -- A stored TAT further ahead than the limit allows (made under a slower rate, before a
    -- reload) is brought back to a bucket just emptied under the new limit: the next slot
    -- is one new interval away, not the old minutes.
    for _ = 1, 5 do d:gcra("slow", 1, 60, 4) end
    assert.is_false((d:gcra("slow", 1, 60, 4)))
    local allowed, _, wait = d:gcra("slow", 1000, 1, 100)
    assert.is_false(allowed)
    assert.near(0.001, wait, 1e-6)
    advance(0.001)
    assert.is_true((d:gcra("slow", 1000, 1, 100)))
    assert.has_error(function() d:gcra("k", 0) end, 'bad "rate" argument')
    assert.has_error(function() d:gcra("k", 1, -1) end, 'bad "period" argument')
    assert.has_error(function() d:gcra("k", 1, 1, -1) end, 'bad "burst" argument')
    assert.same({ nil, "empty key" }, { d:gcra("", 1) })
  end)

  it("increments, with init and init_ttl", function()
    local d = make("a", 65536)
    assert.same({ nil, "not found" }, { d:incr("c", 1) })
    assert.same({ 11, nil, false }, { d:incr("c", 1, 10, 5) })
    assert.same({ 8.5 }, { d:incr("c", -2.5) })
    assert.equal(5, d:ttl("c"))
    assert.same({ 9.5, nil, false }, { d:incr("c", "1", 0) })
    d:set("s", "x")
    assert.same({ nil, "not a number" }, { d:incr("s", 1, 0) })
    assert.has_error(function() d:incr("c", "x") end, 'cannot convert "value" to number')
    assert.has_error(function() d:incr("c", 1, nil, 5) end,
      'must provide "init" when providing "init_ttl"')
    advance(5)
    assert.same({ nil, "not found" }, { d:incr("c", 1) }) -- expired
    assert.same({ 1, nil, false }, { d:incr("c", 1, 0) })
    assert.equal(0, d:ttl("c"))
  end)

  it("expires on the clock; get_stale sees expired values until they are freed", function()
    local d = make("a", 65536)
    d:set("k", "v", 10, 3)
    assert.equal(10, d:ttl("k"))
    advance(4)
    assert.equal(6, d:ttl("k"))
    advance(6)
    assert.is_nil(d:get("k"))
    assert.same({ nil, "not found" }, { d:ttl("k") })
    assert.same({ "v", 3, true }, { d:get_stale("k") })
    assert.same({ false, "not found", false }, { d:replace("k", 1) })
    assert.is_true(d:add("k", "w"))
    assert.same({ "w", nil, false }, { d:get_stale("k") })
    assert.is_true(d:expire("k", 2))
    assert.equal(2, d:ttl("k"))
    assert.is_true(d:expire("k", 0)) -- never
    advance(100)
    assert.equal("w", d:get("k"))
    assert.same({ nil, "not found" }, { d:expire("none", 1) })
  end)

  it("flushes: flush_all marks expired, flush_expired frees", function()
    local d = make("a", 65536)
    for i = 1, 5 do d:set("e" .. i, i, 1) end
    d:set("keep", 1)
    advance(2)
    assert.equal(2, d:flush_expired(2))
    assert.equal(3, d:flush_expired())
    assert.equal(65536 - (ENTRY + 4), d:free_space())
    d:flush_all()
    assert.is_nil(d:get("keep"))
    assert.same({ 1, nil, true }, { d:get_stale("keep") })
    assert.same({}, d:get_keys())
    assert.equal(1, d:flush_expired(0))
    assert.equal(65536, d:free_space())
  end)

  it("accounts bytes exactly and evicts the least recently used, reporting forcible", function()
    local one = ENTRY + 3 + 100 -- "k01" and 100 bytes
    local d = make("a", 8192)
    local n = math.floor(8192 / one)
    local v = string.rep("x", 100)
    for i = 1, n do
      assert.same({ true, nil, false }, { d:set(("k%02d"):format(i), v) })
    end
    assert.equal(8192, d:capacity())
    assert.equal(8192 - n * one, d:free_space())
    assert.equal("x", d:get("k01"):sub(1, 1)) -- k01 is now the most recently used
    assert.same({ false, "no memory", false }, { d:safe_set("new", string.rep("y", 100)) })
    assert.same({ false, "no memory", false }, { d:safe_add("new", string.rep("y", 100)) })
    assert.same({ true, nil, true }, { d:set("new", string.rep("y", 100)) })
    assert.is_nil(d:get("k02")) -- the least recently used went
    assert.is_truthy(d:get("k01"))
    -- A value larger than the dict never fits.
    assert.same({ false, "no memory", false }, { d:set("huge", string.rep("z", 8192)) })
    -- A failed safe_set keeps the old value.
    assert.same({ false, "no memory", false }, { d:safe_set("k01", string.rep("z", 200)) })
    assert.equal(100, #d:get("k01"))
    -- incr on a full dict evicts too.
    local _, _, forcible = d:incr("counter", 1, 0)
    assert.is_true(forcible)
  end)

  it("keeps lists", function()
    local d = make("a", 65536)
    assert.equal(1, d:rpush("l", "one"))
    assert.equal(2, d:rpush("l", 2))
    assert.equal(3, d:lpush("l", "zero"))
    assert.equal(3, d:llen("l"))
    assert.equal(65536 - (ENTRY + 1 + 3 * ITEM + 3 + 4), d:free_space())
    assert.same({ nil, "value is a list" }, { d:get("l") })
    assert.same({ nil, "not a number" }, { d:incr("l", 1) })
    assert.equal("zero", d:lpop("l"))
    assert.equal(2, d:rpop("l"))
    assert.equal("one", d:rpop("l"))
    assert.is_nil(d:lpop("l"))
    assert.equal(0, d:llen("l"))
    assert.equal(65536, d:free_space())
    d:set("s", "x")
    assert.same({ nil, "value not a list" }, { d:lpush("s", 1) })
    assert.same({ nil, "value not a list" }, { d:lpop("s") })
    assert.same({ nil, "value not a list" }, { d:llen("s") })
    assert.same({ nil, "bad value type" }, { d:rpush("l", true) })
  end)

  it("lists keys, at most max (1024 by default, 0: all)", function()
    local d = make("a", 1048576)
    for i = 1, 1100 do d:set("k" .. i, i) end
    assert.equal(1024, #d:get_keys())
    assert.equal(1100, #d:get_keys(0))
    assert.equal(10, #d:get_keys(10))
    local seen = {}
    for _, k in ipairs(d:get_keys(0)) do seen[k] = true end
    assert.is_true(seen.k1 and seen.k1100)
  end)
end
