"""The study's utterance-level features: encoder layers to compute, per-layer frames
(:func:`iter_layer_features`), pooling (:func:`pool_features`), the pooled-feature cache
(:func:`cached_study_features`), baselines and the prosody view's functionals, fine-tuned and
jittered features, speaker normalisation of whole feature sets (:class:`PooledFeatures`)."""
from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..backbones import is_encoder, load_backbone
from ..cache import FeatureCache, file_sha256
from ..corpora import Corpus
from ..errors import ConfigError
from ..layer_choice import stacked
from ..normalisation import speaker_normalise
from ..pooling import make_pooling
from ..views import feature_views, signal_views
from .settings import _progress, ExperimentSettings, LAYER_POLICIES, PROSODY_VIEW


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
    from ..executors import executor_for

    executor = executor or executor_for(settings)
    paths = [u.path for u in corpus]
    signals = signal_views(settings.views)   # the backbone's; feature views: their own frames
    own = _feature_view_frames(paths, settings, progress)

    def joined(features: dict) -> dict:
        return {v: (features[v] if v in features else own[v]) for v in settings.views}

    if not is_encoder(settings.backbone):
        from ..features import SegmentFeatureExtractor

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
    from ..features import FrameFeatureExtractor

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
    from ..features import FeatureViewExtractor

    return FeatureViewExtractor(settings.frontend, feature_views(settings.views),
                                settings.cache_dir, progress).extract(paths)


def finetune_settings(settings: ExperimentSettings):
    """The :class:`~binser.finetune.FinetuneSettings` of an experiment in mode ``finetune``."""
    from ..finetune import FinetuneSettings

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
    from ..backbones import get_backbone
    from ..finetune import finetuned_fold_features

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
    from ..pooling import PoolingInputError, pool_utterances

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
        from ..features import FEATURE_VIEW_FORMAT

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
    from ..baselines import opensmile_baselines

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

    def recorded_matrix(self, key: tuple[str, str], layer: Any) -> np.ndarray:
        """``key``'s matrix at a fold's layer choice as ``results.json`` records it
        (``fold_layer``: an index, a list for a layer set, or None): a single layer this
        feature set does not hold (one layer computed; None) means its only layer."""
        if isinstance(layer, (tuple, list)) or layer in self.by_layer:
            return self.matrix(key, layer)
        return self.layer_features()[key]

    def with_rows(self, transform: Callable[[tuple[str, str], np.ndarray], np.ndarray]
                  ) -> "PooledFeatures":
        """A copy with every matrix replaced by ``transform(key, X)``."""
        return PooledFeatures({layer: {k: transform(k, X) for k, X in mats.items()}
                               for layer, mats in self.by_layer.items()},
                              self.silent, self.absent, self.n_rows)


def as_pooled(pooled: PooledFeatures | Mapping[tuple[str, str], np.ndarray]) -> PooledFeatures:
    """Plain ``{(view, pooling): X}`` dicts (every row with signal) as :class:`PooledFeatures`."""
    return pooled if isinstance(pooled, PooledFeatures) else PooledFeatures({None: dict(pooled)}, {})


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


def jittered_features(corpus: Corpus, settings: ExperimentSettings, backbone,
                      progress: bool = True, executor=None) -> PooledFeatures:
    """Pooled features of the jittered copy of every file (``--augment jitter``): copies kept
    under ``<cache>/augmented/jitter-<seed>``, or, without a cache, in a temporary folder
    removed once they are encoded."""
    from ..augment import jittered_corpus

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
    from ..audio import audio_info

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
