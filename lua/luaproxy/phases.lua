-- Which request-handle methods each phase allows. The engine's handle (luaproxy.request)
-- and the test double (proxy.test) both check calls against this one table, so a plugin
-- that passes its specs fails the same way in the proxy.
local M = {}

-- Phases in the order they run for one request.
M.order = { "request", "upstream", "response", "response_body", "log" }

local REQ_READ = { request = true, upstream = true, response = true, response_body = true, log = true }
local REQ_WRITE = { request = true, upstream = true }
local RESP_READ = { response = true, response_body = true, log = true }
local RESP_WRITE = { response = true }

M.methods = {
  -- request, readable everywhere
  method = REQ_READ, path = REQ_READ, uri = REQ_READ, query = REQ_READ, args = REQ_READ,
  header = REQ_READ, headers = REQ_READ, host = REQ_READ, scheme = REQ_READ,
  client_ip = REQ_READ, http_version = REQ_READ, var = REQ_READ, phase = REQ_READ,
  upstream_name = REQ_READ, tls = REQ_READ,
  -- request, changeable before it goes upstream
  set_header = REQ_WRITE, add_header = REQ_WRITE, clear_header = REQ_WRITE,
  set_path = REQ_WRITE, set_upstream = REQ_WRITE, set_target = REQ_WRITE,
  set_hash_key = REQ_WRITE,
  last_failure = { upstream = true },
  body = { request = true },
  -- local answers end the request: before the upstream answered
  respond = REQ_WRITE, redirect = REQ_WRITE,
  -- response
  status = RESP_READ, resp_header = RESP_READ, resp_headers = RESP_READ,
  set_status = RESP_WRITE, set_resp_header = RESP_WRITE, add_resp_header = RESP_WRITE,
  clear_resp_header = RESP_WRITE,
  upstream_addr = { response = true, response_body = true, log = true },
}

-- Raises the error a plugin author sees when calling `name` in the wrong phase.
function M.check(name, phase)
  local allowed = M.methods[name]
  if not allowed then
    error("req:" .. name .. "() does not exist", 3)
  end
  if not allowed[phase] then
    local list = {}
    for _, p in ipairs(M.order) do
      if allowed[p] then list[#list + 1] = p end
    end
    error(string.format("req:%s() cannot be called in the %s phase (allowed: %s)",
      name, tostring(phase), table.concat(list, ", ")), 3)
  end
end

return M
