"""Optional parts of the package and the extra that installs each, checked before they are imported.

A missing optional dependency is the user's to fix with one command, so it is a one-line
``ConfigError`` that names the feature and the ``pip install`` to run, never an ImportError
traceback. Checking costs no import (``importlib.util.find_spec``).
"""

from __future__ import annotations

import importlib.util

from pipeline.errors import ConfigError

# extra -> the top-level modules it provides
EXTRAS: dict[str, tuple[str, ...]] = {
    "sandbox": ("aiohttp",),
    # the cluster engine (`--engine ray`) and `process_dataset`: Ray Core and Ray Data
    "ray": ("ray",),
    # object storage (s3://, gs://, az://) for input, image cells and output
    "storage": ("obstore",),
}


def require(extra: str, feature: str) -> None:
    """Raise ``ConfigError`` when ``extra``'s modules are not installed; ``feature`` is what needs them.

    :param feature: how the user asked for it, for the message (``"--sandbox"``, ``"pipeline sandbox"``).
    """
    missing = [name for name in EXTRAS[extra] if not _installed(name)]
    if missing:
        raise ConfigError(
            f"{feature} needs {', '.join(missing)}, which is not installed: pip install 'pipeline[{extra}]'"
        )


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or blocked installation counts as missing
        return False
