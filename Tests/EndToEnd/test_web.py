"""The web client (`web/`, served by the relay at `/`) in a real browser.

Debian's headless Chromium (installed by scripts/setup), driven over its DevTools protocol
by `browser.py`, runs the page against the real relay. Each browser user is a tab in its
own browser context (separate IndexedDB); the third member is the real `parley-bot` (the
Swift SDK). What each side shows is read through the page's DOM contract (its element
ids, `data-*` attributes and `window.parleyTest.state()`); what went over the wire is checked a
second time by the independent Python client of the contract (`parley_client.py`),
signed in as the bot with the bot's own identity file.

Screenshots of the main screens go to /tmp/parley-web-shots-<time>/ (or
$PARLEY_WEB_SHOTS); each test prints the folder and a `figures:` line.

The bot binary: $PARLEY_BOT_BIN, else `parley-bot` beside $PARLEY_SERVER_BIN (`make test`
builds every product), else `swift build --product parley-bot` in $PARLEY_BUILD_PATH (as
conftest builds the relay). Chromium: `chromium` on PATH, or $PARLEY_CHROMIUM_BIN.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional

import pytest

from browser import Browser, Page, chromium_binary
from conftest import REPO, http_get
import parley_client as pc

pytestmark = pytest.mark.time_limit(240)

# A favicon the page does not ship is Chromium's own request, not the page's: not a
# console error of the page.
IGNORED_LOAD_ERRORS = re.compile(r"/favicon\.ico\b")


# ---------------------------------------------------------------------------
# set-up: the page, chromium, the bot, the screenshot folder


# The folder the relay serves: the repository's web/ (the relay's default when it runs in
# the repository), or $PARLEY_WEB_ROOT, which the relay reads too.
WEB_ROOT = Path(os.environ.get("PARLEY_WEB_ROOT") or REPO / "web")


def require_page() -> None:
    missing = [str(WEB_ROOT / p) for p in ("index.html", "js/app.js") if not (WEB_ROOT / p).exists()]
    if missing:
        pytest.fail(f"the web client is missing: {', '.join(missing)}")
    if chromium_binary() is None:
        pytest.fail("no chromium (scripts/setup installs Debian's chromium; or set PARLEY_CHROMIUM_BIN)")


_SHOTS: Optional[Path] = None


def shots_dir() -> Path:
    global _SHOTS
    if _SHOTS is None:
        explicit = os.environ.get("PARLEY_WEB_SHOTS")
        _SHOTS = Path(explicit) if explicit else Path(f"/tmp/parley-web-shots-{time.strftime('%Y%m%d-%H%M%S')}")
        _SHOTS.mkdir(parents=True, exist_ok=True)
    return _SHOTS


async def shot(page: Page, name: str) -> str:
    return await page.screenshot(str(shots_dir() / f"{name}.png"))


_BOT: Optional[str] = None


def bot_binary() -> str:
    global _BOT
    if _BOT is not None:
        return _BOT
    explicit = os.environ.get("PARLEY_BOT_BIN")
    if explicit:
        if not os.access(explicit, os.X_OK):
            pytest.fail(f"PARLEY_BOT_BIN={explicit} is not an executable")
        _BOT = explicit
        return _BOT
    if os.environ.get("PARLEY_SERVER_BIN"):
        # a given relay binary: its build made the bot beside it (`make test` builds all)
        beside = Path(os.environ["PARLEY_SERVER_BIN"]).parent / "parley-bot"
    else:
        # built from the sources like the relay (conftest), in the same scratch path
        scratch = os.environ.get("PARLEY_BUILD_PATH", ".build")
        scratch_path = Path(scratch) if os.path.isabs(scratch) else REPO / scratch
        for attempt in range(3):
            done = subprocess.run(["swift", "build", "--scratch-path", str(scratch_path), "--product", "parley-bot"],
                                  cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if done.returncode == 0:
                break
            if attempt == 2:
                pytest.fail("swift build --product parley-bot failed:\n" + done.stdout[-4000:])
            time.sleep(60)   # others may be editing sources right now
        beside = scratch_path / "debug" / "parley-bot"
    if not os.access(beside, os.X_OK):
        pytest.fail(f"no parley-bot at {beside} (build it, or set PARLEY_BOT_BIN)")
    _BOT = str(beside)
    return _BOT


class Bot:
    """One `parley-bot` process; its protocol log (stderr) goes to a file we read."""

    def __init__(self, relay, username: str, folder: str, say: tuple[str, ...] = ()):
        self.username = username
        self.identity = os.path.join(folder, f"{username}.identity.json")
        self.log_path = os.path.join(folder, f"{username}.log")
        args = [bot_binary(), "--server", relay.url, "--username", username, "--identity", self.identity]
        for line in say:
            args += ["--say", line]
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, cwd=folder, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()

    def log(self) -> str:
        return Path(self.log_path).read_text(errors="replace")

    async def wait_log(self, pattern: str, timeout: float = 20.0, start: int = 0) -> re.Match:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            found = regex.search(self.log(), start)
            if found:
                return found
            if self.proc.poll() is not None:
                raise AssertionError(f"parley-bot exited ({self.proc.returncode}) waiting for {pattern!r}:\n"
                                     + self.log()[-3000:])
            if time.monotonic() > deadline:
                raise AssertionError(f"parley-bot did not log {pattern!r} in {timeout} s:\n" + self.log()[-3000:])
            await asyncio.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def user(self) -> pc.User:
        """The bot's account for the independent Python client (its own identity file)."""
        from cryptography.hazmat.primitives import serialization
        contents = json.loads(Path(self.identity).read_text())
        key = serialization.load_pem_private_key(contents["private_key"].encode(), password=None)
        return pc.User(contents["username"], pc.Identity(key), contents["user_id"], contents["session"])


# ---------------------------------------------------------------------------
# the page, through its DOM contract


async def state(page: Page) -> dict:
    return await page.evaluate("window.parleyTest.state()")


def js(value) -> str:
    return json.dumps(value)


async def signup(page: Page, username: str, shots: Optional[str] = None) -> str:
    """Signs up in the page; returns the passkey shown once (kept by the test, never printed)."""
    await page.wait_visible("#screen-welcome", timeout=20)
    if shots:
        await shot(page, f"{shots}-welcome")
    await page.type("#signup-username", username)
    await page.click("#signup-submit")
    await page.wait_visible("#screen-passkey", timeout=30)
    passkey = await page.wait_for("(() => { const p = document.querySelector('#passkey');"
                                  " return p && p.textContent.trim(); })()", what="#passkey filled")
    # §5: 32 random bytes, base64url without padding
    # (assertions on the passkey compare booleans, so a failure never prints it)
    well_formed = re.fullmatch(r"[A-Za-z0-9_-]{43}", passkey) is not None
    assert well_formed, "the passkey is not 32 bytes of unpadded base64url"
    assert not await page.visible("#screen-welcome") and not await page.visible("#screen-chat")
    if shots:
        await shot(page, f"{shots}-passkey")
    await page.click("#passkey-copy")
    copied = await page.wait_for("navigator.clipboard.readText()", what="the passkey on the clipboard")
    same = copied.strip() == passkey
    assert same, "#passkey-copy did not copy the passkey"
    await page.click("#passkey-done")
    await page.wait_visible("#screen-chat", timeout=20)
    await page.wait_for("window.parleyTest.state().connected === true", timeout=20, what="connected")
    assert (await page.text("#me")).strip() == username
    assert await page.attribute("#status", "data-state") == "connected"
    fingerprint = (await page.text("#my-fingerprint")).strip()
    assert len(base64.b64decode(fingerprint)) == 32, fingerprint
    st = await state(page)
    assert st["screen"] == "chat" and st["username"] == username and pc.is_uuid(st["userId"]), st
    exposed = passkey in json.dumps(st)
    assert not exposed, "parleyTest.state() exposes the passkey"
    if shots:
        await shot(page, f"{shots}-chat-empty")
    return passkey


