#!/usr/bin/python3
"""Verify JWTs with PyJWT against a JWKS: an implementation independent of
weir's, for the issuer's interop specs.

Run with /usr/bin/python3 (Debian's python3-jwt and python3-cryptography).

    verify_jwt.py JWKS_FILE TOKENS_FILE [OPTIONS.json]

JWKS_FILE: {"keys": [...]} as weir's issuer publishes it. TOKENS_FILE: one
token a line. OPTIONS (all optional):

    {"issuer": "weir",            the iss every token must carry
     "audience": "api",           the aud to accept (a token with an aud
                                  fails without it, as PyJWT wants)
     "algorithms": ["ES256"],     default ["ES256"]
     "verify_exp": true}          false: expired tokens still pass

Each token is checked with the key its header's kid names (PyJWK builds it
from the JWK: a P-256 x or y that is not exactly 32 bytes is refused there).

Printed, one JSON object:

    {"verified": N,                          tokens that passed
     "failed": [{"line": I, "error": "..."}],  the others, first 20
     "claims": [...],                        payloads of the first 5 that passed
     "kids": {KID: N},                       tokens verified per kid
     "thumbprints": {KID: THUMBPRINT}}       RFC 7638 thumbprint of each JWK,
                                             computed here
"""

import base64
import hashlib
import json
import sys

import jwt

REQUIRED = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"), "OKP": ("crv", "kty", "x")}


def thumbprint(jwk):
    members = {k: jwk[k] for k in REQUIRED[jwk["kty"]]}
    text = json.dumps(members, sort_keys=True, separators=(",", ":"))
    return base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()


def main(argv):
    if len(argv) < 3:
        sys.stderr.write(__doc__)
        return 2
    with open(argv[1]) as f:
        jwks = json.load(f)
    with open(argv[2]) as f:
        tokens = [line.strip() for line in f if line.strip()]
    opts = {}
    if len(argv) > 3:
        with open(argv[3]) as f:
            opts = json.load(f)

    keys, thumbs = {}, {}
    for jwk in jwks["keys"]:
        keys[jwk["kid"]] = jwt.PyJWK(jwk)
        thumbs[jwk["kid"]] = thumbprint(jwk)

    out = {"verified": 0, "failed": [], "claims": [], "kids": {}, "thumbprints": thumbs}
    for i, token in enumerate(tokens, 1):
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            if kid not in keys:
                raise ValueError("unknown kid")
            claims = jwt.decode(token, keys[kid].key, algorithms=opts.get("algorithms", ["ES256"]),
                                issuer=opts.get("issuer"), audience=opts.get("audience"),
                                options={"verify_exp": opts.get("verify_exp", True),
                                         "require": ["exp", "iat", "iss", "jti"]})
        except Exception as e:  # every failure is reported, none stops the run
            if len(out["failed"]) < 20:
                out["failed"].append({"line": i, "error": "%s: %s" % (type(e).__name__, e)})
            continue
        out["verified"] += 1
        out["kids"][kid] = out["kids"].get(kid, 0) + 1
        if len(out["claims"]) < 5:
            out["claims"].append(claims)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
