"""Load with faults: paced senders and resuming subscribers that behave like real clients.

Used by test_faults_under_load.py. A `Sender` sends messages on its own connection at a
steady rate (open loop: a message is made when it is due, whatever happened to the
earlier ones) and retries each one until it is acknowledged, always with the same frame
(same `client_msg_id`, `iv`, `ciphertext`, `ts`; §7, §10 "safe to retry"):

* `unavailable` (or `internal`): wait `retry_after_ms` (bounded), and while the relay
  keeps saying so, send one request at a time (a probe) instead of the whole backlog;
* a dropped socket: reconnect with backoff to the relay's *current* URL, `auth` with the
  session token (sessions live in the database, §4), retry.

A `Subscriber` follows one channel from seq 0 and, when its socket drops, reconnects,
`auth`s and subscribes with `after` = the last seq it received (§8).
"""
from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import websockets

from parley_client import (
    Channel, Connection, User, connect, create_channel, message_fields, rotate_key, users,
)

REPLY_TIMEOUT = 30.0        # a loaded 2-core machine; a relay that never answers is a bug
MAX_RETRY_WAIT = 2.0        # bound on a retry_after_ms we obey
BACKOFF_FIRST, BACKOFF_MAX = 0.05, 1.0
DROPPED = (ConnectionError, websockets.ConnectionClosed, OSError)


@dataclass
class Stats:
    """What every client of one test saw (one event loop: no locking needed)."""
    attempted: dict = field(default_factory=dict)      # client_msg_id -> (sender, fields)
    acked: dict = field(default_factory=dict)          # client_msg_id -> first ack reply
    ack_mismatches: list = field(default_factory=list)  # a later ack with another seq
    duplicate_acks: int = 0                             # acks with duplicate: true
    unavailable: list = field(default_factory=list)    # (monotonic time, reply)
    internal: list = field(default_factory=list)       # `internal` answers (retried too)
    unexpected: list = field(default_factory=list)     # any other error: given up (lost)
    timeouts: int = 0                                   # requests with no answer in time
    reconnects: int = 0                                 # sockets re-opened and re-authenticated
    auth_failures: list = field(default_factory=list)
    in_flight: int = 0                                  # message frames sent, not yet answered
    after_send: Optional[Callable[[], None]] = None     # called right after a message frame is sent

    @property
    def bad_retry_after(self) -> list:
        return [r for _, r in self.unavailable
                if not isinstance(r.get("retry_after_ms"), int) or isinstance(r.get("retry_after_ms"), bool)
                or r["retry_after_ms"] < 0]


def _retry_wait(reply: dict) -> float:
    ms = reply.get("retry_after_ms")
    ms = ms if isinstance(ms, int) and ms >= 0 else 1000
    return min(max(ms, 20) / 1000, MAX_RETRY_WAIT)


async def reconnect(url: Callable[[], str], user: User, stats: Stats) -> Connection:
    """A new authenticated connection, retried with backoff until it works."""
    delay = BACKOFF_FIRST
    while True:
        conn = None
        try:
            conn = await connect(url())
            while True:
                reply = await conn.request("auth", timeout=REPLY_TIMEOUT, session=user.session)
                if reply.get("type") == "auth":
                    conn.user = user
                    stats.reconnects += 1
                    return conn
                if reply.get("code") in ("unavailable", "internal"):
                    await asyncio.sleep(_retry_wait(reply))
                    continue
                stats.auth_failures.append(reply)
                raise AssertionError(f"{user.username}: auth with its session after a reconnect: {reply}")
        except (*DROPPED, asyncio.TimeoutError):
            if conn is not None:
                await conn.close()
        await asyncio.sleep(delay * random.uniform(0.5, 1.0))
        delay = min(delay * 2, BACKOFF_MAX)


