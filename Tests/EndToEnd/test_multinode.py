"""Issue 7: several relay nodes on one PostgreSQL (`cluster.py`).

Every subscriber on any node gets every message of its channel exactly once and in seq
order, whichever node the sender used; `event.key` and `event.member` cross nodes; a
removal on one node ends the removed user's subscriptions on the others and expires the
key everywhere; a node survives its LISTEN connection being killed again and again under
load, and the clients of a SIGKILLed node carry on through another node. Senders retry
the same frame (same `client_msg_id`) until acknowledged and subscribers resume with
`after` (load.py). Each test prints one `figures:` line.
"""
from __future__ import annotations

import asyncio
import datetime
import random
import re
import time

import pytest

from cluster import Cluster, cluster, metric  # noqa: F401  (`cluster` is the fixture)
from load import Room, Sender, Stats, Subscriber, drain, history, reconnect, rooms, verify
from parley_client import (
    Connection, User, add_member, create_channel, decrypt_message, message_fields,
    remove_member, rotate_key, send_message, unwrap_key, users,
)

CROSS_WAIT = 5.0     # a cross-node event later than this is a failure (they take milliseconds)
RATE = 4.0           # paced senders: messages per second each
BURST = 5            # extra messages a sender at each LISTEN kill


# --- helpers


async def start_nodes(cluster: Cluster, count: int):
    return [await asyncio.to_thread(cluster.start_node) for _ in range(count)]


async def on_url(url: str, user: User, stats: Stats) -> Connection:
    """A new connection of `user` to `url`, authenticated with its session (made on any node)."""
    conn = await reconnect(lambda: url, user, stats)
    stats.reconnects -= 1                 # a first connection, not a reconnect
    return conn


async def on_node(node, user: User, stats: Stats) -> Connection:
    return await on_url(node.url, user, stats)


async def follow(url, user: User, channel_id: str, stats: Stats) -> Subscriber:
    """Like load.subscribe_from_start, on the node `url()` names."""
    conn = await on_url(url(), user, stats)
    subscriber = Subscriber(conn, user, channel_id, url, stats)
    entry = await subscriber._subscribe(conn)
    assert entry and entry["recovered"] is True, entry
    synced = await conn.next_event("event.synced")
    assert synced["seq"] == 0, synced
    return subscriber


async def send_fixed(sender: Sender, count: int, window: int = 8) -> None:
    """`count` messages, up to `window` in flight, each retried until acknowledged."""
    sem = asyncio.Semaphore(window)

    async def one(i: int):
        async with sem:
            fields = message_fields(sender.channel, sender.user, f"{sender.user.username} #{i}")
            sender.stats.attempted[fields["client_msg_id"]] = (sender, fields)
            await sender.deliver(fields)

    await asyncio.gather(*(one(i) for i in range(count)))


def acked_last_seq(stats: Stats, channel_id: str) -> int:
    return max((a["seq"] for cid, a in stats.acked.items()
                if stats.attempted[cid][1]["channel_id"] == channel_id), default=0)


async def wait_all(subscribers: list[Subscriber], last: dict, timeout: float) -> float:
    """Wait (concurrently) until every subscriber reached its channel's last seq; seconds taken."""
    started = time.monotonic()
    await asyncio.gather(*(s.wait_for(last[s.channel_id], timeout) for s in subscribers))
    return time.monotonic() - started


def raise_failures(tasks) -> None:
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()


async def stop_tasks(tasks) -> None:
    raise_failures(tasks)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def until(condition, timeout: float, what: str, tasks=()) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        raise_failures(tasks)
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def expect(conn: Connection, type_: str, what: str, where=None, timeout: float = CROSS_WAIT) -> dict:
    try:
        return await conn.next_event(type_, timeout=timeout, where=where)
    except asyncio.TimeoutError:
        raise AssertionError(f"{what}: no {type_} within {timeout} s") from None


