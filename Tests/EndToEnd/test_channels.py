"""§5 and §10 Channels: signed membership chain, create/add/remove/leave, events."""
import asyncio
import os

import pytest

from parley_client import (
    Channel, add_member, b64e, connect_as, create_channel, events_of, is_uuid, make_statement,
    new_user, new_uuid, next_statement, now_ms, now_s, remove_member, rotate_key, send_message,
    statement_hash, strip_re, users, verify_statement,
)

STATEMENT_FIELDS = {"version", "prev", "ts", "owner_id", "members", "signer_id", "sig"}


def v1(channel_id, owner, members, **kw):
    return make_statement(channel_id, version=1, prev="", owner_id=owner.user_id,
                          members=[m.user_id for m in members], signer=owner, **kw)


async def test_create(relay):
    (ca, a), (cb, b), (cc, c) = await users(relay.url, 3)
    cb2 = await connect_as(relay.url, b)
    channel_id = new_uuid()
    st = v1(channel_id, a, [a, b, c])
    before = now_ms()
    reply = await ca.ok("channel.create", channel_id=channel_id, name="général", membership=st)
    assert reply["channel_id"] == channel_id and reply["name"] == "général"
    members = {m["user_id"]: m for m in reply["members"]}
    assert set(members) == {a.user_id, b.user_id, c.user_id}
    for user, role in ((a, "owner"), (b, "member"), (c, "member")):
        m = members[user.user_id]
        assert set(m) >= {"user_id", "username", "public_key", "role", "joined_at"}
        assert m["username"] == user.username and m["public_key"] == user.spki and m["role"] == role
        assert before - 5000 <= m["joined_at"] <= now_ms() + 5000
    # every other member learns it was added, without subscribing; `by` is the creator
    for conn, user in ((cb, b), (cb2, b), (cc, c)):
        ev = await conn.next_event("event.member")
        assert ev == {"type": "event.member", "channel_id": channel_id, "user_id": user.user_id,
                      "action": "added", "by": a.user_id, "membership": st}
    # the creator gets no event.member for its own channel.create
    assert not events_of(await ca.events_for(0.5), "event.member")
    assert not events_of(await cb.events_for(0.2), "event.member")  # exactly once


async def test_channels_members_and_membership(relay):
    (ca, a), (cb, b) = await users(relay.url, 2)
    ch = await create_channel(ca, a, [b], name="room-1")
    listed = [x for x in (await cb.ok("channels"))["channels"] if x["channel_id"] == ch.channel_id]
    assert listed == [{"channel_id": ch.channel_id, "name": "room-1", "role": "member", "last_seq": 0,
                       "key_id": None, "membership_version": 1}]
    own = [x for x in (await ca.ok("channels"))["channels"] if x["channel_id"] == ch.channel_id]
    assert own[0]["role"] == "owner"
    members = await cb.ok("channel.members", channel_id=ch.channel_id)
    assert members["membership_version"] == 1
    assert {m["user_id"]: m["role"] for m in members["members"]} == {a.user_id: "owner", b.user_id: "member"}
    chain = await cb.ok("channel.membership", channel_id=ch.channel_id)
    assert chain["statements"] == ch.statements
    assert set(chain["statements"][0]) == STATEMENT_FIELDS
    assert (await cb.ok("channel.membership", channel_id=ch.channel_id, after_version=1))["statements"] == []
    assert (await cb.ok("channel.membership", channel_id=ch.channel_id, after_version=7))["statements"] == []
    assert (await cb.ok("channel.membership", channel_id=ch.channel_id, after_version=0))["statements"] == ch.statements
    assert (await cb.ok("channel.membership", channel_id=ch.channel_id, after_version=None))["statements"] == ch.statements
    await cb.error("channel.membership", "bad_request", channel_id=ch.channel_id, after_version=-1)


async def test_create_sorts_members_and_drops_unknown_statement_fields(relay):
    (ca, a), (_, b), (_, c) = await users(relay.url, 3)
    channel_id = new_uuid()
    st = v1(channel_id, a, [a, b, c])
    sent = {**st, "members": sorted(st["members"], reverse=True), "note": "dropped"}
    await ca.ok("channel.create", channel_id=channel_id, name="n", membership=sent)
    chain = (await ca.ok("channel.membership", channel_id=channel_id))["statements"]
    assert chain == [st]


