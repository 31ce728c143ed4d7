-- canary: sends a request to the canary upstream when it asks for it (a header or a
-- cookie), or when its user falls in the canary's share (a stable hash of a user id, so a
-- user stays on one side). Everything else keeps the route's upstream.
local P = {
  name = "canary",
  priority = 1600,
  schema = {
    fields = {
      upstream = { type = "upstream", required = true, description = "the canary's upstream" },
      header = { type = "string", default = "X-Canary",
                 description = "request header: \"1\" forces the canary, \"0\" the stable side" },
      cookie = { type = "string", default = "canary",
                 description = "cookie: \"1\" forces the canary, \"0\" the stable side" },
      percent = { type = "number", default = 0, min = 0, max = 100,
                  description = "share of users sent to the canary" },
      user_header = { type = "string", default = "X-User-Id",
                      description = "header naming the user (else the client address)" },
    },
  },
}

local function cookie(req, name)
  local c = req:header("Cookie")
  if c then return ("; " .. c):match("[;%s]" .. name:gsub("%p", "%%%0") .. "=([^;]*)") end
end

-- A stable bucket 0..99 for a user id.
local function bucket(s)
  local h = 0
  for i = 1, #s do h = (h * 31 + s:byte(i)) % 4294967296 end
  return h % 100
end

function P.request(req, conf)
  local want = req:header(conf.header) or cookie(req, conf.cookie)
  if want == nil then
    local user = req:header(conf.user_header) or req:client_ip()
    want = bucket(user) < conf.percent and "1" or "0"
  end
  if want == "1" then req:set_upstream(conf.upstream) end
end

return P
