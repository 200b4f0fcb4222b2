return { listen = { { address = "127.0.0.1", port = 8080 }, apis = {
