"""`binser experiment`: the paper's study on any corpus, with honest (nested) fusion weights.

Steps: corpus -> segment features per view (cached) -> pooling (stateless, per utterance) ->
per fold: a linear SVM per view x pooling, nested fusion weights from training-fold
out-of-fold scores, feature fusion -> pooled metrics -> ``results.json`` (docs/METHOD.md
section 10; the contract is checked by :mod:`binser.results`).

Nothing is fitted on a test fold: scaling, C and calibration live inside
:class:`~binser.classifier.ViewClassifier`, fitted on the training fold; fusion weights for
``nested`` come from out-of-fold scores of the training speakers. The ``oracle`` fusion (the
paper's choice of weights on the test data) is reported too, named as such.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from . import __version__
from .backbones import (DEFAULT_CNN, DEFAULT_ENCODER, is_encoder,  # noqa: F401 (re-exported)
                        load_backbone, resolve_backbone)
from .cache import FeatureCache, file_sha256, update_with_array
from .classifier import ViewClassifier, concat_features
from .config import FrontEndConfig
from .corpora import Corpus, corpus as load_corpus
from .errors import ConfigError
from .evaluation import (folds as make_folds, interval_note, metrics, small_sample_warnings,
                         speaker_independence, ua_ci_with_method)
from .fusion import FOUR_VIEWS, FUSIONS, PROSODY, PROSODY_FUSION, fuse, select_weights
from .layer_choice import best_layer, greedy_layer_set, set_name, stacked
from .pooling import POOLINGS, make_pooling
from .normalisation import coverage_warning, speaker_normalise
from .preflight import check_on_error
from .runnames import NORM_PREFIX, RunName, run_order
from .startup import start_corpus
from .validation import check_choice, check_choices, check_int_range
from .views import VIEWS, all_views, feature_views, signal_views

MODES = ("frozen", "finetune")
FINETUNE_NESTED_CAVEAT = (
    "fine-tuned mode: the fold's networks were fine-tuned on all its training speakers, so "
    "the out-of-fold scores that choose C and the nested fusion weights come from networks "
    "that saw those utterances (optimistic for the weights; the test speakers are never seen)")
FINETUNE_PRESETS = ("paper", "cpu")
BASELINES = ("opensmile",)
CLASSIFIERS = ("svm", "head")   # head: binser.head's runs beside the SVM's (head:<name>)
LAYER_POLICIES = ("auto", "auto-set")   # --layer values chosen per fold by inner CV
PROSODY_VIEW = "mid"   # the channel whose openSMILE functionals are the prosody view


@dataclass(frozen=True)
class ExperimentSettings:
    """Everything that defines one experiment (saved into ``results.json``)."""

    dataset: str
    root: str
    protocol: str = "loso"
    backbone: str = "efficientnet_lite0"     # or whisper-<size>; the CLI's "auto" resolves it
    input_size: int | None = None
    weights: str | None = None
    layer: int | str | None = None            # encoders: hidden-state index or "auto" (= None)
    allow_random: bool = False
    mode: str = "frozen"
    views: tuple[str, ...] = VIEWS
    poolings: tuple[str, ...] = POOLINGS
    blocks: int = 2
    levels: int | None = None
    pool_abs: bool = False                    # block pooling of |X|, |dX| (eqs. 6-7 as printed)
    fusion_pooling: str | None = None         # None: see resolved_fusion_pooling()
    fusion_search: str = "staged"             # the paper's two stages, or "joint"
    speaker_norm: bool = False                # add runs on speaker-normalised features
    ci_method: str = "speaker-bootstrap"
    manifest: str | None = None
    cache_dir: str | None = None
    batch_size: int = 64
    num_threads: int | None = None            # torch CPU threads (None: torch's default)
    n_boot: int = 1000
    seed: int = 0
    synthetic: bool = False
    on_error: str = "fail"                    # bad input files: "fail" before any work, or "skip"
    baselines: tuple[str, ...] = ()           # "opensmile": functionals + the same linear SVM
    baseline_sets: tuple[str, ...] = ("is10", "compare2016", "egemaps")
    baseline_views: tuple[str, ...] = ("left",)   # the paper's practice: the left channel
    finetune_preset: str = "paper"            # mode finetune: "paper" (SGD, 300 epochs) or "cpu"
    finetune_epochs: int | None = None        # override the preset's maximum epochs
    solver: str = "exact"                     # SVM solver: exact (binser.svm) or liblinear (reference)
    executor: str = "local"                   # where features and folds run: local or ray
    ray_address: str | None = None            # --executor ray: cluster address (None: local)
    augment: tuple[str, ...] = ()             # training-row augmentation (binser.augment): swap
    prosody: str | None = None                # openSMILE set of the prosody view (mid channel)
    classifier: str = "svm"                   # "head": also the trained head on the frames
    frontend: FrontEndConfig = field(default_factory=FrontEndConfig)

    def validate(self) -> None:
        from .backbones import ALL_BACKBONES

        check_choice(self.backbone, ALL_BACKBONES, "backbone")
        check_choice(self.mode, MODES, "mode")
        check_choices(self.views, all_views(), "view", allow_empty=True)
        if self.mode == "finetune" and feature_views(self.views):
            raise ConfigError(f"--mode finetune fine-tunes a network per view; feature view(s) "
                              f"{', '.join(feature_views(self.views))} have none")
        check_choices(self.poolings, POOLINGS, "pooling", allow_empty=True)
        check_choices(self.baselines, BASELINES, "baseline", allow_empty=True)
        check_choices(self.poolings, POOLINGS, "pooling", option="--poolings")
        if self.fusion_pooling is not None and self.fusion_pooling not in self.poolings:
            raise ConfigError(f"--fusion-pooling {self.fusion_pooling} is not among the poolings "
                              f"run (--poolings {','.join(self.poolings)}): add it to "
                              f"--poolings or fuse one of those")
        from .evaluation import CI_METHODS
        from .fusion import SEARCHES

        check_choice(self.fusion_search, SEARCHES, "fusion search")
        check_choice(self.ci_method, CI_METHODS, "interval method")
        check_int_range(self.n_boot, "--n-boot", 1, integral_floats=True)
        if is_encoder(self.backbone):
            if self.mode != "frozen":
                raise ConfigError(f"{self.backbone}: only mode frozen is available for speech "
                                  "encoders")
            if not (self.layer is None or self.layer in LAYER_POLICIES
                    or (isinstance(self.layer, int) and self.layer >= 0)):
                raise ConfigError(f"--layer must be a non-negative integer, 'auto' or "
                                  f"'auto-set', got {self.layer!r}")
        elif self.layer is not None:
            raise ConfigError(f"--layer applies to speech encoders (whisper-*), not to "
                              f"{self.backbone}")
        if self.prosody is not None:
            from .baselines import check_feature_set, require_opensmile

            check_feature_set(self.prosody)
            require_opensmile()
            if set(FOUR_VIEWS.split("+")) - set(self.views):
                raise ConfigError(f"--prosody joins the four-view fusion as its last stage: "
                                  f"--views must hold {FOUR_VIEWS.replace('+', ',')}")
        check_choice(self.classifier, CLASSIFIERS, "classifier")
        if self.classifier == "head":
            if not is_encoder(self.backbone) or not isinstance(self.resolved_layer(), int):
                raise ConfigError("--classifier head trains on one encoder layer's frames: "
                                  "use a speech encoder (whisper-*) with a layer index "
                                  "(--layer N; whisper-base's default, 3, is one)")
            if self.speaker_norm or self.augment:
                raise ConfigError("--classifier head does not take --speaker-norm or "
                                  "--augment (the head sees raw frames)")
        check_choice(self.finetune_preset, FINETUNE_PRESETS, "fine-tuning preset")
        from .classifier import SOLVERS

        check_choice(self.solver, SOLVERS, "solver")
        check_on_error(self.on_error)
        from .executors import check_executor

        check_executor(self.executor, self.ray_address)
        from .augment import check_augment

        check_augment(self.augment, self.views, self.mode, self.baselines)
        self._validate_numbers_and_paths()

    def _validate_numbers_and_paths(self) -> None:
        """Every number and path, up front (before any file is decoded), in the CLI's words."""
        from .evaluation import parse_protocol

        parse_protocol(self.protocol)

        check_int_range(self.batch_size, "--batch-size", 1, 65536)
        check_int_range(self.num_threads, "--threads", 1, 1024, optional=True)
        check_int_range(self.blocks, "--blocks", 1, 64)
        check_int_range(self.levels, "--levels", 1, 64, optional=True)
        check_int_range(self.finetune_epochs, "--epochs", 1, 100000, optional=True)
        check_int_range(self.seed, "--seed", 0, 2 ** 32 - 1)
        if not is_encoder(self.backbone):
            from .backbones.imagenet import MIN_INPUT_SIZE

            check_int_range(self.input_size, "--input-size",
                            MIN_INPUT_SIZE.get(self.backbone, 32), 1024, optional=True)
        elif self.input_size is not None:
            raise ConfigError(f"--input-size applies to image CNNs, not to {self.backbone}")
        if self.weights is not None and str(self.weights) != "random":
            path = Path(self.weights)
            if not path.exists():
                raise ConfigError(f"--weights {path}: no such file or folder")
            allowed = ((".safetensors", ".pt", ".bin") if is_encoder(self.backbone)
                       else (".pth", ".pt", ".safetensors", ".bin"))
            if path.is_file() and path.suffix.lower() not in allowed:
                raise ConfigError(f"--weights {path}: not a weights file for {self.backbone} "
                                  f"(expected {', '.join(allowed)}"
                                  f"{' or a Hugging Face folder' if is_encoder(self.backbone) else ''})")
            if path.is_dir() and not is_encoder(self.backbone):
                raise ConfigError(f"--weights {path}: a folder; {self.backbone} takes one "
                                  f"{'/'.join(allowed)} file")
        if self.cache_dir is not None:
            from .outputs import check_folder

            check_folder(self.cache_dir, "--cache-dir")

    def resolved_layer(self) -> int | str | None:
        """Encoders: the layer (or policy) given, else the backbone's default
        (:func:`binser.defaults.default_encoder_layer`: 3 for whisper-base, chosen by nested
        inner CV on the training speakers; ``"auto"`` for the other encoders). None for
        image CNNs."""
        if not is_encoder(self.backbone):
            return None
        if self.layer is None:
            from .defaults import default_encoder_layer

            return default_encoder_layer(self.backbone)
        return self.layer

    def prosody_key(self) -> tuple[str, str] | None:
        """The prosody view's features key (``("opensmile", "<set>-mid")``; its run is the
        functionals alone, ``opensmile/<set>-mid``), or None without ``--prosody``."""
        if self.prosody is None:
            return None
        from .baselines import baseline_run_name

        return tuple(baseline_run_name(self.prosody, PROSODY_VIEW).split("/", 1))

    def resolved_fusion_pooling(self) -> str:
        """The pooling whose scores are fused: ``fusion_pooling`` when given (it must be
        among ``poolings``); else the backbone's default (``stats`` for speech encoders, the
        paper's ``block-max`` for image CNNs) when it is run, else the first of ``poolings``:
        an option the user never set cannot stop a run."""
        if self.fusion_pooling is not None:
            return self.fusion_pooling
        default = "stats" if is_encoder(self.backbone) else "block-max"
        if default in self.poolings or not self.poolings:
            return default
        return self.poolings[0]

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "frontend"}
        out["views"] = list(self.views)
        out["poolings"] = list(self.poolings)
        for key in ("baselines", "baseline_sets", "baseline_views", "augment"):
            out[key] = list(getattr(self, key))
        out["frontend"] = self.frontend.to_dict()
        return out


