"""Connecting to Ray for one run: the cluster a user names, or a local Ray instance started for the run.

The address rule: a session this process already holds (a notebook, a Ray job) is used as it is;
else ``--ray-address`` (``auto`` or an address), else ``RAY_ADDRESS``; else a local instance is
started for the run and stopped when it ends, so that ``--engine ray`` works on a laptop.

A local instance is private to the run. Ray on Linux binds every interface and advertises the
machine's network address unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is set before Ray is
imported (``ray._private.services.get_node_ip_address``), so the session sets it, and every Ray
process then listens on 127.0.0.1 only. It turns on token authentication with a fresh token in a
0600 file (https://docs.ray.io/en/latest/ray-security/token-auth.html), keeps Ray's sockets, logs
and spilled objects in a short temporary directory of its own, and on close stops every process
that carries that directory in its environment, by pid: Ray's agents outlive ``ray.shutdown`` when
anything went wrong, and ignore SIGTERM. The process's environment is restored afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError

log = logging.getLogger("pipeline.run")

LOCAL_OBJECT_STORE_BYTES = 1 << 30  # Ray's default is 30 % of the machine's memory
# AF_UNIX paths are limited to 107 bytes and Ray's plasma socket sits ~66 bytes below RAY_TMPDIR
MAX_TMPDIR_CHARS = 40
SWEEP_ROUNDS = 10
NAMESPACE = "pipeline"


@dataclass(slots=True)
class RaySession:
    """The Ray connection of one run; :meth:`close` undoes what :func:`open_session` did.

    :param local: a local instance was started for this run (it is stopped on close).
    :param owned: this session called ``ray.init`` (so close calls ``ray.shutdown``).
    :param where: the cluster, for messages.
    """

    local: bool
    owned: bool
    where: str
    base: Path | None = None
    restore_env: dict[str, str | None] = field(default_factory=dict)
    restore_loopback: bool | None = None

    def close(self) -> None:
        """Disconnect (if this session connected), and stop and remove a local instance."""
        import ray

        if self.owned and ray.is_initialized():
            ray.shutdown()
        if self.base is not None:
            _sweep(self.base)
            shutil.rmtree(self.base, ignore_errors=True)
        if self.restore_loopback is not None:
            _ray_constants().ENABLE_RAY_CLUSTER = self.restore_loopback
        _set_env(self.restore_env)


def starts_local(address: str | None) -> bool:
    """Whether :func:`open_session` with this address would start a local instance."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return False
    return not (address or os.environ.get("RAY_ADDRESS"))


def open_session(
    address: str | None, *, num_cpus: int | None = None, env: Mapping[str, str] | None = None
) -> RaySession:
    """Connect for a run (see the module docstring for which cluster).

    :param num_cpus: logical CPUs of a local instance (default: the machine's).
    :param env: environment a local instance's processes start with (the API key, so that its workers
        read it from their own environment; nothing is logged). Ignored for a running cluster.
    :raises ConfigError: the named cluster cannot be reached.
    """
    loaded = sys.modules.get("ray")
    if loaded is not None and loaded.is_initialized():
        return RaySession(local=False, owned=False, where="the running Ray session")
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        return _start_local(num_cpus or os.cpu_count() or 1, dict(env or {}))
    import ray

    try:
        ray.init(address=address, namespace=NAMESPACE, **_QUIET)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigError(f"cannot connect to the Ray cluster at {address}: {_first_line(exc)}") from None
    return RaySession(local=False, owned=True, where=f"the Ray cluster at {address}")


_QUIET: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}


def _start_local(num_cpus: int, env: dict[str, str]) -> RaySession:
    base = Path(tempfile.mkdtemp(prefix="pl-ray-", dir=_short_tmp()))
    settings = dict(env)
    settings.update(
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        RAY_USAGE_STATS_ENABLED="0",
        RAY_TMPDIR=str(base / "t"),
    )
    (base / "t").mkdir()
    if not os.environ.get("RAY_AUTH_MODE"):
        token = base / "auth_token"
        fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
        settings.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    session = RaySession(local=True, owned=True, where="a local Ray instance", base=base)
    session.restore_env = _set_env(settings)
    try:
        import ray

        constants = _ray_constants()
        if constants.ENABLE_RAY_CLUSTER:  # Ray was imported before the variable was set
            session.restore_loopback = True
            constants.ENABLE_RAY_CLUSTER = False
        ray.init(
            num_cpus=num_cpus,
            object_store_memory=LOCAL_OBJECT_STORE_BYTES,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            namespace=NAMESPACE,
            **_QUIET,
        )
    except BaseException as exc:
        session.close()
        if isinstance(exc, Exception):
            raise ConfigError(f"cannot start a local Ray instance: {_first_line(exc)}") from None
        raise
    return session


def _ray_constants() -> Any:
    from ray._private import ray_constants  # the loopback switch lives here (read once at import)

    return ray_constants


def _set_env(values: Mapping[str, str | None]) -> dict[str, str | None]:
    """Set (or, for None, remove) environment variables; returns what they were."""
    before = {name: os.environ.get(name) for name in values}
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    return before


def _short_tmp() -> str:
    """A temporary root short enough for Ray's socket paths (macOS's per-user TMPDIR is too long)."""
    root = tempfile.gettempdir()
    if len(root) + len("/pl-ray-XXXXXXXX/t") > MAX_TMPDIR_CHARS and Path("/tmp").is_dir():  # noqa: S108
        return "/tmp"  # noqa: S108
    return root


def _sweep(base: Path) -> None:
    """SIGKILL, by pid, every process that carries this session's RAY_TMPDIR (Linux: /proc)."""
    marker = f"RAY_TMPDIR={base / 't'}".encode()
    for _ in range(SWEEP_ROUNDS):
        pids = _carriers(marker)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    log.warning("some Ray processes of the local instance did not stop: %s", sorted(_carriers(marker)))


def _carriers(marker: bytes) -> list[int]:
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
    return found


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
