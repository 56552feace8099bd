"""§6 and §10 Keys: key records, rotation, conflicts, expiry."""
import asyncio
import os

import pytest

from parley_client import (
    Identity, add_member, b64d, b64e, connect, connect_as, create_channel, events_of, key_digest,
    key_text, make_key_record, message_fields, new_user, new_uuid, now_ms, now_s, oaep_encrypt,
    rotate_key, send_message, signup, strip_re, unwrap_key, users,
)

RECORD_FIELDS = {"key_id", "channel_id", "creator_id", "previous_key_id", "membership_version",
                 "digest", "sig", "created_at", "expires_at", "encrypted_key"}


async def test_no_key_yet(relay):
    (ca, a), = await users(relay.url, 1)
    ch = await create_channel(ca, a)
    reply = await ca.ok("key", channel_id=ch.channel_id)
    assert strip_re(reply) == {"type": "key", "key": None, "rotation_required": True}
    await ca.error("key", "not_found", channel_id=ch.channel_id, key_id=new_uuid())


async def test_keys_happy_path_and_events(relay):
    (ca, a), (cb, b), (cc, c) = await users(relay.url, 3)
    ca2 = await connect_as(relay.url, a)
    cb_idle = await connect_as(relay.url, b)
    ch = await create_channel(ca, a, [b, c])
    for conn in (ca, ca2, cb):
        await conn.ok("subscribe", channels=[{"channel_id": ch.channel_id}])
    fields, key = make_key_record(ch.channel_id, creator=a, previous_key_id=None, membership_version=1,
                                  recipients={u.user_id: u.spki for u in (a, b, c)})
    before = now_ms()
    reply = await ca.ok("keys", **fields)
    assert set(reply) == {"re", "type", "key_id", "created_at", "expires_at"}
    assert reply["key_id"] == fields["key_id"]
    assert before - 5000 <= reply["created_at"] <= now_ms() + 5000
    assert reply["expires_at"] - reply["created_at"] == 3600 * 1000  # default TTL, in ms

    wrapped = {e["user_id"]: e["encrypted_key"] for e in fields["encrypted_keys"]}
    common = {"type": "event.key", "key_id": fields["key_id"], "channel_id": ch.channel_id,
              "creator_id": a.user_id, "previous_key_id": None, "membership_version": 1,
              "digest": fields["digest"], "sig": fields["sig"], "created_at": reply["created_at"],
              "expires_at": reply["expires_at"]}
    # every subscribed member, the creator's own connections too, each with its own copy
    for conn, user in ((ca, a), (ca2, a), (cb, b)):
        ev = await conn.next_event("event.key")
        assert set(ev) == RECORD_FIELDS | {"type"}
        assert {k: v for k, v in ev.items() if k != "encrypted_key"} == common
        assert ev["encrypted_key"] == wrapped[user.user_id]
        assert unwrap_key(user.identity, ev, a.spki) == key
    # not subscribed: no event.key
    assert not events_of(await cc.events_for(0.5), "event.key")
    assert not events_of(await cb_idle.events_for(0.1), "event.key")
    # each subscribed connection got it once
    for conn in (ca, ca2, cb):
        assert not events_of(await conn.events_for(0.1), "event.key")

    # key: the requester's own copy
    got = await cc.ok("key", channel_id=ch.channel_id)
    assert got["rotation_required"] is False
    assert set(got["key"]) == RECORD_FIELDS
    assert {k: v for k, v in got["key"].items() if k != "encrypted_key"} == \
        {k: v for k, v in common.items() if k != "type"}
    assert got["key"]["encrypted_key"] == wrapped[c.user_id]
    assert unwrap_key(c.identity, got["key"], a.spki) == key
    assert (await cc.ok("key", channel_id=ch.channel_id, key_id=None))["key"] == got["key"]
    by_id = await cb.ok("key", channel_id=ch.channel_id, key_id=fields["key_id"])
    assert by_id["key"]["encrypted_key"] == wrapped[b.user_id]
    assert by_id["key"]["key_id"] == fields["key_id"]
    await cb.error("key", "not_found", channel_id=ch.channel_id, key_id=new_uuid())
    listed = [x for x in (await cb.ok("channels"))["channels"] if x["channel_id"] == ch.channel_id]
    assert listed[0]["key_id"] == fields["key_id"]

    # an early rotation by another member; the older key stays fetchable by id
    ch.key_id, ch.key = fields["key_id"], key
    old = ch.key_id
    await rotate_key(cb, b, ch, [a, b, c])
    for conn in (ca, ca2, cb):
        ev = await conn.next_event("event.key")
        assert ev["key_id"] == ch.key_id and ev["previous_key_id"] == old and ev["creator_id"] == b.user_id
    newest = await ca.ok("key", channel_id=ch.channel_id)
    assert newest["key"]["key_id"] == ch.key_id and newest["rotation_required"] is False
    older = await ca.ok("key", channel_id=ch.channel_id, key_id=old)
    assert older["key"]["key_id"] == old and unwrap_key(a.identity, older["key"], a.spki) == key
    # rotation_required always describes the newest key
    assert older["rotation_required"] is False


