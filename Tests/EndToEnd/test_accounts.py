"""§4 and §10 Accounts: signup, challenge, login, auth, logout, user."""
import asyncio
import base64
import os

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from parley_client import (
    Identity, User, auth, b64d, b64e, b64url_decode, challenge_answer, connect, connect_as,
    is_uuid, login, new_user, new_uuid, now_ms, random_username, signup, solve, spki_of,
    strip_re,
)

DAY_MS = 86_400_000


async def test_signup_challenge_creates_account(relay):
    conn = await connect(relay.url)
    identity = Identity()
    name = random_username("signup")
    before = now_ms()
    started = await conn.ok("signup", username=name, public_key=identity.spki)
    assert set(started) >= {"re", "type", "challenge_id", "challenge", "expires_at"}
    assert is_uuid(started["challenge_id"])
    secret = identity.decrypt(b64d(started["challenge"]))
    assert len(secret) == 32
    assert before + 290_000 <= started["expires_at"] <= now_ms() + 310_000  # 5 minutes, in ms
    done = await conn.ok("challenge", challenge_id=started["challenge_id"],
                         answer=challenge_answer(secret))
    assert is_uuid(done["user_id"])
    assert done["username"] == name
    # session: base64url of 32 random bytes, valid 30 days (unix ms)
    assert "=" not in done["session"] and len(b64url_decode(done["session"])) == 32
    assert abs(done["session_expires_at"] - (now_ms() + 30 * DAY_MS)) < 60_000
    # passkey: 32 random bytes, base64url without padding, after a signup only
    assert len(done["passkey"]) == 43 and "=" not in done["passkey"]
    assert len(b64url_decode(done["passkey"])) == 32
    # the connection is now authenticated
    assert (await conn.ok("channels"))["channels"] == []


@pytest.mark.parametrize("bits", [3072, 4096])
async def test_signup_accepts_larger_keys(relay, bits):
    conn = await connect(relay.url)
    user = await signup(conn, identity=Identity(bits=bits))
    assert is_uuid(user.user_id)


async def test_account_exists_only_after_the_answer(relay):
    name = random_username("late")
    c1, c2 = await connect(relay.url), await connect(relay.url)
    await c1.ok("signup", username=name, public_key=Identity().spki)
    _, looker = await new_user(relay.url)
    looker_conn = await connect_as(relay.url, looker)
    await looker_conn.error("user", "not_found", username=name)
    # the name is not taken yet: another signup for it proceeds
    user = await signup(c2, username=name)
    assert user.username == name


@pytest.mark.parametrize("name", [
    "ab", "a" * 33, "Alice", "has space", "bang!", "", "élan", "tab\t", "dash/slash", "ALLCAPS",
    "under_score+", "ｆｕｌｌ",
])
async def test_invalid_username(relay, name):
    conn = await connect(relay.url)
    await conn.error("signup", "invalid_username", username=name, public_key=Identity().spki)


@pytest.mark.parametrize("name", ["abc", "a.b", "a-b", "a_b", "0123456789"])
async def test_valid_username_shapes(relay, name):
    conn = await connect(relay.url)
    name = (name + "." + os.urandom(6).hex())[:32]
    await conn.ok("signup", username=name, public_key=Identity().spki)


async def test_username_of_3_and_32_chars(relay):
    conn = await connect(relay.url)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789_.-"
    short = "".join(alphabet[b % len(alphabet)] for b in os.urandom(3))
    await conn.ok("signup", username=short, public_key=Identity().spki)
    long = (random_username("y") + "." * 32)[:32]
    assert len(long) == 32
    await conn.ok("signup", username=long, public_key=Identity().spki)


def _der_b64(public_key, fmt=serialization.PublicFormat.SubjectPublicKeyInfo):
    return b64e(public_key.public_bytes(serialization.Encoding.DER, fmt))


