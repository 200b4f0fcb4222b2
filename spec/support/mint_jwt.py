#!/usr/bin/python3
"""Test keys and JWTs for weir's specs, made at run time (nothing committed).

Run with /usr/bin/python3 (Debian's python3-jwt and python3-cryptography).

    mint_jwt.py keys DIR [SPEC.json | -]
    mint_jwt.py mint DIR [SPEC.json | -]

keys: generate key pairs into DIR (created if missing) and print one JSON
object describing them. Without a spec (or with `{}`), the default set:

    rsa      RSA 2048         ec256    EC P-256         ec384    EC P-384
    ed25519  Ed25519          hmac     64 random bytes (HS256/384/512)

A spec chooses the set instead:

    {"keys": [{"name": "rsa", "type": "RSA", "bits": 2048},
              {"name": "old", "type": "RSA", "bits": 1024, "in_jwks": false},
              {"name": "ec", "type": "EC", "crv": "P-256", "alg": "ES256", "use": "sig"},
              {"name": "ed", "type": "OKP", "crv": "Ed25519"},
              {"name": "hs", "type": "oct", "bytes": 32, "in_jwks": true}]}

  name     file stem and, unless "kid" is given, the kid
  kid      the kid in the JWK (null: the JWK has no kid)
  alg, use written into the JWK when given
  in_jwks  put the public JWK in DIR/jwks.json (default: true, except oct:
           a secret has no business in a public JWKS unless asked for)

Files per key: NAME.pem (private, PKCS#8), NAME.pub.pem (SubjectPublicKeyInfo),
NAME.jwk.json (public JWK; for oct the secret JWK); oct: NAME.secret (raw
bytes). DIR/jwks.json: {"keys": [...]} of the keys with in_jwks. Printed:

    {"dir": DIR, "jwks": DIR/jwks.json,
     "keys": {NAME: {"type", "crv", "bits", "kid", "pem", "pub_pem", "jwk", "secret_file"}}}

where "jwk" is the public JWK as an object (specs build their own JWKS from
these, e.g. with a key left out or altered).

mint: sign tokens with the keys in DIR. The spec is one token description
(prints the token on one line) or a list of them (prints a JSON array of
tokens, in order). A description:

    {"key": "rsa",               key NAME in DIR; "none": unsigned
     "alg": "RS256",             header alg (default from the key type)
     "kid": "rsa",               default the key's kid; null: no kid
     "claims": {"sub": "u1"},    the payload (any JSON value)
     "exp_in": 60,               sets exp = now + 60 (also "nbf_in", "iat_in")
     "header": {"typ": "JWT", "crit": ["x"]},   added to / overriding the
                                 header; a null value removes that member
     "raw_header": "[1,2]",      the header's exact JSON text (replaces header)
     "raw_payload": "\"str\"",   the payload's exact JSON text (replaces claims)
     "sign_alg": "HS256",        sign with this algorithm instead of "alg"
     "secret_file": "rsa.pub.pem",  HMAC secret: the bytes of this file (path
                                 relative to DIR or absolute), e.g. the RSA
                                 public key for the key-confusion attack
     "secret": "text",           HMAC secret given as text
     "pss_salt": 0,              PS*: this salt length in bytes, or "max"
                                 (default: the hash's length, as RFC 7518 says)
     "signature": "der",         ES*: DER-encoded ECDSA signature instead of
                                 raw R||S; "empty": no signature; "b64:XXX":
                                 exactly this signature part
     "tamper": "payload",        after signing: change one payload claim
                                 ("payload") or flip a signature bit ("signature")
     "encoding": "url",          "url" (default), "padded" (base64url with =),
                                 "std" (standard alphabet + and /, with =)
     "output": "token"}          "token" (default) or "parts": an object
                                 {"header","payload","signature"} of the
                                 encoded parts, to assemble by hand

Plain descriptions (only key, alg, kid, claims, *_in, and a header without
null members or b64) are signed by PyJWT, an implementation independent of
weir's; the rest are assembled here with python3-cryptography so that they
can be wrong on purpose.

Examples:

    d=$(mktemp -d); mint_jwt.py keys "$d" >/dev/null
    echo '{"key":"ec256","alg":"ES256","claims":{"sub":"a"},"exp_in":60}' | mint_jwt.py mint "$d"
    echo '[{"key":"rsa","alg":"HS256","secret_file":"rsa.pub.pem"},
           {"key":"ec256","signature":"der"}]' | mint_jwt.py mint "$d"
"""

