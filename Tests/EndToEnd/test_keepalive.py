"""§1 and §10: the relay pings every 30 s and drops a peer silent for 60 s; a peer that
answers the pings stays connected. (Takes about 1.5 minutes; PARLEY_E2E_SKIP_SLOW=1 skips it.)"""
import asyncio
import base64
import os
import struct
import time

import pytest

from parley_client import connect

pytestmark = pytest.mark.skipif(os.environ.get("PARLEY_E2E_SKIP_SLOW") == "1", reason="slow")


async def _raw_silent_peer(port: int):
    """A WebSocket peer that completes the handshake and then never sends a byte.
    Returns (seconds to the first ping, seconds to the drop)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                  f"Sec-WebSocket-Protocol: parley.v1\r\n\r\n").encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 101"), head
    start = time.monotonic()
    first_ping = None
    try:
        while True:
            b0, b1 = await asyncio.wait_for(reader.readexactly(2), 130)
            length = b1 & 0x7F
            if length == 126:
                length = struct.unpack("!H", await reader.readexactly(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", await reader.readexactly(8))[0]
            await reader.readexactly(length)
            opcode = b0 & 0x0F
            if opcode == 0x9 and first_ping is None:
                first_ping = time.monotonic() - start
            if opcode == 0x8:
                break
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    dropped = time.monotonic() - start
    writer.close()
    return first_ping, dropped


@pytest.mark.time_limit(200)
async def test_pings_and_idle_drop(relay):
    answering = await connect(relay.url)  # websockets answers pings by itself
    first_ping, dropped = await _raw_silent_peer(relay.port)
    assert first_ping is not None and first_ping <= 35, first_ping
    assert 55 <= dropped <= 100, dropped
    assert answering.close_code is None
    assert (await answering.ok("ping"))["type"] == "ping"
