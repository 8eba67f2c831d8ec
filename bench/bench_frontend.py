"""Front-end throughput over the whole EMOVO corpus (docs/METHOD.md sections 1-4).

Per file: decode + resample (``load_audio``), the binaural views (``binaural_views``), and
log-Mel + segments + delta / delta-delta images of the four views (``views_images``, one
batched pass). Prints seconds of audio per wall second ("x real time"), per stage, plus the
segment counts per utterance with the default segment hop.

    .venv/bin/python bench/bench_frontend.py [--root PATH] [--repeat K] [--limit N] [--jobs J]

With --jobs J > 1, files are processed by J threads (numpy, scipy and libsndfile release
the GIL); per-stage times are then summed over threads and the ratio that counts is the
elapsed one.

The corpus is read from ../shared/data/emovo (beside the project) unless --root says
otherwise; the benchmark exits with a message (status 0) when it is absent.
"""
from __future__ import annotations

import argparse
import os
import statistics
from concurrent.futures import ThreadPoolExecutor
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np

from binser.audio import load_audio
from binser.config import FrontEndConfig
from binser.spectrogram import views_images
from binser.views import VIEWS, MonoInputWarning, binaural_views

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "emovo"


class StageClock:
    """Accumulates wall and CPU seconds of the calling thread per stage (summed over threads)."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._lock = threading.Lock()

    def run(self, stage: str, func, *args, **kwargs):
        w0, c0 = time.perf_counter(), time.thread_time()
        result = func(*args, **kwargs)
        wall, cpu = time.perf_counter() - w0, time.thread_time() - c0
        with self._lock:
            self.wall[stage] = self.wall.get(stage, 0.0) + wall
            self.cpu[stage] = self.cpu.get(stage, 0.0) + cpu
        return result


def process_file(path: Path, config: FrontEndConfig,
                 clock: StageClock) -> tuple[float, int, bool]:
    """Run the front end on one file; return (duration in s, segments per view, mono?)."""
    audio = clock.run("decode+resample", load_audio, path, sr=config.sample_rate,
                      max_duration_s=config.max_duration_s)
    views = clock.run("views", binaural_views, audio, config.side_scale, path)
    images = clock.run("log-Mel+segments+images", views_images,
                       {v: views[v] for v in VIEWS}, config)
    return audio.shape[1] / config.sample_rate, images[VIEWS[0]].shape[0], audio.shape[0] == 1


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def describe(counts: list[int]) -> str:
    return (f"min {min(counts)} / median {statistics.median(counts):g} / "
            f"mean {statistics.fmean(counts):.2f} / max {max(counts)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--repeat", type=int, default=1, help="passes over the corpus")
    parser.add_argument("--limit", type=int, default=None, help="first N files only")
    parser.add_argument("--jobs", type=int, default=1, help="files processed in parallel")
    args = parser.parse_args(argv)

    files = sorted(args.root.rglob("*.flac")) if args.root.is_dir() else []
    if not files:
        print(f"SKIP: no EMOVO corpus (*.flac) at {args.root}; nothing to benchmark.")
        return 0
    files = files[: args.limit]
    config = FrontEndConfig()
    warnings.simplefilter("ignore", MonoInputWarning)  # counted below instead
    views_images({v: np.zeros(16000, np.float32) for v in VIEWS}, config)  # warm caches

    clock = StageClock()
    start, start_cpu = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for _ in range(args.repeat):
            results = list(pool.map(lambda p: process_file(p, config, clock), files))
    elapsed, process_cpu = time.perf_counter() - start, time.process_time() - start_cpu
    audio_s = sum(r[0] for r in results)
    counts = [r[1] for r in results]
    mono = sum(r[2] for r in results) * args.repeat
    total_audio = audio_s * args.repeat
    wall, cpu = sum(clock.wall.values()), sum(clock.cpu.values())

    print(f"EMOVO front end: {len(files)} files, {audio_s:.1f} s of audio"
          f" ({audio_s / 60:.1f} min), {args.repeat} pass(es), {len(VIEWS)} views,"
          f" hop {config.segment_hop} frames, {args.jobs} thread(s)")
    print(f"{'stage (summed per file)':26s} {'wall s':>8s} {'x real time':>12s} {'CPU s':>8s}")
    for stage in clock.wall:
        print(f"{stage:26s} {clock.wall[stage]:8.2f} {total_audio / clock.wall[stage]:12.0f}"
              f" {clock.cpu[stage]:8.2f}")
    print(f"{'total':26s} {wall:8.2f} {total_audio / wall:12.0f} {cpu:8.2f}")
    print(f"audio seconds per elapsed wall second: {total_audio / elapsed:.0f}x real time"
          f" ({elapsed:.2f} s); per process CPU second (all threads): "
          f"{total_audio / process_cpu:.0f}x ({process_cpu:.2f} s)")
    print(f"load average while running: {_loadavg()} on {os.cpu_count()} cores")
    print(f"segments per view: {sum(counts)} in total ({sum(counts) * len(VIEWS)} images"
          f" over {len(VIEWS)} views); per utterance {describe(counts)}")
    print(f"mono files (L = R, Side all zero): {mono // args.repeat}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
