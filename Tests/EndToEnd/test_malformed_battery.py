"""§9 and §10: a battery of >10,000 malformed frames, pipelined over 20 connections (10
authenticated, 10 not), each answered by exactly one error with the contract's code (never
`internal`), while a healthy client keeps getting pings answered, the relay stays up and
its memory does not grow."""
import asyncio
import json
import os
import random
import time
from collections import Counter

import pytest

from parley_client import MAX_FRAME, b64e, connect, new_user, new_uuid

U1, U2, C1 = new_uuid(), new_uuid(), new_uuid()
SIG = b64e(os.urandom(256))
STATEMENT = {"version": 1, "prev": "", "ts": 1_700_000_000, "owner_id": U1, "members": [U1],
             "signer_id": U1, "sig": SIG}
# Well-formed requests (each would get past the shape check), and which of their fields
# are required.
WELL_FORMED = {
    "user": ({"username": "someone"}, ["username"]),
    "channel.create": ({"channel_id": C1, "name": "n", "membership": STATEMENT},
                       ["channel_id", "name", "membership"]),
    "channel.members": ({"channel_id": C1}, ["channel_id"]),
    "channel.membership": ({"channel_id": C1, "after_version": 1}, ["channel_id"]),
    "key": ({"channel_id": C1}, ["channel_id"]),
    "keys": ({"channel_id": C1, "key_id": new_uuid(), "previous_key_id": None,
              "membership_version": 1, "digest": b64e(os.urandom(32)), "sig": SIG,
              "encrypted_keys": [{"user_id": U1, "encrypted_key": SIG}]},
             ["channel_id", "key_id", "membership_version", "digest", "sig", "encrypted_keys"]),
    "message": ({"channel_id": C1, "key_id": new_uuid(), "iv": b64e(os.urandom(12)),
                 "ciphertext": b64e(os.urandom(40)), "ts": 1_700_000_000,
                 "client_msg_id": new_uuid()},
                ["channel_id", "key_id", "iv", "ciphertext", "ts", "client_msg_id"]),
    "messages": ({"channel_id": C1, "after": 0, "limit": 10}, ["channel_id"]),
    "subscribe": ({"channels": [{"channel_id": C1, "after": 0}]}, ["channels"]),
    "unsubscribe": ({"channel_ids": [C1]}, ["channel_ids"]),
}
WRONG_FOR_STR = [5, True, False, [], {}, 1.5, ["x"], {"a": "b"}]
WRONG_FOR_INT = ["1", True, [], {}, 1.5, -1, 2 ** 64, [1], {"n": 1}]
WRONG_FOR_LIST = ["x", 5, True, {}, 1.5, [5], [None]]
WRONG_FOR_OBJ = ["x", 5, True, [], 1.5]
UUID_FIELDS = ("channel_id", "key_id", "client_msg_id", "user_id")


def _wrong_values(value):
    if isinstance(value, bool) or isinstance(value, str):
        return WRONG_FOR_STR
    if isinstance(value, int):
        return WRONG_FOR_INT
    if isinstance(value, list):
        return WRONG_FOR_LIST
    if isinstance(value, dict):
        return WRONG_FOR_OBJ
    return WRONG_FOR_STR


