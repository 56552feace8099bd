"""§8 and §10 Subscriptions: replay, event.synced, recovered, re-subscribe, the hand-over race."""
import asyncio
import json
import random
import time

import pytest
import websockets

from parley_client import (
    DEFAULT_TIMEOUT, Connection, add_member, auth, b64e, connect, connect_as, create_channel, events_of,
    message_fields, new_uuid, remove_member, rotate_key, send_many, send_message, users,
)


async def _room(url, n=2):
    pairs = await users(url, n)
    (ca, a) = pairs[0]
    ch = await create_channel(ca, a, [u for _, u in pairs[1:]])
    for conn, _ in pairs[1:]:
        await conn.next_event("event.member")   # the create; nothing else is pending
    await rotate_key(ca, a, ch, [u for _, u in pairs])
    return pairs, ch


def _index(conn: Connection, pred) -> int:
    for i, frame in enumerate(conn.log):
        if pred(frame):
            return i
    raise AssertionError("frame not found")


async def test_replay_synced_then_live(relay):
    ((ca, a), (cb, b)), ch = await _room(relay.url)
    for i in range(5):
        await send_message(ca, ch, a, f"m{i}")
    sub = await cb.ok("subscribe", id="sub-1", channels=[{"channel_id": ch.channel_id, "after": 2}])
    assert sub == {"re": "sub-1", "type": "subscribe",
                   "channels": [{"channel_id": ch.channel_id, "last_seq": 5, "recovered": True}]}
    replayed = [await cb.next_event(skip=False) for _ in range(4)]
    assert [(e["type"], e.get("seq")) for e in replayed] == \
        [("event.message", 3), ("event.message", 4), ("event.message", 5), ("event.synced", 5)]
    assert replayed[-1] == {"type": "event.synced", "channel_id": ch.channel_id, "seq": 5}
    await send_message(ca, ch, a, "live")
    live = await cb.next_event(skip=False)
    assert live["type"] == "event.message" and live["seq"] == 6
    # the reply came first
    assert _index(cb, lambda f: f.get("re") == "sub-1") < _index(cb, lambda f: f.get("type") == "event.message")


async def test_reply_precedes_events_while_messages_flow(relay):
    ((ca, a), (cb, b)), ch = await _room(relay.url)
    sender = asyncio.create_task(send_many(ca, ch, a, 150, window=8))
    await asyncio.sleep(0.05)
    for round_ in range(5):
        conn = await connect_as(relay.url, b)
        rid = f"s{round_}"
        await conn.ok("subscribe", id=rid, channels=[{"channel_id": ch.channel_id}])
        await asyncio.sleep(0.05)
        first_event = next((i for i, f in enumerate(conn.log) if f.get("type") == "event.message"), None)
        reply_at = _index(conn, lambda f: f.get("re") == rid)
        assert first_event is None or reply_at < first_event
        await conn.close()
    await sender


async def test_synced_when_nothing_to_replay(relay):
    ((ca, a), (cb, b)), ch = await _room(relay.url)
    for i in range(3):
        await send_message(ca, ch, a, f"m{i}")
    sub = await cb.ok("subscribe", channels=[{"channel_id": ch.channel_id, "after": 3}])
    assert sub["channels"] == [{"channel_id": ch.channel_id, "last_seq": 3, "recovered": True}]
    assert await cb.next_event(skip=False) == {"type": "event.synced", "channel_id": ch.channel_id, "seq": 3}
    # an empty channel, after 0
    (cc, c), = await users(relay.url, 1)
    empty = await create_channel(cc, c)
    sub = await cc.ok("subscribe", channels=[{"channel_id": empty.channel_id, "after": 0}])
    assert sub["channels"] == [{"channel_id": empty.channel_id, "last_seq": 0, "recovered": True}]
    assert await cc.next_event(skip=False) == {"type": "event.synced", "channel_id": empty.channel_id, "seq": 0}


