#!/usr/bin/python3
"""A WebSocket echo backend for the echo example: every message comes back
with the same type. Usage: backend.py PORT (listens on 127.0.0.1)."""
import asyncio
import sys

import websockets


async def echo(ws, path=None):
    try:
        async for message in ws:
            await ws.send(message)
    except websockets.ConnectionClosed:
        pass


async def main(port):
    async with websockets.serve(echo, "127.0.0.1", port, max_size=None):
        print(f"echo backend listening on ws://127.0.0.1:{port}", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
