"""The ``pipeline files`` group: the Files API uploads an output holds (``image_transport = "files"``).

Thin like the rest of the CLI: options in, :mod:`pipeline.results.uploads` does the work.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import click

from pipeline.catalog.providers import SANDBOX_KEY
from pipeline.cli.support import EXIT_OK, OUTPUT, expected_errors
from pipeline.errors import ConfigError


@click.group()
def files() -> None:
    """Files API uploads of an OUTPUT (image_transport = "files"): prune.

    Each distinct image is uploaded once and its file id kept in OUTPUT/files.jsonl, so reruns and
    batches reuse it; the uploads stay in the workspace's storage until pruned.
    """


@files.command("prune")
@click.argument("output", type=OUTPUT)
@click.option("--base-url", help="API base URL; default: the one each file was uploaded to.")
@click.option("--dry-run", is_flag=True, help="Say what would be deleted, delete nothing.")
@expected_errors
def prune(output: Path | str, base_url: str | None, dry_run: bool) -> None:
    """Delete OUTPUT's uploaded files from the Files API and forget them.

    A later run uploads them again.

    Refused while batches are pending (they reference the files). Needs the key variable the files
    were uploaded with (ANTHROPIC_API_KEY by default).
    """
    from pipeline.batch.state import BatchLog
    from pipeline.results.outputs import open_output
    from pipeline.results.uploads import FILES_LOG, prune_uploads

    def key_for(name: str) -> str:
        key = os.environ.get(name, "").strip()
        if not key and base_url is None:
            raise ConfigError(f"{name} is not set (the key variable {output}'s files were uploaded with)")
        return key or SANDBOX_KEY

    store = open_output(output)
    store.prepare()
    with store.locked():
        pending = [sub.label() for sub in BatchLog(store.directory).submissions() if sub.open]
        if pending:
            raise ConfigError(
                f"{output} has {len(pending)} pending batches ({', '.join(pending[:3])}) that may use its"
                " files; collect or cancel them first"
            )
        done = asyncio.run(
            prune_uploads(store.directory, key_for=key_for, base_url=base_url, dry_run=dry_run)
        )
        if not dry_run and (store.directory / FILES_LOG).exists():
            store.sync(store.directory / FILES_LOG)
    verb = "would delete" if dry_run else "deleted"
    extra = f", {done.gone} already gone" if done.gone else ""
    extra += f", {done.forgotten} sandbox uploads forgotten" if done.forgotten else ""
    click.echo(f"pipeline: {verb} {done.deleted} files ({done.bytes / 1e6:.1f} MB){extra}", err=True)
    sys.exit(EXIT_OK)