def _catalogue():
    """(kind, build(id) -> (payload, code, re_is_id)) for every malformed variant."""
    out = []

    def add(kind, fn):
        out.append((kind, fn))

    # not JSON
    for text in ("hello", "{", "}", "nul", "[1,2", "{'id':'x'}", "{\"id\":\"x\",}", "\ufeff{}",
                 "{\"id\":\"x\" /*c*/}", "", " ", "\u0000", "NaN", "{\"id\":\"x\",\"type\":\"ping\"}{}"):
        add("not_json", lambda rid, t=text: (t, "bad_request", False))
    # truncated JSON of each well-formed request
    for type_, (fields, _) in WELL_FORMED.items():
        add("truncated", lambda rid, t=type_, f=fields: (
            json.dumps({"id": rid, "type": t, **f})[: random.randint(1, len(json.dumps({"id": rid, "type": t, **f})) - 1)],
            "bad_request", False))
    # wrong types for each field (shape errors come before `unauthenticated`)
    for type_, (fields, _) in WELL_FORMED.items():
        for name, value in fields.items():
            if value is None:
                continue
            for wrong in _wrong_values(value):
                add("wrong_type", lambda rid, t=type_, f=fields, n=name, w=wrong: (
                    json.dumps({"id": rid, "type": t, **{**f, n: w}}), "bad_request", True))
    # wrong types for `type` (id usable) and for `id` (unusable: re null)
    for wrong in (5, True, None, [], {}, 1.5):
        add("wrong_type", lambda rid, w=wrong: (json.dumps({"id": rid, "type": w}), "bad_request", True))
    for wrong in (5, True, None, [], {}, 1.5, "", "x" * 65):
        add("bad_id", lambda rid, w=wrong: (json.dumps({"id": w, "type": "ping"}), "bad_request", False))
    # missing fields
    for type_, (fields, required) in WELL_FORMED.items():
        for name in required:
            add("missing", lambda rid, t=type_, f=fields, n=name: (
                json.dumps({"id": rid, "type": t, **{k: v for k, v in f.items() if k != n}}),
                "bad_request", True))
    add("missing", lambda rid: (json.dumps({"id": rid}), "bad_request", True))
    add("missing", lambda rid: (json.dumps({"type": "ping"}), "bad_request", False))
    # extra fields, with an unknown type (unknown_type) or with a shape error (bad_request)
    add("extra", lambda rid: (json.dumps({"id": rid, "type": "frobnicate", "zz": [1, {"a": None}],
                                          "more": "x"}), "unknown_type", True))
    add("extra", lambda rid: (json.dumps({"id": rid, "type": "messages", "channel_id": "general",
                                          "zz": {"q": [1]}}), "bad_request", True))
    # well-formed requests with extra fields: `unauthenticated` before authentication; on an
    # authenticated connection the same frame with an unknown type (`unknown_type`)
    for type_ in ("channels", "channel.members", "messages", "logout"):
        fields = WELL_FORMED.get(type_, ({}, []))[0]
        add("gate", lambda rid, authed, t=type_, f=fields: (
            json.dumps({"id": rid, "type": t + ".x" if authed else t, **f, "zz_extra": {"k": [1, 2]}}),
            "unknown_type" if authed else "unauthenticated", True))
    # deep nesting (> 64 levels is "not JSON")
    add("deep", lambda rid: ("[" * 10_000, "bad_request", False))
    add("deep", lambda rid: ("[" * 10_000 + "]" * 10_000, "bad_request", False))
    add("deep", lambda rid: (json.dumps({"id": rid, "type": "ping"})[:-1] + ",\"a\":" + "[" * 100
                             + "]" * 100 + "}", "bad_request", False))
    add("deep", lambda rid: ("{\"a\":" * 5_000 + "1" + "}" * 5_000, "bad_request", False))
    # huge numbers
    for number in ("1e400", str(2 ** 64), "-1e400", "1" * 400):
        add("huge_number", lambda rid, n=number: (
            "{\"id\":" + json.dumps(rid) + ",\"type\":\"messages\",\"channel_id\":\"" + C1
            + "\",\"limit\":" + n + "}", "bad_request", True))
    # huge strings (200 KiB)
    add("huge_string", lambda rid: (json.dumps({"id": rid, "type": "messages", "channel_id": "a" * 204_800}),
                                    "bad_request", True))
    add("huge_string", lambda rid: (json.dumps({"id": rid, "type": "t" * 204_800}), "unknown_type", True))
    # invalid base64
    for field in ("iv", "ciphertext"):
        for bad in ("not base64!", "****", "AAA", "A===", "AAAA=AAA", "\u00ff\u00fe"):
            add("bad_base64", lambda rid, f=field, b=bad: (
                json.dumps({"id": rid, "type": "message", **{**WELL_FORMED["message"][0], f: b}}),
                "bad_request", True))
    for bad in ("%%%", "AAA", "=AAA"):
        add("bad_base64", lambda rid, b=bad: (
            json.dumps({"id": rid, "type": "keys", **{**WELL_FORMED["keys"][0], "digest": b}}),
            "bad_request", True))
    # invalid UTF-8 inside a text frame (sent as raw bytes with text=True)
    for bad in (b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xc0\xaf"):
        add("bad_utf8", lambda rid, b=bad: (
            (b"{\"id\":" + json.dumps(rid).encode() + b",\"type\":\"ping\",\"x\":\"" + b + b"\"}", "text"),
            "bad_request", False))
    # uppercase / invalid UUIDs
    for field in UUID_FIELDS[:3]:
        for bad in (C1.upper(), C1[:-1], C1 + "0", C1.replace("-", ""), "{" + C1 + "}", "general",
                    "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz"):
            add("bad_uuid", lambda rid, f=field, b=bad: (
                json.dumps({"id": rid, "type": "message", **{**WELL_FORMED["message"][0], f: b}}),
                "bad_request", True))
    # binary frames
    add("binary", lambda rid: (json.dumps({"id": rid, "type": "ping"}).encode(), "bad_request", False))
    add("binary", lambda rid: (os.urandom(64), "bad_request", False))
    return out


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def _send(conn, payload):
    if isinstance(payload, tuple):  # (bytes, "text"): invalid UTF-8 in a text frame
        await conn.ws.send(payload[0], text=True)
    else:
        await conn.ws.send(payload)


@pytest.mark.time_limit(120)
async def test_malformed_battery(own_relay):
    relay = own_relay().start()
    pid = relay.proc.pid
    authed = [await new_user(relay.url) for _ in range(10)]
    conns = [c for c, _ in authed] + [await connect(relay.url) for _ in range(10)]
    healthy = await connect(relay.url)
    await healthy.ok("ping")
    await asyncio.sleep(1)
    rss_before = _rss_kib(pid)

    catalogue = _catalogue()
    rng = random.Random(4242)
    random.seed(4242)
    total = 10_400
    # every variant at least once per connection type, then random ones; huge strings sparse
    plan = [v for v in catalogue] * 2
    light = [v for v in catalogue if v[0] != "huge_string"]
    plan += [v for v in catalogue if v[0] == "huge_string"] * 20
    plan += [rng.choice(light) for _ in range(total - len(plan))]
    rng.shuffle(plan)

    expected = [dict(ids={}, nulls=0) for _ in conns]   # per connection: id -> code; count of re null
    kinds = Counter()
    latencies = []
    stop = asyncio.Event()

    async def pinger():
        n = 0
        while not stop.is_set():
            n += 1
            start = time.monotonic()
            reply = await healthy.request("ping", timeout=5, id=f"h{n}")
            latencies.append(time.monotonic() - start)
            assert reply["type"] == "ping", reply
            await asyncio.sleep(0.05)

    ping_task = asyncio.create_task(pinger())

    async def run(index):
        conn = conns[index]
        exp = expected[index]
        mine = plan[index::len(conns)]
        for n, (kind, build) in enumerate(mine):
            rid = f"m{index}-{n}"
            payload, code, re_is_id = build(rid, index < 10) if kind == "gate" else build(rid)
            if re_is_id:
                exp["ids"][rid] = code
            else:
                exp["nulls"] += 1
            kinds[kind] += 1
            await _send(conn, payload)
        await conn.ok("ping")

    await asyncio.wait_for(asyncio.gather(*(run(i) for i in range(len(conns)))), 90)

    # oversized frames, each on a fresh connection: close 1009
    oversized_codes = []
    for i in range(4):
        conn = await connect(relay.url)
        body = json.dumps({"id": f"big{i}", "type": "ping", "pad": "a" * (MAX_FRAME + 1 + i * 1000)})
        await conn.send_raw(body)
        oversized_codes.append(await conn.wait_closed(10))
    await asyncio.sleep(0.5)
    stop.set()
    await ping_task

    codes = Counter()
    problems = []
    for index, conn in enumerate(conns):
        exp = expected[index]
        assert conn.close_code is None, (index, conn.close_code, conn.close_reason)
        errors = [f for f in conn.log if f.get("type") == "error"]
        seen = Counter(f.get("re") for f in errors)
        for frame in errors:
            codes[frame.get("code")] += 1
            rid = frame.get("re")
            if rid is None:
                if frame.get("code") != "bad_request":
                    problems.append(("null re with code", frame))
            elif rid not in exp["ids"]:
                problems.append(("unexpected reply", frame))
            elif frame.get("code") != exp["ids"][rid]:
                problems.append(("wrong code", frame, exp["ids"][rid]))
        missing = [rid for rid in exp["ids"] if seen[rid] == 0]
        doubled = [rid for rid in exp["ids"] if seen[rid] > 1]
        if missing or doubled:
            problems.append(("missing/doubled", index, missing[:5], doubled[:5]))
        if seen[None] != exp["nulls"]:
            problems.append(("null count", index, seen[None], exp["nulls"]))
    await asyncio.sleep(2)
    assert relay.proc.poll() is None, "relay died"
    rss_after = _rss_kib(pid)
    sent = sum(kinds.values())
    print(f"\nframes sent: {sent} (+{len(oversized_codes)} oversized), by kind: {dict(kinds)}")
    print(f"errors by code: {dict(codes)}")
    print(f"oversized close codes: {oversized_codes}")
    print(f"healthy pings: {len(latencies)}, max latency {max(latencies):.3f}s")
    print(f"RSS before: {rss_before} KiB, after: {rss_after} KiB, delta {(rss_after - rss_before) / 1024:.1f} MiB")
    assert not problems, problems[:10]
    assert sent >= 10_000
    assert "internal" not in codes
    assert oversized_codes == [1009] * len(oversized_codes)
    assert max(latencies) < 1.0, max(latencies)
    assert rss_after - rss_before <= 64 * 1024, (rss_before, rss_after)
