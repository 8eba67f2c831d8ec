"""Backbone throughput (segment images per second) on this machine.

For each backbone and input size, with the same batch size and thread count:

- ``bare``: the PyTorch ceiling, ``model(x)`` on pre-made normalised tensors (B, 3, S, S);
- ``binser``: :class:`binser.features.SegmentFeatureExtractor`'s batch path on (B, 3, 64, 64)
  images in [0, 1] (resize + normalise + model + copy out);
- ``end-to-end`` (``--files N``): ``extract()`` of N EMOVO files (decode, four views, log-Mel,
  images, backbone; no cache), reported as segment images per second.

Each is measured in NCHW and channels-last memory format. Usage::

    python bench/bench_backbone.py [--batch 64] [--threads N] [--seconds 3] [--files 0]

``binser bench`` reports the headline figures; this script adds both layouts side by side
and the end-to-end extraction rate.
"""
from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import torch

from binser.backbones import get_backbone, set_threads
from binser.benchmark import best_rates
from binser.features import SegmentFeatureExtractor

CASES = (("efficientnet_lite0", 112), ("efficientnet_lite0", 160), ("efficientnet_lite0", 224),
         ("alexnet", 227))
EMOVO = Path(__file__).resolve().parents[2] / "shared" / "data" / "emovo"


def steps_for(backbone, batch: int, channels_last: bool) -> dict:
    """The bare-network step and binser's batch step for one memory layout."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    backbone.model.to(memory_format=fmt)
    size = backbone.input_size
    ready = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
    images = torch.rand(batch, 3, 64, 64).numpy()
    extractor = SegmentFeatureExtractor(backbone, batch_size=batch, progress=False,
                                        channels_last=channels_last)

    def bare():
        with torch.inference_mode():
            backbone.model(ready)
    return {"bare": bare, "binser": lambda: extractor._features(images)}


def end_to_end_rate(backbone, batch: int, files: list[Path], channels_last: bool) -> float:
    """Segment images per second of a full uncached extract() of ``files`` (4 views)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    backbone.model.to(memory_format=fmt)
    extractor = SegmentFeatureExtractor(backbone, batch_size=batch, progress=False,
                                        channels_last=channels_last)
    start = time.perf_counter()
    extractor.extract(files)
    return extractor.n_computed / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="default: all cores")
    parser.add_argument("--seconds", type=float, default=3.0, help="per layout and backbone")
    parser.add_argument("--files", type=int, default=0, help="EMOVO files for end-to-end")
    args = parser.parse_args()
    threads = set_threads(args.threads)
    files = sorted(EMOVO.glob("*/*.flac"))[: args.files] if args.files else []
    print(f"torch {torch.__version__}, threads {threads}, batch {args.batch}"
          + (f", end-to-end on {len(files)} EMOVO files" if files else ""))
    header = f"{'backbone':<20}{'size':>5}  {'layout':<14}{'bare':>9}{'binser':>9}"
    print(header + (f"{'end-to-end':>12}" if files else "") + "   (images/s)")
    for name, size in CASES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            weights = "random" if name == "alexnet" else None
            backbone = get_backbone(name, weights=weights, input_size=size, allow_random=True)
        for channels_last in (False, True):
            rates = best_rates(steps_for(backbone, args.batch, channels_last), args.batch,
                               args.seconds)
            row = (f"{name:<20}{size:>5}  {'channels_last' if channels_last else 'NCHW':<14}"
                   f"{rates['bare']:>9.1f}{rates['binser']:>9.1f}")
            if files:
                row += f"{end_to_end_rate(backbone, args.batch, files, channels_last):>12.1f}"
            print(row, flush=True)


if __name__ == "__main__":
    main()
