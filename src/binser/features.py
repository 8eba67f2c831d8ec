"""Segment-level deep features of audio files, per binaural view, with a disk cache.

:class:`SegmentFeatureExtractor` turns each file into, per view, an array ``(n_i, d)`` of
backbone features of its ``n_i`` segment images (SPEC steps 1-6, frozen extraction):
decode once -> binaural views -> 3-channel segment images -> resize + normalise -> backbone.
Segments of consecutive files and views are packed into full batches.

The cache stores one ``.npy`` per (file content sha256, view, front-end config digest,
backbone name, backbone weights id, input size) under ``cache_dir/<2 hex>/<key>.npy``,
written atomically (temporary file in the same folder, fsync, rename), so a killed run
leaves only complete entries and a rerun resumes. Unreadable or mis-shaped entries are
recomputed, never returned. Fine-tuned weights have another ``weights_id``, hence other keys.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .audio import load_audio
from .backbones import Backbone, set_threads
from .cache import HASH_CHUNK, CacheWarning, FeatureCache, file_sha256  # noqa: F401
from .config import FrontEndConfig
from .errors import ConfigError
from .spectrogram import views_images
from .views import ALL_VIEWS, VIEWS, binaural_views

CACHE_FORMAT = "binser-segment-features-v1"  # bump when the feature computation changes


def cache_key(file_digest: str, view: str, config_digest: str, backbone_name: str,
              weights_id: str, input_size: int) -> str:
    """40-hex-digit key of one file's features for one view, front end and backbone."""
    text = "|".join([CACHE_FORMAT, file_digest, view, config_digest, backbone_name,
                     weights_id, str(int(input_size))])
    return hashlib.sha256(text.encode()).hexdigest()[:40]


def backbone_cache_key(file_digest: str, view: str, config: FrontEndConfig,
                       backbone: Backbone) -> str:
    """:func:`cache_key` with the config's digest and the backbone's identity filled in."""
    return cache_key(file_digest, view, config.digest(), backbone.name, backbone.weights_id,
                     backbone.input_size)


# --------------------------------------------------------------------------------------
# batching segments across files and views
# --------------------------------------------------------------------------------------

@dataclass
class _Job:
    """Segment images of one (file content, view) waiting for features."""

    key: str
    images: np.ndarray            # (n, 3, F, L) in [0, 1]
    out: np.ndarray               # (n, d) filled batch by batch
    done: int = 0                 # segments whose features are in ``out``
    waiters: list[tuple[int, str]] = field(default_factory=list)  # (file index, view)

    @property
    def remaining(self) -> int:
        return self.images.shape[0] - self.done


class _Batcher:
    """Queue of jobs; runs the backbone on batches of exactly ``batch_size`` segments."""

    def __init__(self, run, batch_size: int, on_complete):
        self.run = run                  # (B, 3, F, L) ndarray -> (B, d) ndarray
        self.batch_size = batch_size
        self.on_complete = on_complete  # called with each finished _Job
        self.jobs: list[_Job] = []
        self.queued = 0                 # segments waiting

    def add(self, job: _Job) -> None:
        """Queue a job and run every full batch now available."""
        if job.remaining == 0:
            self.on_complete(job)
            return
        self.jobs.append(job)
        self.queued += job.remaining
        while self.queued >= self.batch_size:
            self._run_batch(self.batch_size)

    def flush(self) -> None:
        """Run what is left (a last partial batch)."""
        while self.queued:
            self._run_batch(min(self.queued, self.batch_size))

    def _run_batch(self, size: int) -> None:
        pieces, spans = [], []
        for job in self.jobs:
            take = min(job.remaining, size - sum(len(p) for p in pieces))
            if take <= 0:
                break
            pieces.append(job.images[job.done: job.done + take])
            spans.append((job, take))
        features = self.run(np.concatenate(pieces))
        start = 0
        for job, take in spans:
            job.out[job.done: job.done + take] = features[start: start + take]
            job.done += take
            start += take
        self.queued -= size
        for job in [j for j, _ in spans if j.remaining == 0]:
            self.jobs.remove(job)
            self.on_complete(job)


# --------------------------------------------------------------------------------------
# the extractor
# --------------------------------------------------------------------------------------

def file_images(path: str | Path, views: Sequence[str],
                config: FrontEndConfig = FrontEndConfig()) -> dict[str, np.ndarray]:
    """The front end of one file: decode once -> binaural views -> segment images
    ``{view: (n, 3, F, L) float32}`` for ``views`` (SPEC steps 1-5)."""
    audio = load_audio(path, sr=config.sample_rate, max_duration_s=config.max_duration_s)
    signals = binaural_views(audio, config.side_scale, path)
    return views_images({v: signals[v] for v in views}, config)