class Sender:
    def __init__(self, conn: Connection, user: User, channel: Channel, url: Callable[[], str], stats: Stats):
        self.conn, self.user, self.channel, self.url, self.stats = conn, user, channel, url, stats
        self.degraded = False                 # the relay said unavailable: probe one at a time
        self.probe = asyncio.Lock()
        self.reconnecting = asyncio.Lock()
        self.tasks: set[asyncio.Task] = set()
        self.sent = 0

    async def connection(self) -> Connection:
        while True:
            conn = self.conn
            if not conn.closed.is_set():
                return conn
            async with self.reconnecting:
                if self.conn is conn:
                    self.conn = await reconnect(self.url, self.user, self.stats)

    async def _try(self, fields: dict) -> bool:
        """One attempt; True when acknowledged (or given up on an unexpected error)."""
        conn = await self.connection()
        try:
            reply = await conn.send_frame({"id": conn.next_id(), "type": "message", **fields})
            self.stats.in_flight += 1
            try:
                if self.stats.after_send is not None:
                    self.stats.after_send()
                reply = await asyncio.wait_for(reply, REPLY_TIMEOUT)
            finally:
                self.stats.in_flight -= 1
        except asyncio.TimeoutError:
            self.stats.timeouts += 1
            return False
        except DROPPED:
            return False                  # connection() reconnects on the next attempt
        cid = fields["client_msg_id"]
        if reply.get("type") == "message":
            self.degraded = False
            first = self.stats.acked.setdefault(cid, reply)
            if reply.get("duplicate") is True:
                self.stats.duplicate_acks += 1
            if first is not reply and first.get("seq") != reply.get("seq"):
                self.stats.ack_mismatches.append((cid, first, reply))
            return True
        code = reply.get("code")
        if code in ("unavailable", "internal"):
            (self.stats.unavailable if code == "unavailable" else self.stats.internal).append(
                (time.monotonic(), reply))
            self.degraded = True
            await asyncio.sleep(_retry_wait(reply))
            return False
        self.stats.unexpected.append((cid, reply))
        return True

    async def deliver(self, fields: dict) -> None:
        """Retry the same frame until it is acknowledged."""
        while True:
            if self.degraded:
                async with self.probe:
                    if self.degraded:
                        if await self._try(fields):
                            return
                        continue
            if await self._try(fields):
                return

    async def run(self, rate: float, stop: asyncio.Event, phase: float = 0.0) -> None:
        """Make a message every 1/rate s (open loop) until `stop`; each is delivered by its own task."""
        loop = asyncio.get_running_loop()
        start = loop.time() + phase
        while not stop.is_set():
            delay = start + self.sent / rate - loop.time()
            if delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                    break
                except asyncio.TimeoutError:
                    pass
            fields = message_fields(self.channel, self.user, f"{self.user.username} #{self.sent}")
            self.stats.attempted[fields["client_msg_id"]] = (self, fields)
            self.sent += 1
            task = asyncio.create_task(self.deliver(fields))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)