async def test_create_with_used_id(relay):
    (ca, a), (cb, b) = await users(relay.url, 2)
    ch = await create_channel(ca, a)
    await ca.error("channel.create", "bad_request", channel_id=ch.channel_id, name="again",
                   membership=v1(ch.channel_id, a, [a]))
    await cb.error("channel.create", "bad_request", channel_id=ch.channel_id, name="theirs",
                   membership=v1(ch.channel_id, b, [b]))


async def test_create_refusals(relay):
    (ca, a), (cb, b) = await users(relay.url, 2)
    cid = new_uuid()
    # bad signature
    bad = v1(cid, a, [a, b])
    bad["sig"] = v1(cid, a, [a])["sig"]
    await ca.error("channel.create", "forbidden", channel_id=cid, name="n", membership=bad)
    # signer is not the requester
    await ca.error("channel.create", "forbidden", channel_id=cid, name="n", membership=v1(cid, b, [b, a]))
    # version 1 not signed by its owner (owner a, signer b = requester)
    st = make_statement(cid, version=1, prev="", owner_id=a.user_id, members=[a.user_id, b.user_id], signer=b)
    await cb.error("channel.create", "forbidden", channel_id=cid, name="n", membership=st)
    # unknown member
    ghost = new_uuid()
    st = make_statement(cid, version=1, prev="", owner_id=a.user_id, members=[a.user_id, ghost], signer=a)
    await ca.error("channel.create", "not_found", channel_id=cid, name="n", membership=st)
    # ts outside the ±300 s window
    await ca.error("channel.create", "bad_timestamp", channel_id=cid, name="n",
                   membership=v1(cid, a, [a], ts=now_s() - 400))
    await ca.error("channel.create", "bad_timestamp", channel_id=cid, name="n",
                   membership=v1(cid, a, [a], ts=now_s() + 400))
    # creator not a member; duplicates; wrong version; prev not empty
    st = make_statement(cid, version=1, prev="", owner_id=a.user_id, members=[b.user_id], signer=a)
    await ca.error("channel.create", "bad_request", channel_id=cid, name="n", membership=st)
    st = make_statement(cid, version=1, prev="", owner_id=a.user_id,
                        members=[a.user_id, b.user_id, b.user_id], signer=a)
    await ca.error("channel.create", "bad_request", channel_id=cid, name="n", membership=st)
    st = make_statement(cid, version=2, prev="", owner_id=a.user_id, members=[a.user_id], signer=a)
    await ca.error("channel.create", "bad_request", channel_id=cid, name="n", membership=st)
    st = make_statement(cid, version=1, prev=b64e(os.urandom(32)), owner_id=a.user_id,
                        members=[a.user_id], signer=a)
    await ca.error("channel.create", "bad_request", channel_id=cid, name="n", membership=st)
    # names: 1..64 Unicode scalar values
    await ca.error("channel.create", "bad_request", channel_id=cid, name="", membership=v1(cid, a, [a]))
    await ca.error("channel.create", "bad_request", channel_id=cid, name="n" * 65, membership=v1(cid, a, [a]))
    # a statement for another channel id
    await ca.error("channel.create", "forbidden", channel_id=cid, name="n", membership=v1(new_uuid(), a, [a]))
    # nothing was created by all that: the id is still unused
    await ca.error("channel.members", "not_member", channel_id=cid)
    assert not events_of(await cb.events_for(0.3), "event.member")
    await ca.error("channel.create", "bad_request", channel_id=cid, name="😀" * 65, membership=v1(cid, a, [a]))
    reply = await ca.ok("channel.create", channel_id=cid, name="😀" * 64, membership=v1(cid, a, [a, b]))
    assert reply["name"] == "😀" * 64


async def test_ts_window_edges_accepted(relay):
    (ca, a), = await users(relay.url, 1)
    for delta in (-290, 290):
        cid = new_uuid()
        await ca.ok("channel.create", channel_id=cid, name="n", membership=v1(cid, a, [a], ts=now_s() + delta))


