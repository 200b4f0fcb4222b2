#!/usr/bin/python3
"""analytics_collector.py — an HTTP collector for the analytics policy's
http sink (spec/03-policies/08-analytics/03-integration_spec.lua), which
the spec can make stall. Standard library only.

    /usr/bin/python3 spec/support/analytics_collector.py

listens on 127.0.0.1 (a port the system chooses) and prints, once
listening, one line on stdout: {"port": PORT, "pid": PID}

  POST /events   a batch: kept and answered 204 while the collector is not
                 stalled; while it is, the request is held unanswered until
                 it is unstalled (or 30 s), then answered 503 and not kept
                 (the sender has given up on it long before)
  GET /stall     stall from now on; GET /unstall: stop stalling
  GET /held      how many POSTs arrived while stalled
  GET /events    every batch kept, concatenated, in arrival order
  GET /types     the Content-Type of each batch kept, one per line
"""
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

lock = threading.Lock()
unstalled = threading.Event()
unstalled.set()
batches, types = [], []
held = [0]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body=b""):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n)
        if not unstalled.is_set():
            with lock:
                held[0] += 1
            unstalled.wait(30)
            self.answer(503)
            return
        with lock:
            batches.append(body)
            types.append(self.headers.get("Content-Type", ""))
        self.answer(204)

    def do_GET(self):
        if self.path == "/stall":
            unstalled.clear()
            self.answer(200, b"stalled")
        elif self.path == "/unstall":
            unstalled.set()
            self.answer(200, b"unstalled")
        elif self.path == "/held":
            with lock:
                self.answer(200, str(held[0]).encode())
        elif self.path == "/events":
            with lock:
                self.answer(200, b"".join(batches))
        elif self.path == "/types":
            with lock:
                self.answer(200, "\n".join(types).encode())
        else:
            self.answer(404)


def main():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    print(json.dumps({"port": srv.server_address[1], "pid": os.getpid()}), flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
