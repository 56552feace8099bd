"""A small driver of headless Chromium over its DevTools protocol (CDP), for the web tests.

Debian's `chromium` (scripts/setup installs it) runs headless with a throw-away profile;
the driver talks to it over one WebSocket (the `websockets` package, no Selenium) in
flat-session mode. Each `new_page` opens a tab in its own browser context, so two pages
are two browser users with separate storage (IndexedDB); a reload keeps the context.

    async with Browser.launch() as browser:
        page = await browser.new_page("http://127.0.0.1:8080/")
        await page.click("#signup-submit")
        await page.wait_for("window.parleyTest.state().screen === 'chat'")

Each page collects what a person would see in the developer console: console errors,
uncaught exceptions, CSP violations (a `securitypolicyviolation` listener in an isolated
world, plus Chromium's own CSP log entries and issues) and failed loads. Every wait is
bounded. The process (and its helpers: one process group) and the profile are removed
on close, whatever happened.
"""
from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Any, Optional

from websockets.asyncio.client import connect as ws_connect
import websockets

DEFAULT_TIMEOUT = 15.0
ISOLATED_WORLD = "parley-cdp-observer"
CSP_BINDING = "__parleyCdpCspViolation"

# Runs in an isolated world before any page script: DOM events reach every world, so the
# listener sees the page's CSP violations without being on the page (and without CSP
# applying to it, which is how DevTools scripts run).
CSP_OBSERVER = f"""
document.addEventListener('securitypolicyviolation', (e) => {{
  try {{
    {CSP_BINDING}(JSON.stringify({{directive: e.violatedDirective, blocked: e.blockedURI,
      source: e.sourceFile, line: e.lineNumber, sample: e.sample}}));
  }} catch (_) {{}}
}}, true);
"""


def chromium_binary() -> Optional[str]:
    explicit = os.environ.get("PARLEY_CHROMIUM_BIN")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    for candidate in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(candidate)
        if found:
            return found
    return None


class CDPError(RuntimeError):
    """A DevTools command failed."""


class JSError(RuntimeError):
    """An evaluated expression threw (or its promise rejected)."""