import base64
import json
import os
import sys
import time

import jwt
import jwt.algorithms
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives import hmac as chmac

DEFAULT_KEYS = [
    {"name": "rsa", "type": "RSA", "bits": 2048},
    {"name": "ec256", "type": "EC", "crv": "P-256"},
    {"name": "ec384", "type": "EC", "crv": "P-384"},
    {"name": "ed25519", "type": "OKP", "crv": "Ed25519"},
    {"name": "hmac", "type": "oct", "bytes": 64},
]

CURVES = {"P-256": (ec.SECP256R1, 32), "P-384": (ec.SECP384R1, 48), "P-521": (ec.SECP521R1, 66)}
HASHES = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}


def die(msg):
    sys.stderr.write("mint_jwt.py: " + msg + "\n")
    sys.exit(2)


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def read_spec(args):
    if not args or args[0] == "-":
        text = sys.stdin.read()
    elif os.path.exists(args[0]):
        with open(args[0]) as f:
            text = f.read()
    else:
        text = args[0]
    return json.loads(text) if text.strip() else {}


def write(path, data, mode=0o600):
    with open(path, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())
    os.chmod(path, mode)


# ---------------------------------------------------------------- keys

def gen_key(desc):
    kind = desc.get("type")
    if kind == "RSA":
        return rsa.generate_private_key(public_exponent=desc.get("e", 65537),
                                        key_size=desc.get("bits", 2048))
    if kind == "EC":
        crv = desc.get("crv", "P-256")
        if crv not in CURVES:
            die("unknown EC curve " + crv)
        return ec.generate_private_key(CURVES[crv][0]())
    if kind == "OKP":
        if desc.get("crv", "Ed25519") != "Ed25519":
            die("only Ed25519 for OKP")
        return ed25519.Ed25519PrivateKey.generate()
    if kind == "oct":
        # jwt drops the line ends a secret file ends with (an editor's last
        # newline), so a random secret must not end in CR or LF
        b = bytearray(os.urandom(desc.get("bytes", 64)))
        while b and b[-1] in (10, 13):
            b[-1] = os.urandom(1)[0]
        return bytes(b)
    die("unknown key type %r" % kind)


def public_jwk(key):
    pub = key.public_key()
    if isinstance(key, rsa.RSAPrivateKey):
        text = jwt.algorithms.RSAAlgorithm.to_jwk(pub)
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        # RFC 7518 6.2.1.2: x and y are the full coordinate length. PyJWT < 2.8
        # (Debian 12 has 2.6) drops their leading zero bytes, one key in 128.
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(pub))
        size = (key.curve.key_size + 7) // 8
        numbers = pub.public_numbers()
        jwk["x"] = b64url(numbers.x.to_bytes(size, "big"))
        jwk["y"] = b64url(numbers.y.to_bytes(size, "big"))
        return jwk
    else:
        text = jwt.algorithms.OKPAlgorithm.to_jwk(pub)
    return json.loads(text) if isinstance(text, str) else dict(text)


