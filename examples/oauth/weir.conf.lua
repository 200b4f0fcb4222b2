-- The OAuth2 example: one API whose clients authenticate with JWTs.
--   ws://127.0.0.1:8080/chat       → the echo backend on :9000
-- Keys: keys/jwks.json, made by ./run (the "identity provider" is
-- ./mint, which signs tokens with keys/rsa.pem).
return {
  workers = 2,
  listen = { { address = "127.0.0.1", port = 8080 } },
  limits = { idle_timeout = 600, ping_interval = 30 },
  apis = {
    { name = "Chat", context = "/chat",
      versions = {
        { version = "1.0", default = true,
          endpoints = { production = "ws://127.0.0.1:9000" },
          policies = {
            -- browsers: only the example page; other clients send no Origin
            { "origin", { allow = { "http://127.0.0.1:8000" }, allow_missing = true } },
            { "jwt", {
                jwks_file = "keys/jwks.json",
                issuer = "https://idp.example.test",
                audience = "chat",
                expiry_warning = 20,
                headers = { ["X-User"] = "sub", ["X-App"] = "azp" },
                revocation_file = "revoked.txt",
            } },
          } },
      } },
  },
}
