"""§1, §3, §10 Transport and Frames: handshake, HTTP endpoints, envelope errors, sizes."""
import asyncio
import json
import os

import pytest
import websockets

from conftest import http_get
from parley_client import (
    MAX_FRAME, b64e, connect, new_user, new_uuid, now_ms, now_s, strip_re,
)

# --- HTTP


def test_healthz(relay):
    status, headers, body = http_get(relay.http + "/healthz")
    assert status == 200
    assert body.strip() == b"ok"
    assert headers["content-type"].startswith("text/plain")


def test_metrics(relay):
    status, headers, body = http_get(relay.http + "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    text = body.decode()
    for name in ("parley_connections", "parley_frames_in_total", "parley_errors_total",
                 "parley_messages_stored_total", "parley_deliveries_total"):
        assert name in text, f"{name} missing from /metrics"


async def test_metrics_count_frames_and_errors(relay):
    conn = await connect(relay.url)
    await conn.ok("ping")
    await conn.error("frobnicate", "unknown_type")
    status, _, body = await asyncio.to_thread(http_get, relay.http + "/metrics")
    text = body.decode()
    assert status == 200
    assert any(line.startswith("parley_frames_in_total{") and 'type="ping"' in line
               for line in text.splitlines()), text
    assert any(line.startswith("parley_errors_total{") and 'code="unknown_type"' in line
               for line in text.splitlines()), text


def test_other_http_path_is_404(relay):
    for path in ("/nope", "/healthz/x", "/ws/x", "/js/nope.js"):
        status, _, _ = http_get(relay.http + path)
        assert status == 404, path


def test_root_is_the_web_client(relay):
    status, headers, body = http_get(relay.http + "/")
    assert status == 200
    assert {k.lower(): v for k, v in headers.items()}["content-type"].startswith("text/html")
    assert b"<!doctype html>" in body[:100].lower()


def test_plain_get_on_ws_is_426(relay):
    status, _, _ = http_get(relay.http + "/ws")
    assert status == 426


# --- handshake


async def _refused(url, subprotocols):
    with pytest.raises((websockets.InvalidHandshake, OSError, asyncio.TimeoutError)):
        conn = await connect(url, subprotocols=subprotocols)
        # A relay that accepted the handshake has not refused it.
        await conn.close()


async def test_handshake_requires_parley_v1(relay):
    await _refused(relay.url, None)
    await _refused(relay.url, ["chat"])
    await _refused(relay.url, ["parley.v2", "chat"])
    conn = await connect(relay.url, subprotocols=["chat", "parley.v1"])
    assert conn.subprotocol == "parley.v1"
    assert (await conn.ok("ping"))["type"] == "ping"


async def test_websocket_upgrade_on_other_path_is_404(relay):
    """§10: other HTTP paths answer 404 -- an upgrade request to another path included."""
    base = relay.url[: -len("/ws")]
    for path in ("/", "/socket", "/healthz"):
        with pytest.raises(websockets.InvalidStatus) as refused:
            await connect(base + path, subprotocols=["parley.v1"])
        assert refused.value.response.status_code == 404, path


async def test_permessage_deflate_is_not_negotiated(relay):
    from websockets.asyncio.client import connect as ws_connect
    ws = await ws_connect(relay.url, subprotocols=["parley.v1"], compression="deflate")
    try:
        assert ws.protocol.extensions == []
        assert "sec-websocket-extensions" not in {k.lower() for k in ws.response.headers.keys()}
    finally:
        await ws.close()


async def test_websocket_only_on_ws_path(relay):
    base = relay.url[: -len("/ws")]
    await _refused(base + "/", ["parley.v1"])
    await _refused(base + "/socket", ["parley.v1"])
    conn = await connect(relay.url)
    assert conn.subprotocol == "parley.v1"


# --- envelope


async def test_ping_time_is_unix_ms(relay):
    conn = await connect(relay.url)
    before = now_ms()
    reply = await conn.request("ping", id="p-1")
    after = now_ms()
    assert reply["re"] == "p-1" and reply["type"] == "ping"
    assert isinstance(reply["time"], int)
    assert before - 2000 <= reply["time"] <= after + 2000


@pytest.mark.parametrize("raw", [
    "not json",
    "{\"id\": \"a\", \"type\": \"ping\"",      # truncated
    "[1, 2, 3]",
    "\"ping\"",
    "42",
    "null",
    "{\"type\": \"ping\"}",                     # no id
    "{\"id\": 7, \"type\": \"ping\"}",          # id not a string
    "{\"id\": \"\", \"type\": \"ping\"}",       # empty id
    json.dumps({"id": "x" * 65, "type": "ping"}),
    json.dumps({"id": None, "type": "ping"}),
    json.dumps({"id": "y" * 65, "type": "no.such.type"}),
])
async def test_unusable_envelope_gets_bad_request_with_re_null(relay, raw):
    conn = await connect(relay.url)
    await conn.send_raw(raw)
    frame = await conn.next_orphan()
    assert frame["re"] is None
    assert frame["type"] == "error" and frame["code"] == "bad_request", frame
    assert isinstance(frame.get("message"), str)
    # the connection stays open
    assert (await conn.ok("ping"))["type"] == "ping"


async def test_id_of_64_chars_is_echoed(relay):
    conn = await connect(relay.url)
    rid = "i" * 64
    reply = await conn.request("ping", id=rid)
    assert reply == {**reply, "re": rid, "type": "ping"}


async def test_missing_or_bad_type_is_bad_request_with_re(relay):
    conn = await connect(relay.url)
    await conn.send_raw(json.dumps({"id": "no-type"}))
    reply = await asyncio.wait_for(await conn.send_frame({"id": "no-type-2"}), 10)
    assert reply["type"] == "error" and reply["code"] == "bad_request" and reply["re"] == "no-type-2"
    reply = await asyncio.wait_for(await conn.send_frame({"id": "num-type", "type": 5}), 10)
    assert reply["type"] == "error" and reply["code"] == "bad_request" and reply["re"] == "num-type"


async def test_unknown_type(relay):
    conn = await connect(relay.url)
    reply = await conn.request("frobnicate", id="u-1")
    assert reply["re"] == "u-1" and reply["type"] == "error" and reply["code"] == "unknown_type"
    # unknown_type comes before unauthenticated, and the connection stays open
    assert (await conn.ok("ping"))["type"] == "ping"


async def test_binary_frame_is_bad_request_and_connection_stays(relay):
    conn = await connect(relay.url)
    await conn.send_raw(json.dumps({"id": "bin", "type": "ping"}).encode())
    frame = await conn.next_orphan()
    assert frame["re"] is None and frame["type"] == "error" and frame["code"] == "bad_request"
    assert (await conn.ok("ping"))["type"] == "ping"
    assert conn.ws.close_code is None


def _frame_of_size(size: int, rid: str) -> str:
    head = json.dumps({"id": rid, "type": "ping", "pad": ""})[:-2]  # ends with "pad": "
    filler = size - len(head) - 2
    text = head + "a" * filler + "\"}"
    assert len(text.encode()) == size
    json.loads(text)
    return text


async def test_message_of_256_kib_is_accepted(relay):
    conn = await connect(relay.url)
    fut = await conn.send_frame({"id": "warm", "type": "ping"})
    await asyncio.wait_for(fut, 10)
    text = _frame_of_size(MAX_FRAME, "big")
    conn.pending["big"] = asyncio.get_running_loop().create_future()
    await conn.send_raw(text)
    reply = await asyncio.wait_for(conn.pending["big"], 10)
    assert reply["re"] == "big" and reply["type"] in ("ping", "error")
    assert (await conn.ok("ping"))["type"] == "ping"
    assert conn.ws.close_code is None


async def test_message_over_256_kib_closes_with_1009(relay):
    conn = await connect(relay.url)
    await conn.send_raw(_frame_of_size(MAX_FRAME + 1, "too-big"))
    code = await conn.wait_closed()
    assert code == 1009, f"close code {code} ({conn.close_reason!r})"


async def test_fragmented_message_over_256_kib_closes_with_1009(relay):
    """The bound is on the whole message after reassembly."""
    conn = await connect(relay.url)
    text = _frame_of_size(MAX_FRAME + 1, "frag")
    chunks = [text[i:i + 65536] for i in range(0, len(text), 65536)]
    await conn.ws.send(iter(chunks))
    code = await conn.wait_closed()
    assert code == 1009, f"close code {code}"


async def test_fragmented_message_within_bound_is_accepted(relay):
    conn = await connect(relay.url)
    text = _frame_of_size(200_000, "frag-ok")
    conn.pending["frag-ok"] = asyncio.get_running_loop().create_future()
    await conn.ws.send(iter([text[i:i + 50_000] for i in range(0, len(text), 50_000)]))
    reply = await asyncio.wait_for(conn.pending["frag-ok"], 10)
    assert reply["type"] == "ping"


# --- authentication gate and order of checks

U1, U2, C1 = new_uuid(), new_uuid(), new_uuid()
SIG = b64e(os.urandom(256))
STATEMENT = {"version": 1, "prev": "", "ts": 1_700_000_000, "owner_id": U1, "members": [U1],
             "signer_id": U1, "sig": SIG}
WELL_FORMED = {
    "logout": {},
    "user": {"username": "someone"},
    "channel.create": {"channel_id": C1, "name": "n", "membership": STATEMENT},
    "channels": {},
    "channel.members": {"channel_id": C1},
    "channel.membership": {"channel_id": C1, "after_version": 1},
    "channel.add": {"channel_id": C1, "user_id": U2,
                    "membership": {**STATEMENT, "version": 2, "prev": b64e(os.urandom(32)),
                                   "members": sorted([U1, U2])}},
    "channel.remove": {"channel_id": C1, "user_id": U2,
                       "membership": {**STATEMENT, "version": 2, "prev": b64e(os.urandom(32))}},
    "key": {"channel_id": C1},
    "keys": {"channel_id": C1, "key_id": new_uuid(), "previous_key_id": None,
             "membership_version": 1, "digest": b64e(os.urandom(32)), "sig": SIG,
             "encrypted_keys": [{"user_id": U1, "encrypted_key": SIG}]},
    "message": {"channel_id": C1, "key_id": new_uuid(), "iv": b64e(os.urandom(12)),
                "ciphertext": b64e(os.urandom(40)), "ts": 1_700_000_000,
                "client_msg_id": new_uuid()},
    "messages": {"channel_id": C1, "after": 0, "limit": 10},
    "subscribe": {"channels": [{"channel_id": C1, "after": 0}]},
    "unsubscribe": {"channel_ids": [C1]},
}


@pytest.mark.parametrize("type_", sorted(WELL_FORMED))
async def test_requests_before_auth_are_unauthenticated(relay, type_):
    conn = await connect(relay.url)
    reply = await conn.request(type_, id="gate", **WELL_FORMED[type_])
    assert reply["re"] == "gate"
    assert reply["type"] == "error" and reply["code"] == "unauthenticated", reply


SHAPE_ERRORS = [
    ("message", {**WELL_FORMED["message"], "iv": "not base64!"}),
    ("message", {**WELL_FORMED["message"], "iv": b64e(os.urandom(11))}),
    ("message", {**WELL_FORMED["message"], "iv": b64e(os.urandom(12))[:-1]}),
    ("message", {**WELL_FORMED["message"], "client_msg_id": "not-a-uuid"}),
    ("message", {**WELL_FORMED["message"], "ts": "1700000000"}),
    ("message", {**WELL_FORMED["message"], "ts": 1.5}),
    ("message", {**WELL_FORMED["message"], "ts": True}),
    ("message", {k: v for k, v in WELL_FORMED["message"].items() if k != "key_id"}),
    ("messages", {"channel_id": C1.upper()}),
    ("messages", {"channel_id": "general"}),
    ("messages", {"channel_id": C1, "limit": 0}),
    ("messages", {"channel_id": C1, "limit": 201}),
    ("messages", {"channel_id": C1, "limit": True}),
    ("messages", {"channel_id": C1, "after": -1}),
    ("messages", {"channel_id": C1, "before": 2 ** 53}),
    ("channel.create", {**WELL_FORMED["channel.create"],
                        "membership": {**STATEMENT, "members": ["not-a-uuid"]}}),
    ("channel.create", {**WELL_FORMED["channel.create"], "membership": {**STATEMENT, "sig": "%%%"}}),
    ("channel.create", {**WELL_FORMED["channel.create"], "name": 5}),
    ("channel.create", {**WELL_FORMED["channel.create"], "membership": {**STATEMENT, "version": "1"}}),
    ("keys", {**WELL_FORMED["keys"], "encrypted_keys": [{"user_id": "x", "encrypted_key": SIG}]}),
    ("keys", {**WELL_FORMED["keys"], "encrypted_keys": [{"user_id": U1, "encrypted_key": "***"}]}),
    ("keys", {**WELL_FORMED["keys"], "key_id": "k1"}),
    ("subscribe", {"channels": [{"channel_id": C1, "after": -5}]}),
    ("subscribe", {"channels": "all"}),
    ("unsubscribe", {"channel_ids": [C1[:-1]]}),
    ("key", {"channel_id": C1, "key_id": "nope"}),
    ("user", {"user_id": "nope"}),
]


@pytest.mark.parametrize("type_,fields", SHAPE_ERRORS)
async def test_shape_errors_come_before_unauthenticated(relay, type_, fields):
    conn = await connect(relay.url)
    reply = await conn.request(type_, id="shape", **fields)
    assert reply["re"] == "shape"
    assert reply["type"] == "error" and reply["code"] == "bad_request", reply


@pytest.mark.parametrize("type_,fields", SHAPE_ERRORS)
async def test_shape_errors_come_before_not_member(relay, type_, fields):
    conn, _ = await new_user(relay.url)
    reply = await conn.request(type_, id="shape", **fields)
    assert reply["type"] == "error" and reply["code"] == "bad_request", reply


async def test_null_optional_field_is_like_absent(relay):
    conn, user = await new_user(relay.url)
    from parley_client import create_channel
    channel = await create_channel(conn, user)
    a = await conn.ok("messages", channel_id=channel.channel_id, after=None, before=None, limit=None)
    b = await conn.ok("messages", channel_id=channel.channel_id)
    assert strip_re(a) == strip_re(b) == {"type": "messages", "messages": [], "has_more": False}


async def test_unknown_fields_are_ignored(relay):
    conn = await connect(relay.url)
    reply = await conn.request("ping", extra={"nested": [1, 2]}, another="x")
    assert reply["type"] == "ping"


async def test_error_frame_shape(relay):
    conn = await connect(relay.url)
    reply = await conn.request("channels", id="e-1")
    assert reply["re"] == "e-1"
    assert reply["type"] == "error" and reply["code"] == "unauthenticated"
    assert isinstance(reply["message"], str)