def channel_events(conn: Connection, channel_id: str) -> list[dict]:
    """Every event frame of the channel this connection received, in arrival order."""
    return [f for f in conn.log if isinstance(f, dict) and "re" not in f and f.get("channel_id") == channel_id]


def content_mismatches(subscribers: list[Subscriber], stored: dict) -> list:
    """event.message frames (first connection of each subscriber) that differ from history."""
    bad = []
    keys = ("channel_id", "seq", "sender_id", "key_id", "iv", "ciphertext", "ts", "received_at")
    for sub in subscribers:
        for ev in channel_events(sub.conn, sub.channel_id):
            if ev.get("type") != "event.message":
                continue
            row = stored[sub.channel_id].get(ev["seq"])
            if row is None or any(ev.get(k) != row.get(k) for k in keys):
                bad.append((sub.user.username, ev, row))
    return bad


async def stored_by_seq(url: str, room: Room, stats: Stats) -> dict:
    conn = await on_url(url, room.members[0][1], stats)
    rows = await history(conn, room.channel.channel_id)
    await conn.close()
    return {m["seq"]: m for m in rows}


def log_times(log: str, event: str) -> list[float]:
    """Unix times (s) of a node's log lines of one event (logfmt `time=...Z`)."""
    out = []
    for found in re.finditer(r"^time=(\S+)Z .*\bevent=" + re.escape(event) + r"\b.*$", log, re.M):
        if "reconnect=false" in found.group(0):
            continue
        stamp = datetime.datetime.fromisoformat(found.group(1)).replace(tzinfo=datetime.timezone.utc)
        out.append(stamp.timestamp())
    return out


def received_during_outages(log: str, kill_times: list[float], stats: Stats) -> int:
    """Acknowledged messages the relay received between a LISTEN kill and the node's next
    `listen.connected` (a lower bound of what the node had to catch up from the tables)."""
    back = log_times(log, "listen.connected")
    windows = []
    for t in kill_times:
        after = [c for c in back if c >= t]
        if after:
            windows.append((t * 1000, after[0] * 1000))
    return sum(1 for ack in stats.acked.values()
               if any(lo <= ack["received_at"] <= hi for lo, hi in windows))


def node_metrics(nodes, name: str) -> list:
    return [metric(n, name) if n.alive else None for n in nodes]


# --- tests


@pytest.mark.time_limit(120)
async def test_two_nodes_cross_delivery(cluster):
    a, b = await start_nodes(cluster, 2)
    stats = Stats()
    room, = await rooms(b.url, channels=1, per_channel=4)
    channel = room.channel
    senders_ = [Sender(await on_node(b, u, stats), u, channel, lambda: b.url, stats) for _, u in room.members[:3]]
    reader = room.members[3][1]
    on_a = await follow(lambda: a.url, reader, channel.channel_id, stats)
    on_b = await follow(lambda: b.url, room.members[0][1], channel.channel_id, stats)
    subscribers = [on_a, on_b]
    followers = [asyncio.create_task(s.run()) for s in subscribers]
    started = time.monotonic()
    await asyncio.gather(*(send_fixed(s, 40) for s in senders_))
    sent_in = time.monotonic() - started
    last = acked_last_seq(stats, channel.channel_id)
    waited = await wait_all(subscribers, {channel.channel_id: last}, 15)
    verdict = await verify([room], b.url, stats, subscribers, deliver_timeout=1)
    stored = {channel.channel_id: await stored_by_seq(a.url, room, stats)}
    await stop_tasks(followers)
    mismatched = content_mismatches(subscribers, stored)
    # the reader on node A can read them: decrypt + verify the first and the last
    spki = {u.user_id: u.spki for _, u in room.members}
    received = [e for e in channel_events(on_a.conn, channel.channel_id) if e["type"] == "event.message"]
    readable = sum(1 for e in received[:1] + received[-1:]
                   if decrypt_message(channel.key, e, spki[e["sender_id"]]))
    cross = node_metrics([a, b], "parley_cross_node_messages_total")
    print(f"\nfigures: nodes 2, senders 3 on B, msgs acknowledged {len(stats.acked)}, stored {verdict.stored}, "
          f"subscriber on A got {len(on_a.seqs)}, subscriber on B got {len(on_b.seqs)}, "
          f"lost {verdict.lost}, duplicates {verdict.duplicates}, gaps {verdict.gaps}, "
          f"content mismatches {len(mismatched)}, cross-node metric A/B {cross}, "
          f"sent in {sent_in:.1f} s, last delivery {waited:.2f} s after the last ack")

    assert not stats.unexpected and stats.timeouts == 0, (stats.unexpected[:3], stats.timeouts)
    assert len(stats.acked) == len(stats.attempted) == 120
    assert not verdict.details, "\n".join(verdict.details[:10])
    assert (verdict.lost, verdict.duplicates, verdict.gaps) == (0, 0, 0)
    assert on_b.seqs == list(range(1, last + 1)), "node B's own subscriber: every seq once, in order"
    assert on_a.seqs == list(range(1, last + 1)), \
        f"node A's subscriber got {len(on_a.seqs)} of {last} messages sent on node B"
    assert not mismatched, mismatched[:3]
    assert readable == 2
    assert stats.reconnects == 0
    # /metrics: node A delivered the 120 messages node B committed; node B had none from elsewhere
    assert cross == [120, 0], f"parley_cross_node_messages_total on A/B: {cross}"


