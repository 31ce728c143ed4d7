-- basic_auth: HTTP Basic authentication (RFC 7617) against users from the config or an
-- htpasswd file (bcrypt, SHA-crypt, apr1, {SHA}, or plain passwords in the config), read
-- with the config so that a reload re-reads it. Sets req.ctx.consumer.
-- Docs: docs/plugins/basic_auth.md.
local crypto = require "luaproxy.crypto"
local common = require "luaproxy.auth_common"

local find, sub, format = string.find, string.sub, string.format
local ipairs, next = ipairs, next

local P = {
  name = "basic_auth",
  -- With the other auth plugins: below redirect, above the router (a refusal costs no
  -- routing), below request_id (refusals carry an id).
  priority = 2430,
}

P.schema = {
  fields = common.with_fields({
    users = {
      type = "array", default = {}, secret = true,
      description = "users: { username =, password = (plain) or hash = (bcrypt $2y$/$2b$/$2a$, "
        .. "SHA-crypt $5$/$6$, apr1 $apr1$, {SHA}), consumer = id (default: the username) }",
      elements = {
        type = "record",
        fields = {
          username = { type = "string", required = true, min = 1, pattern = "^[^:]*$",
                       description = "the user name (no colon)" },
          password = { type = "string", secret = true, description = "plain password" },
          hash = { type = "string", secret = true, description = "password hash" },
          consumer = { type = "string", min = 1,
                       description = "consumer id (req.ctx.consumer.id); default: the username" },
        },
      },
    },
    htpasswd = {
      type = "string", min = 1,
      description = "htpasswd file (`user:hash` lines, # comments), relative to the config "
        .. "file; read when the config loads and on every reload",
    },
    max_header = {
      type = "integer", default = 4096, min = 16,
      description = "longest Authorization header considered (bytes); a longer one is refused",
    },
    cache_ttl = {
      type = "duration", default = 300,
      description = "seconds a verified username and password stays verified in this worker "
        .. "without hashing again (0: never cached): bcrypt is slow by design",
    },
    cache_size = {
      type = "integer", default = 4096, min = 1,
      description = "most verified credentials kept per worker (the oldest batch goes first)",
    },
  }),
}

local function read_htpasswd(path, users)
  local rt = package.loaded["luaproxy.runtime"]
  if sub(path, 1, 1) ~= "/" and rt and rt.config_dir then path = rt.config_dir .. "/" .. path end
  local f, err = io.open(path, "rb")
  if not f then return nil, "htpasswd: " .. tostring(err) end
  local n = 0
  for line in f:lines() do
    n = n + 1
    line = line:gsub("\r$", "")
    if not find(line, "^%s*#") and find(line, "%S") then
      local user, hash = line:match("^([^:]+):(.+)$")
      if not user then
        f:close()
        return nil, format("htpasswd: %s:%d: expected user:hash", path, n)
      end
      if not crypto.hash_kind(hash) then
        f:close()
        return nil, format("htpasswd: %s:%d: unsupported hash (bcrypt, $5$, $6$, $apr1$, {SHA})",
          path, n)
      end
      local c = common.consumer(user, "basic_auth")
      c.username = user
      users[user] = { hash = hash, consumer = c, fast = hash:sub(1, 5) == "{SHA}" }
    end
  end
  f:close()
  return true
end

function P.compile(conf)
  common.compile(conf)
  local users = {}
  for i, u in ipairs(conf.users) do
    if (u.password == nil) == (u.hash == nil) then
      return nil, format("users[%d]: give either password or hash", i)
    end
    if u.hash and not crypto.hash_kind(u.hash) then
      return nil, format("users[%d].hash: unsupported hash (bcrypt, $5$, $6$, $apr1$, {SHA})", i)
    end
    users[u.username] = { password = u.password, hash = u.hash,
                          fast = u.hash ~= nil and u.hash:sub(1, 5) == "{SHA}",
                          consumer = common.consumer(u.consumer or u.username, "basic_auth") }
    users[u.username].consumer.username = u.username
  end
  if conf.htpasswd then
    local ok, err = read_htpasswd(conf.htpasswd, users)
    if not ok then return nil, err end
  end
  if next(users) == nil then return nil, "users: at least one user (or an htpasswd file) is needed" end
  conf.users_by_name = users
  conf.challenge = { ["WWW-Authenticate"] = format('Basic realm="%s", charset="UTF-8"', conf.realm),
                     ["Content-Type"] = "text/plain" }
  -- Verified credentials: digest of user and password -> expiry (this worker, this load).
  conf.cache, conf.cache_n = {}, 0
  return conf
