"""The lease of an object-storage output, on a real S3 server: conditional writes decide, not clocks."""

from __future__ import annotations

import json
import threading

import pytest

from pipeline.errors import OutputError
from pipeline.results.lease import Lease
from pipeline.rows.storage import ObjectStorage
from storagekit import Bucket


def _lease(s3: Bucket, *, ttl: float = 60.0, clock: list[float] | None = None) -> Lease:
    now = clock if clock is not None else [1_000_000.0]
    return Lease(ObjectStorage(), s3.url("out/.lease"), ttl_s=ttl, label="out", clock=lambda: now[0])


def test_one_holder_at_a_time_and_release_frees_it(s3: Bucket) -> None:
    """A second lease is refused while the first is held; once released it is taken at once."""
    first, second = _lease(s3), _lease(s3)
    first.host = second.host = "host-a"
    first.acquire()
    try:
        with pytest.raises(OutputError, match=r"out is in use by another run \(host host-a, pid \d+"):
            second.acquire()
    finally:
        first.release()
    second.acquire()
    assert second.holder() is not None
    second.release()
    assert second.holder() is None


def test_a_lease_from_another_host_is_taken_only_after_it_expires(s3: Bucket) -> None:
    """Elsewhere's live lease refuses us; past its expiry (and the clock skew margin) it is taken over,
    and its holder finds out at its next renewal."""
    clock = [1_000_000.0]
    theirs, ours = _lease(s3, ttl=30, clock=clock), _lease(s3, ttl=30, clock=clock)
    theirs.host = "elsewhere"
    theirs.acquire()
    theirs._stop.set()  # a holder that stopped renewing (its machine is gone)
    with pytest.raises(OutputError, match="its lease expires at"):
        ours.acquire()
    clock[0] += 30 + 6
    ours.acquire()
    theirs.renew()
    assert theirs.lost is not None
    with pytest.raises(OutputError, match="taken by another run"):
        theirs.check()
    ours.release()


def test_a_dead_holder_on_this_host_frees_the_lease_at_once(s3: Bucket) -> None:
    """A lease whose holder process is gone (same host, pid dead) is no lease: kill -9 never locks us out."""
    dead = _lease(s3)
    dead.pid = 2**22 + 12345  # beyond pid_max: no such process
    dead.acquire()
    dead._stop.set()
    ours = _lease(s3)
    ours.acquire()
    record = json.loads(s3.get("out/.lease"))
    assert record["pid"] == ours.pid
    ours.release()


def test_every_write_carries_a_fresh_nonce(s3: Bucket) -> None:
    """Two writes of the same lease differ, so their ETags (MD5 of the body) differ: no ABA."""
    lease = _lease(s3)
    lease.acquire()
    first_etag, first_body = lease.etag, s3.get("out/.lease")
    lease.renew()
    assert lease.etag != first_etag
    assert s3.get("out/.lease") != first_body
    lease.release()


def test_racing_runs_get_exactly_one_lease(s3: Bucket) -> None:
    """Sixteen contenders at once: one wins, fifteen are refused naming it."""
    contenders = [_lease(s3) for _ in range(16)]
    for index, lease in enumerate(contenders):
        lease.host = f"host-{index}"  # on other hosts, so nobody sees a live pid as dead
    outcomes: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(len(contenders))

    def contend(lease: Lease) -> None:
        start.wait()
        try:
            lease.acquire()
            verdict = "won"
        except OutputError:
            verdict = "refused"
        with lock:
            outcomes.append(verdict)

    threads = [threading.Thread(target=contend, args=(lease,)) for lease in contenders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(outcomes) == ["refused"] * 15 + ["won"]
    for lease in contenders:
        lease.release()
