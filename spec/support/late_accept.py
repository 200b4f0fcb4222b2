#!/usr/bin/python3
"""late_accept.py — a WebSocket echo backend whose listening socket is full
when weir connects, so that weir's connection is still on its way (SYN_SENT)
when connect() returns, for spec/02-integration/02-handshake_spec.lua.
Standard library only.

    /usr/bin/python3 spec/support/late_accept.py

Listens on 127.0.0.1 (a port the system chooses) with a backlog of 0 and
fills its accept queue with one connection of its own, so the kernel drops
the SYNs that come next. Then, on stdout, one JSON object a line:

  {"port": PORT}          listening, queue full: point weir at it now
  {"pending": true}       a connection to PORT is in SYN_SENT (read from
                          /proc/net/tcp): the queue is emptied, and the
                          connection gets through with its next SYN
  {"path": "/..."}        the upgrade request of the connection accepted
  {"end": WHY}            the connection ended ("eof", "close")

The connection accepted gets a 101 and its text and binary frames back
(unmasked, as a server sends them); a close frame is answered and ends it.
It serves one connection, then exits. The order is set by what the kernel
reports: it polls /proc/net/tcp every 10 ms for weir's SYN_SENT (for 30 s
at most), and waits on its sockets for the rest.
"""
import base64
import hashlib
import json
import socket
import struct
import sys
import time

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def say(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def syn_sent_to(port):
    """Is a connection to 127.0.0.1:PORT in SYN_SENT?"""
    want = "0100007F:%04X" % port
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[2] == want and fields[3] == "02":
                return True
    return False


def read_exact(conn, n):
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def echo(conn):
    while True:
        b0, b1 = read_exact(conn, 2)
        op, n = b0 & 0x0F, b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", read_exact(conn, 2))[0]
        elif n == 127:
            n = struct.unpack("!Q", read_exact(conn, 8))[0]
        key = read_exact(conn, 4) if b1 & 0x80 else b"\0\0\0\0"
        data = bytes(c ^ key[i % 4] for i, c in enumerate(read_exact(conn, n)))
        if n < 126:
            head = bytes([0x80 | op, n])
        elif n < 65536:
            head = bytes([0x80 | op, 126]) + struct.pack("!H", n)
        else:
            head = bytes([0x80 | op, 127]) + struct.pack("!Q", n)
        if op in (1, 2, 8):
            conn.sendall(head + data)
        if op == 8:
            return "close"


def main():
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    port = lsock.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port))
    say({"port": port})

    deadline = time.monotonic() + 30
    while not syn_sent_to(port):
        if time.monotonic() > deadline:
            say({"end": "no connection came"})
            return
        time.sleep(0.01)
    say({"pending": True})
    first, _ = lsock.accept()
    first.close()
    filler.close()

    conn, _ = lsock.accept()
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = conn.recv(4096)
        if not chunk:
            say({"end": "eof"})
            return
        head += chunk
    lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    say({"path": lines[0].split(" ")[1]})
    key = ""
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "sec-websocket-key":
            key = value.strip()
    accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
    conn.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  "Sec-WebSocket-Accept: %s\r\n\r\n" % accept).encode())
    try:
        why = echo(conn)
    except (EOFError, ConnectionError):
        why = "eof"
    say({"end": why})
    conn.close()


if __name__ == "__main__":
    main()