@dataclass
class RunPredictions:
    """Pooled test predictions of one run, plus what each fold chose."""

    name: str
    predicted: np.ndarray                 # (N,) class indices, -1 where not tested
    extra: dict[str, Any] = field(default_factory=dict)
    fold_extra: list[dict[str, Any]] = field(default_factory=list)


def _progress(message: str, enabled: bool) -> None:
    if enabled:
        from .progress import say

        say(f"[binser] {message}", file=sys.stdout)   # above the bars, never glued to one


def encoder_layers(settings: ExperimentSettings, backbone) -> tuple[int, ...]:
    """Encoder layers to compute: the one asked for, the backbone's default, or every layer
    (``--layer auto``)."""
    if settings.resolved_layer() in LAYER_POLICIES:
        return tuple(range(backbone.n_layers + 1))
    layer = int(settings.resolved_layer())
    if not 0 <= layer <= backbone.n_layers:
        raise ConfigError(f"{backbone.name} has layers 0..{backbone.n_layers}; --layer {layer} "
                          "is not one of them")
    return (layer,)


def extract_features(corpus: Corpus, settings: ExperimentSettings, progress: bool = True,
                     backbone=None):
    """Segment (CNN) or frame (encoder) features per view for every utterance.

    Returns ``({layer: {view: [(n_i, d), ...]}}, backbone)``; image CNNs have the single
    layer key ``None``. With ``--layer auto`` every layer is computed and cached in one pass
    but only one layer at a time is held: iterate over :func:`iter_layer_features` instead.
    """
    backbone = backbone or load_backbone(settings)
    return dict(iter_layer_features(corpus, settings, backbone, progress)), backbone


def iter_layer_features(corpus: Corpus, settings: ExperimentSettings, backbone,
                        progress: bool = True, executor=None):
    """Yield ``(layer, {view: [(n_i, d), ...]})``, one layer at a time (see above).
    ``executor`` (default: ``settings.executor``) decides where missing features are
    computed (:mod:`binser.executors`); what is computed never depends on it."""
    from .executors import executor_for

    executor = executor or executor_for(settings)
    paths = [u.path for u in corpus]
    signals = signal_views(settings.views)   # the backbone's; feature views: their own frames
    own = _feature_view_frames(paths, settings, progress)

    def joined(features: dict) -> dict:
        return {v: (features[v] if v in features else own[v]) for v in settings.views}

    if not is_encoder(settings.backbone):
        from .features import SegmentFeatureExtractor

        features = {}
        if signals:
            extractor = SegmentFeatureExtractor(backbone, config=settings.frontend,
                                                views=signals, cache_dir=settings.cache_dir,
                                                batch_size=settings.batch_size,
                                                num_threads=settings.num_threads,
                                                progress=progress)
            executor.prepare_features(extractor, paths, progress)
            features = extractor.extract(paths)
        yield None, joined(features)
        return
    from .features import FrameFeatureExtractor

    layers = encoder_layers(settings, backbone)
    if not signals:                          # feature views only: the same frames per layer
        for layer in layers:
            yield layer, joined({})
        return
    extractor = FrameFeatureExtractor(backbone, config=settings.frontend, views=signals,
                                      layers=layers, cache_dir=settings.cache_dir,
                                      num_threads=settings.num_threads, progress=progress)
    executor.prepare_features(extractor, paths, progress)
    if settings.cache_dir is None:          # nothing to reload from: hold every layer
        for layer, features in extractor.extract(paths).items():
            yield layer, joined(features)
        return
    for layer in layers:                     # the first call encodes and caches every layer
        yield layer, joined(extractor.extract(paths, keep=[layer])[layer])


def _feature_view_frames(paths: Sequence[str | Path], settings: ExperimentSettings,
                         progress: bool) -> dict[str, list[np.ndarray]]:
    """Frames of the feature views among ``settings.views`` (``spatial``: computed from
    each file's two channels, no backbone; :class:`~binser.features.FeatureViewExtractor`)."""
    if not feature_views(settings.views):
        return {}
    from .features import FeatureViewExtractor

    return FeatureViewExtractor(settings.frontend, feature_views(settings.views),
                                settings.cache_dir, progress).extract(paths)


def finetune_settings(settings: ExperimentSettings):
    """The :class:`~binser.finetune.FinetuneSettings` of an experiment in mode ``finetune``."""
    from .finetune import FinetuneSettings

    changes: dict[str, Any] = {"seed": settings.seed, "num_threads": settings.num_threads}
    if settings.finetune_epochs is not None:
        changes["max_epochs"] = settings.finetune_epochs
    if settings.input_size is not None:
        changes["input_size"] = settings.input_size
    if settings.cache_dir is not None:
        changes["checkpoint_dir"] = str(Path(settings.cache_dir) / "finetuned")
    if settings.finetune_preset == "cpu":
        return FinetuneSettings.cpu_reduced(**changes)
    return FinetuneSettings(**changes)


def finetuned_features(corpus: Corpus, y: np.ndarray, fold_list, settings: ExperimentSettings,
                       n_classes: int, progress: bool = True):
    """Mode ``finetune``: per fold, one network per view fine-tuned on the fold's training
    speakers only; returns (features per fold, fine-tuning records per fold, the base
    backbone)."""
    from .backbones import get_backbone
    from .finetune import finetuned_fold_features

    ft = finetune_settings(settings)
    base = get_backbone(settings.backbone, weights=settings.weights, input_size=ft.input_size,
                        allow_random=settings.allow_random)
    features, records = finetuned_fold_features(
        [u.path for u in corpus], y, [u.speaker for u in corpus], fold_list, settings.backbone,
        settings.weights, settings.views, settings.frontend, ft, cache_dir=settings.cache_dir,
        batch_size=settings.batch_size, progress=progress, allow_random=settings.allow_random,
        n_classes=n_classes)
    return features, records, base


def pool_features(features: dict[str, list[np.ndarray]], settings: ExperimentSettings
                  ) -> tuple[dict[tuple[str, str], np.ndarray], dict[str, np.ndarray]]:
    """Utterance-level features for every (view, pooling), and ``{view: silent rows}``.

    Pooling is per utterance and has no fitted state, so doing it once for all folds leaks
    nothing. A view without signal in every utterance is left out of both dicts.
    """
    from .pooling import PoolingInputError, pool_utterances

    pooled, silent = {}, {}
    for view in settings.views:
        for name in settings.poolings:
            pooling = make_pooling(name, blocks=settings.blocks, levels=settings.levels,
                                   absolute=settings.pool_abs)
            try:
                pooled[(view, name)], silent[view] = pool_utterances(pooling, features[view])
            except PoolingInputError:
                break                          # no signal anywhere: an absent view
    return pooled, silent


POOLED_FORMAT = "binser-pooled-features-v1"


def _pooled_layer_key(settings: ExperimentSettings) -> str:
    """The layers pooled, as the cache key says them: ``auto`` and ``auto-set`` pool the
    same (every layer)."""
    layer = settings.resolved_layer()
    return "auto" if layer in LAYER_POLICIES else str(layer)


def _pooled_keys(corpus: Corpus, settings: ExperimentSettings, backbone) -> Callable[[str], str]:
    """Key maker for the pooled-feature cache of one study: hashes every file's content and
    everything pooling depends on (backbone identity, front end, views, layers, poolings)."""
    digest = hashlib.sha256()
    spec = [POOLED_FORMAT, backbone.name, backbone.weights_id,
            getattr(backbone, "input_size", None), settings.frontend.digest(),
            list(settings.views), _pooled_layer_key(settings), list(settings.poolings),
            settings.blocks, settings.levels, settings.pool_abs]
    if feature_views(settings.views):     # only then, so other studies keep their keys
        from .features import FEATURE_VIEW_FORMAT

        spec.append(FEATURE_VIEW_FORMAT)
    digest.update(json.dumps(spec, default=str).encode())
    for u in corpus:
        digest.update(file_sha256(u.path).encode())

    def key(part: str) -> str:
        entry = digest.copy()
        entry.update(part.encode())
        return entry.hexdigest()[:40]
    return key


