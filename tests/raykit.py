"""A real Ray cluster for tests: two nodes on 127.0.0.1, token auth, every process it starts stopped by pid.

Ray on Linux rewrites 127.0.0.1 to the machine's network address and listens on every interface
unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is set before Ray is imported; the variable also
makes ``ray start --address`` refuse to add a node, so nodes are added from Python
(``ray.cluster_utils.Cluster``). Ray 2.60 needs ``RAY_AUTH_MODE=token`` and the token in every
process. ``RAY_TMPDIR`` is a short directory of this session's own (Ray's socket paths must stay
under 108 bytes), and it marks every process of the cluster, which is how they are all found and
killed at the end: Ray's agents survive a killed raylet and ignore SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# GCS notices a dead node after ~12 s by default; these bring it to ~1-2 s
FAST_HEALTH_CHECK = {
    "health_check_initial_delay_ms": 1000,
    "health_check_period_ms": 500,
    "health_check_timeout_ms": 500,
    "health_check_failure_threshold": 3,
}
# two logical CPUs a node (one each starves Ray Data's read tasks), a small object store
NODE: dict[str, Any] = {
    "node_ip_address": "127.0.0.1",
    "num_cpus": 2,
    "num_gpus": 0,
    "object_store_memory": 100 * 2**20,
}
LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}
# one token for every cluster of this process: Ray keeps the first token it reads for the process's
# lifetime, so a second cluster with a new token would refuse this process as its driver
TOKEN = secrets.token_hex(32)


def configure(extra: dict[str, str]) -> tuple[Path, dict[str, str | None]]:
    """Set the environment every Ray process of the tests inherits; its directory, and what it replaced."""
    base = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))  # short on purpose: Ray's socket paths
    token = base / "auth_token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    (base / "t").mkdir()
    values = {
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "RAY_TMPDIR": str(base / "t"),
        **extra,
    }
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    return base, before


def restore(before: dict[str, str | None]) -> None:
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@contextlib.contextmanager
def two_node_cluster(extra_env: dict[str, str], *, cpus_per_node: int = 2) -> Iterator[Any]:
    """A head and one more node, this process connected as driver; everything stopped after.

    :param extra_env: more environment for every process (the API key, as a real cluster's nodes have it).
    :param cpus_per_node: logical CPUs of each node (the benchmark gives one, as many as the cores).
    """
    node = {**NODE, "num_cpus": cpus_per_node}
    base, before = configure(extra_env)
    marker = f"RAY_TMPDIR={base / 't'}"
    try:
        import ray
        from ray._private import ray_constants
        from ray.cluster_utils import Cluster

        ray_constants.ENABLE_RAY_CLUSTER = False  # in case Ray was imported before the variable was set
        cluster = Cluster(
            initialize_head=True,
            shutdown_at_exit=False,
            head_node_args={**node, "include_dashboard": False, "_system_config": FAST_HEALTH_CHECK},
        )
        try:
            cluster.add_node(**node)
            cluster.wait_for_nodes()
            ray.init(address=cluster.address, _node_ip_address="127.0.0.1", log_to_driver=False)
            yield cluster
        finally:
            if ray.is_initialized():
                ray.shutdown()
            with contextlib.suppress(Exception):
                cluster.shutdown()
    finally:
        sweep(marker)
        restore(before)
        shutil.rmtree(base, ignore_errors=True)


def carriers(marker: str) -> list[int]:
    """Pids (not this one) whose environment holds ``marker`` (``NAME=value``)."""
    wanted = marker.encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if wanted in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
    return found


def sweep(marker: str, rounds: int = 20) -> None:
    """SIGKILL, by pid, every process carrying ``marker``, until none is left."""
    for _ in range(rounds):
        pids = carriers(marker)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.25)


def parent(pid: int) -> int | None:
    """The parent pid of ``pid`` (from /proc), or None when it is gone."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        return int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
    return None


def command_line(pid: int) -> str:
    with contextlib.suppress(OSError):
        return (
            (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    return ""


def listening(pids: set[int]) -> list[tuple[str, int]]:
    """(address, port) of each TCP socket listening and UDP socket bound by one of ``pids`` (from /proc)."""
    inodes: set[str] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in (Path("/proc") / str(pid) / "fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    found = []
    for table, listen_state in (("tcp", "0A"), ("tcp6", "0A"), ("udp", None), ("udp6", None)):
        with contextlib.suppress(OSError):
            for line in (Path("/proc/net") / table).read_text().splitlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if inode in inodes and (listen_state is None or state == listen_state):
                    found.append(_address(local))
    return found


def _address(local: str) -> tuple[str, int]:
    """/proc/net's hex ``address:port`` as text."""
    hex_address, hex_port = local.split(":")
    raw = bytes.fromhex(hex_address)
    port = int(hex_port, 16)
    if len(raw) == 4:
        return ".".join(str(b) for b in raw[::-1]), port
    words = [raw[i : i + 4][::-1] for i in range(0, 16, 4)]  # four little-endian 32-bit words
    data = b"".join(words)
    if data[:12] == b"\0" * 10 + b"\xff\xff":
        return "::ffff:" + ".".join(str(b) for b in data[12:]), port
    import ipaddress

    return str(ipaddress.IPv6Address(data)), port