async def test_add_remove_leave_and_events(relay):
    (ca, a), (cb, b), (cc, c), (cd, d) = await users(relay.url, 4)
    ch = await create_channel(ca, a, [b])
    await cb.next_event("event.member")  # the create
    await ca.ok("subscribe", channels=[{"channel_id": ch.channel_id}])
    await cb.ok("subscribe", channels=[{"channel_id": ch.channel_id}])

    # add c: subscribers and c (not subscribed) learn it
    reply = await add_member(ca, a, ch, c)
    assert reply == {"re": reply["re"], "type": "channel.add", "channel_id": ch.channel_id,
                     "user_id": c.user_id, "membership_version": 2}
    expected = {"type": "event.member", "channel_id": ch.channel_id, "user_id": c.user_id,
                "action": "added", "by": a.user_id, "membership": ch.head}
    for conn in (ca, cb, cc):
        assert await conn.next_event("event.member") == expected
    # each connection gets it once
    for conn in (ca, cb, cc):
        assert not events_of(await conn.events_for(0.2), "event.member")

    # remove b
    reply = await remove_member(ca, a, ch, b)
    assert reply["channel_id"] == ch.channel_id and reply["user_id"] == b.user_id
    assert reply["membership_version"] == 3
    expected = {"type": "event.member", "channel_id": ch.channel_id, "user_id": b.user_id,
                "action": "removed", "by": a.user_id, "membership": ch.head}
    for conn in (ca, cb):
        assert await conn.next_event("event.member") == expected
    assert not events_of(await cb.events_for(0.3), "event.member")

    # c leaves: it signs its own statement
    await add_member(ca, a, ch, d)
    reply = await remove_member(cc, c, ch, c)
    assert reply["membership_version"] == 5
    ev = await cc.next_event("event.member", where=lambda e: e["action"] == "removed")
    assert ev["user_id"] == c.user_id and ev["by"] == c.user_id and ev["membership"] == ch.head
    await cc.error("channel.members", "not_member", channel_id=ch.channel_id)

    members = await ca.ok("channel.members", channel_id=ch.channel_id)
    assert {m["user_id"] for m in members["members"]} == {a.user_id, d.user_id}
    assert members["membership_version"] == 5

    # the whole chain, and the part after version 2; it verifies client-side
    chain = (await cd.ok("channel.membership", channel_id=ch.channel_id))["statements"]
    assert chain == ch.statements
    spki = {u.user_id: u.spki for u in (a, b, c, d)}
    for i, st in enumerate(chain):
        assert set(st) == STATEMENT_FIELDS and st["members"] == sorted(st["members"])
        assert verify_statement(ch.channel_id, st, spki[st["signer_id"]])
        assert st["prev"] == ("" if i == 0 else statement_hash(ch.channel_id, chain[i - 1]))
    tail = (await cd.ok("channel.membership", channel_id=ch.channel_id, after_version=2))["statements"]
    assert tail == ch.statements[2:]
    assert (await cd.ok("channel.membership", channel_id=ch.channel_id, after_version=5))["statements"] == []


async def _two_ordered(url):
    (c1, u1), (c2, u2) = await users(url, 2)
    return ((c1, u1), (c2, u2)) if u1.user_id < u2.user_id else ((c2, u2), (c1, u1))


async def test_owner_leaving_names_the_right_successor(relay):
    (ca, a), = await users(relay.url, 1)
    (cb, b), (cc, c) = await _two_ordered(relay.url)      # b.user_id < c.user_id
    ch = await create_channel(ca, a, [b, c])            # same join time: the smaller id wins
    wrong = next_statement(ch.channel_id, ch.head, members=[b.user_id, c.user_id], signer=a,
                           owner_id=c.user_id)
    await ca.error("channel.remove", "bad_request", channel_id=ch.channel_id, user_id=a.user_id,
                   membership=wrong)
    reply = await remove_member(ca, a, ch, a, owner_id=b.user_id)
    assert reply["membership_version"] == 2
    roles = {m["user_id"]: m["role"] for m in (await cb.ok("channel.members", channel_id=ch.channel_id))["members"]}
    assert roles == {b.user_id: "owner", c.user_id: "member"}
    await ca.error("channel.members", "not_member", channel_id=ch.channel_id)
    # the new owner signs the next change
    (cd, d), = await users(relay.url, 1)
    await add_member(cb, b, ch, d)


