"""A real S3-compatible server for the tests: moto, on loopback, started and stopped by pid.

One server per test session (``moto_server``), serving one request at a time: moto checks
``If-None-Match``/``If-Match`` and then writes without a lock, so a threaded server can let two
racing conditional writes both win; served one by one, its conditional writes are atomic, as S3's
are. Every test gets its own bucket and an environment with explicit credentials, so no client
ever looks for cloud credentials (instance metadata lives off loopback) and nothing leaves
127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx

# Run as a script: a single-threaded moto on 127.0.0.1, an ephemeral port printed on stdout.
SERVER = """
import signal, sys
from werkzeug.serving import make_server
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
server = make_server("127.0.0.1", 0, DomainDispatcherApplication(create_backend_app), threaded=False)
print(server.server_port, flush=True)
server.serve_forever()
"""
START_TIMEOUT_S = 60.0


@dataclass
class MotoServer:
    """A running moto server."""

    process: subprocess.Popen[str]
    endpoint: str

    def stop(self) -> None:
        """Stop it by pid: SIGTERM, then SIGKILL if it does not go within a few seconds."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_moto(log: Path) -> MotoServer:
    """Start a single-threaded moto on 127.0.0.1 and wait until it answers."""
    handle = log.open("w")
    process = subprocess.Popen(
        [sys.executable, "-c", SERVER], stdout=subprocess.PIPE, stderr=handle, text=True, env=_clean_env()
    )
    assert process.stdout is not None
    port = process.stdout.readline().strip()
    if not port.isdigit():
        process.kill()
        raise RuntimeError(f"moto did not start: {log.read_text()[-2000:]}")
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            if httpx.get(f"{endpoint}/moto-api/", timeout=2).status_code == 200:
                return MotoServer(process, endpoint)
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise RuntimeError(f"moto did not answer: {log.read_text()[-2000:]}")
        time.sleep(0.1)


def _clean_env() -> dict[str, str]:
    return {
        key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "GOOGLE_", "AZURE_"))
    }


def storage_env(endpoint: str, cache: Path) -> dict[str, str]:
    """The environment every client in a test sees: explicit test credentials, loopback endpoint."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing-secret-do-not-print",
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
        # never look for credentials anywhere else (EC2 metadata is not on loopback)
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        # staging folders of object-storage outputs go under the test's own folder
        "XDG_CACHE_HOME": str(cache),
    }


@dataclass
class Bucket:
    """A fresh bucket on the test server, with helpers that go through the same obstore as the pipeline."""

    name: str
    endpoint: str

    def url(self, key: str = "") -> str:
        return f"s3://{self.name}/{key}"

    def _store(self):  # type: ignore[no-untyped-def]
        from obstore.store import S3Store

        return S3Store(
            self.name,
            endpoint=self.endpoint,
            access_key_id="testing",
            secret_access_key="testing-secret-do-not-print",
            region="us-east-1",
            client_options={"allow_http": True},
        )

    def put(self, key: str, data: bytes) -> None:
        import obstore

        obstore.put(self._store(), key, data)

    def get(self, key: str) -> bytes:
        import obstore

        return bytes(obstore.get(self._store(), key).bytes())

    def keys(self, prefix: str = "") -> list[str]:
        import obstore

        found = [str(meta["path"]) for chunk in obstore.list(self._store(), prefix or None) for meta in chunk]
        return sorted(found)

    def delete(self, key: str) -> None:
        import obstore

        obstore.delete(self._store(), key)


def new_bucket(endpoint: str) -> Bucket:
    """Create a bucket with a unique name (moto takes an unsigned PUT)."""
    name = f"t-{uuid.uuid4().hex[:20]}"
    response = httpx.put(f"{endpoint}/{name}", timeout=30)
    response.raise_for_status()
    return Bucket(name, endpoint)
