#!/usr/bin/python3
"""fake_admin.py — a stand-in for weir's admin API (or its token endpoint)
for the CLI's specs: it records every request and answers canned JSON from
a table the spec supplies, so that a spec asserts exactly what `weir
COMMAND` sent and what it printed for a given answer.

Run with /usr/bin/python3 (standard library only).

    fake_admin.py [--host ADDRESS] [CERT KEY]

Listens on a port of ADDRESS (default 127.0.0.1; ::1 for IPv6) and one of
127.0.0.1, both picked by the system, and prints, once listening, one line
on stdout:

    {"listening": PORT, "control": CONTROL_PORT}

PORT is the fake server (HTTPS with CERT and KEY, PEM files, when given;
else plain HTTP). Every request to it is recorded and answered from the
table: the first entry whose "method" and "path" equal the request's
(path with its query, else path without it) gives "status" (default 200),
"body" (a JSON value, sent encoded, or "raw": a string sent as it is) and
"headers" ({name: value}); with no entry, 404 and the standard error JSON.
Every answer has Content-Length and Connection: close, as weir's have.

CONTROL_PORT, plain HTTP, is the spec's:

    POST /__answers   body: [{"method", "path", "status", "body"|"raw", "headers"}]:
                      replace the table; forget the requests recorded
    GET  /__requests  {"requests": [{"method", "target", "path", "query",
                      "headers": [[name, value], ...], "body"}]}, in order
    POST /__hold      body {"n": N}: the next N requests to PORT are
                      recorded, then wait unanswered until /__release (at
                      most 30 s)
    GET  /__held      {"held": H}: requests waiting now
    POST /__release   answer the held requests
"""
import json
import socket
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

lock = threading.Condition()
state = {"answers": [], "requests": [], "hold": 0, "held": 0, "generation": 0}


def send(handler, status, body, headers=None):
    data = body if isinstance(body, bytes) else body.encode()
    handler.send_response(status)
    for k, v in (headers or {}).items():
        handler.send_header(k, v)
    handler.send_header("Content-Length", str(len(data)))
    handler.send_header("Connection", "close")
    handler.end_headers()
    handler.wfile.write(data)
    handler.close_connection = True


def error_json(code, message):
    return json.dumps({"type": "error", "error": {"type": "/problems/not-found", "code": code,
                                                  "message": message}, "timestamp": "2026-01-01T00:00:00Z"})


class Fake(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def handle_any(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n > 0 else b""
        url = urlsplit(self.path)
        rec = {"method": self.command, "target": self.path, "path": url.path, "query": url.query,
               "headers": [[k, v] for k, v in self.headers.items()],
               "body": body.decode("utf-8", "replace")}
        with lock:
            state["requests"].append(rec)
            answers = list(state["answers"])
            if state["hold"] > 0:
                state["hold"] -= 1
                state["held"] += 1
                gen = state["generation"]
                lock.notify_all()
                lock.wait_for(lambda: state["generation"] != gen, timeout=30)
                state["held"] -= 1
        for a in answers:
            if a.get("method", "GET") == self.command and a.get("path") in (self.path, url.path):
                raw = a["raw"] if "raw" in a else json.dumps(a.get("body", {}))
                headers = {"Content-Type": "application/json"}
                headers.update(a.get("headers") or {})
                return send(self, a.get("status", 200), raw, headers)
        send(self, 404, error_json(404, "No fake answer for " + self.command + " " + url.path),
             {"Content-Type": "application/json"})

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = handle_any


class Control(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, obj):
        send(self, 200, json.dumps(obj), {"Content-Type": "application/json"})

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(n) or b"null") if n > 0 else None

    def do_GET(self):
        with lock:
            if self.path == "/__requests":
                return self.reply({"requests": state["requests"]})
            if self.path == "/__held":
                return self.reply({"held": state["held"]})
        send(self, 404, error_json(404, "no such control path"))

    def do_POST(self):
        b = self.body()
        with lock:
            if self.path == "/__answers":
                state["answers"], state["requests"] = b or [], []
                return self.reply({"answers": len(state["answers"])})
            if self.path == "/__hold":
                state["hold"] = int((b or {}).get("n", 1))
                return self.reply({"hold": state["hold"]})
            if self.path == "/__release":
                state["hold"] = 0
                state["generation"] += 1
                lock.notify_all()
                return self.reply({"released": state["held"]})
        send(self, 404, error_json(404, "no such control path"))


class Server(ThreadingHTTPServer):
    daemon_threads = True


class Server6(Server):
    address_family = socket.AF_INET6


def main():
    args = sys.argv[1:]
    host = "127.0.0.1"
    if args[:1] == ["--host"]:
        host, args = args[1], args[2:]
    fake = (Server6 if ":" in host else Server)((host, 0), Fake)
    if len(args) == 2:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args[0], args[1])
        fake.socket = ctx.wrap_socket(fake.socket, server_side=True)
    control = Server(("127.0.0.1", 0), Control)
    threading.Thread(target=fake.serve_forever, daemon=True).start()
    print(json.dumps({"listening": fake.server_address[1], "control": control.server_address[1]}), flush=True)
    control.serve_forever()


if __name__ == "__main__":
    main()
