"""Target 4, images: preparing camera JPEGs at the decode floor, and against plain Pillow.

    .venv/bin/python benchmarks/bench_images.py [--quick]

On generated photo-like 4000x3000 (about 2.7 MB) and 2400x1800 (about 0.8 MB) JPEGs, for a 1568 px
and a 2576 px long edge: ``pipeline.payloads.images.prepare_image`` against the *decode floor*, the
least any path must spend (Pillow's ``draft`` at the largest DCT scale still covering the target,
then ``load``), both timed on one thread in the same run, image by image (median CPU time); and
the PSNR of its output and of the plain path's against a reference (full decode, LANCZOS from full
resolution). Target: at most 1.25x the floor at equal or better PSNR.

Plain path: ``Image.open``, ``convert("RGB")``, ``thumbnail((edge, edge))``, ``save`` as JPEG q85.
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
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _harness import Figure, bench_parser, finish, log, photo_jpeg, work_directory
from PIL import Image, ImageChops, ImageFile, ImageStat

from pipeline.payloads.images import ImagePolicy, fit_size, prepare_image

EDGE = 1568
SOURCES = 4
POLICY = ImagePolicy(max_edge=EDGE)


def plain(data: bytes) -> bytes:
    """What a script without the pipeline would do: decode everything, convert, thumbnail, save."""
    return plain_to(data, EDGE)


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


# (source size, long edge): the four cases
CASES = (((4000, 3000), 1568), ((4000, 3000), 2576), ((2400, 1800), 1568), ((2400, 1800), 2576))
FLOOR_RATIO = 1.25


def decode_floor(data: bytes, edge: int) -> None:
    """The least any path must spend: the decode at the largest DCT scale still covering ``edge``."""
    with Image.open(io.BytesIO(data)) as img:
        img.draft("RGB", fit_size(img.size, ImagePolicy(max_edge=edge)))
        img.load()


def plain_to(data: bytes, edge: int) -> bytes:
    """The plain path to ``edge``: decode everything, convert, thumbnail, save q85."""
    with Image.open(io.BytesIO(data)) as opened:
        img = opened.convert("RGB")
    img.thumbnail((edge, edge))
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def cpu_ms(work: Callable[[], object], repeats: int) -> float:
    """Median CPU milliseconds of ``work`` (one thread: this process's CPU time is its time)."""
    work()
    samples = []
    for _ in range(repeats):
        t = time.process_time()
        work()
        samples.append(time.process_time() - t)
    return 1000 * statistics.median(samples)


def case_figure(key: str, images: Sequence[bytes], size: tuple[int, int], edge: int, repeats: int) -> Figure:
    """prepare_image against the decode floor on one thread, image by image, and both outputs' PSNR."""
    policy = ImagePolicy(max_edge=edge)
    floors: list[float] = []
    prepares: list[float] = []
    passed = False
    for data in images:
        floors.append(cpu_ms(lambda data=data: decode_floor(data, edge), repeats))
        prepares.append(cpu_ms(lambda data=data: prepare_image(data, policy, label="bench"), repeats))
        passed = prepare_image(data, policy, label="bench").passed_through
    floor, ours = statistics.median(floors), statistics.median(prepares)
    ratio = ours / floor
    ours_db, plain_db = quality_to(images[:2], edge)
    mb = sum(map(len, images)) / len(images) / 1e6
    note = "passed through untouched; " if passed else ""
    good_quality = passed or ours_db >= plain_db - 0.01
    return Figure(
        key,
        f"{size[0]}x{size[1]} JPEG ({mb:.1f} MB) for a {edge} px long edge, 1 thread",
        f"≤ {FLOOR_RATIO}x the decode floor, PSNR ≥ plain",
        f"{note}{ratio:.2f}x ({ours:.1f} vs floor {floor:.1f} ms); "
        f"PSNR {ours_db:.2f} vs plain {plain_db:.2f} dB",
        ratio <= FLOOR_RATIO and good_quality,
        {
            "ratio": ratio,
            "prepare_ms": ours,
            "floor_ms": floor,
            "prepare_db": ours_db,
            "plain_db": plain_db,
            "passed_through": passed,
        },
    )


def quality_to(images: Sequence[bytes], edge: int) -> tuple[float, float]:
    """Mean PSNR (prepare_image, plain) to ``edge`` against a full decode resized with LANCZOS."""
    policy = ImagePolicy(max_edge=edge)
    scores: list[tuple[float, float]] = []
    for data in images:
        with Image.open(io.BytesIO(data)) as opened:
            full = opened.convert("RGB")
        ours = Image.open(io.BytesIO(base64.b64decode(prepare_image(data, policy, label="q").data_b64)))
        theirs = Image.open(io.BytesIO(plain_to(data, edge)))
        reference = full if ours.size == full.size else full.resize(ours.size, Image.Resampling.LANCZOS)
        theirs = theirs if theirs.size == ours.size else theirs.resize(ours.size)
        scores.append((psnr(ours, reference), psnr(theirs, reference)))
    return sum(s[0] for s in scores) / len(scores), sum(s[1] for s in scores) / len(scores)


def run(workdir: Path, *, quick: bool) -> list[Figure]:
    seconds = 3.0 if quick else 8.0
    repeats = 2 if quick else 5
    figures: list[Figure] = []
    sources: dict[tuple[int, int], list[bytes]] = {}
    for key, (size, edge) in zip(("4a", "4b", "4c", "4d"), CASES, strict=True):
        if size not in sources:
            log(f"target 4: generating {SOURCES} photo-like {size[0]}x{size[1]} JPEGs")
            sources[size] = [photo_jpeg(*size, seed=k) for k in range(SOURCES)]
        log(f"  {size[0]}x{size[1]} to {edge} px: prepare_image against the decode floor")
        figures.append(case_figure(key, sources[size], size, edge, repeats))
    images = sources[4000, 3000]
    megabytes = sum(map(len, images)) / len(images) / 1e6
    results: dict[tuple[str, int], tuple[float, float]] = {}
    for name, work in (("plain", plain), ("prepare_image", prepared)):
        for threads in (1, 2):
            log(f"  12 MP to 1568 px, {name}, {threads} thread(s), {seconds:.0f} s")
            results[name, threads] = throughput(work, images, seconds, threads)
    plain1, prep1 = results["plain", 1][0], results["prepare_image", 1][0]
    plain2, prep2 = results["plain", 2][0], results["prepare_image", 2][0]
    cores2 = results["prepare_image", 2][1]
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
    detail = (
        "prepare_image: decode at 1/2 {0:.0f} + BICUBIC {1:.0f} + encode {2:.0f} ms; "
        "plain: decode {4:.0f} + convert {5:.0f} + thumbnail {6:.0f} ms".format(*steps.values())
    )
    return [
        *figures,
        Figure(
            "4e",
            "12 MP to 1568 px, 2 threads: both cores used",
            "≈ 2 cores busy (≥ 1.6 CPU-s per s)",
            f"{prep2:.1f} images/s ({prep2 / prep1:.2f}x of 1 thread), {cores2:.2f} CPU-s/s; "
            f"plain {plain2:.1f}/s",
            cores2 >= 1.6,
            {"prepare_2": prep2, "plain_2": plain2, "cpu_per_wall": cores2},
        ),
        Figure(
            "4f",
            "1024x768 JPEG that needs nothing: passed through",
            "no pixel decode",
            f"passed_through={passed}, {decodes} decodes, {pass_ms:.2f} ms/image",
            passed and decodes == 0,
            {"decodes": decodes, "ms": pass_ms},
        ),
        Figure("4g", "where one 12 MP conversion's time goes", "report", detail, None, steps),
        Figure(
            "4h",
            f"12 MP JPEG ({megabytes:.1f} MB) to 1568 px against plain Pillow, 1 thread",
            "report (the earlier 4x target is withdrawn)",
            f"{prep1 / plain1:.2f}x ({prep1:.1f} vs {plain1:.1f} images/s)",
            None,
            {"prepare_1": prep1, "plain_1": plain1, "ratio": prep1 / plain1},
        ),
    ]


def main() -> None:
    args = bench_parser(__doc__, "3 s per measurement instead of 8 s").parse_args()
    with work_directory(args.workdir) as workdir:
        finish(run(workdir, quick=args.quick), args.json_out)


if __name__ == "__main__":
    main()
