"""Issue 7 behind a balancer: Debian's nginx running deploy/nginx.conf in front of two relay
nodes on one PostgreSQL (the `cluster` fixture), every client going through nginx.

The nginx configuration is the shipped file, rewritten only on the lines its header marks
for adaptation (see `balancer_config`): the upstream `server` lines (the nodes' ports),
the listen ports (loopback), the certificate, the pid, log and temp paths, and, except in
the TLS test, `http redirect;` -> `http serve;` so that ws:// is served on the plain port.
Everything else, least_conn, the passive checks, proxy_next_upstream, the WebSocket
headers and timeouts, the per-address limits, /metrics kept private, is what ships.

* connections spread over both nodes (each node's /metrics counts its share);
* users on different nodes exchange messages: every subscriber gets every message exactly
  once, in seq order (this needs the nodes' cross-node fan-out);
* one node stopped with SIGTERM under load: no new connection is refused to a client (a
  draining node's 503 and a stopped node's refusal are retried by nginx on the other
  node), its clients reconnect through nginx and resume with `after`: nothing lost,
  duplicated or out of order;
* TLS at the balancer: a self-signed certificate, wss:// clients that trust it.

nginx missing is a failure, not a skip: scripts/setup installs it. Each test prints one
`figures:` line.
"""
from __future__ import annotations

import asyncio
import http.client
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import parley_client as pc
from cluster import cluster, metric  # noqa: F401  (`cluster` is the fixture)
from conftest import REPO, http_get
from load import Sender, Stats, drain, rooms, subscribe_from_start, verify

NGINX_CONF = REPO / "deploy" / "nginx.conf"
# What deploy/README.md tells nodes behind a balancer: every client comes from the
# balancer's address, so the per-address connection limit is lifted on the nodes.
NODE_ARGS = ("--max-connections-per-address", "10000")


# MARK: - nginx


def nginx_binary() -> str:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail("nginx is not installed: scripts/setup installs Debian's `nginx` package "
                "(or: apt-get install nginx)", pytrace=False)


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports (held together while they are picked)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def self_signed(folder: Path) -> tuple[str, str]:
    cert, key = str(folder / "fullchain.pem"), str(folder / "privkey.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert],
        check=True, capture_output=True, timeout=60)
    return cert, key


