"""Structured logs: every line of a relay at `debug` is one JSON object with `time`,
`level`, `event` and `msg`; the events of a whole session (handshakes, logins, refusals,
a database outage, shutdown) are there; and no secret ever is — no passkey, session token,
private key, channel key, wrapped key or ciphertext, in any encoding."""
import asyncio
import base64
import json
import os

import pytest
from cryptography.hazmat.primitives import serialization

from conftest import pg_ctl
from parley_client import (
    b64e, b64url_decode, channel_with_subscriber, connect, login, message_fields, new_user,
)
from test_hardening import refused_status

ORIGIN = "https://chat.example"


def encodings(secret: bytes) -> set[str]:
    """The forms a leaked secret could take in a line: base64, base64url, hex."""
    forms = {base64.b64encode(secret).decode(), base64.urlsafe_b64encode(secret).decode().rstrip("="),
             secret.hex()}
    # a long secret may be cut: its first 24 characters are enough to be a leak
    return {form[:24] for form in forms}


@pytest.mark.time_limit(240)
async def test_debug_logs_are_structured_and_hold_no_secret(own_relay):
    relay = own_relay("--log-level", "debug", "--log-format", "json", "--allowed-origins", ORIGIN)
    await asyncio.to_thread(relay.start)
    ca, a, cb, b, ch = await channel_with_subscriber(relay.url)
    sent = [message_fields(ch, a, f"secret text {i}") for i in range(5)]
    for fields in sent:
        await ca.ok("message", **fields)
    # a second login of b (a new session), a wrong passkey, a refused Origin, a logout
    cb2 = await connect(relay.url)
    await cb2.error("login", "auth_failed", username=a.username, passkey=b.passkey)
    await login(cb2, b)
    assert await refused_status(relay.url, origin="https://evil.example") == 403
    await cb2.ok("logout")

    # a short database outage: the workers and the health check say so, then recover
    assert (await asyncio.to_thread(pg_ctl, relay.data_dir, "stop", "-m", "fast", "-w")).returncode == 0
    reply = await ca.request("channels", timeout=30)
    assert reply["type"] == "error" and reply["code"] == "unavailable"
    await asyncio.sleep(1.5)
    started = await asyncio.to_thread(pg_ctl, relay.data_dir, "start", "-w", "-l",
                                      os.path.join(relay.data_dir, "postgres.log"))
    assert started.returncode == 0, started.stdout
    for _ in range(100):
        if (await ca.request("channels", timeout=30))["type"] == "channels":
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.5)   # the health check's next round notices the database is back
    assert relay.terminate() == 0

    lines = relay.log_text().splitlines()
    records = []
    for line in lines:
        record = json.loads(line)     # every line is one JSON object
        assert isinstance(record, dict)
        assert list(record)[:4] == ["time", "level", "event", "msg"], record
        assert record["level"] in {"error", "warn", "info", "debug"}
        records.append(record)
    events = {r["event"] for r in records}
    for expected in ["database.embedded", "relay.listening", "connection.opened", "auth.ok", "auth.failed",
                     "connection.refused", "connection.closed", "database.down", "database.up",
                     "database.disconnected", "database.reconnected", "relay.stopping", "relay.stopped"]:
        assert expected in events, f"no {expected} line"
    refused = [r for r in records if r["event"] == "connection.refused"]
    assert refused[0]["reason"] == "origin" and refused[0]["origin"] == "https://evil.example"
    assert not [r for r in records if r["level"] == "error"], "nothing here is an error"

    secrets: dict[str, set[str]] = {}
    for who in (a, b):
        secrets[f"{who.username} passkey"] = {who.passkey}
        secrets[f"{who.username} session"] = {who.session} | encodings(b64url_decode(who.session))
        der = who.identity.private_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption())
        secrets[f"{who.username} private key"] = {b64e(der)[40:80]}
    secrets["channel key"] = encodings(ch.key)
    for i, fields in enumerate(sent):
        secrets[f"ciphertext {i}"] = {fields["ciphertext"][:24]}
    text = relay.log_text()
    for name, forms in secrets.items():
        for form in forms:
            assert form and form not in text, f"the log holds the {name}"
    print(f"\nfigures: {len(records)} log lines, {len(events)} kinds of event, "
          f"{sum(len(f) for f in secrets.values())} secret forms absent")