def _bad_keys():
    rsa2048 = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    return {
        "not base64": "this is not base64!",
        "empty": "",
        "garbage": b64e(os.urandom(294)),
        "rsa1024": _der_b64(rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()),
        "rsa2048 e=3": _der_b64(rsa.generate_private_key(public_exponent=3, key_size=2048).public_key()),
        "ec p256": _der_b64(ec.generate_private_key(ec.SECP256R1()).public_key()),
        "pkcs1 not spki": _der_b64(rsa2048, serialization.PublicFormat.PKCS1),
        "pem text": rsa2048.public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode(),
        "trailing bytes": b64e(b64d(_der_b64(rsa2048)) + b"\x00"),
        "truncated": b64e(b64d(_der_b64(rsa2048))[:-10]),
        "unpadded": _der_b64(rsa2048).rstrip("=") + ("" if _der_b64(rsa2048).endswith("=") else "A"),
    }


BAD_KEYS = _bad_keys()


@pytest.mark.parametrize("which", sorted(BAD_KEYS))
async def test_invalid_key(relay, which):
    conn = await connect(relay.url)
    reply = await conn.error("signup", "invalid_key", username=random_username("k"),
                             public_key=BAD_KEYS[which])
    assert reply["re"]


async def test_username_taken_at_signup(relay):
    conn, user = await new_user(relay.url)
    other = await connect(relay.url)
    await other.error("signup", "username_taken", username=user.username, public_key=Identity().spki)


async def test_username_taken_when_answering_first_answer_wins(relay):
    name = random_username("race")
    c1, c2 = await connect(relay.url), await connect(relay.url)
    i1, i2 = Identity(), Identity()
    s1 = await c1.ok("signup", username=name, public_key=i1.spki)
    s2 = await c2.ok("signup", username=name, public_key=i2.spki)
    won = await c2.ok("challenge", challenge_id=s2["challenge_id"], answer=solve(i2, s2["challenge"]))
    assert won["username"] == name
    await c1.error("challenge", "username_taken", challenge_id=s1["challenge_id"],
                   answer=solve(i1, s1["challenge"]))
    # the winner's key is the one on record
    look = await c2.ok("user", username=name)
    assert look["public_key"] == i2.spki and look["user_id"] == won["user_id"]
    # c1 is still unauthenticated
    await c1.error("channels", "unauthenticated")


async def test_wrong_answer_consumes_the_challenge(relay):
    conn = await connect(relay.url)
    identity = Identity()
    started = await conn.ok("signup", username=random_username("w"), public_key=identity.spki)
    await conn.error("challenge", "challenge_failed", challenge_id=started["challenge_id"],
                     answer=b64e(os.urandom(32)))
    await conn.error("challenge", "challenge_failed", challenge_id=started["challenge_id"],
                     answer=solve(identity, started["challenge"]))
    await conn.error("channels", "unauthenticated")


async def test_answering_with_the_decrypted_bytes_fails(relay):
    conn = await connect(relay.url)
    identity = Identity()
    started = await conn.ok("signup", username=random_username("raw"), public_key=identity.spki)
    raw = identity.decrypt(b64d(started["challenge"]))
    await conn.error("challenge", "challenge_failed", challenge_id=started["challenge_id"], answer=b64e(raw))


async def test_foreign_challenge_fails_without_consuming(relay):
    owner, thief = await connect(relay.url), await connect(relay.url)
    identity = Identity()
    started = await owner.ok("signup", username=random_username("f"), public_key=identity.spki)
    answer = solve(identity, started["challenge"])
    await thief.error("challenge", "challenge_failed", challenge_id=started["challenge_id"], answer=answer)
    await thief.error("channels", "unauthenticated")
    done = await owner.ok("challenge", challenge_id=started["challenge_id"], answer=answer)
    assert is_uuid(done["user_id"])