async def test_key_conflict(relay):
    (ca, a), (cb, b) = await users(relay.url, 2)
    ch = await create_channel(ca, a, [b])
    await rotate_key(ca, a, ch, [a, b])
    for previous in (None, new_uuid()):
        fields, _ = make_key_record(ch.channel_id, creator=b, previous_key_id=previous, membership_version=1,
                                    recipients={a.user_id: a.spki, b.user_id: b.spki})
        reply = await cb.error("keys", "key_conflict", **fields)
        assert reply["current_key_id"] == ch.key_id
    # previous_key_id missing is the same as null
    fields, _ = make_key_record(ch.channel_id, creator=b, previous_key_id=None, membership_version=1,
                                recipients={a.user_id: a.spki, b.user_id: b.spki})
    del fields["previous_key_id"]
    reply = await cb.error("keys", "key_conflict", **fields)
    assert reply["current_key_id"] == ch.key_id


async def test_key_conflict_on_a_keyless_channel(relay):
    (ca, a), = await users(relay.url, 1)
    ch = await create_channel(ca, a)
    fields, _ = make_key_record(ch.channel_id, creator=a, previous_key_id=new_uuid(), membership_version=1,
                                recipients={a.user_id: a.spki})
    reply = await ca.error("keys", "key_conflict", **fields)
    assert "current_key_id" in reply and reply["current_key_id"] is None


async def test_concurrent_rotations_exactly_one_wins(relay):
    (ca, a), (cb, b) = await users(relay.url, 2)
    ch = await create_channel(ca, a, [b])
    await rotate_key(ca, a, ch, [a, b])
    recipients = {a.user_id: a.spki, b.user_id: b.spki}
    for _ in range(5):
        fa, ka = make_key_record(ch.channel_id, creator=a, previous_key_id=ch.key_id, membership_version=1,
                                 recipients=recipients)
        fb, kb = make_key_record(ch.channel_id, creator=b, previous_key_id=ch.key_id, membership_version=1,
                                 recipients=recipients)
        ra, rb = await asyncio.gather(ca.request("keys", **fa), cb.request("keys", **fb))
        outcomes = sorted([ra["type"], rb["type"]])
        assert outcomes == ["error", "keys"], (ra, rb)
        winner, winner_key, loser = (fa, ka, rb) if ra["type"] == "keys" else (fb, kb, ra)
        assert loser["code"] == "key_conflict" and loser["current_key_id"] == winner["key_id"]
        newest = await ca.ok("key", channel_id=ch.channel_id)
        assert newest["key"]["key_id"] == winner["key_id"]
        assert unwrap_key(a.identity, newest["key"], b.spki if winner is fb else a.spki) == winner_key
        ch.key_id, ch.key = winner["key_id"], winner_key


async def test_members_mismatch(relay):
    (ca, a), (cb, b), (cc, c), (cx, x) = await users(relay.url, 4)
    ch = await create_channel(ca, a, [b, c])
    expected = sorted([a.user_id, b.user_id, c.user_id])
    cases = [
        ({a.user_id: a.spki, b.user_id: b.spki}, 1),                                     # one missing
        ({a.user_id: a.spki, b.user_id: b.spki, c.user_id: c.spki, x.user_id: x.spki}, 1),  # a non-member
        ({a.user_id: a.spki, b.user_id: b.spki, x.user_id: x.spki}, 1),                  # swapped
        ({a.user_id: a.spki, b.user_id: b.spki, c.user_id: c.spki}, 2),                  # a version that isn't current
    ]
    for recipients, version in cases:
        fields, _ = make_key_record(ch.channel_id, creator=a, previous_key_id=None,
                                    membership_version=version, recipients=recipients)
        reply = await ca.error("keys", "members_mismatch", **fields)
        assert sorted(reply["members"]) == expected and reply["membership_version"] == 1, reply
    # a member named twice
    fields, _ = make_key_record(ch.channel_id, creator=a, previous_key_id=None, membership_version=1,
                                recipients={a.user_id: a.spki, b.user_id: b.spki, c.user_id: c.spki})
    fields["encrypted_keys"].append(dict(fields["encrypted_keys"][1]))
    reply = await ca.error("keys", "members_mismatch", **fields)
    assert sorted(reply["members"]) == expected and reply["membership_version"] == 1
    # after a change, a record for the old version is refused with the new list
    await add_member(ca, a, ch, x)
    fields, _ = make_key_record(ch.channel_id, creator=a, previous_key_id=None, membership_version=1,
                                recipients={a.user_id: a.spki, b.user_id: b.spki, c.user_id: c.spki})
    reply = await ca.error("keys", "members_mismatch", **fields)
    assert sorted(reply["members"]) == sorted(expected + [x.user_id]) and reply["membership_version"] == 2
    assert (await ca.ok("key", channel_id=ch.channel_id))["key"] is None


