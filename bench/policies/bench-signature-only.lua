--- bench-signature-only: a bench-only policy whose on_handshake checks one
-- RS256 signature and does nothing else.
--
-- At start-up it reads a JWKS file and the first token of a wsload -T file
-- (`Authorization: Bearer <token>` lines), splits the token and decodes its
-- signature once; then every handshake verifies that same signature with the
-- key, through the prepared context `jwt` itself uses (jose.verify). No
-- header is read, nothing is decoded, no claim checked, nothing cached.
-- bench/run's "weir + RS256 signature only" row is the floor of a jwt
-- handshake with a cold cache: the handshake-only chain's fixed cost plus
-- the signature, with the same bytes on the wire as "weir + jwt (cache
-- cold)" (wsload sends the same -T file). What the cold row costs above it
-- is jwt's own work on the token.

local weir = require "weir"
local jose = require "weir.jose"

local _M = {
    name     = "bench-signature-only",
    priority = 10,
    schema   = {
        { name = "jwks_file", type = "path", required = true },
        { name = "token_file", type = "path", required = true },
    },
}

function _M.init(conf)
    local text, err = weir.read_file(conf.jwks_file)
    if not text then return nil, "cannot read the JWKS file: " .. tostring(err) end
    local ks, kerr = jose.jwks(text)
    if not ks then return nil, conf.jwks_file .. ": " .. tostring(kerr) end
    local lines = weir.read_file(conf.token_file)
    local tok = lines and lines:match("Bearer ([%w_%-]+%.[%w_%-]+%.[%w_%-]+)")
    if not tok then return nil, conf.token_file .. ": no bearer token on its first line" end
    local input, sig = tok:match("^(.*)%.([^.]+)$")
    conf._key, conf._input, conf._sig = ks.keys[1], input, jose.b64url_decode(sig)
    if not (conf._key and conf._sig and jose.verify(conf._key, "RS256", conf._input, conf._sig)) then
        return nil, "the token's RS256 signature does not verify with the JWKS's first key"
    end
    return true
end

function _M.on_handshake(ctx, conf)      -- luacheck: no unused args
    if not jose.verify(conf._key, "RS256", conf._input, conf._sig) then
        return weir.error("/problems/unauthorized", "Token signature is not valid", 401)
    end
end

return _M