@pytest.mark.time_limit(120)
async def test_three_nodes_concurrent_senders_everyone_gets_everything(cluster):
    nodes = await start_nodes(cluster, 3)
    stats = Stats()
    room, = await rooms(nodes[0].url, channels=1, per_channel=6)
    channel = room.channel
    # 6 senders, 2 on each node; 6 subscribers, 2 on each node (each member follows on another node)
    senders_ = []
    for i, (_, user) in enumerate(room.members):
        node = nodes[i % 3]
        senders_.append(Sender(await on_node(node, user, stats), user, channel, lambda n=node: n.url, stats))
    subscribers = []
    for i, (_, user) in enumerate(room.members):
        node = nodes[(i + 1) % 3]
        subscribers.append(await follow(lambda n=node: n.url, user, channel.channel_id, stats))
    followers = [asyncio.create_task(s.run()) for s in subscribers]
    per_sender = 80
    started = time.monotonic()
    await asyncio.gather(*(send_fixed(s, per_sender) for s in senders_))
    sent_in = time.monotonic() - started
    last = acked_last_seq(stats, channel.channel_id)
    waited = await wait_all(subscribers, {channel.channel_id: last}, 15)
    verdict = await verify([room], nodes[2].url, stats, subscribers, deliver_timeout=1)
    stored = {channel.channel_id: await stored_by_seq(nodes[1].url, room, stats)}
    await stop_tasks(followers)
    mismatched = content_mismatches(subscribers, stored)
    by_node = {}
    for i, sub in enumerate(subscribers):
        by_node.setdefault(f"n{(i + 1) % 3 + 1}", []).append(len(sub.seqs))
    cross = node_metrics(nodes, "parley_cross_node_messages_total")
    print(f"\nfigures: nodes 3, senders 6 (2 a node), msgs acknowledged {len(stats.acked)} in {sent_in:.1f} s "
          f"({len(stats.acked) / max(sent_in, 0.001):.0f}/s), stored {verdict.stored}, last seq {last}, "
          f"events per subscriber by node {by_node}, lost {verdict.lost}, duplicates {verdict.duplicates}, "
          f"gaps {verdict.gaps}, content mismatches {len(mismatched)}, cross-node metric {cross}, "
          f"last delivery {waited:.2f} s after the last ack")

    assert not stats.unexpected and stats.timeouts == 0, (stats.unexpected[:3], stats.timeouts)
    assert len(stats.acked) == len(stats.attempted) == 6 * per_sender
    assert not verdict.details, "\n".join(verdict.details[:10])
    assert (verdict.lost, verdict.duplicates, verdict.gaps) == (0, 0, 0)
    assert verdict.stored == last == 6 * per_sender
    for sub in subscribers:
        assert sub.seqs == list(range(1, last + 1)), f"{sub.user.username}: every seq once, in order"
    assert not mismatched, mismatched[:3]
    assert stats.reconnects == 0
    # every node delivered messages that other nodes committed
    assert all(c is not None and c >= 1 for c in cross), f"parley_cross_node_messages_total per node: {cross}"