def cached_study_features(corpus: Corpus, settings: ExperimentSettings, backbone,
                          progress: bool = True, executor=None) -> PooledFeatures:
    """:func:`pooled_study_features`, cached whole under ``<cache>/pooled``: a warm rerun
    reads the utterance-level matrices (MBs) instead of every frame (GBs for ``--layer
    auto``). Entries are written before a completion marker, so a half-written set is never
    used."""
    layers_of = lambda: pooled_study_features(  # noqa: E731
        iter_layer_features(corpus, settings, backbone, progress, executor), settings)
    if settings.cache_dir is None:
        return layers_of()
    store = FeatureCache(Path(settings.cache_dir) / "pooled")
    key = _pooled_keys(corpus, settings, backbone)
    layers = (encoder_layers(settings, backbone) if is_encoder(settings.backbone) else (None,))
    if store.has(key("complete")):
        by_layer: dict[Any, dict] = {layer: {} for layer in layers}
        silent, n_rows = {}, {}
        for view in settings.views:
            mask = store.get(key(f"silent|{view}"), 1)
            rows = store.get(key(f"rows|{view}"), 1)
            if mask is None or rows is None:
                break
            n_rows[view] = [int(r) for r in rows[:, 0]]
            if mask.all():
                continue                       # absent view: no matrices
            silent[view] = mask[:, 0] > 0
            for layer in layers:
                for name in settings.poolings:
                    X = store.get(key(f"{layer}|{view}|{name}"))
                    if X is None or len(X) != len(corpus):
                        break
                    by_layer[layer][(view, name)] = X
        complete = all(len(m) == len(silent) * len(settings.poolings)
                       for m in by_layer.values()) and len(n_rows) == len(settings.views)
        if complete:
            _progress("utterance-level features from the cache", progress)
            absent = tuple(v for v in settings.views if v not in silent)
            return PooledFeatures(by_layer, silent, absent, n_rows)
    pooled = layers_of()
    for view in settings.views:
        mask = pooled.silent.get(view, np.ones(len(corpus), dtype=bool))
        store.put(key(f"silent|{view}"), mask.astype(np.float32)[:, None])
        store.put(key(f"rows|{view}"), np.asarray(pooled.n_rows[view], np.float32)[:, None])
    for layer, mats in pooled.by_layer.items():
        for (view, name), X in mats.items():
            store.put(key(f"{layer}|{view}|{name}"), X)
    store.put(key("complete"), np.ones((1, 1), np.float32))
    return pooled


def pooled_study_features(layer_features, settings: ExperimentSettings) -> PooledFeatures:
    """:class:`PooledFeatures` from ``(layer, {view: frames})`` pairs (pooled one layer at a
    time, so frames of one layer only are held)."""
    by_layer, silent, n_rows = {}, {}, {}
    for layer, features in layer_features:
        by_layer[layer], silent = pool_features(features, settings)
        n_rows = n_rows or {v: [len(f) for f in features[v]] for v in settings.views}
        del features   # hold one layer's frames at a time
    absent = tuple(v for v in settings.views if v not in silent)
    return PooledFeatures(by_layer, silent, absent, n_rows)


def baseline_features(corpus: Corpus, settings: ExperimentSettings, progress: bool = True
                      ) -> dict[tuple[str, str], np.ndarray]:
    """Utterance-level baseline features keyed like pooled features: ("opensmile", "is10")
    becomes the run ``opensmile/is10``. Classified with the same SVM and folds. With
    ``--prosody SET`` also the prosody view's functionals (:meth:`ExperimentSettings.
    prosody_key`: ``SET`` of the mid channel), whose run is the functionals alone."""
    from .baselines import opensmile_baselines

    asked = []
    if "opensmile" in settings.baselines:
        asked.append((settings.baseline_sets, settings.baseline_views))
    if settings.prosody is not None:
        asked.append(((settings.prosody,), (PROSODY_VIEW,)))
    out = {}
    for sets, views in asked:
        matrices = opensmile_baselines([u.path for u in corpus], sets, views, settings.frontend,
                                       cache_dir=settings.cache_dir, progress=progress)
        out.update({tuple(name.split("/", 1)): X for name, X in matrices.items()})
    return out


def full_columns(proba: np.ndarray, classes_seen: np.ndarray, n_classes: int) -> np.ndarray:
    """Scatter probabilities over the classes a fold saw into all ``n_classes`` columns (a
    class absent from a training fold gets 0)."""
    full = np.zeros((len(proba), n_classes))
    full[:, np.asarray(classes_seen, dtype=int)] = proba
    return full


class FoldResultCache:
    """Classifier outputs of one outer fold: computed once (one inner-CV search per feature
    matrix, shared by the layer choice, the run, and the nested fusion scores) and cached on
    disk (float64, bit-exact reruns).

    An entry's key hashes everything its value depends on: the feature matrix, the rows
    without signal, the labels, the speakers, the fold's train/test indices, the
    classifier's parameters (solver included) and seed and the source of
    :mod:`binser.classifier` and :mod:`binser.svm`; so a rerun with the same inputs skips the
    SVMs and any change (another solver, edited solver code) recomputes. Entries live under
    ``<cache_dir>/classifier``; ``cache_dir=None`` disables the disk cache. Within the fold,
    each matrix's search (:meth:`ViewClassifier.search`) is kept in memory: the layer choice
    needs only its inner-CV score, the run adds the final fit, and the nested fusion scores
    reuse its per-inner-fold fits (:meth:`ViewClassifier.oof_proba`).

    Rows flagged in ``silent`` (a view without signal in that file) are left out of training
    and get uniform probabilities ``1/K`` at test time: in a score fusion they shift every
    class equally, so the other views decide.
    """

    FORMAT = "binser-fold-results-v3"

    def __init__(self, cache_dir: str | Path | None, y: np.ndarray, groups: np.ndarray,
                 train: np.ndarray, test: np.ndarray, seed: int, n_classes: int,
                 solver: str = "exact"):
        from . import classifier, svm

        self.y, self.groups, self.train, self.test = y, groups, train, test
        self.seed, self.n_classes, self.solver = seed, n_classes, solver
        self.store = (FeatureCache(Path(cache_dir) / "classifier", dtype=np.float64)
                      if cache_dir is not None else None)
        self._searched: dict[str, ViewClassifier] = {}
        self._digests: dict[int, tuple[np.ndarray, bytes]] = {}
        self._context = hashlib.sha256()
        params = self._new_classifier().get_params()
        self._context.update(json.dumps([self.FORMAT, file_sha256(classifier.__file__),
                                         file_sha256(svm.__file__),
                                         repr(sorted(params.items())), n_classes]).encode())
        for array in (y, np.asarray(groups).astype(str), train, test):
            update_with_array(self._context, array)

    def _new_classifier(self) -> ViewClassifier:
        return ViewClassifier(random_state=self.seed, solver=self.solver)

    def _key(self, what: str, X: np.ndarray, silent: np.ndarray) -> str:
        digest = self._context.copy()
        digest.update(what.encode())
        digest.update(self._array_digest(X))
        update_with_array(digest, silent)
        return digest.hexdigest()[:40]

    def _array_digest(self, X: np.ndarray) -> bytes:
        """sha256 of a feature matrix, computed once per matrix and fold (each matrix is
        looked up several times: search, inner score, final fit, nested scores); the matrix
        is held with its digest, so its ``id`` is not reused while cached."""
        held = self._digests.get(id(X))
        if held is None or held[0] is not X:
            digest = hashlib.sha256()
            update_with_array(digest, X)
            held = self._digests[id(X)] = (X, digest.digest())
        return held[1]

    def _stored(self, what: str, X: np.ndarray, silent: np.ndarray, rows: int
                ) -> np.ndarray | None:
        if self.store is None:
            return None
        value = self.store.get(self._key(what, X, silent), self.n_classes)
        return value if value is not None and len(value) == rows else None

    def _cached(self, what: str, X: np.ndarray, silent: np.ndarray, rows: int,
                compute: Callable[[], np.ndarray]) -> np.ndarray:
        value = self._stored(what, X, silent, rows)
        if value is None:
            value = compute()
            if self.store is not None:
                self.store.put(self._key(what, X, silent), value)
        return value

    def _silent(self, X: np.ndarray, silent: np.ndarray | None) -> np.ndarray:
        return np.zeros(len(X), dtype=bool) if silent is None else np.asarray(silent, bool)

    def _used(self, silent: np.ndarray) -> np.ndarray:
        """The training rows with signal."""
        return self.train[~silent[self.train]]

    def searched(self, X: np.ndarray, silent: np.ndarray) -> ViewClassifier:
        """The inner-CV search on the training rows with signal (kept for this fold)."""
        key = self._key("search", X, silent)
        if key not in self._searched:
            used = self._used(silent)
            self._searched[key] = self._new_classifier().search(
                X[used], self.y[used], self.groups[used])
        return self._searched[key]

    def inner_score(self, X: np.ndarray, silent: np.ndarray | None = None) -> tuple[float, float]:
        """C and inner-CV score (mean UA over the inner folds at C, training speakers only)
        of the classifier :meth:`fit_predict` would fit, without its final fit."""
        silent = self._silent(X, silent)
        done = self._stored("fit_predict", X, silent, len(self.test) + 1)
        if done is not None:
            return float(done[0, 0]), float(done[0, 1])

        def compute() -> np.ndarray:
            clf = self.searched(X, silent)
            first = np.zeros((1, self.n_classes))
            first[0, :2] = clf.C_, clf.best_score_
            return first

        value = self._cached("inner_score", X, silent, 1, compute)
        return float(value[0, 0]), float(value[0, 1])

    def fit_predict(self, X: np.ndarray, silent: np.ndarray | None = None
                    ) -> tuple[np.ndarray, float, float]:
        """Test probabilities ``(n_test, K)`` of a classifier fitted on the training fold's
        rows with signal, its C and its inner-CV score (mean UA over the inner folds at C,
        training speakers only)."""
        silent = self._silent(X, silent)

        def compute() -> np.ndarray:
            used = self._used(silent)
            clf = self.searched(X, silent).refit(X[used], self.y[used])
            proba = full_columns(clf.predict_proba(X[self.test]), clf.classes_, self.n_classes)
            proba[silent[self.test]] = 1.0 / self.n_classes
            first = np.zeros((1, self.n_classes))
            first[0, :2] = clf.C_, clf.best_score_   # row 0: C and inner-CV score
            return np.vstack([first, proba])

        value = self._cached("fit_predict", X, silent, len(self.test) + 1, compute)
        return value[1:], float(value[0, 0]), float(value[0, 1])

    def oof_proba(self, X: np.ndarray, silent: np.ndarray | None = None) -> np.ndarray:
        """Out-of-fold probabilities ``(n_train, K)`` over the training speakers (nested
        fusion weights); rows without signal get ``1/K``."""
        silent = self._silent(X, silent)
        train = self.train

        def compute() -> np.ndarray:
            out = np.full((len(train), self.n_classes), 1.0 / self.n_classes)
            rows = ~silent[train]
            used = train[rows]
            proba = self.searched(X, silent).oof_proba(X[used], self.y[used], self.groups[used])
            out[rows] = full_columns(proba, np.unique(self.y[used]), self.n_classes)
            return out

        return self._cached("oof_proba", X, silent, len(train), compute)