async def test_without_after_nothing_is_replayed(relay):
    ((ca, a), (cb, b)), ch = await _room(relay.url)
    for i in range(3):
        await send_message(ca, ch, a, f"m{i}")
    sub = await cb.ok("subscribe", channels=[{"channel_id": ch.channel_id}])
    assert sub["channels"] == [{"channel_id": ch.channel_id, "last_seq": 3, "recovered": True}]
    sub = await cb.ok("subscribe", channels=[{"channel_id": ch.channel_id, "after": None}])
    assert sub["channels"] == [{"channel_id": ch.channel_id, "last_seq": 3, "recovered": True}]
    assert await cb.events_for(0.5) == []
    await send_message(ca, ch, a, "live")
    assert (await cb.next_event(skip=False))["seq"] == 4


async def test_after_above_last_seq(relay):
    ((ca, a), (cb, b)), ch = await _room(relay.url)
    await send_message(ca, ch, a, "one")
    await cb.error("subscribe", "bad_request", channels=[{"channel_id": ch.channel_id, "after": 2}])
    await send_message(ca, ch, a, "two")
    assert await cb.events_for(0.3) == []


async def test_not_member_fails_the_whole_request(relay):
    ((ca, a), (cb, b)), ch = await _room(relay.url)
    (cx, x), = await users(relay.url, 1)
    other = await create_channel(cx, x)
    for bad in (new_uuid(), other.channel_id):
        await cb.error("subscribe", "not_member",
                       channels=[{"channel_id": ch.channel_id, "after": 0}, {"channel_id": bad}])
    await send_message(ca, ch, a, "nobody listens")
    assert await cb.events_for(0.7) == []


async def test_several_channels_in_one_subscribe(relay):
    ((ca, a), (cb, b)), ch1 = await _room(relay.url)
    ch2 = await create_channel(ca, a, [b])
    await rotate_key(ca, a, ch2, [a, b])
    for i in range(2):
        await send_message(ca, ch1, a, f"one {i}")
        await send_message(ca, ch2, a, f"two {i}")
    cb.drain_events()
    sub = await cb.ok("subscribe", channels=[{"channel_id": ch1.channel_id, "after": 0},
                                             {"channel_id": ch2.channel_id, "after": 1}])
    assert sub["channels"] == [{"channel_id": ch1.channel_id, "last_seq": 2, "recovered": True},
                               {"channel_id": ch2.channel_id, "last_seq": 2, "recovered": True}]
    events = await cb.events_for(1.0)
    per = {ch1.channel_id: [], ch2.channel_id: []}
    for e in events:
        if e.get("type") in ("event.message", "event.synced"):
            per[e["channel_id"]].append((e["type"], e["seq"]))
    assert per[ch1.channel_id] == [("event.message", 1), ("event.message", 2), ("event.synced", 2)]
    assert per[ch2.channel_id] == [("event.message", 2), ("event.synced", 2)]


async def test_resubscribe_replaces_without_duplicates(relay):
    ((ca, a), (cb, b)), ch = await _room(relay.url)
    await cb.ok("subscribe", channels=[{"channel_id": ch.channel_id}])
    for i in range(3):
        await send_message(ca, ch, a, f"m{i}")
    assert [(await cb.next_event(skip=False))["seq"] for _ in range(3)] == [1, 2, 3]
    await cb.ok("subscribe", channels=[{"channel_id": ch.channel_id, "after": 1}])
    got = [await cb.next_event(skip=False) for _ in range(3)]
    assert [(e["type"], e["seq"]) for e in got] == [("event.message", 2), ("event.message", 3), ("event.synced", 3)]
    await send_message(ca, ch, a, "four")
    assert (await cb.next_event(skip=False))["seq"] == 4
    await cb.ok("subscribe", channels=[{"channel_id": ch.channel_id}])
    await send_message(ca, ch, a, "five")
    assert (await cb.next_event(skip=False))["seq"] == 5
    assert await cb.events_for(0.5) == []