@pytest.mark.time_limit(90)
async def test_key_rotation_on_one_node_reaches_another(cluster):
    a_node, b_node = await start_nodes(cluster, 2)
    (c_a, a), (c_b, b), (_, c) = await users(b_node.url, 3)
    ch = await create_channel(c_b, b, [a, c])
    await rotate_key(c_b, b, ch, [a, b, c])
    await c_b.close()
    await c_a.close()
    stats = Stats()
    a_sub = await on_node(a_node, a, stats)       # a follows on node A
    b_conn = await on_node(b_node, b, stats)      # b rotates and sends on node B
    b_sub = await on_node(b_node, b, stats)       # and follows there too
    for conn in (a_sub, b_sub):
        await conn.ok("subscribe", channels=[{"channel_id": ch.channel_id}])
    latencies, rounds = [], 5
    for i in range(rounds):
        old = ch.key_id
        rotated_at = time.monotonic()
        reply = await rotate_key(b_conn, b, ch, [a, b, c])
        sent = await send_message(b_conn, ch, b, f"with key {i}")
        ev = await expect(a_sub, "event.key", f"round {i}: node A's subscriber after a rotation on node B",
                          where=lambda e: e.get("key_id") == ch.key_id)
        latencies.append(time.monotonic() - rotated_at)
        msg = await expect(a_sub, "event.message", f"round {i}: the message sent with the new key",
                           where=lambda e: e.get("seq") == sent["seq"])
        # the record as stored, with a's own wrapped copy, which unwraps to the key b made
        assert ev["channel_id"] == ch.channel_id and ev["creator_id"] == b.user_id
        assert ev["previous_key_id"] == old and ev["membership_version"] == ch.version
        assert ev["created_at"] == reply["created_at"] and ev["expires_at"] == reply["expires_at"]
        assert unwrap_key(a.identity, ev, b.spki) == ch.key
        assert decrypt_message(ch.key, msg, b.spki) == f"with key {i}"
        # arrival order on node A: the key before any message using it
        frames = channel_events(a_sub, ch.channel_id)
        key_at = next(j for j, f in enumerate(frames) if f["type"] == "event.key" and f["key_id"] == ch.key_id)
        first_use = next(j for j, f in enumerate(frames) if f["type"] == "event.message" and f["key_id"] == ch.key_id)
        assert key_at < first_use, frames
        # node A takes the new key at once, and refuses the old one
        await send_message(a_sub, ch, a, f"reply {i}")
        expired = await a_sub.error("message", "key_expired", **message_fields(ch, a, "old", key_id=old))
        assert expired["current_key_id"] == ch.key_id
    await asyncio.sleep(0.5)
    frames = channel_events(a_sub, ch.channel_id)
    keys_seen = [f["key_id"] for f in frames if f["type"] == "event.key"]
    b_keys = [f["key_id"] for f in channel_events(b_sub, ch.channel_id) if f["type"] == "event.key"]
    seqs = [f["seq"] for f in frames if f["type"] == "event.message"]
    print(f"\nfigures: rotations on node B {rounds}, event.key on node A {len(keys_seen)} "
          f"(distinct {len(set(keys_seen))}), on node B {len(b_keys)}, messages on A {len(seqs)}, "
          f"rotation-to-event.key on A max {max(latencies) * 1000:.0f} ms, "
          f"mean {sum(latencies) / len(latencies) * 1000:.0f} ms")
    assert len(keys_seen) == len(set(keys_seen)) == rounds, keys_seen
    assert len(b_keys) == len(set(b_keys)) == rounds, b_keys
    assert seqs == list(range(1, 2 * rounds + 1)), seqs
    # each event.key carries the receiver's own copy: a's on node A is not b's on node B
    b_copies = {f["key_id"]: f["encrypted_key"] for f in channel_events(b_sub, ch.channel_id) if f["type"] == "event.key"}
    assert all(f["encrypted_key"] != b_copies[f["key_id"]] for f in frames if f["type"] == "event.key")


