"""The inputs every tool reads: one CSV per workload, photo-like JPEGs, and pipeline's job file.

Every tool reads the same CSV (``id,topic`` and, for images, ``img``: a path relative to the CSV) and
sends the same request per row: ``claude-haiku-4-5``, ``max_tokens`` 64, "Say something short about
{topic}." (plus the image). The pictures are generated, not shipped: smooth gradients, fractal
structure and grain, so that their size (~0.8 MB at 2400x1800) and decode cost are a camera photo's,
not a flat colour's.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageChops, ImageFilter

MODEL = "claude-haiku-4-5"
MAX_TOKENS = 64
PROMPT = "Say something short about {topic}."


def write_text_csv(path: Path, rows: int) -> Path:
    """``id,topic`` for ``rows`` rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("id,topic\n" + "".join(f"{i},topic {i}\n" for i in range(rows)))
    return path


def write_image_csv(path: Path, pictures: Sequence[Path]) -> Path:
    """``id,topic,img``, one row per picture (paths written relative to the CSV)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["id,topic,img\n"]
    for i, picture in enumerate(pictures):
        lines.append(f"{i},photo {i},{picture.relative_to(path.parent)}\n")
    path.write_text("".join(lines))
    return path


def write_job(
    directory: Path,
    csv: Path,
    *,
    concurrency: int,
    max_attempts: int,
    timeout_s: float,
    rpm: float | None = None,
    images: bool = False,
) -> Path:
    """``directory/job.toml`` for ``pipeline run``: the same request as the peers' drivers send."""
    directory.mkdir(parents=True, exist_ok=True)
    limits = [f"concurrency = {concurrency}", f"max_attempts = {max_attempts}", f"timeout_s = {timeout_s:g}"]
    if rpm is not None:
        limits.append(f"requests_per_minute = {rpm:g}")
    job = directory / "job.toml"
    job.write_text(
        'name = "peers-bench"\n'
        f"input = {json.dumps(str(csv))}\n"
        'output = "out"\n'
        'id_column = "id"\n'
        "[request]\n"
        f"model = {json.dumps(MODEL)}\n"
        f"max_tokens = {MAX_TOKENS}\n"
        f"prompt = {json.dumps(PROMPT)}\n"
        + ('images = ["img"]\n' if images else "")
        + "[limits]\n"
        + "\n".join(limits)
        + "\n"
    )
    return job


# --------------------------------------------------------------------------- pictures


def photo_jpeg(width: int, height: int, seed: int, *, quality: int = 90) -> bytes:
    """A photo-like JPEG: a slanting light gradient, a fractal "subject", a vignette and sensor grain.

    Each seed moves the fractal's centre and the light's direction, so no two pictures are alike.
    """
    down = Image.linear_gradient("L")
    across = down.transpose(Image.Transpose.ROTATE_90)
    light = Image.blend(down, across, (seed % 10) / 10)
    if seed % 3 == 1:
        light = light.transpose(Image.Transpose.ROTATE_180)
    light = light.resize((width, height), Image.Resampling.BILINEAR)
    vignette = ImageChops.invert(Image.radial_gradient("L")).resize(
        (width, height), Image.Resampling.BILINEAR
    )
    centre_x = -0.75 + 0.02 * (seed % 37)
    centre_y = 0.1 - 0.01 * (seed % 23)
    span = 1.2 + 0.03 * (seed % 11)
    extent = (centre_x - span, centre_y - span * 0.75, centre_x + span, centre_y + span * 0.75)
    subject = Image.effect_mandelbrot((max(1, width // 3), max(1, height // 3)), extent, 64)
    subject = subject.resize((width, height), Image.Resampling.BICUBIC).filter(ImageFilter.SMOOTH)
    grain = Image.effect_noise((max(1, width // 2), max(1, height // 2)), 32 + seed % 16)
    grain = grain.resize((width, height), Image.Resampling.BILINEAR)
    red = Image.blend(Image.blend(light, subject, 0.45), grain, 0.3)
    green = Image.blend(Image.blend(subject, vignette, 0.4), grain, 0.25)
    blue = Image.blend(Image.blend(vignette, light, 0.5), grain, 0.2)
    buffer = io.BytesIO()
    Image.merge("RGB", (red, green, blue)).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def write_pictures(directory: Path, count: int, size: tuple[int, int]) -> list[Path]:
    """``count`` distinct pictures in ``directory`` (kept: an existing file is not made again)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(count):
        path = directory / f"{k:04d}.jpg"
        if not path.exists():
            partial = path.with_suffix(".part")
            partial.write_bytes(photo_jpeg(*size, seed=k))
            partial.replace(path)
        paths.append(path)
    return paths
