-- The echo example: one API, two versions, each on its own echo backend.
--   ws://127.0.0.1:8080/echo       → version 1.0 (the default)
--   ws://127.0.0.1:8080/echo/2.0   → version 2.0
return {
  workers = 2,
  listen = { { address = "127.0.0.1", port = 8080 } },
  limits = { max_message_size = "1m", idle_timeout = 600, ping_interval = 30 },
  apis = {
    { name = "EchoWebSocket", context = "/echo",
      versions = {
        { version = "1.0", default = true,
          endpoints = { production = "ws://127.0.0.1:9000" } },
        { version = "2.0",
          endpoints = { production = "ws://127.0.0.1:9001" } },
      } },
  },
}
