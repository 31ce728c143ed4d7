return {
  listen = { { address = "127.0.0.1:8080" } },
  upstreams = {
    v1 = { targets = { "127.0.0.1:9001" } },
    v2 = { targets = { "127.0.0.1:9002" } },
  },
  routes = {
    -- An explicit version: the Accept-Version header, or the vendor media type.
    { name = "v2", match = { prefix = "/api/", headers = { ["Accept-Version"] = "2" } },
      upstream = "v2" },
    { name = "v2-media", match = { prefix = "/api/",
        header_regex = { Accept = [[application/vnd\.shop\.v2\+json]] } }, upstream = "v2" },
    { name = "v1", match = { prefix = "/api/", headers = { ["Accept-Version"] = "1" } },
      upstream = "v1" },
    -- No version asked: the oldest one still served, and say so.
    { name = "default", match = { prefix = "/api/" }, upstream = "v1",
      plugins = { { name = "headers", response = { set = { ["X-API-Version"] = "1" } } } } },
  },
}
