"""Data in object storage: 10,000 rows of 1024x768 JPEG photos on a local S3 server (moto).

    .venv/bin/python benchmarks/bench_storage.py [--quick] [--rows N] [--workdir DIR] [--json FILE]

Figures (reported, never asserted):

- s1: rows/s of image fetch + prepare from ``s3://`` cells (``pipeline validate --fetch``: every
  image fetched and prepared exactly as a run would, nothing sent), its peak RSS, and the same
  images read from local files as the baseline of the same run; photos within ``image_max_edge``
  are sent untouched (header read only).
- s2: the same with ``image_max_edge = 768``, so every photo is decoded, shrunk and re-encoded.
- s3: bytes sent to the API per row by a realtime run, ``base64`` against ``files`` (request bodies,
  the sandbox's ``message_body_bytes``, plus the Files uploads), and a rerun with ``files`` (the
  uploads are reused).
- s4: a batch run with each transport: batches, requests per batch, and body bytes per batch
  (the 256 MB cap binds base64; file ids fit up to the 100,000-request cap).

Everything runs on 127.0.0.1: moto (``python -m moto.server``, stopped by pid), the sandbox in its
own process, the pipeline children (peak RSS and CPU from ``os.wait4``). moto itself is the ceiling
of the fetch rate (it spends about 5 ms of its own CPU per 150 KB object, on the same 2 cores); the
client's CPU per row is reported beside it so the two can be told apart. The photos: a pool of
distinct photo-like JPEGs (about 180 KB each), each row's copy made unique by a JPEG comment (a
distinct file and content hash, the same decode cost). ``--quick``: 1,000 rows. ``--parts s1,s4``
runs only those figures (the photos are uploaded once either way).
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from _harness import (
    PYTHON,
    Child,
    Figure,
    Run,
    Sandbox,
    bench_parser,
    finish,
    log,
    photo_jpeg,
    proc_cpu_s,
    work_directory,
)

POOL = 48  # distinct photo-like JPEGs; every row gets a unique copy of one of them
SIZE = (1024, 768)
BUCKET = "bench-photos"
ACCESS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_REGION": "us-east-1"}


# --------------------------------------------------------------------------- the S3 server


class Moto:
    """``python -m moto.server`` on 127.0.0.1, stopped by pid."""

    def __init__(self, log_path: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._log = log_path.open("w")
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log,
            stderr=self._log,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("moto did not start") from None
                time.sleep(0.1)

    def cpu_s(self) -> float:
        return proc_cpu_s(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self._log.close()


def unique_copy(jpeg: bytes, row: int) -> bytes:
    """``jpeg`` with a COM segment naming the row right after SOI: distinct bytes, same pixels."""
    comment = f"row {row}".encode()
    return jpeg[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + jpeg[2:]


def populate(moto: Moto, directory: Path, rows: int) -> tuple[float, int]:
    """Upload ``rows`` unique photos and the tables that name them; local copies for the baseline."""
    import obstore
    import polars as pl
    from obstore.store import S3Store

    urllib.request.urlopen(
        urllib.request.Request(f"{moto.endpoint}/{BUCKET}", method="PUT"), timeout=30
    ).close()
    store = S3Store(
        BUCKET,
        endpoint=moto.endpoint,
        access_key_id=ACCESS["AWS_ACCESS_KEY_ID"],
        secret_access_key=ACCESS["AWS_SECRET_ACCESS_KEY"],
        region=ACCESS["AWS_REGION"],
        client_options={"allow_http": True},
    )
    pool = [photo_jpeg(*SIZE, seed=k) for k in range(POOL)]
    local = directory / "pics"
    local.mkdir(parents=True, exist_ok=True)
    total = 0

    def put(row: int) -> int:
        data = unique_copy(pool[row % POOL], row)
        obstore.put(store, f"photos/{row}.jpg", data)
        (local / f"{row}.jpg").write_bytes(data)
        return len(data)

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(16) as workers:
        for size in workers.map(put, range(rows)):
            total += size
    upload_s = time.monotonic() - started
    ids = [str(i) for i in range(rows)]
    remote = pl.DataFrame({"id": ids, "image": [f"s3://{BUCKET}/photos/{i}.jpg" for i in range(rows)]})
    buffer = io.BytesIO()
    remote.write_parquet(buffer)
    obstore.put(store, "rows.parquet", buffer.getvalue())
    pl.DataFrame({"id": ids, "image": [f"pics/{i}.jpg" for i in range(rows)]}).write_parquet(
        directory / "local.parquet"
    )
    return upload_s, total


# --------------------------------------------------------------------------- jobs and children


def job(directory: Path, name: str, source: str, *, transport: str = "base64", edge: int = 1568) -> Path:
    path = directory / f"{name}.toml"
    path.write_text(
        f'name = "{name}"\ninput = "{source}"\noutput = "out-{name}"\nid_column = "id"\n'
        '[request]\nmodel = "claude-haiku-4-5"\nmax_tokens = 16\nprompt = "Caption this photo."\n'
        f'images = ["image"]\nimage_max_edge = {edge}\nimage_transport = "{transport}"\ndedupe = false\n'
        "[limits]\nconcurrency = 32\nmax_attempts = 4\ntimeout_s = 120\n"
        f'[storage]\nstaging_dir = "{directory / "staging"}"\n'
    )
    return path


def child(args: list[str], directory: Path, timeout_s: float = 3600) -> Run:
    proc = Child([PYTHON, "-m", "pipeline", *args], directory)
    if not proc.wait(timeout_s):
        log(f"{args[0]} exceeded {timeout_s:.0f} s; stopping it")
    run = proc.finish(timed_out=proc.proc.returncode is None)
    if run.returncode not in (0, 1):
        log(f"  exit {run.returncode}: {run.stderr_tail}")
    return run


def fetch_and_prepare(
    directory: Path, name: str, source: str, rows: int, moto: Moto, edge: int
) -> dict[str, Any]:
    """``pipeline validate --fetch``: every row's image fetched and prepared, nothing sent."""
    before = moto.cpu_s()
    run = child(
        ["validate", str(job(directory, name, source, edge=edge)), "--fetch", "--show", "3"], directory
    )
    return {
        "rows_per_s": rows / run.wall_s,
        "wall_s": run.wall_s,
        "rss_mb": run.rss_mb,
        "parent_rss_mb": run.parent_rss_mb,  # a child's ru_maxrss starts at its parent's RSS
        "client_cpu_ms_per_row": run.cpu_s / rows * 1000,
        "moto_cpu_ms_per_row": (moto.cpu_s() - before) / rows * 1000,
        "exit": run.returncode,
    }