async def create_channel(page: Page, name: str, members: list[str]) -> str:
    await page.type("#new-channel-name", name)
    await page.type("#new-channel-members", ", ".join(members))
    await page.click("#new-channel-submit")
    channel_id = await page.wait_for(
        f"(() => {{ const s = window.parleyTest.state(); const c = s.channels.find(c => c.name === {js(name)});"
        f" return c && s.channelId === c.channelId && c.channelId; }})()",
        timeout=20, what=f"channel {name} created and selected")
    await page.wait_for(f"document.querySelector('#channel-list li[data-channel-id={js(channel_id)}]') !== null")
    return channel_id


async def select_channel(page: Page, channel_id: str, timeout: float = 20) -> None:
    selector = f"#channel-list li[data-channel-id={js(channel_id)}]"
    await page.wait_for(f"document.querySelector({js(selector)}) !== null", timeout, what=f"{selector} listed")
    if (await state(page)).get("channelId") != channel_id:
        await page.click(selector)
    await page.wait_for(f"window.parleyTest.state().channelId === {js(channel_id)}", timeout, what="channel selected")


async def send(page: Page, text: str, *, enter: bool = False) -> None:
    await page.type("#composer-text", text)
    if enter:
        await page.press("Enter")
    else:
        await page.click("#composer-send")
    # sent: the composer empties
    await page.wait_for("document.querySelector('#composer-text').value === ''", what="composer emptied")


async def wait_message(page: Page, body: str, timeout: float = 20) -> dict:
    """Waits until the selected channel shows `body`; returns its state entry."""
    found = await page.wait_for(
        f"window.parleyTest.state().messages.find(m => m.body === {js(body)})",
        timeout, what=f"message {body!r}")
    return found


async def members_shown(page: Page) -> dict[str, dict]:
    return {m["userId"]: m for m in await page.evaluate("""Array.from(document.querySelectorAll('#members li[data-user-id]'))
        .map(li => ({userId: li.dataset.userId,
                     username: li.querySelector('.username')?.textContent.trim(),
                     fingerprint: li.querySelector('.fingerprint')?.textContent.trim(),
                     role: li.querySelector('.role')?.textContent.trim(),
                     removable: !!li.querySelector('button.remove-member')}))""")}


async def check_all_verified(page: Page, who: str) -> list[dict]:
    """Every message shown is verified, in the DOM and in parleyTest; they agree; seqs
    ascend without repeats. Returns the state's messages."""
    both = await page.evaluate("""({messages: window.parleyTest.state().messages,
        dom: Array.from(document.querySelectorAll('#messages li.message')).map(li => ({
            seq: Number(li.dataset.seq), senderId: li.dataset.senderId, verified: li.dataset.verified,
            sender: li.querySelector('.sender')?.textContent.trim(),
            body: li.querySelector('.body')?.textContent, ts: !!li.querySelector('time.ts')}))})""")
    messages, dom = both["messages"], both["dom"]
    assert [m["seq"] for m in dom] == [m["seq"] for m in messages], (who, dom, messages)
    for shown, known in zip(dom, messages):
        assert shown["verified"] == "true" and known["verified"] is True, (who, shown, known)
        assert shown["body"] == known["body"] and shown["senderId"] == known["senderId"], (who, shown, known)
        assert shown["ts"], (who, "no time.ts", shown)
    seqs = [m["seq"] for m in messages]
    assert seqs == sorted(set(seqs)), (who, "seqs not ascending once each", seqs)
    return messages


def no_problems(page: Page, who: str) -> None:
    errors = [e for e in page.console_errors if not IGNORED_LOAD_ERRORS.search(e)]
    assert not errors, f"{who}: console errors: {errors}"
    assert not page.csp_violations, f"{who}: CSP violations: {page.csp_violations}"


def fingerprint_of_spki(spki_b64: str) -> str:
    return base64.b64encode(hashlib.sha256(base64.b64decode(spki_b64)).digest()).decode()


# ---------------------------------------------------------------------------
# the independent check: the relay's history, decrypted and verified by parley_client


async def independent_history(relay, bot: Bot, channel_id: str) -> list[dict]:
    """Every message of the channel the bot can see, checked by the Python client: key
    record signature by its creator, unwrapped with the bot's private key, digest, AES-GCM,
    the sender's PSS signature. Returns [{seq, sender_id, key_id, body}]."""
    user = bot.user()
    conn = await pc.connect_as(relay.url, user)
    try:
        members = await conn.ok("channel.members", channel_id=channel_id)
        spki = {m["user_id"]: m["public_key"] for m in members["members"]}
        out, after, keys = [], 0, {}
        while True:
            page = await conn.ok("messages", channel_id=channel_id, after=after, limit=200)
            for message in page["messages"]:
                if message["key_id"] not in keys:
                    record = (await conn.ok("key", channel_id=channel_id, key_id=message["key_id"]))["key"]
                    assert record is not None, f"no copy of key {message['key_id']} for the bot"
                    keys[message["key_id"]] = (pc.unwrap_key(user.identity, record, spki[record["creator_id"]]),
                                               record)
                body = pc.decrypt_message(keys[message["key_id"]][0], message, spki[message["sender_id"]])
                out.append({"seq": message["seq"], "sender_id": message["sender_id"],
                            "key_id": message["key_id"], "body": body,
                            "membership_version": keys[message["key_id"]][1]["membership_version"]})
            if not page["has_more"]:
                return out
            after = page["messages"][-1]["seq"]
    finally:
        await conn.close()


# ---------------------------------------------------------------------------
# a room: two browser users and the bot


class Room:
    def __init__(self, relay, browser: Browser, folder: str, tag: str):
        self.relay, self.browser, self.folder, self.tag = relay, browser, folder, tag
        self.a_name = pc.random_username("wa")
        self.b_name = pc.random_username("wb")
        self.bot_name = pc.random_username("wbot")
        self.channel_name = f"web-{tag}"
        self.timings: dict[str, float] = {}

    async def open(self, *, with_bot: bool = True, bot_says: tuple[str, ...] = (), shots: bool = False) -> "Room":
        self.bot = None
        if with_bot:
            self.bot = Bot(self.relay, self.bot_name, self.folder, bot_says)
            await self.bot.wait_log(r"signed up as " + re.escape(self.bot_name), timeout=30)
            await self.bot.wait_log(r"ready: waiting for commands", timeout=30)
        started = time.monotonic()
        self.a = await self.browser.new_page(self.relay.http + "/")
        self.a_passkey = await signup(self.a, self.a_name, shots="a" if shots else None)
        self.timings["signup_s"] = time.monotonic() - started
        self.b = await self.browser.new_page(self.relay.http + "/")
        self.b_passkey = await signup(self.b, self.b_name)
        self.a_id = (await state(self.a))["userId"]
        self.b_id = (await state(self.b))["userId"]
        members = [self.b_name] + ([self.bot_name] if with_bot else [])
        self.channel_id = await create_channel(self.a, self.channel_name, members)
        await select_channel(self.b, self.channel_id)
        if with_bot:
            await self.bot.wait_log(r"subscribed to #" + re.escape(self.channel_name), timeout=20)
        return self

    def close(self) -> None:
        if self.bot is not None:
            self.bot.stop()


async def with_room(relay, tag: str, body, **kwargs):
    """Runs body(room) with a browser, a bot and a temp folder, all cleaned up."""
    require_page()
    with tempfile.TemporaryDirectory(prefix="pweb-") as folder:
        async with Browser.launch() as browser:
            room = Room(relay, browser, folder, tag)
            try:
                await room.open(**kwargs)
                await body(room)
            except BaseException:
                if getattr(room, "bot", None) is not None:
                    print(f"\nparley-bot log (tail):\n{room.bot.log()[-2500:]}")
                for name in ("a", "b"):
                    page = getattr(room, name, None)
                    if page is not None:
                        try:
                            await shot(page, f"failure-{tag}-{name}")
                        except Exception:
                            pass
                        print(f"page {name} console: {page.console[-20:]}; problems: {page.problems()}")
                raise
            finally:
                room.close()