class SegmentFeatureExtractor:
    """Per-view segment features ``(n_i, d)`` of audio files with a frozen backbone.

    ``views``: subset of ``left right mid side mono``. ``cache_dir``: feature cache folder
    (None: no cache). ``batch_size``: segments per backbone call. ``num_threads``: torch CPU
    threads during :meth:`extract` (None: leave torch's setting). ``channels_last``: run the
    network in channels-last memory format (faster on CPU for convolutions).

    :meth:`extract` puts the backbone's model in eval mode (restored afterwards), converts
    it to the chosen memory format (kept; values are unaffected) and first refreshes
    ``backbone.weights_id`` from the actual weights, so features of changed (e.g.
    fine-tuned) weights never mix with cached ones.
    """

    def __init__(self, backbone: Backbone, config: FrontEndConfig = FrontEndConfig(),
                 views: Sequence[str] = VIEWS, cache_dir: str | Path | None = None,
                 batch_size: int = 64, num_threads: int | None = None, progress: bool = True,
                 channels_last: bool = True):
        self.backbone = backbone
        self.config = config
        self.views = _check_views(views)
        if int(batch_size) != batch_size or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = int(batch_size)
        self.num_threads = num_threads
        self.progress = progress
        self.channels_last = channels_last
        self.cache = FeatureCache(cache_dir) if cache_dir is not None else None
        self.n_computed = 0   # segments run through the backbone by the last extract()
        self.n_cached = 0     # (file, view) entries read from the cache by the last extract()

    # ---------------------------------------------------------------- public

    def extract(self, paths: Sequence[str | Path]) -> dict[str, list[np.ndarray]]:
        """``{view: [features of paths[i] (n_i, d) float32, ...]}`` in the order of ``paths``."""
        paths = [Path(p) for p in paths]
        threads_before = torch.get_num_threads()
        if self.num_threads is not None:
            set_threads(self.num_threads)
        was_training = self.backbone.model.training
        self.backbone.model.eval()
        self.backbone.refresh_weights_id()
        try:
            return self._extract(paths)
        finally:
            self.backbone.model.train(was_training)
            torch.set_num_threads(threads_before)

    def keys(self, path: str | Path, digest: str | None = None) -> dict[str, str]:
        """Cache keys ``{view: key}`` of one file (``digest``: its sha256 if known)."""
        digest = file_sha256(path) if digest is None else digest
        return {v: backbone_cache_key(digest, v, self.config, self.backbone)
                for v in self.views}

    # ---------------------------------------------------------------- steps

    def _extract(self, paths: list[Path]) -> dict[str, list[np.ndarray]]:
        results: dict[str, list[np.ndarray | None]] = {v: [None] * len(paths)
                                                      for v in self.views}
        self.n_computed, self.n_cached = 0, 0
        state = _RunState(results, self.cache)
        self.backbone.model.to(memory_format=torch.channels_last if self.channels_last
                               else torch.contiguous_format)
        batcher = _Batcher(self._features, self.batch_size, state.complete)
        bar = _progress_bar(len(paths), self.progress)
        try:
            for index, path in enumerate(paths):
                self._enqueue_file(index, path, state, batcher)
                bar.update(1)
                bar.set_postfix(segments=self.n_computed, cached=self.n_cached, refresh=False)
            batcher.flush()
        finally:
            bar.close()
        return results  # type: ignore[return-value]

    def _enqueue_file(self, index: int, path: Path, state: "_RunState",
                      batcher: _Batcher) -> None:
        """Fill the file's views from memory or cache; queue the others for the backbone."""
        digest = state.digests.get(path.resolve()) or file_sha256(path)
        state.digests[path.resolve()] = digest
        keys = self.keys(path, digest)
        missing = [v for v in self.views if not state.resolve(index, v, keys[v],
                                                               self.backbone.feature_dim)]
        self.n_cached += sum(1 for v in self.views if v not in missing and
                             keys[v] in state.from_cache)
        if not missing:
            return
        images = self._images(path, missing)
        for view in missing:
            job = _Job(keys[view], images[view],
                       np.empty((len(images[view]), self.backbone.feature_dim), np.float32),
                       waiters=[(index, view)])
            state.pending[job.key] = job
            batcher.add(job)

    def _images(self, path: Path, views: list[str]) -> dict[str, np.ndarray]:
        """Decode ``path`` once -> segment images ``{view: (n, 3, F, L)}`` for ``views``."""
        return file_images(path, views, self.config)

    def _features(self, images: np.ndarray) -> np.ndarray:
        """(B, 3, F, L) images in [0, 1] -> (B, d) float32 features."""
        with torch.inference_mode():
            x = self.backbone.normalise(images, channels_last=self.channels_last)
            out = self.backbone.model(x)
        self.n_computed += len(images)
        return out.float().cpu().numpy()


class _RunState:
    """Bookkeeping of one extract() call: results, hashes, pending and finished keys."""

    def __init__(self, results: dict[str, list], cache: FeatureCache | None):
        self.results = results
        self.cache = cache
        self.digests: dict[Path, str] = {}
        self.pending: dict[str, _Job] = {}
        self.finished: dict[str, np.ndarray] = {}
        self.from_cache: set[str] = set()

    def resolve(self, index: int, view: str, key: str, feature_dim: int) -> bool:
        """Fill results[view][index] from this run or the cache; False if it must be computed."""
        if key in self.pending:
            self.pending[key].waiters.append((index, view))
            return True
        if key not in self.finished and self.cache is not None:
            cached = self.cache.get(key, feature_dim)
            if cached is not None:
                self.finished[key] = cached
                self.from_cache.add(key)
        if key in self.finished:
            self.results[view][index] = self.finished[key]
            return True
        return False

    def complete(self, job: _Job) -> None:
        """Store a finished job: cache entry first, then every waiting (file, view)."""
        if self.cache is not None:
            self.cache.put(job.key, job.out)
        self.finished[job.key] = job.out
        self.pending.pop(job.key, None)
        for index, view in job.waiters:
            self.results[view][index] = job.out


def _check_views(views: Sequence[str]) -> tuple[str, ...]:
    """Validate a non-empty, duplicate-free subset of ALL_VIEWS."""
    views = tuple(views)
    unknown = [v for v in views if v not in ALL_VIEWS]
    if not views or unknown or len(set(views)) != len(views):
        raise ConfigError(f"views must be distinct names from {', '.join(ALL_VIEWS)}; "
                          f"got {', '.join(views) or 'none'}")
    return views


def _progress_bar(total: int, enabled: bool):
    """tqdm bar over files (disabled when ``enabled`` is False)."""
    from tqdm.auto import tqdm
    return tqdm(total=total, unit="file", desc="features", disable=not enabled, leave=False)
