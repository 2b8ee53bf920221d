"""The tools compared, and the throwaway venvs the peers live in (never the project's venv).

Each peer is installed with pip, at pinned versions, into its own venv under the cache directory
(default ``~/.cache/pipeline-peers/<peer>``). A venv is reused while its ``pins.txt`` matches the pins
below; ``--reinstall`` makes it again. ``freeze.txt`` beside it records everything pip installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from _processes import log, stop_group

DRIVERS = Path(__file__).resolve().parent / "drivers"
INSTALL_TIMEOUT_S = 1500.0


@dataclass(frozen=True, slots=True)
class Peer:
    """A peer: what to install, which driver runs it, whose version to report.

    :param versions_of: distributions whose installed versions the table's notes give.
    """

    name: str
    requirements: tuple[str, ...]
    driver: str
    versions_of: tuple[str, ...]


PEERS: tuple[Peer, ...] = (
    Peer(
        "curator",
        ("bespokelabs-curator==0.1.31",),
        "peer_curator.py",
        ("bespokelabs-curator", "litellm", "aiohttp"),
    ),
    Peer(
        "async-batch-llm",
        # no Anthropic extra: it wraps the official SDK, pinned to the release of the day
        ("async-batch-llm==0.28.0", "anthropic==2.15.0"),
        "peer_async_batch_llm.py",
        ("async-batch-llm", "anthropic", "httpx2"),
    ),
    Peer(
        "litellm",
        # the newest 1.110.x on the registry when this was written
        ("litellm==1.110.2",),
        "peer_litellm.py",
        ("litellm", "httpx", "aiohttp"),
    ),
)


@dataclass(frozen=True, slots=True)
class Venv:
    peer: Peer
    path: Path

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    @property
    def driver(self) -> Path:
        return DRIVERS / self.peer.driver


def default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pipeline-peers"


def ensure_venv(peer: Peer, cache: Path, *, reinstall: bool) -> Venv:
    """The peer's venv, made (or remade) when missing, stale or asked for."""
    venv = Venv(peer, cache / peer.name)
    pins = venv.path / "pins.txt"
    wanted = "\n".join(peer.requirements) + "\n"
    if not reinstall and venv.python.exists() and pins.exists() and pins.read_text() == wanted:
        return venv
    if venv.path.exists():
        shutil.rmtree(venv.path)
    log(f"installing {peer.name} ({', '.join(peer.requirements)}) into {venv.path}")
    # the project venv's python makes a venv from its base interpreter, not a nested one
    _bounded([sys.executable, "-m", "venv", str(venv.path)])
    _bounded(
        [
            str(venv.python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            *peer.requirements,
        ]
    )
    # compiled once here, so that no measured run pays for writing the venv's bytecode
    _bounded([str(venv.python), "-m", "compileall", "-q", "-j", "0", str(site_packages(venv))], check=False)
    freeze = _bounded([str(venv.python), "-m", "pip", "freeze", "--disable-pip-version-check"])
    (venv.path / "freeze.txt").write_text(freeze)
    pins.write_text(wanted)
    return venv


def site_packages(venv: Venv) -> Path:
    return next((venv.path / "lib").glob("python3*/site-packages"))


def installed_versions(venv: Venv) -> dict[str, str]:
    """Versions of the distributions the notes name, as installed in the venv."""
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for name in sys.argv[1:]:\n"
        "    try: out[name] = m.version(name)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))\n"
    )
    text = _bounded([str(venv.python), "-c", code, *venv.peer.versions_of])
    versions: dict[str, str] = json.loads(text)
    return versions


def _bounded(cmd: list[str], *, check: bool = True) -> str:
    """Run an install step in its own process group; stop it past the time limit."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=INSTALL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        stop_group(proc)
        raise RuntimeError(
            f"{cmd[0]} {' '.join(cmd[1:3])}: timed out after {INSTALL_TIMEOUT_S:.0f} s"
        ) from None
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed ({proc.returncode}):\n{err[-2000:]}")
    return out
