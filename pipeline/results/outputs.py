"""Where results go, as the job names it: a local directory, or a prefix in object storage.

:func:`open_output` gives the :class:`~pipeline.results.store.ResultStore` for a run (the local
store itself, or :class:`~pipeline.results.remote.ObjectResultStore`, the same interface over a
staging folder); :func:`reading` gives a read-only view for the commands that only look
(``status``, ``export``, ``report``, ``estimate``), with who holds the output now.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import OutputError
from pipeline.job.spec import StorageSpec
from pipeline.results.store import ResultStore
from pipeline.rows.storage import ObjectStorage, StorageSettings, is_object_url


def is_remote_output(location: str | Path) -> bool:
    """Whether an output lives in object storage."""
    return isinstance(location, str) and is_object_url(location)


def cache_folder(location: str | Path, spec: StorageSpec | None = None) -> Path:
    """A local folder for what a run caches beside its output (the model facts): the output itself,
    or an object-storage output's staging folder on this machine."""
    if is_remote_output(location):
        from pipeline.results.remote import staging_folder

        folder = staging_folder(str(location), spec)
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    return Path(location)


def open_output(
    location: str | Path, storage: ObjectStorage | None = None, spec: StorageSpec | None = None
) -> ResultStore:
    """The store a run writes ``location`` through (object storage when it is an ``s3://``... URL)."""
    if is_remote_output(location):
        from pipeline.results.remote import ObjectResultStore

        return ObjectResultStore(
            str(location), storage or ObjectStorage(StorageSettings.from_spec(spec)), spec
        )
    return ResultStore(Path(location))


@contextmanager
def reading(
    location: str | Path, storage: ObjectStorage | None = None, spec: StorageSpec | None = None
) -> Iterator[tuple[ResultStore, str | None]]:
    """A read-only view of an output and who holds it now ("pid N, started T"), changing nothing.

    :raises OutputError: a local output that is not a directory.
    """
    if not is_remote_output(location):
        store = ResultStore(Path(location))
        if not store.directory.is_dir():
            raise OutputError(f"{location} is not a directory")
        yield store, store.holder()
        return
    from pipeline.results.remote import ObjectResultStore, readable_copy

    storage = storage or ObjectStorage(StorageSettings.from_spec(spec))
    try:
        holder = ObjectResultStore(str(location), storage, spec).holder()
        with readable_copy(str(location), storage) as copy:
            yield copy, holder
    finally:
        storage.close()


def publish(location: str, path: Path) -> str:
    """Upload a file a read-only command wrote into its copy of an object-storage output, beside the
    results (``export.csv``, ``report.html``); returns its URL."""
    from pipeline.rows.storage import ObjectStoreError

    url = f"{location.rstrip('/')}/{path.name}"
    storage = ObjectStorage()
    try:
        storage.put(url, path)
    except ObjectStoreError as exc:
        raise OutputError(f"cannot write {url}: {exc}") from None
    return url
