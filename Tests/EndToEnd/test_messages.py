"""§7 and §10 Messages: send, fan-out, idempotency, checks, history and the join cut."""
import asyncio
import json
import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from parley_client import (
    add_member, b64d, b64e, connect_as, create_channel, decrypt_message, encrypt_message, events_of,
    message_fields, new_uuid, now_ms, now_s, remove_member, rotate_key, send_many, send_message,
    strip_re, unwrap_key, users,
)

MESSAGE_FIELDS = {"channel_id", "seq", "sender_id", "key_id", "iv", "ciphertext", "ts", "received_at"}


async def _room(url, n=2):
    pairs = await users(url, n)
    (ca, a) = pairs[0]
    ch = await create_channel(ca, a, [u for _, u in pairs[1:]])
    await rotate_key(ca, a, ch, [u for _, u in pairs])
    return pairs, ch


async def test_send_numbers_seq_and_reaches_every_subscribed_connection(relay):
    ((ca, a), (cb, b), (cc, c)), ch = await _room(relay.url, 3)
    cb2 = await connect_as(relay.url, b)
    for conn in (ca, cb, cb2):
        await conn.ok("subscribe", channels=[{"channel_id": ch.channel_id}])
    sent = []
    for i in range(3):
        ts = now_s()
        before = now_ms()
        fields = message_fields(ch, a, f"hello {i} ✓", ts=ts)
        reply = await ca.ok("message", **fields)
        assert set(reply) == {"re", "type", "channel_id", "seq", "received_at", "duplicate"}
        assert reply["channel_id"] == ch.channel_id and reply["seq"] == i + 1
        assert reply["duplicate"] is False
        assert before - 5000 <= reply["received_at"] <= now_ms() + 5000
        sent.append((fields, reply))
    for conn, user in ((ca, a), (cb, b), (cb2, b)):
        for i, (fields, reply) in enumerate(sent):
            ev = await conn.next_event("event.message")
            assert set(ev) == MESSAGE_FIELDS | {"type"}
            assert ev == {"type": "event.message", "channel_id": ch.channel_id, "seq": i + 1,
                          "sender_id": a.user_id, "key_id": ch.key_id, "iv": fields["iv"],
                          "ciphertext": fields["ciphertext"], "ts": fields["ts"],
                          "received_at": reply["received_at"]}
            key = unwrap_key(user.identity, (await conn.ok("key", channel_id=ch.channel_id, key_id=ev["key_id"]))["key"], a.spki)
            assert decrypt_message(key, ev, a.spki) == f"hello {i} ✓"
    # c is a member but not subscribed: no events; history has it all
    assert not events_of(await cc.events_for(0.5), "event.message")
    history = await cc.ok("messages", channel_id=ch.channel_id)
    assert [m["seq"] for m in history["messages"]] == [1, 2, 3] and history["has_more"] is False
    for m, (fields, reply) in zip(history["messages"], sent):
        assert set(m) == MESSAGE_FIELDS
        assert m["iv"] == fields["iv"] and m["received_at"] == reply["received_at"]
    listed = [x for x in (await cc.ok("channels"))["channels"] if x["channel_id"] == ch.channel_id]
    assert listed[0]["last_seq"] == 3


async def test_replies_from_other_members_verify(relay):
    ((ca, a), (cb, b)), ch = await _room(relay.url, 2)
    await ca.ok("subscribe", channels=[{"channel_id": ch.channel_id}])
    await send_message(cb, ch, b, "from b")
    ev = await ca.next_event("event.message")
    assert ev["sender_id"] == b.user_id
    assert decrypt_message(ch.key, ev, b.spki) == "from b"
    with pytest.raises(Exception):
        decrypt_message(ch.key, ev, a.spki)  # not a's signature


async def test_plaintext_may_carry_extra_fields(relay):
    ((ca, a),), ch = await _room(relay.url, 1)
    ts = now_s()
    iv, ct = encrypt_message(ch.key, channel_id=ch.channel_id, body="x", ts=ts, signer=a,
                             extra={"reply_to": 1, "format": "plain"})
    await ca.ok("message", channel_id=ch.channel_id, key_id=ch.key_id, iv=iv, ciphertext=ct, ts=ts,
                client_msg_id=new_uuid())
    m = (await ca.ok("messages", channel_id=ch.channel_id))["messages"][0]
    assert decrypt_message(ch.key, m, a.spki) == "x"


