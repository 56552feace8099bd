"""§9 Guarantees: nothing acknowledged is lost across kill -9; a database outage gives
`unavailable`, never a crash, and service resumes by itself."""
import asyncio
import os
import re

import pytest
import websockets

from conftest import http_get, pg_ctl
from parley_client import (
    channel_with_subscriber,
    DEFAULT_TIMEOUT, auth, connect, connect_as, create_channel, decrypt_message, message_fields,
    rotate_key, users,
)


async def _collect(conn, channel_id, into):
    """Append the seq of every event.message of the channel (and the frame) until closed."""
    try:
        while True:
            e = await conn.next_event(timeout=3600)
            if e.get("type") == "event.message" and e["channel_id"] == channel_id:
                into.append(e)
    except (asyncio.TimeoutError, asyncio.CancelledError):
        pass


@pytest.mark.time_limit(300)
async def test_kill_9_loses_nothing_acknowledged(own_relay):
    relay = own_relay()
    await asyncio.to_thread(relay.start)
    ca, a, cb, b, ch = await channel_with_subscriber(relay.url)
    received = []
    collector = asyncio.create_task(_collect(cb, ch.channel_id, received))

    # the sender pipelines (8 in flight); kill -9 once 60 are acknowledged
    acked = {}          # client_msg_id -> (seq, fields)
    attempted = {}      # client_msg_id -> fields
    kill_at = 60
    killed = asyncio.Event()
    sem = asyncio.Semaphore(8)

    async def one(i):
        fields = message_fields(ch, a, f"crash {i}")
        async with sem:
            if killed.is_set():
                return
            attempted[fields["client_msg_id"]] = fields
            try:
                reply = await ca.request("message", **fields)
            except (ConnectionError, websockets.ConnectionClosed, asyncio.TimeoutError):
                return
            if reply.get("type") == "message":
                acked[fields["client_msg_id"]] = (reply["seq"], fields)
                if len(acked) >= kill_at and not killed.is_set():
                    killed.set()
                    relay.kill()

    await asyncio.gather(*(one(i) for i in range(400)))
    assert killed.is_set(), f"only {len(acked)} acknowledged"
    await cb.wait_closed()
    await ca.wait_closed()
    collector.cancel()
    await asyncio.gather(collector, return_exceptions=True)
    acked_seqs = sorted(seq for seq, _ in acked.values())
    print(f"\nkill -9 after {len(acked)} acknowledged, {len(attempted)} sent, "
          f"{len(received)} delivered before the kill")
    assert len(set(acked_seqs)) == len(acked_seqs)

    # the same data dir, a new process (it adopts the PostgreSQL left running)
    await asyncio.to_thread(relay.start)
    status, _, body = await asyncio.to_thread(http_get, relay.http + "/healthz")
    assert status == 200 and body.strip() == b"ok"

    # the subscriber resumes with its session from the last seq it received
    last = received[-1]["seq"] if received else 0
    assert [e["seq"] for e in received] == list(range(1, last + 1))
    cb2 = await connect(relay.url)
    await auth(cb2, b)
    sub = await cb2.ok("subscribe", channels=[{"channel_id": ch.channel_id, "after": last}])
    entry = sub["channels"][0]
    assert entry["recovered"] is True
    last_seq = entry["last_seq"]
    assert last_seq >= max(acked_seqs)
    while True:
        e = await cb2.next_event(timeout=DEFAULT_TIMEOUT)
        if e["type"] == "event.synced":
            assert e["seq"] == (received[-1]["seq"] if received else last)
            break
        if e["type"] == "event.message":
            received.append(e)
    seqs = [e["seq"] for e in received]
    assert seqs == list(range(1, last_seq + 1)), "every seq exactly once, contiguous"
    # every acknowledged message is there, with its content
    by_seq = {e["seq"]: e for e in received}
    for seq, fields in acked.values():
        assert by_seq[seq]["iv"] == fields["iv"] and by_seq[seq]["ciphertext"] == fields["ciphertext"]
        assert decrypt_message(ch.key, by_seq[seq], a.spki).startswith("crash ")
    # unacknowledged ones are there at most once: bodies are unique
    bodies = [decrypt_message(ch.key, e, a.spki) for e in received]
    assert len(bodies) == len(set(bodies))

    # the sender retries what was not acknowledged: duplicate if it was stored, new otherwise
    ca2 = await connect_as(relay.url, a)
    stored_ivs = {e["iv"]: e["seq"] for e in received}
    for cid, fields in attempted.items():
        if cid in acked:
            again = await ca2.ok("message", **fields)
            assert again["duplicate"] is True and again["seq"] == acked[cid][0]
            continue
        again = await ca2.request("message", **fields)
        if fields["iv"] in stored_ivs:
            assert again["type"] == "message" and again["duplicate"] is True
            assert again["seq"] == stored_ivs[fields["iv"]]
        else:
            assert again["type"] == "message" and again["duplicate"] is False, again
    history = []
    after = 0
    while True:
        page = await ca2.ok("messages", channel_id=ch.channel_id, after=after, limit=200)
        history += page["messages"]
        if not page["has_more"]:
            break
        after = page["messages"][-1]["seq"]
    assert [m["seq"] for m in history] == list(range(1, len(history) + 1))
    assert len({m["iv"] for m in history}) == len(history) == len(attempted)
    print(f"after the restart: last_seq {last_seq}, {len(history)} stored after the retries")
    assert relay.terminate() == 0


