"""Speaker normalisation as users meet it: the nested score fusion of the speaker-normalised
runs rescored with test-speaker statistics that a deployment could have.

The ``speaker-norm:`` runs of an experiment standardise every test speaker's utterances
with the mean and standard deviation of *all* that speaker's utterances (transductive:
:data:`binser.normalisation.TRANSDUCTIVE_CAVEAT`). A user of ``predict`` has a few files of a
speaker, or none. :func:`deployment_variants` keeps everything the experiment chose on the
training speakers and changes only where a test speaker's statistics come from.

Per outer fold ``f`` (test rows ``T_f``, training rows ``R_f``) and fusion view ``v`` (the
views of ``fusion`` present in the corpus, at ``fusion_pooling``):

* the encoder layer is the fold's choice in the run ``speaker-norm:<v>/<fusion_pooling>``
  (``fold_layer``; a single-layer study has one layer), the fusion weights are the fold's
  nested weights in ``speaker-norm:score-fusion/<fusion>`` (``weights``);
* training rows: each training speaker standardised over its own rows with signal (as in the
  run), then one :class:`~binser.classifier.ViewClassifier` (``random_state=seed``) fitted
  on the training rows with signal; nothing else is fitted;
* test rows: every utterance of test speaker ``s`` standardised with statistics
  (:func:`binser.normalisation.speaker_statistics`, rows with signal only) of a *batch* of
  ``s``'s utterances, then scored; rows without signal in ``v`` score ``1/K`` (as in the run).
  A batch with fewer than ``min_utterances`` rows with signal uses the average-training-speaker
  fallback (as ``predict`` does).

Variants (batches), in output order:

* ``all``: all of ``s``'s utterances: the transductive figure of the run (reproduces its UA);
* ``random``: ``k`` utterances of ``s`` drawn without replacement (all of them when ``s``
  has fewer), for each ``k`` in ``ks`` and draw ``d`` in ``0..n_draws-1`` from
  ``numpy.random.default_rng([seed, k, d])``: folds in order, test speakers sorted, one
  ``choice`` each (the same files for every view); the UA is reported per draw, with the
  mean and range over draws;
* ``skewed``: only ``s``'s utterances whose true label is in a set (e.g. calm: neutral and
  sadness); labels choose the batch, they never enter the statistics; sets whose labels the
  corpus lacks are skipped;
* ``fallback``: no utterance of ``s``: the average training speaker (mean over the fold's
  training speakers of their means and standard deviations,
  :class:`~binser.normalisation.SpeakerNormaliser`).

Each variant's UA, WA and macro-F1 are over the pooled test predictions of all folds
(:func:`binser.evaluation.metrics`). Cost: one classifier fit per fold and fusion view.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from .errors import ConfigError
from .evaluation import metrics
from .fusion import FUSIONS, fuse
from .normalisation import (TRANSDUCTIVE_CAVEAT, SpeakerNormaliser, apply_statistics,
                            speaker_normalise, speaker_statistics)
from .runnames import RunName

DEFAULT_KS = (5, 10, 20)
DEFAULT_DRAWS = 5
MIN_UTTERANCES = 5   # as a trained model's predict (binser.model.MIN_UTTERANCES)
DEFAULT_SKEWS: dict[str, tuple[str, ...]] = {
    "calm batch (neutral, sadness)": ("neutral", "sadness"),
    "aroused batch (anger, joy, surprise)": ("anger", "joy", "surprise"),
}


def _batches(y: np.ndarray, speakers: np.ndarray, classes: Sequence[str],
             fold_list: Sequence[tuple[np.ndarray, np.ndarray]], ks: Sequence[int],
             n_draws: int, seed: int, skews: Mapping[str, Sequence[str]]
             ) -> list[dict[str, Any]]:
    """The variants: each ``dict(kind, name, ..., batch={speaker: row indices or None})``;
    ``None`` means the fallback."""
    test_speakers = [sorted(set(speakers[test].tolist())) for _, test in fold_list]
    rows = {s: np.flatnonzero(speakers == s) for fold in test_speakers for s in fold}
    out = [{"kind": "all", "variant": "all utterances of the test speaker (transductive)",
            "batch": dict(rows)}]
    for k in ks:
        for d in range(n_draws):
            rng = np.random.default_rng([seed, k, d])
            batch = {s: np.sort(rng.choice(rows[s], size=min(k, len(rows[s])), replace=False))
                     for fold in test_speakers for s in fold}
            out.append({"kind": "random", "k": int(k), "draw": d,
                        "variant": f"{k} random utterances of the test speaker", "batch": batch})
    names = list(classes)
    for title, labels in skews.items():
        codes = [names.index(label) for label in labels if label in names]
        if not codes:
            continue
        batch = {s: r[np.isin(y[r], codes)] for s, r in rows.items()}
        out.append({"kind": "skewed", "variant": title,
                    "labels": [names[c] for c in codes], "batch": batch})
    out.append({"kind": "fallback", "variant": "average training speaker (no utterance of the "
                                               "test speaker)", "batch": {s: None for s in rows}})
    return out


def _test_statistics(X: np.ndarray, mask: np.ndarray, batch: Mapping[str, np.ndarray | None],
                     fallback: SpeakerNormaliser, min_utterances: int) -> dict[str, tuple]:
    """``{speaker: (mean, std, n)}`` of each test speaker's batch (fallback when too small)."""
    stats = {}
    for s, idx in batch.items():
        used = np.array([], dtype=int) if idx is None else idx[mask[idx]]
        if len(used) < min_utterances:
            stats[s] = (fallback.fallback_mean_, fallback.fallback_std_, 0)
        else:
            stats[s] = speaker_statistics(X[used], [s] * len(used))[s]
    return stats


