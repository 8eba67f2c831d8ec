"""`binser experiment`: the paper's study on any corpus, with honest (nested) fusion weights.

Steps: corpus -> segment features per view (cached) -> pooling (stateless, per utterance) ->
per fold: a linear SVM per view x pooling, nested fusion weights from training-fold
out-of-fold scores, feature fusion -> pooled metrics -> ``results.json`` (SPEC contract).

Nothing is fitted on a test fold: scaling, C and calibration live inside
:class:`~binser.classifier.ViewClassifier`, fitted on the training fold; fusion weights for
``nested`` come from out-of-fold scores of the training speakers. The ``oracle`` fusion (the
paper's choice of weights on the test data) is reported too, named as such.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import __version__
from .cache import FeatureCache, file_sha256, update_with_array
from .classifier import ViewClassifier, concat_features
from .config import FrontEndConfig
from .corpora import Corpus, corpus as load_corpus
from .errors import ConfigError
from .evaluation import bootstrap_ua_ci, folds as make_folds, metrics
from .fusion import FUSIONS, fuse, select_weights
from .pooling import POOLINGS, make_pooling
from .preflight import check_on_error, screen_corpus
from .views import VIEWS

MODES = ("frozen", "finetune")
FINETUNE_PRESETS = ("paper", "cpu")
BASELINES = ("opensmile",)


@dataclass(frozen=True)
class ExperimentSettings:
    """Everything that defines one experiment (saved into ``results.json``)."""

    dataset: str
    root: str
    protocol: str = "loso"
    backbone: str = "efficientnet_lite0"
    input_size: int | None = None
    weights: str | None = None
    allow_random: bool = False
    mode: str = "frozen"
    views: tuple[str, ...] = VIEWS
    poolings: tuple[str, ...] = POOLINGS
    blocks: int = 2
    levels: int | None = None
    fusion_pooling: str = "block-max"
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
    frontend: FrontEndConfig = field(default_factory=FrontEndConfig)

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"unknown mode {self.mode!r}; choose from {', '.join(MODES)}")
        bad = [v for v in self.views if v not in VIEWS + ("mono",)]
        if bad:
            raise ConfigError(f"unknown view(s) {bad}; choose from left right mid side mono")
        bad = [p for p in self.poolings if p not in POOLINGS]
        if bad:
            raise ConfigError(f"unknown pooling(s) {bad}; choose from {', '.join(POOLINGS)}")
        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown:
            raise ConfigError(f"unknown baseline(s) {unknown}; choose from {', '.join(BASELINES)}")
        if self.fusion_pooling not in self.poolings:
            raise ConfigError(f"fusion pooling {self.fusion_pooling!r} is not among the poolings run")
        if self.finetune_preset not in FINETUNE_PRESETS:
            raise ConfigError(f"unknown fine-tuning preset {self.finetune_preset!r}; choose "
                              f"from {', '.join(FINETUNE_PRESETS)}")
        check_on_error(self.on_error)

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "frontend"}
        out["views"] = list(self.views)
        out["poolings"] = list(self.poolings)
        for key in ("baselines", "baseline_sets", "baseline_views"):
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
        print(f"[binser] {message}", flush=True)


def extract_features(corpus: Corpus, settings: ExperimentSettings, progress: bool = True):
    """Segment features per view for every utterance: dict[view, list[(n_i, d)]], and the
    backbone used (its identity goes into the results)."""
    from .backbones import get_backbone
    from .features import SegmentFeatureExtractor

    backbone = get_backbone(settings.backbone, weights=settings.weights,
                            input_size=settings.input_size, allow_random=settings.allow_random)
    extractor = SegmentFeatureExtractor(backbone, config=settings.frontend, views=settings.views,
                                        cache_dir=settings.cache_dir,
                                        batch_size=settings.batch_size,
                                        num_threads=settings.num_threads, progress=progress)
    features = extractor.extract([u.path for u in corpus])
    return features, backbone


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
                  ) -> dict[tuple[str, str], np.ndarray]:
    """Utterance-level features for every (view, pooling). Pooling is per utterance and has
    no fitted state, so doing it once for all folds leaks nothing."""
    return {(view, name): make_pooling(name, blocks=settings.blocks, levels=settings.levels)
            .fit_transform(features[view])
            for view in settings.views for name in settings.poolings}


def baseline_features(corpus: Corpus, settings: ExperimentSettings, progress: bool = True
                      ) -> dict[tuple[str, str], np.ndarray]:
    """Utterance-level baseline features keyed like pooled features: ("opensmile", "is10")
    becomes the run ``opensmile/is10``. Classified with the same SVM and folds."""
    if "opensmile" not in settings.baselines:
        return {}
    from .baselines import opensmile_baselines

    matrices = opensmile_baselines([u.path for u in corpus], settings.baseline_sets,
                                   settings.baseline_views, settings.frontend,
                                   cache_dir=settings.cache_dir, progress=progress)
    return {tuple(name.split("/", 1)): X for name, X in matrices.items()}


def full_columns(proba: np.ndarray, classes_seen: np.ndarray, n_classes: int) -> np.ndarray:
    """Scatter probabilities over the classes a fold saw into all ``n_classes`` columns (a
    class absent from a training fold gets 0)."""
    full = np.zeros((len(proba), n_classes))
    full[:, np.asarray(classes_seen, dtype=int)] = proba
    return full


def _fit_predict(X: np.ndarray, y: np.ndarray, groups: np.ndarray, train: np.ndarray,
                 test: np.ndarray, seed: int, n_classes: int) -> tuple[np.ndarray, ViewClassifier]:
    """Fit a view classifier on the training fold; return test probabilities (n_test, K)."""
    clf = ViewClassifier(random_state=seed).fit(X[train], y[train], groups[train])
    return full_columns(clf.predict_proba(X[test]), clf.classes_, n_classes), clf


class FoldResultCache:
    """Classifier outputs of one outer fold, cached on disk (float64, bit-exact reruns).

    An entry's key hashes everything its value depends on: the feature matrix, the labels,
    the speakers, the fold's train/test indices, the classifier's parameters and seed and the
    source of :mod:`binser.classifier`; so a rerun with the same inputs skips the SVMs and
    any change recomputes. Entries live under ``<cache_dir>/classifier``; ``cache_dir=None``
    disables caching.
    """

    FORMAT = "binser-fold-results-v1"

    def __init__(self, cache_dir: str | Path | None, y: np.ndarray, groups: np.ndarray,
                 train: np.ndarray, test: np.ndarray, seed: int, n_classes: int):
        from . import classifier

        self.y, self.groups, self.train, self.test = y, groups, train, test
        self.seed, self.n_classes = seed, n_classes
        self.store = (FeatureCache(Path(cache_dir) / "classifier", dtype=np.float64)
                      if cache_dir is not None else None)
        self._context = hashlib.sha256()
        if self.store is not None:
            params = ViewClassifier(random_state=seed).get_params()
            self._context.update(json.dumps([self.FORMAT, file_sha256(classifier.__file__),
                                             repr(sorted(params.items())), n_classes]).encode())
            for array in (y, np.asarray(groups).astype(str), train, test):
                update_with_array(self._context, array)

    def _key(self, what: str, X: np.ndarray) -> str:
        digest = self._context.copy()
        digest.update(what.encode())
        update_with_array(digest, X)
        return digest.hexdigest()[:40]

    def _cached(self, what: str, X: np.ndarray, rows: int, compute: Callable[[], np.ndarray]
                ) -> np.ndarray:
        if self.store is None:
            return compute()
        key = self._key(what, X)
        value = self.store.get(key, self.n_classes)
        if value is None or len(value) != rows:
            value = compute()
            self.store.put(key, value)
        return value

    def fit_predict(self, X: np.ndarray) -> tuple[np.ndarray, float]:
        """Test probabilities ``(n_test, K)`` of a classifier fitted on the training fold, and
        its C."""
        def compute() -> np.ndarray:
            proba, clf = _fit_predict(X, self.y, self.groups, self.train, self.test, self.seed,
                                      self.n_classes)
            first = np.zeros((1, self.n_classes))
            first[0, 0] = clf.C_          # row 0 carries C; the rest are the probabilities
            return np.vstack([first, proba])

        value = self._cached("fit_predict", X, len(self.test) + 1, compute)
        return value[1:], float(value[0, 0])

    def oof_proba(self, X: np.ndarray) -> np.ndarray:
        """Out-of-fold probabilities ``(n_train, K)`` over the training speakers (nested
        fusion weights)."""
        train = self.train

        def compute() -> np.ndarray:
            proba = ViewClassifier(random_state=self.seed).oof_proba(
                X[train], self.y[train], self.groups[train])
            return full_columns(proba, np.unique(self.y[train]), self.n_classes)

        return self._cached("oof_proba", X, len(train), compute)


def fusions_for(views: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """The score/feature fusions whose views were all computed."""
    return {name: vs for name, vs in FUSIONS.items() if all(v in views for v in vs)}


def evaluate_fold(pooled: dict[tuple[str, str], np.ndarray], y: np.ndarray, groups: np.ndarray,
                  train: np.ndarray, test: np.ndarray, settings: ExperimentSettings,
                  n_classes: int) -> tuple[dict[str, tuple[np.ndarray, dict]], dict[str, np.ndarray]]:
    """One outer fold: every view x pooling, nested score fusion, feature fusion.

    Everything here is fitted on ``train`` only. Returns run name -> (predicted class indices
    of ``test``, what the fold chose), and the test probabilities of the fusion views.
    """
    from threadpoolctl import threadpool_limits

    out: dict[str, tuple[np.ndarray, dict]] = {}
    test_proba: dict[str, np.ndarray] = {}
    fusion_views = [v for v in VIEWS if v in settings.views]
    cache = FoldResultCache(settings.cache_dir, y, groups, train, test, settings.seed, n_classes)
    with threadpool_limits(1):    # liblinear is serial; folds run in parallel instead
        for (view, pooling), X in pooled.items():
            proba, C = cache.fit_predict(X)
            out[f"{view}/{pooling}"] = (proba.argmax(axis=1), {"C": C})
            if pooling == settings.fusion_pooling and view in fusion_views:
                test_proba[view] = proba
        # Nested fusion weights: out-of-fold scores over the training speakers only.
        oof = {view: cache.oof_proba(pooled[(view, settings.fusion_pooling)])
               for view in fusion_views}
        for name, views in fusions_for(settings.views).items():
            weights, _ = select_weights(oof, y[train], name, list(range(n_classes)))
            fused = fuse({v: test_proba[v] for v in views}, name, weights)
            out[f"score-fusion/{name}"] = (fused.argmax(axis=1), {"weights": weights})
            Xcat = concat_features({v: pooled[(v, settings.fusion_pooling)] for v in views}, views)
            proba, C = cache.fit_predict(Xcat)
            out[f"feature-fusion/{name}"] = (proba.argmax(axis=1), {"C": C})
    return out, test_proba


def default_jobs(n_folds: int) -> int:
    """Folds evaluated at once: one per core, at most one per fold."""
    return max(1, min(os.cpu_count() or 1, n_folds))


def run_folds(pooled: dict[tuple[str, str], np.ndarray] | Sequence[dict[tuple[str, str], np.ndarray]],
              y: np.ndarray, groups: np.ndarray,
              fold_list: Sequence[tuple[np.ndarray, np.ndarray]], settings: ExperimentSettings,
              n_classes: int, progress: bool = True, n_jobs: int | None = None
              ) -> tuple[dict[str, RunPredictions], dict[str, np.ndarray]]:
    """Cross-validate every single view x pooling, nested score fusion and feature fusion,
    folds in parallel processes.

    ``pooled``: one dict of utterance features for all folds (frozen mode), or one dict per
    fold (fine-tuned mode: each fold's networks saw only its training speakers).
    Returns the runs (keyed by run name) and, for the oracle fusion, the pooled test
    probabilities of each view at the fusion pooling.
    """
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    n = len(y)
    runs: dict[str, RunPredictions] = {}
    test_proba: dict[str, np.ndarray] = {}
    jobs = n_jobs or default_jobs(len(fold_list))
    per_fold = list(pooled) if isinstance(pooled, (list, tuple)) else [pooled] * len(fold_list)
    outcomes = Parallel(n_jobs=jobs, return_as="generator")(
        delayed(evaluate_fold)(fold_pooled, y, groups, train, test, settings, n_classes)
        for fold_pooled, (train, test) in zip(per_fold, fold_list))
    bar = tqdm(total=len(fold_list), desc="folds", unit="fold", disable=not progress)
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
                   tested: np.ndarray) -> dict[str, RunPredictions]:
    """The paper's weight choice: the grid point that scores best on the pooled test data."""
    out = {}
    for name, views in FUSIONS.items():
        if not all(v in test_proba for v in views):
            continue
        scores = {v: test_proba[v][tested] for v in views}
        weights, _ = select_weights(scores, y[tested], name, list(range(n_classes)))
        predicted = np.full(len(y), -1, dtype=int)
        predicted[tested] = fuse(scores, name, weights).argmax(axis=1)
        out[f"score-fusion/{name}@oracle"] = RunPredictions(
            f"score-fusion/{name}@oracle", predicted,
            extra={"selection": "oracle", "weights": weights})
    return out


def summarise_run(r: RunPredictions, y: np.ndarray, classes: list[str],
                  fold_list: Sequence[tuple[np.ndarray, np.ndarray]], n_boot: int,
                  seed: int) -> dict[str, Any]:
    """One entry of ``results.json``'s ``runs``: pooled metrics, per-fold UA, bootstrap CI."""
    tested = r.predicted >= 0
    names = np.asarray(classes)
    y_true, y_pred = names[y[tested]], names[r.predicted[tested]]
    pooled = metrics(y_true, y_pred, classes)
    fold_ua = [metrics(names[y[test]], names[r.predicted[test]], classes)["ua"]
               for _, test in fold_list]
    lo, hi = bootstrap_ua_ci(y_true, y_pred, classes, n_boot=n_boot, seed=seed)
    out: dict[str, Any] = {"name": r.name, "ua": pooled["ua"], "wa": pooled["wa"],
                           "macro_f1": pooled["macro_f1"], "fold_ua": fold_ua,
                           "ua_ci95": [lo, hi], "confusion": pooled["confusion"]}
    out.update(r.extra)
    if r.fold_extra and "weights" in r.fold_extra[0]:
        out["weights"] = [f["weights"] for f in r.fold_extra]   # one dict per fold (nested)
    if r.fold_extra and "C" in r.fold_extra[0]:
        out["fold_C"] = [f["C"] for f in r.fold_extra]
    return out


def _run_order(name: str) -> tuple:
    """Contract order: single views (left right mid side mono x pooling), score fusions
    (nested then oracle), feature fusions, baselines."""
    head, _, tail = name.partition("/")
    views = VIEWS + ("mono",)
    fusion_rank = {f: i for i, f in enumerate(FUSIONS)}
    if head in views:
        return (0, views.index(head), POOLINGS.index(tail) if tail in POOLINGS else 9, name)
    if head == "score-fusion":
        base, oracle = tail.partition("@")[0], tail.endswith("@oracle")
        return (1, int(oracle), fusion_rank.get(base, 9), name)
    if head == "feature-fusion":
        return (2, 0, fusion_rank.get(tail, 9), name)
    return (3, 0, 0, name)


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

    names = sorted(runs, key=_run_order)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")   # concurrent runs: own temp
    with open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "speaker", "label", "fold", *names])
        for i, u in enumerate(corpus):
            writer.writerow([str(u.path), u.speaker, u.label, int(fold_of[i]),
                             *[classes[runs[n].predicted[i]] if runs[n].predicted[i] >= 0
                               else "" for n in names]])
    os.replace(tmp, path)


