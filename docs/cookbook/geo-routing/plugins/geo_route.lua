-- geo_route: sends a request to the upstream of its client's country (a MaxMind-format
-- database, read with the engine's GeoIP reader, the one ip_filter uses); other countries
-- and unknown addresses keep the route's upstream. The country goes upstream in a header.
local ffi = require "ffi"
local C = require "luaproxy.native"

local P = {
  name = "geo_route",
  priority = 1700,
  schema = {
    fields = {
      geoip_db = { type = "string", required = true,
                   description = "a MaxMind-format database (GeoLite2-Country.mmdb)" },
      countries = { type = "map", required = true, keys = { type = "string", pattern = "^%u%u$" },
                    values = { type = "upstream" },
                    description = "ISO 3166 code -> upstream" },
      header = { type = "string", default = "X-Country",
                 description = "request header the country is sent in (\"\": none)" },
    },
  },
}

function P.compile(conf)
  local err = ffi.new("char[512]")
  local db = C.lp_ffi_geoip_open(conf.geoip_db, err, 512)
  if db == nil then return nil, conf.geoip_db .. ": " .. ffi.string(err) end
  conf.db = ffi.gc(db, C.lp_ffi_geoip_close)
  return conf
end

local cc = ffi.new("char[3]")

function P.request(req, conf)
  local ip = req:client_ip()
  if C.lp_ffi_geoip_country(conf.db, ip, #ip, cc) ~= 1 then return end
  local country = ffi.string(cc, 2)
  if conf.header ~= "" then req:set_header(conf.header, country) end
  local upstream = conf.countries[country]
  if upstream then req:set_upstream(upstream) end
end

return P