def sent_bytes(box: Sandbox) -> tuple[int, int, int]:
    stats = box.stats()
    return (
        int(stats["message_body_bytes"]),
        int(stats["files"]["bytes_uploaded"]),
        int(stats["files"]["uploads"]),
    )


def realtime(
    directory: Path, box: Sandbox, source: str, rows: int, transport: str, *extra: str
) -> dict[str, Any]:
    """One realtime run: bytes the API received per row (request bodies plus Files uploads)."""
    before = sent_bytes(box)
    name = f"rt-{transport}"
    run = child(
        [
            "run",
            str(job(directory, name, source, transport=transport)),
            "--base-url",
            box.base_url,
            "--json",
            *extra,
        ],
        directory,
    )
    after = sent_bytes(box)
    body, uploaded, uploads = (after[i] - before[i] for i in range(3))
    return {
        "bytes_per_row": (body + uploaded) / rows,
        "body_bytes_per_row": body / rows,
        "upload_bytes_per_row": uploaded / rows,
        "uploads": uploads,
        "rows_per_s": rows / run.wall_s,
        "rss_mb": run.rss_mb,
        "parent_rss_mb": run.parent_rss_mb,  # a child's ru_maxrss starts at its parent's RSS
        "exit": run.returncode,
    }


def batch(directory: Path, box: Sandbox, source: str, transport: str) -> dict[str, Any]:
    """One batch run: how many batches, requests and body bytes per batch."""
    seen = len(box.stats()["batches"]["body_sizes"])
    name = f"batch-{transport}"
    run = child(
        [
            "run",
            str(job(directory, name, source, transport=transport)),
            "--mode",
            "batch",
            "--wait",
            "--base-url",
            box.base_url,
            "--json",
        ],
        directory,
    )
    stats = box.stats()["batches"]
    bodies = stats["body_sizes"][seen:]
    summary = run.summary or {}
    made = (summary.get("batch") or {}).get("submitted_batches", len(bodies))
    requests = (summary.get("batch") or {}).get("submitted_requests", 0)
    return {
        "batches": made,
        "requests_per_batch": requests / made if made else 0,
        "mb_per_batch": sum(bodies) / max(1, len(bodies)) / 1e6,
        "rss_mb": run.rss_mb,
        "parent_rss_mb": run.parent_rss_mb,  # a child's ru_maxrss starts at its parent's RSS
        "wall_s": run.wall_s,
        "exit": run.returncode,
    }


