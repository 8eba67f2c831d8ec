"""From predictions to ``results.json`` entries: per-run metrics and intervals
(:func:`summarise_run`), the paper's claims as paired comparisons (:func:`compare_runs`), and
the atomic writers of ``results.json`` and ``predictions.csv``."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..corpora import Corpus
from ..evaluation import metrics, ua_ci_with_method
from ..fusion import PROSODY_FUSION
from ..runnames import NORM_PREFIX, run_order
from ..views import VIEWS
from .settings import PROSODY_VIEW
from .folds import RunPredictions


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
    from ..evaluation import adjust_claims, paired_comparison
    from ..normalisation import TRANSDUCTIVE_CAVEAT

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
