"""Target 4, images: preparing 12-megapixel JPEGs for a 1568 px long edge, against plain Pillow.

    .venv/bin/python benchmarks/bench_images.py [--quick]

On generated photo-like 4000x3000 JPEGs (about 2.7 MB each):

- plain path: ``Image.open``, ``convert("RGB")``, ``thumbnail((1568, 1568))``, ``save`` as JPEG q85;
- ``pipeline.payloads.images.prepare_image`` with the default policy (1568 px long edge).

Per core: one thread, images/s. Both cores: two threads (the pipeline prepares images with
``asyncio.to_thread``), images/s and the process's CPU time over wall time (2.0 = both cores busy).
Pass-through: ``prepare_image`` on a 1024x768 JPEG that needs nothing, counting pixel decodes
(calls of ``ImageFile.load``, patched in this process only) and its time per image.
A breakdown of one conversion (decode at reduced size, resize, encode, base64) explains the ratio,
and the quality of both outputs is measured against a reference (full decode, LANCZOS from full
resolution): PSNR in dB over the three channels, higher is closer.
"""

from __future__ import annotations

import base64
import io
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _harness import Figure, bench_parser, finish, log, photo_jpeg, work_directory
from PIL import Image, ImageChops, ImageFile, ImageStat

from pipeline.payloads.images import ImagePolicy, prepare_image

EDGE = 1568
SOURCES = 4
POLICY = ImagePolicy(max_edge=EDGE)


def plain(data: bytes) -> bytes:
    """What a script without the pipeline would do: decode everything, convert, thumbnail, save."""
    with Image.open(io.BytesIO(data)) as opened:
        img = opened.convert("RGB")
    img.thumbnail((EDGE, EDGE))
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def prepared(data: bytes) -> bytes:
    return prepare_image(data, POLICY, label="bench").data_b64.encode()


def throughput(
    work: Callable[[bytes], bytes], images: Sequence[bytes], seconds: float, threads: int
) -> tuple[float, float]:
    """(images/s, CPU seconds per wall second) running ``work`` on ``threads`` threads for ``seconds``."""
    work(images[0])  # warm caches and imports outside the timing
    done = 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    deadline = wall0 + seconds

    def loop(offset: int) -> int:
        n = 0
        while time.perf_counter() < deadline:
            work(images[(offset + n) % len(images)])
            n += 1
        return n

    with ThreadPoolExecutor(threads) as pool:
        done = sum(pool.map(loop, range(threads)))
    wall = time.perf_counter() - wall0
    return done / wall, (time.process_time() - cpu0) / wall


def _ms(work: Callable[[], object], repeats: int = 5) -> float:
    work()
    t = time.perf_counter()
    for _ in range(repeats):
        work()
    return 1000 * (time.perf_counter() - t) / repeats


