-- The custom-policy example: one API, a stock policy and an operator's own.
--   ws://127.0.0.1:8080/chat  → the echo backend on 127.0.0.1:9000
-- message-schema (stock, priority 900) refuses anything but chat and ping
-- messages; pong (policies/pong.lua, priority 500) answers the pings.
return {
  workers = 1,
  listen = { { address = "127.0.0.1", port = 8080 } },
  policy_paths = { "policies" },          -- relative to this file
  apis = {
    { name = "Chat", context = "/chat",
      versions = {
        { version = "1.0", default = true,
          endpoints = { production = "ws://127.0.0.1:9000" },
          policies = {
            { "message-schema", { types = { "chat", "ping" }, max_size = "16k" } },
            { "pong", {} },
          } },
      } },
  },
}
