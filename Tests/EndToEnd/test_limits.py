"""§9 and §10 Limits: the default rate limits answer `rate_limited` with `retry_after_ms`,
the request is not applied, and a client that keeps sending is not closed for it.

These run on a relay of their own with the default settings (the other relays run with
`--rate-limits off`)."""
import asyncio
import base64
import os

import pytest

from parley_client import (
    Identity, connect, create_channel, message_fields, random_username, rotate_key, signup,
)


@pytest.fixture
def limited_relay(own_relay):
    return own_relay(rate_limits=True).start()


def _rate_limited(reply):
    return reply.get("type") == "error" and reply.get("code") == "rate_limited"


async def test_signups_per_address(limited_relay):
    conn = await connect(limited_relay.url)
    replies = []
    for i in range(31):
        replies.append(await conn.request("signup", username=random_username("rl"), public_key=Identity().spki))
    assert all(r["type"] == "signup" for r in replies[:30]), [r for r in replies[:30] if r["type"] != "signup"][:2]
    last = replies[30]
    assert _rate_limited(last), last
    assert isinstance(last["retry_after_ms"], int) and 0 < last["retry_after_ms"] <= 60_000
    assert conn.close_code is None and (await conn.ok("ping"))["type"] == "ping"


async def test_login_attempts_per_username(limited_relay):
    conn = await connect(limited_relay.url)
    user = await signup(conn)
    other = await connect(limited_relay.url)
    replies = []
    for _ in range(11):
        replies.append(await other.request("login", username=user.username,
                                           passkey=base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")))
    assert all(r.get("code") == "auth_failed" for r in replies[:10]), replies[:10]
    assert _rate_limited(replies[10]), replies[10]
    assert isinstance(replies[10]["retry_after_ms"], int)
    # still not closed, and the right passkey is refused too while limited (not applied)
    again = await other.request("login", username=user.username, passkey=user.passkey)
    assert _rate_limited(again), again
    assert other.close_code is None


async def test_requests_per_connection(limited_relay):
    conn = await connect(limited_relay.url)
    futures = [await conn.send_frame({"id": f"p{i}", "type": "ping"}) for i in range(400)]
    replies = await asyncio.wait_for(asyncio.gather(*futures), 30)
    limited = [r for r in replies if _rate_limited(r)]
    assert limited, "400 pipelined pings: the burst of 200 must be exceeded"
    assert sum(r["type"] == "ping" for r in replies) >= 200
    assert all(isinstance(r["retry_after_ms"], int) for r in limited)
    await asyncio.sleep(max(r["retry_after_ms"] for r in limited) / 1000 + 0.2)
    assert conn.close_code is None and (await conn.ok("ping"))["type"] == "ping"


async def test_messages_per_user(limited_relay):
    conn = await connect(limited_relay.url)
    user = await signup(conn)
    ch = await create_channel(conn, user)
    await rotate_key(conn, user, ch, [user])
    futures = [await conn.send_frame({"id": f"m{i}", "type": "message", **message_fields(ch, user, f"{i}")})
               for i in range(150)]
    replies = await asyncio.wait_for(asyncio.gather(*futures), 60)
    ok = [r for r in replies if r["type"] == "message"]
    limited = [r for r in replies if _rate_limited(r)]
    assert limited, "150 messages at once: the burst of 100 must be exceeded"
    assert len(ok) + len(limited) == 150
    # what was refused was not applied: seqs are exactly 1..len(ok)
    assert sorted(r["seq"] for r in ok) == list(range(1, len(ok) + 1))
    history = await conn.ok("messages", channel_id=ch.channel_id, after=0, limit=200)
    assert len(history["messages"]) == len(ok)
    assert conn.close_code is None


async def test_login_attempts_per_address(limited_relay):
    conn = await connect(limited_relay.url)
    replies = []
    for _ in range(11):
        replies.append(await conn.request("login", username=random_username("nobody"),
                                          passkey=base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")))
    assert all(r.get("code") == "auth_failed" for r in replies[:10]), replies[:10]
    assert _rate_limited(replies[10]), replies[10]
    assert isinstance(replies[10]["retry_after_ms"], int) and replies[10]["retry_after_ms"] > 0
    assert conn.close_code is None and (await conn.ok("ping"))["type"] == "ping"
