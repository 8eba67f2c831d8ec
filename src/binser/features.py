"""Segment-level deep features of audio files, per binaural view, with a disk cache.

:class:`SegmentFeatureExtractor` turns each file into, per view, an array ``(n_i, d)`` of
backbone features of its ``n_i`` segment images (docs/METHOD.md sections 1-5, frozen
extraction):
decode once -> binaural views -> 3-channel segment images -> resize + normalise -> backbone.
Segments of consecutive files and views are packed into full batches. A view that carries
no signal in a file (:func:`binser.views.silent_views`) gets an array with ``n_i = 0`` rows.

:class:`FrameFeatureExtractor` does the same for speech encoders (the Whisper family): each
view's waveform -> the hidden states of chosen encoder layers, one row per 20 ms frame;
cache entries per (file, view, layer).

The cache stores one ``.npy`` per (file content sha256, view, front-end config digest,
backbone name, backbone weights id, input size) under ``cache_dir/<2 hex>/<key>.npy``,
written atomically (temporary file in the same folder, fsync, rename), so a killed run
leaves only complete entries and a rerun resumes. Unreadable or mis-shaped entries are
recomputed, never returned. Fine-tuned weights have another ``weights_id``, hence other keys.
"""
from __future__ import annotations

import contextlib
import hashlib
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .audio import load_audio
from .backbones import Backbone
from .parallel import single_thread_map
from .cache import HASH_CHUNK, CacheWarning, FeatureCache, file_sha256  # noqa: F401
from .config import FrontEndConfig
from .errors import ConfigError
from .spectrogram import views_images
from .views import (VIEW_DEFINITIONS, VIEWS, MonoInputWarning, all_views, binaural_views,
                    feature_views, file_silent_views, unknown_views, view_frames)

CACHE_FORMAT = "binser-segment-features-v4"  # bump when the feature computation changes
FRAME_CACHE_FORMAT = "binser-frame-features-v3"   # v3: chunks of > 30 s files encoded alone
SUB_BATCH = 16   # images per single-threaded work item (fixed: results never depend on threads)
PROGRESS_MIN_S = 60.0    # encode_signals shows a bar when a signal is longer than this (s)
CLIP_ENCODE_BATCH = 1    # timeline windows encoded per call by default (1: bit-exact)
_WINDOWS = threading.local()   # window_batch(): this thread's batch for encode_windows


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

def file_views(path: str | Path, config: FrontEndConfig = FrontEndConfig(),
               views: Sequence[str] | None = None) -> tuple[dict[str, np.ndarray], set[str]]:
    """Decode one file once -> ``({view: (N,) float32}, silent views)`` (docs/METHOD.md
    sections 1-2;
    silent: :func:`binser.views.silent_views`). ``views``: the signal views needed (None:
    all; :func:`binser.views.binaural_views`)."""
    audio = load_audio(path, sr=config.sample_rate, channels=config.channels,
                       max_duration_s=config.max_duration_s)
    signals = binaural_views(audio, config.side_scale, path, views=views,
                             sample_rate=config.sample_rate)
    return signals, file_silent_views(signals)


def file_images(path: str | Path, views: Sequence[str],
                config: FrontEndConfig = FrontEndConfig()) -> dict[str, np.ndarray]:
    """The front end of one file: decode once -> binaural views -> segment images
    ``{view: (n, 3, F, L) float32}`` for ``views`` (docs/METHOD.md sections 1-4). A silent
    view (no
    signal of its own, e.g. the Side of identical channels) gets ``n = 0`` images."""
    signals, silent = file_views(path, config, views)
    images = views_images({v: signals[v] for v in views if v not in silent}, config)
    empty = np.zeros((0, 3, config.n_mels, config.segment_frames), np.float32)
    return {v: images.get(v, empty) for v in views}


