return {
  workers = 2, pid_file = "/tmp/weir-fuzz.pid",
  listen = { { address = "127.0.0.1", port = 8080 }, { address = "::1", port = 8081 } },
  log = { level = "debug" },
  limits = { max_message_size = "1m", ping_interval = "20s", ping_timeout = "10s", idle_timeout = 0,
             send_timeout = "30s", drain_timeout = "5s", drain_rate = 100, handshake_timeout = "5s" },
  state = { redis = "redis://:pw@127.0.0.1:6380/2", timeout = "250ms", sync_interval = "50ms", key_prefix = "w:" },
  tiers = { Gold = { limits = { { frames = 10, per = "second", burst = 5 } } }, Unlimited = { limits = {} } },
  apis = {
    { name = "Market", context = "/market", unknown_version = "404",
      versions = {
        { version = "v1", default = true,
          endpoints = { production = "ws://127.0.0.1:9000/feed?x=1", sandbox = "ws://[::1]:9001/s" } },
        { version = "v2", endpoints = { production = "wss://127.0.0.1:9443/" } },
      } },
    { name = "Chat", context = "/a/b/chat", versions = { { version = "1.0", endpoints = { production = "ws://localhost:9002" } } } },
  },
}
