"""Several relay nodes on one PostgreSQL (issue 7): the cluster fixture.

A `Cluster` is a PostgreSQL of its own, in a fresh data dir under /tmp: made and migrated
by `parley-server migrate --data-dir D` (which stops it again), then started with
`pg_ctl` so that no relay owns it, and every node is a `parley-server serve
--database-url '<libpq string>'` on it. Each node keeps the suite's settings (rate limits
off, no authentication deadline) and logs to `D/node<N>.relay<start>.log`.

    from cluster import cluster, metric      # the fixture, in a test module

    async def test_x(cluster):
        a = await asyncio.to_thread(cluster.start_node)
        b = await asyncio.to_thread(cluster.start_node, "--db-workers", "2")
        ...
        cluster.terminate_listeners()          # kill every parley-listen backend

At the end the fixture stops the nodes (SIGTERM), stops PostgreSQL and removes the data
dir, unless PARLEY_E2E_KEEP is set (then the dir and the logs stay for a post-mortem).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

import pytest

from conftest import REPO, RelayProcess, pg_ctl, server_binary

PSQL = "/usr/bin/psql"
PG_PORT = 5432   # the port in the socket's name; the embedded cluster opens no TCP port


class NodeProcess(RelayProcess):
    """A relay node on a shared database: `--database-url` instead of `--data-dir`.

    The constructor is RelayProcess's, so the node runs with rate limits off and
    `--auth-timeout 0` as every relay of the suite does. `data_dir` is only the prefix of
    the node's log files (`<prefix>.relay<start>.log`); the node has no data dir of its own.
    """

    def __init__(self, cluster: "Cluster", name: str, extra_args: tuple[str, ...] = ()):
        super().__init__(os.path.join(cluster.data_dir, name), tuple(extra_args))
        self.cluster = cluster
        self.name = name

    def database_args(self) -> list[str]:
        return ["--database-url", self.cluster.connection_string]

    @property
    def label(self) -> str:
        return f"parley-server node {self.name}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cleanup(self) -> None:
        """Stop the node; the cluster's data dir (and its logs) belong to the Cluster."""
        self.terminate()


class Cluster:
    """A PostgreSQL cluster of its own that relay nodes share (see the module doc)."""

    def __init__(self, data_dir: Optional[str] = None):
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="pmn-", dir="/tmp")
        # the unix socket path (D/postgres/.s.PGSQL.5432) must stay under 107 bytes
        assert len(self.data_dir) < 60, self.data_dir
        self.socket_dir = os.path.join(self.data_dir, "postgres")
        self.connection_string = f"host={self.socket_dir} port={PG_PORT} user=parley dbname=parley"
        self.nodes: list[NodeProcess] = []
        self.pg_log = os.path.join(self.data_dir, "postgres.log")   # made by `migrate`, owned by postgres
        self.running = False

    # --- PostgreSQL

    def start(self) -> "Cluster":
        """`parley-server migrate` (initdb + migrations, then it stops the cluster), then pg_ctl start."""
        done = subprocess.run(
            [server_binary(), "migrate", "--data-dir", self.data_dir, "--migrations", str(REPO / "migrations")],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, timeout=180)
        if done.returncode != 0:
            raise RuntimeError(f"parley-server migrate failed ({done.returncode}):\n{done.stdout}")
        conf = Path(self.socket_dir, "parley.conf").read_text()
        port = re.search(r"^port\s*=\s*(\d+)", conf, re.M)
        if not port or int(port.group(1)) != PG_PORT:
            raise RuntimeError(f"embedded cluster not on socket port {PG_PORT}: {conf}")
        started = pg_ctl(self.data_dir, "start", "-w", "-t", "60", "-l", self.pg_log)
        if started.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed:\n{started.stdout}\n" + self._pg_log_tail())
        self.running = True
        assert self.psql("SELECT 1") == "1"
        return self

    def stop_database(self, mode: str = "fast") -> subprocess.CompletedProcess:
        done = pg_ctl(self.data_dir, "stop", "-m", mode, "-w", "-t", "60")
        self.running = False
        return done

    def _pg_log_tail(self) -> str:
        try:
            return Path(self.pg_log).read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def psql(self, sql: str, timeout: float = 30.0) -> str:
        """Run SQL with psql -At (every statement's rows, `|`-separated); its stdout, stripped."""
        done = subprocess.run(
            [PSQL, self.connection_string, "-At", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"],
            input=sql, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout,
            env={**os.environ, "PGAPPNAME": "parley-e2e"})
        if done.returncode != 0:
            raise RuntimeError(f"psql failed ({done.returncode}) on {sql!r}: {done.stderr.strip()}")
        return done.stdout.strip()

    def listener_pids(self) -> list[int]:
        """Backends of the nodes' LISTEN connections (application_name `parley-listen`)."""
        out = self.psql("SELECT pid FROM pg_stat_activity WHERE application_name = 'parley-listen' ORDER BY pid")
        return [int(line) for line in out.splitlines() if line.strip()]

    def terminate_listeners(self) -> int:
        """pg_terminate_backend on every `parley-listen` backend; how many were terminated."""
        out = self.psql(
            "WITH l AS MATERIALIZED (SELECT pid FROM pg_stat_activity WHERE application_name = 'parley-listen') "
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(l.pid)) FROM l")
        return int(out or 0)

    def wait_listeners(self, count: int, timeout: float = 10.0) -> bool:
        """Wait until at least `count` parley-listen backends are connected."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.listener_pids()) >= count:
                return True
            time.sleep(0.1)
        return False

    # --- nodes

    def start_node(self, *extra_args: str) -> NodeProcess:
        node = NodeProcess(self, f"node{len(self.nodes) + 1}", tuple(extra_args))
        self.nodes.append(node)
        return node.start()

    def logs(self) -> str:
        """Every node's log files, headed by their names (for failure messages)."""
        out = []
        for path in sorted(Path(self.data_dir).glob("node*.relay*.log")):
            out.append(f"===== {path.name}\n{path.read_text(errors='replace')}")
        return "\n".join(out)

    def cleanup(self) -> None:
        for node in self.nodes:
            try:
                node.terminate()
            except Exception:
                pass
        if self.running or os.path.exists(os.path.join(self.socket_dir, "postmaster.pid")):
            try:
                self.stop_database("fast")
            except Exception:
                try:
                    pg_ctl(self.data_dir, "stop", "-m", "immediate", "-w", "-t", "60")
                except Exception:
                    pass
        if os.environ.get("PARLEY_E2E_KEEP") is None:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def metrics_text(node: RelayProcess, timeout: float = 10.0) -> str:
    try:
        with urllib.request.urlopen(node.http + "/metrics", timeout=timeout) as response:
            return response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        return error.read().decode("utf-8", "replace")


def metric(node: RelayProcess, name: str, labels: Optional[str] = None) -> Optional[float]:
    """A /metrics sample: `name{labels}` exactly when `labels` is given (e.g. 'result="ok"'),
    else the sum of every sample of `name` whatever its labels. None when there is none."""
    total, found = 0.0, False
    for line in metrics_text(node).splitlines():
        sample = re.match(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})? (\S+)", line)
        if not sample or sample.group(1) != name:
            continue
        if labels is not None and (sample.group(2) or "{}") != "{" + labels + "}":
            continue
        total += float(sample.group(3))
        found = True
    return total if found else None


@pytest.fixture
def cluster():
    """A started Cluster with no nodes yet; everything is stopped and removed at the end."""
    made = Cluster()
    try:
        made.start()
        yield made
    finally:
        made.cleanup()
