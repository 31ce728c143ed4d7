local T = require "proxy.test"
local ip_filter = require "ip_filter"

-- tests/fixtures/test-country.mmdb (made by tests/integration/mmdb_writer.py):
-- 192.0.2.0/24 FR, 198.51.100.0/24 DE, 198.51.100.128/25 US, 2001:db8::/32 JP,
-- 203.0.113.0/24 CN.
local DB = "tests/fixtures/test-country.mmdb"

describe("ip_filter plugin", function()
  before_each(function() T.reset() end)

  local function status(conf, ip)
    local res = T.run(ip_filter, conf, { client_ip = ip })
    return res.responded and res.status or 200
  end

  it("denies listed CIDRs, IPv4 and IPv6, and lets the rest through", function()
    local conf = { deny = { "10.0.0.0/8", "2001:db8::/32", "192.0.2.7" } }
    assert.equal(403, status(conf, "10.20.30.40"))
    assert.equal(403, status(conf, "2001:db8:1::1"))
    assert.equal(403, status(conf, "192.0.2.7"))
    assert.equal(200, status(conf, "192.0.2.8"))
    assert.equal(200, status(conf, "::1"))
  end)

  it("with an allow list denies what matches nothing, and the most specific entry wins", function()
    local conf = { allow = { "10.0.0.0/8", "10.1.2.3" }, deny = { "10.1.0.0/16" } }
    assert.equal(200, status(conf, "10.9.9.9"))
    assert.equal(403, status(conf, "10.1.9.9"))  -- deny /16 inside allow /8
    assert.equal(200, status(conf, "10.1.2.3"))  -- allow /32 inside deny /16
    assert.equal(403, status(conf, "11.0.0.1"))  -- not allowed
    -- The same prefix in both: deny.
    assert.equal(403, status({ allow = { "1.2.3.0/24" }, deny = { "1.2.3.0/24" } }, "1.2.3.4"))
  end)

  it("reads CIDR files with comments", function()
    local path = os.tmpname()
    local f = assert(io.open(path, "w"))
    f:write("# office\n192.0.2.0/24\n\n  198.51.100.0/24   # vpn\n")
    f:close()
    local conf = { allow_file = path }
    assert.equal(200, status(conf, "198.51.100.9"))
    assert.equal(403, status(conf, "203.0.113.1"))
    f = assert(io.open(path, "w"))
    f:write("192.0.2.0/24\nnot-a-cidr\n")
    f:close()
    assert.error_matches(function() T.run(ip_filter, conf, {}) end,
      path .. ':2: "not-a-cidr" is not an address or CIDR', 1, true)
    os.remove(path)
  end)

  it("filters by country from a MaxMind-format database", function()
    local conf = { geoip_db = DB, deny_countries = { "cn", "US" } }
    assert.equal(403, status(conf, "203.0.113.5"))
    assert.equal(403, status(conf, "198.51.100.200"))
    assert.equal(200, status(conf, "198.51.100.2"))
    assert.equal(200, status(conf, "10.0.0.1")) -- no country: not denied
    conf = { geoip_db = DB, allow_countries = { "FR", "JP" }, allow = { "10.0.0.0/8" } }
    assert.equal(200, status(conf, "192.0.2.1"))
    assert.equal(200, status(conf, "2001:db8::5"))
    assert.equal(200, status(conf, "10.0.0.1"))     -- allowed by address first
    assert.equal(403, status(conf, "198.51.100.2")) -- DE
    assert.equal(403, status(conf, "172.16.0.1"))   -- unknown country
  end)

  it("refuses nothing in dry_run, and never fails on odd addresses", function()
    local conf = { deny = { "10.0.0.0/8" }, dry_run = true }
    assert.equal(200, status(conf, "10.0.0.1"))
    assert.same({ "ip_filter: would refuse 10.0.0.1: address denied (dry run)" }, T.log_lines("info"))
    assert.equal(200, status({ deny = { "10.0.0.0/8" } }, "fe80::1%eth0"))
    assert.equal(403, status({ deny = { "fe80::/10" } }, "fe80::1%eth0"))
    assert.equal(403, status({ allow = { "10.0.0.0/8" } }, ""))
  end)

  it("rejects bad lists and settings with the key path", function()
    assert.error_matches(function() T.run(ip_filter, { deny = { "10.0.0.0/33" } }) end,
      'deny[1]: "10.0.0.0/33" is not an address or CIDR', 1, true)
    assert.error_matches(function() T.run(ip_filter, { allow = { "10.1.0.0/8" } }) end,
      'allow[1]: "10.1.0.0/8" has bits set past its prefix', 1, true)
    assert.error_matches(function() T.run(ip_filter, { deny_countries = { "FR" } }) end,
      "need geoip_db", 1, true)
    assert.error_matches(function() T.run(ip_filter, { geoip_db = "/nonexistent.mmdb" }) end,
      "geoip_db: /nonexistent.mmdb:", 1, true)
  end)
end)
