#!/usr/bin/python3
"""token_server.py — an identity provider's token endpoint for the browser
specs: pages fetch JWTs from it at run time, signed by mint_jwt.py's keys.

Run with /usr/bin/python3 (standard library, and mint_jwt.py beside it).

    token_server.py KEYDIR '{"key":"ec256","claims":{"iss":…,"aud":…,"sub":"alice"}}'

KEYDIR holds keys made by `mint_jwt.py keys KEYDIR`; the JSON (or a file
holding it) is the base token description, as mint_jwt.py's `mint` takes
it. Listens on 127.0.0.1 (a port the system picks) and prints, once
listening, one line on stdout:

    {"listening": PORT}

    GET /__token?ttl=S[&sub=NAME][&tag=T]
        200 {"token": JWT, "expires_at": RFC3339}: the base description
        with exp = now + S (default 60), iat = now, a fresh jti (and sub
        NAME); T names the caller for /__hold
    GET /__minted
        200 {"minted": N, "held": H, "tokens": [{"ttl", "sub", "exp"}]}:
        what was handed out (never the tokens); H requests are being held
    GET /__hold?tag=T&n=N
        the next N /__token requests with tag T wait, unanswered, until
        /__release (at most 60 s): the spec decides when a page's
        getToken() returns
    GET /__release
        answer the requests held so far

Every answer carries Access-Control-Allow-Origin: * (pages of any origin
fetch tokens; the gateway, not this server, decides who may connect) and
Cache-Control: no-store.
"""
import json
import os
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

sys.dont_write_bytecode = True     # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mint_jwt  # noqa: E402  (beside this file)

lock = threading.Condition()
minted = []
hold = {"next": {}, "held": 0, "generation": 0}      # next: tag → requests to hold


def rfc3339(t):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, obj):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        u = urlsplit(self.path)
        q = {k: v[-1] for k, v in parse_qs(u.query).items()}
        if u.path == "/__token":
            try:
                ttl = int(q.get("ttl", "60"))
            except ValueError:
                return self.answer(400, {"error": "ttl must be whole seconds"})
            desc = json.loads(json.dumps(self.server.base))
            claims = desc.setdefault("claims", {})
            if "sub" in q:
                claims["sub"] = q["sub"]
            claims["jti"] = uuid.uuid4().hex
            with lock:
                tag = q.get("tag", "")
                if hold["next"].get(tag, 0) > 0:
                    hold["next"][tag] -= 1
                    hold["held"] += 1
                    gen = hold["generation"]
                    lock.wait_for(lambda: hold["generation"] != gen, timeout=60)
                    hold["held"] -= 1
            now = int(time.time())
            claims["exp"], claims["iat"] = now + ttl, now
            token = mint_jwt.mint_one(desc, self.server.keydir, self.server.keys)
            with lock:
                minted.append({"ttl": ttl, "sub": claims.get("sub"), "exp": now + ttl})
            return self.answer(200, {"token": token, "expires_at": rfc3339(now + ttl)})
        if u.path == "/__minted":
            with lock:
                return self.answer(200, {"minted": len(minted), "held": hold["held"], "tokens": list(minted)})
        if u.path == "/__hold":
            with lock:
                tag = q.get("tag", "")
                hold["next"][tag] = hold["next"].get(tag, 0) + int(q.get("n", "1"))
            return self.answer(200, {})
        if u.path == "/__release":
            with lock:
                hold["generation"] += 1
                lock.notify_all()
            return self.answer(200, {})
        return self.answer(404, {"error": "not found"})


def main(argv):
    if len(argv) != 3:
        sys.stderr.write(__doc__)
        return 2
    keydir = argv[1]
    text = argv[2]
    if os.path.exists(text):
        with open(text) as f:
            text = f.read()
    base = json.loads(text)
    with open(os.path.join(keydir, "keys.json")) as f:
        keys = json.load(f)["keys"]
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.keydir, server.keys, server.base = keydir, keys, base
    print(json.dumps({"listening": server.server_address[1]}), flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
