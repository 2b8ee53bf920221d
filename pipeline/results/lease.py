"""The lease of an object-storage output: one run at a time, where there is no ``flock``.

The lease is one small JSON object, ``OUTPUT/.lease``: who holds it (host, pid, the process's start),
since when, and until when (``expires_at``, epoch seconds). Correctness rests on conditional writes
alone (S3 ``If-None-Match: *`` and ``If-Match: <etag>``, GCS and Azure alike): a run takes the lease
by creating the object, or by overwriting exactly the version it read and found expired; it renews
by overwriting exactly its own version; it releases by writing an expired version. Every write
carries a fresh nonce, because an S3 ETag is the MD5 of the body: two identical bodies would share
an ETag and a stale writer's If-Match would pass.

A holder renews every third of ``[storage] lease_ttl_s`` (default 120 s) from a background thread,
so a run is never mistaken for a dead one while it compacts or waits. When a renewal finds another
version, the lease is lost: the run stops writing (its journal refuses further results) and exits
2, keeping what it already uploaded.

When a run dies holding the lease (``kill -9``, a lost machine), the lease stays until it expires:
at most ``lease_ttl_s`` after its last renewal. A second run on the *same host* sees that the
holder's process is gone (its pid is dead, or belongs to a process started at another time) and
takes the lease over at once; on another host it is refused, told when the lease expires, and may
start then. Clocks of the two hosts must agree to within :data:`SKEW_S`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pipeline.errors import OutputError
from pipeline.rows.storage import ObjectChanged, ObjectExists, ObjectNotFound, ObjectStorage, ObjectStoreError

log = logging.getLogger("pipeline.run")

LEASE_NAME = ".lease"
SKEW_S = 5.0  # how far apart two hosts' clocks may be before an expiry is trusted
ATTEMPTS = 6  # rounds of read-and-decide when other runs race for the lease


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """What the lease object says."""

    host: str
    pid: int
    process_start: str
    started_at: float
    expires_at: float
    nonce: str

    @classmethod
    def from_json(cls, data: Any) -> LeaseRecord:
        """Read a lease body; ValueError when it is not one."""
        if not isinstance(data, dict):
            raise ValueError("not a lease")
        return cls(
            host=str(data.get("host", "")),
            pid=int(data.get("pid", 0)),
            process_start=str(data.get("process_start", "")),
            started_at=float(data.get("started_at", 0.0)),
            expires_at=float(data.get("expires_at", 0.0)),
            nonce=str(data.get("nonce", "")),
        )

    def describe(self) -> str:
        """``host h, pid 12, started 2026-...Z``: for the message a refused run prints."""
        started = datetime.fromtimestamp(self.started_at, UTC).isoformat(timespec="seconds")
        return f"host {self.host}, pid {self.pid}, started {started}"


def process_start(pid: int) -> str:
    """When a process started (its start time in clock ticks since boot, from ``/proc``), or ``""``.

    Together with the pid it names one process: a pid reused by another process has another start.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        return fields[19].decode()
    except (OSError, IndexError):
        return ""


