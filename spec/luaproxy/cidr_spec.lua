local cidr = require "luaproxy.cidr"
local config = require "luaproxy.config"
local T = require "proxy.test"

describe("luaproxy.cidr", function()
  it("accepts networks and addresses as engine/realip.c reads them", function()
    for _, s in ipairs({ "10.0.0.0/8", "192.168.1.1", "0.0.0.0/0", "::1", "2001:db8::/32",
                         "::/0", "::ffff:10.0.0.0/104", "172.16.0.0/12" }) do
      assert.is_true(cidr.check(s), s)
    end
  end)

  it("refuses what is not one, saying why", function()
    local cases = {
      ["10.1.0.0/8"] = "bits set past the /8 prefix",
      ["10.0.0.0/33"] = "prefix length above 32",
      ["::/129"] = "prefix length above 128",
      ["10.0.0.0/"] = "bad prefix length",
      ["10.0.0.0/x"] = "bad prefix length",
      ["fe80::1%eth0"] = "is not an IP address",
      ["01.2.3.4"] = "is not an IP address",
      ["1.2.3"] = "is not an IP address",
      ["localhost"] = "is not an IP address",
      [""] = "is not an IP address",
    }
    for s, why in pairs(cases) do
      local ok, err = cidr.check(s)
      assert.is_nil(ok, s)
      assert.matches(why, err, 1, true)
    end
    assert.is_nil((cidr.check(42)))
  end)
end)

describe("listen.real_ip and listen.proxy_protocol", function()
  local function check(listen)
    return config.check({ listen = { listen }, routes = {} })
  end

  it("fill their defaults", function()
    local c = assert(check({ address = ":80", real_ip = { trusted = { "10.0.0.0/8" } } }))
    assert.equal("X-Forwarded-For", c.listen[1].real_ip.header)
    assert.is_false(c.listen[1].proxy_protocol)
    assert.is_nil(c.listen[1].real_ip.proxy_protocol)
    local plain = assert(check({ address = ":80" }))
    assert.is_nil(plain.listen[1].real_ip)
  end)

  it("name the key of a bad value", function()
    local _, err = check({ address = ":80", real_ip = { trusted = { "::1", "10.1.0.0/8" } } })
    assert.matches("listen[1].real_ip.trusted[2]: ", err, 1, true)
    _, err = check({ address = ":80", real_ip = { trusted = {} } })
    assert.matches("listen[1].real_ip.trusted", err, 1, true)
    _, err = check({ address = ":80", real_ip = {} })
    assert.matches("listen[1].real_ip.trusted: required field missing", err, 1, true)
    _, err = check({ address = ":80", real_ip = { trusted = { "::1" }, header = "a b" } })
    assert.matches("listen[1].real_ip.header", err, 1, true)
    _, err = check({ address = ":80", proxy_protocol = 1 })
    assert.matches("listen[1].proxy_protocol: expected a boolean", err, 1, true)
  end)
end)

describe("proxy.test's peer_ip", function()
  it("defaults to client_ip and can differ", function()
    local r = T.request({ client_ip = "203.0.113.9" })
    assert.equal("203.0.113.9", r:peer_ip())
    r = T.request({ client_ip = "203.0.113.9", peer_ip = "10.0.0.2" })
    assert.equal("203.0.113.9", r:client_ip())
    assert.equal("10.0.0.2", r:peer_ip())
    assert.equal("10.0.0.2", r:var("realip_remote_addr"))
    assert.equal("10.0.0.2", r:var("peer_ip"))
  end)
end)
