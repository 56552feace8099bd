"""A small, independent async client of the Parley wire protocol v1.

Written from the contract (/work/shared/spec/wire-protocol.md), not from the relay's
code: Python's `cryptography` for RSA-OAEP / RSA-PSS / AES-GCM, `websockets` for the
transport. Every wait is bounded (DEFAULT_TIMEOUT) so a misbehaving relay fails a test
instead of hanging it.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import os
import secrets
import string
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

import websockets
from websockets.asyncio.client import connect as ws_connect
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SUBPROTOCOL = "parley.v1"
DEFAULT_TIMEOUT = 10.0
OAEP_LABEL = b"parley"
PSS_SALT = 222
CHALLENGE_PREFIX = b"parley.challenge.v1:"
MAX_FRAME = 262_144

# ---------------------------------------------------------------------------
# encodings


def b64e(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64d(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def b64url_nopad(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def now_s() -> int:
    return int(time.time())


def now_ms() -> int:
    return int(time.time() * 1000)


def new_uuid() -> str:
    return str(uuid.uuid4())


def is_uuid(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


def random_username(prefix: str = "u") -> str:
    alphabet = string.ascii_lowercase + string.digits
    return (prefix + "_" + "".join(secrets.choice(alphabet) for _ in range(12)))[:32]


# ---------------------------------------------------------------------------
# crypto


OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=OAEP_LABEL)
PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=PSS_SALT)


def load_spki(spki_b64: str) -> rsa.RSAPublicKey:
    key = serialization.load_der_public_key(b64d(spki_b64))
    assert isinstance(key, rsa.RSAPublicKey)
    return key


def spki_of(public_key) -> str:
    return b64e(public_key.public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo))


def oaep_encrypt(spki_b64: str, data: bytes) -> bytes:
    return load_spki(spki_b64).encrypt(data, OAEP)


def pss_verify(spki_b64: str, signature_b64: str, text: str) -> bool:
    try:
        load_spki(spki_b64).verify(b64d(signature_b64), text.encode("utf-8"), PSS, hashes.SHA256())
        return True
    except InvalidSignature:
        return False


_KEY_POOL: list[rsa.RSAPrivateKey] = []


class Identity:
    """An account key pair: RSA-2048, e = 65537, used for OAEP and PSS."""

    def __init__(self, private_key: Optional[rsa.RSAPrivateKey] = None, bits: int = 2048):
        self.private_key = private_key or rsa.generate_private_key(public_exponent=65537, key_size=bits)
        self.spki = spki_of(self.private_key.public_key())

    def sign(self, text: str) -> str:
        return b64e(self.private_key.sign(text.encode("utf-8"), PSS, hashes.SHA256()))

    def decrypt(self, ciphertext: bytes) -> bytes:
        return self.private_key.decrypt(ciphertext, OAEP)

    @property
    def fingerprint(self) -> str:
        return b64e(sha256(b64d(self.spki)))


def challenge_answer(secret_bytes: bytes) -> str:
    if len(secret_bytes) != 32:
        raise ValueError("challenge must decrypt to exactly 32 bytes")
    return b64e(sha256(CHALLENGE_PREFIX + secret_bytes))


# --- signed texts (§5, §6, §7)


def membership_text(channel_id: str, st: dict) -> str:
    members = ",".join(sorted(st["members"]))
    return (f"parley.membership.v1:{channel_id}:{st['version']}:{st['prev']}:{st['ts']}:"
            f"{st['owner_id']}:{members}")


def statement_hash(channel_id: str, st: dict) -> str:
    return b64e(sha256(membership_text(channel_id, st).encode("utf-8")))


def make_statement(channel_id: str, *, version: int, prev: str, owner_id: str,
                   members: Iterable[str], signer: "User", ts: Optional[int] = None,
                   sign_as: Optional[Identity] = None) -> dict:
    st = {
        "version": version,
        "prev": prev,
        "ts": now_s() if ts is None else ts,
        "owner_id": owner_id,
        "members": sorted(members),
        "signer_id": signer.user_id,
    }
    st["sig"] = (sign_as or signer.identity).sign(membership_text(channel_id, st))
    return st


def next_statement(channel_id: str, previous: dict, *, members: Iterable[str], signer: "User",
                   owner_id: Optional[str] = None, ts: Optional[int] = None, **overrides) -> dict:
    st = make_statement(channel_id, version=overrides.pop("version", previous["version"] + 1),
                        prev=overrides.pop("prev", statement_hash(channel_id, previous)),
                        owner_id=previous["owner_id"] if owner_id is None else owner_id,
                        members=members, signer=signer, ts=ts, **overrides)
    return st


def verify_statement(channel_id: str, st: dict, spki_b64: str) -> bool:
    return pss_verify(spki_b64, st["sig"], membership_text(channel_id, st))


def key_text(channel_id: str, key_id: str, previous_key_id: Optional[str],
             membership_version: int, digest: str) -> str:
    return (f"parley.key.v1:{channel_id}:{key_id}:{previous_key_id or ''}:"
            f"{membership_version}:{digest}")


def key_digest(key: bytes) -> str:
    return b64e(sha256(key))


def make_key_record(channel_id: str, *, creator: "User", previous_key_id: Optional[str],
                    membership_version: int, recipients: dict[str, str],
                    key: Optional[bytes] = None, key_id: Optional[str] = None) -> tuple[dict, bytes]:
    """recipients: user_id -> SPKI base64. Returns (fields of a `keys` request, raw key)."""
    key = key if key is not None else os.urandom(32)
    key_id = key_id or new_uuid()
    digest = key_digest(key)
    fields = {
        "channel_id": channel_id,
        "key_id": key_id,
        "previous_key_id": previous_key_id,
        "membership_version": membership_version,
        "digest": digest,
        "sig": creator.identity.sign(key_text(channel_id, key_id, previous_key_id,
                                                membership_version, digest)),
        "encrypted_keys": [{"user_id": uid, "encrypted_key": b64e(oaep_encrypt(spki, key))}
                           for uid, spki in recipients.items()],
    }
    return fields, key


def message_text(body: str, channel_id: str, ts: int) -> str:
    return f"{body}:{channel_id}:{ts}"


def encrypt_message(key: bytes, *, channel_id: str, body: str, ts: int, signer: "User",
                    iv: Optional[bytes] = None, extra: Optional[dict] = None) -> tuple[str, str]:
    plaintext = {"body": body, "sig": signer.identity.sign(message_text(body, channel_id, ts))}
    if extra:
        plaintext.update(extra)
    iv = iv if iv is not None else os.urandom(12)
    ciphertext = AESGCM(key).encrypt(iv, json.dumps(plaintext).encode("utf-8"), None)
    return b64e(iv), b64e(ciphertext)


def decrypt_message(key: bytes, message: dict, sender_spki: str) -> str:
    """Decrypt a `message` object and verify its signature; returns the body or raises."""
    plaintext = AESGCM(key).decrypt(b64d(message["iv"]), b64d(message["ciphertext"]), None)
    inner = json.loads(plaintext.decode("utf-8"))
    body = inner["body"]
    if not pss_verify(sender_spki, inner["sig"], message_text(body, message["channel_id"], message["ts"])):
        raise ValueError("unverifiable message")
    return body


def unwrap_key(identity: Identity, record: dict, creator_spki: str) -> bytes:
    """Check a key record as a receiver does (§6) and return the raw key."""
    text = key_text(record["channel_id"], record["key_id"], record["previous_key_id"],
                    record["membership_version"], record["digest"])
    if not pss_verify(creator_spki, record["sig"], text):
        raise ValueError("key record signature does not verify")
    key = identity.decrypt(b64d(record["encrypted_key"]))
    if key_digest(key) != record["digest"]:
        raise ValueError("unwrapped key does not match the digest")
    return key


# ---------------------------------------------------------------------------
# transport


class ProtocolError(AssertionError):
    pass


class Connection:
    """One WebSocket connection. A reader task sorts incoming frames: replies (by `re`)
    resolve the futures of pending requests; frames with `re` null go to `orphans`;
    events (no `re` key) go to `events`."""

    _ids = itertools.count(1)
    open_connections: "list[Connection]" = []

    def __init__(self, ws):
        self.ws = ws
        Connection.open_connections.append(self)
        self.pending: dict[str, asyncio.Future] = {}
        self.replies: dict[str, dict] = {}      # replies nobody waited for (yet)
        self.events: asyncio.Queue = asyncio.Queue()
        self.orphans: asyncio.Queue = asyncio.Queue()
        self.log: list[dict] = []               # every frame, in order of arrival
        self.sizes: dict[str, int] = {}         # reply id -> size of the frame in bytes
        self.closed = asyncio.Event()
        self.close_code: Optional[int] = None
        self.close_reason: Optional[str] = None
        self.user: Optional[User] = None
        self._reader = asyncio.create_task(self._read())

    @property
    def subprotocol(self):
        return self.ws.subprotocol

    async def _read(self):
        try:
            async for raw in self.ws:
                frame = json.loads(raw, parse_float=self._float, parse_constant=self._constant)
                self.log.append(frame)
                if isinstance(frame, dict) and "re" in frame:
                    re = frame["re"]
                    if isinstance(re, str):
                        self.sizes[re] = len(raw.encode("utf-8") if isinstance(raw, str) else raw)
                    if re is None:
                        await self.orphans.put(frame)
                    elif re in self.pending and not self.pending[re].done():
                        self.pending.pop(re).set_result(frame)
                    else:
                        self.replies[re] = frame
                else:
                    await self.events.put(frame)
        except websockets.ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code
            self.close_reason = self.ws.close_reason
            self.closed.set()
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionError(f"connection closed ({self.close_code})"))

    # §2/§10: every number the relay writes is an integer (no fraction, no exponent)
    violations: "list[str]" = []

    def _float(self, text: str):
        Connection.violations.append(f"non-integer number {text!r} in a relay frame")
        return float(text)

    def _constant(self, text: str):
        Connection.violations.append(f"{text} in a relay frame (not JSON)")
        return float(text)

    def next_id(self) -> str:
        return f"r{next(self._ids)}"

    # --- sending

    async def send_raw(self, data) -> None:
        await self.ws.send(data)

    async def send_frame(self, frame: dict) -> asyncio.Future:
        """Send without waiting; returns a future of the reply."""
        rid = frame["id"]
        fut = asyncio.get_running_loop().create_future()
        if rid in self.replies:
            fut.set_result(self.replies.pop(rid))
        else:
            self.pending[rid] = fut
        await self.ws.send(json.dumps(frame))
        return fut

    async def request(self, type_: str, timeout: float = DEFAULT_TIMEOUT, id: Optional[str] = None,
                      **fields) -> dict:
        frame = {"id": id or self.next_id(), "type": type_, **fields}
        fut = await self.send_frame(frame)
        return await asyncio.wait_for(fut, timeout)

    async def ok(self, type_: str, **fields) -> dict:
        """A request that must succeed."""
        reply = await self.request(type_, **fields)
        if reply.get("type") != type_:
            raise ProtocolError(f"{type_} failed: {reply}")
        return reply

    async def error(self, type_: str, code: str, **fields) -> dict:
        """A request that must fail with `code`."""
        reply = await self.request(type_, **fields)
        if reply.get("type") != "error" or reply.get("code") != code:
            raise ProtocolError(f"{type_}: expected error {code}, got {reply}")
        return reply

    # --- receiving

    async def next_event(self, type_: Optional[str] = None, timeout: float = DEFAULT_TIMEOUT,
                         where: Optional[Callable[[dict], bool]] = None, skip: bool = True) -> dict:
        """The next event (of `type_` and matching `where`); others are dropped when `skip`."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise asyncio.TimeoutError(f"no {type_ or 'event'} within {timeout}s")
            event = await asyncio.wait_for(self.events.get(), remaining)
            if (type_ is None or event.get("type") == type_) and (where is None or where(event)):
                return event
            if not skip:
                raise ProtocolError(f"expected {type_}, got {event}")

    async def events_for(self, seconds: float) -> list[dict]:
        """Every event that arrives within `seconds` (used to check that nothing comes)."""
        out = []
        deadline = time.monotonic() + seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                out.append(await asyncio.wait_for(self.events.get(), remaining))
            except asyncio.TimeoutError:
                break
        return out

    def drain_events(self) -> list[dict]:
        out = []
        while not self.events.empty():
            out.append(self.events.get_nowait())
        return out

    async def next_orphan(self, timeout: float = DEFAULT_TIMEOUT) -> dict:
        return await asyncio.wait_for(self.orphans.get(), timeout)

    async def wait_closed(self, timeout: float = DEFAULT_TIMEOUT) -> Optional[int]:
        await asyncio.wait_for(self.closed.wait(), timeout)
        return self.close_code

    async def close(self):
        try:
            await asyncio.wait_for(self.ws.close(), 5)
        except Exception:
            pass
        self._reader.cancel()
        try:
            await self._reader
        except BaseException:
            pass