@pytest.mark.time_limit(90)
async def test_membership_changes_cross_nodes(cluster):
    na, nb, nc = await start_nodes(cluster, 3)
    (c_o, o), (c_m, m), (c_r, r), (c_x, x), (c_y, y) = await users(nb.url, 5)
    for conn in (c_m, c_r, c_x, c_y):
        await conn.close()
    stats = Stats()
    o_conn = await on_node(nb, o, stats)         # the owner changes things on node B
    m_sub = await on_node(na, m, stats)          # a member that stays, on node A
    r_sub = await on_node(na, r, stats)          # the member to be removed, subscribed on node A
    r_idle = await on_node(nc, r, stats)         # ... and connected, not subscribed, on node C
    x_conn = await on_node(nc, x, stats)         # the user to be added, on node C
    ch = await create_channel(c_o, o, [m, r])
    await rotate_key(c_o, o, ch, [o, m, r])
    for conn in (m_sub, r_sub):
        await conn.ok("subscribe", channels=[{"channel_id": ch.channel_id}])
    timings = {}

    # added on node B: subscribers on A and the added user's connection on C learn it
    t = time.monotonic()
    await add_member(o_conn, o, ch, x)
    added = {}
    for name, conn in (("m on A", m_sub), ("r on A", r_sub), ("x on C", x_conn)):
        added[name] = await expect(conn, "event.member", f"{name} after x was added on node B",
                                   where=lambda e: e.get("user_id") == x.user_id and e.get("action") == "added")
    timings["added"] = time.monotonic() - t
    for ev in added.values():
        assert ev["channel_id"] == ch.channel_id and ev["by"] == o.user_id and ev["membership"] == ch.head
    # a key for the four, used on node A
    k2 = await rotate_key(o_conn, o, ch, [o, m, r, x])
    await expect(m_sub, "event.key", "m on A after the rotation", where=lambda e: e.get("key_id") == ch.key_id)
    first = await send_message(m_sub, ch, m, "before the removal")
    await expect(r_sub, "event.message", "r on A before its removal", where=lambda e: e.get("seq") == first["seq"])
    k2_id = ch.key_id

    # removed on node B: its subscription on node A ends, its other connection learns it
    t = time.monotonic()
    await remove_member(o_conn, o, ch, r)
    removed = {}
    for name, conn in (("r on A", r_sub), ("r on C", r_idle), ("m on A", m_sub)):
        removed[name] = await expect(conn, "event.member", f"{name} after r was removed on node B",
                                     where=lambda e: e.get("user_id") == r.user_id and e.get("action") == "removed")
    timings["removed"] = time.monotonic() - t
    for ev in removed.values():
        assert ev["by"] == o.user_id and ev["membership"] == ch.head
    # the key expired: refused on every node
    refused = {}
    for name, conn, user in (("A", m_sub, m), ("B", o_conn, o), ("C", x_conn, x)):
        reply = await conn.request("message", **message_fields(ch, user, f"old key on {name}", key_id=k2_id))
        refused[name] = reply.get("code")
        assert reply.get("code") == "key_expired" and reply.get("current_key_id") == k2_id, (name, reply)

    # what follows in the channel never reaches r (on A or on C)
    await rotate_key(o_conn, o, ch, [o, m, x])
    after = [await send_message(o_conn, ch, o, f"after {i}") for i in range(3)]
    await add_member(o_conn, o, ch, y)
    await expect(m_sub, "event.member", "m on A after y was added",
                 where=lambda e: e.get("user_id") == y.user_id)
    got = [e["seq"] for e in channel_events(m_sub, ch.channel_id) if e["type"] == "event.message"]
    assert got == [first["seq"]] + [s["seq"] for s in after], got
    later_a = [e for e in await r_sub.events_for(1.0) if e.get("channel_id") == ch.channel_id]
    later_c = [e for e in await r_idle.events_for(0.2) if e.get("channel_id") == ch.channel_id]
    await r_sub.error("messages", "not_member", channel_id=ch.channel_id)
    # each connection got each event.member once
    counts = {name: sum(1 for e in channel_events(conn, ch.channel_id) if e["type"] == "event.member")
              for name, conn in (("m on A", m_sub), ("r on A", r_sub), ("r on C", r_idle), ("x on C", x_conn))}
    print(f"\nfigures: nodes 3, add on B -> A and C in {timings['added'] * 1000:.0f} ms, "
          f"remove on B -> A and C in {timings['removed'] * 1000:.0f} ms, old key refused on {refused}, "
          f"channel events reaching r after its removal: on A {len(later_a)}, on C {len(later_c)}, "
          f"event.member counts {counts}")
    assert later_a == [] and later_c == [], (later_a, later_c)
    # m on A: its own addition by channel.create (v1 names it; connected before), x added, r removed,
    # y added; r on A: created, x added, removed; r on C (not subscribed: only what affects r):
    # created, removed; x on C (not subscribed): added
    assert counts == {"m on A": 4, "r on A": 3, "r on C": 2, "x on C": 1}, counts
    assert k2["key_id"] == k2_id


