--- JWS and JWK verification for the token policies: strict base64url, the
-- JWS compact form, JWKS import and signature checks with OpenSSL 3's
-- libcrypto through LuaJIT's FFI (no C of weir's own). And, for weir's own
-- token issuer (weir.issuer), ES256 signing: P-256 key generation, private
-- key loading, public JWKs and their RFC 7638 thumbprints, `encode`.
--
-- Nothing here reads the clock or judges claims (`exp`, `iss` ...): that is
-- the policy's job. The algorithm is never taken from a token alone: a key
-- allows a fixed set of algorithms (`key_allows`) and `verify` checks it.
--
-- Error strings are short and never contain the token, a signature or key
-- material, so a policy may log them.
--
-- Like `weir` itself it works inside a worker (libcrypto is already in the
-- process: `ffi.C`) and in a plain LuaJIT for unit specs (`ffi.load`).
--
-- @module weir.jose
-- @usage local jose = require "weir.jose"
-- local jws = assert(jose.decode(token))
-- local keys = assert(jose.jwks(jwks_text))
-- local key = keys.by_kid[jws.kid]
-- local ok, err = jose.verify(key, jws.alg, jws.signing_input, jws.signature)
-- local priv = assert(jose.private_key(assert(jose.generate_ec_p256())))
-- local token = assert(jose.encode({ kid = jose.public_jwk(priv).kid }, { sub = "svc" }, priv))

local ffi   = require "ffi"
local bit   = require "bit"
local cjson = require "cjson.safe"

local type, ipairs, pairs, tostring, tonumber, setmetatable, rawget, rawset =
    type, ipairs, pairs, tostring, tonumber, setmetatable, rawget, rawset
local byte, char, sub, find, format = string.byte, string.char, string.sub, string.find, string.format
local concat = table.concat
local band, bor, lshift, rshift = bit.band, bit.bor, bit.lshift, bit.rshift
local ffi_string, ffi_new, ffi_gc = ffi.string, ffi.new, ffi.gc

local _M = {
    --- `decode`'s default `max_len`, in bytes.
    MAX_TOKEN = 8192,
    --- Most keys `jwks` loads from one set; the rest are skipped.
    MAX_KEYS = 64,
    --- RSA moduli outside [MIN_RSA_BITS, MAX_RSA_BITS] are skipped.
    MIN_RSA_BITS = 2048,
    MAX_RSA_BITS = 8192,
}

-- Only opaque types: another module may declare the same functions (LuaJIT
-- accepts identical redeclarations) but a struct body declared twice fails.
ffi.cdef [[
    typedef struct evp_pkey_st EVP_PKEY;
    typedef struct evp_pkey_ctx_st EVP_PKEY_CTX;
    typedef struct evp_md_st EVP_MD;
    typedef struct evp_md_ctx_st EVP_MD_CTX;
    typedef struct engine_st ENGINE;
    typedef struct ossl_lib_ctx_st OSSL_LIB_CTX;

    EVP_PKEY *d2i_PUBKEY(EVP_PKEY **a, const unsigned char **pp, long length);
    void EVP_PKEY_free(EVP_PKEY *pkey);
    int EVP_PKEY_get_bits(const EVP_PKEY *pkey);
    int EVP_PKEY_get_base_id(const EVP_PKEY *pkey);

    EVP_MD *EVP_MD_fetch(OSSL_LIB_CTX *ctx, const char *algorithm, const char *properties);
    void EVP_MD_free(EVP_MD *md);
    EVP_MD_CTX *EVP_MD_CTX_new(void);
    void EVP_MD_CTX_free(EVP_MD_CTX *ctx);
    int EVP_MD_CTX_reset(EVP_MD_CTX *ctx);
    int EVP_DigestInit_ex(EVP_MD_CTX *ctx, const EVP_MD *type, ENGINE *impl);
    int EVP_DigestUpdate(EVP_MD_CTX *ctx, const void *d, size_t cnt);
    int EVP_DigestFinal_ex(EVP_MD_CTX *ctx, unsigned char *md, unsigned int *s);
    int EVP_DigestVerifyInit(EVP_MD_CTX *ctx, EVP_PKEY_CTX **pctx, const EVP_MD *type,
                             ENGINE *e, EVP_PKEY *pkey);
    int EVP_DigestVerify(EVP_MD_CTX *ctx, const unsigned char *sig, size_t siglen,
                         const unsigned char *tbs, size_t tbslen);
    int EVP_PKEY_CTX_set_rsa_padding(EVP_PKEY_CTX *ctx, int pad_mode);
    EVP_PKEY_CTX *EVP_PKEY_CTX_new(EVP_PKEY *pkey, ENGINE *e);
    void EVP_PKEY_CTX_free(EVP_PKEY_CTX *ctx);
    int EVP_PKEY_verify_init(EVP_PKEY_CTX *ctx);
    int EVP_PKEY_verify(EVP_PKEY_CTX *ctx, const unsigned char *sig, size_t siglen,
                        const unsigned char *tbs, size_t tbslen);
    int EVP_PKEY_CTX_set_signature_md(EVP_PKEY_CTX *ctx, const EVP_MD *md);
    int EVP_Digest(const void *data, size_t count, unsigned char *md, unsigned int *size,
                   const EVP_MD *type, ENGINE *impl);
    int EVP_PKEY_CTX_set_rsa_pss_saltlen(EVP_PKEY_CTX *ctx, int saltlen);

    unsigned char *HMAC(const EVP_MD *evp_md, const void *key, int key_len,
                        const unsigned char *data, size_t data_len,
                        unsigned char *md, unsigned int *md_len);
    int CRYPTO_memcmp(const void *a, const void *b, size_t len);
    unsigned char *SHA256(const unsigned char *d, size_t n, unsigned char *md);
    void ERR_clear_error(void);

    typedef struct bio_st BIO;
    typedef struct bio_method_st BIO_METHOD;
    typedef struct bignum_st BIGNUM;
    typedef struct evp_cipher_st EVP_CIPHER;

    EVP_PKEY_CTX *EVP_PKEY_CTX_new_from_name(OSSL_LIB_CTX *libctx, const char *name,
                                             const char *propquery);
    int EVP_PKEY_keygen_init(EVP_PKEY_CTX *ctx);
    int EVP_PKEY_CTX_set_group_name(EVP_PKEY_CTX *ctx, const char *name);
    int EVP_PKEY_generate(EVP_PKEY_CTX *ctx, EVP_PKEY **ppkey);
    int EVP_PKEY_get_group_name(const EVP_PKEY *pkey, char *name, size_t name_sz, size_t *gname_len);
    int EVP_PKEY_get_bn_param(const EVP_PKEY *pkey, const char *key_name, BIGNUM **bn);
    int BN_bn2binpad(const BIGNUM *a, unsigned char *to, int tolen);
    void BN_free(BIGNUM *a);
    int EVP_PKEY_sign_init(EVP_PKEY_CTX *ctx);
    int EVP_PKEY_sign(EVP_PKEY_CTX *ctx, unsigned char *sig, size_t *siglen,
                      const unsigned char *tbs, size_t tbslen);

    const BIO_METHOD *BIO_s_mem(void);
    BIO *BIO_new(const BIO_METHOD *type);
    BIO *BIO_new_mem_buf(const void *buf, int len);
    int BIO_free(BIO *a);
    long BIO_ctrl(BIO *bp, int cmd, long larg, void *parg);
    int PEM_write_bio_PKCS8PrivateKey(BIO *bp, const EVP_PKEY *x, const EVP_CIPHER *enc,
                                      const char *kstr, int klen, void *cb, void *u);
    EVP_PKEY *PEM_read_bio_PrivateKey(BIO *bp, EVP_PKEY **x, void *cb, void *u);
    int RAND_bytes(unsigned char *buf, int num);
]]