@pytest.mark.time_limit(300)
async def test_database_outage_gives_unavailable_and_recovers(own_relay):
    relay = own_relay()
    await asyncio.to_thread(relay.start)
    (ca, a), = await users(relay.url, 1)
    ch = await create_channel(ca, a)
    await rotate_key(ca, a, ch, [a])
    await ca.ok("message", **message_fields(ch, a, "before"))

    stopped = await asyncio.to_thread(pg_ctl, relay.data_dir, "stop", "-m", "fast", "-w", "-t", "60")
    assert stopped.returncode == 0, stopped.stdout
    try:
        reply = await ca.request("channels", timeout=30)
        assert reply["type"] == "error" and reply["code"] == "unavailable", reply
        assert isinstance(reply.get("retry_after_ms"), int) and reply["retry_after_ms"] >= 0
        reply = await ca.request("message", timeout=30, **message_fields(ch, a, "during"))
        assert reply["type"] == "error" and reply["code"] == "unavailable", reply
        assert isinstance(reply.get("retry_after_ms"), int)
        # /healthz may come from a periodic check: give it a few seconds to notice
        for _ in range(150):
            status, headers, body = await asyncio.to_thread(http_get, relay.http + "/healthz")
            if status != 200:
                break
            await asyncio.sleep(0.1)
        assert status == 503 and body.strip() == b"unavailable", (status, body)
        assert headers["content-type"].startswith("text/plain")
        assert relay.proc.poll() is None, "the relay must not crash"
        assert (await ca.ok("ping"))["type"] == "ping"
    finally:
        started = await asyncio.to_thread(
            pg_ctl, relay.data_dir, "start", "-l", os.path.join(relay.data_dir, "postgres.log"), "-w", "-t", "60")
        assert started.returncode == 0, started.stdout

    # service resumes by itself
    for _ in range(300):
        reply = await ca.request("channels", timeout=30)
        if reply["type"] == "channels":
            break
        assert reply["code"] == "unavailable", reply
        await asyncio.sleep(0.1)
    assert reply["type"] == "channels", reply
    ok = await ca.ok("message", **message_fields(ch, a, "after"))
    assert ok["seq"] == 2
    for _ in range(100):
        status, _, _ = await asyncio.to_thread(http_get, relay.http + "/healthz")
        if status == 200:
            break
        await asyncio.sleep(0.1)
    assert status == 200
    # the workers replaced their broken connections, and /metrics says so
    _, _, metrics = await asyncio.to_thread(http_get, relay.http + "/metrics")
    reconnected = re.search(rb'^parley_database_reconnects_total\{result="ok"\} (\d+)$', metrics, re.M)
    assert reconnected and int(reconnected.group(1)) >= 1, metrics
    assert re.search(rb"^parley_outgoing_queue_bytes \d+$", metrics, re.M)
    assert re.search(rb"^parley_database_queue_jobs \d+$", metrics, re.M)
    assert relay.terminate() == 0