@dataclass
class PooledFeatures:
    """Utterance-level features of a study, ready for the classifiers.

    ``by_layer``: ``{layer: {(view, pooling): (N, D)}}`` (image CNNs: the single key
    ``None``; ``--layer auto``: every candidate layer). ``silent``: ``{view: (N,) bool}``,
    utterances where the view carries no signal. ``absent``: views without signal in every
    utterance (no runs, left out of the fusions). Baseline features (openSMILE) sit under
    every layer with their own keys, e.g. ``("opensmile", "is10")``.
    """

    by_layer: dict[Any, dict[tuple[str, str], np.ndarray]]
    silent: dict[str, np.ndarray]
    absent: tuple[str, ...] = ()
    n_rows: dict[str, list[int]] = field(default_factory=dict)   # segments/frames per file

    @property
    def auto(self) -> bool:
        return len(self.by_layer) > 1

    def layer_features(self, layer: Any = None) -> dict[tuple[str, str], np.ndarray]:
        """The features of one layer (default: the only one)."""
        return self.by_layer[next(iter(self.by_layer)) if layer is None else layer]

    def matrix(self, key: tuple[str, str], layer: Any = None) -> np.ndarray:
        """``key``'s matrix at one layer, or at a set of layers (tuple or list) side by side
        (:func:`binser.layer_choice.stacked`)."""
        if isinstance(layer, (tuple, list)):
            return stacked({one: self.by_layer[one][key] for one in layer}, layer)
        return self.layer_features(layer)[key]

    def with_rows(self, transform: Callable[[tuple[str, str], np.ndarray], np.ndarray]
                  ) -> "PooledFeatures":
        """A copy with every matrix replaced by ``transform(key, X)``."""
        return PooledFeatures({layer: {k: transform(k, X) for k, X in mats.items()}
                               for layer, mats in self.by_layer.items()},
                              self.silent, self.absent, self.n_rows)


def as_pooled(pooled: PooledFeatures | Mapping[tuple[str, str], np.ndarray]) -> PooledFeatures:
    """Plain ``{(view, pooling): X}`` dicts (every row with signal) as :class:`PooledFeatures`."""
    return pooled if isinstance(pooled, PooledFeatures) else PooledFeatures({None: dict(pooled)}, {})


def fusions_for(views: Sequence[str], absent: Sequence[str] = ()) -> dict[str, tuple[str, ...]]:
    """The score/feature fusions whose views were all computed, with absent views (no signal
    in the whole corpus) left out; a fusion left with one view is dropped."""
    out = {}
    for name, vs in FUSIONS.items():
        if all(v in views for v in vs):
            present = tuple(v for v in vs if v not in absent)
            if len(present) >= 2:
                out[name] = present
    return out


def choose_layers(pooled: PooledFeatures, cache: FoldResultCache, views: Sequence[str],
                  pooling: str, sets: bool = False) -> dict[str, Any]:
    """``--layer auto``: per view, the layer whose classifier at ``pooling`` has the best
    inner-CV UA on the training speakers (:func:`binser.layer_choice.best_layer`). With
    ``sets`` (``--layer auto-set``): the greedy set of up to 3 layers
    (:func:`binser.layer_choice.greedy_layer_set`; a tuple, or one layer when no set beats
    it). Also returns the inner-CV score of every single layer under ``"scores"`` and, with
    ``sets``, of every larger set scored under ``"set_scores"`` (keys like ``"2+3"``)."""
    chosen: dict[str, Any] = {"scores": {}, "set_scores": {}}
    for view in views:
        def score(candidate: tuple[int, ...]) -> float:
            X = pooled.matrix((view, pooling), candidate if len(candidate) > 1 else candidate[0])
            return cache.inner_score(X, pooled.silent.get(view))[1]

        if sets:
            best, scored = greedy_layer_set(score, sorted(pooled.by_layer))
            chosen[view] = best if len(best) > 1 else best[0]
            chosen["set_scores"][view] = {set_name(c): v for c, v in scored.items() if len(c) > 1}
            singles = {c[0]: v for c, v in scored.items() if len(c) == 1}
        else:
            singles = {layer: score((layer,)) for layer in sorted(pooled.by_layer)}
            chosen[view] = best_layer(singles)
        chosen["scores"][view] = {str(k): v for k, v in singles.items()}
    return chosen


def evaluate_fold(pooled: PooledFeatures, y: np.ndarray, groups: np.ndarray,
                  train: np.ndarray, test: np.ndarray, settings: ExperimentSettings,
                  n_classes: int) -> tuple[dict[str, tuple[np.ndarray, dict]], dict[str, np.ndarray]]:
    """One outer fold: every view x pooling, the best view chosen on the training speakers,
    nested score fusion, feature fusion.

    Everything here is fitted on ``train`` only. Returns run name -> (predicted class indices
    of ``test``, what the fold chose), and the test probabilities of the fusion views.
    """
    from threadpoolctl import threadpool_limits

    pooled = as_pooled(pooled)
    out: dict[str, tuple[np.ndarray, dict]] = {}
    test_proba: dict[str, np.ndarray] = {}
    fusion_pooling = settings.resolved_fusion_pooling()
    views = [v for v in settings.views if v not in pooled.absent]
    fusion_views = [v for v in views if any(v in members for members in FUSIONS.values())]
    cache = FoldResultCache(settings.cache_dir, y, groups, train, test, settings.seed, n_classes,
                            settings.solver)
    no_rows = np.zeros(len(y), dtype=bool)
    with threadpool_limits(1):    # liblinear is serial; folds run in parallel instead
        layer_of: dict[str, Any] = {}
        if pooled.auto:
            layer_of = choose_layers(pooled, cache, views, fusion_pooling,
                                     sets=settings.resolved_layer() == "auto-set")
        features = {key: pooled.matrix(key, layer_of[key[0]]) if key[0] in layer_of else X
                    for key, X in pooled.layer_features().items()}
        silent = {key: pooled.silent.get(key[0], no_rows) for key in features}
        inner: dict[str, float] = {}
        for (view, pooling), X in features.items():
            if view in pooled.absent:
                continue
            proba, C, score = cache.fit_predict(X, silent[(view, pooling)])
            chosen: dict[str, Any] = {"C": C}
            if view in layer_of:
                chosen.update(layer=layer_of[view], layer_scores=layer_of["scores"][view])
                if view in layer_of["set_scores"]:
                    chosen["layer_set_scores"] = layer_of["set_scores"][view]
            out[f"{view}/{pooling}"] = (proba.argmax(axis=1), chosen)
            if view in settings.views:
                inner[f"{view}/{pooling}"] = score
            if pooling == fusion_pooling and view in fusion_views:
                test_proba[view] = proba
        if inner:   # the honest single-view comparator: chosen on the training speakers
            best = max(inner, key=lambda name: (inner[name], -list(inner).index(name)))
            out["best-view"] = (out[best][0], {"choice": best, "inner_ua": inner[best]})
        # Nested fusion weights: out-of-fold scores over the training speakers only.
        oof = {view: cache.oof_proba(features[(view, fusion_pooling)], pooled.silent.get(view))
               for view in fusion_views}
        uniform = np.full((len(train), n_classes), 1.0 / n_classes)
        for name, present in fusions_for(settings.views, pooled.absent).items():
            scores = {v: oof.get(v, uniform) for v in FUSIONS[name]}
            weights, _ = select_weights(scores, y[train], name, list(range(n_classes)),
                                        search=settings.fusion_search)
            test_scores = {v: test_proba.get(v, np.full((len(test), n_classes), 1.0 / n_classes))
                           for v in FUSIONS[name]}
            fused = fuse(test_scores, name, weights)
            out[f"score-fusion/{name}"] = (fused.argmax(axis=1), {"weights": weights})
            Xcat = concat_features({v: features[(v, fusion_pooling)] for v in present}, present)
            proba, C, _ = cache.fit_predict(Xcat)
            out[f"feature-fusion/{name}"] = (proba.argmax(axis=1), {"C": C})
        if settings.prosody_key() in features and FOUR_VIEWS in fusions_for(settings.views):
            out.update(prosody_stage(features[settings.prosody_key()], cache, oof, test_proba,
                                     y[train], n_classes, settings.fusion_search))
    return out, test_proba