class Subscriber:
    """Follows one channel from seq 0; resumes with `after` = the last seq received."""

    def __init__(self, conn: Connection, user: User, channel_id: str, url: Callable[[], str], stats: Stats):
        self.conn, self.user, self.channel_id, self.url, self.stats = conn, user, channel_id, url, stats
        self.seqs: list[int] = []
        self.last = 0
        self.subscriptions: list[dict] = []   # every subscribe entry (recovered, last_seq) + time
        self.synced_mismatches: list = []
        self.resubscribed_at: Optional[float] = None
        self.advanced = asyncio.Event()

    async def _subscribe(self, conn: Connection) -> Optional[dict]:
        """Subscribe with `after`; the entry, or None when the socket dropped."""
        after = self.last
        while True:
            try:
                reply = await conn.request("subscribe", timeout=REPLY_TIMEOUT,
                                           channels=[{"channel_id": self.channel_id, "after": after}])
            except (*DROPPED, asyncio.TimeoutError):
                return None
            if reply.get("type") == "subscribe":
                entry = dict(reply["channels"][0], after=after, at=time.monotonic())
                self.subscriptions.append(entry)
                return entry
            if reply.get("code") in ("unavailable", "internal"):
                await asyncio.sleep(_retry_wait(reply))
                continue
            raise AssertionError(f"subscribe after {after}: {reply}")

    async def run(self) -> None:
        conn = self.conn
        while True:
            if conn.closed.is_set() and conn.events.empty():
                conn = self.conn = await reconnect(self.url, self.user, self.stats)
                if await self._subscribe(conn) is None:
                    continue
                self.resubscribed_at = time.monotonic()
            try:
                event = await asyncio.wait_for(conn.events.get(), 0.5)
            except asyncio.TimeoutError:
                continue
            if event.get("channel_id") != self.channel_id:
                continue
            if event.get("type") == "event.message":
                self.seqs.append(event["seq"])
                self.last = max(self.last, event["seq"])
                self.advanced.set()
            elif event.get("type") == "event.synced" and event.get("seq") != self.last:
                self.synced_mismatches.append((event, self.last))

    async def wait_for(self, seq: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.last < seq:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.advanced.clear()
            try:
                await asyncio.wait_for(self.advanced.wait(), min(remaining, 1.0))
            except asyncio.TimeoutError:
                pass
        return True

    def figures(self, last_seq: int) -> tuple[int, int, bool]:
        """(duplicates, gaps, in order) against 1..last_seq."""
        duplicates = len(self.seqs) - len(set(self.seqs))
        gaps = len(set(range(1, last_seq + 1)) - set(self.seqs))
        return duplicates, gaps, self.seqs == sorted(self.seqs)


@dataclass
class Room:
    channel: Channel
    members: list          # [(Connection, User)]


async def rooms(url: str, channels: int, per_channel: int) -> list[Room]:
    """`channels` channels of `per_channel` new users each (all in statement v1), keyed."""
    accounts = await users(url, channels * per_channel)
    made = []
    for i in range(channels):
        members = accounts[i * per_channel:(i + 1) * per_channel]
        (owner_conn, owner), others = members[0], [u for _, u in members[1:]]
        channel = await create_channel(owner_conn, owner, others, name=f"load {i}")
        await rotate_key(owner_conn, owner, channel, [u for _, u in members])
        made.append(Room(channel, members))
    return made


async def subscribe_from_start(url: Callable[[], str], user: User, channel_id: str, stats: Stats) -> Subscriber:
    """A new connection of `user` subscribed to the channel from seq 0 (event.synced consumed)."""
    conn = await reconnect(url, user, stats)
    stats.reconnects -= 1                 # a first connection, not a reconnect
    subscriber = Subscriber(conn, user, channel_id, url, stats)
    entry = await subscriber._subscribe(conn)
    assert entry and entry["recovered"] is True, entry
    synced = await conn.next_event("event.synced")
    assert synced["seq"] == 0, synced
    return subscriber


async def history(conn: Connection, channel_id: str) -> list[dict]:
    out, after = [], 0
    while True:
        page = await conn.ok("messages", channel_id=channel_id, after=after, limit=200)
        out += page["messages"]
        if not page["has_more"]:
            return out
        after = page["messages"][-1]["seq"]


async def drain(senders: list[Sender], timeout: float) -> int:
    """Wait for every message task to finish; returns how many did not within `timeout`."""
    tasks = [t for s in senders for t in s.tasks]
    if not tasks:
        return 0
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()
    return len(pending)


@dataclass
class Verdict:
    lost: int = 0           # attempted never acknowledged, or acknowledged but not stored as sent
    duplicates: int = 0     # an iv stored twice, a stored message nobody sent, a seq delivered twice
    gaps: int = 0           # seqs missing from history or from a subscriber
    stored: int = 0
    details: list = field(default_factory=list)


async def verify(rooms_: list[Room], url: str, stats: Stats, subscribers: list[Subscriber],
                 deliver_timeout: float = 60.0) -> Verdict:
    """Compare history with what was acknowledged, and each subscriber with history."""
    verdict = Verdict()
    for room in rooms_:
        _, reader = room.members[0]
        conn = await reconnect(lambda: url, reader, stats)
        stats.reconnects -= 1
        stored = await history(conn, room.channel.channel_id)
        await conn.close()
        verdict.stored += len(stored)
        seqs = [m["seq"] for m in stored]
        if seqs != list(range(1, len(stored) + 1)):
            missing = len(set(range(1, (max(seqs) if seqs else 0) + 1)) - set(seqs))
            verdict.gaps += missing
            verdict.details.append(f"{room.channel.channel_id}: history seqs not 1..N ({missing} missing)")
        ivs = [m["iv"] for m in stored]
        verdict.duplicates += len(ivs) - len(set(ivs))
        by_seq = {m["seq"]: m for m in stored}
        mine = {cid: (s, f) for cid, (s, f) in stats.attempted.items()
                if f["channel_id"] == room.channel.channel_id}
        sent_ivs = {f["iv"] for _, f in mine.values()}
        strangers = [m for m in stored if m["iv"] not in sent_ivs]
        verdict.duplicates += len(strangers)
        for cid, (sender, fields) in mine.items():
            ack = stats.acked.get(cid)
            if ack is None:
                verdict.lost += 1
                continue
            row = by_seq.get(ack["seq"])
            if (row is None or row["iv"] != fields["iv"] or row["ciphertext"] != fields["ciphertext"]
                    or row["sender_id"] != sender.user.user_id or row["ts"] != fields["ts"]):
                verdict.lost += 1
                verdict.details.append(f"ack seq {ack['seq']} of {cid} does not match history: {row}")
        last_seq = len(stored)
        for sub in (s for s in subscribers if s.channel_id == room.channel.channel_id):
            await sub.wait_for(last_seq, deliver_timeout)
            duplicates, gaps, ordered = sub.figures(last_seq)
            verdict.duplicates += duplicates
            verdict.gaps += gaps
            if not ordered or duplicates or gaps or sub.synced_mismatches:
                verdict.details.append(
                    f"subscriber {sub.user.username}: {len(sub.seqs)} events for 1..{last_seq}, "
                    f"{duplicates} duplicates, {gaps} gaps, in order: {ordered}, "
                    f"event.synced mismatches: {sub.synced_mismatches[:3]}")
    verdict.duplicates += len(stats.ack_mismatches)
    return verdict
