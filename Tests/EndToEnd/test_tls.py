"""§1: `wss://` when the relay is given a certificate — WebSocket and HTTP on one TLS port."""
import asyncio
import json
import ssl
import subprocess
import urllib.request

import pytest
import websockets

from conftest import new_data_dir


def _self_signed(folder: str) -> tuple[str, str]:
    cert, key = f"{folder}.cert.pem", f"{folder}.key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert],
        check=True, capture_output=True)
    return cert, key


@pytest.mark.time_limit(180)
async def test_wss_and_https_with_a_certificate(own_relay):
    cert, key = _self_signed(new_data_dir())
    relay = own_relay("--tls-cert", cert, "--tls-key", key)
    await asyncio.to_thread(relay.start)
    assert "wss://127.0.0.1:" in relay.log_text()
    context = ssl.create_default_context(cafile=cert)

    url = f"wss://127.0.0.1:{relay.port}/ws"
    async with websockets.connect(url, subprotocols=["parley.v1"], ssl=context) as ws:
        await ws.send(json.dumps({"id": "t1", "type": "ping"}))
        reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert reply["re"] == "t1" and reply["type"] == "ping"

    def healthz() -> tuple[int, bytes]:
        with urllib.request.urlopen(f"https://127.0.0.1:{relay.port}/healthz", context=context, timeout=10) as r:
            return r.status, r.read()
    assert await asyncio.to_thread(healthz) == (200, b"ok\n")

    # Plain ws:// on the TLS port is not served.
    with pytest.raises(Exception):
        async with websockets.connect(f"ws://127.0.0.1:{relay.port}/ws", subprotocols=["parley.v1"],
                                      open_timeout=5) as ws:
            await ws.send(json.dumps({"id": "t2", "type": "ping"}))
            await asyncio.wait_for(ws.recv(), 5)