# ---------------------------------------------------------------------------
# 1. the page's HTTP answer and a clean load

CSP_REQUIRED = {
    "default-src": {"'none'"},
    "script-src": {"'self'"},
    "base-uri": {"'none'"},
    "frame-ancestors": {"'none'"},
}


def parse_csp(header: str) -> dict[str, list[str]]:
    out = {}
    for part in header.split(";"):
        words = part.split()
        if words:
            out[words[0].lower()] = words[1:]
    return out


def referenced_files(html: str) -> list[str]:
    return re.findall(r"""<(?:script|link)\b[^>]*?\b(?:src|href)\s*=\s*["']([^"']+)["']""", html, re.I)


def imports_of(source: str) -> list[str]:
    return re.findall(r"""(?:^|[\s;])(?:import|export)\b[^'"`;]*?\bfrom\s*['"]([^'"]+)['"]"""
                      r"""|(?:^|[\s;])import\s*['"]([^'"]+)['"]""", source, re.M)


async def test_page_headers_no_inline_script_and_a_clean_load(relay):
    require_page()
    status, headers, body = http_get(relay.http + "/")
    assert status == 200, (status, body[:200])
    assert headers.get("content-type", "").startswith("text/html"), headers
    assert headers.get("x-content-type-options") == "nosniff", headers
    assert headers.get("referrer-policy") == "no-referrer", headers
    csp = parse_csp(headers.get("content-security-policy", ""))
    for directive, allowed in CSP_REQUIRED.items():
        assert set(csp.get(directive, [])) == allowed, (directive, csp)
    for directive, sources in csp.items():
        for source in sources:
            assert source.lower() not in ("'unsafe-inline'", "'unsafe-eval'", "*", "http:", "https:",
                                          "'unsafe-hashes'", "'wasm-unsafe-eval'"), (directive, source)
    assert "style-src" in csp and "'unsafe-inline'" not in csp["style-src"], csp
    assert http_get(relay.http + "/index.html")[2] == body

    html = body.decode("utf-8")
    for attributes, inner in re.findall(r"<script\b([^>]*)>(.*?)</script\s*>", html, re.I | re.S):
        assert re.search(r"\bsrc\s*=", attributes) and not inner.strip(), f"inline script: {attributes} {inner[:80]}"
    assert not re.search(r"<style\b", html, re.I), "a <style> block"
    for tag in re.findall(r"<[a-zA-Z][^>]*>", html):
        assert not re.search(r"\sstyle\s*=", tag, re.I), f"an inline style attribute: {tag}"
        assert not re.search(r"\son[a-z]+\s*=", tag, re.I), f"an inline event handler: {tag}"
        assert not re.search(r"=\s*[\"']?\s*javascript:", tag, re.I), f"a javascript: URL: {tag}"

    # Every script, style and module the page loads: served with its type and nosniff.
    seen, queue = set(), [p for p in referenced_files(html) if p.startswith("/") or not re.match(r"\w+:", p)]
    queue = ["/" + p.lstrip("./") if not p.startswith("/") else p for p in queue]
    while queue:
        path = queue.pop()
        if path in seen:
            continue
        seen.add(path)
        status, headers, source = http_get(relay.http + path)
        assert status == 200, (path, status)
        assert headers.get("x-content-type-options") == "nosniff", (path, headers)
        assert "content-security-policy" in headers, (path, headers)
        if path.endswith((".js", ".mjs")):
            assert headers["content-type"].startswith("text/javascript"), (path, headers["content-type"])
            base = path.rsplit("/", 1)[0]
            for a, b in imports_of(source.decode("utf-8")):
                target = a or b
                if target.startswith("./") or target.startswith("../"):
                    parts = (base + "/" + target).split("/")
                    resolved = []
                    for part in parts:
                        if part == "..":
                            resolved.pop()
                        elif part not in (".", ""):
                            resolved.append(part)
                    queue.append("/" + "/".join(resolved))
                elif target.startswith("/"):
                    queue.append(target)
        elif path.endswith(".css"):
            assert headers["content-type"].startswith("text/css"), (path, headers["content-type"])

    # Nothing outside web/ is reachable; unknown paths are 404.
    sql = (REPO / "migrations" / "0001_initial.sql").read_bytes()
    traversals = ["/../migrations/0001_initial.sql", "/%2e%2e/migrations/0001_initial.sql",
                  "/..%2fmigrations%2f0001_initial.sql", "/js/..%2f..%2fmigrations/0001_initial.sql",
                  "/%2e%2e%2fPackage.swift", "/%2e%2e/%2e%2e/etc/passwd", "//etc/passwd",
                  "/web/index.html", "/.git/HEAD", "/%2e%2e/"]
    refused = []
    for path in traversals:
        status, _, answer = raw_get(relay.port, path)
        assert answer != sql and b"root:" not in answer and b"ref: refs/" not in answer, (path, status)
        # `/%2e%2e/` is the root folder once normalised: the index at most, nothing above it
        assert status in (400, 403, 404) or (status == 200 and answer == body), (path, status, answer[:80])
        refused.append(f"{path} {status}")
    for path in ("/nope", "/js/nope.js", "/index.htm", "/ws/x"):
        assert http_get(relay.http + path)[0] == 404, path

    # A clean load: no console errors, no CSP violations, no failed loads.
    async with Browser.launch() as browser:
        page = await browser.new_page(relay.http + "/")
        await page.wait_visible("#screen-welcome", timeout=20)
        await page.wait_for("typeof window.parleyTest === 'object' && window.parleyTest.state().screen === 'welcome'",
                            what="parleyTest on the welcome screen")
        for hidden in ("#screen-passkey", "#screen-chat"):
            assert not await page.visible(hidden), hidden
        await asyncio.sleep(1.0)   # late errors (the WebSocket, module loads)
        await shot(page, "welcome")
        no_problems(page, "welcome")
        failed = [f for f in page.failed_requests if not IGNORED_LOAD_ERRORS.search(f)]
        assert not failed, failed
        inline = await page.evaluate("Array.from(document.scripts).filter(s => !s.src).length")
        assert inline == 0
    print(f"\nscreenshots: {shots_dir()}")
    print(f"figures: {len(seen)} page files checked (type, nosniff, CSP), {len(traversals)} traversal paths refused "
          f"({'; '.join(refused)}), 0 console errors, 0 CSP violations")


def raw_get(port: int, path: str) -> tuple[int, dict, bytes]:
    """GET with the path exactly as given (urllib would normalise it)."""
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


async def test_the_relay_admits_its_own_page_under_an_origin_allowlist(own_relay):
    """With `--allowed-origins` set to other sites, the page the relay serves still connects
    (its origin is the relay's own); a page of another origin is refused at the handshake."""
    require_page()
    import http.server
    import threading
    relay = own_relay("--allowed-origins", "https://chat.example.com").start()
    with tempfile.TemporaryDirectory(prefix="pweb-other-") as empty:
        Path(empty, "index.html").write_text("<!doctype html><title>elsewhere</title>")
        class Quiet(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=empty, **kwargs)

            def log_message(self, *args):
                pass

        other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
        thread = threading.Thread(target=other.serve_forever, daemon=True)
        thread.start()
        try:
            async with Browser.launch() as browser:
                page = await browser.new_page(relay.http + "/")
                await signup(page, pc.random_username("wo"))
                no_problems(page, "own page")
                elsewhere = await browser.new_page(f"http://127.0.0.1:{other.server_address[1]}/")
                outcome = await elsewhere.evaluate(f"""new Promise(resolve => {{
                    const ws = new WebSocket({js(relay.url)}, 'parley.v1');
                    ws.onopen = () => {{ ws.close(); resolve('open'); }};
                    ws.onclose = (e) => resolve('closed ' + e.code);
                    setTimeout(() => resolve('timeout'), 8000);
                }})""", timeout=15)
                assert outcome.startswith("closed"), outcome
        finally:
            other.shutdown()
            other.server_close()
    refusals = [line for line in relay.log_text().splitlines() if "origin" in line and "127.0.0.1:" in line
                and "refus" in line.lower()]
    assert refusals, relay.log_text()[-2000:]
    print(f"\nfigures: under --allowed-origins https://chat.example.com the relay's own page signed up and "
          f"connected; a page on another origin got {outcome!r}")