def balancer_config(node_ports: list[int], prefix: Path, http_port: int, status_port: int,
                    tls: tuple[int, str, str] | None, plain_ws: bool) -> str:
    """deploy/nginx.conf with the marked lines adapted; every pattern must match as expected,
    so a change of the shipped file's shape fails here, loudly, instead of testing something else."""
    text = NGINX_CONF.read_text()

    def sub(pattern: str, replacement: str, expected: int = 1) -> None:
        nonlocal text
        text, found = re.subn(pattern, lambda _: replacement, text, flags=re.M)
        assert found == expected, (f"deploy/nginx.conf: {found} matches of {pattern!r}, expected {expected}: "
                                   "the test adapts the shipped file on its marked lines")

    servers = re.findall(r"^([ \t]*)server 127\.0\.0\.1:808\d (.+);[ \t]*$", text, flags=re.M)
    assert len(servers) == 2 and servers[0] == servers[1], f"upstream server lines: {servers}"
    indent, parameters = servers[0]
    sub(r"^[ \t]*server 127\.0\.0\.1:8081 .+;[ \t]*\n[ \t]*server 127\.0\.0\.1:8082 .+;[ \t]*\n",
        "".join(f"{indent}server 127.0.0.1:{port} {parameters};\n" for port in node_ports))
    sub(r"^([ \t]*)listen 80;", f"        listen 127.0.0.1:{http_port};")
    if tls:
        https_port, cert, key = tls
        sub(r"^[ \t]*listen 443 ssl;", f"        listen 127.0.0.1:{https_port} ssl;")
        sub(r"ssl_certificate[ \t]+/etc/ssl/parley/fullchain\.pem;", f"ssl_certificate     {cert};")
        sub(r"ssl_certificate_key[ \t]+/etc/ssl/parley/privkey\.pem;", f"ssl_certificate_key {key};")
    else:
        sub(r"^.*# tls[ \t]*\n", "", expected=3)   # what docker-compose.yml does without a certificate
    if plain_ws:
        sub(r"^([ \t]*)http([ \t]+)redirect;", "        http     serve;")
    sub(r"^[ \t]*listen 127\.0\.0\.1:8090;", f"        listen 127.0.0.1:{status_port};")
    sub(r"^pid /run/nginx\.pid;", f"pid {prefix}/nginx.pid;")
    sub(r"^error_log /var/log/nginx/error\.log warn;", f"error_log {prefix}/error.log warn;")
    sub(r"access_log /var/log/nginx/parley-access\.log parley;", f"access_log {prefix}/access.log parley;")
    temp = "".join(f"    {kind}_temp_path {prefix}/{kind}_temp;\n"
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    sub(r"^http \{\n", "http {\n" + temp)
    return text


class Balancer:
    """Debian's nginx in the foreground on loopback ports, with a folder of its own."""

    def __init__(self, nodes, tls: bool = False, plain_ws: bool = True):
        self.nodes = nodes
        self.prefix = Path(tempfile.mkdtemp(prefix="pnginx-", dir="/tmp"))
        # The shipped `user www-data;` applies when we are root: the workers must reach
        # their temp folders in here.
        os.chmod(self.prefix, 0o755)
        self.http_port, self.https_port, self.status_port = free_ports(3)
        self.cert = self.key = None
        if tls:
            self.cert, self.key = self_signed(self.prefix)
        self.conf = self.prefix / "nginx.conf"
        self.conf.write_text(balancer_config(
            [node.port for node in nodes], self.prefix, self.http_port, self.status_port,
            (self.https_port, self.cert, self.key) if tls else None, plain_ws))
        self.command = [nginx_binary(), "-p", str(self.prefix), "-e", str(self.prefix / "error.log"),
                        "-c", str(self.conf)]
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.http_port}/ws"

    @property
    def wss_url(self) -> str:
        return f"wss://127.0.0.1:{self.https_port}/ws"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def error_log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def access_log(self) -> list[str]:
        path = self.prefix / "access.log"
        return path.read_text(errors="replace").splitlines() if path.exists() else []

    def start(self) -> "Balancer":
        check = subprocess.run(self.command + ["-t"], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, (f"nginx -t rejected the configuration made from deploy/nginx.conf "
                                       f"({self.conf}):\n{check.stderr}")
        log = open(self.prefix / "stderr.log", "wb")
        self.proc = subprocess.Popen(self.command + ["-g", "daemon off;"], stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"nginx exited ({self.proc.returncode}):\n{self.error_log()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.http_port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError("nginx did not listen within 20 s:\n" + self.error_log()[-3000:])

    def stop(self) -> None:
        """SIGTERM: nginx's fast shutdown (SIGQUIT would wait worker_shutdown_timeout for the WebSockets)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def cleanup(self) -> None:
        self.stop()
        if os.environ.get("PARLEY_E2E_KEEP") is None:
            shutil.rmtree(self.prefix, ignore_errors=True)


@pytest.fixture
def balancer():
    """A factory: balancer(nodes, tls=False, plain_ws=True) -> a started Balancer."""
    nginx_binary()   # fails at once, before any node starts, when nginx is missing
    made: list[Balancer] = []

    def make(nodes, **options) -> Balancer:
        made.append(Balancer(nodes, **options))
        return made[-1].start()

    try:
        yield make
    finally:
        for each in made:
            each.cleanup()


# MARK: - helpers


async def start_nodes(cluster_, count: int = 2) -> list:
    return [await asyncio.to_thread(cluster_.start_node, *NODE_ARGS) for _ in range(count)]


async def gauges(nodes, name: str = "parley_connections") -> list[int]:
    return [int(await asyncio.to_thread(metric, node, name) or 0) for node in nodes]


async def settle(nodes, total: int, timeout: float = 10.0) -> list[int]:
    """The nodes' connection gauges once they add up to `total` (connections are counted
    and uncounted by the nodes a moment after the client sees them open or close)."""
    deadline = time.monotonic() + timeout
    while True:
        counts = await gauges(nodes)
        if sum(counts) == total or time.monotonic() > deadline:
            return counts
        await asyncio.sleep(0.1)


async def node_of(conn: pc.Connection, nodes) -> int:
    """Which node a connection through the balancer landed on: the one whose count of ping
    frames grows when it pings (no other client may ping meanwhile)."""
    name = "parley_frames_in_total"
    before = [await asyncio.to_thread(metric, node, name, 'type="ping"') or 0 for node in nodes]
    await conn.ok("ping")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        after = [await asyncio.to_thread(metric, node, name, 'type="ping"') or 0 for node in nodes]
        grown = [i for i, (b, a) in enumerate(zip(before, after)) if a > b]
        if grown:
            assert len(grown) == 1, f"one ping counted by several nodes: {before} -> {after}"
            return grown[0]
        await asyncio.sleep(0.05)
    raise AssertionError("a ping through the balancer reached no node's /metrics")


async def collect(conn: pc.Connection, channel_id: str, count: int, timeout: float) -> list[dict]:
    """The `event.message` frames of a channel on a connection, until `count` or `timeout`."""
    got: list[dict] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            event = await asyncio.wait_for(conn.events.get(), remaining)
        except asyncio.TimeoutError:
            break
        if event.get("type") == "event.message" and event.get("channel_id") == channel_id:
            got.append(event)
    return got


def retried_handshakes(lines: list[str]) -> list[str]:
    """Access-log lines of requests that nginx sent to more than one node (a refused or
    failed attempt, then the next node): `upstream=a, b`."""
    return [line for line in lines if re.search(r"upstream=\S+, ", line)]


# MARK: - tests


@pytest.mark.time_limit(180)
async def test_connections_spread_over_both_nodes(cluster, balancer):
    nodes = await start_nodes(cluster)
    lb = await asyncio.to_thread(balancer, nodes)

    # What the balancer answers itself, or keeps to itself.
    status, _, body = await asyncio.to_thread(http_get, lb.http + "/healthz")
    assert (status, body) == (200, b"ok\n"), (status, body)
    status, _, _ = await asyncio.to_thread(http_get, lb.http + "/metrics")
    assert status == 404, f"/metrics through the balancer answered {status}: it must stay private"
    status, _, _ = await asyncio.to_thread(http_get, lb.http + "/elsewhere")
    assert status == 404, status
    # The web client comes from the nodes through the balancer, with the relay's headers.
    status, headers, body = await asyncio.to_thread(http_get, lb.http + "/")
    policy = {k.lower(): v for k, v in headers.items()}.get("content-security-policy", "")
    assert status == 200 and b"<!doctype html>" in body[:200].lower(), (status, body[:200])
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy, policy
    status, _, body = await asyncio.to_thread(http_get, f"http://127.0.0.1:{lb.status_port}/nginx_status")
    assert status == 200 and b"Active connections" in body, (status, body)

    clients = 40
    made = await asyncio.gather(*(pc.new_user(lb.url) for _ in range(clients)))
    counts = await settle(nodes, clients)
    for conn, _ in made:
        await conn.ok("ping")
    connected_on_nodes = await gauges(nodes)
    workers = subprocess.run(["pgrep", "-P", str(lb.proc.pid)], capture_output=True, text=True).stdout.split()
    print(f"\nfigures: {clients} authenticated clients through nginx (least_conn, {len(workers)} workers "
          f"sharing the upstream zone), connections per node {connected_on_nodes}")

    assert sum(counts) == clients, f"the nodes count {counts} connections, {clients} were opened"
    assert min(counts) >= clients // 4, f"least_conn left a node almost idle: {counts}"
    assert abs(counts[0] - counts[1]) <= clients // 5, f"connections unevenly spread: {counts}"


@pytest.mark.time_limit(180)
async def test_users_on_different_nodes_exchange_messages(cluster, balancer):
    nodes = await start_nodes(cluster)
    lb = await asyncio.to_thread(balancer, nodes)
    members, per_sender = 4, 30

    # One at a time, so that each connection can be placed by its ping (least_conn alternates).
    accounts = []
    for _ in range(members):
        conn, user = await pc.new_user(lb.url)
        accounts.append((conn, user, await node_of(conn, nodes)))
    owner_conn, owner, _ = accounts[0]
    channel = await pc.create_channel(owner_conn, owner, [user for _, user, _ in accounts[1:]], name="across")
    await pc.rotate_key(owner_conn, owner, channel, [user for _, user, _ in accounts])
    subscribers = []
    for _, user, _ in accounts:
        conn = await pc.connect_as(lb.url, user)
        node = await node_of(conn, nodes)
        await conn.ok("subscribe", channels=[{"channel_id": channel.channel_id, "after": 0}])
        assert (await conn.next_event("event.synced"))["seq"] == 0
        subscribers.append((conn, user, node))
    sender_nodes = [node for _, _, node in accounts]
    subscriber_nodes = [node for _, _, node in subscribers]
    assert set(sender_nodes) == {0, 1} and set(subscriber_nodes) == {0, 1}, \
        f"nginx did not use both nodes: senders on {sender_nodes}, subscribers on {subscriber_nodes}"

    # Every member sends at once, pipelined, from its own node.
    sent = await asyncio.gather(*(
        pc.send_many(conn, channel, user, per_sender, window=8, body=f"{user.username}#")
        for conn, user, _ in accounts))
    body_of = {}
    for (_, user, _), results in zip(accounts, sent):
        for i, reply in enumerate(results):
            assert reply.get("type") == "message", reply
            body_of[reply["seq"]] = (f"{user.username}#{i}", user)
    total = members * per_sender
    assert sorted(body_of) == list(range(1, total + 1)), "acknowledged seqs are not 1..N"

    started = time.monotonic()
    received = await asyncio.gather(*(collect(conn, channel.channel_id, total, timeout=20)
                                      for conn, _, _ in subscribers))
    waited = time.monotonic() - started
    cross_node = await gauges(nodes, "parley_cross_node_messages_total")
    node_of_sender = {user.user_id: node for _, user, node in accounts}
    problems = []
    for (conn, user, node), events in zip(subscribers, received):
        seqs = [event["seq"] for event in events]
        from_other_node = sum(1 for seq in seqs if seq in body_of and node_of_sender[body_of[seq][1].user_id] != node)
        if seqs != list(range(1, total + 1)):
            problems.append(f"subscriber {user.username} on node {node + 1}: {len(seqs)} of {total} messages, "
                            f"{len(seqs) - len(set(seqs))} duplicates, in order: {seqs == sorted(seqs)}, "
                            f"{from_other_node} of them stored by the other node; first seqs {seqs[:8]}")
            continue
        for event in events:
            body, sender = body_of[event["seq"]]
            assert pc.decrypt_message(channel.key, event, sender.spki) == body, f"seq {event['seq']}"
    print(f"\nfigures: {members} members, senders on nodes {[n + 1 for n in sender_nodes]}, subscribers on "
          f"nodes {[n + 1 for n in subscriber_nodes]}, {total} messages, received per subscriber "
          f"{[len(events) for events in received]}, cross-node deliveries per node (metrics) {cross_node}, "
          f"waited {waited:.1f} s")
    assert not problems, "every subscriber gets every message exactly once, in order:\n" + "\n".join(problems)


@pytest.mark.time_limit(120)
async def test_a_handshake_refused_with_503_is_retried_on_the_other_node(cluster, balancer):
    """The 503 a draining node answers lasts a moment; a full node (--max-connections)
    answers the same 503 for as long as it is full, which makes the retry observable."""
    full = 2
    roomy = await asyncio.to_thread(cluster.start_node, *NODE_ARGS)
    small = await asyncio.to_thread(cluster.start_node, *NODE_ARGS, "--max-connections", str(full))
    nodes = [roomy, small]
    lb = await asyncio.to_thread(balancer, nodes)
    opened, failures = [], []
    for _ in range(10):
        try:
            conn = await pc.connect(lb.url)
            await conn.ok("ping")
            opened.append(conn)
        except Exception as error:   # a client that saw the refusal
            failures.append(repr(error))
    counts = await settle(nodes, len(opened))
    refused_by_node = await asyncio.to_thread(metric, small, "parley_rejections_total", 'reason="max_connections"')
    for conn in opened:
        await conn.close()
    # nginx logs a WebSocket when it closes.
    deadline = time.monotonic() + 10
    while len([line for line in lb.access_log() if '"GET /ws ' in line]) < len(opened) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    retried = retried_handshakes(lb.access_log())
    print(f"\nfigures: 10 handshakes through nginx, node 2 limited to {full} connections: per node {counts}, "
          f"refused by node 2 with 503 {int(refused_by_node or 0)}, retried by nginx {len(retried)} "
          f"({[re.search(r'upstream_status=([^a-z]+) connect', line).group(1).strip() for line in retried]}), "
          f"refused to the client {len(failures)}")

    assert not failures, f"handshakes refused to the client: {failures[:3]}"
    assert counts == [10 - full, full], counts
    assert refused_by_node and refused_by_node >= 1, "node 2 never refused a handshake: nothing was tested"
    assert retried and all(re.search(r"upstream_status=503, 101 ", line) for line in retried), retried


RATE = 4.0   # messages per second per sender


async def _until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@pytest.mark.time_limit(300)
async def test_sigterm_one_node_clients_move_to_the_other(cluster, balancer):
    nodes = await start_nodes(cluster)
    lb = await asyncio.to_thread(balancer, nodes)
    url = lambda: lb.url
    stats = Stats()
    made = await rooms(lb.url, channels=4, per_channel=4)
    senders = [Sender(conn, user, room.channel, url, stats) for room in made for conn, user in room.members]
    subscribers = list(await asyncio.gather(*(
        subscribe_from_start(url, user, room.channel.channel_id, stats)
        for room in made for _, user in room.members)))
    clients = len(senders) + len(subscribers)
    before = await settle(nodes, clients)
    assert sum(before) == clients and min(before) > 0, f"connections per node before the stop: {before}"

    followers = [asyncio.create_task(s.run()) for s in subscribers]
    stop = asyncio.Event()
    load = [asyncio.create_task(s.run(RATE, stop, phase=i / (RATE * len(senders))))
            for i, s in enumerate(senders)]
    await asyncio.sleep(4)

    # New clients keep arriving while the node drains and after it is gone: each must get
    # its handshake (nginx retries a 503 or a refused connection on the other node).
    arrivals = {"ok": 0, "refused": []}
    arriving = asyncio.Event()

    async def newcomers():
        while not arriving.is_set():
            try:
                conn = await pc.connect(lb.url)
                await conn.ok("ping")
                arrivals["ok"] += 1
                await conn.close()
            except Exception as error:   # any failure is a client refused
                arrivals["refused"].append(repr(error))
            await asyncio.sleep(0.1)

    newcomer_task = asyncio.create_task(newcomers())
    stopped, survivor = nodes[1], nodes[0]
    sigterm_at = time.monotonic()
    exit_code = await asyncio.to_thread(stopped.terminate)
    stopped_in = time.monotonic() - sigterm_at
    await asyncio.sleep(3)
    arriving.set()
    await newcomer_task

    # Every client is back (through nginx, so on the survivor) and resubscribed.
    try:
        await _until(lambda: all(not s.conn.closed.is_set() for s in subscribers)
                     and all(not s.conn.closed.is_set() for s in senders), 30, "every client to reconnect")
        await asyncio.sleep(3)
    finally:
        stop.set()
        await asyncio.gather(*load)
    unfinished = await drain(senders, timeout=60)
    verdict = await verify(made, lb.url, stats, subscribers, deliver_timeout=20)
    for task in followers:
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()
        task.cancel()
    await asyncio.gather(*followers, return_exceptions=True)
    after = await settle([survivor], clients)

    resumed = [s for s in subscribers
               if any(e["at"] > sigterm_at and e["recovered"] is True for e in s.subscriptions)]
    retried = retried_handshakes(lb.access_log())
    attempted = len(stats.attempted)
    print(f"\nfigures: {len(senders)} senders + {len(subscribers)} subscribers through nginx, per node before "
          f"{before}, node 2 stopped (SIGTERM) in {stopped_in:.1f} s (exit {exit_code}), on node 1 after {after[0]}, "
          f"reconnects {stats.reconnects}, resumed subscribers {len(resumed)}, newcomers during the stop "
          f"{arrivals['ok']} ok / {len(arrivals['refused'])} refused, handshakes nginx retried on the other node "
          f"{len(retried)}, unavailable answers {len(stats.unavailable)}, attempted {attempted}, "
          f"stored {verdict.stored}, lost {verdict.lost}, duplicates {verdict.duplicates}, gaps {verdict.gaps}")

    assert exit_code == 0, f"the stopped node exited {exit_code}"
    assert not arrivals["refused"], f"clients refused through the balancer: {arrivals['refused'][:5]}"
    assert arrivals["ok"] > 0
    assert after == [clients], f"after the stop node 1 holds {after[0]} connections, {clients} clients are open"
    assert stats.reconnects >= before[1], \
        f"{stats.reconnects} reconnects, but node 2 held {before[1]} connections"
    assert not stats.unexpected, f"unexpected errors: {stats.unexpected[:5]}"
    assert stats.timeouts == 0, f"{stats.timeouts} requests never answered"
    assert unfinished == 0, f"{unfinished} messages still unacknowledged 60 s after the load"
    assert not verdict.details, "\n".join(verdict.details[:10])
    assert (verdict.lost, verdict.duplicates, verdict.gaps) == (0, 0, 0)
    assert verdict.stored == attempted == len(stats.acked)
    for sub in subscribers:
        assert sub.seqs == list(range(1, sub.last + 1)), "every seq exactly once, in order"


@pytest.mark.time_limit(180)
async def test_tls_at_the_balancer(cluster, balancer):
    nodes = await start_nodes(cluster)
    # As shipped: TLS on its port, and plain http:// redirects everything but /healthz.
    lb = await asyncio.to_thread(balancer, nodes, tls=True, plain_ws=False)
    trusted = ssl.create_default_context(cafile=lb.cert)

    # A client that does not trust the certificate is refused by its own TLS stack.
    with pytest.raises(ssl.SSLCertVerificationError):
        await pc.connect(lb.wss_url, ssl=ssl.create_default_context())

    conn = await pc.connect(lb.wss_url, ssl=trusted)
    user = await pc.signup(conn)
    tls_version = conn.ws.transport.get_extra_info("ssl_object").version()
    channel = await pc.create_channel(conn, user, name="tls")
    await pc.rotate_key(conn, user, channel, [user])
    await conn.ok("subscribe", channels=[{"channel_id": channel.channel_id, "after": 0}])
    await conn.next_event("event.synced")
    ack = await pc.send_message(conn, channel, user, "over wss")
    event = await conn.next_event("event.message")
    assert event["seq"] == ack["seq"] and pc.decrypt_message(channel.key, event, user.spki) == "over wss"

    # A second connection (TLS 1.2 at most, still modern) lands on the other node.
    tls12 = ssl.create_default_context(cafile=lb.cert)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    second = await pc.connect(lb.wss_url, ssl=tls12)
    await pc.auth(second, user)
    second_version = second.ws.transport.get_extra_info("ssl_object").version()
    counts = await settle(nodes, 2)

    def https_get(path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{lb.https_port}{path}", context=trusted,
                                        timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    healthz = await asyncio.to_thread(https_get, "/healthz")
    metrics_status, _ = await asyncio.to_thread(https_get, "/metrics")

    def plain(path: str, headers: dict) -> tuple[int, str]:
        connection = http.client.HTTPConnection("127.0.0.1", lb.http_port, timeout=10)
        try:
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            return response.status, response.getheader("Location") or ""
        finally:
            connection.close()

    plain_ws = await asyncio.to_thread(plain, "/ws", {
        "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Protocol": pc.SUBPROTOCOL,
        "Host": "127.0.0.1"})
    plain_healthz = await asyncio.to_thread(plain, "/healthz", {})
    print(f"\nfigures: wss:// through nginx with a self-signed certificate: {tls_version} (default client), "
          f"{second_version} (TLS 1.2 client), connections per node {counts}, https /healthz {healthz[0]}, "
          f"https /metrics {metrics_status}, plain ws:// {plain_ws[0]} -> {plain_ws[1]}, plain /healthz "
          f"{plain_healthz[0]}")

    assert tls_version in ("TLSv1.2", "TLSv1.3"), tls_version
    assert second_version == "TLSv1.2", second_version
    assert sorted(counts) == [1, 1], f"two wss:// connections, per node: {counts}"
    assert healthz == (200, b"ok\n"), healthz
    assert metrics_status == 404
    assert plain_ws[0] == 301 and plain_ws[1].startswith("https://"), \
        f"plain ws:// must be redirected to https (passkeys and tokens in clear): {plain_ws}"
    assert plain_healthz[0] == 200, plain_healthz
