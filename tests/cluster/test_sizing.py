"""How senders are sized: every sender fits a node, the job's concurrency is split, images get threads."""

from __future__ import annotations

import math

import pytest

from pipeline.cluster.sizing import READ_CPUS, size_senders


@pytest.mark.parametrize(
    ("nodes", "workers"),
    [
        ([2, 2], 1),
        ([2, 2], 3),
        ([2, 2], 4),
        ([1, 1], 1),
        ([1, 1], 4),
        ([16, 16, 16], 5),
        ([8, 1], 4),
        ([4], 64),
    ],
)
def test_every_sender_fits_some_node_at_once(nodes: list[float], workers: int) -> None:
    """The senders' CPU labels pack onto the nodes, with room left on each for a read task."""
    sizing = size_senders(nodes, workers=workers, concurrency=16)
    assert sizing.workers == workers
    fits = sum(math.floor((cpus - READ_CPUS) / sizing.cpus + 1e-9) for cpus in nodes)
    assert fits >= workers
    assert sizing.threads >= 1


def test_defaults_one_sender_per_cpu_and_split_the_concurrency() -> None:
    """No worker count: one per CPU (at most 16); each keeps its share of the job's requests in flight."""
    assert size_senders([2, 2], workers=None, concurrency=16).workers == 4
    assert size_senders([64, 64], workers=None, concurrency=16).workers == 16
    assert size_senders([2, 2], workers=None, concurrency=10).concurrency == 3  # 4 x 3 >= 10
    assert size_senders([2, 2], workers=8, concurrency=4).concurrency == 1


def test_a_lone_sender_on_a_big_node_prepares_images_on_its_cpus() -> None:
    """One sender on an 8-CPU node gets most of it, and as many threads; four get about two each."""
    assert size_senders([8], workers=1, concurrency=16).threads == 8
    assert size_senders([8], workers=4, concurrency=16).threads == 2