async def test_idempotent_retry(relay):
    ((ca, a), (cb, b)), ch = await _room(relay.url, 2)
    await cb.ok("subscribe", channels=[{"channel_id": ch.channel_id}])
    fields = message_fields(ch, a, "once")
    first = await ca.ok("message", **fields)
    assert first["duplicate"] is False
    again = await ca.ok("message", **fields)
    assert again["duplicate"] is True
    assert strip_re({**again, "duplicate": False}) == strip_re(first)
    # whatever the retry's content: a new iv, ts out of the window, another key id
    other = message_fields(ch, a, "other body", ts=now_s() - 1000, client_msg_id=fields["client_msg_id"],
                           key_id=new_uuid())
    third = await ca.ok("message", **other)
    assert third["seq"] == first["seq"] and third["received_at"] == first["received_at"]
    assert third["duplicate"] is True
    # stored once, delivered once
    assert [m["seq"] for m in (await ca.ok("messages", channel_id=ch.channel_id))["messages"]] == [first["seq"]]
    got = events_of(await cb.events_for(1.0), "event.message")
    assert [e["seq"] for e in got] == [first["seq"]]
    # a retry after the key has expired still returns the first result
    (_, c), = await users(relay.url, 1)
    await add_member(ca, a, ch, c)
    late = await ca.ok("message", **fields)
    assert late["seq"] == first["seq"] and late["duplicate"] is True
    # the same client_msg_id from another sender is another message
    await rotate_key(cb, b, ch, [a, b, c])
    theirs = await cb.ok("message", **message_fields(ch, b, "b's", client_msg_id=fields["client_msg_id"]))
    assert theirs["duplicate"] is False and theirs["seq"] == first["seq"] + 1


async def test_client_msg_id_reuse_on_another_channel(relay):
    ((ca, a),), ch1 = await _room(relay.url, 1)
    ch2 = await create_channel(ca, a)
    await rotate_key(ca, a, ch2, [a])
    fields = message_fields(ch1, a, "one")
    await ca.ok("message", **fields)
    await ca.error("message", "bad_request", **message_fields(ch2, a, "two", client_msg_id=fields["client_msg_id"]))
    assert (await ca.ok("messages", channel_id=ch2.channel_id))["messages"] == []


async def test_key_expired_on_a_keyless_channel(relay):
    (ca, a), = await users(relay.url, 1)
    ch = await create_channel(ca, a)
    reply = await ca.request("message", channel_id=ch.channel_id, key_id=new_uuid(), iv=b64e(os.urandom(12)),
                             ciphertext=b64e(os.urandom(48)), ts=now_s(), client_msg_id=new_uuid())
    assert reply["type"] == "error" and reply["code"] == "key_expired"
    assert "current_key_id" in reply and reply["current_key_id"] is None, reply


async def test_key_expired_with_an_old_or_unknown_key(relay):
    ((ca, a),), ch = await _room(relay.url, 1)
    old_id, old_key = ch.key_id, ch.key
    await rotate_key(ca, a, ch, [a])
    for key_id in (old_id, new_uuid()):
        reply = await ca.error("message", "key_expired", **message_fields(ch, a, "x", key_id=key_id))
        assert reply["current_key_id"] == ch.key_id


async def test_bad_timestamp(relay):
    ((ca, a),), ch = await _room(relay.url, 1)
    for delta in (-400, 400, -100_000):
        await ca.error("message", "bad_timestamp", **message_fields(ch, a, "t", ts=now_s() + delta))
    for delta in (-280, 280):
        await ca.ok("message", **message_fields(ch, a, "t", ts=now_s() + delta))


async def test_repeated_iv(relay):
    ((ca, a),), ch = await _room(relay.url, 1)
    iv = os.urandom(12)
    await ca.ok("message", **message_fields(ch, a, "first", iv=iv))
    await ca.error("message", "bad_request", **message_fields(ch, a, "second", iv=iv))
    # the same iv under another key is fine
    await rotate_key(ca, a, ch, [a])
    await ca.ok("message", **message_fields(ch, a, "third", iv=iv))