async def test_unsubscribe(relay):
    ((ca, a), (cb, b)), ch = await _room(relay.url)
    await cb.ok("subscribe", channels=[{"channel_id": ch.channel_id}])
    await send_message(ca, ch, a, "heard")
    assert (await cb.next_event("event.message"))["seq"] == 1
    reply = await cb.ok("unsubscribe", channel_ids=[ch.channel_id])
    assert set(reply) == {"re", "type", "channel_ids"}
    assert ch.channel_id in reply["channel_ids"]
    await send_message(ca, ch, a, "not heard")
    assert await cb.events_for(0.7) == []
    # channels not followed are ignored
    stray = new_uuid()
    reply = await cb.ok("unsubscribe", channel_ids=[stray, ch.channel_id])
    assert set(reply["channel_ids"]) <= {stray, ch.channel_id}
    assert (await cb.ok("unsubscribe", channel_ids=[]))["type"] == "unsubscribe"


@pytest.mark.time_limit(300)
async def test_recovered_false_past_1000_missed(relay):
    ((ca, a), (cb, b)), ch = await _room(relay.url)
    results = await send_many(ca, ch, a, 1001, window=64)
    assert sorted(r["seq"] for r in results) == list(range(1, 1002))
    # exactly 1000 missed: replayed in full
    c1 = await connect_as(relay.url, b)
    sub = await c1.ok("subscribe", channels=[{"channel_id": ch.channel_id, "after": 1}])
    assert sub["channels"] == [{"channel_id": ch.channel_id, "last_seq": 1001, "recovered": True}]
    seqs = []
    while True:
        e = await c1.next_event(skip=False, timeout=30)
        if e["type"] == "event.synced":
            assert e == {"type": "event.synced", "channel_id": ch.channel_id, "seq": 1001}
            break
        seqs.append(e["seq"])
    assert seqs == list(range(2, 1002))
    await c1.close()
    # 1001 missed: not recovered, nothing replayed, no event.synced, live follows
    sub = await cb.ok("subscribe", channels=[{"channel_id": ch.channel_id, "after": 0}])
    assert sub["channels"] == [{"channel_id": ch.channel_id, "last_seq": 1001, "recovered": False}]
    assert await cb.events_for(1.0) == []
    await send_message(ca, ch, a, "live")
    e = await cb.next_event(skip=False)
    assert e["type"] == "event.message" and e["seq"] == 1002
    assert await cb.events_for(0.5) == []
    # the gap is paged with `messages`
    page = await cb.ok("messages", channel_id=ch.channel_id, after=0, limit=200)
    assert [m["seq"] for m in page["messages"]] == list(range(1, 201)) and page["has_more"] is True
    # the 1000 count starts at the join cut: a member that joined at 1002 has missed 1
    (cc, c), = await users(relay.url, 1)
    await add_member(ca, a, ch, c)
    await rotate_key(ca, a, ch, [a, b, c])
    await send_message(ca, ch, a, "after the join")
    sub = await cc.ok("subscribe", channels=[{"channel_id": ch.channel_id, "after": 0}])
    assert sub["channels"] == [{"channel_id": ch.channel_id, "last_seq": 1003, "recovered": True}]
    assert (await cc.next_event("event.message"))["seq"] == 1003
    assert await cc.next_event(skip=False) == {"type": "event.synced", "channel_id": ch.channel_id, "seq": 1003}


async def _follow(url, user, channel_id, total, cycles, log, rng):
    """Subscribe with `after` = the last seq seen, on fresh connections, `cycles` times;
    check that every seq arrives exactly once, in order, with no gap."""
    last = 0
    subscriptions = 0
    while last < total:
        conn = await connect_as(url, user)
        subscriptions += 1
        rid = f"follow-{subscriptions}"
        sub = await conn.ok("subscribe", id=rid, channels=[{"channel_id": channel_id, "after": last}])
        entry = sub["channels"][0]
        assert entry["recovered"] is True and entry["last_seq"] >= last, sub
        budget = rng.randint(10, 60) if subscriptions <= cycles else total
        got = 0
        synced = False
        while last < total and got < budget:
            e = await conn.next_event(skip=False, timeout=DEFAULT_TIMEOUT)
            if e["type"] == "event.synced":
                assert not synced, f"second event.synced in one subscription: {e}"
                assert e["channel_id"] == channel_id and e["seq"] == last, \
                    f"event.synced {e['seq']} but last seen {last} (subscription {subscriptions})"
                synced = True
                continue
            assert e["type"] == "event.message", e
            assert e["seq"] == last + 1, \
                f"subscription {subscriptions} (after={sub and entry}): got seq {e['seq']} after {last}"
            log.append(e["seq"])
            last = e["seq"]
            got += 1
        if last >= total and not synced:
            # the replay part must still end with event.synced if it had not arrived yet
            pass
        await conn.close()
    return subscriptions


