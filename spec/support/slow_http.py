#!/usr/bin/python3
"""slow_http.py — an HTTP/1.1 server whose answers the spec holds back, for
the specs of policies that wait on weir.http.request
(spec/02-integration/22-policy-io_spec.lua). Standard library only.

    /usr/bin/python3 spec/support/slow_http.py

listens on 127.0.0.1 (a port the system chooses) and prints, once
listening, one line on stdout: {"port": PORT, "pid": PID}

Every connection serves one request (Connection: close):

  /hold/ID      answers 200 "held:ID" only once /release/ID was requested
                (or after 30 s, so that nothing waits forever)
  /release/ID   releases /hold/ID (before or after it arrived); 200 "released:ID"
  /seen/ID      200 "1" when a /hold/ID request has arrived, else "0"
  /delay/MS     answers 200 "delayed:MS" after MS milliseconds
  anything else 200 "ok:PATH"

The spec waits for /seen/ID instead of sleeping, and releases a hold when
it has seen what must happen while the policy waits: the order of events is
set by the spec, never by a timer.
"""
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOLD_MAX = 30.0

lock = threading.Lock()
events = {}      # id -> threading.Event (set by /release)
seen = set()     # ids whose /hold arrived


def event(ident):
    with lock:
        ev = events.get(ident)
        if ev is None:
            ev = events[ident] = threading.Event()
        return ev


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def answer(self, body):
        data = body.encode()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass  # the client (weir) gave up: part of the tests
        self.close_connection = True

    def do_GET(self):
        parts = self.path.split("?", 1)[0].strip("/").split("/")
        what, arg = parts[0], parts[1] if len(parts) > 1 else ""
        if what == "hold":
            with lock:
                seen.add(arg)
            event(arg).wait(HOLD_MAX)
            self.answer("held:" + arg)
        elif what == "release":
            event(arg).set()
            self.answer("released:" + arg)
        elif what == "seen":
            with lock:
                self.answer("1" if arg in seen else "0")
        elif what == "delay":
            time.sleep(min(int(arg or "0"), 30000) / 1000.0)
            self.answer("delayed:" + arg)
        else:
            self.answer("ok:" + self.path)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def handle_error(self, request, client_address):
        pass


def main():
    srv = Server(("127.0.0.1", 0), Handler)
    sys.stdout.write(json.dumps({"port": srv.server_address[1], "pid": os.getpid()}) + "\n")
    sys.stdout.flush()
    srv.serve_forever()


if __name__ == "__main__":
    main()