def _alive(pid: int, start: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: it exists
    return not start or process_start(pid) in ("", start)


class Lease:
    """The lease of one object-storage output (see the module docstring).

    :param url: the lease object's URL (``OUTPUT/.lease``).
    :param label: how messages name the output.
    :param clock: epoch seconds (tests move it).
    """

    def __init__(
        self,
        storage: ObjectStorage,
        url: str,
        *,
        ttl_s: float,
        label: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.storage = storage
        self.url = url
        self.ttl_s = ttl_s
        self.label = label
        self.clock = clock
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.start = process_start(self.pid)
        self.started_at = clock()
        self.etag: str | None = None
        self.lost: str | None = None  # why the lease was lost, once it was
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ reading

    def read(self) -> tuple[LeaseRecord | None, str | None]:
        """The lease as it stands (None when there is none) and its ETag."""
        try:
            data, etag = self.storage.get_with_etag(self.url)
        except ObjectNotFound:
            return None, None
        try:
            return LeaseRecord.from_json(json.loads(data)), etag
        except (ValueError, TypeError):
            return None, etag  # unreadable: treated as expired, and replaced only by a conditional write

    def holder(self) -> LeaseRecord | None:
        """Who holds the lease right now, or None (expired or released); changes nothing."""
        record, _ = self.read()
        if record is None or self._expired(record):
            return None
        return record

    def _expired(self, record: LeaseRecord) -> bool:
        if record.expires_at + SKEW_S < self.clock():
            return True
        # on this host, a holder whose process is gone holds nothing (kill -9 must not lock us out)
        return record.host == self.host and not _alive(record.pid, record.process_start)

    # ------------------------------------------------------------------ holding

    def _body(self, expires_at: float) -> bytes:
        record = {
            "host": self.host,
            "pid": self.pid,
            "process_start": self.start,
            "started_at": self.started_at,
            "expires_at": expires_at,
            "renewed_at": self.clock(),
            "nonce": uuid.uuid4().hex,  # never two identical bodies: an ETag is the body's MD5
        }
        return json.dumps(record).encode()

    def acquire(self) -> None:
        """Take the lease, or raise OutputError naming the live holder and when its lease expires."""
        for _ in range(ATTEMPTS):
            try:
                self.etag = self.storage.put(self.url, self._body(self.clock() + self.ttl_s), mode="create")
                self._start_renewing()
                return
            except ObjectExists:
                pass  # held, or a write racing ours: read it and decide (an S3 409 lands here too)
            except ObjectStoreError as exc:
                raise OutputError(f"cannot take the lease of {self.label}: {exc}") from None
            record, etag = self.read()
            if etag is None:
                continue  # released or deleted meanwhile: try to create it again
            if record is not None and not self._expired(record):
                expires = datetime.fromtimestamp(record.expires_at, UTC).isoformat(timespec="seconds")
                raise OutputError(
                    f"{self.label} is in use by another run ({record.describe()}); its lease expires at"
                    f" {expires} unless renewed, so a run that died holding it frees it by then"
                )
            try:
                self.etag = self.storage.put(self.url, self._body(self.clock() + self.ttl_s), if_match=etag)
            except (ObjectChanged, ObjectNotFound):
                continue  # another run took it first: read again
            except ObjectStoreError as exc:
                raise OutputError(f"cannot take the lease of {self.label}: {exc}") from None
            if record is not None and record.expires_at > 0:  # 0: released by its holder, nothing to say
                log.info("took over the expired lease of %s (%s)", self.label, record.describe())
            self._start_renewing()
            return
        raise OutputError(f"cannot take the lease of {self.label}: other runs keep taking it; try again")

    def renew(self) -> None:
        """Extend the lease by ``ttl_s``; marks it lost when another version is there."""
        with self._lock:
            if self.lost is not None or self.etag is None:
                return
            try:
                self.etag = self.storage.put(
                    self.url, self._body(self.clock() + self.ttl_s), if_match=self.etag
                )
            except (ObjectChanged, ObjectNotFound):
                self.lost = f"the lease of {self.label} was taken by another run"
                log.error("%s; this run stops writing", self.lost)
            except ObjectStoreError as exc:
                # a failed renewal is not a lost lease yet: the next one may get through before expiry
                log.warning("could not renew the lease of %s: %s", self.label, exc)

    def check(self) -> None:
        """Raise OutputError when the lease is lost (before anything is written in its name)."""
        if self.lost is not None:
            raise OutputError(f"{self.lost}; what this run uploaded is kept, rerun to continue")

    def release(self) -> None:
        """Give the lease up (an expired version, conditional on ours); a lost lease is left alone."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=self.ttl_s)
            self._renewer = None
        with self._lock:
            if self.lost is not None or self.etag is None:
                return
            with contextlib.suppress(ObjectStoreError):
                self.storage.put(self.url, self._body(0.0), if_match=self.etag)
            self.etag = None

    def _start_renewing(self) -> None:
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew_loop, name="pipeline-lease", daemon=True)
        self._renewer.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            self.renew()
