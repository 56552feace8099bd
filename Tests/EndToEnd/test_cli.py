"""The `parley` command-line client (the Swift SDK) against the real relay.

The binary: $PARLEY_CLI_BIN, else `parley` next to the relay binary (`make test` builds both).
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile

import pytest

from conftest import server_binary
from parley_client import random_username


def cli_binary() -> str:
    explicit = os.environ.get("PARLEY_CLI_BIN")
    path = explicit or os.path.join(os.path.dirname(server_binary()), "parley")
    if not os.access(path, os.X_OK):
        pytest.fail(f"no parley binary at {path} (build it, or set PARLEY_CLI_BIN)")
    return path


def run(relay, identity: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([cli_binary(), "--server", relay.url, "--identity", identity, *args],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
    if check:
        assert done.returncode == 0, f"parley {' '.join(args)}: {done.returncode}\n{done.stderr}"
    return done


def test_cli_signup_create_send_history(relay):
    with tempfile.TemporaryDirectory(prefix="pcli-") as home:
        alice_id, bob_id = os.path.join(home, "alice.json"), os.path.join(home, "bob.json")
        alice, bob = random_username("clia"), random_username("clib")

        signed = json.loads(run(relay, alice_id, "--json", "signup", alice).stdout)
        assert signed["username"] == alice and signed["passkey"]
        assert os.stat(alice_id).st_mode & 0o077 == 0          # identity file is 0600
        run(relay, bob_id, "signup", bob)

        who = json.loads(run(relay, alice_id, "--json", "whoami").stdout)
        assert who["username"] == alice and who["fingerprint"] == signed["fingerprint"]
        assert signed["passkey"] not in run(relay, alice_id, "whoami").stdout   # shown once only

        created = json.loads(run(relay, alice_id, "--json", "create", "cli-room", bob).stdout)
        run(relay, alice_id, "send", "cli-room", "hello", "from", "alice")   # by name
        run(relay, bob_id, "send", created["channel_id"], "hi alice")        # by id

        page = json.loads(run(relay, bob_id, "--json", "history", "cli-room").stdout)
        texts = [(m["sender"], m["text"], m["verified"]) for m in page["messages"]]
        assert texts == [(alice, "hello from alice", True), (bob, "hi alice", True)]
        human = run(relay, alice_id, "history", "cli-room", "--after", "1").stdout
        assert f"{bob}: hi alice" in human and "hello from alice" not in human

        members = json.loads(run(relay, bob_id, "--json", "members", "cli-room").stdout)
        assert sorted(m["username"] for m in members) == sorted([alice, bob])


def test_cli_errors_and_exit_codes(relay):
    with tempfile.TemporaryDirectory(prefix="pcli-") as home:
        ident = os.path.join(home, "me.json")
        assert run(relay, ident, "whoami", check=False).returncode == 1      # no identity yet
        assert run(relay, ident, "no-such-command", check=False).returncode == 64
        run(relay, ident, "signup", random_username("clie"))
        done = run(relay, ident, "add", "nowhere", "nobody", check=False)
        assert done.returncode == 1 and "no channel nowhere" in done.stderr
        run(relay, ident, "create", "solo")
        done = run(relay, ident, "add", "solo", random_username("ghost"), check=False)
        assert done.returncode == 1 and "not_found" in done.stderr