def run_experiment(settings: ExperimentSettings, out: str | Path | None = None,
                   progress: bool = True, report: bool = True,
                   corpus_loader: Callable[..., Corpus] = load_corpus) -> dict[str, Any]:
    """Run the whole study; write ``results.json`` (and the report) to ``out`` if given.

    Returns the results dictionary (the SPEC's ``results.json`` contract).
    """
    settings.validate()
    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    corpus = corpus_loader(settings.dataset, settings.root, manifest=settings.manifest)
    # Every file is checked (decoded once) before any expensive work; see binser.preflight.
    corpus, skipped = screen_corpus(corpus, settings.on_error, settings.frontend, progress=progress)
    classes = list(corpus.labels)
    y = np.array([classes.index(u.label) for u in corpus])
    speakers = np.array([u.speaker for u in corpus])
    splits = [u.split for u in corpus]
    fold_list = make_folds(list(speakers), settings.protocol, splits)
    _progress(f"{settings.dataset}: {len(corpus)} utterances, {len(classes)} classes, "
              f"{len(corpus.speakers)} speakers, protocol {settings.protocol} "
              f"({len(fold_list)} folds)", progress)
    if skipped:
        _progress(f"{len(skipped)} file(s) not used (see 'skipped' in results.json)",
                  progress)

    t = time.perf_counter()
    finetune_records = None
    if settings.mode == "finetune":
        fold_features, finetune_records, backbone = finetuned_features(
            corpus, y, fold_list, settings, len(classes), progress)
        features = fold_features[0]
    else:
        features, backbone = extract_features(corpus, settings, progress)
    timing["features_s"] = time.perf_counter() - t
    t = time.perf_counter()
    if finetune_records is not None:
        pooled: Any = [pool_features(f, settings) for f in fold_features]
    else:
        pooled = pool_features(features, settings)
    timing["pooling_s"] = time.perf_counter() - t
    if settings.baselines:
        t = time.perf_counter()
        extra = baseline_features(corpus, settings, progress)
        for fold_pooled in (pooled if isinstance(pooled, list) else [pooled]):
            fold_pooled.update(extra)
        timing["baselines_s"] = time.perf_counter() - t

    t = time.perf_counter()
    runs, test_proba = run_folds(pooled, y, speakers, fold_list, settings, len(classes), progress)
    tested = np.zeros(len(y), dtype=bool)
    fold_of = np.full(len(y), -1)
    for k, (_, test) in enumerate(fold_list):
        tested[test] = True
        fold_of[test] = k
    runs.update(oracle_fusions(test_proba, y, len(classes), tested))
    timing["classifiers_s"] = time.perf_counter() - t

    results: dict[str, Any] = {
        "binser_version": __version__,
        "dataset": settings.dataset,
        "synthetic": settings.synthetic,
        "protocol": settings.protocol,
        "classes": classes,
        "n_utterances": int(tested.sum()),
        "n_speakers": len(corpus.speakers),
        "n_folds": len(fold_list),
        "fold_test_speakers": [sorted(set(speakers[test])) for _, test in fold_list],
        "backbone": backbone.name,
        "backbone_input_size": backbone.input_size,
        "backbone_weights_id": backbone.weights_id,
        "pretrained": bool(backbone.pretrained),
        "mode": settings.mode,
        "segments_per_view": int(sum(len(f) for f in features[settings.views[0]])),
        "settings": settings.to_dict(),
        **({"finetune": {"settings": finetune_settings(settings).to_dict(),
                         "folds": finetune_records}} if finetune_records is not None else {}),
        "skipped": [{"path": str(p), "reason": why} for p, why in skipped],
        "runs": [summarise_run(runs[name], y, classes, fold_list, settings.n_boot, settings.seed)
                 for name in sorted(runs, key=_run_order)],
    }
    timing["total_s"] = time.perf_counter() - t0
    results["timing"] = timing
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(results, out / "results.json")
        write_predictions_csv(corpus, fold_of, runs, classes, out / "predictions.csv")
        if report:
            from .report import write_report

            example = corpus[int(np.argmax([len(f) for f in features[settings.views[0]]]))]
            write_report(results, out, example_path=example.path, config=settings.frontend)
        _progress(f"results written to {out}", progress)
    return results


def with_overrides(settings: ExperimentSettings, **changes: Any) -> ExperimentSettings:
    """A copy of ``settings`` with some fields changed (None values are ignored)."""
    return replace(settings, **{k: v for k, v in changes.items() if v is not None})
