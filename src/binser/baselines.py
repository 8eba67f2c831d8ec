"""The paper's baselines: openSMILE functionals of one binaural view per utterance.

Zhang et al. (2020) compare their deep features with openSMILE functional sets "extracted
from monaural representations such as the left channel". This module computes those
functionals with the optional ``opensmile`` package (``pip install 'binser[opensmile]'``),
which is imported only when features are actually computed.

Per file: decode once with :func:`binser.audio.load_audio` at ``config.sample_rate`` ->
:func:`binser.views.binaural_views` -> for each requested (set, view) one
``opensmile.Smile(set, FeatureLevel.Functionals).process_signal`` call -> one row of ``D``
float32 functionals. Non-finite functionals (openSMILE writes NaN for too-short input) are
replaced by 0 with one warning per call.

Rows are cached in :class:`binser.features.FeatureCache` (one ``(1, D)`` entry per file
content sha256, view, set, opensmile version and the front-end fields that change the
signal: sample rate and side scale), written atomically; unreadable or mis-shaped entries
are recomputed. Files are processed by a small thread pool: openSMILE runs in C through
``ctypes``, which releases the GIL, so two threads use both cores.

Run names (``results.json``): ``opensmile/<set>`` for the left channel (the paper's
practice) and ``opensmile/<set>-<view>`` for any other view, see :func:`baseline_run_name`.
"""
from __future__ import annotations

import hashlib
import importlib
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Sequence

import numpy as np

from .audio import audio_info, load_audio
from .config import FrontEndConfig
from .errors import AudioError, BinserError, ConfigError
from .validation import check_choice, check_int_range
from .features import FeatureCache, file_sha256
from .views import all_views, binaural_views, unknown_views

#: binser's set name (as in run names ``opensmile/<set>``) -> ``opensmile.FeatureSet`` member.
OPENSMILE_SETS: dict[str, str] = {
    "is10": "IS10",               # INTERSPEECH 2010 Paralinguistic Challenge, 1582 functionals
    "compare2016": "ComParE_2016",  # INTERSPEECH ComParE 2013-2016 set, 6373 functionals
    "egemaps": "eGeMAPSv02",       # extended Geneva minimalistic set v02, 88 functionals
}
#: Views of the default baseline runs (``left`` is the paper's practice).
BASELINE_VIEWS: tuple[str, ...] = ("left", "right", "mono")
#: The view whose run is named plainly ``opensmile/<set>``.
DEFAULT_VIEW = "left"
CACHE_FORMAT = "binser-opensmile-functionals-v1"  # bump when the computation changes
DEFAULT_WORKERS = 2  # threads over files (openSMILE releases the GIL)
_INT16_MAX = 32767.0 / 32768.0  # openSMILE converts to int16 via x * 32768: keep in range


class OpenSmileWarning(UserWarning):
    """openSMILE input or output was adjusted (clipped signal, non-finite functionals)."""


# ------------------------------------------------------------------------------ names


def require_opensmile() -> ModuleType:
    """The ``opensmile`` module, or a :class:`BinserError` saying how to install it."""
    try:
        return importlib.import_module("opensmile")
    except ImportError as exc:
        raise BinserError("openSMILE baselines need the optional 'opensmile' package: "
                          "install binser[opensmile] (pip install 'binser[opensmile]')"
                          f" [{exc}]") from exc


def check_feature_set(feature_set: str) -> str:
    """``feature_set`` if it is a key of :data:`OPENSMILE_SETS`, else :class:`ConfigError`."""
    return check_choice(feature_set, OPENSMILE_SETS, "openSMILE feature set")


def check_view(view: str) -> str:
    """``view`` if it is a view of :mod:`binser.views` (``left right mid side mono``), else
    :class:`ConfigError`."""
    return check_choice(view, all_views(), "view")


def baseline_run_name(feature_set: str, view: str = DEFAULT_VIEW) -> str:
    """``opensmile/<set>`` for the left view, ``opensmile/<set>-<view>`` for the others."""
    check_feature_set(feature_set)
    check_view(view)
    return f"opensmile/{feature_set}" if view == DEFAULT_VIEW else f"opensmile/{feature_set}-{view}"


