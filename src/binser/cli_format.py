"""Text output of the command line: one prediction as the lines ``binser predict`` prints."""
from __future__ import annotations

from typing import Mapping

from .model.predict import Prediction


def _top(scores: Mapping[str, float], n: int) -> str:
    best = sorted(scores.items(), key=lambda item: -item[1])[:n]
    return ", ".join(f"{label} {score:.2f}" for label, score in best)


def format_prediction(prediction: Prediction, top: int = 3) -> str:
    """One line per file (``path: label (top scores)`` or ``path: ERROR cause``, with the
    silent views when there are any), plus one indented line per timeline entry and, with a
    timeline, the overall line the stream prints (:func:`overall_text`)."""
    if prediction.error is not None:
        cause = prediction.error.removeprefix(f"{prediction.path}: ")
        return f"{prediction.path}: ERROR {cause}"
    line = f"{prediction.path}: {prediction.label}  ({_top(prediction.scores, top)})"
    if prediction.silent_views:
        line += f"  [silent: {', '.join(prediction.silent_views)}]"
    lines = [line]
    for entry in prediction.timeline or []:
        scores = "(silent)" if entry.get("silent") else _top(entry["scores"], top)
        lines.append(f"    {entry['start_s']:7.2f}-{entry['end_s']:7.2f} s  {scores}")
    if prediction.overall is not None:
        lines.append("    " + overall_text(prediction.overall))
    return "\n".join(lines)


def overall_text(summary: Mapping, top: int = 3) -> str:
    """``overall of N windows (mean of the fused scores of the windows with signal): label
    (top scores)``: the overall result of :mod:`binser.overall`, the same line for
    ``predict --timeline`` and ``binser stream``."""
    from .overall import RULE

    head = f"overall of {summary['windows']} windows ({RULE}): "
    if summary["label"] is None:
        return head + "(silent throughout)"
    return head + f"{summary['label']}  ({_top(summary['scores'], top)})"