async def test_used_challenge_fails(relay):
    conn = await connect(relay.url)
    identity = Identity()
    started = await conn.ok("signup", username=random_username("u"), public_key=identity.spki)
    answer = solve(identity, started["challenge"])
    await conn.ok("challenge", challenge_id=started["challenge_id"], answer=answer)
    other = await connect(relay.url)
    await other.error("challenge", "challenge_failed", challenge_id=started["challenge_id"], answer=answer)


async def test_unknown_challenge_id(relay):
    conn = await connect(relay.url)
    await conn.error("challenge", "challenge_failed", challenge_id=new_uuid(), answer=b64e(os.urandom(32)))
    await conn.error("challenge", "bad_request", challenge_id="not-a-uuid", answer=b64e(os.urandom(32)))
    await conn.error("challenge", "bad_request", challenge_id=new_uuid(), answer="%%%")


async def test_account_requests_on_authenticated_connection(relay):
    conn, user = await new_user(relay.url)
    await conn.error("signup", "bad_request", username=random_username("again"), public_key=Identity().spki)
    await conn.error("login", "bad_request", username=user.username, passkey=user.passkey)
    await conn.error("auth", "bad_request", session=user.session)
    await conn.error("challenge", "bad_request", challenge_id=new_uuid(), answer=b64e(os.urandom(32)))
    # still authenticated as before
    assert (await conn.ok("channels"))["type"] == "channels"


async def test_login(relay):
    _, user = await new_user(relay.url)
    first_session = user.session
    conn = await connect(relay.url)
    started = await conn.ok("login", username=user.username, passkey=user.passkey)
    assert is_uuid(started["challenge_id"])
    assert abs(started["expires_at"] - (now_ms() + 300_000)) < 15_000
    done = await conn.ok("challenge", challenge_id=started["challenge_id"],
                         answer=solve(user.identity, started["challenge"]))
    assert done["user_id"] == user.user_id and done["username"] == user.username
    assert "passkey" not in done
    assert done["session"] != first_session and len(b64url_decode(done["session"])) == 32
    assert (await conn.ok("channels"))["type"] == "channels"


async def test_login_wrong_passkey_and_unknown_user_are_identical(relay):
    _, user = await new_user(relay.url)
    conn = await connect(relay.url)
    wrong = await conn.error("login", "auth_failed", id="a", username=user.username,
                             passkey=base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("="))
    unknown = await conn.error("login", "auth_failed", id="b", username=random_username("ghost"),
                               passkey=base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("="))
    assert strip_re(wrong) == strip_re(unknown)
    assert wrong["re"] == "a" and unknown["re"] == "b"
    # a name that cannot exist, and a passkey that is not even base64url: the same frame
    for rid, name, passkey in (("c", "NOT A NAME", user.passkey), ("d", user.username, "%%%")):
        other = await conn.error("login", "auth_failed", id=rid, username=name, passkey=passkey)
        assert strip_re(other) == strip_re(wrong)


