"""Shutdown and slow peers: SIGTERM under load exits 0, closes every WebSocket with 1001
and loses nothing acknowledged; a slow-loris HTTP peer is dropped by lws's timeout while
normal clients are still served."""
import asyncio
import json
import signal
import socket
import time

import pytest
import websockets
from websockets.asyncio.client import connect as ws_connect

from conftest import http_get
from parley_client import (
    channel_with_subscriber,
    DEFAULT_TIMEOUT, SUBPROTOCOL, auth, connect, message_fields, send_many,
)


def _healthz_answers(relay) -> bool:
    try:
        status, _, _ = http_get(relay.http + "/healthz", timeout=2)
        return status == 200
    except OSError:
        return False


@pytest.mark.time_limit(300)
async def test_sigterm_under_load(own_relay):
    relay = own_relay()
    await asyncio.to_thread(relay.start)
    ca, a, cb, b, ch = await channel_with_subscriber(relay.url)

    acked: dict[str, int] = {}      # client_msg_id -> seq
    term_at = 40
    termed = asyncio.Event()
    term_time = [0.0]
    sem = asyncio.Semaphore(16)

    async def one(i):
        fields = message_fields(ch, a, f"term {i}")
        async with sem:
            if ca.closed.is_set():
                return
            try:
                reply = await ca.request("message", **fields)
            except (ConnectionError, websockets.ConnectionClosed, asyncio.TimeoutError):
                return
            if reply.get("type") == "message":
                acked[fields["client_msg_id"]] = reply["seq"]
                if len(acked) >= term_at and not termed.is_set():
                    termed.set()
                    term_time[0] = time.monotonic()
                    relay.proc.send_signal(signal.SIGTERM)

    await asyncio.gather(*(one(i) for i in range(600)))
    assert termed.is_set(), f"only {len(acked)} acknowledged"

    code = await asyncio.to_thread(relay.proc.wait, 15)
    elapsed = time.monotonic() - term_time[0]
    assert code == 0, f"exit status {code}:\n{relay.log_text()[-3000:]}"
    assert elapsed < 10, f"took {elapsed:.1f}s to exit"

    assert await ca.wait_closed() == 1001, (ca.close_code, ca.close_reason)
    assert await cb.wait_closed() == 1001, (cb.close_code, cb.close_reason)
    assert not await asyncio.to_thread(_healthz_answers, relay)

    acked_seqs = sorted(acked.values())
    assert len(set(acked_seqs)) == len(acked_seqs)
    print(f"\nSIGTERM after {len(acked)} acknowledged; exited in {elapsed:.2f}s")

    # the same data dir again: every acknowledged message is stored, exactly once, contiguous
    await asyncio.to_thread(relay.start)
    c2 = await connect(relay.url)
    await auth(c2, b)
    sub = await c2.ok("subscribe", channels=[{"channel_id": ch.channel_id, "after": 0}])
    last_seq = sub["channels"][0]["last_seq"]
    assert last_seq >= max(acked_seqs)
    seqs = []
    while True:
        e = await c2.next_event(timeout=DEFAULT_TIMEOUT)
        if e["type"] == "event.synced":
            break
        if e["type"] == "event.message" and e["channel_id"] == ch.channel_id:
            seqs.append(e["seq"])
    assert seqs == list(range(1, last_seq + 1)), "every seq exactly once, contiguous"
    assert set(acked_seqs) <= set(seqs)
    assert relay.terminate() == 0


@pytest.mark.time_limit(120)
async def test_healthz_says_draining_while_the_relay_stops(own_relay):
    """During the drain, /healthz answers 503 "draining" (a balancer stops routing there).
    A subscriber that never reads its replay keeps the drain busy for its full 2 s."""
    relay = own_relay()
    await asyncio.to_thread(relay.start)
    ca, a, cb, b, ch = await channel_with_subscriber(relay.url)
    await send_many(ca, ch, a, 300, body="x" * 400)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", relay.port))
    stuck = await ws_connect(relay.url, sock=sock, subprotocols=[SUBPROTOCOL], compression=None,
                             max_size=None, max_queue=1, ping_interval=None)
    await stuck.send(json.dumps({"id": "a", "type": "auth", "session": b.session}))
    assert json.loads(await asyncio.wait_for(stuck.recv(), 10))["type"] == "auth"
    await stuck.send(json.dumps({"id": "s", "type": "subscribe",
                                 "channels": [{"channel_id": ch.channel_id, "after": 0}]}))
    await asyncio.sleep(0.5)   # the replay fills the socket and the relay's queue

    relay.proc.send_signal(signal.SIGTERM)
    seen = []
    for _ in range(40):
        try:
            status, _, body = await asyncio.to_thread(http_get, relay.http + "/healthz", 1)
            seen.append((status, body.strip()))
            if status == 503:
                break
        except OSError:
            break
        await asyncio.sleep(0.05)
    assert (503, b"draining") in seen, seen
    assert await asyncio.to_thread(relay.proc.wait, 15) == 0
    stuck.transport.abort()


@pytest.mark.time_limit(120)
async def test_slow_loris_is_dropped(own_relay):
    relay = own_relay()
    await asyncio.to_thread(relay.start)
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100

    def loris() -> float | None:
        """Seconds until the relay drops the socket (None: not within 30 s)."""
        sock = socket.create_connection(("127.0.0.1", relay.port), timeout=5)
        sock.settimeout(1.0)
        start = time.monotonic()
        try:
            for byte in request:
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    return time.monotonic() - start
                try:
                    data = sock.recv(4096)
                    if not data:
                        return time.monotonic() - start
                except socket.timeout:
                    pass
                except OSError:
                    return time.monotonic() - start
                if time.monotonic() - start > 30:
                    return None
            return None
        finally:
            sock.close()

    task = asyncio.create_task(asyncio.to_thread(loris))
    await asyncio.sleep(3)
    # meanwhile a normal client connects and is answered quickly
    for _ in range(3):
        started = time.monotonic()
        c = await connect(relay.url)
        assert (await c.ok("ping"))["type"] == "ping"
        assert time.monotonic() - started < 2
        await c.close()
        await asyncio.sleep(1)
    dropped = await task
    print(f"\nslow loris dropped after {dropped}s")
    assert dropped is not None and dropped <= 15, dropped
    assert relay.proc.poll() is None
    assert relay.terminate() == 0
