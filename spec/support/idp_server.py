#!/usr/bin/python3
"""idp_server.py — a small identity provider over HTTPS for the specs of the
token policies (jwt with `jwks_url`, introspection). Standard library only;
run it with /usr/bin/python3.

    /usr/bin/python3 spec/support/idp_server.py --cert CERT --key KEY
        [--port PORT] [--plain] [--jwks FILE] [--tokens FILE]
        [--client-id ID --client-secret SECRET] [--bearer TOKEN]

listens on 127.0.0.1:PORT (0 or absent: the system picks one) with TLS
(CERT and KEY: PEM files; --plain: plain HTTP instead), and on a second,
plain-HTTP port for the spec's controls, and prints one line on stdout once
both listen:

    {"port": PORT, "control": CONTROL_PORT, "tls": true, "pid": PID}

The IdP port speaks HTTP/1.1 with keep-alive: a client that keeps its
connection open sends any number of requests on it (idle connections are
closed after 60 s), so the counters below show whether a client reuses
connections.

IdP endpoints (the TLS port):

  GET  /jwks.json    the current content of --jwks, read again for every
                     request (a spec rotates keys by rewriting the file);
                     404 when the file is missing
  POST /introspect   RFC 7662. The body must be application/x-www-form-
                     urlencoded with a `token`. Client authentication, as
                     configured: --client-id/--client-secret by HTTP Basic
                     (id and secret form-urlencoded before base64, RFC 6749
                     2.3.1) or by the form fields client_id/client_secret;
                     --bearer by `Authorization: Bearer TOKEN`; neither: none
                     needed. Bad or missing credentials: 401
                     {"error":"invalid_client"}. The answer comes from
                     --tokens, a JSON object token -> introspection response,
                     read again for every request; an unknown token gets
                     {"active": false}. In a response, "exp_in", "iat_in"
                     and "nbf_in" (seconds) become exp/iat/nbf = now + N.
  GET  /stats        the counters (below), also on the control port

Every IdP endpoint also takes, as query parameters, `delay=MS` (wait MS
milliseconds before answering), `status=N` (answer status N with a small
JSON body instead) and `garbage=1` (answer 200 with an HTML body) — so a
URL configured in weir can be slow or broken on its own.

Controls (the plain control port; they apply to /jwks.json and /introspect):

  GET /control?delay=MS&status=N&garbage=1&path=/introspect
                     set the controls: every answer waits MS ms; answers
                     status N instead; garbage=1 answers 200 with an HTML
                     body (not JSON); path= limits them to that endpoint.
                     Answers the controls now in force as JSON.
  GET /control       (no parameters) clears every control
  GET /stats         the counters:
      {"connections": N,   TCP connections accepted on the IdP port
       "open": N,          of which still open
       "requests": N,      requests on the IdP port (/stats excluded)
       "reused": N,        requests that came on a connection used before
       "paths": {"/introspect": N, "/jwks.json": N},
       "introspect": {"auth_failed": N, "active": N, "inactive": N,
                      "bad_request": N},
       "tokens": {SHA256_HEX_OF_TOKEN: N},   introspections per token
       "last": {"path":…, "auth": "basic"|"post"|"bearer"|"none",
                "content_type":…, "accept":…, "token_type_hint":…,
                "form_keys": [...]}}          the last IdP request
  GET /reset         zero the counters

Stop it with SIGTERM (what "the IdP is down" means in a spec).
"""
import argparse
import base64
import hashlib
import hmac
import json
import os
import socket
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote_plus, urlsplit

MAX_DELAY_MS = 60000
MAX_BODY = 1 << 20
IDLE_TIMEOUT = 60

lock = threading.Lock()
controls = {}
stats = {}


def reset_stats():
    with lock:
        stats.clear()
        stats.update({"connections": 0, "open": 0, "requests": 0, "reused": 0, "paths": {},
                      "introspect": {"auth_failed": 0, "active": 0, "inactive": 0, "bad_request": 0},
                      "tokens": {}, "last": None})