# ---------------------------------------------------------------------------
# 2. two browsers and a bot: messages both ways, verified on every side


async def test_two_browsers_and_a_bot_exchange_verified_messages(relay):
    figures = {}

    async def body(room: Room):
        a, b, bot = room.a, room.b, room.bot
        await shot(a, "a-channel-created")
        # the members panel: everyone with a fingerprint; the owner may remove the others
        shown = await a.wait_for(f"document.querySelectorAll('#members li[data-user-id]').length === 3", what="3 members")
        assert shown
        members = await members_shown(a)
        assert {m["username"] for m in members.values()} == {room.a_name, room.b_name, room.bot_name}, members
        b_fingerprint = (await b.text("#my-fingerprint")).strip()
        assert members[room.b_id]["fingerprint"] == b_fingerprint, members
        assert not members[room.a_id]["removable"] and members[room.b_id]["removable"], members
        bot_fingerprint = re.search(r"key fingerprint (\S+?)\)", bot.log()).group(1)
        bot_member = next(m for m in members.values() if m["username"] == room.bot_name)
        assert bot_member["fingerprint"] == bot_fingerprint, (bot_member, bot_fingerprint)
        assert (await a.text("#channel-title")).strip().lstrip("#") == room.channel_name

        # the bot checked the browser-signed membership chain
        await bot.wait_log(r"membership chain of #" + re.escape(room.channel_name) + r" verified: ")

        # A → B (button), B → A (Enter)
        started = time.monotonic()
        await send(a, "hello from A")
        await wait_message(b, "hello from A")
        figures["a_to_b_ms"] = (time.monotonic() - started) * 1000
        await send(b, "hello from B", enter=True)
        await wait_message(a, "hello from B")

        # browser → bot: the bot decrypts and verifies A's message, then answers it;
        # bot → browsers: its answer is shown verified on both
        started = time.monotonic()
        await send(a, "!echo echoed for A")
        await bot.wait_log(r"signature of " + re.escape(room.a_name) + r" checked against the pinned key: "
                           + re.escape(room.a_name) + r": \"!echo echoed for A\"")
        echoed_a = await wait_message(a, "echoed for A")
        figures["bot_round_trip_ms"] = (time.monotonic() - started) * 1000
        echoed_b = await wait_message(b, "echoed for A")
        assert echoed_a["senderId"] == echoed_b["senderId"] not in (room.a_id, room.b_id)
        await send(b, "!ping")
        await bot.wait_log(r"checked against the pinned key: " + re.escape(room.b_name) + r": \"!ping\"")
        await wait_message(a, "pong")
        await wait_message(b, "pong")
        await send(a, "!members")
        listed = await wait_message(b, await bot_answer(bot, "members: "))
        assert all(name in listed["body"] for name in (room.a_name, room.b_name, room.bot_name)), listed
        assert f"{room.a_name} (owner)" in listed["body"], listed
        # the --say line, sent when the bot joined
        await wait_message(a, "hello from the bot")
        await wait_message(b, "hello from the bot")

        # let every side catch up, then compare all three views
        count = 9
        for page in (a, b):
            await page.wait_for(f"window.parleyTest.state().messages.length >= {count}", what=f"{count} messages")
        await asyncio.sleep(0.5)
        a_messages = await check_all_verified(a, "A")
        b_messages = await check_all_verified(b, "B")
        assert [(m["seq"], m["senderId"], m["body"]) for m in a_messages] == \
               [(m["seq"], m["senderId"], m["body"]) for m in b_messages]
        wire = await independent_history(room.relay, bot, room.channel_id)
        assert [(m["seq"], m["sender_id"], m["body"]) for m in wire] == \
               [(m["seq"], m["senderId"], m["body"]) for m in a_messages], (wire, a_messages)
        refused = re.findall(r"REFUSED: .*", bot.log())
        assert not refused, refused
        # the bot saw every browser message decrypted and verified
        for entry in wire:
            if entry["sender_id"] in (room.a_id, room.b_id):
                assert re.search(rf"message #{entry['seq']} in #\S+: decrypted with key", bot.log()), entry
        # senders' names in the DOM
        names = await a.evaluate("Array.from(document.querySelectorAll('#messages li.message .sender'))"
                                 ".map(e => e.textContent.trim())")
        assert set(names) == {room.a_name, room.b_name, room.bot_name}, names
        await shot(a, "a-conversation")
        await shot(b, "b-conversation")

        # unread counts: a second channel, written to while B looks at the first
        side = await create_channel(a, "web-side", [room.b_name])
        assert (await state(a))["channelId"] == side
        side_item = f"#channel-list li[data-channel-id={js(side)}]"
        await b.wait_for(f"document.querySelector({js(side_item)}) !== null", what="the side channel on B's list")
        assert (await state(b))["channelId"] == room.channel_id
        for i in range(3):
            await send(a, f"side {i}")
        await b.wait_for(f"document.querySelector({js(side_item + ' .unread')})?.dataset.count === '3'",
                         what="3 unread on the side channel")
        assert (await b.text(side_item + " .unread")).strip() == "3"
        assert next(c for c in (await state(b))["channels"] if c["channelId"] == side)["unread"] == 3
        main_unread = f"#channel-list li[data-channel-id={js(room.channel_id)}] .unread"
        assert (await b.attribute(main_unread, "data-count")) in ("0", None)
        assert not (await b.text(main_unread) or "").strip()
        await shot(b, "b-unread")
        await b.click(side_item)
        await wait_message(b, "side 2")
        await b.wait_for(f"document.querySelector({js(side_item + ' .unread')}).dataset.count === '0'",
                         what="read: the count back to 0")
        assert not (await b.text(side_item + " .unread")).strip()
        assert [m["body"] for m in await check_all_verified(b, "B")] == [f"side {i}" for i in range(3)]
        no_problems(a, "A")
        no_problems(b, "B")
        figures["messages"] = len(wire)
        figures["timings"] = room.timings

    await with_room(relay, "exchange", body, bot_says=("hello from the bot",), shots=True)
    print(f"\nscreenshots: {shots_dir()}")
    print(f"figures: 2 browser users + parley-bot, {figures['messages']} messages each verified in both browsers, "
          f"by the bot and by the independent Python client; signup (key generation, challenge) "
          f"{figures['timings']['signup_s']:.2f} s; A→B shown in {figures['a_to_b_ms']:.0f} ms; "
          f"A → bot → both browsers {figures['bot_round_trip_ms']:.0f} ms")


async def bot_answer(bot: Bot, prefix: str, timeout: float = 20) -> str:
    found = await bot.wait_log(r"sent #\d+ in #\S+: encrypted with key [0-9a-fA-F]+, signed with my key: \""
                               + re.escape(prefix) + r"(.*)\"\n", timeout)
    return prefix + found.group(1)


# ---------------------------------------------------------------------------
# 3. a rotation from the browser is used by the bot