def prosody_stage(X: np.ndarray, cache: FoldResultCache, oof: Mapping[str, np.ndarray],
                  test_proba: Mapping[str, np.ndarray], y_train: np.ndarray, n_classes: int,
                  search: str = "staged") -> dict[str, tuple[np.ndarray, dict]]:
    """``--prosody``: the four-view fusion grown by the prosody view (openSMILE functionals
    ``X``) as its last stage, ``s_+ = eta*s + (1-eta)*s_prosody`` (docs/METHOD.md M20), every
    weight (``alpha, beta, gamma`` and ``eta``) chosen on the training speakers' out-of-fold
    scores like the other fusions'. Returns the run ``score-fusion/left+right+mid+side+
    prosody``."""
    names = FUSIONS[PROSODY_FUSION]
    uniform = np.full((len(y_train), n_classes), 1.0 / n_classes)
    scores = {v: oof.get(v, uniform) for v in names if v != PROSODY}
    scores[PROSODY] = cache.oof_proba(X)
    weights, _ = select_weights(scores, y_train, PROSODY_FUSION, list(range(n_classes)),
                                search=search)
    test_p = cache.fit_predict(X)[0]
    test = {v: test_proba.get(v, np.full_like(test_p, 1.0 / n_classes))
            for v in names if v != PROSODY}
    test[PROSODY] = test_p
    fused = fuse(test, PROSODY_FUSION, weights)
    return {f"score-fusion/{PROSODY_FUSION}": (fused.argmax(axis=1), {"weights": weights})}


def default_jobs(n_folds: int) -> int:
    """Folds evaluated at once: one per core, at most one per fold."""
    return max(1, min(os.cpu_count() or 1, n_folds))


def run_folds(pooled: PooledFeatures | Sequence[PooledFeatures], y: np.ndarray, groups: np.ndarray,
              fold_list: Sequence[tuple[np.ndarray, np.ndarray]], settings: ExperimentSettings,
              n_classes: int, progress: bool = True, n_jobs: int | None = None,
              executor=None) -> tuple[dict[str, RunPredictions], dict[str, np.ndarray]]:
    """Cross-validate every single view x pooling, nested score fusion and feature fusion,
    folds in parallel processes.

    ``pooled``: utterance features for all folds (frozen mode), or one per fold (fine-tuned
    mode: each fold's networks saw only its training speakers).
    Returns the runs (keyed by run name) and, for the oracle fusion, the pooled test
    probabilities of each view at the fusion pooling. ``executor`` (default:
    ``settings.executor``): where the folds run (joblib processes or Ray tasks).
    """
    from .executors import executor_for
    from .progress import bar as progress_bar

    executor = executor or executor_for(settings)
    n = len(y)
    runs: dict[str, RunPredictions] = {}
    test_proba: dict[str, np.ndarray] = {}
    jobs = n_jobs or default_jobs(len(fold_list))
    per_fold = as_per_fold(pooled, len(fold_list))
    outcomes = executor.map_folds(
        evaluate_fold, [(fold_pooled, y, groups, train, test, settings, n_classes)
                        for fold_pooled, (train, test) in zip(per_fold, fold_list)], jobs)
    bar = progress_bar(total=len(fold_list), desc="folds", unit="fold", enabled=progress)
    for (train, test), (fold_runs, fold_proba) in zip(fold_list, outcomes):
        for name, (predicted, chosen) in fold_runs.items():
            r = runs.setdefault(name, RunPredictions(name, np.full(n, -1, dtype=int)))
            r.predicted[test] = predicted
            r.fold_extra.append(chosen)
            if name.startswith("score-fusion/"):
                r.extra["selection"] = "nested"
        for view, proba in fold_proba.items():
            test_proba.setdefault(view, np.zeros((n, n_classes)))[test] = proba
        bar.update()
    bar.close()
    return runs, test_proba


def oracle_fusions(test_proba: dict[str, np.ndarray], y: np.ndarray, n_classes: int,
                   tested: np.ndarray, fusions: Mapping[str, tuple[str, ...]],
                   search: str = "staged") -> dict[str, RunPredictions]:
    """The paper's weight choice: the grid point that scores best on the pooled test data
    (views absent from the corpus get uniform scores, so their weight has no effect)."""
    out = {}
    uniform = np.full((int(tested.sum()), n_classes), 1.0 / n_classes)
    for name in fusions:
        scores = {v: test_proba[v][tested] if v in test_proba else uniform
                  for v in FUSIONS[name]}
        weights, _ = select_weights(scores, y[tested], name, list(range(n_classes)),
                                    search=search)
        predicted = np.full(len(y), -1, dtype=int)
        predicted[tested] = fuse(scores, name, weights).argmax(axis=1)
        run_name = str(RunName.score_fusion(name, oracle=True))
        out[run_name] = RunPredictions(
            run_name, predicted,
            extra={"selection": "oracle", "weights": weights})
    return out


def summarise_run(r: RunPredictions, y: np.ndarray, classes: list[str],
                  fold_list: Sequence[tuple[np.ndarray, np.ndarray]], n_boot: int,
                  seed: int, speakers: np.ndarray | None = None,
                  ci_method: str = "speaker-bootstrap") -> dict[str, Any]:
    """One entry of ``results.json``'s ``runs``: pooled metrics, per-fold UA, the UA
    interval (``ci_method``; ``ua_ci95_method`` says which was used), per-fold choices."""
    tested = r.predicted >= 0
    names = np.asarray(classes)
    y_true, y_pred = names[y[tested]], names[r.predicted[tested]]
    pooled = metrics(y_true, y_pred, classes)
    per_fold = [metrics(names[y[test]], names[r.predicted[test]], classes)
                for _, test in fold_list]
    fold_ua = [m["ua"] for m in per_fold]
    groups = None if speakers is None else speakers[tested]
    lo, hi, used = ua_ci_with_method(y_true, y_pred, classes, groups=groups,
                                     method=ci_method if groups is not None
                                     else "utterance-bootstrap", n_boot=n_boot, seed=seed)
    out: dict[str, Any] = {"name": r.name, "ua": pooled["ua"], "wa": pooled["wa"],
                           "macro_f1": pooled["macro_f1"], "fold_ua": fold_ua,
                           "ua_ci95": [lo, hi], "ua_ci95_method": used,
                           "confusion": pooled["confusion"],
                           # the paper's BAUM-1s practice: the mean of the folds' own metrics
                           "fold_mean": {k: float(np.mean([m[k] for m in per_fold]))
                                         for k in ("ua", "wa", "macro_f1")}}
    out.update(r.extra)
    for key, field_name in (("weights", "weights"), ("C", "fold_C"), ("layer", "fold_layer"),
                            ("choice", "fold_choice"), ("layer_scores", "fold_layer_scores"),
                            ("layer_set_scores", "fold_layer_set_scores")):
        if r.fold_extra and key in r.fold_extra[0]:
            out[field_name] = [f[key] for f in r.fold_extra]   # one entry per fold
    return out


def comparison_pairs(run_names: Sequence[str], prefix: str = "",
                     fusion_pooling: str = "stats") -> list[tuple[str, str, str]]:
    """The paper's claims on the corpus at hand, as ``(claim, run a, run b)`` meaning "a beats
    b", for the runs present: four-view fusion vs the best view chosen on the training
    speakers and vs left alone, binaural (left+right) fusion vs left alone, block vs global
    pooling per view, deep features vs each openSMILE baseline, and with ``--prosody`` the
    fusion + prosody vs the four-view fusion and vs the functionals alone; ``prefix`` names
    the speaker-normalised family."""
    names = set(run_names)
    four, lr = f"{prefix}score-fusion/left+right+mid+side", f"{prefix}score-fusion/left+right"
    pairs = []
    left_fp = f"{prefix}left/{fusion_pooling}" if f"{prefix}left/{fusion_pooling}" in names \
        else None   # left alone with the pooling whose scores are fused
    if four in names and f"{prefix}best-view" in names:
        pairs.append(("four-view fusion beats the best single view", four, f"{prefix}best-view"))
    if four in names and left_fp:
        pairs.append(("four-view fusion beats left alone", four, left_fp))
    if lr in names and left_fp:
        pairs.append(("binaural (left+right) fusion beats left alone", lr, left_fp))
    for view in VIEWS:
        for kind in ("max", "avg"):
            a, b = f"{prefix}{view}/block-{kind}", f"{prefix}{view}/global-{kind}"
            if a in names and b in names:
                pairs.append((f"block {kind} pooling beats global {kind} pooling ({view})", a, b))
    for base in sorted(n for n in names if n.startswith(f"{prefix}opensmile/")):
        if four in names:
            pairs.append((f"deep four-view fusion beats {base[len(prefix):]}", four, base))
    for view in VIEWS:   # --classifier head: the trained head against the SVM
        a, b = f"{prefix}head:{view}/{fusion_pooling}", f"{prefix}{view}/{fusion_pooling}"
        if a in names and b in names:
            pairs.append((f"the trained head beats the SVM ({view})", a, b))
    if f"{prefix}head:score-fusion/left+right+mid+side" in names and four in names:
        pairs.append(("the heads' four-view fusion beats the SVMs'",
                      f"{prefix}head:score-fusion/left+right+mid+side", four))
    with_prosody = f"{prefix}score-fusion/{PROSODY_FUSION}"
    if with_prosody in names and four in names:
        pairs.append(("fusion + prosody beats the four-view fusion", with_prosody, four))
        for base in sorted(n for n in names if n.startswith(f"{prefix}opensmile/")
                           and n.endswith(f"-{PROSODY_VIEW}")):
            pairs.append((f"fusion + prosody beats {base[len(prefix):]} alone", with_prosody,
                          base))
    tag = f"[{prefix.rstrip(':')}] " if prefix else ""
    return [(tag + claim, a, b) for claim, a, b in pairs]