PARTS = ("s1", "s2", "s3", "s4")


def run(workdir: Path, *, rows: int, parts: tuple[str, ...] = PARTS) -> list[Figure]:
    directory = workdir / f"storage-{rows}"
    directory.mkdir(parents=True, exist_ok=True)
    moto = Moto(directory / "moto.log")
    os.environ.update({**ACCESS, "AWS_ENDPOINT_URL": moto.endpoint, "AWS_EC2_METADATA_DISABLED": "true"})
    try:
        log(f"uploading {rows:,} photos to {moto.endpoint}")
        upload_s, total = populate(moto, directory, rows)
        log(f"  {upload_s:.0f} s, {total / rows / 1024:.0f} KiB a photo")
        source = f"s3://{BUCKET}/rows.parquet"
        measured: dict[str, dict[str, Any]] = {}
        if "s1" in parts:
            log("s1: fetch + prepare (sent untouched)")
            measured["s1"] = fetch_and_prepare(directory, "fetch", source, rows, moto, 1568)
            measured["s1 local"] = fetch_and_prepare(directory, "local", "local.parquet", rows, moto, 1568)
        if "s2" in parts:
            log("s2: fetch + prepare (shrunk to 768 px)")
            measured["s2"] = fetch_and_prepare(directory, "shrink", source, rows, moto, 768)
            measured["s2 local"] = fetch_and_prepare(
                directory, "shrink-local", "local.parquet", rows, moto, 768
            )
        with Sandbox(["--batch-processing-s", "0"]) as box:
            if "s3" in parts:
                log("s3: realtime, base64 then files, then a files rerun")
                measured["s3 base64"] = realtime(directory, box, source, rows, "base64")
                measured["s3 files"] = realtime(directory, box, source, rows, "files")
                measured["s3 rerun"] = realtime(directory, box, source, rows, "files", "--fresh")
            if "s4" in parts:
                log("s4: batch, base64 then files")
                measured["s4 base64"] = batch(directory, box, source, "base64")
                measured["s4 files"] = batch(directory, box, source, "files")
    finally:
        moto.stop()
    for name, figure in measured.items():
        log(f"  {name}: {json.dumps(figure)}")
    figures = _figures(rows, measured, upload_s, total)
    return [figure for figure in figures if figure.key in parts]


