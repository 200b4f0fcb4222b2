#!/usr/bin/python3
"""http_test_server.py — the HTTP/1.1 server spec/01-unit/http_client_spec.lua
calls core/http_client.c against (standard library only).

    /usr/bin/python3 spec/support/http_test_server.py [--https CERT:KEY]...

listens on 127.0.0.1 (ports chosen by the system: one plain HTTP port and
one HTTPS port per --https), and with plain HTTP on [::1] too when the host
has IPv6 loopback, and prints, once listening, one line on stdout:

    {"http": PORT, "http6": PORT or null, "https": [PORT, ...], "pid": PID}

Connections are kept alive (HTTP/1.1) unless a response says otherwise:
every listener counts the TCP connections it accepted and numbers them, so
a client's connection reuse can be seen. Paths, with query parameters
(every path also takes delay=MS, a pause before answering; close=1, answer
with Connection: close and close; hangup=1, close after answering without
saying so, as a server whose idle timeout struck would):

  /echo                     200, JSON: method, target, path, http_version,
                            headers ([[name, value], ...] in order), body_len,
                            body_sha256, body (latin-1, when <= 65536 bytes),
                            sni (the TLS server name the client sent, or null),
                            conn (this connection's number on its listener,
                            from 1), conn_request (this request's number on
                            its connection, from 1), accepted (connections
                            the listener accepted so far)
  /bytes?size=N&mode=M      N bytes, byte i being i % 251; M is length
                            (Content-Length, the default), chunked (chunks of
                            chunk=C bytes, default 1000, then a trailer) or
                            close (no length: the body ends at the close,
                            Connection: close);
                            X-Body-Sha256 carries the body's hash;
                            body_delay=MS pauses after the head;
                            pad=N adds a header X-Pad of N bytes
  /status?code=N            status N, no body for 1xx/204/304, else "status N"
  /raw?b64=B                writes the base64url-decoded bytes B, then closes
                            (for malformed, interim and truncated responses);
                            rst=1 closes with a reset (SO_LINGER 0) instead
"""
import argparse
import base64
import hashlib
import json
import os
import socket
import ssl
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

PATTERN = bytes(i % 251 for i in range(251))


def pattern(n):
    return (PATTERN * (n // 251 + 1))[:n]


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    tls_ctx = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lock = threading.Lock()
        self.accepted = 0

    def count(self):
        """A connection was accepted: its number on this listener."""
        with self.lock:
            self.accepted += 1
            return self.accepted

    def handle_error(self, request, client_address):
        pass  # clients that hang up or fail the handshake are part of the tests


class Server6(Server):
    address_family = socket.AF_INET6


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "weir-test"
    sys_version = ""

    def setup(self):
        self.conn = self.server.count()
        self.conn_requests = 0
        if self.server.tls_ctx is not None:
            # the handshake runs here, in the connection's thread, not in accept()
            self.request = self.server.tls_ctx.wrap_socket(self.request, server_side=True)
        super().setup()

    def log_message(self, *args):
        pass

    def finish(self):
        super().finish()
        if getattr(self, "rst", False):
            # closed here, before socketserver's shutdown(SHUT_WR) could send a FIN:
            # with SO_LINGER 0 the close is a reset
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()

    def do_any(self):
        self.conn_requests += 1
        u = urlsplit(self.path)
        q = {k: v[-1] for k, v in parse_qs(u.query, keep_blank_values=True).items()}
        self.say_close = q.get("close") == "1"
        self.hangup = q.get("hangup") == "1"
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n > 0 else b""
        if int(q.get("delay", 0)):
            time.sleep(int(q["delay"]) / 1000)
        route = {"/echo": self.echo, "/bytes": self.bytes_, "/status": self.status,
                 "/raw": self.raw}.get(u.path)
        if route is None:
            self.reply(404, b"not found\n")
        else:
            route(u, q, body)
        if self.say_close or self.hangup:
            self.close_connection = True

    def end_head(self):
        """Ends the head, with Connection: close when the connection ends after it."""
        if self.say_close:
            self.send_header("Connection", "close")
        self.end_headers()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_any

    def reply(self, code, body, headers=()):
        self.send_response(code)
        for k, v in headers:
            self.send_header(k, v)
        if not (100 <= code < 200 or code in (204, 304)):
            self.send_header("Content-Length", str(len(body)))
        self.end_head()
        if self.command != "HEAD" and not (100 <= code < 200 or code in (204, 304)):
            self.wfile.write(body)

    def echo(self, u, q, body):
        rec = {
            "method": self.command,
            "target": self.path,
            "path": u.path,
            "http_version": self.request_version,
            "headers": [[k, v] for k, v in self.headers.items()],
            "body_len": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "sni": getattr(self.connection, "weir_sni", None),
            "conn": self.conn,
            "conn_request": self.conn_requests,
            "accepted": self.server.accepted,
        }
        if len(body) <= 65536:
            rec["body"] = body.decode("latin-1")
        self.reply(200, json.dumps(rec).encode(), [("Content-Type", "application/json")])

    def bytes_(self, u, q, body):
        size = int(q.get("size", 0))
        mode = q.get("mode", "length")
        data = pattern(size)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("X-Body-Sha256", hashlib.sha256(data).hexdigest())
        if int(q.get("pad", 0)):
            self.send_header("X-Pad", "a" * int(q["pad"]))
        if mode == "length":
            self.send_header("Content-Length", str(size))
        elif mode == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Trailer", "X-Trailer")
        else:
            self.say_close = True
        self.end_head()
        self.wfile.flush()
        if int(q.get("body_delay", 0)):
            time.sleep(int(q["body_delay"]) / 1000)
        if self.command == "HEAD":
            return
        if mode == "chunked":
            step = max(1, int(q.get("chunk", 1000)))
            for i in range(0, size, step):
                part = data[i:i + step]
                self.wfile.write(b"%x;ext=1\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\nX-Trailer: done\r\n\r\n")
        else:
            self.wfile.write(data)

    def status(self, u, q, body):
        code = int(q.get("code", 200))
        self.reply(code, b"status %d" % code)

    def raw(self, u, q, body):
        b64 = q.get("b64", "")
        self.wfile.write(base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4)))
        self.wfile.flush()
        self.close_connection = True
        self.rst = q.get("rst") == "1"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--https", action="append", default=[], metavar="CERT:KEY")
    args = ap.parse_args()

    servers = [Server(("127.0.0.1", 0), Handler)]
    try:
        v6 = Server6(("::1", 0), Handler)
    except OSError:
        v6 = None
    for pair in args.https:
        cert, key = pair.split(":", 1)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        ctx.sni_callback = lambda sock, name, c: setattr(sock, "weir_sni", name)
        s = Server(("127.0.0.1", 0), Handler)
        s.tls_ctx = ctx
        servers.append(s)
    for s in servers + ([v6] if v6 else []):
        threading.Thread(target=s.serve_forever, daemon=True).start()
    print(json.dumps({"http": servers[0].server_address[1],
                      "http6": v6.server_address[1] if v6 else None,
                      "https": [s.server_address[1] for s in servers[1:]],
                      "pid": os.getpid()}), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
