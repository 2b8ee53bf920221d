"""sample_data/notebook.ipynb, executed in a real kernel against the sandbox, shows what it says it shows."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import nbformat
from nbclient import NotebookClient

from jobkit import ROOT

NOTEBOOK = ROOT / "sample_data" / "notebook.ipynb"


def execute(tmp_path: Path, monkeypatch: Any) -> dict[str, list[dict[str, Any]]]:
    """Run every cell in a kernel of this interpreter, from sample_data/; outputs by the cell's tag."""
    kernels = tmp_path / "jupyter" / "kernels" / "pipeline-test"
    kernels.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "language": "python",
    }
    (kernels / "kernel.json").write_text(
        json.dumps({**spec, "display_name": "pipeline test"}), encoding="utf-8"
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=300,
        kernel_name="pipeline-test",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()  # raises CellExecutionError on any error output
    return {
        cell.metadata["tags"][0]: cell.outputs
        for cell in notebook.cells
        if cell.cell_type == "code" and cell.metadata.get("tags")
    }


def text(outputs: list[dict[str, Any]], kind: str, name: str = "") -> str:
    """The text of the outputs of one kind (stream outputs of one name), joined."""
    found = []
    for out in outputs:
        if out["output_type"] != kind or (name and out.get("name") != name):
            continue
        found.append(out["text"] if kind == "stream" else out["data"]["text/plain"])
    return "\n".join(found)


def test_the_notebook_captions_the_sample_photos_and_reads_the_typed_columns(
    tmp_path: Path, monkeypatch: Any, cache: Path
) -> None:
    """Executed: the commands' texts, one live progress output, typed columns, a rerun that sends nothing."""
    outputs = execute(tmp_path, monkeypatch)
    assert "pipeline.Job: job ok; 10 rows, 10 images checked, 0 rows with problems" in text(
        outputs["validate"], "execute_result"
    )
    assert "notebook-captions: 10 rows to do of 10 (0 already done)" in text(
        outputs["estimate"], "execute_result"
    )

    captions = outputs["captions"]
    progress = [out for out in captions if out["output_type"] == "display_data"]
    assert len(progress) == 1  # one output, updated in place: the cell does not fill up with lines
    assert progress[0]["data"]["text/plain"].startswith("pipeline: 10/10 rows done (10 ok, 0 error)")
    assert "10/10" in progress[0]["data"]["text/html"]
    summary = text(captions, "stream", "stderr")
    assert "10 rows sent: 10 ok, 0 error (0 already done, skipped)" in summary
    assert "rows done" not in summary
    (results,) = cache.glob("notebook-captions-*/results.parquet")
    assert f"results: {results}" in summary
    table = text(captions, "execute_result")
    assert table.startswith("shape: (10, 6)")
    for column in ("out_alt_text", "out_colours", "out_has_text"):
        assert column in table

    schema = text(outputs["schema"], "execute_result")
    for typed in ("('out_alt_text', String)", "('out_colours', List(String))", "('out_has_text', Boolean)"):
        assert typed in schema

    rerun = text(outputs["rerun"], "stream", "stdout")
    assert "requests sent on the rerun: 0" in rerun
    assert "same results: True" in rerun
    assert text(outputs["async"], "execute_result").startswith("shape: (3, 2)")
    assert "sandbox requests: 10" in text(outputs["close"], "stream", "stdout")


def test_the_notebook_is_kept_without_outputs() -> None:
    """The repository's copy has no outputs (the test above makes them; a reader's kernel makes theirs)."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")
