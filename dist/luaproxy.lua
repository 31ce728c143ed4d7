-- /etc/luaproxy/luaproxy.lua: a starting point for a luaproxy run by systemd
-- (dist/luaproxy.service). Installed as PREFIX/share/luaproxy/examples/luaproxy.lua; copy it
-- to /etc/luaproxy/luaproxy.lua and edit. Check it with `luaproxy -t -c FILE` before a
-- reload. Every key is in the README's table ("Configuration").
return {
  -- workers = 4,                                -- default: one per CPU
  listen = { { address = "0.0.0.0:8080" } },     -- ports below 1024 work too: the unit grants
                                                 -- CAP_NET_BIND_SERVICE
  upstreams = {
    app = { targets = { "127.0.0.1:9001" } },
  },
  routes = {
    { match = { prefix = "/" }, upstream = "app" },
  },
  -- Bundled plugins (PREFIX/share/luaproxy/plugins, docs in PREFIX/share/doc/luaproxy):
  -- an id on every request, echoed to the client and sent upstream.
  plugins = { { name = "request_id" } },
  -- "-" is stdout, which systemd sends to the journal. For a file, use the directory the
  -- unit makes writable: access = "/var/log/luaproxy/access.log" (reopened on SIGUSR1).
  log = { access = "-", level = "info" },
  -- The unit's TimeoutStopSec (35 s) leaves this drain 5 s to spare: raise both together.
  timeouts = { drain = 30 },
  -- With the admin API, `luaproxy -s reload -c /etc/luaproxy/luaproxy.lua` reports a failed
  -- reload's error; `systemctl reload luaproxy` sends SIGHUP, and a failure goes to the log.
  -- admin = { address = "127.0.0.1:9901" },
  -- pid_file = "/run/luaproxy/luaproxy.pid",     -- /run/luaproxy is the unit's RuntimeDirectory
}