def cmd_keys(dirname, spec):
    os.makedirs(dirname, exist_ok=True)
    descs = spec.get("keys") or DEFAULT_KEYS
    out = {"dir": dirname, "jwks": os.path.join(dirname, "jwks.json"), "keys": {}}
    jwks = []
    for desc in descs:
        name = desc["name"]
        kid = desc.get("kid", name)
        key = gen_key(desc)
        info = {"type": desc["type"], "kid": kid}
        if desc["type"] == "oct":
            info["secret_file"] = os.path.join(dirname, name + ".secret")
            info["bits"] = len(key) * 8
            write(info["secret_file"], key)
            jwk = {"kty": "oct", "k": b64url(key)}
        else:
            info["pem"] = os.path.join(dirname, name + ".pem")
            info["pub_pem"] = os.path.join(dirname, name + ".pub.pem")
            write(info["pem"], key.private_bytes(serialization.Encoding.PEM,
                                                 serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
            write(info["pub_pem"], key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo), 0o644)
            jwk = public_jwk(key)
            if desc["type"] == "RSA":
                info["bits"] = key.key_size
            else:
                info["crv"] = desc.get("crv", "Ed25519" if desc["type"] == "OKP" else "P-256")
        for field in ("alg", "use"):
            if field in desc:
                jwk[field] = desc[field]
        if kid is not None:
            jwk["kid"] = kid
        info["jwk"] = jwk
        write(os.path.join(dirname, name + ".jwk.json"), json.dumps(jwk))
        if desc.get("in_jwks", desc["type"] != "oct"):
            jwks.append(jwk)
        out["keys"][name] = info
    write(out["jwks"], json.dumps({"keys": jwks}, indent=1), 0o644)
    # remember kids and types for `mint`
    write(os.path.join(dirname, "keys.json"), json.dumps(out))
    print(json.dumps(out))


# ---------------------------------------------------------------- tokens

def default_alg(info):
    return {"RSA": "RS256", "OKP": "EdDSA", "oct": "HS256"}.get(info["type"]) or \
        {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}[info["crv"]]


def load_private(info):
    with open(info["pem"], "rb") as f:
        return serialization.load_pem_private_key(f.read(), password=None)


def hmac_secret(desc, dirname, info):
    if "secret" in desc:
        return desc["secret"].encode()
    path = desc.get("secret_file") or (info or {}).get("secret_file")
    if not path:
        die("HMAC signing needs an oct key, \"secret\" or \"secret_file\"")
    with open(path if os.path.isabs(path) else os.path.join(dirname, path), "rb") as f:
        return f.read()


def sign(alg, desc, dirname, info, data):
    """The JWS signature of DATA with ALG, by hand (python3-cryptography)."""
    if alg.upper() == "NONE" or desc.get("key") == "none":
        return b""
    if alg.startswith("HS"):
        h = chmac.HMAC(hmac_secret(desc, dirname, info), HASHES[alg[2:]]())
        h.update(data)
        return h.finalize()
    if info is None or info["type"] == "oct":
        die(alg + " needs a key pair")
    key = load_private(info)
    if alg.startswith("RS"):
        return key.sign(data, padding.PKCS1v15(), HASHES[alg[2:]]())
    if alg.startswith("PS"):
        h = HASHES[alg[2:]]()
        salt = desc.get("pss_salt", h.digest_size)
        salt = padding.PSS.MAX_LENGTH if salt == "max" else salt
        return key.sign(data, padding.PSS(mgf=padding.MGF1(h), salt_length=salt), h)
    if alg.startswith("ES"):
        der = key.sign(data, ec.ECDSA(HASHES[alg[2:]]()))
        if desc.get("signature") == "der":
            return der
        size = (key.curve.key_size + 7) // 8
        r, s = decode_dss_signature(der)
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    if alg == "EdDSA":
        return key.sign(data)
    die("cannot sign with alg " + alg)


def encode(data, encoding):
    if encoding == "url":
        return b64url(data)
    if encoding == "padded":
        return base64.urlsafe_b64encode(data).decode()
    if encoding == "std":
        return base64.b64encode(data).decode()
    die("unknown encoding " + encoding)


PLAIN = {"key", "alg", "kid", "claims", "exp_in", "nbf_in", "iat_in", "header"}


def mint_one(desc, dirname, keys):
    name = desc.get("key")
    info = keys.get(name) if name and name != "none" else None
    if name and name != "none" and info is None:
        die("no key named %r in %s" % (name, dirname))
    alg = desc.get("alg") or (default_alg(info) if info else "none")
    claims = desc.get("claims", {})
    if isinstance(claims, dict):
        claims = dict(claims)
        now = int(time.time())
        for field in ("exp", "nbf", "iat"):
            if field + "_in" in desc:
                claims[field] = now + desc[field + "_in"]

    header = {"alg": alg, "typ": "JWT"}
    kid = desc.get("kid", info["kid"] if info else None)
    if kid is not None:
        header["kid"] = kid
    for k, v in (desc.get("header") or {}).items():
        if v is None:
            header.pop(k, None)
        else:
            header[k] = v

    plain = set(desc) <= PLAIN and alg.upper() != "NONE" and isinstance(claims, dict) \
        and not any(v is None for v in (desc.get("header") or {}).values()) \
        and "b64" not in header  # PyJWT would really leave the payload unencoded
    if plain:
        if alg.startswith("HS"):
            key = hmac_secret(desc, dirname, info)
        else:
            key = load_private(info)
        extra = {k: v for k, v in header.items() if k != "alg"}
        token = jwt.encode(claims, key, algorithm=alg, headers=extra)
        if "kid" not in header:  # PyJWT keeps only what it was given; check
            assert "kid" not in jwt.get_unverified_header(token)
        return token if desc.get("output", "token") == "token" else dict(
            zip(("header", "payload", "signature"), token.split(".")))

    enc = desc.get("encoding", "url")
    h_json = desc["raw_header"] if "raw_header" in desc else json.dumps(header, separators=(",", ":"))
    p_json = desc["raw_payload"] if "raw_payload" in desc else json.dumps(claims, separators=(",", ":"))
    h_part, p_part = encode(h_json.encode(), enc), encode(p_json.encode(), enc)
    signing_input = (h_part + "." + p_part).encode()
    sig_desc = desc.get("signature")
    if isinstance(sig_desc, str) and sig_desc.startswith("b64:"):
        s_part = sig_desc[4:]
    elif sig_desc == "empty":
        s_part = ""
    else:
        s_part = encode(sign(desc.get("sign_alg", alg), desc, dirname, info, signing_input), enc)

    tamper = desc.get("tamper")
    if tamper == "payload":
        changed = dict(claims) if isinstance(claims, dict) else {}
        changed["sub"] = str(changed.get("sub", "")) + "-tampered"
        changed["admin"] = True
        p_part = encode(json.dumps(changed, separators=(",", ":")).encode(), enc)
    elif tamper == "signature":
        raw = bytearray(base64.urlsafe_b64decode(s_part + "=" * (-len(s_part) % 4)))
        raw[len(raw) // 2] ^= 0x01
        s_part = encode(bytes(raw), enc)
    elif tamper is not None:
        die("unknown tamper " + tamper)

    if desc.get("output", "token") == "parts":
        return {"header": h_part, "payload": p_part, "signature": s_part}
    return h_part + "." + p_part + "." + s_part


def cmd_mint(dirname, spec):
    try:
        with open(os.path.join(dirname, "keys.json")) as f:
            keys = json.load(f)["keys"]
    except OSError:
        keys = {}
    if isinstance(spec, list):
        print(json.dumps([mint_one(d, dirname, keys) for d in spec]))
    else:
        out = mint_one(spec, dirname, keys)
        print(out if isinstance(out, str) else json.dumps(out))


def main(argv):
    if len(argv) < 3 or argv[1] not in ("keys", "mint"):
        sys.stderr.write(__doc__)
        return 2
    spec = read_spec(argv[3:])
    (cmd_keys if argv[1] == "keys" else cmd_mint)(argv[2], spec)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