async def test_owner_succession_uses_the_latest_join(relay):
    (ca, a), = await users(relay.url, 1)
    (cb, b), (cc, c) = await _two_ordered(relay.url)      # b.user_id < c.user_id
    ch = await create_channel(ca, a, [b])
    await asyncio.sleep(0.05)
    await add_member(ca, a, ch, c)
    await asyncio.sleep(0.05)
    await remove_member(ca, a, ch, b)
    await asyncio.sleep(0.05)
    await add_member(ca, a, ch, b)                        # b's latest join is now after c's
    wrong = next_statement(ch.channel_id, ch.head, members=[b.user_id, c.user_id], signer=a,
                           owner_id=b.user_id)
    await ca.error("channel.remove", "bad_request", channel_id=ch.channel_id, user_id=a.user_id,
                   membership=wrong)
    await remove_member(ca, a, ch, a, owner_id=c.user_id)
    roles = {m["user_id"]: m["role"] for m in (await cc.ok("channel.members", channel_id=ch.channel_id))["members"]}
    assert roles == {b.user_id: "member", c.user_id: "owner"}


async def test_last_member_leaves_and_channel_is_closed(relay):
    (ca, a), = await users(relay.url, 1)
    other = await connect_as(relay.url, a)
    ch = await create_channel(ca, a)
    st = next_statement(ch.channel_id, ch.head, members=[], signer=a, owner_id="")
    reply = await ca.ok("channel.remove", channel_id=ch.channel_id, user_id=a.user_id, membership=st)
    assert reply["membership_version"] == 2
    expected = {"type": "event.member", "channel_id": ch.channel_id, "user_id": a.user_id,
                "action": "removed", "by": a.user_id, "membership": st}
    assert await ca.next_event("event.member") == expected
    assert await other.next_event("event.member") == expected
    await ca.error("channel.members", "not_member", channel_id=ch.channel_id)
    assert not [x for x in (await ca.ok("channels"))["channels"] if x["channel_id"] == ch.channel_id]
    await ca.error("channel.create", "bad_request", channel_id=ch.channel_id, name="again",
                   membership=v1(ch.channel_id, a, [a]))


async def test_membership_rule_violations(relay):
    (ca, a), (cb, b), (cc, c), (cd, d) = await users(relay.url, 4)
    cid = new_uuid()
    base_ts = now_s() - 60
    st1 = v1(cid, a, [a, b], ts=base_ts)
    await ca.ok("channel.create", channel_id=cid, name="rules", membership=st1)
    ch = Channel(cid, [st1])
    ab = [a.user_id, b.user_id]

    def add_c(**kw):
        return next_statement(cid, st1, members=ab + [c.user_id], signer=kw.pop("signer", a), **kw)

    cases = [
        # (connection, user_id, statement, code)
        (ca, c.user_id, add_c(prev=b64e(os.urandom(32))), "bad_request"),                      # broken prev
        (ca, c.user_id, add_c(prev=""), "bad_request"),
        (ca, c.user_id, next_statement(cid, st1, members=ab + [c.user_id, d.user_id], signer=a), "bad_request"),  # two adds
        (ca, c.user_id, next_statement(cid, st1, members=[a.user_id, c.user_id], signer=a), "bad_request"),       # add + remove
        (ca, c.user_id, add_c(version=3), "bad_request"),                                        # skipped version
        (ca, c.user_id, add_c(version=1), "bad_request"),
        (ca, c.user_id, add_c(ts=base_ts - 10), "bad_request"),                                 # earlier than v1
        (ca, b.user_id, next_statement(cid, st1, members=ab, signer=a), "bad_request"),         # no change / already member
        (ca, d.user_id, add_c(), "bad_request"),                                                # user_id is not the added one
        (ca, c.user_id, add_c(owner_id=b.user_id), "bad_request"),                              # owner change without leaving
        (cb, c.user_id, add_c(signer=b), "forbidden"),                                          # signer not the owner
        (cb, c.user_id, add_c(), "forbidden"),                                                  # signer is not the requester
        (ca, c.user_id, add_c(sign_as=b.identity), "forbidden"),                                # bad signature
        (ca, c.user_id, add_c(ts=now_s() + 400), "bad_timestamp"),
    ]
    for conn, uid, st, code in cases:
        reply = await conn.request("channel.add", channel_id=cid, user_id=uid, membership=st)
        assert reply.get("type") == "error" and reply.get("code") == code, (st, reply)
    # nothing was applied
    assert (await ca.ok("channel.members", channel_id=cid))["membership_version"] == 1
    assert (await ca.ok("channel.membership", channel_id=cid))["statements"] == [st1]
    await add_member(ca, a, ch, c)
    st2 = ch.head
    abc = sorted([a.user_id, b.user_id, c.user_id])
    # remove-specific violations
    remove_cases = [
        (ca, d.user_id, next_statement(cid, st2, members=abc, signer=a), "bad_request"),           # not a member
        (cb, c.user_id, next_statement(cid, st2, members=ab, signer=b), "forbidden"),              # member removes another
        (ca, b.user_id, next_statement(cid, st2, members=[a.user_id], signer=a), "bad_request"),   # two removals
        (ca, a.user_id, next_statement(cid, st2, members=ab, signer=a), "bad_request"),            # user_id is not the removed one
        (ca, d.user_id, next_statement(cid, st2, members=abc + [d.user_id], signer=a), "bad_request"),  # an add on channel.remove
        (ca, c.user_id, next_statement(cid, st2, members=ab, signer=a, sign_as=c.identity), "forbidden"),
        (cc, c.user_id, next_statement(cid, st2, members=ab, signer=c, ts=now_s() + 400), "bad_timestamp"),
        (cc, c.user_id, next_statement(cid, st2, members=ab, signer=c, owner_id=b.user_id), "bad_request"),  # a leaving member names an owner
    ]
    for conn, uid, st, code in remove_cases:
        reply = await conn.request("channel.remove", channel_id=cid, user_id=uid, membership=st)
        assert reply.get("type") == "error" and reply.get("code") == code, (st, reply)
    # an add on channel.add's sibling: channel.add carrying a removal
    reply = await ca.request("channel.add", channel_id=cid, user_id=c.user_id,
                             membership=next_statement(cid, st2, members=ab, signer=a))
    assert reply.get("code") == "bad_request", reply
    assert (await ca.ok("channel.membership", channel_id=cid))["statements"] == [st1, st2]
    await remove_member(cc, c, ch, c)