reset_stats()


def snapshot():
    with lock:
        return json.loads(json.dumps(stats))


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    tls_ctx = None
    opts = None

    def get_request(self):
        sock, addr = self.socket.accept()
        with lock:
            stats["connections"] += 1
            stats["open"] += 1
        if self.tls_ctx is not None:
            # the handshake runs in the connection's thread (setup), so that
            # a client that stalls it never blocks accept
            sock = self.tls_ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def shutdown_request(self, request):
        with lock:
            stats["open"] -= 1
        super().shutdown_request(request)

    def handle_error(self, request, client_address):
        pass  # clients that hang up, time out or fail the handshake are part of the tests


class ControlServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass


def read_json_file(path):
    with open(path, "rb") as f:
        return json.loads(f.read().decode("utf-8"))


def ct_eq(a, b):
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


class Base(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def send_json(self, status, obj, extra=None):
        body = json.dumps(obj).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()


class Control(Base):
    def do_GET(self):
        url = urlsplit(self.path)
        q = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        if url.path == "/stats":
            return self.send_json(200, snapshot())
        if url.path == "/reset":
            reset_stats()
            return self.send_json(200, snapshot())
        if url.path == "/control":
            with lock:
                controls.clear()
                if "delay" in q:
                    controls["delay"] = min(int(q["delay"]), MAX_DELAY_MS)
                if "status" in q:
                    controls["status"] = int(q["status"])
                if q.get("garbage") == "1":
                    controls["garbage"] = True
                if q.get("path"):
                    controls["path"] = q["path"]
                now = dict(controls)
            return self.send_json(200, now)
        return self.send_json(404, {"error": "not_found"})


class IdP(Base):
    timeout = IDLE_TIMEOUT

    def setup(self):
        self.request.settimeout(IDLE_TIMEOUT)
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()
        super().setup()
        self.served = 0

    def count(self, path):
        with lock:
            stats["requests"] += 1
            if self.served > 0:
                stats["reused"] += 1
            stats["paths"][path] = stats["paths"].get(path, 0) + 1
        self.served += 1

    def controls_for(self, path, q):
        with lock:
            c = dict(controls)
        if c.get("path") and c["path"] != path:
            c = {}
        if "delay" in q:
            c["delay"] = min(int(q["delay"]), MAX_DELAY_MS)
        if "status" in q:
            c["status"] = int(q["status"])
        if q.get("garbage") == "1":
            c["garbage"] = True
        return c

    # Apply delay/status/garbage. Returns True when the answer was given.
    def disturbed(self, c):
        if c.get("delay"):
            time.sleep(c["delay"] / 1000.0)
        if c.get("status"):
            self.send_json(c["status"], {"error": "forced", "status": c["status"]})
            return True
        if c.get("garbage"):
            body = b"<html><body>502 Bad Gateway (not JSON)</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return True
        return False

    def read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n < 0 or n > MAX_BODY:
            raise ValueError("body too large")
        return self.rfile.read(n) if n else b""

    def do_GET(self):
        url = urlsplit(self.path)
        q = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        if url.path == "/stats":
            return self.send_json(200, snapshot())
        self.count(url.path)
        with lock:
            stats["last"] = {"path": url.path, "method": "GET"}
        if url.path == "/jwks.json":
            if self.disturbed(self.controls_for(url.path, q)):
                return
            path = self.server.opts.jwks
            try:
                with open(path, "rb") as f:
                    body = f.read()
            except (OSError, TypeError):
                return self.send_json(404, {"error": "no JWKS file"})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        return self.send_json(404, {"error": "not_found"})

    # Which client authentication the request carries and whether it is
    # right: ("basic"|"post"|"bearer"|"none", ok)
    def client_auth(self, form):
        o = self.server.opts
        h = self.headers.get("Authorization") or ""
        scheme, _, cred = h.partition(" ")
        scheme = scheme.lower()
        if o.bearer is not None:
            return ("bearer" if scheme == "bearer" else "none"), (scheme == "bearer" and ct_eq(cred.strip(), o.bearer))
        if o.client_id is None:
            return "none", True
        if scheme == "basic":
            try:
                raw = base64.b64decode(cred.strip(), validate=True).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                return "basic", False
            cid, sep, secret = raw.partition(":")
            if not sep:
                return "basic", False
            cid, secret = unquote_plus(cid), unquote_plus(secret)
            return "basic", ct_eq(cid, o.client_id) and ct_eq(secret, o.client_secret)
        if "client_id" in form or "client_secret" in form:
            cid, secret = form.get("client_id", [""])[-1], form.get("client_secret", [""])[-1]
            return "post", ct_eq(cid, o.client_id) and ct_eq(secret, o.client_secret)
        return "none", False

    def do_POST(self):
        url = urlsplit(self.path)
        q = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        try:
            body = self.read_body()
        except ValueError:
            self.close_connection = True
            return self.send_json(413, {"error": "too large"})
        self.count(url.path)
        if url.path != "/introspect":
            return self.send_json(404, {"error": "not_found"})
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        try:
            form = parse_qs(body.decode("ascii"), keep_blank_values=True, strict_parsing=bool(body))
        except (UnicodeDecodeError, ValueError):
            form = None
        auth, ok = self.client_auth(form or {})
        with lock:
            stats["last"] = {"path": url.path, "method": "POST", "auth": auth, "content_type": ctype,
                             "accept": self.headers.get("Accept"),
                             "token_type_hint": (form or {}).get("token_type_hint", [None])[-1],
                             "form_keys": sorted((form or {}).keys())}
        if self.disturbed(self.controls_for(url.path, q)):
            return
        if ctype != "application/x-www-form-urlencoded" or form is None or "token" not in form:
            with lock:
                stats["introspect"]["bad_request"] += 1
            return self.send_json(400, {"error": "invalid_request"})
        if not ok:
            with lock:
                stats["introspect"]["auth_failed"] += 1
            return self.send_json(401, {"error": "invalid_client"},
                                  {"WWW-Authenticate": 'Basic realm="idp"'})
        token = form["token"][-1]
        digest = hashlib.sha256(token.encode("utf-8")).hexdigest()
        try:
            table = read_json_file(self.server.opts.tokens) if self.server.opts.tokens else {}
        except (OSError, ValueError):
            table = {}
        answer = table.get(token)
        if not isinstance(answer, dict):
            answer = {"active": False}
        answer = dict(answer)
        now = int(time.time())
        for rel, claim in (("exp_in", "exp"), ("iat_in", "iat"), ("nbf_in", "nbf")):
            if rel in answer:
                answer[claim] = now + int(answer.pop(rel))
        with lock:
            stats["tokens"][digest] = stats["tokens"].get(digest, 0) + 1
            stats["introspect"]["active" if answer.get("active") is True else "inactive"] += 1
        return self.send_json(200, answer)


def main():
    ap = argparse.ArgumentParser(description="identity provider for weir's specs")
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--plain", action="store_true", help="plain HTTP instead of TLS")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--jwks")
    ap.add_argument("--tokens")
    ap.add_argument("--client-id")
    ap.add_argument("--client-secret")
    ap.add_argument("--bearer")
    o = ap.parse_args()
    if (o.client_id is None) != (o.client_secret is None):
        ap.error("--client-id and --client-secret go together")
    if not o.plain and not (o.cert and o.key):
        ap.error("--cert and --key are needed (or --plain)")

    srv = Server(("127.0.0.1", o.port), IdP)
    srv.opts = o
    if not o.plain:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(o.cert, o.key)
        srv.tls_ctx = ctx
    ctl = ControlServer(("127.0.0.1", 0), Control)
    threading.Thread(target=ctl.serve_forever, daemon=True).start()
    print(json.dumps({"port": srv.server_address[1], "control": ctl.server_address[1],
                      "tls": not o.plain, "pid": os.getpid()}), flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