async def close_all() -> None:
    """Close every connection made so far (called after each test)."""
    conns, Connection.open_connections[:] = list(Connection.open_connections), []
    await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
    found, Connection.violations[:] = list(Connection.violations), []
    if found:
        raise ProtocolError("; ".join(found[:5]))


async def connect(url: str, subprotocols: Optional[list] = (SUBPROTOCOL,), **kwargs) -> Connection:
    ws = await asyncio.wait_for(ws_connect(
        url,
        subprotocols=list(subprotocols) if subprotocols is not None else None,
        compression=None,
        max_size=64 * 1024 * 1024,
        ping_interval=None,
        open_timeout=DEFAULT_TIMEOUT,
        close_timeout=5,
        **kwargs,
    ), DEFAULT_TIMEOUT)
    return Connection(ws)


# ---------------------------------------------------------------------------
# accounts


@dataclass
class User:
    username: str
    identity: Identity
    user_id: Optional[str] = None
    session: Optional[str] = None
    passkey: Optional[str] = None

    @property
    def spki(self) -> str:
        return self.identity.spki


def solve(identity: Identity, challenge_b64: str) -> str:
    return challenge_answer(identity.decrypt(b64d(challenge_b64)))


async def signup(conn: Connection, username: Optional[str] = None,
                 identity: Optional[Identity] = None) -> User:
    """signup + challenge on `conn`, which ends up authenticated."""
    user = User(username or random_username(), identity or Identity())
    started = await conn.ok("signup", username=user.username, public_key=user.spki)
    done = await conn.ok("challenge", challenge_id=started["challenge_id"],
                         answer=solve(user.identity, started["challenge"]))
    user.user_id, user.session, user.passkey = done["user_id"], done["session"], done["passkey"]
    conn.user = user
    return user