def parse_baseline_run_name(name: str) -> tuple[str, str]:
    """Inverse of :func:`baseline_run_name`: ``(set, view)``; :class:`ConfigError` if invalid."""
    prefix = "opensmile/"
    rest = name[len(prefix):] if name.startswith(prefix) else ""
    feature_set, _, view = rest.partition("-")
    view = view or DEFAULT_VIEW
    if (feature_set not in OPENSMILE_SETS or unknown_views([view])
            or baseline_run_name(feature_set, view) != name):
        raise ConfigError(f"not an openSMILE baseline run name: {name!r}")
    return feature_set, view


# ------------------------------------------------------------------------------ cache keys


def signal_digest(config: FrontEndConfig) -> str:
    """16-hex digest of the front-end fields that change the views fed to openSMILE (the
    channels picked only when set, so older caches keep their keys)."""
    text = f"sr={int(config.sample_rate)}|side_scale={float(config.side_scale)!r}"
    if config.channels is not None:
        text += f"|channels={config.channels[0]},{config.channels[1]}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def opensmile_cache_key(file_digest: str, view: str, feature_set: str, config: FrontEndConfig,
                        opensmile_version: str) -> str:
    """40-hex key of one file's functionals for one view, set, front end and opensmile."""
    text = "|".join([CACHE_FORMAT, file_digest, view, feature_set, signal_digest(config),
                     opensmile_version])
    return hashlib.sha256(text.encode()).hexdigest()[:40]


# ------------------------------------------------------------------------------ one file


class _Extractor:
    """Thread-safe functionals of one file for several (set, view) pairs.

    Each thread builds its own ``opensmile.Smile`` per set (construction is cheap; the
    objects are not documented as thread-safe). Counts of adjusted values are kept for the
    single end-of-call warnings.
    """

    def __init__(self, opensmile: ModuleType, config: FrontEndConfig):
        self.opensmile = opensmile
        self.config = config
        self.local = threading.local()
        self.lock = threading.Lock()
        self.nonfinite: list[tuple[Path, str, str, int]] = []  # (file, set, view, count)
        self.clipped: list[tuple[Path, str]] = []               # (file, view)

    def smile(self, feature_set: str):
        """This thread's ``Smile`` for ``feature_set`` (functionals level)."""
        smiles = self.local.__dict__.setdefault("smiles", {})
        if feature_set not in smiles:
            members = self.opensmile.FeatureSet
            smiles[feature_set] = self.opensmile.Smile(
                feature_set=getattr(members, OPENSMILE_SETS[feature_set]),
                feature_level=self.opensmile.FeatureLevel.Functionals)
        return smiles[feature_set]

    def num_features(self, feature_set: str) -> int:
        """``D`` of ``feature_set`` as this opensmile version defines it."""
        return int(self.smile(feature_set).num_features)

    def rows(self, path: Path,
             pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], np.ndarray]:
        """Decode ``path`` once -> ``{(set, view): (D,) float32}`` for every pair."""
        audio = load_audio(path, sr=self.config.sample_rate, channels=self.config.channels,
                           max_duration_s=self.config.max_duration_s)
        views = binaural_views(audio, side_scale=self.config.side_scale, path=path)
        signals = {v: self._int16_safe(views[v], path, v) for _, v in pairs}
        return {(s, v): self._row(path, s, v, signals[v]) for s, v in pairs}

    def _int16_safe(self, signal: np.ndarray, path: Path, view: str) -> np.ndarray:
        """``signal`` clipped to [-1, 32767/32768] (openSMILE's int16 range), noted if needed."""
        clipped = np.clip(signal, -1.0, _INT16_MAX).astype(np.float32, copy=False)
        if not np.array_equal(clipped, signal):
            with self.lock:
                self.clipped.append((path, view))
        return clipped

    def _row(self, path: Path, feature_set: str, view: str, signal: np.ndarray) -> np.ndarray:
        """One functional vector ``(D,)`` float32, non-finite values set to 0."""
        try:
            frame = self.smile(feature_set).process_signal(signal, self.config.sample_rate)
        except Exception as exc:  # the C library or pandas glue failed on this signal
            raise AudioError(path, f"openSMILE {feature_set} failed on the {view} view: "
                                   f"{type(exc).__name__}: {exc}") from exc
        row = np.array(frame, dtype=np.float64).reshape(-1)  # a writable copy
        bad = ~np.isfinite(row)
        if bad.any():
            with self.lock:
                self.nonfinite.append((path, feature_set, view, int(bad.sum())))
            row[bad] = 0.0
        return row.astype(np.float32)

    def warn(self) -> None:
        """At most one warning per kind of adjustment made during the call."""
        if self.nonfinite:
            path, fs, view, count = self.nonfinite[0]
            warnings.warn(f"openSMILE returned non-finite functionals for "
                          f"{len(self.nonfinite)} (file, set, view) item(s), set to 0 "
                          f"(first: {path}, {fs}, {view}: {count} values)",
                          OpenSmileWarning, stacklevel=3)
        if self.clipped:
            path, view = self.clipped[0]
            warnings.warn(f"{len(self.clipped)} view signal(s) exceeded full scale and were "
                          f"clipped to openSMILE's 16-bit range (first: {path}, {view})",
                          OpenSmileWarning, stacklevel=3)


