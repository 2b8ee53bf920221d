"""How many senders a run gets, and each one's share: Ray's CPU label, its threads, its requests in flight.

A sender prepares images on as many threads as the CPUs it is given, so its Ray ``num_cpus`` is its
share of the cluster: the CPUs (less what the read tasks need) split over the senders, but never more
than a node can hold, and small enough that every sender fits on some node at once (a sender Ray
cannot place would wait forever). The job's ``concurrency`` is the whole cluster's: each sender keeps
its part of it in flight, so N senders together hold as many requests open as one local run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MAX_DEFAULT_WORKERS = 16
READ_CPUS = 0.1  # a read task is light; a whole CPU each would leave the senders' CPUs fragmented
STEP = 0.01


@dataclass(frozen=True, slots=True)
class Sizing:
    """The senders of a run.

    :param cpus: Ray's ``num_cpus`` for one sender (a scheduling label; Ray reserves no core).
    :param threads: threads one sender prepares images on.
    :param concurrency: requests one sender keeps in flight.
    """

    workers: int
    cpus: float
    threads: int
    concurrency: int


def size_senders(node_cpus: list[float], *, workers: int | None, concurrency: int) -> Sizing:
    """The sizing for a cluster whose live nodes have ``node_cpus`` logical CPUs each.

    :param workers: senders asked for; None: one per CPU of the cluster, at most 16.
    :param concurrency: the job's requests in flight, for the whole cluster.
    """
    room = [max(0.0, cpus - READ_CPUS) for cpus in node_cpus] or [1.0]
    total = sum(node_cpus) or 1.0
    count = workers or max(1, min(MAX_DEFAULT_WORKERS, int(total)))
    share = math.floor(min((total - 2 * READ_CPUS) / count, max(room)) / STEP) * STEP
    while share > STEP and sum(math.floor(free / share + 1e-9) for free in room) < count:
        share = round(share - STEP, 2)  # some sender would find no node with room: make each smaller
    share = max(STEP, round(share, 2))
    return Sizing(
        workers=count,
        cpus=share,
        threads=max(1, round(share)),
        concurrency=max(1, math.ceil(concurrency / count)),
    )


def cluster_nodes() -> list[float]:
    """Logical CPUs of every live node of the connected cluster."""
    import ray

    nodes = ray.nodes()  # type: ignore[no-untyped-call]
    return [float(node["Resources"].get("CPU", 0.0)) for node in nodes if node.get("Alive")]