def _figures(rows: int, measured: dict[str, dict[str, Any]], upload_s: float, total: int) -> list[Figure]:
    empty: dict[str, Any] = {"rows_per_s": 1.0, "rss_mb": 0.0, "client_cpu_ms_per_row": 0.0}
    s1, s1_local = measured.get("s1", empty), measured.get("s1 local", empty)
    s2, s2_local = measured.get("s2", empty), measured.get("s2 local", empty)
    none: dict[str, Any] = {"bytes_per_row": 1.0, "uploads": 0, "batches": 0}
    inline, files, rerun = (measured.get(f"s3 {name}", none) for name in ("base64", "files", "rerun"))
    batch_inline, batch_files = measured.get("s4 base64", none), measured.get("s4 files", none)
    batch_inline = {"requests_per_batch": 0, "mb_per_batch": 0, **batch_inline}
    batch_files = {"requests_per_batch": 0, "mb_per_batch": 0, **batch_files}
    return [
        Figure(
            "s1",
            f"fetch + prepare, {rows:,} 1024x768 JPEGs from s3:// (sent untouched)",
            "report",
            f"{s1['rows_per_s']:.0f} rows/s, peak RSS {s1['rss_mb']:.0f} MB"
            f" (this harness: {s1.get('parent_rss_mb', 0):.0f} MB at fork);"
            f" client {s1['client_cpu_ms_per_row']:.2f} ms CPU/row,"
            f" moto {s1.get('moto_cpu_ms_per_row', 0):.1f} ms/row; local files {s1_local['rows_per_s']:.0f}"
            f" rows/s ({s1['rows_per_s'] / s1_local['rows_per_s']:.2f}x)",
            None,
            {"s3": s1, "local": s1_local, "upload_s": upload_s, "mean_photo_bytes": total / rows},
        ),
        Figure(
            "s2",
            f"fetch + prepare, {rows:,} photos shrunk to 768 px",
            "report",
            f"{s2['rows_per_s']:.0f} rows/s, peak RSS {s2['rss_mb']:.0f} MB;"
            f" client {s2['client_cpu_ms_per_row']:.2f} ms CPU/row; local files {s2_local['rows_per_s']:.0f}"
            f" rows/s ({s2['rows_per_s'] / s2_local['rows_per_s']:.2f}x)",
            None,
            {"s3": s2, "local": s2_local},
        ),
        Figure(
            "s3",
            "bytes sent to the API per row, realtime: base64 / files / files rerun",
            "report",
            f"{inline['bytes_per_row'] / 1024:.0f} KiB / {files['bytes_per_row'] / 1024:.0f} KiB"
            f" ({files['uploads']:,} uploads) / {rerun['bytes_per_row'] / 1024:.1f} KiB"
            f" ({rerun['uploads']} uploads); files rerun"
            f" {inline['bytes_per_row'] / max(1.0, rerun['bytes_per_row']):.0f}x less than base64",
            None,
            {"base64": inline, "files": files, "files_rerun": rerun},
        ),
        Figure(
            "s4",
            f"batch mode, {rows:,} photo rows: requests per batch, base64 / files",
            "report",
            f"{batch_inline['batches']} batches of {batch_inline['requests_per_batch']:,.0f} requests"
            f" ({batch_inline['mb_per_batch']:.0f} MB each) / {batch_files['batches']} of"
            f" {batch_files['requests_per_batch']:,.0f} ({batch_files['mb_per_batch']:.1f} MB)",
            None,
            {"base64": batch_inline, "files": batch_files},
        ),
    ]


def main() -> None:
    parser = bench_parser(__doc__, "1,000 rows instead of 10,000")
    parser.add_argument("--rows", type=int, help="photo rows (default 10,000; 1,000 with --quick)")
    parser.add_argument("--parts", default=",".join(PARTS), help="figures to measure (default: all)")
    args = parser.parse_args()
    rows = args.rows or (1_000 if args.quick else 10_000)
    parts = tuple(part.strip() for part in args.parts.split(","))
    with work_directory(args.workdir) as workdir:
        figures = run(workdir, rows=rows, parts=parts)
    finish(figures, args.json_out)


if __name__ == "__main__":
    sys.exit(main())