async def test_key_rotation_from_the_browser_is_used_by_the_bot(relay):
    figures = {}

    async def body(room: Room):
        a, b, bot = room.a, room.b, room.bot
        await send(a, "before the rotation")
        await wait_message(b, "before the rotation")
        old = (await state(a))["keyId"]
        assert pc.is_uuid(old), old
        assert (await state(b))["keyId"] == old

        started = time.monotonic()
        await a.click("#rotate-key")
        new = await a.wait_for(f"(() => {{ const k = window.parleyTest.state().keyId; return k && k !== {js(old)} && k; }})()",
                               timeout=20, what="a new key id")
        figures["rotate_ms"] = (time.monotonic() - started) * 1000
        assert pc.is_uuid(new), new
        # the bot fetched the browser's key record and verified its signature by A
        await bot.wait_log(rf"key {re.escape(new[:8])} of #\S+ fetched: signature by {re.escape(room.a_name)}'s "
                           r"pinned key verified", timeout=20)
        mark = len(bot.log())
        await send(b, "!echo after the rotation")
        await wait_message(a, "after the rotation")
        sent = await bot.wait_log(r"sent #(\d+) in #\S+: encrypted with key ([0-9a-fA-F]+), signed with my key: "
                                  r"\"after the rotation\"", start=mark)
        bot_seq, bot_key = int(sent.group(1)), sent.group(2)
        assert new.lower().startswith(bot_key.lower()), (new, bot_key)
        await wait_message(b, "after the rotation")
        assert (await state(b))["keyId"] == new
        assert (await state(a))["keyId"] == new

        wire = {m["seq"]: m for m in await independent_history(room.relay, bot, room.channel_id)}
        assert wire[bot_seq]["key_id"] == new and wire[bot_seq]["body"] == "after the rotation", wire[bot_seq]
        before = next(m for m in wire.values() if m["body"] == "before the rotation")
        assert before["key_id"] == old
        b_message = next(m for m in wire.values() if m["body"] == "!echo after the rotation")
        assert b_message["key_id"] == new, b_message
        await check_all_verified(a, "A")
        await check_all_verified(b, "B")
        await shot(a, "a-after-rotation")
        no_problems(a, "A")
        no_problems(b, "B")
        figures["old"], figures["new"], figures["seq"] = old[:8], new[:8], bot_seq

    await with_room(relay, "rotate", body)
    print(f"\nscreenshots: {shots_dir()}")
    print(f"figures: rotation from the browser {figures['rotate_ms']:.0f} ms (key {figures['old']} → {figures['new']}); "
          f"the bot's message #{figures['seq']} used key {figures['new']} (its log and the relay's history agree)")


# ---------------------------------------------------------------------------
# 4. a reload resumes without loss


async def test_reload_and_reconnect_resume_without_loss(relay):
    figures = {}

    async def body(room: Room):
        a, b = room.a, room.b
        before = [f"before reload {i}" for i in range(3)]
        for text in before:
            await send(a, text)
        await wait_message(b, before[-1])

        started = time.monotonic()
        reloaded = asyncio.create_task(b.reload(timeout=30))
        during = [f"during reload {i}" for i in range(4)]
        for text in during:
            await send(a, text)
        await reloaded
        screen = await b.wait_for("window.parleyTest && window.parleyTest.state().screen !== undefined &&"
                                  " ['welcome', 'chat'].includes(window.parleyTest.state().screen) &&"
                                  " window.parleyTest.state().screen", timeout=20, what="a screen after reload")
        if screen != "chat":
            # the page asks for the passkey again: log in with this browser's stored key
            figures["resumed_by"] = "login with the passkey"
            await b.wait_visible("#screen-welcome")
            await b.type("#login-username", room.b_name)
            await b.type("#login-passkey", room.b_passkey)
            await b.click("#login-submit")
            await b.wait_visible("#screen-chat", timeout=20)
        else:
            figures["resumed_by"] = "the stored session"
        await b.wait_for("window.parleyTest.state().connected === true", timeout=20, what="connected after reload")
        await select_channel(b, room.channel_id)
        after = ["after reload"]
        await send(a, after[0])
        await wait_message(b, after[0])
        figures["resume_s"] = time.monotonic() - started

        expected = before + during + after
        await b.wait_for(f"window.parleyTest.state().messages.length >= {len(expected)}", what="every message")
        await asyncio.sleep(1.0)   # duplicates, if any, would arrive by now
        b_messages = await check_all_verified(b, "B")
        bodies = [m["body"] for m in b_messages]
        assert bodies == expected, bodies
        a_messages = await check_all_verified(a, "A")
        assert [(m["seq"], m["body"]) for m in a_messages] == [(m["seq"], m["body"]) for m in b_messages]
        await send(b, "B is back")
        await wait_message(a, "B is back")
        await shot(b, "b-after-reload")

        # B closes the tab's page (about:blank), A goes on; B opens the page again
        await b.goto("about:blank")
        away = [f"while B was away {i}" for i in range(3)]
        for text in away:
            await send(a, text)
        await b.goto(room.relay.http + "/")
        await b.wait_visible("#screen-chat", timeout=20)
        await select_channel(b, room.channel_id)
        await wait_message(b, away[-1])

        # the connection drops (no reload): B's page reconnects and resumes with `after`
        opened = b.websockets_opened
        await b.set_offline(True)
        assert await b.close_websockets() >= 1
        await b.wait_for("document.querySelector('#status').dataset.state !== 'connected'",
                         what="B's status leaves connected")
        dropped_state = await b.attribute("#status", "data-state")
        gap = [f"while B was offline {i}" for i in range(3)]
        for text in gap:
            await send(a, text)
        await asyncio.sleep(0.5)
        assert all(m["body"] not in gap for m in (await state(b))["messages"])
        await b.set_offline(False)
        started = time.monotonic()
        await b.wait_for("window.parleyTest.state().connected === true", timeout=40, what="B reconnected")
        await wait_message(b, gap[-1], timeout=20)
        figures["reconnect_s"] = time.monotonic() - started
        assert b.websockets_opened > opened
        await send(b, "B again")
        await wait_message(a, "B again")

        expected += ["B is back"] + away + gap + ["B again"]
        await asyncio.sleep(1.0)
        b_messages = await check_all_verified(b, "B")
        assert [m["body"] for m in b_messages] == expected, [m["body"] for m in b_messages]
        a_messages = await check_all_verified(a, "A")
        assert [(m["seq"], m["body"]) for m in a_messages] == [(m["seq"], m["body"]) for m in b_messages]
        no_problems(a, "A")
        # B's console may hold the failed handshakes of the offline spell, nothing else
        offline = re.compile(r"WebSocket connection to .* failed|ERR_INTERNET_DISCONNECTED")
        errors = [e for e in b.console_errors if not IGNORED_LOAD_ERRORS.search(e) and not offline.search(e)]
        assert not errors and not b.csp_violations, (errors, b.csp_violations)
        figures["messages"] = len(expected)
        figures["dropped_state"] = dropped_state

        # log out, then in again with the passkey (the key stays in this browser)
        await b.click("#logout")
        await b.wait_visible("#screen-welcome", timeout=20)
        assert (await state(b))["screen"] == "welcome"
        await b.type("#login-username", room.b_name)
        wrong = pc.b64url_nopad(os.urandom(32))
        await b.type("#login-passkey", wrong)
        await b.click("#login-submit")
        await b.wait_for("document.querySelector('#welcome-error').textContent.trim() !== ''", timeout=20,
                         what="the error of a wrong passkey")
        assert await b.visible("#screen-welcome") and not await b.visible("#screen-chat")
        await b.type("#login-passkey", room.b_passkey)
        await b.click("#login-submit")
        await b.wait_visible("#screen-chat", timeout=30)
        await b.wait_for("window.parleyTest.state().connected === true", timeout=20, what="connected after login")
        await select_channel(b, room.channel_id)
        await b.wait_for(f"window.parleyTest.state().messages.length >= {len(expected)}", what="history after login")
        assert [m["body"] for m in await check_all_verified(b, "B")] == expected
        exposed = room.b_passkey in json.dumps(await state(b))
        assert not exposed, "parleyTest.state() exposes the passkey"

    await with_room(relay, "reload", body, with_bot=False)
    print(f"\nscreenshots: {shots_dir()}")
    print(f"figures: B reloaded while A sent 4 messages (resumed by {figures['resumed_by']} in "
          f"{figures['resume_s']:.2f} s), left and reopened the page while A sent 3, lost its connection "
          f"(status {figures['dropped_state']}) while A sent 3 (back in {figures['reconnect_s']:.1f} s); "
          f"{figures['messages']} messages shown once each, in order, all verified; logged out and in with the passkey")


