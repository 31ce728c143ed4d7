return {
  -- Behind a load balancer at 10.0.0.0/8: the client is the X-Forwarded-For it adds.
  listen = { { address = "127.0.0.1:8080",
               real_ip = { trusted = { "10.0.0.0/8", "127.0.0.1" } } } },
  upstreams = {
    us = { targets = { "127.0.0.1:9001" } },
    eu = { targets = { "127.0.0.1:9002" } },
  },
  routes = {
    { match = { prefix = "/" }, upstream = "us",
      plugins = { { name = "geo_route", geoip_db = "/var/lib/GeoIP/GeoLite2-Country.mmdb",
                    countries = { DE = "eu", FR = "eu", US = "us" } } } },
  },
}
