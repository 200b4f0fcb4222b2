return { listen = { { address = "0.0.0.0", port = 8443, tls = { cert = "/nonexistent.pem", key = "/nonexistent.key" } } },
  apis = { { name = "e", context = "/e", versions = { { version = "1", default = true,
    endpoints = { production = { url = "wss://127.0.0.1:9443", ca = "/nonexistent-ca.pem" } } } } } } }