async def login(conn: Connection, user: User) -> dict:
    started = await conn.ok("login", username=user.username, passkey=user.passkey)
    done = await conn.ok("challenge", challenge_id=started["challenge_id"],
                         answer=solve(user.identity, started["challenge"]))
    user.session = done["session"]
    conn.user = user
    return done


async def auth(conn: Connection, user: User, session: Optional[str] = None) -> dict:
    reply = await conn.ok("auth", session=session or user.session)
    conn.user = user
    return reply


async def new_user(url: str) -> tuple[Connection, User]:
    conn = await connect(url)
    user = await signup(conn)
    return conn, user


async def connect_as(url: str, user: User) -> Connection:
    conn = await connect(url)
    await auth(conn, user)
    return conn


# ---------------------------------------------------------------------------
# channels, keys, messages


@dataclass
class Channel:
    """Client-side view of a channel: its verified chain and its current key."""
    channel_id: str
    statements: list[dict] = field(default_factory=list)
    key_id: Optional[str] = None
    key: Optional[bytes] = None
    keys: dict[str, bytes] = field(default_factory=dict)

    @property
    def head(self) -> dict:
        return self.statements[-1]

    @property
    def version(self) -> int:
        return self.head["version"]

    @property
    def members(self) -> list[str]:
        return list(self.head["members"])