async def test_iv_and_ciphertext_sizes(relay):
    ((ca, a),), ch = await _room(relay.url, 1)

    def raw(iv: bytes, ciphertext: bytes) -> dict:
        return {"channel_id": ch.channel_id, "key_id": ch.key_id, "iv": b64e(iv),
                "ciphertext": b64e(ciphertext), "ts": now_s(), "client_msg_id": new_uuid()}

    # 65,536 bytes: a real AES-GCM ciphertext of that length
    ts = now_s()
    iv = os.urandom(12)
    body = "b" * (65_536 - 16 - len(json.dumps({"body": "", "sig": b64e(os.urandom(256))})))
    iv_b64, ct_b64 = encrypt_message(ch.key, channel_id=ch.channel_id, body=body, ts=ts, signer=a, iv=iv)
    assert len(b64d(ct_b64)) == 65_536
    big = await ca.ok("message", channel_id=ch.channel_id, key_id=ch.key_id, iv=iv_b64, ciphertext=ct_b64,
                      ts=ts, client_msg_id=new_uuid())
    m = (await ca.ok("messages", channel_id=ch.channel_id, after=big["seq"] - 1, limit=1))["messages"][0]
    assert decrypt_message(ch.key, m, a.spki) == body
    await ca.error("message", "too_large", **raw(os.urandom(12), os.urandom(65_537)))
    await ca.ok("message", **raw(os.urandom(12), os.urandom(16)))
    await ca.error("message", "bad_request", **raw(os.urandom(12), os.urandom(15)))
    await ca.error("message", "bad_request", **raw(os.urandom(12), b""))
    await ca.error("message", "bad_request", **raw(os.urandom(16), os.urandom(32)))
    await ca.error("message", "bad_request", **raw(os.urandom(11), os.urandom(32)))


async def test_history_paging(relay):
    ((ca, a),), ch = await _room(relay.url, 1)
    for i in range(7):
        await send_message(ca, ch, a, f"m{i}")

    async def page(**kw):
        reply = await ca.ok("messages", channel_id=ch.channel_id, **kw)
        return [m["seq"] for m in reply["messages"]], reply["has_more"]

    assert await page() == ([1, 2, 3, 4, 5, 6, 7], False)
    assert await page(limit=3) == ([5, 6, 7], True)
    assert await page(before=5, limit=3) == ([2, 3, 4], True)
    assert await page(before=2, limit=3) == ([1], False)
    assert await page(before=1) == ([], False)
    assert await page(after=0, limit=3) == ([1, 2, 3], True)
    assert await page(after=3, limit=3) == ([4, 5, 6], True)
    assert await page(after=4, limit=3) == ([5, 6, 7], False)
    assert await page(after=6) == ([7], False)
    assert await page(after=7) == ([], False)
    assert await page(after=0, limit=200) == ([1, 2, 3, 4, 5, 6, 7], False)
    assert await page(limit=1) == ([7], True)
    for limit in (0, 201, -1):
        await ca.error("messages", "bad_request", channel_id=ch.channel_id, limit=limit)


async def test_default_limit_is_50(relay):
    ((ca, a),), ch = await _room(relay.url, 1)
    await send_many(ca, ch, a, 55)
    reply = await ca.ok("messages", channel_id=ch.channel_id)
    assert [m["seq"] for m in reply["messages"]] == list(range(6, 56)) and reply["has_more"] is True
    reply = await ca.ok("messages", channel_id=ch.channel_id, after=0)
    assert [m["seq"] for m in reply["messages"]] == list(range(1, 51)) and reply["has_more"] is True


