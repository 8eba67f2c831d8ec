"""The staged study: prepare -> compute_features -> evaluate -> assemble -> write
(:func:`run_experiment`), with the trained head's runs, the speaker-normalisation extras
(as deployed, online) and the ``results.json`` sections."""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .. import __version__
from ..backbones import load_backbone
from ..corpora import Corpus, corpus as load_corpus
from ..evaluation import folds as make_folds, interval_note, small_sample_warnings, speaker_independence
from ..fusion import fuse, FUSIONS, select_weights
from ..normalisation import coverage_warning
from ..runnames import NORM_PREFIX, run_order, RunName
from ..startup import start_corpus
from .settings import _progress, ExperimentSettings, FINETUNE_NESTED_CAVEAT
from .features import _layer_description, baseline_features, cached_study_features, distinct, distinct_map, finetune_settings, finetuned_features, iter_layer_features, jittered_features, mono_files, pooled_study_features, PooledFeatures, speaker_normalised
from .folds import full_columns, fusions_for, oracle_fusions, RunPredictions
from .summary import compare_runs, summarise_run, write_json_atomic, write_predictions_csv


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
        from ..conditions import scene_conditions

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
            from ..executors import executor_for

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
    from ..head import AttentiveStatsHead
    from ..progress import bar as progress_bar

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
    from ..augment import run_folds_augmented   # run_folds itself without --augment

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
        from ..conditions import condition_results

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
            from ..report import write_report

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
        from ..outputs import OutputFolder

        target = out if isinstance(out, OutputFolder) else OutputFolder(out, keep=keep)
    from ..progress import StageTracker, grouped_warnings
    from ..views import MonoInputWarning

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


def _largest_normalised_fusion(runs: Mapping[str, Any], settings: ExperimentSettings
                               ) -> str | None:
    """The last (largest) fusion rule of the study's views with a speaker-normalised nested
    run, or None."""
    return next((f for f in reversed(list(fusions_for(settings.views)))
                 if f"{NORM_PREFIX}score-fusion/{f}" in runs), None)


def _deployment(pooled, y: np.ndarray, speakers: np.ndarray, fold_list, results: dict,
                settings: ExperimentSettings, progress: bool) -> dict[str, Any] | None:
    """:func:`binser.deployment.deployment_variants` of the largest speaker-normalised nested
    fusion of the run (None when there is none)."""
    from ..deployment import deployment_variants

    runs = {r["name"]: r for r in results["runs"]}
    fusion = _largest_normalised_fusion(runs, settings)
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
    from ..deployment import fold_choice
    from ..online import online_curve

    runs = {r["name"]: r for r in results["runs"]}
    fusion = _largest_normalised_fusion(runs, settings)
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
            layer = fold_choice(runs, f"{NORM_PREFIX}{view}/{pooling}", "fold_layer", f)
            chosen[view] = pooled.recorded_matrix((view, pooling), layer)
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
