"""§9 under load: a database outage and a kill -9 while dozens of clients send and
subscribe. Senders retry the same frame (same client_msg_id) until acknowledged;
subscribers resume with `after`. Nothing acknowledged is lost, nothing is stored or
delivered twice, no seq is skipped. Each test prints one `figures:` line."""
import asyncio
import os
import re
import time

import pytest

from conftest import http_get, pg_ctl
from load import Stats, Sender, drain, rooms, subscribe_from_start, verify

RATE = 4.0   # messages per second per sender


async def _relay_alive(relay, stop: asyncio.Event, exits: list):
    while not stop.is_set():
        if relay.proc.poll() is not None:
            exits.append(relay.proc.returncode)
            return
        try:
            await asyncio.wait_for(stop.wait(), 0.2)
        except asyncio.TimeoutError:
            pass


def _raise_failures(tasks):
    """A client task that died (e.g. its session was refused after a restart) fails the test."""
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()


async def _stop(tasks):
    _raise_failures(tasks)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _until(condition, timeout: float, what: str, tasks=()):
    deadline = time.monotonic() + timeout
    while not condition():
        _raise_failures(tasks)
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@pytest.mark.time_limit(240)
async def test_database_stopped_10s_under_load(own_relay):
    relay = own_relay()
    await asyncio.to_thread(relay.start)
    url = lambda: relay.url
    stats = Stats()
    made = await rooms(relay.url, channels=10, per_channel=5)
    senders = [Sender(conn, user, room.channel, url, stats) for room in made for conn, user in room.members]
    # one more connection per channel, of its first member, subscribed from seq 0
    subscribers = await asyncio.gather(*(
        subscribe_from_start(url, room.members[0][1], room.channel.channel_id, stats) for room in made))
    followers = [asyncio.create_task(s.run()) for s in subscribers]
    stop, watching, exits = asyncio.Event(), asyncio.Event(), []
    watcher = asyncio.create_task(_relay_alive(relay, watching, exits))
    load = [asyncio.create_task(s.run(RATE, stop, phase=i / (RATE * len(senders))))
            for i, s in enumerate(senders)]
    started = time.monotonic()
    pg_log = os.path.join(relay.data_dir, "postgres.log")
    try:
        await asyncio.sleep(5)
        acked_before = len(stats.acked)
        stopped = await asyncio.to_thread(pg_ctl, relay.data_dir, "stop", "-m", "fast", "-w", "-t", "60")
        assert stopped.returncode == 0, stopped.stdout
        down_at = time.monotonic()
        await asyncio.sleep(10)
    finally:
        restarted = await asyncio.to_thread(pg_ctl, relay.data_dir, "start", "-l", pg_log, "-w", "-t", "60")
    up_at = time.monotonic()
    assert restarted.returncode == 0, restarted.stdout
    await asyncio.sleep(10)
    stop.set()
    await asyncio.gather(*load)
    stopped_sending = time.monotonic()
    unfinished = await drain(senders, timeout=90)
    drained_in = time.monotonic() - stopped_sending
    verdict = await verify(made, relay.url, stats, subscribers)
    watching.set()
    await watcher
    await _stop(followers)

    _, _, metrics = await asyncio.to_thread(http_get, relay.http + "/metrics")
    reconnected = re.search(rb'^parley_database_reconnects_total\{result="ok"\} (\d+)$', metrics, re.M)
    during = [r for at, r in stats.unavailable if down_at - 1 <= at <= up_at + 30]
    attempted = len(stats.attempted)
    print(f"\nfigures: clients {len(senders)} senders + {len(subscribers)} subscribers, "
          f"msgs attempted {attempted}, acknowledged {len(stats.acked)} ({acked_before} before the stop), "
          f"stored {verdict.stored}, unavailable answers {len(stats.unavailable)}, internal {len(stats.internal)}, "
          f"reconnects {stats.reconnects}, database reconnects ok "
          f"{int(reconnected.group(1)) if reconnected else None}, lost {verdict.lost}, "
          f"duplicates {verdict.duplicates}, gaps {verdict.gaps}, outage {up_at - down_at:.1f} s, "
          f"backlog drained in {drained_in:.1f} s, total {time.monotonic() - started:.1f} s")

    assert not exits and relay.proc.poll() is None, f"the relay exited ({exits}): see {relay.log_path}"
    assert not stats.unexpected, f"unexpected errors (§9: an outage gives unavailable): {stats.unexpected[:5]}"
    assert not stats.internal, f"`internal` during a database outage, §9 wants `unavailable`: {stats.internal[:3]}"
    assert during, "no `unavailable` answer while PostgreSQL was stopped"
    assert not stats.bad_retry_after, f"`unavailable` without an int retry_after_ms: {stats.bad_retry_after[:3]}"
    assert stats.timeouts == 0, f"{stats.timeouts} requests never answered (a hang)"
    assert unfinished == 0, f"{unfinished} messages still unacknowledged 90 s after the load"
    assert not verdict.details, "\n".join(verdict.details[:10])
    assert (verdict.lost, verdict.duplicates, verdict.gaps) == (0, 0, 0)
    assert verdict.stored == attempted == len(stats.acked)
    for sub in subscribers:
        assert sub.seqs == list(range(1, sub.last + 1)), "every seq exactly once, in order"

    # the workers replaced their broken connections (/metrics)
    assert reconnected and int(reconnected.group(1)) >= 1, metrics
    assert relay.terminate() == 0