@pytest.mark.time_limit(120)
async def test_listen_connection_killed_repeatedly_under_load(cluster):
    a, b = await start_nodes(cluster, 2)
    listening = await asyncio.to_thread(cluster.wait_listeners, 2, 5)
    stats = Stats()
    made = await rooms(b.url, channels=2, per_channel=3)
    senders_, subscribers = [], []
    for room in made:
        for _, user in room.members:
            senders_.append(Sender(await on_node(b, user, stats), user, room.channel, lambda: b.url, stats))
            subscribers.append(await follow(lambda: a.url, user, room.channel.channel_id, stats))
        # one subscriber on the senders' node too
        subscribers.append(await follow(lambda: b.url, room.members[0][1], room.channel.channel_id, stats))
    first_conns = [s.conn for s in senders_ + subscribers]
    reconnects_before = node_metrics([a, b], "parley_listen_reconnects_total")
    followers = [asyncio.create_task(s.run()) for s in subscribers]
    stop = asyncio.Event()
    load = [asyncio.create_task(s.run(RATE, stop, phase=i / (RATE * len(senders_))))
            for i, s in enumerate(senders_)]
    started = time.monotonic()
    kills, killed, kill_times = 0, 0, []
    await asyncio.sleep(2)
    kill_until = time.monotonic() + 10
    while time.monotonic() < kill_until:
        raise_failures(load + followers)
        # a burst of BURST messages a sender on top of the paced load, so that commits fall
        # into the moments the nodes' LISTEN connections are gone (they come back in ms)
        burst = [asyncio.create_task(send_fixed(s, BURST)) for s in senders_]
        await asyncio.sleep(0.02)
        kill_times.append(time.time())
        killed += await asyncio.to_thread(cluster.terminate_listeners)
        kills += 1
        await asyncio.gather(*burst)
        await asyncio.sleep(random.uniform(0.5, 1.0))
    await asyncio.sleep(2)
    stop.set()
    await asyncio.gather(*load)
    unfinished = await drain(senders_, timeout=30)
    last = {room.channel.channel_id: acked_last_seq(stats, room.channel.channel_id) for room in made}
    waited = await wait_all(subscribers, last, 15)
    verdict = await verify(made, b.url, stats, subscribers, deliver_timeout=1)
    raise_failures(followers)
    closed = [c for c in first_conns if c.closed.is_set()]
    replaced = sum(1 for s, c in zip(senders_ + subscribers, first_conns) if s.conn is not c)
    await stop_tasks(followers)
    relisten = await asyncio.to_thread(cluster.wait_listeners, 2, 5)
    reconnects_after = node_metrics([a, b], "parley_listen_reconnects_total")
    connected = node_metrics([a, b], "parley_listen_connected")
    lost_logged = [n.log_text().count("event=listen.lost") for n in (a, b)]
    in_outages = received_during_outages(a.log_text(), kill_times, stats)
    print(f"\nfigures: nodes 2, senders {len(senders_)} on B at {RATE:.0f}/s each, subscribers "
          f"{len(subscribers) - len(made)} on A + {len(made)} on B, LISTEN kill rounds {kills} "
          f"({killed} backends terminated) over 10 s, attempted {len(stats.attempted)}, "
          f"acknowledged {len(stats.acked)}, stored {verdict.stored}, lost {verdict.lost}, "
          f"duplicates {verdict.duplicates}, gaps {verdict.gaps}, client connections closed {len(closed)}, "
          f"listen reconnects A/B before {reconnects_before} after {reconnects_after}, "
          f"listen.lost logged A/B {lost_logged}, listen_connected {connected}, messages received by B "
          f"while A's LISTEN connection was down (from a kill to A's listen.connected) {in_outages}, "
          f"last delivery {waited:.2f} s after the last ack, total {time.monotonic() - started:.1f} s")

    assert listening, "the nodes never had their two parley-listen connections"
    assert killed >= 4, f"only {killed} parley-listen backends terminated in {kills} rounds"
    assert in_outages >= 1, "no message was sent while node A's LISTEN connection was down: the kills missed the load"
    assert not stats.unexpected and stats.timeouts == 0, (stats.unexpected[:3], stats.timeouts)
    assert unfinished == 0, f"{unfinished} messages unacknowledged 30 s after the load"
    assert not verdict.details, "\n".join(verdict.details[:10])
    assert (verdict.lost, verdict.duplicates, verdict.gaps) == (0, 0, 0)
    assert verdict.stored == len(stats.attempted) == len(stats.acked)
    for sub in subscribers:
        assert sub.seqs == list(range(1, last[sub.channel_id] + 1)), \
            f"{sub.user.username}: {len(sub.seqs)} events of {last[sub.channel_id]}, every seq once, in order"
    assert not closed and replaced == 0 and stats.reconnects == 0, \
        f"client connections closed: {[(c.close_code, c.close_reason) for c in closed][:5]}"
    assert relisten, "a node did not get its LISTEN connection back"
    for before, after_ in zip(reconnects_before, reconnects_after):
        assert after_ is not None and after_ > (before or 0), \
            f"parley_listen_reconnects_total did not go up: {reconnects_before} -> {reconnects_after}"
    assert connected == [1, 1], connected
    assert a.alive and b.alive


