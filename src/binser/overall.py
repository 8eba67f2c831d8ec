"""The overall label of a recording scored window by window: one rule for ``binser stream``,
the WebSocket stream's ``end`` summary, ``predict --per-channel`` and ``predict --timeline``.

Rule (docs/METHOD.md section 8b, eq. M27; :func:`overall`, stated in the outputs as
:data:`RULE`): over the windows with signal (timeline entries or stream windows that are not
``silent``), the mean of the fused scores per label,

    s_c = (1 / N) * sum_{w non-silent} p_c(w),     label = argmax_c s_c

(ties: the first label in the model's label order, as ``numpy.argmax``); silent windows are
counted apart and left out of the mean; with no window with signal the label is None and the
scores are empty. The windows are the model's timeline windows (:mod:`binser.model.predict`):
a stream and ``predict --timeline`` of the same file have equal window scores, so they give
the same overall label and scores. (One exception, image-CNN models only: predict's CNN
timeline never marks a window silent, while the stream marks a window of digital silence
in every view silent and leaves it out; files without such stretches agree.)

This is not ``predict``'s file label. :attr:`binser.model.Prediction.label` scores the whole
file as ONE utterance (every frame of the file pooled into one vector per view, one
classifier call per view, one fusion): the system that ``binser experiment`` and
``train --cross-validate`` evaluate. A stream cannot compute it (it never holds the whole
file, and a Whisper window is encoded alone), so it reports the window mean. The two agree
on most files and can differ where the emotion is carried by part of the file or where the
pooled vector of the whole file falls on the other side of a decision boundary than the
windows do (e.g. a long neutral stretch around a short sad one). ``predict --timeline``
prints both.

Scores are floats in [0, 1] summing to 1 per window (and so in the mean); ``windows`` and
``silent_windows`` are counts of windows.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np

RULE = "mean of the fused scores of the windows with signal"


def overall(labels: Sequence[str], score_sum: np.ndarray | None, n_windows: int,
            n_silent: int = 0) -> dict[str, Any]:
    """The overall result from running totals: ``score_sum`` (K,) = the sum of the fused
    scores of ``n_windows`` windows with signal (label order ``labels``), ``n_silent`` =
    silent windows -> ``{"label", "scores", "windows", "silent_windows"}`` (module
    docstring)."""
    if not n_windows:
        return {"label": None, "scores": {}, "windows": 0, "silent_windows": int(n_silent)}
    mean = np.asarray(score_sum, dtype=np.float64).reshape(len(labels)) / n_windows
    return {"label": labels[int(np.argmax(mean))],
            "scores": {lab: float(p) for lab, p in zip(labels, mean)},
            "windows": int(n_windows), "silent_windows": int(n_silent)}


def timeline_overall(labels: Sequence[str], entries: Iterable[Mapping[str, Any]]
                     ) -> dict[str, Any]:
    """:func:`overall` of timeline entries (``{"scores": {label: p}, "silent": bool}``, as
    ``Model.predict(timeline=True)`` and the stream engine give them)."""
    total, n, silent = np.zeros(len(labels)), 0, 0
    for entry in entries:
        if entry.get("silent"):
            silent += 1
            continue
        total += np.array([entry["scores"][lab] for lab in labels], dtype=np.float64)
        n += 1
    return overall(labels, total, n, silent)