async def test_login_failures_take_similar_time(relay):
    import time
    _, user = await new_user(relay.url)
    conn = await connect(relay.url)
    timings = {"wrong": [], "unknown": []}
    for _ in range(8):
        for which in ("wrong", "unknown"):
            name = user.username if which == "wrong" else random_username("ghost")
            t = time.perf_counter()
            await conn.error("login", "auth_failed", username=name,
                             passkey=base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("="))
            timings[which].append(time.perf_counter() - t)
    median = {k: sorted(v)[len(v) // 2] for k, v in timings.items()}
    assert abs(median["wrong"] - median["unknown"]) < 0.05, median


async def test_login_accepts_only_unpadded_base64url(relay):
    _, user = await new_user(relay.url)
    conn = await connect(relay.url)
    await conn.error("login", "auth_failed", username=user.username, passkey=user.passkey + "=")
    std = base64.b64encode(b64url_decode(user.passkey)).decode()
    if std.rstrip("=") != user.passkey:
        await conn.error("login", "auth_failed", username=user.username, passkey=std)
    await conn.ok("login", username=user.username, passkey=user.passkey)


async def test_auth_on_new_connection(relay):
    first, user = await new_user(relay.url)
    expires = None
    conn = await connect(relay.url)
    reply = await conn.ok("auth", session=user.session)
    assert reply["user_id"] == user.user_id and reply["username"] == user.username
    assert abs(reply["session_expires_at"] - (now_ms() + 30 * DAY_MS)) < 120_000
    again = await (await connect(relay.url)).ok("auth", session=user.session)
    assert again["session_expires_at"] == reply["session_expires_at"]  # not sliding
    assert (await conn.ok("channels"))["type"] == "channels"


async def test_auth_with_unknown_session(relay):
    conn = await connect(relay.url)
    await conn.error("auth", "auth_failed",
                     session=base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("="))
    await conn.error("channels", "unauthenticated")


async def test_logout(relay):
    c1, user = await new_user(relay.url)
    c2 = await connect_as(relay.url, user)
    c3 = await connect(relay.url)
    await login(c3, User(user.username, user.identity, user.user_id, None, user.passkey))
    other_session = c3.user.session
    reply = await c1.ok("logout")
    assert set(reply) == {"re", "type"}
    # the connection that sent it is unauthenticated, and stays open
    await c1.error("channels", "unauthenticated")
    assert (await c1.ok("ping"))["type"] == "ping"
    # other connections of that session are closed with 4001
    assert await c2.wait_closed() == 4001
    # the token stops working everywhere
    await (await connect(relay.url)).error("auth", "auth_failed", session=user.session)
    # other sessions of the same user live on
    assert (await c3.ok("channels"))["type"] == "channels"
    # the logged-out connection may authenticate again
    await c1.ok("auth", session=other_session)
    assert (await c1.ok("channels"))["type"] == "channels"


async def test_logout_ends_subscriptions(relay):
    from parley_client import create_channel, rotate_key, send_message
    c1, user = await new_user(relay.url)
    writer = await connect(relay.url)
    await login(writer, User(user.username, user.identity, user.user_id, None, user.passkey))
    channel = await create_channel(writer, user)
    await rotate_key(writer, user, channel, [user])
    await c1.ok("subscribe", channels=[{"channel_id": channel.channel_id}])
    await c1.ok("logout")
    await send_message(writer, channel, user, "after logout")
    events = await c1.events_for(1.0)
    assert not [e for e in events if e.get("type") == "event.message"], events


async def test_user_lookup(relay):
    conn, user = await new_user(relay.url)
    _, other = await new_user(relay.url)
    by_name = await conn.ok("user", username=other.username)
    assert by_name["user_id"] == other.user_id and by_name["username"] == other.username
    assert by_name["public_key"] == other.spki
    assert isinstance(by_name["created_at"], int) and abs(by_name["created_at"] - now_ms()) < 120_000
    by_id = await conn.ok("user", user_id=other.user_id)
    assert strip_re(by_id) == strip_re(by_name)
    await conn.error("user", "not_found", username=random_username("nobody"))
    await conn.error("user", "not_found", user_id=new_uuid())
    await conn.error("user", "bad_request", user_id=other.user_id.upper())


async def test_concurrent_answers_exactly_one_account(relay):
    for _ in range(3):
        name = random_username("dup")
        conns = [await connect(relay.url) for _ in range(4)]
        ids = [Identity() for _ in conns]
        started = [await c.ok("signup", username=name, public_key=i.spki) for c, i in zip(conns, ids)]
        replies = await asyncio.gather(*(
            c.request("challenge", challenge_id=s["challenge_id"], answer=solve(i, s["challenge"]))
            for c, i, s in zip(conns, ids, started)))
        won = [r for r in replies if r["type"] == "challenge"]
        assert len(won) == 1, replies
        assert all(r.get("code") == "username_taken" for r in replies if r is not won[0]), replies