# ------------------------------------------------------------------------------ many files


def opensmile_baselines(paths: Sequence[str | Path], feature_sets: Sequence[str] = ("is10",),
                        views: Sequence[str] = (DEFAULT_VIEW,),
                        config: FrontEndConfig = FrontEndConfig(),
                        cache_dir: str | Path | None = None, progress: bool = True,
                        workers: int = DEFAULT_WORKERS) -> dict[str, np.ndarray]:
    """Functionals of every file for every (set, view): ``{run name: (N, D) float32}``.

    Run names as :func:`baseline_run_name`; rows in the order of ``paths``. Each file is
    decoded once for all sets and views; cached rows are not recomputed. ``workers``:
    threads over files (1: serial). Raises :class:`BinserError` without opensmile,
    :class:`ConfigError` for unknown sets or views, :class:`AudioError` for bad files.
    """
    pairs = _check_pairs(feature_sets, views)
    workers = _check_workers(workers)
    paths = [Path(p) for p in paths]
    opensmile = require_opensmile()
    extractor = _Extractor(opensmile, config)
    dims = {s: extractor.num_features(s) for s, _ in pairs}
    table = _Table(paths, pairs, dims, config, opensmile.__version__, cache_dir)
    _compute(table, extractor, workers, progress)
    extractor.warn()
    return {baseline_run_name(s, v): table.matrix(s, v) for s, v in pairs}


def opensmile_features(paths: Sequence[str | Path], feature_set: str = "is10",
                       view: str = DEFAULT_VIEW, config: FrontEndConfig = FrontEndConfig(),
                       cache_dir: str | Path | None = None, progress: bool = True,
                       workers: int = DEFAULT_WORKERS) -> np.ndarray:
    """openSMILE ``feature_set`` functionals of ``view`` of each file: ``(N, D)`` float32.

    ``feature_set``: a key of :data:`OPENSMILE_SETS` (D = 1582, 6373, 88); ``view``: one of
    ``left right mid side mono``. See :func:`opensmile_baselines` for the rest.
    """
    out = opensmile_baselines(paths, (feature_set,), (view,), config, cache_dir, progress,
                              workers)
    return out[baseline_run_name(feature_set, view)]


