"""Writes sample_data/notebook.ipynb: captioning the sample photos from Python, with typed columns.

Run: python sample_data/make_notebook.py (the notebook is saved without outputs; tests execute it).
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent

CELLS = [
    new_markdown_cell(
        "# Captioning the sample photos from Python\n\n"
        "A `pipeline.Job` takes the job file's keys as keywords, runs over a DataFrame and returns one "
        "row of results per input row, in the input's order. Here it runs against the built-in "
        "sandbox (free, offline, no key); to use the API, export `ANTHROPIC_API_KEY` and skip the "
        "`pipeline.sandbox()` cell.\n\n"
        "Run it from the repository's `sample_data/` folder: the table's image paths are relative to it."
    ),
    new_code_cell(
        "import polars as pl\n\n"
        "import pipeline\n\n"
        'photos = pl.read_csv("images.csv")  # id, subject, image_path\n'
        "photos",
        metadata={"tags": ["photos"]},
    ),
    new_markdown_cell(
        "The model answers through a forced tool, so every property of its `input_schema` becomes a "
        "typed column of the results: `out_alt_text` (text), `out_colours` (a list of text), "
        "`out_has_text` (a boolean)."
    ),
    new_code_cell(
        "job = pipeline.Job(\n"
        '    name="notebook-captions",\n'
        '    model="claude-haiku-4-5",\n'
        "    max_tokens=300,\n"
        '    system="You write concise, factual alt text.",\n'
        '    prompt="Caption this photo of {subject} with the caption tool.",\n'
        '    images=["image_path"],\n'
        '    id_column="id",\n'
        "    tools=[{\n"
        '        "name": "caption",\n'
        '        "description": "Record the caption of one photo.",\n'
        '        "input_schema": {\n'
        '            "type": "object",\n'
        '            "required": ["alt_text", "colours", "has_text"],\n'
        '            "properties": {\n'
        '                "alt_text": {"type": "string"},\n'
        '                "colours": {"type": "array", "items": {"type": "string"}},\n'
        '                "has_text": {"type": "boolean"},\n'
        "            },\n"
        "        },\n"
        "    }],\n"
        '    tool_choice={"type": "tool", "name": "caption"},\n'
        '    limits={"concurrency": 4},\n'
        ")\n"
        "job.validate(photos)",
        metadata={"tags": ["validate"]},
    ),
    new_code_cell("job.estimate(photos)", metadata={"tags": ["estimate"]}),
    new_markdown_cell(
        "Start the sandbox for the rest of the notebook. While it is open, a run that names no server "
        "goes there (`job.run(photos, sandbox=True)` would start one for that run only)."
    ),
    new_code_cell(
        "sandbox = pipeline.sandbox().start()\n"
        "captions = job.run(photos)\n"
        'captions.select("id", "subject", "status", "out_alt_text", "out_colours", "out_has_text")',
        metadata={"tags": ["captions"]},
    ),
    new_code_cell(
        'captions.select(pl.col("^out_.*$")).schema',
        metadata={"tags": ["schema"]},
    ),
    new_markdown_cell(
        "Results are kept (here in a per-user cache folder the summary names; pass `output=` to choose "
        "one), so running the cell again pays for nothing: every row is already done."
    ),
    new_code_cell(
        "again = job.run(photos)\n"
        'print("requests sent on the rerun:", job.last_outcome.summary.requests_sent)\n'
        'print("same results:", again.equals(captions))',
        metadata={"tags": ["rerun"]},
    ),
    new_markdown_cell("Inside an `async` program (or a notebook cell), await the same run:"),
    new_code_cell(
        'first = await job.run_async(photos.head(3))\nfirst.select("id", "out_alt_text")',
        metadata={"tags": ["async"]},
    ),
    new_code_cell(
        'print("sandbox requests:", sandbox.stats()["requests_total"])\nsandbox.close()',
        metadata={"tags": ["close"]},
    ),
]


def main() -> None:
    for number, cell in enumerate(CELLS, start=1):
        cell.id = f"cell-{number}"  # stable ids: regenerating changes only what was edited
    notebook = new_notebook(cells=CELLS)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.metadata["language_info"] = {"name": "python"}
    nbformat.write(notebook, HERE / "notebook.ipynb")


if __name__ == "__main__":
    main()