@pytest.mark.time_limit(240)
async def test_sigkill_under_load_every_client_resumes(own_relay):
    relay = own_relay()
    await asyncio.to_thread(relay.start)
    url = lambda: relay.url
    stats = Stats()
    made = await rooms(relay.url, channels=5, per_channel=4)
    senders = [Sender(conn, user, room.channel, url, stats) for room in made for conn, user in room.members]
    # every member also follows its channel on a second connection: 4 subscribers a channel
    subscribers = await asyncio.gather(*(
        subscribe_from_start(url, user, room.channel.channel_id, stats)
        for room in made for _, user in room.members))
    followers = [asyncio.create_task(s.run()) for s in subscribers]
    stop = asyncio.Event()
    load = [asyncio.create_task(s.run(RATE, stop, phase=i / (RATE * len(senders))))
            for i, s in enumerate(senders)]
    started = time.monotonic()

    # kill -9 right after a message frame went out, once 200 are acknowledged: at least
    # that one is in flight. The event loop is held for a moment first (the relay may
    # commit it and write the ack), and the acks not yet read are lost with the relay
    # (the senders' sockets are aborted with their unread bytes): a sender cannot know
    # what was stored, and its retry must answer duplicate: true with the original seq.
    kill = {}

    def kill_now():
        if len(stats.acked) >= 200 and not kill:
            time.sleep(0.2)
            kill.update(at=time.monotonic(), acked=len(stats.acked), in_flight=stats.in_flight)
            relay.kill()
            for sender in senders:
                sender.conn.ws.transport.abort()

    stats.after_send = kill_now
    await _until(lambda: kill, 60, "200 acknowledged messages and the kill", load)
    stats.after_send = None
    killed_at = kill["at"]
    await asyncio.to_thread(relay.start)
    restarted_in = time.monotonic() - killed_at

    # every client finds the new relay (its port changed), re-authenticates, resumes
    await _until(lambda: all(s.conn.user and not s.conn.closed.is_set() and s.resubscribed_at
                             for s in subscribers)
                 and all(not s.conn.closed.is_set() for s in senders), 60, "every client to resume", followers)
    resumed_in = time.monotonic() - killed_at
    await asyncio.sleep(5)
    stop.set()
    await asyncio.gather(*load)
    unfinished = await drain(senders, timeout=60)
    verdict = await verify(made, relay.url, stats, subscribers)
    await _stop(followers)

    resumed = [s for s in subscribers
               if any(e["at"] > killed_at and e["recovered"] is True
                      for e in s.subscriptions)]
    not_recovered = [e for s in subscribers for e in s.subscriptions if e["recovered"] is not True]
    attempted = len(stats.attempted)
    print(f"\nfigures: senders {len(senders)}, subscribers {len(subscribers)}, "
          f"acknowledged before kill {kill['acked']}, in flight at kill {kill['in_flight']}, "
          f"retries answered duplicate {stats.duplicate_acks}, resumed subscribers {len(resumed)}, "
          f"reconnects {stats.reconnects}, attempted {attempted}, stored {verdict.stored}, "
          f"lost {verdict.lost}, duplicates {verdict.duplicates}, gaps {verdict.gaps}, "
          f"restart {restarted_in:.1f} s, time to resume all {resumed_in:.1f} s, "
          f"total {time.monotonic() - started:.1f} s")

    assert not stats.unexpected, f"unexpected errors: {stats.unexpected[:5]}"
    assert stats.timeouts == 0, f"{stats.timeouts} requests never answered (a hang)"
    assert unfinished == 0, f"{unfinished} messages still unacknowledged 60 s after the load"
    assert not not_recovered, f"a resume with after = last seen seq must be recovered (§8): {not_recovered[:3]}"
    assert len(resumed) == len(subscribers)
    assert not verdict.details, "\n".join(verdict.details[:10])
    assert (verdict.lost, verdict.duplicates, verdict.gaps) == (0, 0, 0)
    assert verdict.stored == attempted == len(stats.acked)
    for sub in subscribers:
        assert sub.seqs == list(range(1, sub.last + 1)), "every seq exactly once, in order"
    assert relay.terminate() == 0