# ---------------------------------------------------------------------------
# 5. history: older pages on #load-older and on scrolling to the top


async def test_history_pages_back(relay):
    figures = {}

    async def body(room: Room):
        a, b = room.a, room.b
        count = 65
        started = time.monotonic()
        for i in range(count):
            await send(a, f"m{i:02d}", enter=(i % 2 == 1))
        figures["send_s"] = time.monotonic() - started
        await wait_message(b, f"m{count - 1:02d}", timeout=30)
        expected = [f"m{i:02d}" for i in range(count)]
        await asyncio.sleep(0.5)
        assert [m["body"] for m in await check_all_verified(b, "B")] == expected

        # a fresh page shows the newest page only; #load-older brings the rest, once each
        await b.reload()
        await b.wait_visible("#screen-chat", timeout=20)
        await select_channel(b, room.channel_id)
        await wait_message(b, expected[-1])
        first = [m["body"] for m in await check_all_verified(b, "B")]
        assert first == expected[-len(first):] and len(first) < count, first
        figures["first_page"] = len(first)
        await b.wait_visible("#load-older")
        await shot(b, "b-history-first-page")
        await b.click("#load-older")
        await b.wait_for(f"window.parleyTest.state().messages.length === {count}", what="all messages after load-older")
        assert [m["body"] for m in await check_all_verified(b, "B")] == expected
        await b.wait_for("document.querySelector('#load-older').hidden || "
                         "document.querySelector('#load-older').closest('[hidden]') !== null",
                         what="#load-older hidden at the start of the channel")

        # the same by scrolling up with the mouse wheel
        await a.reload()
        await a.wait_visible("#screen-chat", timeout=20)
        await select_channel(a, room.channel_id)
        await wait_message(a, expected[-1])
        assert len((await state(a))["messages"]) < count
        x, y = await a.evaluate("""(() => { const r = document.querySelector('#messages').getBoundingClientRect();
            return [r.left + r.width / 2, Math.max(r.top, 0) + Math.min(r.height, innerHeight) / 2]; })()""")
        deadline = time.monotonic() + 20
        while len((await state(a))["messages"]) < count:
            assert time.monotonic() < deadline, "scrolling to the top loaded no older messages"
            await a.send("Input.dispatchMouseEvent", {"type": "mouseWheel", "x": x, "y": y,
                                                      "deltaX": 0, "deltaY": -4000})
            await asyncio.sleep(0.2)
        assert [m["body"] for m in await check_all_verified(a, "A")] == expected
        no_problems(a, "A")
        no_problems(b, "B")

    await with_room(relay, "history", body, with_bot=False)
    print(f"\nscreenshots: {shots_dir()}")
    print(f"figures: 65 messages sent from the page in {figures['send_s']:.1f} s; a fresh page showed the newest "
          f"{figures['first_page']}; #load-older and a scroll to the top each brought the rest, once each, in order")


# ---------------------------------------------------------------------------
# 6. removing a member


async def test_owner_removes_a_member_and_the_key_moves_on(relay):
    figures = {}

    async def body(room: Room):
        a, b, bot = room.a, room.b, room.bot
        await send(a, "all three here")
        await wait_message(b, "all three here")
        old = (await state(a))["keyId"]

        await a.click(f"#members li[data-user-id={js(room.b_id)}] button.remove-member")
        await a.wait_for(f"document.querySelector('#members li[data-user-id={js(room.b_id)}]') === null",
                         timeout=20, what="B gone from A's member list")
        # B learns it (the channel leaves its list)
        await b.wait_for(f"!window.parleyTest.state().channels.some(c => c.channelId === {js(room.channel_id)})",
                         timeout=20, what="the channel gone from B's list")
        await bot.wait_log(rf"membership of #\S+: {re.escape(room.b_name)} removed by {re.escape(room.a_name)}")
        b_seen = len((await state(b))["messages"])

        await send(a, "!echo only two now")
        await wait_message(a, "only two now")
        new = (await state(a))["keyId"]
        assert new and new != old, "no rotation after the removal"
        await send(a, "!members")
        listed = await wait_message(a, await bot_answer(bot, "members: "))
        assert room.b_name not in listed["body"] and room.a_name in listed["body"], listed

        wire = await independent_history(room.relay, bot, room.channel_id)
        after = [m for m in wire if m["body"] in ("!echo only two now", "only two now")]
        assert after and all(m["key_id"] == new for m in after), after
        conn = await pc.connect_as(room.relay.url, bot.user())
        members = await conn.ok("channel.members", channel_id=room.channel_id)
        await conn.close()
        assert {m["user_id"] for m in members["members"]} == {room.a_id, bot.user().user_id}
        assert all(m["membership_version"] == members["membership_version"] for m in after), after
        # B saw none of it
        b_state = await state(b)
        assert all(m["body"] not in ("only two now", "!echo only two now") for m in b_state["messages"]), b_state
        assert len(b_state["messages"]) <= b_seen
        await check_all_verified(a, "A")
        await shot(a, "a-after-removal")
        await shot(b, "b-removed")

        # added again: B sees the channel and what is sent from its new join, not before
        await a.type("#add-member-username", room.b_name)
        await a.click("#add-member-submit")
        await a.wait_for(f"document.querySelector('#members li[data-user-id={js(room.b_id)}]') !== null",
                         timeout=20, what="B back on A's member list")
        await select_channel(b, room.channel_id)
        await send(a, "welcome back")
        await wait_message(b, "welcome back")
        back = [m["body"] for m in await check_all_verified(b, "B")]
        assert "only two now" not in back and "!echo only two now" not in back, back
        await bot.wait_log(rf"membership of #\S+: {re.escape(room.b_name)} added by {re.escape(room.a_name)}")
        await send(b, "!echo B is back in")
        await wait_message(a, "B is back in")
        await wait_message(b, "B is back in")
        third = (await state(a))["keyId"]
        assert third not in (old, new), "no rotation after the re-add"
        no_problems(a, "A")
        no_problems(b, "B")
        figures["old"], figures["new"], figures["third"] = old[:8], new[:8], third[:8]

    await with_room(relay, "remove", body)
    print(f"\nscreenshots: {shots_dir()}")
    print(f"figures: B removed by the owner in the browser; the next message used a new key "
          f"({figures['old']} → {figures['new']}) of the new membership version; B saw none of it; "
          f"B added again: key {figures['third']}, B sees only what follows its new join")


# ---------------------------------------------------------------------------
# 7. a compromised relay: tampered messages are marked, a changed key raises the warning
#
# The relay cannot change a message or a user's key through the protocol, so the test
# plays a compromised relay: it rewrites rows in the relay's own database (the embedded
# PostgreSQL of a relay started for this test). A must mark the tampered messages as
# unverifiable (never showing them as B's text) and, having pinned B's key on first sight,
# refuse the new one and say so loudly.