def compare_runs(runs: Mapping[str, RunPredictions], y: np.ndarray, classes: list[str],
                 speakers: np.ndarray, n_boot: int, seed: int,
                 fusion_pooling: str = "stats") -> list[dict[str, Any]]:
    """Paired speaker-level comparisons (``results.json``'s ``comparisons``) of the claims
    of :func:`comparison_pairs`, plus speaker-normalised vs plain for every run that has
    both; Holm-corrected across all of them, verdicts on the adjusted p
    (:func:`binser.evaluation.adjust_claims`). Claims on speaker-normalised runs carry
    ``caveat`` (:data:`binser.normalisation.TRANSDUCTIVE_CAVEAT`)."""
    from .evaluation import adjust_claims, paired_comparison
    from .normalisation import TRANSDUCTIVE_CAVEAT

    names = np.asarray(classes)
    pairs = (comparison_pairs(list(runs), "", fusion_pooling)
             + comparison_pairs(list(runs), NORM_PREFIX, fusion_pooling))
    for name in ("score-fusion/left+right+mid+side", "best-view"):
        if name in runs and NORM_PREFIX + name in runs:
            pairs.append((f"speaker normalisation improves {name}", NORM_PREFIX + name, name))
    out = []
    for claim, a, b in pairs:
        tested = (runs[a].predicted >= 0) & (runs[b].predicted >= 0)
        if len(np.unique(speakers[tested])) < 2:   # a speaker-level test needs >= 2 speakers
            continue
        result = paired_comparison(names[y[tested]], names[runs[a].predicted[tested]],
                                   names[runs[b].predicted[tested]], speakers[tested], classes,
                                   n_boot=n_boot, seed=seed)
        entry = {"claim": claim, "a": a, "b": b, **result}
        if a.startswith(NORM_PREFIX) or b.startswith(NORM_PREFIX):
            entry["caveat"] = TRANSDUCTIVE_CAVEAT
        out.append(entry)
    return adjust_claims(out)