def breakdown(data: bytes) -> dict[str, float]:
    """Milliseconds of each step of both paths on one image, plus the cheaper steps that exist."""
    target = (EDGE, EDGE * 3 // 4)

    def decode(scale: int | None) -> Image.Image:
        img = Image.open(io.BytesIO(data))
        if scale:
            img.draft("RGB", (img.width // scale, img.height // scale))
        img.load()
        return img

    full, half = decode(None), decode(2)
    small = half.resize(target, Image.Resampling.BICUBIC, reducing_gap=3.0)
    encoded = io.BytesIO()
    small.save(encoded, "JPEG", quality=85)

    def thumbnail() -> None:
        copy = full.copy()
        copy.thumbnail((EDGE, EDGE))

    return {
        "prepare: decode at 1/2 (draft)": _ms(lambda: decode(2)),
        "prepare: BICUBIC resize": _ms(
            lambda: half.resize(target, Image.Resampling.BICUBIC, reducing_gap=3.0)
        ),
        "prepare: JPEG encode": _ms(lambda: small.save(io.BytesIO(), "JPEG", quality=85, optimize=False)),
        "prepare: base64": _ms(lambda: base64.b64encode(encoded.getvalue())),
        "plain: full decode": _ms(lambda: decode(None)),
        "plain: convert": _ms(lambda: full.convert("RGB")),
        "plain: thumbnail": _ms(thumbnail),
        "alt: decode at 1/8 (entropy-decoding floor)": _ms(lambda: decode(8)),
        "alt: LANCZOS resize from 1/2": _ms(lambda: half.resize(target, Image.Resampling.LANCZOS)),
        "alt: BILINEAR resize from 1/2": _ms(lambda: half.resize(target, Image.Resampling.BILINEAR)),
    }


def psnr(image: Image.Image, reference: Image.Image) -> float:
    """Peak signal-to-noise ratio of ``image`` against ``reference`` (same size, RGB), in dB."""
    squared = ImageChops.difference(image.convert("RGB"), reference).point(lambda v: v * v)
    mse = sum(ImageStat.Stat(squared).mean) / 3
    return 99.0 if mse == 0 else 10 * math.log10(255 * 255 / mse)


def quality(images: Sequence[bytes]) -> tuple[float, float]:
    """Mean PSNR (prepare_image, plain) against a full decode resized with LANCZOS from full resolution."""
    scores: list[tuple[float, float]] = []
    for data in images:
        with Image.open(io.BytesIO(data)) as opened:
            full = opened.convert("RGB")
        ours = Image.open(io.BytesIO(base64.b64decode(prepared(data))))
        theirs = Image.open(io.BytesIO(plain(data)))
        reference = full.resize(ours.size, Image.Resampling.LANCZOS)
        scores.append((psnr(ours, reference), psnr(theirs.resize(ours.size), reference)))
    return sum(s[0] for s in scores) / len(scores), sum(s[1] for s in scores) / len(scores)


def count_decodes(work: Callable[[], object]) -> int:
    """How many times ``ImageFile.load`` (the pixel decode) runs during ``work``."""
    original = ImageFile.ImageFile.load
    calls = 0

    def counting(self: ImageFile.ImageFile) -> object:
        nonlocal calls
        calls += 1
        return original(self)

    ImageFile.ImageFile.load = counting  # type: ignore[method-assign]
    try:
        work()
    finally:
        ImageFile.ImageFile.load = original  # type: ignore[method-assign]
    return calls


def run(workdir: Path, *, quick: bool) -> list[Figure]:
    seconds = 3.0 if quick else 8.0
    log(f"target 4: generating {SOURCES} 4000x3000 JPEGs")
    images = [photo_jpeg(4000, 3000, seed=k) for k in range(SOURCES)]
    megabytes = sum(map(len, images)) / len(images) / 1e6
    results: dict[tuple[str, int], tuple[float, float]] = {}
    for name, work in (("plain", plain), ("prepare_image", prepared)):
        for threads in (1, 2):
            log(f"  {name}, {threads} thread(s), {seconds:.0f} s")
            results[name, threads] = throughput(work, images, seconds, threads)
    plain1, prep1 = results["plain", 1][0], results["prepare_image", 1][0]
    plain2, prep2 = results["plain", 2][0], results["prepare_image", 2][0]
    cores2 = results["prepare_image", 2][1]
    ratio = prep1 / plain1
    smooth = [photo_jpeg(4000, 3000, seed=k, grain=0.0) for k in range(SOURCES)]
    smooth_mb = sum(map(len, smooth)) / len(smooth) / 1e6
    log(f"  smooth {smooth_mb:.1f} MB pictures, 1 thread, both paths")
    smooth_ratio = throughput(prepared, smooth, seconds, 1)[0] / throughput(plain, smooth, seconds, 1)[0]

    small = photo_jpeg(1024, 768, seed=1)
    decodes = count_decodes(lambda: prepare_image(small, POLICY, label="small"))
    passed = prepare_image(small, POLICY, label="small").passed_through
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < 1.0:
        prepare_image(small, POLICY, label="small")
        n += 1
    pass_ms = 1000 * (time.perf_counter() - t) / n
    steps = breakdown(images[0])
    for name, ms in steps.items():
        log(f"  {name}: {ms:.1f} ms")
    ours_db, plain_db = quality(images)
    detail = (
        "prepare_image: decode at 1/2 {0:.0f} + BICUBIC {1:.0f} + encode {2:.0f} ms; "
        "plain: decode {4:.0f} + convert {5:.0f} + thumbnail {6:.0f} ms".format(*steps.values())
    )
    return [
        Figure(
            "4a",
            f"12 MP JPEG ({megabytes:.1f} MB) to 1568 px, per core (1 thread)",
            "≥ 4x plain Pillow",
            f"{ratio:.2f}x ({prep1:.1f} vs {plain1:.1f} images/s)",
            ratio >= 4.0,
            {"prepare_1": prep1, "plain_1": plain1, "ratio": ratio},
        ),
        Figure(
            "4a'",
            f"same on smooth, low-detail 12 MP JPEGs ({smooth_mb:.1f} MB)",
            "report",
            f"{smooth_ratio:.2f}x",
            None,
            {"ratio": smooth_ratio},
        ),
        Figure(
            "4b",
            "same, 2 threads: both cores used",
            "≈ 2 cores busy (≥ 1.6 CPU-s per s)",
            f"{prep2:.1f} images/s ({prep2 / prep1:.2f}x of 1 thread), {cores2:.2f} CPU-s/s; "
            f"plain {plain2:.1f}/s",
            cores2 >= 1.6,
            {"prepare_2": prep2, "plain_2": plain2, "cpu_per_wall": cores2},
        ),
        Figure(
            "4c",
            "1024x768 JPEG that needs nothing: passed through",
            "no pixel decode",
            f"passed_through={passed}, {decodes} decodes, {pass_ms:.2f} ms/image",
            passed and decodes == 0,
            {"decodes": decodes, "ms": pass_ms},
        ),
        Figure("4d", "where one 12 MP conversion's time goes", "report", detail, None, steps),
        Figure(
            "4e",
            "output quality: PSNR against a full-resolution LANCZOS resize",
            "report (≈ plain)",
            f"prepare_image {ours_db:.2f} dB, plain {plain_db:.2f} dB",
            None,
            {"prepare_db": ours_db, "plain_db": plain_db},
        ),
    ]


def main() -> None:
    args = bench_parser(__doc__, "3 s per measurement instead of 8 s").parse_args()
    with work_directory(args.workdir) as workdir:
        finish(run(workdir, quick=args.quick), args.json_out)


if __name__ == "__main__":
    main()
