"""Fixtures: the real `parley-server` binary on a real (embedded) PostgreSQL.

* `relay` (session scoped): one relay for most tests, in a fresh data dir under /tmp.
* `RelayProcess`: start/stop/kill a relay of one's own (crash and outage tests).

Async tests (`async def test_...`) are run by the hook below with asyncio.run and a
bound on their total time, so nothing hangs (no pytest-asyncio needed).
"""
from __future__ import annotations

import asyncio
import glob
import inspect
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))

REPO = Path(__file__).resolve().parents[2]
LISTEN_RE = re.compile(r"relay listening on (wss?://[0-9.]+:(\d+)/ws)")
TEST_TIME_LIMIT = float(os.environ.get("PARLEY_E2E_TEST_TIMEOUT", "180"))


def _build_binary() -> str:
    explicit = os.environ.get("PARLEY_SERVER_BIN")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise RuntimeError(f"PARLEY_SERVER_BIN={explicit} is not an executable")
        return explicit
    scratch = os.environ.get("PARLEY_BUILD_PATH", ".build")
    scratch_path = Path(scratch) if os.path.isabs(scratch) else REPO / scratch
    for attempt in range(3):
        done = subprocess.run(["swift", "build", "--scratch-path", str(scratch_path),
                               "--product", "parley-server"], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if done.returncode == 0:
            break
        if attempt == 2:
            raise RuntimeError("swift build failed:\n" + done.stdout[-4000:])
        time.sleep(60)  # others may be editing sources right now
    return str(scratch_path / "debug" / "parley-server")


_BINARY: str | None = None


def server_binary() -> str:
    global _BINARY
    if _BINARY is None:
        _BINARY = _build_binary()
    return _BINARY


def _pg_ctl() -> str | None:
    explicit = os.environ.get("PARLEY_PG_BIN")
    if explicit and os.path.exists(os.path.join(explicit, "pg_ctl")):
        return os.path.join(explicit, "pg_ctl")
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return found[-1] if found else None


def pg_ctl(data_dir: str, *args: str) -> subprocess.CompletedProcess:
    """Run pg_ctl on the embedded cluster of a data dir (as `postgres` when we are root)."""
    tool = _pg_ctl()
    if tool is None:
        raise RuntimeError("pg_ctl not found")
    cmd = [tool, "-D", os.path.join(data_dir, "postgres"), *args]
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", "env", "-C", "/"] + cmd
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=90)


_HELP: str | None = None


def supports_option(option: str) -> bool:
    global _HELP
    if _HELP is None:
        done = subprocess.run([server_binary(), "--help"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=30)
        _HELP = done.stdout
    return option in _HELP


class RelayProcess:
    """One `parley-server serve` process on a data dir. Unless `rate_limits` is true, the
    relay runs with its rate limits off (§10: "one setting turns all of them off, for test
    suites"): the suite signs up far more than 30 accounts a minute from 127.0.0.1."""

    def __init__(self, data_dir: str, extra_args: tuple[str, ...] = (), rate_limits: bool = False):
        self.data_dir = data_dir
        if not rate_limits and supports_option("--rate-limits"):
            extra_args = ("--rate-limits", "off") + tuple(extra_args)
        # Many tests keep unauthenticated sockets open for long (keepalive: ~60 s): no
        # authentication deadline unless a test asks for one (a later flag wins).
        if supports_option("--auth-timeout"):
            extra_args = ("--auth-timeout", "0") + tuple(extra_args)
        self.extra_args = extra_args
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.log_path: str | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # Where the relay's database is (a node of a shared database overrides these).
    def database_args(self) -> list[str]:
        return ["--data-dir", self.data_dir]

    @property
    def label(self) -> str:
        return "parley-server"

    def start(self, timeout: float = 120.0) -> "RelayProcess":
        self.starts += 1
        self.log_path = f"{self.data_dir}.relay{self.starts}.log"
        # `port` keeps the previous start's value until the new one is known: clients
        # reconnecting meanwhile get connection refused and retry, not a malformed URL.
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [server_binary(), "serve", "--listen", "127.0.0.1:0", *self.database_args(),
             "--migrations", str(REPO / "migrations"), *self.extra_args],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = Path(self.log_path).read_text(errors="replace")
            found = LISTEN_RE.search(text)
            if found:
                self.port = int(found.group(2))
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.label} exited ({self.proc.returncode}):\n{text}")
            time.sleep(0.05)
        self.terminate()
        raise RuntimeError(f"{self.label} did not report its port in time:\n"
                           + Path(self.log_path).read_text(errors="replace"))

    def log_text(self) -> str:
        return Path(self.log_path).read_text(errors="replace") if self.log_path else ""

    def kill(self) -> None:
        """SIGKILL: the embedded PostgreSQL keeps running (the next start adopts it)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def terminate(self, timeout: float = 60.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait(30)
        return self.proc.returncode

    def cleanup(self) -> None:
        """Stop the relay, make sure its PostgreSQL is down, remove the data dir."""
        self.terminate()
        if os.path.exists(os.path.join(self.data_dir, "postgres", "postmaster.pid")):
            try:
                pg_ctl(self.data_dir, "stop", "-m", "immediate", "-w", "-t", "60")
            except Exception:
                pass
        if os.environ.get("PARLEY_E2E_KEEP") is None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            for log in glob.glob(f"{self.data_dir}.relay*.log"):
                os.unlink(log)


def new_data_dir() -> str:
    path = tempfile.mkdtemp(prefix="pe2e-", dir="/tmp")
    assert len(path) < 60
    return path


@pytest.fixture(scope="session")
def relay():
    """The shared relay, rate limits off. PARLEY_E2E_SERVER_ARGS adds `serve` options."""
    process = RelayProcess(new_data_dir(), tuple(os.environ.get("PARLEY_E2E_SERVER_ARGS", "").split()))
    try:
        process.start()
        yield process
    finally:
        process.cleanup()


@pytest.fixture
def own_relay():
    """A factory of relays with their own data dir, all cleaned up at the end."""
    made: list[RelayProcess] = []

    def make(*extra_args: str, rate_limits: bool = False) -> RelayProcess:
        process = RelayProcess(new_data_dir(), tuple(extra_args), rate_limits=rate_limits)
        made.append(process)
        return process

    try:
        yield make
    finally:
        for process in made:
            process.cleanup()


def http_get(url: str, timeout: float = 10.0) -> tuple[int, dict, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    if inspect.iscoroutinefunction(pyfuncitem.obj):
        names = pyfuncitem._fixtureinfo.argnames
        kwargs = {name: pyfuncitem.funcargs[name] for name in names}
        limit = pyfuncitem.get_closest_marker("time_limit")
        seconds = limit.args[0] if limit else TEST_TIME_LIMIT

        async def bounded():
            from parley_client import close_all
            try:
                await asyncio.wait_for(pyfuncitem.obj(**kwargs), seconds)
            finally:
                await close_all()

        asyncio.run(bounded())
        return True
    return None


def pytest_configure(config):
    config.addinivalue_line("markers", "time_limit(seconds): bound on an async test's total time")