async def test_join_cut(relay):
    ((ca, a), (cb, b)), ch = await _room(relay.url, 2)
    (cc, c), = await users(relay.url, 1)
    for i in range(3):
        await send_message(ca, ch, a, f"before {i}")
    await add_member(ca, a, ch, c)
    # nothing to read yet; subscribe with after=0 says synced at the cut
    first = await cc.ok("messages", channel_id=ch.channel_id)
    assert first["messages"] == [] and first["has_more"] is False
    sub = await cc.ok("subscribe", channels=[{"channel_id": ch.channel_id, "after": 0}])
    assert sub["channels"] == [{"channel_id": ch.channel_id, "last_seq": 3, "recovered": True}]
    synced = await cc.next_event("event.synced")
    assert synced == {"type": "event.synced", "channel_id": ch.channel_id, "seq": 3}
    await rotate_key(ca, a, ch, [a, b, c])
    await send_message(ca, ch, a, "after 1")
    await send_message(cb, ch, b, "after 2")
    live = [await cc.next_event("event.message") for _ in range(2)]
    assert [e["seq"] for e in live] == [4, 5]
    history = await cc.ok("messages", channel_id=ch.channel_id)
    assert [m["seq"] for m in history["messages"]] == [4, 5] and history["has_more"] is False
    assert [m["seq"] for m in (await cc.ok("messages", channel_id=ch.channel_id, after=0))["messages"]] == [4, 5]
    assert [m["seq"] for m in (await cc.ok("messages", channel_id=ch.channel_id, before=5))["messages"]] == [4]
    older = await cc.ok("messages", channel_id=ch.channel_id, before=4)
    assert older["messages"] == [] and older["has_more"] is False
    # replay from after=0 starts at the cut
    c2 = await connect_as(relay.url, c)
    await c2.ok("subscribe", channels=[{"channel_id": ch.channel_id, "after": 0}])
    replay = [await c2.next_event("event.message") for _ in range(2)]
    assert [e["seq"] for e in replay] == [4, 5]
    assert await c2.next_event("event.synced") == {"type": "event.synced", "channel_id": ch.channel_id, "seq": 5}
    # a subscribe `after` below the cut with messages: only those past the cut
    c3 = await connect_as(relay.url, c)
    await c3.ok("subscribe", channels=[{"channel_id": ch.channel_id, "after": 2}])
    assert [(await c3.next_event("event.message"))["seq"] for _ in range(2)] == [4, 5]
    assert (await c3.next_event("event.synced"))["seq"] == 5
    # the old members still see everything
    assert [m["seq"] for m in (await cb.ok("messages", channel_id=ch.channel_id))["messages"]] == [1, 2, 3, 4, 5]


async def test_rejoin_sees_history_from_the_new_join(relay):
    ((ca, a), (cb, b)), ch = await _room(relay.url, 2)
    await send_message(ca, ch, a, "1")
    await remove_member(ca, a, ch, b)
    await rotate_key(ca, a, ch, [a])
    await send_message(ca, ch, a, "2 (b away)")
    await cb.error("messages", "not_member", channel_id=ch.channel_id)
    await add_member(ca, a, ch, b)
    await rotate_key(ca, a, ch, [a, b])
    await send_message(ca, ch, a, "3")
    assert [m["seq"] for m in (await cb.ok("messages", channel_id=ch.channel_id))["messages"]] == [3]


@pytest.mark.time_limit(120)
async def test_history_page_stops_before_1_mib(relay):
    ((ca, a),), ch = await _room(relay.url, 1)
    total = 20   # 20 x ~87 KB of base64 ciphertext: more than 1 MiB in one page
    for i in range(total):
        await ca.ok("message", channel_id=ch.channel_id, key_id=ch.key_id, iv=b64e(os.urandom(12)),
                    ciphertext=b64e(os.urandom(65_536)), ts=now_s(), client_msg_id=new_uuid())
    seen, after, pages = [], 0, 0
    while True:
        reply = await ca.ok("messages", id=f"page-{pages}", channel_id=ch.channel_id, after=after, limit=200)
        assert ca.sizes[f"page-{pages}"] <= 1_048_576, ca.sizes[f"page-{pages}"]
        pages += 1
        seqs = [m["seq"] for m in reply["messages"]]
        assert seqs, reply["has_more"]
        seen += seqs
        after = seqs[-1]
        if not reply["has_more"]:
            break
    assert seen == list(range(1, total + 1)) and pages >= 2
    # backwards too: the newest page below the end, ascending, has_more true
    reply = await ca.ok("messages", id="back", channel_id=ch.channel_id, limit=200)
    assert ca.sizes["back"] <= 1_048_576
    seqs = [m["seq"] for m in reply["messages"]]
    assert reply["has_more"] is True and seqs == list(range(total - len(seqs) + 1, total + 1))


@pytest.mark.time_limit(120)
async def test_concurrent_senders_get_gap_free_seqs(relay):
    pairs, ch = await _room(relay.url, 4)
    results = await asyncio.gather(*(send_many(conn, ch, user, 50, window=8) for conn, user in pairs))
    seqs = sorted(r["seq"] for rs in results for r in rs)
    assert seqs == list(range(1, 201))
    history = await pairs[0][0].ok("messages", channel_id=ch.channel_id, after=0, limit=200)
    assert [m["seq"] for m in history["messages"]] == list(range(1, 201))
