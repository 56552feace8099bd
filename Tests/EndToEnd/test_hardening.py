"""Connection hardening: connection limits (503 / 429), the authentication deadline
(1008), the Origin allowlist (403) and `parley_rejections_total` on /metrics."""
import asyncio
import re
import time

import pytest
import websockets

from conftest import http_get
from parley_client import connect, signup

REJECTION_RE = re.compile(r'^parley_rejections_total\{reason="([a-z_]+)"\} (\d+)$', re.M)
REASONS = {"max_connections", "per_address", "origin", "auth_timeout", "rate_limited", "slow_consumer"}


def rejections(relay) -> dict:
    status, _, body = http_get(relay.http + "/metrics")
    assert status == 200
    return {reason: int(count) for reason, count in REJECTION_RE.findall(body.decode())}


async def refused_status(url: str, **kwargs) -> int:
    with pytest.raises(websockets.InvalidStatus) as refused:
        await connect(url, **kwargs)
    return refused.value.response.status_code


async def connect_eventually(url: str, attempts: int = 50, **kwargs):
    """A connection once the relay has seen an earlier one close."""
    for _ in range(attempts):
        try:
            return await connect(url, **kwargs)
        except websockets.InvalidStatus:
            await asyncio.sleep(0.1)
    return await connect(url, **kwargs)


def test_metrics_list_every_rejection_reason(relay):
    counts = rejections(relay)
    assert set(counts) == REASONS, counts


async def test_max_connections_refuses_with_503(own_relay):
    relay = own_relay("--max-connections", "5").start()
    conns = [await connect(relay.url) for _ in range(5)]
    assert await refused_status(relay.url) == 503
    # plain HTTP is not a WebSocket connection: still answered
    status, _, _ = await asyncio.to_thread(http_get, relay.http + "/healthz")
    assert status == 200
    await conns[0].close()
    replacement = await connect_eventually(relay.url)
    assert (await replacement.ok("ping"))["type"] == "ping"
    assert await refused_status(relay.url) == 503
    assert (await asyncio.to_thread(rejections, relay))["max_connections"] == 2


async def test_connections_per_address_refuses_with_429(own_relay):
    relay = own_relay("--max-connections-per-address", "3").start()
    conns = [await connect(relay.url) for _ in range(3)]
    assert await refused_status(relay.url) == 429
    await conns[1].close()
    replacement = await connect_eventually(relay.url)
    assert (await replacement.ok("ping"))["type"] == "ping"
    counts = await asyncio.to_thread(rejections, relay)
    assert counts["per_address"] == 1 and counts["max_connections"] == 0, counts


async def test_unauthenticated_connection_is_closed_after_the_deadline(own_relay):
    relay = own_relay("--auth-timeout", "2").start()
    idle = await connect(relay.url)
    authenticated = await connect(relay.url)
    await signup(authenticated)
    started = time.monotonic()
    code = await idle.wait_closed(timeout=8)
    waited = time.monotonic() - started
    assert code == 1008, (code, idle.close_reason)
    assert idle.close_reason == "authenticate within 2 s"
    assert waited < 4.5, waited
    # requests before the deadline do not count: only authentication does
    await asyncio.sleep(1.5)
    assert not authenticated.closed.is_set()
    assert (await authenticated.ok("ping"))["type"] == "ping"
    assert (await asyncio.to_thread(rejections, relay))["auth_timeout"] == 1


async def test_auth_deadline_zero_is_off(own_relay):
    relay = own_relay("--auth-timeout", "0").start()
    idle = await connect(relay.url)
    await asyncio.sleep(1)
    assert (await idle.ok("ping"))["type"] == "ping"


async def test_origin_allowlist(own_relay):
    relay = own_relay("--allowed-origins", "https://chat.example.com, https://app.example.com").start()
    listed = await connect(relay.url, origin="https://chat.example.com")
    assert (await listed.ok("ping"))["type"] == "ping"
    second = await connect(relay.url, origin="https://app.example.com")
    assert (await second.ok("ping"))["type"] == "ping"
    assert await refused_status(relay.url, origin="https://evil.example.net") == 403
    assert await refused_status(relay.url, origin="http://chat.example.com") == 403
    no_origin = await connect(relay.url)
    assert (await no_origin.ok("ping"))["type"] == "ping"
    assert (await asyncio.to_thread(rejections, relay))["origin"] == 2


async def test_any_origin_without_allowlist(relay):
    conn = await connect(relay.url, origin="https://anywhere.example.org")
    assert (await conn.ok("ping"))["type"] == "ping"


async def test_rate_limited_requests_are_counted(own_relay):
    relay = own_relay("--rate-connection", "1/1", rate_limits=True).start()
    conn = await connect(relay.url)
    replies = [await conn.request("ping") for _ in range(3)]
    limited = [r for r in replies if r["type"] == "error" and r["code"] == "rate_limited"]
    assert limited, replies
    assert (await asyncio.to_thread(rejections, relay))["rate_limited"] == len(limited)


@pytest.mark.time_limit(120)
async def test_session_expiry_closes_its_sockets_at_once(own_relay):
    """Session expiry, like logout, closes that session's sockets at once (4001); the
    token no longer authenticates; a new login works."""
    relay = own_relay("--session-ttl", "3")
    await asyncio.to_thread(relay.start)
    first = await connect(relay.url)
    user = await signup(first)
    second = await connect(relay.url)
    await second.ok("auth", session=user.session)
    started = time.monotonic()
    assert await asyncio.wait_for(first.wait_closed(), 10) == 4001
    assert await asyncio.wait_for(second.wait_closed(), 10) == 4001
    assert 2.0 <= time.monotonic() - started <= 8.0
    fresh = await connect(relay.url)
    await fresh.error("auth", "auth_failed", session=user.session)