-- libcrypto: already in a worker's process; loaded by name in a plain LuaJIT
local C = ffi.C
if not pcall(function() return ffi.C.EVP_DigestVerify end) then C = ffi.load("libcrypto.so.3") end

local EVP_PKEY_RSA, EVP_PKEY_EC, EVP_PKEY_ED25519 = 6, 408, 1087  -- NIDs (obj_mac.h)
local RSA_PKCS1_PSS_PADDING = 6
local RSA_PSS_SALTLEN_DIGEST = -1  -- verify: the salt must be exactly the hash's length

---------------------------------------------------------------------------
-- base64url (RFC 4648 §5, unpadded as RFC 7515 §2 wants it)

-- ctypes made once: a cast given a C declaration as a string parses it on
-- every call the interpreter runs
local U8P = ffi.typeof("const uint8_t *")

local ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
local DEC = ffi_new("int16_t[256]")
for i = 0, 255 do DEC[i] = -1 end
for i = 1, 64 do DEC[byte(ALPHABET, i)] = i - 1 end
local ENC = ffi_new("uint8_t[64]", { byte(ALPHABET, 1, 64) })

local buf, buf_size = nil, 0
local function scratch(n)
    if n > buf_size then
        buf_size = n < 1024 and 1024 or n
        buf = ffi_new("uint8_t[?]", buf_size)
    end
    return buf
end

-- Decode S[I..J] (1-based, inclusive, as string.sub counts) strictly: see
-- b64url_decode. Four characters a step, and no substring of S is made.
-- SRC, when given, is S as a `const uint8_t *` (one cast for several parts).
local function b64_range(s, i, j, src)
    local n = j - i + 1
    if n < 0 then n = 0 end
    local rest = n % 4
    if rest == 1 then return nil, "bad base64url length" end
    local out = scratch(rshift(n * 3, 2) + 3)
    src = src or ffi.cast(U8P, s)
    local base = i - 1                     -- an index offset, not a new pointer
    local full, o = base + n - rest, 0
    for k = base, full - 1, 4 do
        local a, b, c, d = DEC[src[k]], DEC[src[k + 1]], DEC[src[k + 2]], DEC[src[k + 3]]
        if bor(a, b, c, d) < 0 then return nil, "bad base64url character" end
        local v = bor(lshift(a, 18), lshift(b, 12), lshift(c, 6), d)
        out[o], out[o + 1], out[o + 2] = rshift(v, 16), band(rshift(v, 8), 0xff), band(v, 0xff)
        o = o + 3
    end
    if rest == 2 then
        local a, b = DEC[src[full]], DEC[src[full + 1]]
        if bor(a, b) < 0 then return nil, "bad base64url character" end
        if band(b, 0x0f) ~= 0 then return nil, "bad base64url padding bits" end
        out[o] = bor(lshift(a, 2), rshift(b, 4))
        o = o + 1
    elseif rest == 3 then
        local a, b, c = DEC[src[full]], DEC[src[full + 1]], DEC[src[full + 2]]
        if bor(a, b, c) < 0 then return nil, "bad base64url character" end
        if band(c, 0x03) ~= 0 then return nil, "bad base64url padding bits" end
        local v = bor(lshift(a, 10), lshift(b, 4), rshift(c, 2))
        out[o], out[o + 1] = rshift(v, 8), band(v, 0xff)
        o = o + 2
    end
    return ffi_string(out, o)
end