def psql(relay, sql: str) -> str:
    socket_dir = os.path.join(relay.data_dir, "postgres")
    done = subprocess.run(["psql", f"host={socket_dir} port=5432 user=parley dbname=parley",
                           "-At", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"psql failed: {done.stderr.strip()}")
    return done.stdout.strip()


async def test_a_tampering_relay_is_caught(own_relay):
    relay = own_relay().start()
    figures = {}

    async def body(room: Room):
        a, b = room.a, room.b
        await send(b, "B's real key")
        await wait_message(a, "B's real key")
        assert not await a.visible("#key-warning")
        pinned = (await members_shown(a))[room.b_id]["fingerprint"]

        # A is away (the page closed); B writes twice; the relay alters both messages:
        # one ciphertext bit (AES-GCM fails), one timestamp (the signature fails).
        await a.goto("about:blank")
        await send(b, "tampered ciphertext")
        await send(b, "tampered timestamp")
        await send(b, "untouched")
        await wait_message(b, "untouched")
        seqs = {m["body"]: m["seq"] for m in (await state(b))["messages"]}
        where = f"channel_id = '{room.channel_id}' AND seq = "
        psql(relay, f"UPDATE messages SET ciphertext = set_byte(ciphertext, 3, get_byte(ciphertext, 3) # 1) "
                    f"WHERE {where}{seqs['tampered ciphertext']}")
        psql(relay, f"UPDATE messages SET ts = ts + 1 WHERE {where}{seqs['tampered timestamp']}")
        await a.goto(room.relay.http + "/")
        await a.wait_visible("#screen-chat", timeout=20)
        await select_channel(a, room.channel_id)
        await wait_message(a, "untouched")
        shown = await a.evaluate("""Array.from(document.querySelectorAll('#messages li.message')).map(li => ({
            seq: Number(li.dataset.seq), verified: li.dataset.verified,
            body: li.querySelector('.body')?.textContent}))""")
        by_seq = {m["seq"]: m for m in shown}
        for text in ("tampered ciphertext", "tampered timestamp"):
            entry = by_seq.get(seqs[text])
            assert entry is not None, (text, shown)
            assert entry["verified"] == "false" and entry["body"].startswith("unverifiable: "), (text, entry)
            assert text not in entry["body"], (text, entry)
        assert by_seq[seqs["untouched"]]["verified"] == "true"
        assert by_seq[seqs["B's real key"]]["verified"] == "true"
        marked = [m for m in (await state(a))["messages"] if not m["verified"]]
        assert sorted(m["seq"] for m in marked) == sorted([seqs["tampered ciphertext"], seqs["tampered timestamp"]])
        assert all(m["body"].startswith("unverifiable: ") for m in marked), marked
        await shot(a, "a-unverifiable")
        figures["reasons"] = "; ".join(m["body"] for m in marked)

        impostor = pc.Identity()
        der = base64.b64decode(impostor.spki)
        psql(relay, f"UPDATE users SET public_key = '\\x{der.hex()}', "
                    f"key_fingerprint = '\\x{hashlib.sha256(der).hexdigest()}' WHERE username = '{room.b_name}'")
        # A sees the channel's members again (a reload refetches them; the pins stay)
        await a.reload()
        await a.wait_visible("#screen-chat", timeout=20)
        await select_channel(a, room.channel_id)
        await a.wait_visible("#key-warning", timeout=20)
        warning = (await a.text("#key-warning")) or ""
        assert room.b_name in warning, warning
        assert pinned in warning and impostor.fingerprint in warning, warning
        alerts = (await state(a))["alerts"]
        assert alerts and any(room.b_name in alert for alert in alerts), alerts
        await shot(a, "a-key-warning")

        # Nothing is ever wrapped for the presented key: A rotates and writes on, and no
        # copy of any channel key held for B opens with the impostor's private key.
        keys_before = (await state(a))["keyId"]
        if await a.evaluate("!document.querySelector('#rotate-key').disabled"):
            await a.click("#rotate-key")
            await asyncio.sleep(2.0)
        await a.type("#composer-text", "after the warning")
        await a.click("#composer-send")
        await asyncio.sleep(2.0)
        copies = psql(relay, f"SELECT encode(c.encrypted_key, 'hex') FROM channel_key_copies c "
                             f"JOIN channel_keys k ON k.id = c.key_id "
                             f"WHERE k.channel_id = '{room.channel_id}' AND c.user_id = '{room.b_id}'").split()
        assert copies, "no key copies for B at all"
        opened = 0
        for copy in copies:
            try:
                impostor.decrypt(bytes.fromhex(copy))
                opened += 1
            except ValueError:
                pass
        assert opened == 0, f"{opened} channel key copies were wrapped for the relay's substitute key"
        assert not a.csp_violations, a.csp_violations
        figures["alerts"] = len(alerts)
        figures["copies"] = len(copies)
        figures["rotated"] = (await state(a))["keyId"] != keys_before

    await with_room(relay, "warn", body, with_bot=False)
    print(f"\nscreenshots: {shots_dir()}")
    print(f"figures: two messages altered in the relay's database shown as {figures['reasons']!r}; "
          f"B's key swapped there: A's page showed #key-warning naming B with "
          f"the pinned and the presented fingerprints ({figures['alerts']} alert(s)); rotation afterwards "
          f"{'done' if figures['rotated'] else 'refused'}; none of B's {figures['copies']} key copies opens with the "
          f"substitute key")


# ---------------------------------------------------------------------------
# 8. rotation on expiry: a relay with a 4-second key lifetime; the page makes the next key
#
# The page caches its sending key while it is fresh; once the relay's key lifetime has
# passed, the next send must establish a new key itself (signed by this user, wrapped for
# every member, the expired key as its predecessor), and the message must go out under it
# with no failed send shown. The other browser and the bot read both keys; the relay's
# history, read by the independent Python client, holds both key ids.

KEY_TTL = 4


async def test_an_expired_key_is_rotated_by_the_page(own_relay):
    relay = own_relay("--key-ttl", str(KEY_TTL)).start()
    figures = {}

    async def key_record(bot: Bot, channel_id: str, key_id: str) -> dict:
        conn = await pc.connect_as(relay.url, bot.user())
        try:
            record = (await conn.ok("key", channel_id=channel_id, key_id=key_id))["key"]
        finally:
            await conn.close()
        assert record is not None and record["key_id"] == key_id, (key_id, record)
        return record

    async def expire(page: Page, record: dict) -> float:
        """Waits until the key's expires_at (relay's clock: this machine's) plus a margin."""
        wait = max(0.0, record["expires_at"] / 1000 - time.time()) + 1.0
        await asyncio.sleep(wait)
        return wait

    async def no_send_error(page: Page, who: str) -> None:
        shown = ((await page.text("#chat-error")) or "").strip()
        assert shown == "", f"{who} shows a send error: {shown!r}"

    async def body(room: Room):
        a, b, bot = room.a, room.b, room.bot
        await send(a, "under the first key")
        await wait_message(b, "under the first key")
        first = (await state(a))["keyId"]
        assert pc.is_uuid(first), first
        first_record = await key_record(bot, room.channel_id, first)
        figures["waited_1"] = await expire(a, first_record)

        started = time.monotonic()
        await send(a, "under a key made on expiry")
        await wait_message(a, "under a key made on expiry")
        figures["send_ms"] = (time.monotonic() - started) * 1000
        await wait_message(b, "under a key made on expiry")
        second = (await state(a))["keyId"]
        assert pc.is_uuid(second) and second != first, (first, second)
        second_record = await key_record(bot, room.channel_id, second)
        assert second_record["creator_id"] == room.a_id, second_record
        assert second_record["previous_key_id"] == first, second_record
        await bot.wait_log(rf"key {re.escape(second[:8])} of #\S+ fetched: signature by {re.escape(room.a_name)}'s "
                           r"pinned key verified", timeout=20)
        await bot.wait_log(rf"decrypted with key {re.escape(second[:8])}, signature of {re.escape(room.a_name)} "
                           r"checked against the pinned key: \S+: \"under a key made on expiry\"", timeout=20)
        await no_send_error(a, "A")

        # the other page's turn: the second key expires too, B's page makes the third
        figures["waited_2"] = await expire(b, second_record)
        await send(b, "B under the next key", enter=True)
        await wait_message(b, "B under the next key")
        await wait_message(a, "B under the next key")
        third = (await state(b))["keyId"]
        assert pc.is_uuid(third) and third not in (first, second), (first, second, third)
        third_record = await key_record(bot, room.channel_id, third)
        assert third_record["creator_id"] == room.b_id and third_record["previous_key_id"] == second, third_record
        await bot.wait_log(rf"decrypted with key {re.escape(third[:8])}, signature of {re.escape(room.b_name)} "
                           r"checked against the pinned key: \S+: \"B under the next key\"", timeout=20)
        await no_send_error(b, "B")

        expected = ["under the first key", "under a key made on expiry", "B under the next key"]
        await asyncio.sleep(0.5)
        a_messages = await check_all_verified(a, "A")
        b_messages = await check_all_verified(b, "B")
        assert [m["body"] for m in a_messages] == expected, a_messages
        assert [(m["seq"], m["senderId"], m["body"]) for m in a_messages] == \
               [(m["seq"], m["senderId"], m["body"]) for m in b_messages]
        wire = await independent_history(relay, bot, room.channel_id)
        assert [(m["seq"], m["body"]) for m in wire] == [(m["seq"], m["body"]) for m in a_messages], wire
        assert [m["key_id"] for m in wire] == [first, second, third], wire
        refused = re.findall(r"REFUSED: .*|SECURITY ALERT: .*", bot.log())
        assert not refused, refused
        assert not (await state(a))["alerts"] and not (await state(b))["alerts"]
        await shot(a, "a-after-expiry-rotation")
        no_problems(a, "A")
        no_problems(b, "B")
        figures["keys"] = [k[:8] for k in (first, second, third)]

    await with_room(relay, "expiry", body)
    print(f"\nscreenshots: {shots_dir()}")
    print(f"figures: key lifetime {KEY_TTL} s; A sent, waited {figures['waited_1']:.1f} s: its page made key "
          f"{figures['keys'][1]} (after {figures['keys'][0]}) and sent in {figures['send_ms']:.0f} ms, no send error; "
          f"B waited {figures['waited_2']:.1f} s: its page made {figures['keys'][2]}; 3 messages verified in both "
          f"browsers, by the bot and by the Python client, under 3 key ids")


# ---------------------------------------------------------------------------
# 9. a replaying relay: a copy of a message under a new seq is dropped, loudly
#
# As in 7, the test plays a compromised relay in its database: it copies one of B's
# messages (same key_id, iv, ciphertext, ts, signature) to the next seq — dropping the
# table's UNIQUE (key_id, iv) first, which an honest relay keeps — and moves the channel's
# last_seq on. The page must not show it as a second message from B: client.js drops a
# known (key_id, iv) under another seq and raises a "replay" alert.


async def test_a_replaying_relay_is_caught(own_relay):
    relay = own_relay().start()
    figures = {}

    async def shown(page: Page) -> list[dict]:
        return await page.evaluate("""Array.from(document.querySelectorAll('#messages li.message')).map(li => ({
            seq: Number(li.dataset.seq), senderId: li.dataset.senderId, verified: li.dataset.verified,
            body: li.querySelector('.body')?.textContent}))""")

    async def check_once(page: Page, who: str, original: int, copy: int, body_text: str) -> None:
        dom = await shown(page)
        assert copy not in [m["seq"] for m in dom], (who, "the replayed copy is shown", dom)
        assert [m["seq"] for m in dom if m["body"] == body_text] == [original], (who, dom)
        st = await state(page)
        assert copy not in [m["seq"] for m in st["messages"]], (who, st["messages"])
        assert [m["seq"] for m in st["messages"] if m["body"] == body_text] == [original], (who, st["messages"])

    async def replay_alert(page: Page, who: str, copy: int) -> str:
        return await page.wait_for(
            f"window.parleyTest.state().alerts.find(a => /replay/i.test(a) && a.includes('seq {copy}'))",
            timeout=20, what=f"{who}: a replay alert for seq {copy}")

    async def body(room: Room):
        a, b = room.a, room.b
        cid = room.channel_id
        await send(a, "before")
        await send(b, "said once")
        original = (await wait_message(a, "said once"))["seq"]
        await wait_message(b, "said once")
        await asyncio.sleep(0.5)   # both pages have recorded the (key_id, iv) as seen

        # A's page is closed; the relay replays B's message as the channel's next seq
        await a.goto("about:blank")
        psql(relay, "ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_iv_once")
        copy = int(psql(relay, f"""
            WITH bumped AS (UPDATE channels SET last_seq = last_seq + 1 WHERE id = '{cid}' RETURNING last_seq)
            INSERT INTO messages (channel_id, seq, sender_id, client_msg_id, key_id, iv, ciphertext, ts, received_at)
            SELECT m.channel_id, bumped.last_seq, m.sender_id, gen_random_uuid(), m.key_id, m.iv, m.ciphertext,
                   m.ts, now()
            FROM messages m, bumped WHERE m.channel_id = '{cid}' AND m.seq = {original}
            RETURNING seq"""))
        pairs = psql(relay, f"SELECT count(*) FROM messages a JOIN messages b ON a.key_id = b.key_id AND a.iv = b.iv "
                            f"WHERE a.channel_id = '{cid}' AND a.seq = {original} AND b.seq = {copy}")
        assert copy > original and pairs == "1", (copy, pairs)

        # A comes back: the page resumes after the last seq it saw, and the relay sends the copy
        await a.goto(room.relay.http + "/")
        await a.wait_visible("#screen-chat", timeout=20)
        await select_channel(a, cid)
        await wait_message(a, "said once")
        figures["a_alert"] = await replay_alert(a, "A", copy)
        await check_once(a, "A", original, copy, "said once")
        await shot(a, "a-replay-dropped")

        # B's page was open: the relay pushed nothing; B's next message (copy + 1) leaves a
        # gap that B's page fills from history, and drops the copy there; A gets it live
        await send(b, "after the replay")
        after = (await wait_message(a, "after the replay"))["seq"]
        await wait_message(b, "after the replay")
        assert after == copy + 1, (after, copy)
        figures["b_alert"] = await replay_alert(b, "B", copy)
        await check_once(b, "B", original, copy, "said once")

        # a fresh load of the history (reload: the newest page holds both rows) drops it too
        for page, who in ((a, "A"), (b, "B")):
            await page.reload()
            await page.wait_visible("#screen-chat", timeout=20)
            await select_channel(page, cid)
            await wait_message(page, "after the replay")
            await asyncio.sleep(0.5)
            await check_once(page, who, original, copy, "said once")
            messages = await check_all_verified(page, who)
            assert [m["body"] for m in messages] == ["before", "said once", "after the replay"], (who, messages)
            alerts = (await state(page))["alerts"]
            figures[f"{who}_alerts_after_reload"] = len(alerts)
        # nothing else went wrong: no unverifiable rows, no other kind of alert
        for page, who in ((a, "A"), (b, "B")):
            others = [x for x in (await state(page))["alerts"] if not re.search(r"replay", x, re.I)]
            assert not others, (who, others)
            no_problems(page, who)
        await shot(b, "b-replay-dropped")

    await with_room(relay, "replay", body, with_bot=False)
    print(f"\nscreenshots: {shots_dir()}")
    print(f"figures: B's message copied by the relay to a new seq (same key_id and iv): A's page, resuming, "
          f"alerted {figures['a_alert']!r}; B's page, filling the gap before its next message, alerted "
          f"{figures['b_alert']!r}; neither showed the copy, before or after a reload (alerts after reload: "
          f"A {figures['A_alerts_after_reload']}, B {figures['B_alerts_after_reload']})")