@pytest.mark.time_limit(120)
async def test_node_killed_clients_carry_on_through_another_node(cluster):
    doomed, b, c = await start_nodes(cluster, 3)
    stats = Stats()
    made = await rooms(b.url, channels=2, per_channel=4)
    to_b = lambda: doomed.url if doomed.alive else b.url     # noqa: E731  the doomed node's clients fail over to B
    senders_, subscribers = [], []
    on_doomed_subs = []
    for room in made:
        cid = room.channel.channel_id
        for i, (_, user) in enumerate(room.members):
            # half the senders on the doomed node, half on B
            url = to_b if i % 2 == 0 else (lambda: b.url)
            node = doomed if i % 2 == 0 else b
            senders_.append(Sender(await on_node(node, user, stats), user, room.channel, url, stats))
        # subscribers on every node; those on the doomed node fail over to B
        for i, (_, user) in enumerate(room.members[:3]):
            url = (to_b, lambda: b.url, lambda: c.url)[i]
            sub = await follow(url, user, cid, stats)
            subscribers.append(sub)
            if i == 0:
                on_doomed_subs.append(sub)
    followers = [asyncio.create_task(s.run()) for s in subscribers]
    stop = asyncio.Event()
    load = [asyncio.create_task(s.run(RATE, stop, phase=i / (RATE * len(senders_))))
            for i, s in enumerate(senders_)]
    started = time.monotonic()
    moved = [s for s in senders_ if s.url is to_b]
    # SIGKILL right after a message frame went to the doomed node, once 100 are acknowledged:
    # at least that one is in flight. The event loop is held for a moment first (the node may
    # commit it and write the ack), and the acks not yet read are lost with the node (those
    # senders' sockets are aborted with their unread bytes): a sender cannot know what was
    # stored, and its retry on node B must answer duplicate: true with the original seq.
    kill = {}

    def kill_now():
        if not kill and len(stats.acked) >= 100 and any(s.conn.pending for s in moved):
            time.sleep(0.2)
            kill.update(at=time.monotonic(), acked=len(stats.acked), in_flight=stats.in_flight)
            doomed.proc.kill()
            for sender in moved:
                sender.conn.ws.transport.abort()

    stats.after_send = kill_now
    await until(lambda: kill, 40, "100 acknowledged messages and the kill", load + followers)
    stats.after_send = None
    await asyncio.to_thread(doomed.proc.wait, 30)
    acked_at_kill, in_flight, killed_at = kill["acked"], kill["in_flight"], kill["at"]
    # the doomed node's clients find B, auth with their session, resume with `after`
    await until(lambda: all(s.resubscribed_at and not s.conn.closed.is_set() for s in on_doomed_subs)
                and all(s.conn.ws.remote_address[1] == b.port and not s.conn.closed.is_set() for s in moved),
                30, "the doomed node's clients to resume on node B", load + followers)
    resumed_in = time.monotonic() - killed_at
    await asyncio.sleep(4)
    stop.set()
    await asyncio.gather(*load)
    unfinished = await drain(senders_, timeout=30)
    last = {room.channel.channel_id: acked_last_seq(stats, room.channel.channel_id) for room in made}
    waited = await wait_all(subscribers, last, 15)
    verdict = await verify(made, c.url, stats, subscribers, deliver_timeout=1)
    await stop_tasks(followers)
    resumes = [e for s in on_doomed_subs for e in s.subscriptions if e["at"] > killed_at]
    bad_resumes = [e for e in resumes if e["recovered"] is not True]
    print(f"\nfigures: nodes 3 (one SIGKILLed), senders {len(senders_)} ({len(moved)} on the killed node), "
          f"subscribers {len(subscribers)} ({len(on_doomed_subs)} on the killed node), acknowledged at the kill "
          f"{acked_at_kill}, in flight {in_flight}, retries answered duplicate {stats.duplicate_acks}, "
          f"reconnects {stats.reconnects}, resumed subscriptions {len(resumes)} (after = {[e['after'] for e in resumes]}), "
          f"all resumed in {resumed_in:.1f} s, attempted {len(stats.attempted)}, stored {verdict.stored}, "
          f"lost {verdict.lost}, duplicates {verdict.duplicates}, gaps {verdict.gaps}, "
          f"last delivery {waited:.2f} s after the last ack, total {time.monotonic() - started:.1f} s")

    assert not stats.unexpected and stats.timeouts == 0, (stats.unexpected[:3], stats.timeouts)
    assert unfinished == 0, f"{unfinished} messages unacknowledged 30 s after the load"
    assert len(resumes) >= len(on_doomed_subs) and not bad_resumes, (resumes, bad_resumes)
    assert not verdict.details, "\n".join(verdict.details[:10])
    assert (verdict.lost, verdict.duplicates, verdict.gaps) == (0, 0, 0)
    assert verdict.stored == len(stats.attempted) == len(stats.acked)
    for sub in subscribers:
        assert sub.seqs == list(range(1, last[sub.channel_id] + 1)), \
            f"{sub.user.username}: {len(sub.seqs)} events of {last[sub.channel_id]}, every seq once, in order"
    assert b.alive and c.alive
