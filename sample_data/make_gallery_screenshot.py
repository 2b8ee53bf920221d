"""Regenerate sample_data/gallery.png: the sample annotation job on the sandbox, its report, a screenshot.

Run from the repository root: ``.venv/bin/python sample_data/make_gallery_screenshot.py``. The sandbox breaks
half of its structured answers on purpose (seeded), so the page shows resent rows and a schema_violation.
Needs Debian's chromium (``apt-get install chromium``) and the dev extras (Playwright).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

from pipeline.sandbox import SandboxConfig, running_sandbox

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]


def pipeline(*args: str) -> None:
    env = {**os.environ, "ANTHROPIC_API_KEY": "sk-sandbox", "ANTHROPIC_BASE_URL": ""}
    subprocess.run([sys.executable, "-m", "pipeline", *args], check=False, cwd=ROOT, env=env)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "annotate-products"
        sandbox_config = SandboxConfig(tool_violation_rate=0.5, seed=3, latency_ms=40, jitter_ms=30)
        with running_sandbox(sandbox_config) as sandbox:
            pipeline(
                "run", "jobs/annotate_products.toml", "--base-url", sandbox.base_url, "--output", str(out)
            )
        pipeline("report", str(out))
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1200, "height": 1020})
            page.goto((out / "report.html").as_uri())
            page.wait_for_selector(".card")
            page.screenshot(path=str(ROOT / "sample_data" / "gallery.png"))
            browser.close()
    print("wrote sample_data/gallery.png")


if __name__ == "__main__":
    main()