async def test_key_record_checks(relay):
    (ca, a), (cb, b) = await users(relay.url, 2)
    ch = await create_channel(ca, a, [b])
    recipients = {a.user_id: a.spki, b.user_id: b.spki}

    def record(**changes):
        fields, _ = make_key_record(ch.channel_id, creator=a, previous_key_id=None, membership_version=1,
                                    recipients=recipients)
        fields.update(changes)
        return fields

    # a signature by someone else
    fields = record()
    fields["sig"] = b.identity.sign(key_text(ch.channel_id, fields["key_id"], None, 1, fields["digest"]))
    await ca.error("keys", "bad_request", **fields)
    # a signature over another digest
    fields = record()
    fields["digest"] = key_digest(os.urandom(32))
    await ca.error("keys", "bad_request", **fields)
    # a signature over another key id
    fields = record()
    fields["key_id"] = new_uuid()
    await ca.error("keys", "bad_request", **fields)
    # a wrapped key of the wrong length
    fields = record()
    fields["encrypted_keys"][0]["encrypted_key"] = b64e(os.urandom(128))
    await ca.error("keys", "bad_request", **fields)
    fields = record()
    fields["encrypted_keys"][1]["encrypted_key"] = b64e(os.urandom(257))
    await ca.error("keys", "bad_request", **fields)
    # nothing was stored
    assert (await ca.ok("key", channel_id=ch.channel_id))["key"] is None
    await rotate_key(ca, a, ch, [a, b])


async def test_wrapped_key_length_follows_each_members_modulus(relay):
    (ca, a), = await users(relay.url, 1)
    cb = await connect(relay.url)
    b = await signup(cb, identity=Identity(bits=3072))
    ch = await create_channel(ca, a, [b])
    fields, key = make_key_record(ch.channel_id, creator=a, previous_key_id=None, membership_version=1,
                                  recipients={a.user_id: a.spki, b.user_id: b.spki})
    assert len(b64d(fields["encrypted_keys"][1]["encrypted_key"])) == 384
    bad = {**fields, "encrypted_keys": [dict(e) for e in fields["encrypted_keys"]]}
    bad["encrypted_keys"][1]["encrypted_key"] = b64e(os.urandom(256))
    await ca.error("keys", "bad_request", **bad)
    await ca.ok("keys", **fields)
    got = await cb.ok("key", channel_id=ch.channel_id)
    assert unwrap_key(b.identity, got["key"], a.spki) == key


async def test_membership_change_expires_the_key(relay):
    (ca, a), (cb, b), (cc, c) = await users(relay.url, 3)
    ch = await create_channel(ca, a, [b])
    reply = await rotate_key(ca, a, ch, [a, b])
    before_change = now_ms()
    await send_message(ca, ch, a, "fine")
    await add_member(ca, a, ch, c)
    got = await ca.ok("key", channel_id=ch.channel_id)
    assert got["rotation_required"] is True
    assert got["key"]["key_id"] == ch.key_id
    # expires_at is lowered to the time of the change
    assert reply["created_at"] <= got["key"]["expires_at"] <= now_ms() + 2000
    assert got["key"]["expires_at"] >= before_change - 2000
    assert got["key"]["expires_at"] < reply["expires_at"]
    # the new member sees the newest record without a copy of it
    newcomer = await cc.ok("key", channel_id=ch.channel_id)
    assert newcomer["rotation_required"] is True
    assert newcomer["key"]["key_id"] == ch.key_id and newcomer["key"]["encrypted_key"] is None
    await cc.error("key", "not_found", channel_id=ch.channel_id, key_id=ch.key_id)
    # sending with the expired key is refused
    expired = await ca.error("message", "key_expired", **message_fields(ch, a, "too late"))
    assert expired["current_key_id"] == ch.key_id
    # the next sender rotates for the new membership, then sends
    await rotate_key(cb, b, ch, [a, b, c])
    await send_message(cb, ch, b, "hello c")
    fresh = await cc.ok("key", channel_id=ch.channel_id)
    assert fresh["rotation_required"] is False and unwrap_key(c.identity, fresh["key"], b.spki) == ch.key


async def test_key_ttl_expiry(own_relay):
    relay = own_relay("--key-ttl", "2")
    await asyncio.to_thread(relay.start)
    (ca, a), = await users(relay.url, 1)
    ch = await create_channel(ca, a)
    reply = await rotate_key(ca, a, ch, [a])
    assert reply["expires_at"] - reply["created_at"] == 2000
    assert (await ca.ok("key", channel_id=ch.channel_id))["rotation_required"] is False
    await send_message(ca, ch, a, "in time")
    await asyncio.sleep(max(0.0, (reply["expires_at"] - now_ms()) / 1000) + 0.5)
    got = await ca.ok("key", channel_id=ch.channel_id)
    assert got["rotation_required"] is True and got["key"]["key_id"] == ch.key_id
    expired = await ca.error("message", "key_expired", **message_fields(ch, a, "late"))
    assert expired["current_key_id"] == ch.key_id
    await rotate_key(ca, a, ch, [a])
    await send_message(ca, ch, a, "rotated")
