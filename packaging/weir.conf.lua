-- /etc/weir/weir.conf.lua — weir's configuration (a Lua file returning a table).
--
-- Every field: /usr/share/doc/weir/configuration.md (or docs/configuration.md
-- in the source tree). Check a change before applying it:
--
--   weir -t -c /etc/weir/weir.conf.lua          the configuration
--   weir -s reload -c /etc/weir/weir.conf.lua   apply it (systemctl reload weir does this)
--
-- This example serves one API, /echo, from a WebSocket backend on
-- 127.0.0.1:9000 that you provide, on 127.0.0.1:8080 only: change `listen`
-- to accept clients from elsewhere.
return {
  workers = "auto",

  -- weir -s finds the running weir by this file; the systemd unit makes
  -- /run/weir for it (RuntimeDirectory=weir)
  pid_file = "/run/weir/weir.pid",

  -- JSON lines; logrotate rotates this file (/etc/logrotate.d/weir) and
  -- SIGUSR1 makes weir reopen it. Without `file`, weir logs to standard
  -- error, which systemd sends to the journal.
  log = { file = "/var/log/weir/weir.log", level = "info" },

  listen = {
    { address = "127.0.0.1", port = 8080 },
  },

  limits = {
    max_connections = 10000,       -- each needs two file descriptors (LimitNOFILE in the unit)
    drain_timeout = 30,            -- keep below the unit's TimeoutStopSec (60 s)
  },

  apis = {
    { name = "echo", context = "/echo",
      versions = {
        { version = "1.0", default = true,
          endpoints = { production = "ws://127.0.0.1:9000" } },
      } },
  },
}