def fold_choice(runs: Mapping[str, Mapping[str, Any]], name: str, key: str, fold: int,
                 default: Any = None) -> Any:
    values = runs.get(name, {}).get(key)
    if values is None:
        return default
    if len(values) <= fold:
        raise ConfigError(f"{name}: {key} has {len(values)} entries, not one per fold")
    return values[fold]


def deployment_variants(pooled, y: np.ndarray, speakers: np.ndarray,
                        fold_list: Sequence[tuple[np.ndarray, np.ndarray]],
                        runs: Mapping[str, Mapping[str, Any]], classes: Sequence[str],
                        fusion: str = "left+right+mid+side", fusion_pooling: str = "stats",
                        seed: int = 0, ks: Sequence[int] = DEFAULT_KS,
                        n_draws: int = DEFAULT_DRAWS,
                        skews: Mapping[str, Sequence[str]] | None = None,
                        min_utterances: int = MIN_UTTERANCES) -> dict[str, Any]:
    """The deployment variants of the speaker-normalised nested ``fusion`` (module docstring).

    ``pooled``: the study's :class:`~binser.experiment.PooledFeatures` (raw, not normalised;
    a list of one per fold in fine-tuned mode); ``runs``: the summarised runs of
    ``results.json`` by name (the ``speaker-norm:`` family must be there). Returns
    ``dict(fusion, caveat, definition, seed, run_ua, variants=[...])``; ``random`` variants
    are grouped per ``k`` with ``ua`` the mean over draws and ``ua_draws`` each draw's UA.
    """
    from .classifier import ViewClassifier
    from .experiment import as_pooled, full_columns

    name = str(RunName.score_fusion(fusion).normalised())
    if name not in runs:
        raise ConfigError(f"deployment variants need the run {name} (experiment --speaker-norm)")
    bad = [k for k in ks if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1]
    if bad or n_draws < 1:
        raise ConfigError(f"deployment variants: k values must be integers >= 1 and draws >= 1, "
                          f"got ks={list(ks)}, n_draws={n_draws}")
    y, speakers = np.asarray(y), np.asarray(speakers).astype(str)
    n, n_classes = len(y), len(classes)
    per_fold = ([as_pooled(p) for p in pooled] if isinstance(pooled, (list, tuple))
                else [as_pooled(pooled)] * len(fold_list))
    variants = _batches(y, speakers, classes, fold_list, ks, n_draws, seed,
                        DEFAULT_SKEWS if skews is None else skews)
    predicted = np.full((len(variants), n), -1, dtype=int)
    for f, (train, test) in enumerate(fold_list):
        fold_pooled = per_fold[f]
        present = [v for v in FUSIONS[fusion] if v not in fold_pooled.absent]
        uniform = np.full((len(test), n_classes), 1.0 / n_classes)
        scores = [{v: uniform for v in FUSIONS[fusion]} for _ in variants]
        for view in present:
            layer = fold_choice(runs, str(RunName.single(view, fusion_pooling).normalised()),
                                "fold_layer", f)
            X = fold_pooled.recorded_matrix((view, fusion_pooling), layer)
            mask = ~fold_pooled.silent.get(view, np.zeros(n, dtype=bool))
            Xtrain = speaker_normalise(X[train], speakers[train], mask[train])
            fit_rows = mask[train]
            clf = ViewClassifier(random_state=seed).fit(Xtrain[fit_rows], y[train][fit_rows],
                                                        speakers[train][fit_rows])
            fallback = SpeakerNormaliser(min_utterances).fit(X[train], speakers[train],
                                                             mask[train])
            for i, variant in enumerate(variants):
                test_stats = _test_statistics(X, mask, variant["batch"], fallback,
                                              min_utterances)
                Xtest = apply_statistics(X[test], speakers[test], test_stats, mask[test])
                proba = full_columns(clf.predict_proba(Xtest), clf.classes_, n_classes)
                proba[~mask[test]] = 1.0 / n_classes
                scores[i][view] = proba
        weights = fold_choice(runs, name, "weights", f)
        for i in range(len(variants)):
            predicted[i, test] = fuse(scores[i], fusion, weights).argmax(axis=1)
    return {"fusion": name, "caveat": TRANSDUCTIVE_CAVEAT, "seed": seed,
            "min_utterances": min_utterances, "run_ua": runs[name]["ua"],
            "definition": "test speakers' statistics from a batch of their utterances; "
                          "everything else as chosen by the run on the training speakers "
                          "(binser.deployment)",
            "variants": _summaries(variants, predicted, y, classes, min_utterances)}