--- Decode base64url strictly: the URL-safe alphabet only, no padding, no
-- whitespace, no length that no encoder produces (`#s % 4 == 1`) and no
-- stray bits in the last character (so each byte string has one encoding).
-- @tparam string s
-- @treturn[1] string the bytes
-- @treturn[2] nil
-- @treturn[2] string why
-- @usage local bytes, err = jose.b64url_decode("aGk")
function _M.b64url_decode(s)
    if type(s) ~= "string" then return nil, "not a string" end
    return b64_range(s, 1, #s)
end

--- Encode bytes as base64url without padding.
-- @tparam string s
-- @treturn string
-- @usage local part = jose.b64url_encode(sig)
function _M.b64url_encode(s)
    if type(s) ~= "string" then error("jose.b64url_encode(s): s must be a string", 2) end
    local n = #s
    local out = scratch(n * 2 + 4)
    local src = ffi.cast(U8P, s)
    local o, i = 0, 0
    while i + 2 < n do
        local v = bor(lshift(src[i], 16), lshift(src[i + 1], 8), src[i + 2])
        out[o], out[o + 1] = ENC[rshift(v, 18)], ENC[band(rshift(v, 12), 63)]
        out[o + 2], out[o + 3] = ENC[band(rshift(v, 6), 63)], ENC[band(v, 63)]
        o, i = o + 4, i + 3
    end
    if n - i == 2 then
        local v = bor(lshift(src[i], 16), lshift(src[i + 1], 8))
        out[o], out[o + 1], out[o + 2] = ENC[rshift(v, 18)], ENC[band(rshift(v, 12), 63)],
                                         ENC[band(rshift(v, 6), 63)]
        o = o + 3
    elseif n - i == 1 then
        local v = lshift(src[i], 16)
        out[o], out[o + 1] = ENC[rshift(v, 18)], ENC[band(rshift(v, 12), 63)]
        o = o + 2
    end
    return ffi_string(out, o)
end

---------------------------------------------------------------------------
-- JWS compact form (RFC 7515 §7.1)

local json = cjson.new()
json.decode_max_depth(32)
json.decode_invalid_numbers(false)  -- no NaN, Infinity or hex

-- TEXT decoded as a JSON object, or nil, err. cjson turns `{}` and `[]`
-- into the same empty table, so the text itself must open with `{`.
local function json_object(text, what)
    -- '{' first, as every encoder writes it; else whitespace may come before it
    if byte(text, 1) ~= 123 and not find(text, "^[ \t\r\n]*{") then return nil, what .. " is not a JSON object" end
    local t = json.decode(text)
    if type(t) ~= "table" then return nil, what .. " is not valid JSON" end
    return t
end

-- Decoded headers by their base64url text: an issuer's tokens mostly share
-- one header (alg, kid, typ), so its decoding and checks are done once.
-- Only headers that passed are kept, at most HEADERS_MAX of at most
-- HEADER_MAX_LEN characters (the set starts again when full).
local HEADERS_MAX, HEADER_MAX_LEN = 64, 512
local headers, n_headers = {}, 0

-- The header of a token from its base64url TEXT (nil when too long to
-- keep) and the bytes RAW it decodes to: { header =, alg =, kid = }, or nil
-- and why.
local function jws_header(text, raw)
    local header, err = json_object(raw, "header")
    if not header then return nil, err end
    local alg, kid = header.alg, header.kid
    if type(alg) ~= "string" or alg == "" then return nil, "header has no alg" end
    if kid ~= nil and (type(kid) ~= "string" or kid == "") then
        return nil, "header kid is not a non-empty string"
    end
    -- no extension is understood, so any critical one makes the token invalid
    -- (RFC 7515 §4.1.11); b64=false (RFC 7797) would change the signing input
    if header.crit ~= nil then return nil, "header crit is not supported" end
    if header.b64 ~= nil and header.b64 ~= true then return nil, "header b64 is not supported" end
    local h = { header = header, alg = alg, kid = kid }
    if text then
        if n_headers >= HEADERS_MAX then headers, n_headers = {}, 0 end
        n_headers = n_headers + 1
        headers[text] = h
    end
    return h
end

-- a decoded JWS makes its signing input when it is first asked for
local JWS = {
    __index = function(jws, k)
        if k == "signing_input" then
            local from = rawget(jws, "input_from")
            local v = sub(rawget(jws, "token"), from, from + rawget(jws, "input_len") - 1)
            rawset(jws, k, v)
            return v
        end
    end,
}

--- Split a JWS in compact form and decode its header and payload. Checks
-- the form only; the signature is checked by `verify`.
-- @tparam string token `header.payload.signature`
-- @tparam[opt=8192] number max_len longest token accepted, in bytes; checked
--  before anything else
-- @tparam[opt=1] number i the token is TOKEN[I..J] (e.g. inside a request
--  head, not copied out of it)
-- @tparam[opt=#token] number j
-- @treturn[1] table `{ header =, payload =, signing_input = "<h>.<p>",
--  signature = bytes, alg = header.alg, kid = header.kid }`. `header` is
--  shared by the tokens with the same header: read it, never change it.
--  `signing_input` is made when first read (`verify_decoded` never needs it).
-- @treturn[2] nil
-- @treturn[2] string why (never containing the token)
-- @usage local jws, err = jose.decode(token)
function _M.decode(token, max_len, i, j)
    if type(token) ~= "string" then return nil, "token is not a string" end
    max_len = max_len or _M.MAX_TOKEN
    i, j = i or 1, j or #token
    if i < 1 or j > #token then return nil, "token range outside the string" end
    if j - i + 1 > max_len then return nil, "token too long" end
    if j < i then return nil, "empty token" end
    local d1 = find(token, ".", i, true)
    if d1 and d1 > j then d1 = nil end
    local d2 = d1 and find(token, ".", d1 + 1, true)
    if d2 and d2 > j then d2 = nil end
    local d3 = d2 and find(token, ".", d2 + 1, true)
    if not d2 or d3 and d3 <= j then
        return nil, "token is not three dot-separated parts"
    end
    -- the same checks in the same order as decoding everything, then
    -- judging the header: its base64url, the payload's and the
    -- signature's, then the header's JSON and members, then the payload's
    local text = d1 - i <= HEADER_MAX_LEN and sub(token, i, d1 - 1) or nil
    local h = text and headers[text]
    local src = ffi.cast(U8P, token)
    local raw, err
    if not h then
        raw, err = b64_range(token, i, d1 - 1, src)
        if not raw then return nil, "header: " .. err end
    end
    local p_raw
    p_raw, err = b64_range(token, d1 + 1, d2 - 1, src)
    if not p_raw then return nil, "payload: " .. err end
    local sig
    sig, err = b64_range(token, d2 + 1, j, src)
    if not sig then return nil, "signature: " .. err end
    if not h then
        h, err = jws_header(text, raw)
        if not h then return nil, err end
    end
    local payload
    payload, err = json_object(p_raw, "payload")
    if not payload then return nil, err end

    return setmetatable({
        header = h.header, payload = payload, signature = sig, alg = h.alg, kid = h.kid,
        token = token, input_from = i, input_len = d2 - i,
    }, JWS)
end

---------------------------------------------------------------------------
-- JWK import
--
-- Public keys are imported by building their SubjectPublicKeyInfo in DER
-- here and handing it to d2i_PUBKEY: one small, stable, non-deprecated call
-- for every key type, no OSSL_PARAM arrays (structs, native-endian BIGNUM
-- buffers) to lay out through the FFI, and OpenSSL's decoder does the
-- checks that matter (an EC point must be on its curve).

local function der_len(n)
    if n < 0x80 then return char(n) end
    if n < 0x100 then return char(0x81, n) end
    return char(0x82, rshift(n, 8), band(n, 0xff))
end

local function der(tag, body) return char(tag) .. der_len(#body) .. body end

-- a DER INTEGER from unsigned big-endian bytes
local function der_uint(b)
    local i = 1
    while i < #b and byte(b, i) == 0 do i = i + 1 end
    b = sub(b, i)
    if byte(b, 1) >= 0x80 then b = "\0" .. b end
    return der(0x02, b)
end

-- AlgorithmIdentifiers, in DER
-- rsaEncryption (1.2.840.113549.1.1.1), NULL parameters (RFC 3279)
local ALG_RSA     = "\48\13\6\9\42\134\72\134\247\13\1\1\1\5\0"
-- id-ecPublicKey (1.2.840.10045.2.1) with the named curve (RFC 5480): prime256v1, secp384r1
local ALG_EC_P256 = "\48\19\6\7\42\134\72\206\61\2\1\6\8\42\134\72\206\61\3\1\7"
local ALG_EC_P384 = "\48\16\6\7\42\134\72\206\61\2\1\6\5\43\129\4\0\34"
-- id-Ed25519 (1.3.101.112), no parameters (RFC 8410)
local ALG_ED25519 = "\48\5\6\3\43\101\112"


local function spki(alg_id, key_bits)
    return der(0x30, alg_id .. der(0x03, "\0" .. key_bits))
end

local pp = ffi_new("const unsigned char *[1]")

-- an EVP_PKEY (freed by the GC) from a SubjectPublicKeyInfo, checked to be
-- of type NID, or nil
local function import_spki(info, nid)
    pp[0] = ffi.cast("const unsigned char *", info)
    local pkey = C.d2i_PUBKEY(nil, pp, #info)
    if pkey == nil then C.ERR_clear_error(); return nil end
    pkey = ffi_gc(pkey, C.EVP_PKEY_free)
    if C.EVP_PKEY_get_base_id(pkey) ~= nid then return nil end
    return pkey
end

local function bits_of(b)  -- significant bits of an unsigned big-endian number
    local i = 1
    while i <= #b and byte(b, i) == 0 do i = i + 1 end
    if i > #b then return 0 end
    local top, n = byte(b, i), 0
    while top > 0 do top, n = rshift(top, 1), n + 1 end
    return (#b - i) * 8 + n
end

local function b64_member(jwk, name)
    local v = jwk[name]
    if type(v) ~= "string" then return nil, "no " .. name end
    local b, err = _M.b64url_decode(v)
    if not b then return nil, name .. ": " .. err end
    return b
end

local EC_CURVES = {
    ["P-256"] = { size = 32, alg_id = ALG_EC_P256 },
    ["P-384"] = { size = 48, alg_id = ALG_EC_P384 },
}

local importers = {}

function importers.RSA(jwk)
    local n, err = b64_member(jwk, "n")
    if not n then return nil, err end
    local e
    e, err = b64_member(jwk, "e")
    if not e then return nil, err end
    local bits = bits_of(n)
    if bits < _M.MIN_RSA_BITS then return nil, format("RSA modulus of %d bits is too short", bits) end
    if bits > _M.MAX_RSA_BITS then return nil, format("RSA modulus of %d bits is too long", bits) end
    local ebits = bits_of(e)
    if ebits < 2 or ebits > 64 or band(byte(e, #e), 1) == 0 then return nil, "bad RSA exponent" end
    local pkey = import_spki(spki(ALG_RSA, der(0x30, der_uint(n) .. der_uint(e))), EVP_PKEY_RSA)
    if not pkey then return nil, "RSA key rejected by OpenSSL" end
    return { pkey = pkey, bits = bits }
end

function importers.EC(jwk)
    local curve = EC_CURVES[jwk.crv]
    if not curve then return nil, "unsupported crv" end
    local x, err = b64_member(jwk, "x")
    if not x then return nil, err end
    local y
    y, err = b64_member(jwk, "y")
    if not y then return nil, err end
    if #x > curve.size or #y > curve.size or #x < curve.size - 8 or #y < curve.size - 8 then
        return nil, format("%s coordinates must be %d bytes", jwk.crv, curve.size)
    end
    -- RFC 7518 6.2.1.2 wants the full length, but some issuers drop leading
    -- zero bytes (PyJWT before 2.8 does, once in 128 keys): put them back;
    -- OpenSSL still checks that the point is on the curve
    x = string.rep("\0", curve.size - #x) .. x
    y = string.rep("\0", curve.size - #y) .. y
    local pkey = import_spki(spki(curve.alg_id, "\4" .. x .. y), EVP_PKEY_EC)
    if not pkey then return nil, "EC point is not on the curve" end
    return { pkey = pkey, crv = jwk.crv, bits = curve.size * 8 }
end

function importers.OKP(jwk)
    if jwk.crv ~= "Ed25519" then return nil, "unsupported crv" end
    local x, err = b64_member(jwk, "x")
    if not x then return nil, err end
    if #x ~= 32 then return nil, "Ed25519 x must be 32 bytes" end
    local pkey = import_spki(spki(ALG_ED25519, x), EVP_PKEY_ED25519)
    if not pkey then return nil, "Ed25519 key rejected by OpenSSL" end
    return { pkey = pkey, crv = "Ed25519", bits = 256 }
end

function importers.oct(jwk)
    local k, err = b64_member(jwk, "k")
    if not k then return nil, err end
    return _M.hmac_key(k)
end

-- which algorithms each kind of key allows
local ALLOWED = {
    RSA = { RS256 = true, RS384 = true, RS512 = true, PS256 = true, PS384 = true, PS512 = true },
    ["EC P-256"] = { ES256 = true },
    ["EC P-384"] = { ES384 = true },
    ["OKP Ed25519"] = { EdDSA = true },
    oct = { HS256 = true, HS384 = true, HS512 = true },
}
local HMAC_MIN = { HS256 = 32, HS384 = 48, HS512 = 64 }  -- RFC 7518 §3.2: key >= hash size

local function allowed_set(key)
    if key.kty == "EC" or key.kty == "OKP" then return ALLOWED[key.kty .. " " .. tostring(key.crv)] end
    return ALLOWED[key.kty]
end

--- A key for HS256/384/512 from a shared secret. RFC 7518 §3.2 wants a
-- secret at least as long as the hash: 32 bytes allows HS256, 48 also
-- HS384, 64 all three (`key_allows` checks it).
-- @tparam string secret the raw bytes
-- @treturn[1] table the key, `kty` "oct"
-- @treturn[2] nil
-- @treturn[2] string why
-- @usage local key = assert(jose.hmac_key(conf.secret))
function _M.hmac_key(secret)
    if type(secret) ~= "string" then return nil, "HMAC secret must be a string" end
    if #secret < 32 then return nil, "HMAC secret shorter than 32 bytes" end
    return { kty = "oct", secret = secret, bits = #secret * 8 }
end

--- Import one JWK (RFC 7517) as a verification key.
-- @tparam table jwk the decoded JWK
-- @treturn[1] table `{ kid =, kty =, crv =, alg =, pkey = EVP_PKEY cdata }`
--  (oct: `secret` instead of `pkey`)
-- @treturn[2] nil
-- @treturn[2] string why it cannot be used
-- @usage local key, err = jose.jwk(jwk)
function _M.jwk(jwk)
    if type(jwk) ~= "table" then return nil, "not a JSON object" end
    local kty = jwk.kty
    if type(kty) ~= "string" then return nil, "no kty" end
    local import = importers[kty]
    if not import then return nil, "unsupported kty" end
    if jwk.kid ~= nil and (type(jwk.kid) ~= "string" or jwk.kid == "") then
        return nil, "kid is not a non-empty string"
    end
    if jwk.use ~= nil and jwk.use ~= "sig" then return nil, "use is not sig" end
    if jwk.key_ops ~= nil then
        local verify = false
        if type(jwk.key_ops) == "table" then
            for _, op in ipairs(jwk.key_ops) do if op == "verify" then verify = true end end
        end
        if not verify then return nil, "key_ops has no verify" end
    end
    local key, err = import(jwk)
    if not key then return nil, err end
    key.kty, key.kid = kty, jwk.kid
    if jwk.alg ~= nil then
        local set = allowed_set(key)
        if type(jwk.alg) ~= "string" or not (set and set[jwk.alg]) then
            return nil, "alg does not fit the key"
        end
        key.alg = jwk.alg
        if kty == "oct" and #key.secret < HMAC_MIN[jwk.alg] then
            return nil, "secret too short for " .. jwk.alg
        end
    end
    return key
end

-- S for a log line: printable ASCII, at most 64 characters
local function printable(s)
    s = s:gsub("[^\32-\126]", "?")
    if #s > 64 then s = sub(s, 1, 61) .. "..." end
    return s
end

--- Load a JWK Set (RFC 7517 §5). Keys that cannot be used (unsupported
-- kty or crv, `use` other than "sig", too short, rejected on import) are
-- skipped and listed; it fails only when no key could be loaded.
-- @tparam string|table jwks the JSON text or the decoded set
-- @treturn[1] table `{ keys = { key, ... }, by_kid = { [kid] = key },
--  skipped = { "kid X: why", ... } }`
-- @treturn[2] nil
-- @treturn[2] string why
-- @usage local keyset, err = jose.jwks(weir.read_file(conf.jwks_file))
function _M.jwks(jwks)
    if type(jwks) == "string" then
        local err
        jwks, err = json_object(jwks, "JWKS")
        if not jwks then return nil, err end
    end
    if type(jwks) ~= "table" then return nil, "JWKS is not a table" end
    local list = jwks.keys
    if type(list) ~= "table" then return nil, "JWKS has no keys array" end
    local set = { keys = {}, by_kid = {}, skipped = {} }
    for i, jwk in ipairs(list) do
        local name = "key #" .. i
        if type(jwk) == "table" and type(jwk.kid) == "string" and jwk.kid ~= "" then
            name = "kid " .. printable(jwk.kid)
        end
        local key, err
        if #set.keys >= _M.MAX_KEYS then
            err = "more than " .. _M.MAX_KEYS .. " keys"
        else
            key, err = _M.jwk(jwk)
            if key and key.kid and set.by_kid[key.kid] then key, err = nil, "duplicate kid" end
        end
        if key then
            set.keys[#set.keys + 1] = key
            if key.kid then set.by_kid[key.kid] = key end
        else
            set.skipped[#set.skipped + 1] = name .. ": " .. err
        end
    end
    if #set.keys == 0 then
        if #set.skipped == 0 then return nil, "JWKS has no keys" end
        return nil, "no usable key in the JWKS (" .. concat(set.skipped, "; ") .. ")"
    end
    return set
end

---------------------------------------------------------------------------
-- Signatures

--- May KEY verify a signature made with ALG? The key pins the algorithm:
-- RSA: RS256/384/512 and PS256/384/512; EC P-256: ES256; EC P-384: ES384;
-- OKP Ed25519: EdDSA; oct: HS256/384/512 (each only with a secret at least
-- as long as its hash). A JWK with `alg` allows only that one. `none`, in
-- any spelling, and anything unknown: false.
-- @tparam table key from `jwks`, `jwk` or `hmac_key`
-- @tparam string alg the token's `alg`
-- @treturn boolean
-- @usage if not jose.key_allows(key, jws.alg) then ... end
function _M.key_allows(key, alg)
    if type(key) ~= "table" or type(alg) ~= "string" then return false end
    if key.alg ~= nil and key.alg ~= alg then return false end
    local set = allowed_set(key)
    if not (set and set[alg]) then return false end
    if key.kty == "oct" then return type(key.secret) == "string" and #key.secret >= HMAC_MIN[alg] end
    return key.pkey ~= nil
end

local function fetch(name)
    local md = C.EVP_MD_fetch(nil, name, nil)
    assert(md ~= nil, "libcrypto has no " .. name)
    -- fetched once: EVP_sha256() and friends would fetch on every use
    return ffi_gc(md, C.EVP_MD_free)
end
local MD = { ["256"] = fetch("SHA256"), ["384"] = fetch("SHA384"), ["512"] = fetch("SHA512") }

local mdctx = C.EVP_MD_CTX_new()  -- one per Lua state, reset after each use
assert(mdctx ~= nil, "EVP_MD_CTX_new failed")
mdctx = ffi_gc(mdctx, C.EVP_MD_CTX_free)
local pctx = ffi_new("EVP_PKEY_CTX *[1]")
local hmac_out = ffi_new("unsigned char[64]")
local hmac_len = ffi_new("unsigned int[1]")

-- DER ECDSA-Sig-Value (RFC 3279) from the JWS's fixed-size R||S (RFC 7518 §3.4)
local function ecdsa_der(sig, size)
    return der(0x30, der_uint(sub(sig, 1, size)) .. der_uint(sub(sig, size + 1)))
end

-- DATA: a pointer to the signed bytes, LEN of them
local function digest_verify(md, pkey, pss, sig, data, len)
    local ok = C.EVP_DigestVerifyInit(mdctx, pctx, md, nil, pkey) == 1
    if ok and pss then
        ok = C.EVP_PKEY_CTX_set_rsa_padding(pctx[0], RSA_PKCS1_PSS_PADDING) > 0
             and C.EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx[0], RSA_PSS_SALTLEN_DIGEST) > 0
    end
    ok = ok and C.EVP_DigestVerify(mdctx, sig, #sig, data, len) == 1
    C.EVP_MD_CTX_reset(mdctx)
    if not ok then C.ERR_clear_error() end
    return ok
end

-- RS*, PS* and ES* verify a digest with a context prepared once per key and
-- algorithm (EVP_PKEY_verify_init and its settings cost about as much as a
-- fifth of an RSA-2048 verification); kept beside the key, not in it.
local prepared = setmetatable({}, { __mode = "k" })   -- key → { alg → EVP_PKEY_CTX }
local digest = ffi_new("unsigned char[64]")
local digest_len = ffi_new("unsigned int[1]")

local function verify_ctx(key, alg, md, pss)
    local by_alg = prepared[key]
    if not by_alg then
        by_alg = {}
        prepared[key] = by_alg
    end
    local p = by_alg[alg]
    if p then return p end
    p = C.EVP_PKEY_CTX_new(key.pkey, nil)
    if p == nil then C.ERR_clear_error(); return nil end
    p = ffi_gc(p, C.EVP_PKEY_CTX_free)
    local ok = C.EVP_PKEY_verify_init(p) == 1 and C.EVP_PKEY_CTX_set_signature_md(p, md) > 0
    if ok and pss then
        ok = C.EVP_PKEY_CTX_set_rsa_padding(p, RSA_PKCS1_PSS_PADDING) > 0
             and C.EVP_PKEY_CTX_set_rsa_pss_saltlen(p, RSA_PSS_SALTLEN_DIGEST) > 0
    end
    if not ok then C.ERR_clear_error(); return nil end
    by_alg[alg] = p
    return p
end

local function prepared_verify(key, alg, md, pss, sig, data, len)
    local p = verify_ctx(key, alg, md, pss)
    if not p then return digest_verify(md, key.pkey, pss, sig, data, len) end
    -- the digest in mdctx (reset after each use): no context made per call
    local dok = C.EVP_DigestInit_ex(mdctx, md, nil) == 1 and C.EVP_DigestUpdate(mdctx, data, len) == 1
                and C.EVP_DigestFinal_ex(mdctx, digest, digest_len) == 1
    C.EVP_MD_CTX_reset(mdctx)
    if not dok then C.ERR_clear_error(); return false end
    local ok = C.EVP_PKEY_verify(p, sig, #sig, digest, digest_len[0]) == 1
    if not ok then C.ERR_clear_error() end
    return ok
end

-- verify's work, the signing input being INPUT[FROM .. FROM + LEN - 1]
-- (checked by the callers, as key_allows(key, alg))
local function check_signature(key, alg, input, from, len, signature)
    local signing_input = from == 1 and input or ffi.cast(U8P, input) + (from - 1)
    local family, size = sub(alg, 1, 2), sub(alg, 3)
    local ok
    if family == "HS" then
        local md = MD[size]
        local n = tonumber(size) / 8
        if #signature ~= n then return nil, "bad signature length" end
        if C.HMAC(md, key.secret, #key.secret, signing_input, len, hmac_out, hmac_len) == nil
           or hmac_len[0] ~= n then
            C.ERR_clear_error()
            return nil, "HMAC failed"
        end
        ok = C.CRYPTO_memcmp(hmac_out, signature, n) == 0
    elseif family == "RS" or family == "PS" then
        -- exactly the modulus's length (RFC 8017 8.1.2, 8.2.2): OpenSSL
        -- takes a shorter one as the same number with its leading zeros
        if #signature ~= math.ceil(key.bits / 8) then return nil, "bad signature length" end
        ok = prepared_verify(key, alg, MD[size], family == "PS", signature, signing_input, len)
    elseif family == "ES" then
        local n = size == "256" and 32 or 48
        if #signature ~= 2 * n then return nil, "bad signature length" end
        ok = prepared_verify(key, alg, MD[size], false, ecdsa_der(signature, n), signing_input, len)
    else  -- EdDSA: the only other algorithm key_allows lets through
        if #signature ~= 64 then return nil, "bad signature length" end
        ok = digest_verify(nil, key.pkey, false, signature, signing_input, len)
    end
    if not ok then return nil, "bad signature" end
    return true
end

--- Check a JWS signature. The key must allow the algorithm (`key_allows`).
-- RS*: RSASSA-PKCS1-v1_5; PS*: RSASSA-PSS, MGF1 with the same hash, salt
-- the hash's length (both: a signature as long as the modulus); ES*: R||S of 64 (ES256) or 96 (ES384) bytes, anything
-- else (a DER signature) refused; EdDSA: Ed25519; HS*: HMAC compared in
-- constant time.
-- @tparam table key
-- @tparam string alg the token's `alg`
-- @tparam string signing_input `<header>.<payload>` as in the token
-- @tparam string signature the decoded signature bytes
-- @treturn[1] true
-- @treturn[2] nil
-- @treturn[2] string why
-- @usage local ok, err = jose.verify(key, jws.alg, jws.signing_input, jws.signature)
function _M.verify(key, alg, signing_input, signature)
    if not _M.key_allows(key, alg) then return nil, "algorithm not allowed for this key" end
    if type(signing_input) ~= "string" or type(signature) ~= "string" then
        return nil, "bad arguments"
    end
    return check_signature(key, alg, signing_input, 1, #signing_input, signature)
end

--- Check the signature of JWS, from `decode`, with KEY: as `verify(key,
-- jws.alg, jws.signing_input, jws.signature)`, the signing input read in
-- place (never copied out of the string the token was decoded from).
-- @tparam table key
-- @tparam table jws
-- @treturn[1] true
-- @treturn[2] nil
-- @treturn[2] string why
-- @usage local ok, err = jose.verify_decoded(key, jws)
function _M.verify_decoded(key, jws)
    local input, from, len = rawget(jws, "token"), rawget(jws, "input_from"), rawget(jws, "input_len")
    if type(input) ~= "string" or type(from) ~= "number" or type(len) ~= "number" then
        return _M.verify(key, jws.alg, jws.signing_input, jws.signature)
    end
    if not _M.key_allows(key, jws.alg) then return nil, "algorithm not allowed for this key" end
    if type(jws.signature) ~= "string" or from < 1 or len < 0 or from + len - 1 > #input then
        return nil, "bad arguments"
    end
    return check_signature(key, jws.alg, input, from, len, jws.signature)
end

--- Verify a decoded JWS against a key set: with the key its `kid` names;
-- for a token without a kid, with each key that allows its algorithm in
-- turn; for a kid the set does not know, with each key of the set that has
-- no kid (most sets have none: then "unknown kid" straight away).
-- @tparam table keyset from `jwks` (a single key, from `hmac_key`, works as
--  `{ keys = { key }, by_kid = {} }`)
-- @tparam table jws from `decode`
-- @tparam[opt] table algorithms a set `{ RS256 = true, ... }`: only these
-- @treturn[1] table the key that verified it
-- @treturn[2] nil
-- @treturn[2] string why: "unknown kid" (the caller may refresh the set),
--  "algorithm not allowed", "no key for this algorithm", "bad signature" ...
-- @usage local key, err = jose.verify_jws(keyset, jws, conf.algorithms_set)
function _M.verify_jws(keyset, jws, algorithms)
    local alg = jws.alg
    if algorithms and not algorithms[alg] then return nil, "algorithm not allowed" end
    local kid = jws.kid
    if kid ~= nil then
        local key = keyset.by_kid[kid]
        if key then
            local ok, err = _M.verify_decoded(key, jws)
            if not ok then return nil, err end
            return key
        end
    end
    local err = kid and "unknown kid" or "no key for this algorithm"
    for _, key in ipairs(keyset.keys) do
        -- a token's kid only ever names a key with that kid; keys without
        -- one are the candidates for any token the set has no kid for
        if (kid == nil or key.kid == nil) and _M.key_allows(key, alg) then
            local ok, why = _M.verify_decoded(key, jws)
            if ok then return key end
            if kid == nil then err = why end  -- else keep "unknown kid": worth a refresh
        end
    end
    return nil, err
end

---------------------------------------------------------------------------
-- Signing (ES256 only: weir's own token issuer, see weir.issuer)
--
-- A private key is a table `{ kty = "EC", crv = "P-256", pkey = EVP_PKEY,
-- private = true }`, the EVP_PKEY freed by the GC. Because it has `kty`,
-- `crv` and `pkey` like a key from `jwk`, it verifies too (`verify`).
-- Private key PEM passes through Lua strings, which cannot be wiped: keep
-- them no longer than needed and never log them.

local BIO_CTRL_INFO = 3       -- BIO_get_mem_data (bio.h)
local P256_SIZE = 32

local ppkey = ffi_new("EVP_PKEY *[1]")
local bn = ffi_new("BIGNUM *[1]")
local coord = ffi_new("unsigned char[66]")
local mem_data = ffi_new("char *[1]")
local group = ffi_new("char[64]")
local group_len = ffi_new("size_t[1]")
local sig_buf = ffi_new("unsigned char[256]")
local sig_len = ffi_new("size_t[1]")

--- Generate an EC P-256 key pair.
-- @treturn[1] string the private key, PEM of unencrypted PKCS#8
--  ("-----BEGIN PRIVATE KEY-----")
-- @treturn[2] nil
-- @treturn[2] string why
-- @usage local pem = assert(jose.generate_ec_p256())
function _M.generate_ec_p256()
    local kctx = C.EVP_PKEY_CTX_new_from_name(nil, "EC", nil)
    if kctx == nil then C.ERR_clear_error(); return nil, "EC key generation unavailable" end
    ppkey[0] = nil
    local ok = C.EVP_PKEY_keygen_init(kctx) == 1 and C.EVP_PKEY_CTX_set_group_name(kctx, "P-256") == 1
               and C.EVP_PKEY_generate(kctx, ppkey) == 1
    C.EVP_PKEY_CTX_free(kctx)
    if not ok or ppkey[0] == nil then C.ERR_clear_error(); return nil, "EC key generation failed" end
    local pkey = ffi_gc(ppkey[0], C.EVP_PKEY_free)
    ppkey[0] = nil
    local bio = C.BIO_new(C.BIO_s_mem())
    if bio == nil then C.ERR_clear_error(); return nil, "out of memory" end
    local pem
    if C.PEM_write_bio_PKCS8PrivateKey(bio, pkey, nil, nil, 0, nil, nil) == 1 then
        local n = C.BIO_ctrl(bio, BIO_CTRL_INFO, 0, mem_data)
        if n > 0 then pem = ffi_string(mem_data[0], n) end
    end
    C.BIO_free(bio)  -- a memory BIO wipes its buffer when freed
    C.ERR_clear_error()
    if not pem then return nil, "could not encode the private key" end
    return pem
end

--- Load a private key for signing from PEM: unencrypted PKCS#8
-- ("-----BEGIN PRIVATE KEY-----") of an EC P-256 key; anything else is
-- refused (an encrypted PEM would make OpenSSL ask a terminal for a
-- passphrase, so it is refused before OpenSSL sees it).
-- @tparam string pem
-- @treturn[1] table `{ kty = "EC", crv = "P-256", pkey = EVP_PKEY, private = true }`
-- @treturn[2] nil
-- @treturn[2] string why (never containing key material)
-- @usage local key = assert(jose.private_key(rec.private_pem))
function _M.private_key(pem)
    if type(pem) ~= "string" then return nil, "private key PEM is not a string" end
    if not find(pem, "-----BEGIN PRIVATE KEY-----", 1, true) then
        return nil, "not an unencrypted PKCS#8 private key PEM"
    end
    local bio = C.BIO_new_mem_buf(pem, #pem)
    if bio == nil then C.ERR_clear_error(); return nil, "out of memory" end
    -- no callback, an empty passphrase: never a prompt
    local pkey = C.PEM_read_bio_PrivateKey(bio, nil, nil, ffi.cast("void *", ""))
    C.BIO_free(bio)
    if pkey == nil then C.ERR_clear_error(); return nil, "private key PEM could not be read" end
    pkey = ffi_gc(pkey, C.EVP_PKEY_free)
    if C.EVP_PKEY_get_base_id(pkey) ~= EVP_PKEY_EC then return nil, "not an EC private key" end
    if C.EVP_PKEY_get_group_name(pkey, group, 64, group_len) ~= 1 then
        C.ERR_clear_error()
        return nil, "EC key without a named curve"
    end
    local name = ffi_string(group, group_len[0])
    if name ~= "prime256v1" and name ~= "P-256" then return nil, "EC key is not on P-256" end
    return { kty = "EC", crv = "P-256", pkey = pkey, bits = 256, private = true }
end

-- one public coordinate ("qx", "qy") of an EC key, left-padded to SIZE bytes
local function ec_coordinate(pkey, name, size)
    bn[0] = nil
    if C.EVP_PKEY_get_bn_param(pkey, name, bn) ~= 1 or bn[0] == nil then
        C.ERR_clear_error()
        return nil
    end
    local n = C.BN_bn2binpad(bn[0], coord, size)
    C.BN_free(bn[0])
    bn[0] = nil
    if n ~= size then C.ERR_clear_error(); return nil end
    return ffi_string(coord, size)
end

local B64_MEMBER = "^[A-Za-z0-9_-]+$"

--- The JWK thumbprint (RFC 7638) of a public key: SHA-256 of the JSON of
-- its required members in lexicographic order without whitespace, as
-- base64url (43 characters, the full hash).
-- @tparam table jwk a public JWK: EC (crv, x, y), RSA (e, n) or OKP (crv, x)
-- @treturn[1] string
-- @treturn[2] nil
-- @treturn[2] string why
-- @usage local kid = jose.thumbprint(jwk)
function _M.thumbprint(jwk)
    if type(jwk) ~= "table" then return nil, "not a JSON object" end
    local members
    if jwk.kty == "EC" then members = { "crv", "kty", "x", "y" }
    elseif jwk.kty == "RSA" then members = { "e", "kty", "n" }
    elseif jwk.kty == "OKP" then members = { "crv", "kty", "x" }
    else return nil, "unsupported kty" end
    local parts = {}
    for i, name in ipairs(members) do
        local v = jwk[name]
        -- base64url and curve names need no JSON escaping; anything else is refused
        if type(v) ~= "string" or not find(v, B64_MEMBER) then return nil, "bad " .. name end
        parts[i] = '"' .. name .. '":"' .. v .. '"'
    end
    return _M.b64url_encode(_M.sha256("{" .. concat(parts, ",") .. "}"))
end

--- The public JWK of a private key from `private_key`.
-- @tparam table key
-- @tparam[opt] string kid default: the key's RFC 7638 thumbprint
-- @treturn[1] table `{ kty = "EC", crv = "P-256", x =, y =, kid =, use = "sig",
--  alg = "ES256" }`, x and y base64url of 32 bytes each (left-padded)
-- @treturn[2] nil
-- @treturn[2] string why
-- @usage local jwk = assert(jose.public_jwk(key))
function _M.public_jwk(key, kid)
    if type(key) ~= "table" or key.pkey == nil or key.kty ~= "EC" or key.crv ~= "P-256" then
        return nil, "not an EC P-256 key"
    end
    if kid ~= nil and (type(kid) ~= "string" or kid == "") then
        return nil, "kid is not a non-empty string"
    end
    local x = ec_coordinate(key.pkey, "qx", P256_SIZE)
    local y = x and ec_coordinate(key.pkey, "qy", P256_SIZE)
    if not y then return nil, "could not read the public point" end
    local jwk = { kty = "EC", crv = "P-256", x = _M.b64url_encode(x), y = _M.b64url_encode(y),
                  use = "sig", alg = "ES256" }
    jwk.kid = kid or _M.thumbprint(jwk)
    return jwk
end

--- An ECDSA signature's DER ECDSA-Sig-Value (RFC 3279: SEQUENCE of the
-- INTEGERs r and s) as the fixed-size r||s a JWS carries (RFC 7518 §3.4):
-- each integer without its sign byte, left-padded with zeros to SIZE bytes.
-- @tparam string der
-- @tparam number size bytes per integer: 32 (P-256), 48 (P-384), 66 (P-521)
-- @treturn[1] string 2 * SIZE bytes
-- @treturn[2] nil
-- @treturn[2] string why
-- @usage local raw = jose.ecdsa_der_to_raw(der, 32)
function _M.ecdsa_der_to_raw(der_sig, size)
    if type(der_sig) ~= "string" then return nil, "signature is not a string" end
    local n = #der_sig
    if byte(der_sig, 1) ~= 0x30 then return nil, "signature is not a DER SEQUENCE" end
    local len, i = byte(der_sig, 2), 3
    if len == 0x81 then len, i = byte(der_sig, 3), 4 end   -- P-521's can pass 127 bytes
    if not len or len >= 0x80 and i == 3 or i + len - 1 ~= n then
        return nil, "bad DER SEQUENCE length"
    end
    local r, s
    for k = 1, 2 do
        if byte(der_sig, i) ~= 0x02 then return nil, "DER signature without two INTEGERs" end
        local l = byte(der_sig, i + 1)
        if not l or l == 0 or l >= 0x80 or i + 1 + l > n then return nil, "bad DER INTEGER length" end
        if byte(der_sig, i + 2) >= 0x80 then return nil, "negative DER INTEGER" end
        local j, last = i + 2, i + 1 + l
        while j < last and byte(der_sig, j) == 0 do j = j + 1 end   -- sign byte, zeros
        if last - j + 1 > size then return nil, "DER INTEGER too large" end
        local v = string.rep("\0", size - (last - j + 1)) .. sub(der_sig, j, last)
        if k == 1 then r = v else s = v end
        i = last + 1
    end
    if i ~= n + 1 then return nil, "trailing bytes after the DER signature" end
    return r .. s
end

-- a signing context per private key, made once (like verify_ctx)
local sign_prepared = setmetatable({}, { __mode = "k" })   -- key → EVP_PKEY_CTX

local function sign_ctx(key)
    local p = sign_prepared[key]
    if p then return p end
    p = C.EVP_PKEY_CTX_new(key.pkey, nil)
    if p == nil then C.ERR_clear_error(); return nil end
    p = ffi_gc(p, C.EVP_PKEY_CTX_free)
    if C.EVP_PKEY_sign_init(p) ~= 1 or C.EVP_PKEY_CTX_set_signature_md(p, MD["256"]) <= 0 then
        C.ERR_clear_error()
        return nil
    end
    sign_prepared[key] = p
    return p
end

--- Sign a JWS signing input. Only ES256, with a key from `private_key`.
-- @tparam table key
-- @tparam string alg "ES256"
-- @tparam string signing_input `<header>.<payload>`
-- @treturn[1] string the signature: r||s, 64 bytes (RFC 7518 §3.4)
-- @treturn[2] nil
-- @treturn[2] string why
-- @usage local sig = assert(jose.sign(key, "ES256", h .. "." .. p))
function _M.sign(key, alg, signing_input)
    if alg ~= "ES256" then return nil, "unsupported signing algorithm" end
    if type(key) ~= "table" or not key.private or key.kty ~= "EC" or key.crv ~= "P-256" then
        return nil, "not an EC P-256 private key"
    end
    if type(signing_input) ~= "string" then return nil, "signing input is not a string" end
    local p = sign_ctx(key)
    if not p then return nil, "could not prepare signing" end
    if C.EVP_Digest(signing_input, #signing_input, digest, digest_len, MD["256"], nil) ~= 1 then
        C.ERR_clear_error()
        return nil, "digest failed"
    end
    sig_len[0] = 256
    if C.EVP_PKEY_sign(p, sig_buf, sig_len, digest, digest_len[0]) ~= 1 then
        C.ERR_clear_error()
        return nil, "signing failed"
    end
    return _M.ecdsa_der_to_raw(ffi_string(sig_buf, sig_len[0]), P256_SIZE)
end

local json_enc = cjson.new()
json_enc.encode_invalid_numbers(false)
json_enc.encode_sparse_array(false)   -- a sparse array is an error, not silently an object
json_enc.encode_max_depth(32)

--- A signed JWT in JWS compact form: base64url (unpadded) of the header's
-- and the claims' JSON, signed ES256. The header is a copy of HEADER with
-- `alg` "ES256", `typ` "JWT" unless given, and `kid` (HEADER's, else the
-- key's `kid` field, else none).
-- @tparam table|nil header extra header members (e.g. `{ kid = kid }`)
-- @tparam table claims the payload, a JSON object (an empty table is `{}`)
-- @tparam table key from `private_key`
-- @treturn[1] string the token
-- @treturn[2] nil
-- @treturn[2] string why
-- @usage local token = assert(jose.encode({ kid = kid }, { sub = "svc" }, key))
function _M.encode(header, claims, key)
    if header ~= nil and type(header) ~= "table" then return nil, "header is not a table" end
    if type(claims) ~= "table" then return nil, "claims is not a table" end
    local h = {}
    for k, v in pairs(header or {}) do h[k] = v end
    if h.alg ~= nil and h.alg ~= "ES256" then return nil, "only ES256 is supported" end
    h.alg = "ES256"
    if h.typ == nil then h.typ = "JWT" end
    if h.kid == nil then h.kid = key and key.kid end
    if h.kid ~= nil and (type(h.kid) ~= "string" or h.kid == "") then
        return nil, "kid is not a non-empty string"
    end
    local h_json, err = json_enc.encode(h)
    if not h_json then return nil, "header: " .. tostring(err) end
    local c_json
    c_json, err = json_enc.encode(claims)
    if not c_json then return nil, "claims: " .. tostring(err) end
    if byte(c_json, 1) ~= 123 then return nil, "claims is not a JSON object" end  -- '{'
    local input = _M.b64url_encode(h_json) .. "." .. _M.b64url_encode(c_json)
    local sig
    sig, err = _M.sign(key, "ES256", input)
    if not sig then return nil, err end
    return input .. "." .. _M.b64url_encode(sig)
end

local rand_buf = ffi_new("unsigned char[256]")

--- N (at most 256) random bytes from OpenSSL's generator.
-- @tparam number n
-- @treturn[1] string
-- @treturn[2] nil
-- @treturn[2] string why
-- @usage local jti = jose.b64url_encode(assert(jose.random_bytes(16)))
function _M.random_bytes(n)
    if type(n) ~= "number" or n < 1 or n > 256 or n % 1 ~= 0 then
        error("jose.random_bytes(n): n must be an integer in 1..256", 2)
    end
    if C.RAND_bytes(rand_buf, n) ~= 1 then C.ERR_clear_error(); return nil, "RAND_bytes failed" end
    return ffi_string(rand_buf, n)
end

local sha_out = ffi_new("unsigned char[32]")
local SHA256_MD = MD["256"]
local sha_ctx = C.EVP_MD_CTX_new()  -- one per Lua state, initialised again for each use
assert(sha_ctx ~= nil, "EVP_MD_CTX_new failed")
sha_ctx = ffi_gc(sha_ctx, C.EVP_MD_CTX_free)

--- SHA-256 of S (or of S[I..J]), as 32 raw bytes (e.g. a token cache key).
-- @tparam string s
-- @tparam[opt=1] number i
-- @tparam[opt=#s] number j
-- @treturn string
-- @usage local id = jose.sha256(token)
function _M.sha256(s, i, j)
    local p, n = s, #s
    if i then
        j = j or n
        if i < 1 or j > n or j < i - 1 then error("jose.sha256(s, i, j): the range is outside s", 2) end
        p, n = i == 1 and s or ffi.cast(U8P, s) + (i - 1), j - i + 1
    end
    -- the digest fetched once and one context kept: OpenSSL 3's SHA256()
    -- fetches the digest and makes a context on every call
    if C.EVP_DigestInit_ex(sha_ctx, SHA256_MD, nil) ~= 1 or C.EVP_DigestUpdate(sha_ctx, p, n) ~= 1
       or C.EVP_DigestFinal_ex(sha_ctx, sha_out, nil) ~= 1 then
        C.ERR_clear_error()
        C.SHA256(p, n, sha_out)
    end
    return ffi_string(sha_out, 32)
end

return _M
