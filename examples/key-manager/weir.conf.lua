-- The key-manager example: weir as its own OAuth2 server, the WSO2 flow.
--   ws://127.0.0.1:8080/echo          the EchoWebSocket API, version 1.0 (production: :9000, sandbox: :9001)
--   http://127.0.0.1:8080/oauth2/token   tokens for an application's consumer key and secret
--   http://127.0.0.1:9901             the admin API (token in admin.token, made by ./run)
return {
  workers = 2,
  listen = { { address = "127.0.0.1", port = 8080 } },
  admin = { address = "127.0.0.1", port = 9901, token_file = "admin.token" },
  state_dir = "state",                                   -- weir.db: applications, keys, subscriptions
  key_manager = { issuer = "http://127.0.0.1:8080", token_ttl = "1h" },
  tiers = {
    Gold   = { limits = { { frames = 100, per = "second" } } },
    Silver = { limits = { { frames = 10, per = "second" } }, action = "close" },
  },
  apis = {
    { name = "EchoWebSocket", context = "/echo",
      versions = {
        { version = "1.0", default = true,
          endpoints = { production = "ws://127.0.0.1:9000", sandbox = "ws://127.0.0.1:9001" },
          policies = {
            { "jwt", { key_manager = true } },       -- weir's own tokens
            { "subscription", {} },                   -- subscribed? under which tier?
            { "throttling", {} },                     -- that tier's limits
          } },
      } },
  },
}
