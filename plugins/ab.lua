-- ab: splits traffic between upstreams ("arms") by weight, sticky by cookie, header or client
-- address, with overrides for testers. Docs: docs/plugins/ab.md.
local find, sub, byte = string.find, string.sub, string.byte
local random = math.random
local bit = require "bit"
local bxor, lshift, tobit = bit.bxor, bit.lshift, bit.tobit
local ipairs = ipairs

local TOKEN_OR_EMPTY = "^[%w!#$%%&'*+%-.^_`|~]*$"

local function check_arms(arms)
  local seen, total = {}, 0
  for i, arm in ipairs(arms) do
    if seen[arm.name] then return nil, "arm name " .. arm.name .. " is used twice" end
    seen[arm.name] = true
    total = total + arm.weight
    if i > 1000 then return nil, "at most 1000 arms" end
  end
  if total <= 0 then return nil, "the weights add up to 0" end
  return true
end

local P = {
  name = "ab",
  priority = 1500,
  schema = {
    fields = {
      arms = {
        type = "array", required = true, min = 1, custom = check_arms,
        description = "the variants: each routes to an upstream and gets weight/sum of weights "
          .. "of the traffic",
        elements = {
          type = "record",
          fields = {
            name = { type = "string", required = true, pattern = "^[%w_%-%.]+$",
                     description = "arm name (letters, digits, _ - .), in ctx.ab_arm and the cookie" },
            upstream = { type = "upstream", required = true, description = "upstream for this arm" },
            weight = { type = "integer", default = 1, min = 0, max = 1000000,
                       description = "share of the traffic; 0 takes no new users" },
          },
        },
      },
      sticky = {
        type = "string", default = "cookie", one_of = { "cookie", "header", "ip", "none" },
        description = "how a user keeps their arm: cookie (set on first visit), header (hash "
          .. "of a header), ip (hash of the client address) or none (every request drawn)",
      },
      cookie = { type = "string", default = "lp_ab", pattern = "^[%w!#$%%&'*+%-.^_`|~]+$",
                 description = "cookie name for sticky = cookie" },
      cookie_ttl = { type = "integer", default = 86400, min = 0,
                     description = "cookie Max-Age in seconds" },
      header = { type = "string", default = "X-User-Id", pattern = "^[%w!#$%%&'*+%-.^_`|~]+$",
                 description = "request header hashed for sticky = header" },
      override_header = {
        type = "string", default = "X-AB-Arm", pattern = TOKEN_OR_EMPTY,
        description = "request header naming an arm to force (testers); \"\" disables",
      },
      override_query = {
        type = "string", default = "ab_arm",
        description = "query argument naming an arm to force (testers); \"\" disables",
      },
      response_header = {
        type = "string", pattern = "^[%w!#$%%&'*+%-.^_`|~]+$",
        description = "response header set to the arm name. Default: none",
      },
    },
  },
}

-- FNV-1a, 32 bits, as an unsigned number. The prime 16777619 is 2^24 + 403: splitting the
-- multiply keeps every intermediate exact in a double.
local function fnv1a(s)
  local h = tobit(2166136261)
  for i = 1, #s do
    h = bxor(h, byte(s, i))
    h = tobit(lshift(h, 24) + h * 403)
  end
  if h < 0 then h = h + 4294967296 end
  return h
end
P.fnv1a = fnv1a

function P.compile(conf)
  local arms, by_name, total = {}, {}, 0
  local attrs = "; Path=/; Max-Age=" .. conf.cookie_ttl .. "; HttpOnly"
  for i, a in ipairs(conf.arms) do
    total = total + a.weight
    local arm = {
      name = a.name, upstream = a.upstream, weight = a.weight, cum = total,
      set_cookie = conf.cookie .. "=" .. a.name .. attrs,
    }
    arms[i] = arm
    by_name[a.name] = arm
  end
  return {
    arms = arms, n = #arms, by_name = by_name, total = total, sticky = conf.sticky,
    cookie_key = conf.cookie .. "=", header = conf.header,
    override_header = conf.override_header ~= "" and conf.override_header or nil,
    override_query = conf.override_query ~= "" and conf.override_query or nil,
    response_header = conf.response_header,
  }
end

-- The arm owning point x of [0, total).
local function arm_at(conf, x)
  local arms = conf.arms
  for i = 1, conf.n do
    local arm = arms[i]
    if x < arm.cum then return arm end
  end
  return arms[conf.n]
end

local function pick_random(conf)
  return arm_at(conf, random() * conf.total)
end

local function pick_hash(conf, s)
  return arm_at(conf, fnv1a(s) % conf.total)
end
P.pick_random, P.pick_hash = pick_random, pick_hash

-- Value of cookie `key` ("name=") in a Cookie header, or nil.
local function cookie_value(h, key)
  local init = 1
  while true do
    local s, e = find(h, key, init, true)
    if not s then return nil end
    local before = s > 1 and byte(h, s - 1)
    if not before or before == 59 or before == 32 or before == 9 then -- start, ';', SP, HTAB
      local stop = find(h, ";", e + 1, true)
      return sub(h, e + 1, (stop or 0) - 1)
    end
    init = e + 1
  end
end
P.cookie_value = cookie_value

function P.request(req, conf)
  local by_name = conf.by_name
  local arm, forced
  local name = conf.override_header and req:header(conf.override_header)
  if name then arm = by_name[name] end
  if not arm and conf.override_query then
    name = req:query(conf.override_query)
    if name then arm = by_name[name] end
  end
  forced = arm ~= nil

  local sticky = conf.sticky
  local set_cookie = false
  if sticky == "cookie" then
    local h = req:header("Cookie")
    local current = h and cookie_value(h, conf.cookie_key)
    if not arm then
      arm = current and by_name[current]
      -- An arm taken down to weight 0 keeps nobody: its users are drawn again.
      if arm and arm.weight == 0 then arm = nil end
      if not arm then arm = pick_random(conf) end
    end
    set_cookie = current ~= arm.name
  elseif not forced then
    if sticky == "header" then
      local v = req:header(conf.header)
      arm = (v and v ~= "") and pick_hash(conf, v) or pick_random(conf)
    elseif sticky == "ip" then
      arm = pick_hash(conf, req:client_ip())
    else
      arm = pick_random(conf)
    end
  end

  req:set_upstream(arm.upstream)
  local ctx = req.ctx
  ctx.ab_arm = arm.name
  if set_cookie then ctx.ab_set_cookie = true end
end

function P.response(req, conf)
  local ctx = req.ctx
  local name = ctx.ab_arm
  if name == nil then return end
  if ctx.ab_set_cookie then
    req:add_resp_header("Set-Cookie", conf.by_name[name].set_cookie)
  end
  if conf.response_header then req:set_resp_header(conf.response_header, name) end
end

return P
