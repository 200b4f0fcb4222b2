#!/usr/bin/python3
"""client.py -- a scripted WebSocket client (python websockets 10.x) for the specs.

Usage: /usr/bin/python3 client.py SCENARIO.json   (or the JSON itself)
Runs the same scenarios as client.js and prints the same JSON transcript on
stdout; see README.md beside this file.
"""

import asyncio
import base64
import hashlib
import json
import os
import ssl
import sys
import time

import websockets
import websockets.client
import websockets.exceptions

SMALL = 4096


def load_scenario():
    arg = sys.argv[1] if len(sys.argv) > 1 else "{}"
    if arg.strip().startswith("{"):
        return json.loads(arg)
    with open(arg, encoding="utf-8") as f:
        return json.load(f)


def describe(data, is_text):
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    d = {"length": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
    if len(raw) <= SMALL:
        if is_text:
            d["text"] = raw.decode("utf-8")
        else:
            d["b64"] = base64.b64encode(raw).decode("ascii")
    return d


class Recorder(websockets.client.WebSocketClientProtocol):
    """Records the pings it receives; answers them unless auto_pong is off."""

    transcript = None
    auto_pong = True
    counts = None

    async def pong(self, data=b""):
        # websockets calls pong() itself for every ping it receives; the
        # scenario's own pongs go through really_pong().
        payload = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        self.transcript["events"].append({"type": "ping", "payload": payload})
        self.counts["pings"] += 1
        if self.auto_pong:
            await super().pong(data)

    async def really_pong(self, data):
        await super().pong(data)


async def main():
    sc = load_scenario()
    t = {
        "impl": "python",
        "open": False,
        "protocol": None,
        "extensions": None,
        "handshake": None,
        "events": [],
        "sent": [],
        "closed": None,
        "error": None,
    }
    counts = {"messages": 0, "pings": 0, "pongs": 0}
    started = time.monotonic()
    timeout = sc.get("timeout", 20)

    Recorder.transcript = t
    Recorder.counts = counts
    Recorder.auto_pong = sc.get("auto_pong", True) is not False

    kwargs = {
        "create_protocol": Recorder,
        "subprotocols": sc.get("protocols") or None,
        "extra_headers": list((sc.get("headers") or {}).items()),
        "origin": sc.get("origin"),
        "max_size": None,
        "max_queue": None,
        "ping_interval": None,
        "open_timeout": timeout,
        "close_timeout": timeout,
    }
    if sc.get("compression") is False:
        kwargs["compression"] = None
    if sc["url"].startswith("wss:"):
        ctx = ssl.create_default_context(cafile=sc.get("ca"))
        if sc.get("insecure"):
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        kwargs["ssl"] = ctx

    try:
        ws = await websockets.client.connect(sc["url"], **kwargs)
    except websockets.exceptions.InvalidStatusCode as e:
        t["handshake"] = {"status": e.status_code,
                          "headers": {k.lower(): v for k, v in e.headers.raw_items()},
                          "body": ""}
        return t
    except Exception as e:  # noqa: BLE001 -- every failure goes in the transcript
        t["error"] = "%s: %s" % (type(e).__name__, e)
        return t

    t["open"] = True
    t["handshake"] = {"status": 101,
                      "headers": {k.lower(): v for k, v in ws.response_headers.raw_items()}}
    t["protocol"] = ws.subprotocol
    t["extensions"] = ws.response_headers.get("Sec-WebSocket-Extensions")

    def record_close():
        if t["closed"] is not None:
            return
        rcvd = ws.close_rcvd
        if rcvd is None:
            t["closed"] = {"code": 1006, "reason": ""}
        else:
            t["closed"] = {"code": rcvd.code, "reason": rcvd.reason}
        t["events"].append(dict(type="close", **t["closed"]))

    async def reader():
        try:
            while True:
                msg = await ws.recv()
                ev = describe(msg, isinstance(msg, str))
                ev["type"] = "message"
                ev["opcode"] = 1 if isinstance(msg, str) else 2
                t["events"].append(ev)
                counts["messages"] += 1
        except websockets.exceptions.ConnectionClosed:
            pass
        except Exception as e:  # noqa: BLE001
            t["events"].append({"type": "error", "message": "%s: %s" % (type(e).__name__, e)})
        await ws.wait_closed()
        record_close()

    reader_task = asyncio.ensure_future(reader())

    async def wait_pong(waiter, payload):
        try:
            await waiter
            t["events"].append({"type": "pong", "payload": payload})
            counts["pongs"] += 1
        except Exception:  # noqa: BLE001 -- the connection closed first
            pass

    def payload_of(step):
        if "text" in step:
            s = step["text"] * step.get("repeat", 1)
            return s, False
        if "b64" in step:
            return base64.b64decode(step["b64"]), True
        return os.urandom(step.get("size", 0)), True

    async def run():
        for i, s in enumerate(sc.get("steps", [])):
            op = s["op"]
            if op == "send":
                data, binary = payload_of(s)
                await ws.send(data)
                t["sent"].append(describe(data, not binary))
            elif op == "fragments":
                if "text" in s:
                    parts, binary = list(s["text"]), False
                else:
                    parts, binary = [base64.b64decode(x) for x in s["b64"]], True
                await ws.send(iter(parts))
                whole = (b"" if binary else "").join(parts)
                t["sent"].append(describe(whole, not binary))
            elif op == "ping":
                payload = s.get("payload", "")
                waiter = await ws.ping(payload.encode("utf-8"))
                asyncio.ensure_future(wait_pong(waiter, payload))
            elif op == "pong":
                await ws.really_pong(s.get("payload", "").encode("utf-8"))
            elif op == "close":
                code = s.get("code", 1000)
                asyncio.ensure_future(ws.close(code, s.get("reason", "")))
                await asyncio.sleep(0)
            elif op == "drop":
                ws.transport.abort()
            elif op == "wait":
                if s.get("close"):
                    await asyncio.shield(reader_task)
                else:
                    def done():
                        return all(counts[k] >= s[k] for k in ("messages", "pings", "pongs") if k in s)
                    while not done() and t["closed"] is None and not reader_task.done():
                        await asyncio.sleep(0.01)
            elif op == "stream":
                total, chunk = s["total"], s.get("chunk", 65536)
                h = hashlib.sha256()
                sent = 0
                while sent < total:
                    b = os.urandom(min(chunk, total - sent))
                    h.update(b)
                    sent += len(b)
                    await ws.send(b)
                t["sent"].append({"stream": True, "length": sent, "sha256": h.hexdigest()})
            elif op == "sleep":
                await asyncio.sleep(s["ms"] / 1000.0)
            else:
                raise ValueError("unknown op %s" % op)

    try:
        await asyncio.wait_for(run(), timeout)
        if t["closed"] is None and sc.get("close_at_end", True) is not False:
            await asyncio.wait_for(ws.close(1000), timeout)
        await asyncio.wait_for(asyncio.shield(reader_task), timeout)
    except asyncio.TimeoutError:
        t["error"] = "timeout"
        ws.transport.abort()
    except Exception as e:  # noqa: BLE001
        t["error"] = "%s: %s" % (type(e).__name__, e)
    t["duration_ms"] = int((time.monotonic() - started) * 1000)
    return t


if __name__ == "__main__":
    transcript = asyncio.run(main())
    sys.stdout.write(json.dumps(transcript) + "\n")
    sys.stdout.flush()