end

local m_refused, m_checks -- on GET /metrics
local BUSY_HEADERS = { ["Content-Type"] = "text/plain", ["Retry-After"] = "1" }

function P.init_worker()
  m_refused = proxy.metrics.counter("basic_auth_refused_total",
    "Requests basic_auth refused, by reason.", { "reason" })
  m_checks = proxy.metrics.counter("basic_auth_password_checks_total",
    "Passwords checked against a hashed entry, by how: cache (remembered) or hash (computed).",
    { "by" })
end

local function refuse(req, conf, reason)
  if m_refused then m_refused:inc(1, reason) end
  -- The credentials are never logged: the reason and the client only.
  proxy.log.info(format("basic_auth: refused %s: %s", req:client_ip(), reason))
  common.clear_consumer(req, conf)
  return req:respond(401, "unauthorized\n", conf.challenge)
end

-- Whether pw is user u's password; cached for hashes.
local function check(conf, name, u, pw)
  if u.password then return crypto.equal(pw, u.password) end
  local ttl = conf.cache_ttl
  local key, now
  if ttl > 0 then
    key = crypto.digest(256, name .. "\0" .. pw)
    now = proxy.monotonic()
    local exp = conf.cache[key]
    if exp and exp > now then
      if m_checks then m_checks:inc(1, "cache") end
      return true
    end
  end
  if m_checks then m_checks:inc(1, "hash") end
  local ok, err
  if u.fast then
    ok = crypto.passwd_verify(pw, u.hash)
  else
    -- bcrypt, SHA-crypt, MD5-crypt: on the thread pool, the worker serves others meanwhile.
    ok, err = crypto.passwd_verify_async(pw, u.hash)
    if ok == nil and err == "busy" then return nil, "busy" end
  end
  if ok and key then
    if conf.cache_n >= conf.cache_size then conf.cache, conf.cache_n = {}, 0 end
    if not conf.cache[key] then conf.cache_n = conf.cache_n + 1 end
    conf.cache[key] = now + ttl
  end
  return ok == true
end

function P.request(req, conf)
  local h = req:header("Authorization")
  if not h then return refuse(req, conf, "no credentials") end
  if #h > conf.max_header then return refuse(req, conf, "header too long") end
  -- "Basic" (any case), one or more spaces, the token68.
  local s, e = find(h, "^[Bb][Aa][Ss][Ii][Cc] +")
  if not s then return refuse(req, conf, "not Basic") end
  local decoded = crypto.b64_decode((h:gsub("%s+$", "", 1)):sub(e + 1))
  if not decoded or decoded == "" then return refuse(req, conf, "bad base64") end
  local colon = find(decoded, ":", 1, true)
  if not colon then return refuse(req, conf, "no colon") end
  local name, pw = sub(decoded, 1, colon - 1), sub(decoded, colon + 1)
  local u = conf.users_by_name[name]
  if not u then
    -- The same work as a plain password's check, so that a wrong name is not told apart
    -- from a wrong password by time (for hashed users a name check is far quicker than
    -- a hash: that difference stays, as in Apache's and nginx's).
    crypto.equal(pw, name)
    return refuse(req, conf, "unknown user or wrong password")
  end
  local ok, busy = check(conf, name, u, pw)
  if busy then
    proxy.log.warn("basic_auth: too many password checks in flight; answering 503")
    return req:respond(503, "busy\n", BUSY_HEADERS)
  end
  if not ok then return refuse(req, conf, "unknown user or wrong password") end
  if conf.hide_credentials then req:clear_header("Authorization") end
  common.set_consumer(req, conf, u.consumer)
end

return P