class Browser:
    """One headless Chromium process and one CDP connection to it."""

    def __init__(self, binary: str, window: tuple[int, int] = (1280, 860)):
        self.binary = binary
        self.window = window
        self.profile = tempfile.mkdtemp(prefix="parley-chromium-")
        self.proc: Optional[subprocess.Popen] = None
        self.ws = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._pages: dict[str, "Page"] = {}            # sessionId -> page
        self._reader: Optional[asyncio.Task] = None
        self.stderr_path = os.path.join(self.profile, "chromium.stderr")
        self.closed = False

    # --- life cycle

    @classmethod
    def launch(cls, binary: Optional[str] = None, **kwargs) -> "Browser":
        binary = binary or chromium_binary()
        if binary is None:
            raise RuntimeError("no chromium binary (scripts/setup installs Debian's chromium; "
                               "or set PARLEY_CHROMIUM_BIN)")
        return cls(binary, **kwargs)

    async def __aenter__(self) -> "Browser":
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def start(self, timeout: float = 60.0) -> None:
        args = [
            self.binary, "--headless=new", "--no-sandbox", "--disable-gpu",
            "--remote-debugging-port=0", f"--user-data-dir={self.profile}",
            "--remote-allow-origins=*",
            "--no-first-run", "--no-default-browser-check", "--disable-extensions",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-default-apps", "--disable-dev-shm-usage", "--password-store=basic",
            "--use-mock-keychain", "--mute-audio", "--hide-scrollbars",
            f"--window-size={self.window[0]},{self.window[1]}",
            "about:blank",
        ]
        stderr = open(self.stderr_path, "wb")
        # Its own process group: on close, the browser and every helper it forked are
        # signalled by this group id (only what this driver started).
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=stderr, start_new_session=True)
        stderr.close()
        port_file = os.path.join(self.profile, "DevToolsActivePort")
        deadline = time.monotonic() + timeout
        endpoint = None
        while time.monotonic() < deadline:
            if os.path.exists(port_file):
                lines = open(port_file).read().split("\n")
                if len(lines) >= 2 and lines[0].strip().isdigit() and lines[1].strip():
                    endpoint = f"ws://127.0.0.1:{int(lines[0])}{lines[1].strip()}"
                    break
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited ({self.proc.returncode}):\n{self.stderr_text()[-3000:]}")
            await asyncio.sleep(0.05)
        if endpoint is None:
            raise RuntimeError("chromium did not write DevToolsActivePort in time:\n"
                               + self.stderr_text()[-3000:])
        self.ws = await asyncio.wait_for(ws_connect(endpoint, max_size=256 * 1024 * 1024,
                                                    ping_interval=None, compression=None,
                                                    open_timeout=DEFAULT_TIMEOUT), DEFAULT_TIMEOUT)
        self._reader = asyncio.create_task(self._read())

    def stderr_text(self) -> str:
        try:
            return open(self.stderr_path, errors="replace").read()
        except OSError:
            return ""

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.ws is not None:
            try:
                await asyncio.wait_for(self.send("Browser.close"), 5)
            except Exception:
                pass
            try:
                await asyncio.wait_for(self.ws.close(), 3)
            except Exception:
                pass
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except BaseException:
                pass
        if self.proc is not None:
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(self.proc.pid, sig)
                except (ProcessLookupError, PermissionError):
                    break
                try:
                    self.proc.wait(5)
                    break
                except subprocess.TimeoutExpired:
                    continue
            # helpers of the group may outlive the main process for a moment
            for _ in range(50):
                try:
                    os.killpg(self.proc.pid, 0)
                except (ProcessLookupError, PermissionError):
                    break
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    break
                await asyncio.sleep(0.1)
        shutil.rmtree(self.profile, ignore_errors=True)

    # --- the protocol

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                message = json.loads(raw)
                if "id" in message:
                    future = self._pending.pop(message["id"], None)
                    if future is not None and not future.done():
                        if "error" in message:
                            future.set_exception(CDPError(f"{message['error'].get('message')} "
                                                          f"({message['error'].get('data', '')})"))
                        else:
                            future.set_result(message.get("result", {}))
                    continue
                page = self._pages.get(message.get("sessionId", ""))
                if page is not None:
                    page._event(message["method"], message.get("params", {}))
        except websockets.ConnectionClosed:
            pass
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(CDPError("the DevTools connection closed"))
            self._pending.clear()

    async def send(self, method: str, params: Optional[dict] = None, session_id: Optional[str] = None,
                   timeout: float = DEFAULT_TIMEOUT) -> dict:
        if self.ws is None:
            raise CDPError("not connected")
        number = next(self._ids)
        message: dict[str, Any] = {"id": number, "method": method, "params": params or {}}
        if session_id:
            message["sessionId"] = session_id
        future = asyncio.get_running_loop().create_future()
        self._pending[number] = future
        await self.ws.send(json.dumps(message))
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            self._pending.pop(number, None)
            raise CDPError(f"{method}: no answer in {timeout} s") from None

    # --- pages

    async def new_page(self, url: Optional[str] = None, *, grant_clipboard: bool = True) -> "Page":
        """A tab in a new browser context (its own cookies, storage and IndexedDB)."""
        context = (await self.send("Target.createBrowserContext", {"disposeOnDetach": True}))["browserContextId"]
        target = (await self.send("Target.createTarget", {"url": "about:blank",
                                                          "browserContextId": context}))["targetId"]
        session = (await self.send("Target.attachToTarget", {"targetId": target, "flatten": True}))["sessionId"]
        page = Page(self, context, target, session)
        self._pages[session] = page
        await page._setup()
        if grant_clipboard and url:
            origin = "/".join(url.split("/")[:3])
            try:
                await self.send("Browser.grantPermissions", {
                    "origin": origin, "browserContextId": context,
                    "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]})
            except CDPError:
                pass
        if url:
            await page.goto(url)
        return page


class Page:
    """One tab (its own browser context). Selectors are CSS selectors."""

    def __init__(self, browser: Browser, context_id: str, target_id: str, session_id: str):
        self.browser = browser
        self.context_id = context_id
        self.target_id = target_id
        self.session_id = session_id
        self.console_errors: list[str] = []        # console.error/assert, exceptions, error log entries
        self.csp_violations: list[str] = []
        self.console: list[str] = []               # every console line (type: text)
        self.failed_requests: list[str] = []
        self.websockets_opened = 0                 # WebSocket handshakes the page started
        self.websockets_closed = 0
        self._waiters: list[tuple[str, asyncio.Future]] = []

    async def send(self, method: str, params: Optional[dict] = None, timeout: float = DEFAULT_TIMEOUT) -> dict:
        return await self.browser.send(method, params, self.session_id, timeout)

    async def _setup(self) -> None:
        w, h = self.browser.window
        await self.send("Page.enable")
        await self.send("Runtime.enable")
        await self.send("Log.enable")
        await self.send("Network.enable")
        try:
            await self.send("Audits.enable")
        except CDPError:
            pass
        await self.send("Emulation.setDeviceMetricsOverride",
                        {"width": w, "height": h, "deviceScaleFactor": 1, "mobile": False})
        await self.send("Runtime.addBinding", {"name": CSP_BINDING, "executionContextName": ISOLATED_WORLD})
        await self.send("Page.addScriptToEvaluateOnNewDocument",
                        {"source": CSP_OBSERVER, "worldName": ISOLATED_WORLD})

    # --- events

    def _event(self, method: str, params: dict) -> None:
        if method == "Runtime.consoleAPICalled":
            text = " ".join(_remote_text(arg) for arg in params.get("args", []))
            self.console.append(f"{params.get('type')}: {text}")
            if params.get("type") in ("error", "assert"):
                self.console_errors.append(f"console.{params.get('type')}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            exception = details.get("exception", {})
            self.console_errors.append("uncaught: " + (exception.get("description") or details.get("text", "?")))
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            text = entry.get("text", "")
            if "Content Security Policy" in text or "Content-Security-Policy" in text:
                self.csp_violations.append(f"log: {text}")
            if entry.get("level") == "error":
                self.console_errors.append(f"log {entry.get('source')}: {text} {entry.get('url', '')}".strip())
        elif method == "Audits.issueAdded":
            issue = params.get("issue", {})
            if issue.get("code") == "ContentSecurityPolicyIssue":
                details = issue.get("details", {}).get("contentSecurityPolicyIssueDetails", {})
                self.csp_violations.append(f"issue: {details.get('violatedDirective')} "
                                           f"{details.get('blockedURL', '')} {details.get('contentSecurityPolicyViolationType', '')}")
        elif method == "Runtime.bindingCalled" and params.get("name") == CSP_BINDING:
            self.csp_violations.append(f"securitypolicyviolation: {params.get('payload')}")
        elif method == "Network.loadingFailed":
            if params.get("blockedReason") == "csp":
                self.csp_violations.append(f"blocked load: {params.get('requestId')}")
            if not params.get("canceled"):
                self.failed_requests.append(f"{params.get('type')}: {params.get('errorText')} "
                                            f"{params.get('blockedReason') or ''}".strip())
        elif method == "Network.webSocketCreated":
            self.websockets_opened += 1
        elif method == "Network.webSocketClosed":
            self.websockets_closed += 1
        elif method == "Network.responseReceived":
            response = params.get("response", {})
            if response.get("status", 0) >= 400:
                self.failed_requests.append(f"{response.get('status')} {response.get('url')}")
        for entry in list(self._waiters):
            name, future = entry
            if name == method and not future.done():
                future.set_result(params)
                self._waiters.remove(entry)

    def _expect(self, method: str) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((method, future))
        return future

    def problems(self) -> list[str]:
        """Console errors and CSP violations seen so far (what a clean page has none of)."""
        return self.console_errors + self.csp_violations

    # --- navigation

    async def goto(self, url: str, timeout: float = 30.0) -> None:
        loaded = self._expect("Page.loadEventFired")
        result = await self.send("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise CDPError(f"navigation to {url} failed: {result['errorText']}")
        await asyncio.wait_for(loaded, timeout)

    async def reload(self, timeout: float = 30.0) -> None:
        loaded = self._expect("Page.loadEventFired")
        await self.send("Page.reload", {"ignoreCache": False})
        await asyncio.wait_for(loaded, timeout)

    async def url(self) -> str:
        return await self.evaluate("location.href")

    # --- scripts

    async def evaluate(self, expression: str, timeout: float = DEFAULT_TIMEOUT) -> Any:
        """The value of a JavaScript expression (a promise is awaited); raises JSError when
        it throws. The value comes back by value (JSON-like)."""
        result = await self.send("Runtime.evaluate", {
            "expression": expression, "awaitPromise": True, "returnByValue": True,
            "userGesture": True}, timeout=timeout + 5)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            exception = details.get("exception", {})
            raise JSError(f"{expression[:120]!r} threw: "
                          + (exception.get("description") or details.get("text", "?")))
        value = result.get("result", {})
        return value.get("value")

    async def wait_for(self, predicate: str, timeout: float = DEFAULT_TIMEOUT, interval: float = 0.1,
                       what: Optional[str] = None) -> Any:
        """Polls a JavaScript expression until it is truthy; returns its value. Exceptions
        while polling count as false (the page may be between two states)."""
        deadline = time.monotonic() + timeout
        last_error = None
        while True:
            try:
                value = await self.evaluate(predicate)
                if value:
                    return value
                last_error = None
            except JSError as error:
                last_error = error
            if time.monotonic() >= deadline:
                raise TimeoutError(f"waited {timeout} s for {what or predicate}"
                                   + (f" (last error: {last_error})" if last_error else ""))
            await asyncio.sleep(interval)

    async def exists(self, selector: str) -> bool:
        return bool(await self.evaluate(f"document.querySelector({json.dumps(selector)}) !== null"))

    async def visible(self, selector: str) -> bool:
        return bool(await self.evaluate(_VISIBLE.format(sel=json.dumps(selector))))

    async def wait_visible(self, selector: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        await self.wait_for(_VISIBLE.format(sel=json.dumps(selector)), timeout, what=f"{selector} visible")

    async def text(self, selector: str) -> Optional[str]:
        return await self.evaluate(f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
                                   f" return e ? e.textContent : null; }})()")

    async def attribute(self, selector: str, name: str) -> Optional[str]:
        return await self.evaluate(f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
                                   f" return e ? e.getAttribute({json.dumps(name)}) : null; }})()")

    # --- input, as a person gives it (real mouse and key events)

    async def _center(self, selector: str, timeout: float) -> tuple[float, float]:
        box = await self.wait_for(f"""(() => {{
            const e = document.querySelector({json.dumps(selector)});
            if (!e || e.disabled) return null;
            e.scrollIntoView({{block: 'center', inline: 'center'}});
            const r = e.getBoundingClientRect();
            const style = getComputedStyle(e);
            if (r.width === 0 || r.height === 0 || style.visibility === 'hidden') return null;
            const x = r.left + r.width / 2, y = r.top + r.height / 2;
            const top = document.elementFromPoint(x, y);
            if (!top || !(top === e || e.contains(top))) return null;
            return [x, y];
        }})()""", timeout, what=f"{selector} clickable")
        return box[0], box[1]

    async def click(self, selector: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        x, y = await self._center(selector, timeout)
        await self.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y})
        await self.send("Input.dispatchMouseEvent", {"type": "mousePressed", "x": x, "y": y,
                                                     "button": "left", "clickCount": 1})
        await self.send("Input.dispatchMouseEvent", {"type": "mouseReleased", "x": x, "y": y,
                                                     "button": "left", "clickCount": 1})

    async def type(self, selector: str, text: str, *, clear: bool = True, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Focuses the field (a click), empties it, and types the text (input events fire)."""
        await self.click(selector, timeout)
        if clear:
            await self.evaluate(f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
                                f" e.select && e.select(); }})()")
            await self.press("Backspace")
        if text:
            await self.send("Input.insertText", {"text": text})

    async def press(self, key: str) -> None:
        """One key: 'Enter', 'Backspace', 'Tab' or a printable character."""
        codes = {"Enter": (13, "\r"), "Backspace": (8, ""), "Tab": (9, ""), "Escape": (27, "")}
        code, text = codes.get(key, (ord(key.upper()[0]), key))
        down = {"type": "keyDown" if text else "rawKeyDown", "key": key, "code": key if key in codes else "",
                "windowsVirtualKeyCode": code, "nativeVirtualKeyCode": code}
        if text:
            down["text"] = text
            down["unmodifiedText"] = text
        await self.send("Input.dispatchKeyEvent", down)
        await self.send("Input.dispatchKeyEvent", {"type": "keyUp", "key": key, "windowsVirtualKeyCode": code,
                                                   "nativeVirtualKeyCode": code})

    # --- the network

    async def set_offline(self, offline: bool) -> None:
        """Emulated offline: new connections fail (open WebSockets are not touched)."""
        await self.send("Network.emulateNetworkConditions", {
            "offline": offline, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})

    async def close_websockets(self, code: int = 4000, reason: str = "dropped by the test") -> int:
        """Closes every open WebSocket of the page from outside the page's code (found on
        the heap through DevTools), as a dropped connection; returns how many."""
        prototype = await self.send("Runtime.evaluate", {"expression": "WebSocket.prototype"})
        found = await self.send("Runtime.queryObjects", {"prototypeObjectId": prototype["result"]["objectId"]})
        closed = await self.send("Runtime.callFunctionOn", {
            "objectId": found["objects"]["objectId"], "returnByValue": True,
            "functionDeclaration": "function(code, reason) { const open = this.filter(w => w.readyState === 1);"
                                   " open.forEach(w => w.close(code, reason)); return open.length; }",
            "arguments": [{"value": code}, {"value": reason}]})
        return closed["result"]["value"]

    # --- pictures

    async def screenshot(self, path: str) -> str:
        data = (await self.send("Page.captureScreenshot", {"format": "png"}, timeout=30))["data"]
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "wb") as out:
            out.write(base64.b64decode(data))
        return path

    async def close(self) -> None:
        try:
            await self.browser.send("Target.closeTarget", {"targetId": self.target_id})
        except CDPError:
            pass
        try:
            await self.browser.send("Target.disposeBrowserContext", {"browserContextId": self.context_id})
        except CDPError:
            pass
        self.browser._pages.pop(self.session_id, None)


_VISIBLE = """(() => {{
    const e = document.querySelector({sel});
    if (!e || e.closest('[hidden]')) return false;
    const r = e.getBoundingClientRect();
    return r.width > 0 && r.height > 0 && getComputedStyle(e).visibility !== 'hidden';
}})()"""


def _remote_text(arg: dict) -> str:
    if "value" in arg:
        return str(arg["value"])
    return arg.get("description") or arg.get("unserializableValue") or arg.get("type", "?")