def _summaries(variants: list[dict[str, Any]], predicted: np.ndarray, y: np.ndarray,
               classes: Sequence[str], min_utterances: int) -> list[dict[str, Any]]:
    names = np.asarray(classes)
    tested = predicted[0] >= 0
    out: list[dict[str, Any]] = []
    by_k: dict[int, dict[str, Any]] = {}
    for variant, pred in zip(variants, predicted):
        m = metrics(names[y[tested]], names[pred[tested]], classes)
        if variant["kind"] == "random":
            entry = by_k.get(variant["k"])
            if entry is None:
                entry = by_k[variant["k"]] = {"kind": "random", "variant": variant["variant"],
                                              "k": variant["k"], "ua_draws": []}
                if variant["k"] < min_utterances:
                    entry["note"] = (f"fewer than {min_utterances} utterances: the "
                                     "average-training-speaker fallback, as in predict")
                out.append(entry)
            entry["ua_draws"].append(m["ua"])
            entry["ua"] = float(np.mean(entry["ua_draws"]))
            entry["ua_range"] = [min(entry["ua_draws"]), max(entry["ua_draws"])]
            continue
        out.append({**{k: v for k, v in variant.items() if k != "batch"},
                    "ua": m["ua"], "wa": m["wa"], "macro_f1": m["macro_f1"]})
    return out