def write_json_atomic(data: Any, path: Path) -> None:
    """Write JSON to ``path`` through a temporary file and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as handle:
        json.dump(data, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_predictions_csv(corpus: Corpus, fold_of: np.ndarray, runs: dict[str, RunPredictions],
                          classes: list[str], path: Path) -> None:
    """Per-utterance predictions of every run (one column per run), for error analysis."""
    import csv

    names = sorted(runs, key=run_order)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")   # concurrent runs: own temp
    with open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "speaker", "label", "fold", *names])
        for i, u in enumerate(corpus):
            writer.writerow([str(u.path), u.speaker, u.label, int(fold_of[i]),
                             *[classes[runs[n].predicted[i]] if runs[n].predicted[i] >= 0
                               else "" for n in names]])
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------
# The study as stages: prepare -> features -> evaluate -> assemble -> write.
# Each stage takes what the ones before it returned; run_experiment chains them.
# --------------------------------------------------------------------------------------

STAGES = ("prepare", "features", "evaluate", "assemble", "write")
# Expected relative cost of each stage, for the overall line's time left (binser.progress).
STAGE_WEIGHTS = (1, 6, 4, 1, 1)


@dataclass
class Study:
    """What :func:`prepare` returns: the screened corpus, its labels and its folds.

    ``corpus``: the usable utterances (N); ``skipped``: ``[(path, reason)]`` left out;
    ``classes``: the K class names; ``y``: ``(N,)`` class indices into ``classes``;
    ``speakers``: ``(N,)`` speaker ids; ``folds``: ``[(train, test)]`` index arrays;
    ``independence``: :func:`binser.evaluation.speaker_independence` of the folds;
    ``scene_values``: per-file scene parameters (the ``scenes`` corpus only, else None).
    """

    corpus: Corpus
    skipped: list[tuple[Path, str]]
    classes: list[str]
    y: np.ndarray
    speakers: np.ndarray
    folds: list[tuple[np.ndarray, np.ndarray]]
    independence: dict[str, Any]
    scene_values: Any = None

    @property
    def fold_of(self) -> np.ndarray:
        """``(N,)`` the outer fold testing each utterance (-1: never tested)."""
        fold_of = np.full(len(self.y), -1)
        for k, (_, test) in enumerate(self.folds):
            fold_of[test] = k
        return fold_of

    @property
    def tested(self) -> np.ndarray:
        """``(N,)`` True where an outer fold tests the utterance."""
        return self.fold_of >= 0


@dataclass
class StudyFeatures:
    """What :func:`compute_features` returns.

    ``per_fold``: one :class:`PooledFeatures` per outer fold, the features that fold's
    classifiers see (frozen mode: the same object for every fold, computed once; fine-tuned
    mode: each fold's own, from networks that saw its training speakers only); baseline
    matrices sit among them. ``backbone``: the backbone (fine-tuned mode: the base network).
    ``finetune_records``: per fold what fine-tuning did (None when frozen). ``copies``: the
    pooled features of the jittered copy of every file (``--augment jitter``, else None).
    """

    per_fold: list[PooledFeatures]
    backbone: Any
    finetune_records: list[dict[str, Any]] | None = None
    copies: PooledFeatures | None = None
    frames: dict[str, list[np.ndarray]] | None = None   # --classifier head: {view: frames}

    @property
    def first(self) -> PooledFeatures:
        """The first fold's features: the silent and absent views and row counts reported
        (frozen mode: every fold's)."""
        return self.per_fold[0]


def as_per_fold(pooled: PooledFeatures | Mapping | Sequence, n_folds: int
                ) -> list[PooledFeatures]:
    """One :class:`PooledFeatures` per fold: a list as given, or one set (or plain
    ``{(view, pooling): X}`` dict) shared by all ``n_folds`` folds (the same object)."""
    if isinstance(pooled, (list, tuple)):
        return [as_pooled(p) for p in pooled]
    return [as_pooled(pooled)] * n_folds


def distinct(per_fold: Sequence[Any]) -> list[Any]:
    """The distinct objects of ``per_fold`` (by identity), in order of first appearance."""
    return list({id(p): p for p in per_fold}.values())


def distinct_map(per_fold: Sequence[Any], transform: Callable[[Any], Any]) -> list[Any]:
    """``[transform(p) for p in per_fold]`` with ``transform`` called once per distinct
    object: a frozen study's shared features are transformed once and stay shared."""
    done = {id(p): transform(p) for p in distinct(per_fold)}
    return [done[id(p)] for p in per_fold]


@contextmanager
def _timed(timing: dict[str, float], key: str):
    """Add the seconds spent in the block to ``timing[key]``."""
    t = time.perf_counter()
    try:
        yield
    finally:
        timing[key] = timing.get(key, 0.0) + time.perf_counter() - t


def prepare(settings: ExperimentSettings, corpus_loader: Callable[..., Corpus] = load_corpus,
            progress: bool = True) -> Study:
    """Stage 1: load and screen the corpus (:func:`binser.startup.start_corpus`), label
    indices, speakers, the outer folds of ``settings.protocol``; say what was found (a
    speaker-dependent protocol and, with ``--speaker-norm``, thin label coverage are warned
    about even when quiet). ``settings`` must be validated. Reads every file once (the
    screening); nothing expensive."""
    started = start_corpus(settings, corpus_loader, progress, purpose="a study")
    corpus = started.corpus
    scene_values = None
    if corpus.name == "scenes":   # each file's scene parameters, checked up front
        from .conditions import scene_conditions

        scene_values = scene_conditions(corpus)
    classes = started.classes
    y = np.array([classes.index(u.label) for u in corpus])
    speakers = np.array([u.speaker for u in corpus])
    fold_list = make_folds(list(speakers), settings.protocol, [u.split for u in corpus])
    study = Study(corpus, started.skipped, classes, y, speakers, fold_list,
                  speaker_independence(fold_list, speakers), scene_values)
    _say_study(study, settings, progress)
    return study


def _say_study(study: Study, settings: ExperimentSettings, progress: bool) -> None:
    """The one-line summary of a prepared study, and its warnings."""
    n_folds, independent = len(study.folds), study.independence["independent"]
    _progress(f"{settings.dataset}: {len(study.corpus)} utterances, {len(study.classes)} "
              f"classes, {len(study.corpus.speakers)} speakers, protocol {settings.protocol} "
              f"({n_folds} fold{'s' if n_folds != 1 else ''}, "
              f"{'speaker-independent' if independent else 'SPEAKER-DEPENDENT'})", progress)
    if not independent:
        _progress(f"warning: {study.independence['reason']}", True)
    for line in _small_sample(study):   # few speakers, folds missing a class
        _progress(f"warning: {line}", True)
    if study.skipped:
        _progress(f"{len(study.skipped)} file(s) not used (see 'skipped' in results.json)",
                  progress)
    if settings.speaker_norm:
        warning = coverage_warning([u.label for u in study.corpus], study.speakers)
        if warning:
            _progress(f"warning: {warning}", True)


def compute_features(study: Study, settings: ExperimentSettings, progress: bool = True,
                     timing: dict[str, float] | None = None) -> StudyFeatures:
    """Stage 2: utterance-level features per outer fold (:class:`StudyFeatures`).

    Frozen mode: the backbone's features of every file, pooled and cached once
    (:func:`cached_study_features`) and shared by all folds; fine-tuned mode: each fold's
    networks (:func:`finetuned_features`). Then the baselines (``--baselines``, added to
    every fold's matrices) and the jittered copies (``--augment jitter``). ``timing`` gets
    ``features_s`` (every encoding, jittered copies included) and ``baselines_s``."""
    timing = {} if timing is None else timing
    executor = None
    with _timed(timing, "features_s"):
        if settings.mode == "finetune":
            fold_features, records, backbone = finetuned_features(
                study.corpus, study.y, study.folds, settings, len(study.classes), progress)
            per_fold = [pooled_study_features([(None, f)], settings) for f in fold_features]
        else:
            from .executors import executor_for

            records, backbone, executor = None, load_backbone(settings), executor_for(settings)
            shared = cached_study_features(study.corpus, settings, backbone, progress, executor)
            per_fold = [shared] * len(study.folds)
    features = StudyFeatures(per_fold, backbone, records)
    if features.first.absent:
        _progress(f"no signal in any file for view(s) {', '.join(features.first.absent)}: no "
                  "runs, left out of the fusions (n/a in the report)", progress)
    if settings.baselines or settings.prosody:
        with _timed(timing, "baselines_s"):
            extra = baseline_features(study.corpus, settings, progress)
            for pooled in distinct(per_fold):
                for mats in pooled.by_layer.values():
                    mats.update(extra)
    if settings.classifier == "head":   # the layer's frames, from the frame cache
        with _timed(timing, "features_s"):
            (_, features.frames), = iter_layer_features(study.corpus, settings, backbone,
                                                        progress, executor)
    if "jitter" in settings.augment:   # jittered copies of every file, encoded like the files
        with _timed(timing, "features_s"):
            features.copies = jittered_features(study.corpus, settings, backbone, progress,
                                                executor)
    return features


def evaluate(study: Study, features: StudyFeatures, settings: ExperimentSettings,
             progress: bool = True) -> dict[str, RunPredictions]:
    """Stage 3: every run, keyed by run name (:mod:`binser.runnames`).

    Per outer fold (:func:`run_folds`, augmented training rows with ``--augment``): each view
    x pooling, ``best-view``, nested score fusions, feature fusions; then the oracle score
    fusions on the pooled test scores. With ``--speaker-norm`` the same again on
    speaker-normalised features (runs named ``speaker-norm:...``, ``speaker_norm`` True).
    Fine-tuned mode: nested score fusions carry :data:`FINETUNE_NESTED_CAVEAT`."""
    fusions = fusions_for(settings.views, features.first.absent)
    runs = _evaluate_family(study, features.per_fold, features.copies, fusions, settings,
                            progress)
    if settings.speaker_norm:
        def normalised(pooled: PooledFeatures) -> PooledFeatures:
            return speaker_normalised(pooled, study.speakers)

        copies = None if features.copies is None else normalised(features.copies)
        norm_runs = _evaluate_family(study, distinct_map(features.per_fold, normalised),
                                     copies, fusions, settings, progress)
        for name, run in norm_runs.items():
            run.name = str(RunName.parse(name).normalised())
            run.extra["speaker_norm"] = True
            runs[run.name] = run
    if features.frames is not None:
        runs.update(head_runs(study, features, settings, progress))
    if settings.mode == "finetune":   # say what the nested weights saw
        for name, run in runs.items():
            parsed = RunName.parse(name)
            if parsed.kind == "score-fusion" and not parsed.oracle:
                run.extra["caveat"] = FINETUNE_NESTED_CAVEAT
    return runs


def head_runs(study: Study, features: StudyFeatures, settings: ExperimentSettings,
              progress: bool = True) -> dict[str, RunPredictions]:
    """``--classifier head``: per outer fold and view, :class:`binser.head.
    AttentiveStatsHead` fitted on the layer's frames of the training rows with signal
    (nothing else), its calibrated test probabilities as the run ``head:<view>/stats``
    (rows without signal: ``1/K``); then each score fusion of the heads' probabilities with
    nested weights chosen on the training speakers' held-out member probabilities
    (:meth:`~binser.head.AttentiveStatsHead.heldout_oof_proba`), ``head:score-fusion/<rule>``.
    Runs in this process, one head at a time (torch threads as the head sets them)."""
    from .head import AttentiveStatsHead
    from .progress import bar as progress_bar

    first, y, n_classes = features.first, study.y, len(study.classes)
    views = [v for v in settings.views if v not in first.absent]
    uniform = 1.0 / n_classes
    runs: dict[str, RunPredictions] = {}

    def record(name: str, test: np.ndarray, proba: np.ndarray, chosen: dict) -> None:
        run = runs.setdefault(name, RunPredictions(name, np.full(len(y), -1, dtype=int)))
        run.predicted[test] = proba.argmax(axis=1)
        run.fold_extra.append(chosen)

    heads = progress_bar(total=len(study.folds) * len(views), desc="trained heads",
                         unit="head", enabled=progress)
    for train, test in study.folds:
        test_proba, oof = {}, {}
        for view in views:
            has_signal = ~first.silent.get(view, np.zeros(len(y), dtype=bool))
            used, scored = train[has_signal[train]], test[has_signal[test]]
            head = AttentiveStatsHead(random_state=settings.seed).fit(
                [features.frames[view][i] for i in used], y[used], study.speakers[used])
            proba = np.full((len(test), n_classes), uniform)
            proba[has_signal[test]] = full_columns(
                head.predict_proba([features.frames[view][i] for i in scored]),
                head.classes_, n_classes)
            held = np.full((len(train), n_classes), uniform)
            held[has_signal[train]] = full_columns(
                np.nan_to_num(head.heldout_oof_proba(), nan=uniform), head.classes_, n_classes)
            test_proba[view], oof[view] = proba, held
            record(f"head:{view}/stats", test, proba, {"inner_ua": head.best_score_})
            heads.update()
        for name in fusions_for(settings.views, first.absent):
            members = FUSIONS[name]
            weights, _ = select_weights(
                {v: oof.get(v, np.full((len(train), n_classes), uniform)) for v in members},
                y[train], name, list(range(n_classes)), search=settings.fusion_search)
            fused = fuse({v: test_proba.get(v, np.full((len(test), n_classes), uniform))
                          for v in members}, name, weights)
            record(f"head:score-fusion/{name}", test, fused, {"weights": weights})
    heads.close()
    for run in runs.values():
        run.extra["classifier"] = "head"
        if run.name.startswith("head:score-fusion/"):
            run.extra["selection"] = "nested"
    return runs


def _evaluate_family(study: Study, per_fold: list[PooledFeatures],
                     copies: PooledFeatures | None, fusions: Mapping[str, tuple[str, ...]],
                     settings: ExperimentSettings, progress: bool) -> dict[str, RunPredictions]:
    """The fold runs on ``per_fold`` plus the oracle fusions of their pooled test scores."""
    from .augment import run_folds_augmented   # run_folds itself without --augment

    runs, test_proba = run_folds_augmented(per_fold, study.y, study.speakers, study.folds,
                                           settings, len(study.classes), progress,
                                           copies=copies)
    runs.update(oracle_fusions(test_proba, study.y, len(study.classes), study.tested, fusions,
                               settings.fusion_search))
    return runs


def assemble(study: Study, features: StudyFeatures, runs: Mapping[str, RunPredictions],
             settings: ExperimentSettings, progress: bool = True) -> dict[str, Any]:
    """Stage 4: the ``results.json`` dictionary (the contract of :mod:`binser.results`),
    section by section: the study, the backbone, the features, the method, the runs and
    their comparisons, then the deployment variants (``--speaker-norm``) and the per-condition
    UA (``scenes`` corpus). ``timing`` is added by :func:`run_experiment`."""
    results: dict[str, Any] = {**study_section(study, settings),
                               **backbone_section(features.backbone, settings),
                               **features_section(study, features, settings),
                               **method_section(study, features, settings),
                               **runs_section(study, runs, settings)}
    if settings.speaker_norm:   # what a deployment without all recordings gets
        results["speaker_norm_deployment"] = _deployment(
            features.per_fold, study.y, study.speakers, study.folds, results, settings,
            progress)
        results["speaker_norm_online"] = _online(
            features.per_fold, study.y, study.speakers, study.folds, results, settings,
            progress)
    if study.scene_values is not None:   # UA per scene condition
        from .conditions import condition_results

        predicted = {name: runs[name].predicted for name in sorted(runs, key=run_order)}
        results["conditions"] = condition_results(
            study.scene_values, predicted, study.y, study.classes, study.speakers,
            study.folds, settings.n_boot, settings.seed, settings.resolved_fusion_pooling())
    return results


def study_section(study: Study, settings: ExperimentSettings) -> dict[str, Any]:
    """results.json: version, corpus, classes, counts, folds and speaker independence."""
    return {"binser_version": __version__,
            "dataset": settings.dataset,
            "synthetic": settings.synthetic,
            "protocol": settings.protocol,
            "classes": study.classes,
            "n_utterances": int(study.tested.sum()),
            "n_speakers": len(study.corpus.speakers),
            "n_folds": len(study.folds),
            "fold_test_speakers": [sorted(set(study.speakers[test])) for _, test in study.folds],
            "speaker_independent": study.independence["independent"],
            "speaker_independence": study.independence["reason"]}


def backbone_section(backbone, settings: ExperimentSettings) -> dict[str, Any]:
    """results.json: the backbone's identity, weights, layer and mode."""
    return {"backbone": backbone.name,
            "backbone_input_size": getattr(backbone, "input_size", None),
            "backbone_weights_id": backbone.weights_id,
            "backbone_weights_sha256": getattr(backbone, "weights_sha256", None),
            "layer": _layer_description(settings, backbone),
            "pretrained": bool(backbone.pretrained),
            "mode": settings.mode}


def features_section(study: Study, features: StudyFeatures, settings: ExperimentSettings
                     ) -> dict[str, Any]:
    """results.json: segments of the first view, silent, mono and absent views."""
    first = features.first
    return {"segments_per_view": int(sum(first.n_rows[settings.views[0]])),
            "silent_views": {v: int(m.sum()) for v, m in first.silent.items()},
            "mono_files": mono_files(study.corpus),
            "absent_views": list(first.absent)}


def _small_sample(study: Study) -> list[str]:
    """:func:`binser.evaluation.small_sample_warnings` of the study's folds."""
    return small_sample_warnings(study.folds, [u.label for u in study.corpus], study.speakers,
                                 study.classes)


def method_section(study: Study, features: StudyFeatures, settings: ExperimentSettings
                   ) -> dict[str, Any]:
    """results.json: fusion and interval choices, speaker normalisation, every setting,
    fine-tuning (mode finetune only) and the files left out."""
    out = {"fusion_pooling": settings.resolved_fusion_pooling(),
           "fusion_search": settings.fusion_search,
           "ci_method": settings.ci_method,
           "ci_note": interval_note(len(study.corpus.speakers)),   # None from 10 speakers on
           "small_sample_warnings": _small_sample(study),
           "speaker_norm": ("transductive, label-free: each speaker's features standardised "
                            "over that speaker's own utterances, test speakers included"
                            if settings.speaker_norm else False),
           "settings": settings.to_dict()}
    if features.finetune_records is not None:
        out["finetune"] = {"settings": finetune_settings(settings).to_dict(),
                           "folds": features.finetune_records}
    out["skipped"] = [{"path": str(p), "reason": why} for p, why in study.skipped]
    return out


def runs_section(study: Study, runs: Mapping[str, RunPredictions],
                 settings: ExperimentSettings) -> dict[str, Any]:
    """results.json: every run summarised (:func:`summarise_run`, in run order) and the
    paired comparisons of the paper's claims (:func:`compare_runs`)."""
    return {"runs": [summarise_run(runs[name], study.y, study.classes, study.folds,
                                   settings.n_boot, settings.seed, study.speakers,
                                   settings.ci_method) for name in sorted(runs, key=run_order)],
            "comparisons": compare_runs(runs, study.y, study.classes, study.speakers,
                                        settings.n_boot, settings.seed,
                                        settings.resolved_fusion_pooling())}


def write_outputs(target, results: Mapping[str, Any], study: Study, features: StudyFeatures,
                  runs: Mapping[str, RunPredictions], settings: ExperimentSettings,
                  report: bool = True, progress: bool = True) -> None:
    """Stage 5: ``results.json``, ``predictions.csv`` and (``report``) the report, written
    into a temporary sibling of ``target`` (:class:`binser.outputs.OutputFolder`) swapped in
    whole: one run's output, never a mix."""
    with target.staged() as stage:
        write_json_atomic(results, stage / "results.json")
        write_predictions_csv(study.corpus, study.fold_of, runs, study.classes,
                              stage / "predictions.csv")
        if report:
            from .report import write_report

            n_rows = features.first.n_rows[settings.views[0]]
            example = study.corpus[int(np.argmax(n_rows))]   # the longest file
            write_report(results, stage, example_path=example.path, config=settings.frontend,
                         progress=progress)
    _progress(f"results written to {target.path}", progress)


def run_experiment(settings: ExperimentSettings, out: str | Path | None = None,
                   progress: bool = True, report: bool = True,
                   corpus_loader: Callable[..., Corpus] = load_corpus,
                   keep: Sequence[str] = ()) -> dict[str, Any]:
    """Run the whole study; write ``results.json`` (and the report) to ``out`` if given.

    The stages, in order: :func:`prepare` -> :func:`compute_features` -> :func:`evaluate`
    -> :func:`assemble` -> :func:`write_outputs`. ``out`` is checked and locked before any
    work and replaced whole at the end (entries of the old folder named in ``keep`` are
    carried over, e.g. the demo's ``corpus``).

    Returns the results dictionary (the ``results.json`` contract, :mod:`binser.results`).
    """
    settings.validate()
    target = None
    if out is not None:   # checked and locked now; written whole at the end (binser.outputs)
        from .outputs import OutputFolder

        target = out if isinstance(out, OutputFolder) else OutputFolder(out, keep=keep)
    from .progress import StageTracker, grouped_warnings
    from .views import MonoInputWarning

    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    with StageTracker(STAGES, STAGE_WEIGHTS, enabled=progress) as stages:
        with grouped_warnings({MonoInputWarning: "results.json 'mono_files'"}):
            with stages.stage("prepare"):
                study = prepare(settings, corpus_loader, progress)
            with stages.stage("features"):
                features = compute_features(study, settings, progress, timing)
        with stages.stage("evaluate"), _timed(timing, "classifiers_s"):
            runs = evaluate(study, features, settings, progress)
        with stages.stage("assemble"):
            results = assemble(study, features, runs, settings, progress)
        timing["total_s"] = time.perf_counter() - t0
        results["timing"] = timing
        if target is not None:
            with stages.stage("write"):
                write_outputs(target, results, study, features, runs, settings, report,
                              progress)
    return results


def _deployment(pooled, y: np.ndarray, speakers: np.ndarray, fold_list, results: dict,
                settings: ExperimentSettings, progress: bool) -> dict[str, Any] | None:
    """:func:`binser.deployment.deployment_variants` of the largest speaker-normalised nested
    fusion of the run (None when there is none)."""
    from .deployment import deployment_variants

    runs = {r["name"]: r for r in results["runs"]}
    fusion = next((f for f in reversed(list(fusions_for(settings.views)))
                   if f"{NORM_PREFIX}score-fusion/{f}" in runs), None)
    if fusion is None:
        return None
    _progress(f"speaker normalisation as deployed (speaker-norm:score-fusion/{fusion})",
              progress)
    return deployment_variants(pooled, y, speakers, fold_list, runs, results["classes"],
                               fusion=fusion, fusion_pooling=settings.resolved_fusion_pooling(),
                               seed=settings.seed)


def _online(per_fold: Sequence[PooledFeatures], y: np.ndarray, speakers: np.ndarray,
            fold_list, results: dict, settings: ExperimentSettings, progress: bool
            ) -> dict[str, Any] | None:
    """:func:`binser.online.online_curve` of the largest speaker-normalised nested fusion of
    the run: each fold's layers (``fold_layer`` of its ``speaker-norm:<view>/<pooling>``
    runs) and nested weights, the test speakers' statistics from the utterances before
    (None when there is no such fusion)."""
    from .deployment import _fold_choice
    from .online import online_curve

    runs = {r["name"]: r for r in results["runs"]}
    fusion = next((f for f in reversed(list(fusions_for(settings.views)))
                   if f"{NORM_PREFIX}score-fusion/{f}" in runs), None)
    if fusion is None:
        return None
    _progress(f"online speaker normalisation (speaker-norm:score-fusion/{fusion})", progress)
    pooling = settings.resolved_fusion_pooling()
    weights = runs[f"{NORM_PREFIX}score-fusion/{fusion}"]["weights"]
    views = [v for v in FUSIONS[fusion] if v not in per_fold[0].absent]
    features, masks = [], {}
    for f, pooled in enumerate(per_fold):
        chosen = {}
        for view in views:
            layer = _fold_choice(runs, f"{NORM_PREFIX}{view}/{pooling}", "fold_layer", f)
            chosen[view] = pooled.matrix((view, pooling),
                                         tuple(layer) if isinstance(layer, list) else layer)
            masks[view] = ~pooled.silent.get(view, np.zeros(len(y), dtype=bool))
        features.append(chosen)
    uniform = 1.0 / len(results["classes"])

    def combine(scores: Mapping[str, np.ndarray], fold: int) -> np.ndarray:
        n_test = len(next(iter(scores.values())))
        full = {v: scores.get(v, np.full((n_test, len(results["classes"])), uniform))
                for v in FUSIONS[fusion]}
        return fuse(full, fusion, weights[fold])

    curve = online_curve(features, y, speakers, fold_list, mask=masks, seed=settings.seed,
                         combine=combine)
    return {"fusion": fusion, **curve}


def jittered_features(corpus: Corpus, settings: ExperimentSettings, backbone,
                      progress: bool = True, executor=None) -> PooledFeatures:
    """Pooled features of the jittered copy of every file (``--augment jitter``): copies kept
    under ``<cache>/augmented/jitter-<seed>``, or, without a cache, in a temporary folder
    removed once they are encoded."""
    from .augment import jittered_corpus

    def encode(folder: Path) -> PooledFeatures:
        copy_corpus = jittered_corpus(corpus, folder, settings.seed, progress,
                                      settings.frontend.channels)
        return cached_study_features(copy_corpus, settings, backbone, progress, executor)

    if settings.cache_dir is not None:
        return encode(Path(settings.cache_dir) / "augmented" / f"jitter-{settings.seed}")
    with tempfile.TemporaryDirectory(prefix="binser-augment-") as folder:
        return encode(Path(folder))


def mono_files(corpus: Corpus) -> list[str]:
    """Files of a corpus with one channel (L = R, a silent Side): flagged in results.json and
    the report, as ``scan`` flags them (headers only, no decoding)."""
    from .audio import audio_info

    return [str(u.path) for u in corpus if audio_info(u.path).channels == 1]


def _layer_description(settings: ExperimentSettings, backbone) -> Any:
    """``layer`` of results.json: the encoder layer used, "auto (per fold ...)", or None."""
    if not is_encoder(settings.backbone):
        return None
    if settings.resolved_layer() == "auto":
        return "auto (per outer fold and view, by inner CV on the training speakers)"
    if settings.resolved_layer() == "auto-set":
        return ("auto-set (per outer fold and view, up to 3 layers side by side, chosen by "
                "greedy inner CV on the training speakers)")
    return encoder_layers(settings, backbone)[0]


def speaker_normalised(pooled: PooledFeatures, speakers: np.ndarray) -> PooledFeatures:
    """Every utterance-level matrix standardised per speaker over that speaker's rows with
    signal (see :mod:`binser.normalisation`); labels are never used."""
    return pooled.with_rows(lambda key, X: speaker_normalise(
        X, speakers, ~pooled.silent.get(key[0], np.zeros(len(X), bool))))