@pytest.mark.time_limit(240)
@pytest.mark.parametrize("in_flight", [1, 16])
async def test_hand_over_race(relay, in_flight):
    """One connection sends 300 messages as fast as replies come back (one at a time, or
    16 in flight); subscribers keep disconnecting and re-subscribing with `after` = the
    last seq they saw: each sees every seq exactly once, in order, with no gap."""
    ((ca, a), (cb, b), (cc, c)), ch = await _room(relay.url, 3)
    total = 300
    acked = []

    async def sender():
        sem = asyncio.Semaphore(in_flight)

        async def one(i):
            async with sem:
                reply = await send_message(ca, ch, a, f"race {i}")
                acked.append(reply["seq"])

        await asyncio.gather(*(one(i) for i in range(total)))

    rng = random.Random(1234)
    logs = [[], [], []]
    sending = asyncio.create_task(sender())
    while len(acked) < 5:
        await asyncio.sleep(0.01)
    followers = [
        asyncio.create_task(_follow(relay.url, b, ch.channel_id, total, 6, logs[0], random.Random(rng.random()))),
        asyncio.create_task(_follow(relay.url, c, ch.channel_id, total, 8, logs[1], random.Random(rng.random()))),
        asyncio.create_task(_follow(relay.url, b, ch.channel_id, total, 4, logs[2], random.Random(rng.random()))),
    ]
    await sending
    counts = await asyncio.gather(*followers)
    assert sorted(acked) == list(range(1, total + 1))
    for log, count in zip(logs, counts):
        assert log == list(range(1, total + 1))
        assert count >= 4


@pytest.mark.time_limit(240)
async def test_hand_over_race_same_connection_resubscribe(relay):
    """Re-subscribing on the same connection while messages flow: events before the new
    reply belong to the old subscription; after it, the new one replays from `after`
    (exactly once, in order, no gap) and no live event comes twice."""
    ((ca, a), (cb, b)), ch = await _room(relay.url, 2)
    total = 200
    sending = asyncio.create_task(send_many(ca, ch, a, total, window=1))
    cursor = len(cb.log)

    async def next_frame():
        nonlocal cursor
        deadline = time.monotonic() + DEFAULT_TIMEOUT
        while cursor >= len(cb.log):
            assert time.monotonic() < deadline, "no frame in time"
            await asyncio.sleep(0.002)
        cursor += 1
        return cb.log[cursor - 1]

    rng = random.Random(99)
    last = 0          # last seq seen on this connection
    expected = None   # next seq of the current subscription (None: none yet)
    round_ = 0
    while last < total:
        round_ += 1
        rid = f"re-{round_}"
        after = last
        await cb.send_frame({"id": rid, "type": "subscribe",
                             "channels": [{"channel_id": ch.channel_id, "after": after}]})
        # frames up to the reply belong to the old subscription
        while True:
            f = await next_frame()
            if f.get("re") == rid:
                assert f["type"] == "subscribe", f
                break
            assert f["type"] == "event.message" and f["seq"] == last + 1, (round_, f, last)
            last = f["seq"]
        expected_next, synced = after + 1, False
        budget = rng.randint(5, 40) if round_ <= 8 else total
        got = 0
        while got < budget and (expected_next <= total or not synced):
            f = await next_frame()
            if f["type"] == "event.synced":
                assert not synced and f["seq"] == expected_next - 1, (round_, after, f, expected_next)
                synced = True
                continue
            assert f["type"] == "event.message" and f["seq"] == expected_next, (round_, after, f, expected_next)
            expected_next += 1
            got += 1
        last = max(last, expected_next - 1)
    await sending
    assert last == total


