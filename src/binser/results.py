"""The ``results.json`` contract and its validator.

Top-level fields :data:`TOP_LEVEL`; every entry of ``runs`` has :data:`RUN_FIELDS`, a name of
the run-name grammar (:class:`binser.runnames.RunName`: views, poolings and fusion rules from
their tables), fractions in 0..1, a K x K confusion matrix that counts ``n_utterances``; a
``speaker-norm:`` run carries ``speaker_norm = true``; a score fusion carries ``selection``
(``nested``, or ``oracle`` for ``@oracle``) and ``weights``. See docs/METHOD.md section 10.
"""
from __future__ import annotations

import re
from typing import Any

from .runnames import NORM_PREFIX, RunName

BASELINE = re.compile(r"^opensmile/[A-Za-z0-9_.-]+$")   # the baseline run names
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
        parsed = RunName.parse(name) if RunName.is_valid(name) else None
        if parsed is None:
            problems.append(f"{name}: not a contract run name")
        if name.startswith(NORM_PREFIX) and run.get("speaker_norm") is not True:
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
        if parsed is not None and parsed.kind == "score-fusion":
            selection = "oracle" if parsed.oracle else "nested"
            if run.get("selection") != selection:
                problems.append(f"{name}: selection should be {selection!r}")
            if "weights" not in run:
                problems.append(f"{name}: missing 'weights'")
    return problems