async def create_channel(conn: Connection, owner: User, others: Iterable[User] = (),
                         name: str = "room", channel_id: Optional[str] = None) -> Channel:
    channel_id = channel_id or new_uuid()
    st = make_statement(channel_id, version=1, prev="", owner_id=owner.user_id,
                        members=[owner.user_id] + [u.user_id for u in others], signer=owner)
    await conn.ok("channel.create", channel_id=channel_id, name=name, membership=st)
    return Channel(channel_id, [st])


async def add_member(conn: Connection, owner: User, channel: Channel, user: User) -> dict:
    st = next_statement(channel.channel_id, channel.head, members=channel.members + [user.user_id],
                        signer=owner)
    reply = await conn.ok("channel.add", channel_id=channel.channel_id, user_id=user.user_id,
                          membership=st)
    channel.statements.append(st)
    return reply


async def remove_member(conn: Connection, signer: User, channel: Channel, user: User,
                        owner_id: Optional[str] = None) -> dict:
    members = [m for m in channel.members if m != user.user_id]
    st = next_statement(channel.channel_id, channel.head, members=members, signer=signer,
                        owner_id=owner_id)
    reply = await conn.ok("channel.remove", channel_id=channel.channel_id, user_id=user.user_id,
                          membership=st)
    channel.statements.append(st)
    return reply


