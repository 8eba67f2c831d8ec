"""The ``results.json`` contract (SPEC, "What it must produce") and its validator."""
from __future__ import annotations

import re
from typing import Any

SINGLE_VIEW = re.compile(r"^(left|right|mid|side|mono)/"
                         r"(global-max|global-avg|block-max|block-avg|stats|block-stats)$")
BEST_VIEW = re.compile(r"^best-view$")
NORM_PREFIX = "speaker-norm:"
SCORE_FUSION = re.compile(r"^score-fusion/(left\+right|mid\+side|left\+right\+mid\+side)(@oracle)?$")
FEATURE_FUSION = re.compile(r"^feature-fusion/(left\+right|mid\+side|left\+right\+mid\+side)$")
BASELINE = re.compile(r"^opensmile/[A-Za-z0-9_.-]+$")
TOP_LEVEL = ("dataset", "protocol", "classes", "n_utterances", "backbone", "mode", "runs")
RUN_FIELDS = ("name", "ua", "wa", "macro_f1", "fold_ua", "confusion")


def _is_fraction(value: Any) -> bool:
    return isinstance(value, (int, float)) and 0.0 <= float(value) <= 1.0


def validate_results(results: dict[str, Any]) -> list[str]:
    """Return the list of contract violations (empty when ``results`` is valid)."""
    problems = [f"missing top-level field {key!r}" for key in TOP_LEVEL if key not in results]
    if problems:
        return problems
    classes = results["classes"]
    k = len(classes)
    for run in results["runs"]:
        name = run.get("name", "?")
        problems += [f"{name}: missing {key!r}" for key in RUN_FIELDS if key not in run]
        if any(key not in run for key in RUN_FIELDS):
            continue
        normalised = name.startswith(NORM_PREFIX)
        base = name[len(NORM_PREFIX):] if normalised else name
        if not any(p.match(base) for p in (SINGLE_VIEW, BEST_VIEW, SCORE_FUSION, FEATURE_FUSION,
                                           BASELINE)):
            problems.append(f"{name}: not a contract run name")
        if normalised and run.get("speaker_norm") is not True:
            problems.append(f"{name}: a speaker-norm: run must carry speaker_norm = true")
        for key in ("ua", "wa", "macro_f1"):
            if not _is_fraction(run[key]):
                problems.append(f"{name}: {key} = {run[key]!r} is not a fraction in 0..1")
        if not all(_is_fraction(u) for u in run["fold_ua"]):
            problems.append(f"{name}: fold_ua holds values outside 0..1")
        confusion = run["confusion"]
        if len(confusion) != k or any(len(row) != k for row in confusion):
            problems.append(f"{name}: confusion is not {k} x {k}")
        elif sum(map(sum, confusion)) != results["n_utterances"]:
            problems.append(f"{name}: confusion counts {sum(map(sum, confusion))} utterances, "
                            f"not n_utterances = {results['n_utterances']}")
        if SCORE_FUSION.match(base):
            selection = "oracle" if name.endswith("@oracle") else "nested"
            if run.get("selection") != selection:
                problems.append(f"{name}: selection should be {selection!r}")
            if "weights" not in run:
                problems.append(f"{name}: missing 'weights'")
    return problems
