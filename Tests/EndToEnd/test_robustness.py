"""§9 and §10: bad input of any kind gets an error frame or a close code, never a crash or
a hang, and malformed input is never answered `internal`."""
import asyncio
import copy
import json
import os
import random

import pytest

from conftest import http_get
from parley_client import (
    b64e, connect, create_channel, make_key_record, make_statement, message_fields, new_uuid,
    next_statement, now_s, rotate_key, users,
)

CODES = {"bad_request", "unknown_type", "unauthenticated", "auth_failed", "forbidden", "not_member",
         "not_found", "invalid_username", "username_taken", "invalid_key", "challenge_failed",
         "key_conflict", "members_mismatch", "key_expired", "bad_timestamp", "too_large",
         "rate_limited", "unavailable", "internal"}

NASTY_RAW = [
    "[" * 10_000 + "]" * 10_000,
    "{\"a\":" * 5_000 + "1" + "}" * 5_000,
    "{\"id\":\"n\",\"type\":\"messages\",\"channel_id\":\"" + "0" * 36 + "\",\"limit\":1e999999}",
    "{\"id\":\"n\",\"type\":\"messages\",\"channel_id\":\"" + new_uuid() + "\",\"limit\":-0}",
    "{\"id\":\"n\",\"type\":\"ping\",\"x\":\"\\ud800\"}",
    "{\"id\":\"n\",\"type\":\"ping\"}{\"id\":\"m\"}",
    "{\"id\":\"n\",\"type\":\"ping\",}",
    "\ufeff{\"id\":\"n\",\"type\":\"ping\"}",
    "{\"id\":\"n\",\"type\":\"ping\" /* c */}",
    "",
    " ",
    "\u0000",
    "{\"id\":\"n\",\"type\":\"" + "t" * 100_000 + "\"}",
    "{\"id\":\"n\",\"type\":\"messages\",\"channel_id\":123456789012345678901234567890}",
]


async def test_nasty_raw_frames(relay):
    conn = await connect(relay.url)
    for raw in NASTY_RAW:
        rid = None
        await conn.send_raw(raw)
        # answer: re null (unreadable id) or re "n"
        ping = await conn.request("ping", id="after")
        assert ping["type"] == "ping", (raw[:80], ping)
    frames = [f for f in conn.log if f.get("re") != "after"]
    for f in frames:
        assert f["type"] in ("error", "ping"), f
        if f["type"] == "error":
            assert f["code"] in CODES - {"internal"}, f
    assert len(frames) >= len(NASTY_RAW) - 2  # each got an answer (a frame may be read as ping)


POOL = [None, True, False, 0, -1, 1.5, 2 ** 53, 2 ** 64, -(2 ** 63), "", "x" * 300, "ÿ\u2028",
        [], [None], {}, {"a": 1}, "00000000-0000-0000-0000-000000000000", "A" * 44,
        "ZZZZ", "=", "AAAA====", 1e300, "-1", "NaN"]


def _paths(obj, prefix=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield prefix + (k,)
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield prefix + (i,)
            yield from _paths(v, prefix + (i,))


def _mutate(frame, rng):
    frame = copy.deepcopy(frame)
    for _ in range(rng.randint(1, 3)):
        paths = [p for p in _paths(frame) if p[0] not in ("id",)]
        if not paths:
            break
        path = rng.choice(paths)
        parent = frame
        for step in path[:-1]:
            parent = parent[step]
        kind = rng.random()
        if kind < 0.15 and isinstance(parent, dict) and path[-1] != "type":
            del parent[path[-1]]
        elif kind < 0.25 and isinstance(parent, dict):
            parent["zz_" + str(rng.randint(0, 9))] = rng.choice(POOL)
        else:
            parent[path[-1]] = copy.deepcopy(rng.choice(POOL))
    return frame


@pytest.mark.time_limit(300)
async def test_mutated_requests_never_get_internal_or_crash(relay):
    (ca, a), (cb, b) = await users(relay.url, 2)
    ch = await create_channel(ca, a, [b])
    await rotate_key(ca, a, ch, [a, b])
    st2 = next_statement(ch.channel_id, ch.head, members=[a.user_id], signer=a)
    keys, _ = make_key_record(ch.channel_id, creator=a, previous_key_id=ch.key_id, membership_version=1,
                              recipients={a.user_id: a.spki, b.user_id: b.spki})
    cid = new_uuid()
    bases = [
        {"type": "user", "username": b.username},
        {"type": "user", "user_id": b.user_id},
        {"type": "channels"},
        {"type": "channel.create", "channel_id": cid, "name": "fuzz",
         "membership": make_statement(cid, version=1, prev="", owner_id=a.user_id,
                                      members=[a.user_id, b.user_id], signer=a)},
        {"type": "channel.members", "channel_id": ch.channel_id},
        {"type": "channel.membership", "channel_id": ch.channel_id, "after_version": 0},
        {"type": "channel.remove", "channel_id": ch.channel_id, "user_id": b.user_id, "membership": st2},
        {"type": "key", "channel_id": ch.channel_id, "key_id": ch.key_id},
        {"type": "keys", **keys},
        {"type": "message", **message_fields(ch, a, "fuzz")},
        {"type": "messages", "channel_id": ch.channel_id, "after": 0, "limit": 5},
        {"type": "subscribe", "channels": [{"channel_id": ch.channel_id, "after": 0}]},
        {"type": "unsubscribe", "channel_ids": [ch.channel_id]},
        {"type": "challenge", "challenge_id": new_uuid(), "answer": b64e(os.urandom(32))},
        {"type": "signup", "username": "fuzzer", "public_key": a.spki},
        {"type": "login", "username": a.username, "passkey": a.passkey},
        {"type": "auth", "session": a.session},
        {"type": "ping"},
    ]
    rng = random.Random(20240601)
    unauth = await connect(relay.url)
    internal = []
    for i in range(1500):
        base = rng.choice(bases)
        frame = _mutate(base, rng)
        frame["id"] = f"f{i}"
        conn = unauth if i % 5 == 0 else ca
        fut = await conn.send_frame(frame)
        reply = await asyncio.wait_for(fut, 10)
        assert reply["re"] == f"f{i}", (frame, reply)
        if reply["type"] == "error":
            assert reply["code"] in CODES, reply
            if reply["code"] == "internal":
                internal.append((frame, reply))
        else:
            assert reply["type"] == frame.get("type"), (frame, reply)
        if not conn.user and conn is ca:
            pass
    assert not internal, internal[:5]
    assert ca.close_code is None and unauth.close_code is None
    status, _, body = await asyncio.to_thread(http_get, relay.http + "/healthz")
    assert status == 200 and relay.proc.poll() is None