async def rotate_key(conn: Connection, creator: User, channel: Channel, users: Iterable[User],
                     previous_key_id: Any = "current") -> dict:
    """Store a new key for the given users (who must be the members)."""
    prev = channel.key_id if previous_key_id == "current" else previous_key_id
    fields, key = make_key_record(channel.channel_id, creator=creator, previous_key_id=prev,
                                  membership_version=channel.version,
                                  recipients={u.user_id: u.spki for u in users})
    reply = await conn.ok("keys", **fields)
    channel.key_id, channel.key = fields["key_id"], key
    channel.keys[fields["key_id"]] = key
    return reply


def message_fields(channel: Channel, sender: User, body: str, *, ts: Optional[int] = None,
                   client_msg_id: Optional[str] = None, key_id: Optional[str] = None,
                   iv: Optional[bytes] = None) -> dict:
    ts = now_s() if ts is None else ts
    iv_b64, ct_b64 = encrypt_message(channel.key, channel_id=channel.channel_id, body=body, ts=ts,
                                     signer=sender, iv=iv)
    return {"channel_id": channel.channel_id, "key_id": key_id or channel.key_id, "iv": iv_b64,
            "ciphertext": ct_b64, "ts": ts, "client_msg_id": client_msg_id or new_uuid()}


async def send_message(conn: Connection, channel: Channel, sender: User, body: str, **kw) -> dict:
    return await conn.ok("message", **message_fields(channel, sender, body, **kw))


async def send_many(conn: Connection, channel: Channel, sender: User, count: int,
                    window: int = 64, body: str = "m", timeout: float = 120.0) -> list[dict]:
    """Pipelined sends: up to `window` requests in flight. Retries `rate_limited`,
    `unavailable` and `internal` with the same client_msg_id (they were not applied)."""
    results: list[Optional[dict]] = [None] * count
    sem = asyncio.Semaphore(window)

    async def one(i: int):
        fields = message_fields(channel, sender, f"{body}{i}")
        async with sem:
            for _ in range(50):
                reply = await conn.request("message", timeout=timeout, **fields)
                if reply.get("type") == "error" and reply.get("code") in ("rate_limited", "unavailable"):
                    await asyncio.sleep(reply.get("retry_after_ms", 100) / 1000)
                    continue
                results[i] = reply
                return
            raise ProtocolError(f"message {i} never accepted: {reply}")

    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(count))), timeout)
    return results  # type: ignore


def strip_re(frame: dict) -> dict:
    return {k: v for k, v in frame.items() if k != "re"}


async def users(url: str, count: int) -> list[tuple[Connection, User]]:
    """`count` fresh accounts, each with an authenticated connection."""
    return list(await asyncio.gather(*(new_user(url) for _ in range(count))))


def events_of(events: list[dict], type_: str, channel_id: Optional[str] = None) -> list[dict]:
    return [e for e in events if e.get("type") == type_
            and (channel_id is None or e.get("channel_id") == channel_id)]


async def channel_with_subscriber(url: str):
    """Two new users a and b in a new channel with a key; b's connection is subscribed
    from seq 0 (its event.synced consumed). Returns (ca, a, cb, b, ch)."""
    (ca, a), (cb, b) = await users(url, 2)
    ch = await create_channel(ca, a, [b])
    await rotate_key(ca, a, ch, [a, b])
    await cb.ok("subscribe", channels=[{"channel_id": ch.channel_id, "after": 0}])
    assert (await cb.next_event("event.synced"))["seq"] == 0
    return ca, a, cb, b, ch