async def test_non_member_gets_not_member_whether_the_channel_exists_or_not(relay):
    (ca, a), (cx, x) = await users(relay.url, 2)
    ch = await create_channel(ca, a)
    await rotate_key(ca, a, ch, [a])
    ghost = new_uuid()

    def requests(cid):
        st = make_statement(cid, version=2, prev=b64e(os.urandom(32)), owner_id=a.user_id,
                            members=[a.user_id, x.user_id], signer=x)
        return [
            ("channel.members", {"channel_id": cid}),
            ("channel.membership", {"channel_id": cid}),
            ("channel.add", {"channel_id": cid, "user_id": x.user_id, "membership": st}),
            ("channel.remove", {"channel_id": cid, "user_id": a.user_id,
                                "membership": {**st, "members": []}}),
            ("key", {"channel_id": cid}),
            ("key", {"channel_id": cid, "key_id": ch.key_id}),
            ("keys", {"channel_id": cid, "key_id": new_uuid(), "previous_key_id": None,
                      "membership_version": 1, "digest": b64e(os.urandom(32)), "sig": b64e(os.urandom(256)),
                      "encrypted_keys": [{"user_id": x.user_id, "encrypted_key": b64e(os.urandom(256))}]}),
            ("message", {"channel_id": cid, "key_id": ch.key_id, "iv": b64e(os.urandom(12)),
                         "ciphertext": b64e(os.urandom(32)), "ts": now_s() - 1000,
                         "client_msg_id": new_uuid()}),
            ("messages", {"channel_id": cid}),
            ("subscribe", {"channels": [{"channel_id": cid}]}),
        ]

    for (type_, real), (_, fake) in zip(requests(ch.channel_id), requests(ghost)):
        r1 = await cx.request(type_, id="same", **real)
        r2 = await cx.request(type_, id="same", **fake)
        # the message may name the channel id the requester gave; nothing else may differ
        r1 = {**r1, "message": r1.get("message", "").replace(ch.channel_id, "<id>")}
        r2 = {**r2, "message": r2.get("message", "").replace(ghost, "<id>")}
        assert r1.get("code") == "not_member", (type_, r1)
        assert r1 == r2, (type_, r1, r2)