@pytest.mark.time_limit(300)
async def test_slow_consumer_closed_with_4008_and_resumes_without_loss(relay):
    """A subscriber that stops reading is closed with 4008 "slow consumer"; it resumes with
    `after` = the last seq it got, and the long replay does not get it closed again."""
    import os
    from websockets.asyncio.client import connect as ws_connect
    ((ca, a), (cb, b)), ch = await _room(relay.url)
    raw = await ws_connect(relay.url, subprotocols=["parley.v1"], compression=None, max_size=None,
                           max_queue=1, ping_interval=None)
    try:
        await raw.send(json.dumps({"id": "a", "type": "auth", "session": b.session}))
        assert json.loads(await asyncio.wait_for(raw.recv(), 10))["type"] == "auth"
        await raw.send(json.dumps({"id": "s", "type": "subscribe", "channels": [{"channel_id": ch.channel_id}]}))
        assert json.loads(await asyncio.wait_for(raw.recv(), 10))["type"] == "subscribe"
        # stop reading; the channel gets ~35 MB of live events
        total = 400
        sem = asyncio.Semaphore(8)

        async def one(i):
            async with sem:
                fields = {"channel_id": ch.channel_id, "key_id": ch.key_id, "iv": b64e(os.urandom(12)),
                          "ciphertext": b64e(os.urandom(65_536)), "ts": int(time.time()),
                          "client_msg_id": new_uuid()}
                reply = await ca.request("message", timeout=60, **fields)
                assert reply["type"] == "message", reply

        await asyncio.gather(*(one(i) for i in range(total)))
        # now read what made it before the close
        seqs = []
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                frame = json.loads(await asyncio.wait_for(raw.recv(), 30))
                if frame.get("type") == "event.message":
                    seqs.append(frame["seq"])
        assert raw.close_code == 4008, (raw.close_code, raw.close_reason)
        assert raw.close_reason == "slow consumer"
        assert seqs == list(range(1, len(seqs) + 1))
        assert len(seqs) < total
    finally:
        await raw.close()
    # resume: replay of the rest, produced as the socket drains
    last = seqs[-1] if seqs else 0
    back = await connect_as(relay.url, b)
    sub = await back.ok("subscribe", channels=[{"channel_id": ch.channel_id, "after": last}])
    assert sub["channels"][0] == {"channel_id": ch.channel_id, "last_seq": total, "recovered": True}
    got = []
    while True:
        e = await back.next_event(skip=False, timeout=30)
        if e["type"] == "event.synced":
            assert e["seq"] == total
            break
        got.append(e["seq"])
    assert got == list(range(last + 1, total + 1))
    assert back.close_code is None and (await back.ok("ping"))["type"] == "ping"


@pytest.mark.time_limit(240)
async def test_long_replay_while_messages_flow(relay):
    """Subscribers join with `after` far behind while 16 sends are in flight: the replay
    and the live part meet without a gap or a repeat."""
    ((ca, a), (cb, b)), ch = await _room(relay.url, 2)
    total = 1000
    sending = asyncio.create_task(send_many(ca, ch, a, total, window=16))

    async def late_joiner(delay, after_fraction):
        await asyncio.sleep(delay)
        conn = await connect_as(relay.url, b)
        listed = [x for x in (await conn.ok("channels"))["channels"] if x["channel_id"] == ch.channel_id][0]
        after = int(listed["last_seq"] * after_fraction)
        sub = await conn.ok("subscribe", channels=[{"channel_id": ch.channel_id, "after": after}])
        assert sub["channels"][0]["recovered"] is True
        expected, synced = after + 1, None
        while expected <= total:
            e = await conn.next_event(skip=False, timeout=30)
            if e["type"] == "event.synced":
                assert synced is None and e["seq"] == expected - 1, (after, e, expected)
                synced = e["seq"]
                continue
            assert e["type"] == "event.message" and e["seq"] == expected, (after, e.get("seq"), expected)
            expected += 1
        if synced is None:
            e = await conn.next_event(skip=False, timeout=10)
            assert e["type"] == "event.synced" and e["seq"] == total, e
        assert await conn.events_for(0.3) == []
        await conn.close()

    await asyncio.gather(sending, late_joiner(0.3, 0.0), late_joiner(0.6, 0.5), late_joiner(1.0, 0.1),
                         late_joiner(1.5, 0.9))
