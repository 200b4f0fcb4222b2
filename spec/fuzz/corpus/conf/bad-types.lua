return { workers = "two", listen = { { address = 7, port = 70000 } },
  apis = { { name = "", context = "nope", versions = { { version = 1, endpoints = { production = "http://x" } } } } } }
