-- The throttling example: one API behind key-auth and throttling, two tiers.
--   Gold:   1000 messages a minute and 10 MiB a minute, both directions added up
--   Silver: 5 messages a minute from the client; more are dropped and the
--           client is told (/problems/throttled, at most once a second)
return {
  workers = 2,
  listen = { { address = "127.0.0.1", port = 8080 } },
  tiers = {
    Gold   = { limits = { { frames = 1000, per = "minute" }, { bytes = "10m", per = "minute" } } },
    Silver = { limits = { { frames = 5, per = "minute", direction = "in" } }, action = "drop" },
  },
  apis = {
    { name = "Echo", context = "/echo",
      versions = {
        { version = "1.0", default = true,
          endpoints = { production = "ws://127.0.0.1:9000" },
          policies = {
            { "key-auth", { keys_file = "keys.txt" } },
            { "throttling", { level = "subscription", max_connections = { application = 10 } } },
          } },
      } },
  },
}