class SegmentFeatureExtractor:
    """Per-view segment features ``(n_i, d)`` of audio files with a frozen backbone.

    ``views``: subset of ``left right mid side mono``. ``cache_dir``: feature cache folder
    (None: no cache). ``batch_size``: segments per batch. ``num_threads``: worker threads,
    each computing sub-batches with one torch thread (None: one per core); the features do
    not depend on it. ``channels_last``: run the
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
        self._bar = None      # the progress bar of a running extract()
        self.n_computed = 0   # segments run through the backbone by the last extract()
        self.n_cached = 0     # (file, view) entries read from the cache by the last extract()

    # ---------------------------------------------------------------- public

    @classmethod
    def build(cls, backbone: Backbone, config: FrontEndConfig, views: Sequence[str],
              layers: Sequence[None] = (None,), cache_dir: str | Path | None = None,
              batch: int = 64, progress: bool = True, **kwargs: Any
              ) -> "SegmentFeatureExtractor":
        """The constructor every backbone's extractor class shares (``layers``: the single
        layer None; ``batch``: segments per batch)."""
        if tuple(layers) != (None,):
            raise ConfigError(f"{backbone.name}: a CNN has the single layer None, "
                              f"got {list(layers)}")
        return cls(backbone, config=config, views=views, cache_dir=cache_dir,
                   batch_size=batch, progress=progress, **kwargs)

    def extract_layer(self, paths: Sequence[str | Path], layer: None = None
                      ) -> dict[str, list[np.ndarray]]:
        """:meth:`extract` (a CNN's single layer None)."""
        return self.extract(paths)

    def extract(self, paths: Sequence[str | Path]) -> dict[str, list[np.ndarray]]:
        """``{view: [features of paths[i] (n_i, d) float32, ...]}`` in the order of ``paths``."""
        paths = [Path(p) for p in paths]
        was_training = self.backbone.model.training
        self.backbone.model.eval()
        self.backbone.refresh_weights_id()
        try:
            return self._extract(paths)
        finally:
            self.backbone.model.train(was_training)

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
        bar = self._bar = progress_bar(len(paths), self.progress)
        try:
            for index, path in enumerate(paths):
                self._enqueue_file(index, path, state, batcher)
                bar.update(1)
                bar.set_postfix(segments=self.n_computed, cached=self.n_cached, refresh=False)
            batcher.flush()
        finally:
            bar.close()
            self._bar = None
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
        """(B, 3, F, L) images in [0, 1] -> (B, d) float32 features (:func:`cnn_features`)."""
        out = cnn_features(self.backbone, images, self.num_threads, self.channels_last)
        self.n_computed += len(images)
        if self._bar is not None:   # progress within a long file: segments so far, live
            self._bar.set_postfix(segments=self.n_computed, cached=self.n_cached,
                                  refresh=True)
        return out


def cnn_features(backbone: Backbone, images: np.ndarray, num_threads: int | None = None,
                 channels_last: bool = True) -> np.ndarray:
    """(B, 3, F, L) segment images in [0, 1] -> (B, d) float32 features of ``backbone``.

    On the CPU, sub-batches of exactly :data:`SUB_BATCH` images (the last one padded with
    blank images: kernels are chosen by batch size) run single-threaded side by side
    (:func:`binser.parallel.single_thread_map`): a segment's features then never depend on
    the thread count, the batch size or the other segments of the batch. The network must
    be in eval mode (and in channels-last format when ``channels_last``, for speed).
    Identical images (:func:`unique_signals`; the L and R views of a mono file) are computed
    once, which changes no number."""
    cpu = backbone.device.type == "cpu"

    def run(part: np.ndarray) -> np.ndarray:
        n = len(part)
        if n < SUB_BATCH and cpu:
            part = np.concatenate([part, np.zeros((SUB_BATCH - n, *part.shape[1:]),
                                                  part.dtype)])
        with torch.inference_mode():
            x = backbone.normalise(part, channels_last=channels_last)
            return backbone.model(x).float().cpu().numpy()[:n]

    if not cpu:
        return run(images)
    unique, where = unique_signals(list(images))   # L and R of a mono file: computed once
    images = np.stack(unique) if len(unique) < len(images) else images
    parts = [images[i:i + SUB_BATCH] for i in range(0, len(images), SUB_BATCH)]
    out = np.concatenate(single_thread_map(run, parts, num_threads))
    return out[where] if len(unique) < len(where) else out


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


def _check_views(views: Sequence[str], signals_only: bool = True) -> tuple[str, ...]:
    """Validate a non-empty, duplicate-free subset of the views (:mod:`binser.views`); with
    ``signals_only``, of the signal views (a feature view has no backbone features)."""
    views = tuple(views)
    unknown = unknown_views(views)
    if not views or unknown or len(set(views)) != len(views):
        raise ConfigError(f"views must be distinct names from {', '.join(all_views())}; "
                          f"got {', '.join(views) or 'none'}")
    frames_only = feature_views(views)
    if signals_only and frames_only:
        raise ConfigError(f"view(s) {', '.join(frames_only)} are feature views: their frames "
                          "come from FeatureViewExtractor, not from a backbone")
    return views


FEATURE_VIEW_FORMAT = "binser-feature-view-v1"   # bump when a feature view's definition changes


def feature_view_key(file_digest: str, view: str, config: FrontEndConfig) -> str:
    """40-hex-digit cache key of one file's frames of a feature view."""
    text = "|".join([FEATURE_VIEW_FORMAT, file_digest, view, config.digest()])
    return hashlib.sha256(text.encode()).hexdigest()[:40]


class FeatureViewExtractor:
    """Frames ``(n_i, d)`` of the feature views (``spatial``; :func:`binser.views.view_frames`)
    of audio files, cached like backbone features (one ``.npy`` per file and view, written
    atomically). No backbone: each file is decoded at ``config.sample_rate`` and its frames
    computed from its two channels; a file with identical channels gets ``n_i = 0``."""

    def __init__(self, config: FrontEndConfig = FrontEndConfig(),
                 views: Sequence[str] = ("spatial",), cache_dir: str | Path | None = None,
                 progress: bool = True):
        self.config = config
        self.views = _check_views(views, signals_only=False)
        signals = [v for v in self.views if v not in feature_views(self.views)]
        if signals:
            raise ConfigError(f"view(s) {', '.join(signals)} are signal views, not feature views")
        self.cache = FeatureCache(cache_dir) if cache_dir is not None else None
        self.progress = progress
        self.n_computed = 0   # files whose frames were computed by the last extract()

    def extract(self, paths: Sequence[str | Path]) -> dict[str, list[np.ndarray]]:
        """``{view: [frames of paths[i] (n_i, d) float32, ...]}`` in the order of ``paths``."""
        out: dict[str, list[np.ndarray]] = {v: [] for v in self.views}
        self.n_computed = 0
        with progress_bar(len(paths), self.progress, desc="feature views") as bar:
            for path in paths:
                for view, frames in self._file(Path(path)).items():
                    out[view].append(frames)
                bar.update(1)
        return out

    def _file(self, path: Path) -> dict[str, np.ndarray]:
        dims = {v: VIEW_DEFINITIONS[v].frame_dim for v in self.views}
        keys = {}
        if self.cache is not None:
            digest = file_sha256(path)
            keys = {v: feature_view_key(digest, v, self.config) for v in self.views}
            found = {v: self.cache.get(keys[v], dims[v]) for v in self.views}
            if all(f is not None for f in found.values()):
                return found   # type: ignore[return-value]
        audio = load_audio(path, sr=self.config.sample_rate, channels=self.config.channels,
                           max_duration_s=self.config.max_duration_s)
        frames = view_frames(audio, self.views, self.config.sample_rate, path)
        self.n_computed += 1
        for view, value in frames.items():
            if self.cache is not None:
                self.cache.put(keys[view], value)
        return frames


def progress_bar(total: float, enabled: bool, unit: str = "file", desc: str = "features"):
    """A tqdm bar that disappears when done (disabled when ``enabled`` is False): the one
    kind of bar of feature extraction, encoding and timelines (:func:`binser.progress.bar`:
    inside a stage of a command it is named after the stage and moves the overall line)."""
    from .progress import bar
    return bar(total=total, desc=desc, unit=unit, enabled=enabled)


# --------------------------------------------------------------------------------------
# speech encoders: frame features per layer
# --------------------------------------------------------------------------------------

def frame_cache_key(file_digest: str, view: str, config: FrontEndConfig, backbone,
                    layer: int) -> str:
    """40-hex-digit key of one file's frame features for one view, encoder and layer."""
    text = "|".join([FRAME_CACHE_FORMAT, file_digest, view, config.digest(), backbone.name,
                     backbone.weights_id, str(int(layer))])
    return hashlib.sha256(text.encode()).hexdigest()[:40]


class FrameFeatureExtractor:
    """Per-view encoder frame features ``(n_i, d)`` of audio files, for one or more layers.

    ``backbone``: a :class:`~binser.backbones.whisper.WhisperBackbone`. ``layers``: encoder
    layers computed (and cached) whenever a file is encoded; :meth:`extract` returns those
    in ``keep`` (default: all). ``batch_files``: files decoded and encoded together (their
    views are batched by length inside the encoder, masked, so batching never changes a
    value). A silent view gets ``n_i = 0`` rows. ``num_threads``: worker threads, each
    encoding one signal alone with one torch thread (None: one per core); the frames do not
    depend on it.
    """

    def __init__(self, backbone, config: FrontEndConfig = FrontEndConfig(),
                 views: Sequence[str] = VIEWS, layers: Sequence[int] = (4,),
                 cache_dir: str | Path | None = None, batch_files: int = 16,
                 num_threads: int | None = None, progress: bool = True):
        self.backbone = backbone
        self.config = config
        self.views = _check_views(views)
        self.layers = tuple(int(layer) for layer in layers)
        bad = [layer for layer in self.layers if not 0 <= layer <= backbone.n_layers]
        if not self.layers or bad:
            raise ConfigError(f"{backbone.name}: layers must lie in 0..{backbone.n_layers}, "
                              f"got {list(layers)}")
        if int(batch_files) != batch_files or batch_files < 1:
            raise ConfigError(f"batch_files must be a positive integer, got {batch_files!r}")
        self.batch_files = int(batch_files)
        self.num_threads = num_threads
        self.progress = progress
        self.cache = FeatureCache(cache_dir) if cache_dir is not None else None
        self.n_computed = 0   # (file, view) signals run through the encoder by extract()
        self.n_cached = 0     # (file, view) entries read from the cache by extract()

    @classmethod
    def build(cls, backbone, config: FrontEndConfig, views: Sequence[str],
              layers: Sequence[int], cache_dir: str | Path | None = None, batch: int = 16,
              progress: bool = True, **kwargs: Any) -> "FrameFeatureExtractor":
        """The constructor every backbone's extractor class shares (``batch``: files
        decoded and encoded together)."""
        return cls(backbone, config=config, views=views, layers=layers, cache_dir=cache_dir,
                   batch_files=batch, progress=progress, **kwargs)

    def extract_layer(self, paths: Sequence[str | Path], layer: int
                      ) -> dict[str, list[np.ndarray]]:
        """``{view: [frames of paths[i] (n_i, d), ...]}`` of one computed layer."""
        return self.extract(paths, keep=(layer,))[int(layer)]

    def keys(self, path: str | Path, digest: str | None = None) -> dict[tuple[str, int], str]:
        """Cache keys ``{(view, layer): key}`` of one file."""
        digest = file_sha256(path) if digest is None else digest
        return {(v, layer): frame_cache_key(digest, v, self.config, self.backbone, layer)
                for v in self.views for layer in self.layers}

    def extract(self, paths: Sequence[str | Path], keep: Sequence[int] | None = None
                ) -> dict[int, dict[str, list[np.ndarray]]]:
        """``{layer: {view: [frames of paths[i] (n_i, d) float32, ...]}}`` for ``keep``."""
        keep = self.layers if keep is None else tuple(int(k) for k in keep)
        if not set(keep) <= set(self.layers):
            raise ConfigError(f"keep layers {list(keep)} not among computed {list(self.layers)}")
        return self._extract([Path(p) for p in paths], keep)

    def _extract(self, paths: list[Path], keep: tuple[int, ...]):
        results = {layer: {v: [None] * len(paths) for v in self.views} for layer in keep}
        self.n_computed, self.n_cached = 0, 0
        queue: list[tuple[int, Path, dict, list[str]]] = []
        bar = progress_bar(len(paths), self.progress)
        try:
            for index, path in enumerate(paths):
                keys = self.keys(path)
                missing = [v for v in self.views if not self._from_cache(index, v, keys,
                                                                         keep, results)]
                if missing:
                    queue.append((index, path, keys, missing))
                if len(queue) >= self.batch_files:
                    self._encode(queue, keep, results)
                    queue = []
                bar.update(1)
                bar.set_postfix(encoded=self.n_computed, cached=self.n_cached, refresh=False)
            if queue:
                self._encode(queue, keep, results)
        finally:
            bar.close()
        return results

    def _from_cache(self, index: int, view: str, keys: dict, keep: tuple[int, ...],
                    results: dict) -> bool:
        """Fill ``results`` for (file, view) from the cache if every computed layer is there.

        Only the ``keep`` layers are read; the others are checked for presence (``--layer
        auto`` reads one layer at a time, so reading all of them each time would cost 7x)."""
        if self.cache is None:
            return False
        if not all(self.cache.has(keys[(view, layer)]) for layer in self.layers):
            return False
        found = {}
        for layer in keep:
            value = self.cache.get(keys[(view, layer)], self.backbone.feature_dim)
            if value is None:
                return False
            found[layer] = value
        for layer, value in found.items():
            results[layer][view][index] = value
        self.n_cached += 1
        return True

    def _encode(self, queue: list, keep: tuple[int, ...], results: dict) -> None:
        """Decode the queued files, encode their missing non-silent views, cache every
        computed layer, keep ``keep``."""
        owners, signals = [], []
        empty = np.zeros((0, self.backbone.feature_dim), np.float32)
        for index, path, keys, views in queue:
            decoded = self._file_views(index, path, keys)
            if decoded is None:
                continue
            audio_views, silent = decoded
            for view in views:
                if view in silent:
                    self._store(index, view, keys, {layer: empty for layer in self.layers},
                                keep, results)
                else:
                    owners.append((index, path, view, keys))
                    signals.append(audio_views[view])
        for (index, _, view, keys), frames in self._encoded(owners, signals):
            self._store(index, view, keys, frames, keep, results)

    def _file_views(self, index: int, path: Path, keys: dict):
        """``(views, silent views)`` of one queued file (a hook: None leaves the file out)."""
        return file_views(path, self.config, self.views)

    def _encoded(self, owners: list, signals: list):
        """``(owner, frames)`` for every signal (a hook for per-file error handling)."""
        if not signals:
            return
        encoded = self._encode_signals(signals)
        self.n_computed += len(signals)
        yield from zip(owners, encoded)

    def _encode_signals(self, signals: list[np.ndarray]) -> list[dict[int, np.ndarray]]:
        return encode_signals(self.backbone, signals, self.layers, self.num_threads,
                              progress=self.progress)

    def _store(self, index: int, view: str, keys: dict, frames: dict, keep: tuple[int, ...],
               results: dict) -> None:
        for layer in self.layers:
            value = np.ascontiguousarray(frames[layer], dtype=np.float32)
            if self.cache is not None:
                self.cache.put(keys[(view, layer)], value)
            if layer in keep:
                results[layer][view][index] = value


def encode_signals(backbone, signals: Sequence[np.ndarray], layers: Sequence[int],
                   num_threads: int | None = None, progress: bool = False
                   ) -> list[dict[int, np.ndarray]]:
    """Encoder frames ``[{layer: (n_i, d)}, ...]`` of each waveform ``(N_i,)``.

    On the CPU every 30 s Mel chunk of every signal (:meth:`~binser.backbones.whisper.
    WhisperBackbone.mel_chunks`; a signal of at most 30 s is one chunk) is encoded ALONE (no
    padding, one intra-op thread), several side by side, and each signal's chunks are
    joined in order: a signal's frames depend only on the signal, never on the batch or the
    thread count (see :mod:`binser.parallel`). ``progress``: a bar over seconds of audio
    encoded, shown when a signal is longer than :data:`PROGRESS_MIN_S` seconds (so a long
    file shows its progress within the file). On a GPU: length-sorted masked batches.
    Identical signals (:func:`unique_signals`: the L and R views of a mono file) are
    encoded once. Inside :func:`window_batch` (``binser serve``) the signals go through
    :func:`encode_windows`, batched."""
    check_cancelled()
    batch = getattr(_WINDOWS, "batch", None)
    if batch is not None and batch > 1:   # inside window_batch (the server): batched
        return encode_windows(backbone, signals, layers, batch, num_threads)
    unique, where = unique_signals(signals)
    done = _encode_unique(backbone, unique, layers, num_threads, progress)
    return [done[k] for k in where]


def unique_signals(signals: Sequence[np.ndarray]) -> tuple[list[np.ndarray], list[int]]:
    """``(unique, where)``: the distinct signals (equal shape, dtype and bytes count as one;
    first occurrence kept, in order) and, per input signal, its index in ``unique``. The
    L and R views of a mono file or of a file with identical channels are one signal,
    encoded once (M = L + R is another: the encoders' log-Mel is not gain-invariant);
    frames are bit-identical to encoding each copy."""
    unique: list[np.ndarray] = []
    where: list[int] = []
    seen: dict[tuple, int] = {}
    for signal in signals:
        x = np.ascontiguousarray(signal)
        key = (x.shape, x.dtype.str, hashlib.blake2b(x, digest_size=16).digest())  # no copy
        if key not in seen:
            seen[key] = len(unique)
            unique.append(signal)
        where.append(seen[key])
    return unique, where


def _encode_unique(backbone, signals: list[np.ndarray], layers: Sequence[int],
                   num_threads: int | None, progress: bool) -> list[dict[int, np.ndarray]]:
    """:func:`encode_signals` of distinct signals."""
    if backbone.device.type != "cpu":
        return backbone.encode(signals, layers)
    mels = single_thread_map(backbone.chunks, signals, num_threads)
    items = [(i, c) for i, chunks in enumerate(mels) for c in range(len(chunks))]
    items.sort(key=lambda ic: -np.shape(mels[ic[0]][ic[1]])[-1])      # longest first
    seconds = {ic: backbone.chunk_seconds(mels[ic[0]][ic[1]]) for ic in items}
    longest = max((len(s) / backbone.sample_rate for s in signals), default=0.0)
    with progress_bar(round(sum(seconds.values()), 1), progress and longest > PROGRESS_MIN_S,
                      unit="s", desc="encoding") as bar:
        done = single_thread_map(lambda ic: backbone.encode_chunk(mels[ic[0]][ic[1]], layers),
                                 items, num_threads,
                                 on_result=lambda ic: bar.update(round(seconds[ic], 1)))
    parts: list[dict[int, list]] = [{} for _ in signals]
    for (i, c), frames in sorted(zip(items, done), key=lambda x: x[0]):
        for layer, value in frames.items():
            parts[i].setdefault(layer, []).append(value)
    return [{layer: (v[0] if len(v) == 1 else np.concatenate(v)) for layer, v in p.items()}
            for p in parts]


class Cancelled(Exception):
    """The work was cancelled (:func:`window_batch`'s ``cancel`` was set): not an error of
    the input, so never caught as one."""


def check_cancelled() -> None:
    """Raise :class:`Cancelled` if this thread's :func:`window_batch` block was cancelled."""
    cancel = getattr(_WINDOWS, "cancel", None)
    if cancel is not None and cancel.is_set():
        raise Cancelled("cancelled")


@contextlib.contextmanager
def window_batch(batch: int, cancel: threading.Event | None = None):
    """Within the block, in this thread only, :func:`encode_windows` and
    :func:`encode_signals` (so ``Model.predict`` with its timeline, ``Model.score_clips`` and
    the stream engine's Whisper windows) encode up to ``batch`` equal-length signals per
    call: faster, and equal to the unbatched (bit-exact) results to float32 rounding
    instead of bit for bit: frames within 1e-5 relative, scores within 1e-4 (1.4e-5 the
    largest difference measured, whisper-base on EMOVO). ``binser serve`` uses it.
    ``cancel``: once set (by another thread), the next encoder call in the block raises
    :class:`Cancelled` (a server stops the work of a client that left, within one batch)."""
    batch = int(batch)
    if batch < 1:
        raise ConfigError(f"window batch must be a positive integer, got {batch}")
    before = getattr(_WINDOWS, "batch", None), getattr(_WINDOWS, "cancel", None)
    _WINDOWS.batch, _WINDOWS.cancel = batch, cancel
    try:
        yield
    finally:
        _WINDOWS.batch, _WINDOWS.cancel = before


def encode_windows(backbone, signals: Sequence[np.ndarray], layers: Sequence[int],
                   batch: int | None = None, num_threads: int | None = None
                   ) -> list[dict[int, np.ndarray]]:
    """:func:`encode_signals` for short windows, optionally batched: on the CPU the distinct
    signals (:func:`unique_signals`) of at most 30 s whose Mel chunks have one length are
    encoded up to ``batch`` at a time (default: the :func:`window_batch` in force in this
    thread, else :data:`CLIP_ENCODE_BATCH`; fewer when that leaves a worker idle) (no
    padding, so no mask;
    :meth:`~binser.backbones.whisper.WhisperBackbone.encode_chunks`), the batches side by
    side on one intra-op thread each. A window's frames then equal the unbatched ones to
    float32 rounding (within 1e-5 relative; a batched matrix product may sum in another
    order), not bit for bit, and may differ that little with the batch's company.
    ``batch=1``: exactly the unbatched frames."""
    check_cancelled()
    if batch is None:
        batch = getattr(_WINDOWS, "batch", None) or CLIP_ENCODE_BATCH
    batch = int(batch)
    if batch < 1:
        raise ConfigError(f"batch must be a positive integer, got {batch}")
    unique, where = unique_signals(signals)
    if batch == 1 or backbone.device.type != "cpu":
        done = _encode_unique(backbone, unique, layers, num_threads, False)
        return [done[k] for k in where]
    mels = single_thread_map(backbone.chunks, unique, num_threads)
    out: list[dict[int, np.ndarray] | None] = [None] * len(unique)
    groups: dict[int, list[int]] = {}
    longer = []
    for i, chunks in enumerate(mels):
        if len(chunks) == 1:
            groups.setdefault(np.shape(chunks[0]), []).append(i)
        else:
            longer.append(i)
    from .parallel import check_workers

    workers = check_workers(num_threads)
    work = []   # at most `batch` per call, spread over the workers (a window's 4 views: 2+2)
    for members in groups.values():
        size = min(batch, -(-len(members) // workers))
        work += [members[s:s + size] for s in range(0, len(members), size)]
    results = single_thread_map(
        lambda group: backbone.encode_chunks([mels[i][0] for i in group], layers), work,
        num_threads)
    for group, frames in zip(work, results):
        for i, f in zip(group, frames):
            out[i] = f
    if longer:
        for i, f in zip(longer, _encode_unique(backbone, [unique[i] for i in longer], layers,
                                               num_threads, False)):
            out[i] = f
    return [out[k] for k in where]  # type: ignore[misc]


def clip_frames(backbone, clips: Sequence[np.ndarray], views: Sequence[str], layer: int,
                config: FrontEndConfig = FrontEndConfig(), num_threads: int | None = None,
                batch: int | None = None) -> list[dict[str, np.ndarray]]:
    """Encoder frames of each clip, every clip treated as a file holding exactly its audio.

    ``clips``: ``(C, N_i)`` float32 at ``config.sample_rate`` (C = 1 or 2). Per clip: its
    binaural views (:func:`binser.views.binaural_views`; a 1-channel clip gives L = R and a
    silent Side), its silent views over the clip (:func:`binser.views.silent_views`), and for
    each of ``views`` the hidden states ``(n, d)`` of encoder ``layer`` (:func:`encode_signals`)
    or ``(0, d)`` where the view is silent. Returns ``[{view: frames}, ...]``. These are the
    windows of a Whisper model's timeline and of a stream (:mod:`binser.serve.stream`),
    encoded by :func:`encode_windows` (views that are the same signal encoded once; one
    window at a time, bit-exact, unless ``batch`` or a :func:`window_batch` asks for more:
    then equal to that to float32 rounding, see :func:`window_batch`)."""
    views = _check_views(views)
    owners, signals = [], []
    out: list[dict[str, np.ndarray]] = []
    empty = np.zeros((0, backbone.feature_dim), np.float32)
    for i, clip in enumerate(clips):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MonoInputWarning)
            signals_i = binaural_views(np.asarray(clip, np.float32), config.side_scale,
                                       views=views, sample_rate=config.sample_rate)
        silent = file_silent_views(signals_i)
        out.append({v: empty for v in views})
        for v in views:
            if v not in silent:
                owners.append((i, v))
                signals.append(signals_i[v])
    for (i, v), frames in zip(owners, encode_windows(backbone, signals, (layer,), batch,
                                                     num_threads)):
        out[i][v] = np.ascontiguousarray(frames[layer], dtype=np.float32)
    return out