def opensmile_speed(paths: Sequence[str | Path], feature_set: str = "compare2016",
                    view: str = DEFAULT_VIEW, config: FrontEndConfig = FrontEndConfig(),
                    workers: int = DEFAULT_WORKERS) -> float:
    """Seconds of audio per wall second (x real time) of decode + view + ``feature_set``.

    No cache; the audio duration is that of the decoded files at ``config.sample_rate``.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ConfigError("opensmile_speed needs at least one file")
    require_opensmile()
    start = time.perf_counter()
    opensmile_features(paths, feature_set, view, config, None, False, workers)
    wall = time.perf_counter() - start
    seconds = sum(float(audio_info(p).duration_s) for p in paths)
    return seconds / wall


class _Table:
    """Results of one call: rows per (path index, set, view), filled from cache or compute."""

    def __init__(self, paths: list[Path], pairs: list[tuple[str, str]], dims: dict[str, int],
                 config: FrontEndConfig, version: str, cache_dir: str | Path | None):
        self.paths = paths
        self.pairs = pairs
        self.dims = dims
        self.config = config
        self.version = version
        self.cache = FeatureCache(cache_dir) if cache_dir is not None else None
        self.rows: dict[str, np.ndarray] = {}          # cache key -> (D,)
        self.keys: list[dict[tuple[str, str], str]] = []  # per path: (set, view) -> key
        self.n_cached = 0
        self.n_computed = 0

    def plan(self) -> dict[Path, tuple[list[str], list[tuple[str, str]]]]:
        """Hash every file, read what the cache has; ``{file: (keys, pairs)}`` still to do.

        A key wanted twice (the same content under two paths) is computed once.
        """
        digests: dict[Path, str] = {}
        todo: dict[Path, tuple[list[str], list[tuple[str, str]]]] = {}
        scheduled: set[str] = set()
        for path in self.paths:
            resolved = path.resolve()
            if resolved not in digests:
                digests[resolved] = file_sha256(path)
            keys = {(s, v): opensmile_cache_key(digests[resolved], v, s, self.config,
                                                self.version)
                    for s, v in self.pairs}
            self.keys.append(keys)
            for pair, key in keys.items():
                if key in scheduled or key in self.rows or self._from_cache(key, pair[0]):
                    continue
                scheduled.add(key)
                wanted = todo.setdefault(path, ([], []))
                wanted[0].append(key)
                wanted[1].append(pair)
        return todo

    def _from_cache(self, key: str, feature_set: str) -> bool:
        """Load ``key`` from the cache into ``rows``; False if absent or corrupt."""
        if self.cache is None:
            return False
        array = self.cache.get(key, self.dims[feature_set])
        if array is None or array.shape[0] != 1:
            return False
        self.rows[key] = array[0]
        self.n_cached += 1
        return True

    def store(self, keys: list[str], rows: list[np.ndarray]) -> None:
        """Keep computed rows and write them to the cache."""
        for key, row in zip(keys, rows):
            if self.cache is not None:
                self.cache.put(key, row[np.newaxis, :])
            self.rows[key] = row
            self.n_computed += 1

    def matrix(self, feature_set: str, view: str) -> np.ndarray:
        """``(N, D)`` float32 rows of one (set, view) in path order."""
        dim = self.dims[feature_set]
        out = np.empty((len(self.paths), dim), np.float32)
        for i, keys in enumerate(self.keys):
            out[i] = self.rows[keys[(feature_set, view)]]
        return out


def _compute(table: _Table, extractor: _Extractor, workers: int, progress: bool) -> None:
    """Compute every missing row, ``workers`` files at a time, with a progress bar."""
    from .progress import bar as progress_bar

    todo = table.plan()
    names = ",".join(sorted({s for s, _ in table.pairs}))
    with progress_bar(total=len(todo), unit="file", desc=f"openSMILE {names}",
                      enabled=progress) as bar:
        if workers == 1 or len(todo) <= 1:
            for path, (keys, pairs) in todo.items():
                rows = extractor.rows(path, pairs)
                table.store(keys, [rows[p] for p in pairs])
                bar.update(1)
            return
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(extractor.rows, path, pairs): (keys, pairs)
                       for path, (keys, pairs) in todo.items()}
            try:
                for future in futures:  # in submission order
                    keys, pairs = futures[future]
                    rows = future.result()
                    table.store(keys, [rows[p] for p in pairs])
                    bar.update(1)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)  # drop queued files, then raise
                raise


def _check_pairs(feature_sets: Sequence[str], views: Sequence[str]) -> list[tuple[str, str]]:
    """Every (set, view) combination, validated and without duplicates."""
    sets = list(dict.fromkeys(check_feature_set(s) for s in feature_sets))
    chosen = list(dict.fromkeys(check_view(v) for v in views))
    if not sets or not chosen:
        raise ConfigError("need at least one openSMILE feature set and one view")
    return [(s, v) for s in sets for v in chosen]


def _check_workers(workers: int) -> int:
    """A positive integer thread count."""
    return check_int_range(workers, "workers", 1, integral_floats=True)
