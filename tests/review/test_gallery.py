"""`pipeline report`: a self-contained HTML gallery, checked as a file and in a real headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from jobkit import ROOT, invoke, run_subprocess, write_job
from pipeline.sandbox import SandboxConfig, running_sandbox

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # the browser fixture then fails in CI and skips elsewhere
    expect = sync_playwright = None

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
HOSTILE = "</script><script>document.title='pwned'</script>"
PAGE_SIZE = 60  # cards per page, as in pipeline/data/gallery.html


@pytest.fixture(scope="module")
def output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Captions of the sample photos, two missing images and a hostile subject, run on the sandbox."""
    tmp_path = tmp_path_factory.mktemp("gallery")
    shutil.copytree(ROOT / "sample_data" / "images", tmp_path / "images")
    photos = sorted(path.name for path in (tmp_path / "images").iterdir())
    lines = ["id,subject,image_path"]
    lines += [f"img-{i:02d},photo {i},images/{name}" for i, name in enumerate(photos)]
    lines += ["gone-1,a lost photo,images/missing.jpg", "gone-2,another,images/also-missing.png"]
    lines += [f'evil,"{HOSTILE}",images/{photos[0]}']
    (tmp_path / "images.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    job = write_job(
        tmp_path,
        name="gallery",
        input="images.csv",
        output="out",
        id_column="id",
        request={
            "model": "claude-haiku-4-5",
            "max_tokens": 100,
            "prompt": "Describe {subject}.",
            "images": ["image_path"],
        },
    )
    with running_sandbox(SandboxConfig(latency_ms=5, jitter_ms=4, seed=1)) as sandbox:
        assert invoke(["run", str(job), "--base-url", sandbox.base_url]).exit_code == 1
    return tmp_path / "out"


def _report(output: Path, *args: str) -> Path:
    result = invoke(["report", str(output), *args])
    assert result.exit_code == 0, result.output
    return output / "report.html" if "--out" not in args else Path(args[args.index("--out") + 1])


def test_report_is_self_contained(output: Path) -> None:
    """The page loads nothing from outside: no http(s) resources, thumbnails as data URIs, a strict CSP."""
    html = _report(output).read_text(encoding="utf-8")
    assert "default-src 'none'; img-src data:" in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "url(" not in html
    assert "https://" not in html
    assert "http://" not in html
    # the hostile subject is data inside JSON, never markup
    assert HOSTILE not in html


def test_report_summarises_the_run(output: Path) -> None:
    """The header shows rows, errors by type, tokens, cost and both charts."""
    html = _report(output).read_text(encoding="utf-8")
    results = pl.read_parquet(output / "results.parquet")
    assert f"<b>{results.height}</b><span>rows</span>" in html
    assert "<td>image_error</td><td>2</td>" in html
    assert f"<b>{int(results['input_tokens'].sum()):,}</b><span>input tokens</span>" in html
    assert "cost: $" in html
    assert html.count("<svg") == 2
    assert "latency per row" in html
    assert "tokens per row" in html


def test_report_without_job_note_uses_job_flag(output: Path, tmp_path: Path) -> None:
    """With job.json gone, --job tells the report which columns hold images; without either it guesses."""
    copy = tmp_path / "copy"
    shutil.copytree(output, copy)
    (copy / "job.json").unlink()
    job = output.parent / "gallery.toml"
    result = invoke(["report", str(copy), "--job", str(job)])
    assert result.exit_code == 0, result.output
    assert "10 thumbnails, 2 images could not be read" in result.output
    guessed = invoke(["report", str(copy)])  # the cwd is not the input's folder: paths do not resolve
    assert guessed.exit_code == 0
    assert "images could not be read" in guessed.output


def test_report_of_nothing_is_one_line(tmp_path: Path) -> None:
    """A directory without results is a one-line error, exit 2."""
    result = run_subprocess(["report", str(tmp_path)])
    assert result.returncode == 2
    expected = f"pipeline: error: {tmp_path} holds no results (no results.parquet and no journal)"
    assert result.stderr.strip() == expected


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}: CI must run the browser test (.ci/run installs Debian's chromium)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's headless Chromium driven by Playwright (no browser download)."""
    if sync_playwright is None:
        _unavailable("playwright is not installed")
    if not Path(CHROMIUM).exists():
        _unavailable(f"{CHROMIUM} is missing")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _open(browser: Any, path: Path) -> tuple[Any, list[str], list[str]]:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    requests: list[str] = []
    errors: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(path.resolve().as_uri())
    page.wait_for_selector(".card")
    return page, requests, errors


def test_gallery_in_chromium(output: Path, browser: Any, tmp_path: Path) -> None:
    """In Chromium: a card per row with thumbnails, errors highlighted, filters change what is shown."""
    report = _report(output)
    page, requests, errors = _open(browser, report)
    rows = pl.read_parquet(output / "results.parquet").height
    assert page.locator(".card").count() == rows
    assert page.locator(".card.error").count() == 2
    assert page.locator(".card img").count() == rows - 2
    assert page.locator(".card.error .noimg").count() == 2
    assert page.locator("#shown").get_attribute("data-count") == str(rows)
    page.click("button[data-filter='error']")
    assert page.locator(".card").count() == 2
    assert page.locator("#shown").get_attribute("data-count") == "2"
    page.click("button[data-filter='type:image_error']")
    assert page.locator(".card").count() == 2
    page.click("button[data-filter='ok']")
    assert page.locator(".card").count() == rows - 2
    page.fill("#search", "evil")
    expect(page.locator("#shown")).to_have_attribute("data-count", "1")
    # the hostile subject shows as text and ran no script
    assert HOSTILE in page.locator(".card").inner_text()
    assert page.title() != "pwned"
    page.screenshot(path=str(tmp_path / "gallery.png"), full_page=True)
    assert (tmp_path / "gallery.png").stat().st_size > 10_000
    assert errors == []
    assert all(url.startswith(("file:", "data:")) for url in requests), requests


def test_ten_thousand_rows_open_fast(output: Path, browser: Any, tmp_path: Path) -> None:
    """A 10,000-row report is written in seconds, stays small, and opens one page of cards at once."""
    big = tmp_path / "big"
    big.mkdir()
    shutil.copy(output / "job.json", big / "job.json")
    results = pl.read_parquet(output / "results.parquet")
    copies = -(-10_000 // results.height)
    frame = pl.concat([results] * copies).head(10_000)
    frame = frame.with_columns(
        pl.format("row-{}", pl.int_range(pl.len())).alias("row_id"), pl.int_range(pl.len()).alias("row_index")
    )
    frame.write_parquet(big / "results.parquet")
    started = time.monotonic()
    report = _report(big)
    generated_s = time.monotonic() - started
    size = report.stat().st_size
    assert generated_s < 30
    assert size < 6_000_000  # thumbnails are stored once per distinct image
    page, _, errors = _open(browser, report)
    opened_s = page.evaluate("performance.now()") / 1000
    assert page.locator(".card").count() == PAGE_SIZE
    assert page.locator("#shown").get_attribute("data-count") == "10000"
    assert opened_s < 10
    page.click("#next")
    assert page.locator("#page").inner_text() == f"page 2 of {-(-10_000 // PAGE_SIZE)}"
    errors_shown = frame.filter(pl.col("status") == "error").height
    page.click("button[data-filter='error']")
    assert page.locator("#shown").get_attribute("data-count") == str(errors_shown)
    page.screenshot(path=str(tmp_path / "big.png"))
    assert errors == []