async def test_removal_ends_the_removed_users_subscription(relay):
    (ca, a), (cb, b) = await users(relay.url, 2)
    b_idle = await connect_as(relay.url, b)
    ch = await create_channel(ca, a, [b])
    await rotate_key(ca, a, ch, [a, b])
    await ca.ok("subscribe", channels=[{"channel_id": ch.channel_id}])
    await cb.ok("subscribe", channels=[{"channel_id": ch.channel_id}])
    await send_message(ca, ch, a, "before")
    await cb.next_event("event.message")
    await remove_member(ca, a, ch, b)
    removed = await cb.next_event("event.member", where=lambda e: e["action"] == "removed")
    assert removed["user_id"] == b.user_id and removed["by"] == a.user_id
    assert (await b_idle.next_event("event.member", where=lambda e: e["action"] == "removed")) == removed
    # what follows in the channel never reaches b
    (cc, c), = await users(relay.url, 1)
    await rotate_key(ca, a, ch, [a])
    await send_message(ca, ch, a, "after")
    await add_member(ca, a, ch, c)
    await ca.next_event("event.message", where=lambda e: e["seq"] == 2)
    await ca.next_event("event.member", where=lambda e: e["user_id"] == c.user_id)
    later = [e for e in await cb.events_for(1.0) if e.get("channel_id") == ch.channel_id]
    assert later == [], later
    assert [e for e in await b_idle.events_for(0.2) if e.get("channel_id") == ch.channel_id] == []
    await cb.error("messages", "not_member", channel_id=ch.channel_id)


async def test_add_unknown_user(relay):
    (ca, a), = await users(relay.url, 1)
    ch = await create_channel(ca, a)
    ghost = new_uuid()
    st = next_statement(ch.channel_id, ch.head, members=[a.user_id, ghost], signer=a)
    await ca.error("channel.add", "not_found", channel_id=ch.channel_id, user_id=ghost, membership=st)
    assert (await ca.ok("channel.members", channel_id=ch.channel_id))["membership_version"] == 1


async def test_concurrent_creates_and_changes(relay):
    (ca, a), (cb, b), (cc, c), (cd, d) = await users(relay.url, 4)
    # the same channel id twice at once: one wins
    cid = new_uuid()
    r1, r2 = await asyncio.gather(
        ca.request("channel.create", channel_id=cid, name="one", membership=v1(cid, a, [a])),
        cb.request("channel.create", channel_id=cid, name="two", membership=v1(cid, b, [b])))
    assert sorted([r1["type"], r2["type"]]) == ["channel.create", "error"], (r1, r2)
    assert (r1 if r1["type"] == "error" else r2)["code"] == "bad_request"
    # two version-2 statements at once: exactly one is applied
    ch = await create_channel(ca, a, [b])
    s_c = next_statement(ch.channel_id, ch.head, members=ch.members + [c.user_id], signer=a)
    s_d = next_statement(ch.channel_id, ch.head, members=ch.members + [d.user_id], signer=a)
    ca2 = await connect_as(relay.url, a)
    r1, r2 = await asyncio.gather(
        ca.request("channel.add", channel_id=ch.channel_id, user_id=c.user_id, membership=s_c),
        ca2.request("channel.add", channel_id=ch.channel_id, user_id=d.user_id, membership=s_d))
    assert sorted([r1["type"], r2["type"]]) == ["channel.add", "error"], (r1, r2)
    assert (r1 if r1["type"] == "error" else r2)["code"] == "bad_request"
    chain = (await cb.ok("channel.membership", channel_id=ch.channel_id))["statements"]
    assert len(chain) == 2 and chain[1] in (s_c, s_d)


async def test_statement_ts_equal_to_previous_is_fine(relay):
    (ca, a), (cb, b) = await users(relay.url, 2)
    cid = new_uuid()
    ts = now_s() - 30
    st1 = v1(cid, a, [a], ts=ts)
    await ca.ok("channel.create", channel_id=cid, name="n", membership=st1)
    st2 = next_statement(cid, st1, members=[a.user_id, b.user_id], signer=a, ts=ts)
    await ca.ok("channel.add", channel_id=cid, user_id=b.user_id, membership=st2)
