"""Figures people would rather look at than read: the paper's Fig. 1 (Mel spectrograms of the
four binaural views), Figs. 4-6 (confusion matrices), for scene corpora UA against a
condition (:func:`plot_condition_curves`); the report's UA-with-interval chart of the main
systems (:func:`plot_systems`), per-fold UA heatmap (:func:`plot_fold_heatmap`) and forest
plot of the paired comparisons (:func:`plot_forest`); and ``predict --plot``'s timeline
(:func:`plot_timeline`). UA and differences are drawn in percent (inputs are fractions 0..1).
Rendered with matplotlib's Agg backend (no display needed); files written atomically
(a temporary sibling renamed into place)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .config import FrontEndConfig  # noqa: E402
from .views import VIEWS  # noqa: E402

VIEW_TITLES = {"left": "Left (L)", "right": "Right (R)", "mid": "Mid (M = L + R)",
               "side": "Side (S = L - R)", "mono": "Mono ((L + R) / 2)"}


def plot_views_spectrogram(views_logmel: dict[str, np.ndarray], out_png: str | Path,
                           config: FrontEndConfig = FrontEndConfig(), title: str = "") -> Path:
    """Save the log-Mel spectrograms (F x T, dB) of the four views as one 2 x 2 figure.

    All panels share one colour scale (the 1st-99.9th percentile of the non-floor values) so
    that level differences between views, e.g. a weak Side view, stay visible.
    """
    names = [v for v in VIEWS if v in views_logmel]
    stack = np.concatenate([views_logmel[v].ravel() for v in names])
    finite = stack[stack > 10 * np.log10(config.power_floor) + 1e-3]
    vmax = float(np.percentile(finite, 99.9)) if finite.size else 0.0
    vmin = max(float(np.percentile(finite, 1)) if finite.size else -100.0, vmax - 90.0)
    fig, axes = plt.subplots(2, 2, figsize=(11, 6.2), sharex=True, sharey=True,
                             constrained_layout=True)
    image = None
    for ax, name in zip(axes.ravel(), names):
        logmel = views_logmel[name]
        seconds = logmel.shape[1] * config.hop_ms / 1000.0
        image = ax.imshow(logmel, origin="lower", aspect="auto", cmap="magma", vmin=vmin,
                          vmax=vmax, extent=(0.0, seconds, 0, logmel.shape[0]))
        ax.set_title(VIEW_TITLES[name])
    for ax in axes[-1]:
        ax.set_xlabel("time (s)")
    for ax in axes[:, 0]:
        ax.set_ylabel(f"Mel band ({config.fmin:.0f}-{config.fmax:.0f} Hz)")
    if image is not None:
        fig.colorbar(image, ax=axes, label="log-Mel power (dB)", shrink=0.9)
    if title:
        fig.suptitle(title)
    return _save(fig, None, out_png)


def plot_confusion(confusion: Sequence[Sequence[int]], classes: Sequence[str],
                   out_png: str | Path, title: str = "") -> Path:
    """Save a row-normalised confusion matrix (percent of each true class, counts in brackets)."""
    counts = np.asarray(confusion, dtype=float)
    rows = counts.sum(axis=1, keepdims=True)
    percent = np.divide(100.0 * counts, rows, out=np.zeros_like(counts), where=rows > 0)
    size = 1.0 + 0.75 * len(classes)
    fig, ax = plt.subplots(figsize=(size + 1.2, size), constrained_layout=True)
    image = ax.imshow(percent, cmap="Blues", vmin=0, vmax=100)
    for i in range(len(classes)):
        for j in range(len(classes)):
            colour = "white" if percent[i, j] > 55 else "black"
            ax.text(j, i, f"{percent[i, j]:.1f}\n({int(counts[i, j])})", ha="center",
                    va="center", fontsize=8, color=colour)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(image, ax=ax, label="% of true class", shrink=0.8)
    return _save(fig, ax, out_png, title)


def _save(fig, ax, out_png: str | Path, title: str = "") -> Path:
    """Title (if any), save at 110 dpi (parent folders made; written to a temporary sibling,
    then renamed into place), close; the path."""
    if title:
        ax.set_title(title, fontsize=10)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_png.with_name(f".{out_png.stem}.{os.getpid()}.partial{out_png.suffix}")
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, out_png)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return out_png


def plot_condition_curves(series: dict[str, tuple[Sequence[float], Sequence[float],
                                                  Sequence[Sequence[float] | None]]],
                          out_png: str | Path, xlabel: str, title: str = "") -> Path:
    """UA (%) against a condition value, one line per system with 95% interval bars:
    ``series[label] = (x values, UAs as fractions, [lo, hi] fractions or None per point)``."""
    fig, ax = plt.subplots(figsize=(7.5, 4.6), constrained_layout=True)
    for offset, (label, (x, ua, ci)) in enumerate(series.items()):
        x = np.asarray(x, float) + 0.15 * (offset - (len(series) - 1) / 2)  # bars side by side
        ua = 100 * np.asarray(ua, float)
        lo = [100 * c[0] if c else u for c, u in zip(ci, ua)]
        hi = [100 * c[1] if c else u for c, u in zip(ci, ua)]
        err = np.array([ua - np.asarray(lo), np.asarray(hi) - ua]).clip(min=0)
        ax.errorbar(x, ua, yerr=err, marker="o", capsize=3, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("UA (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, ax, out_png, title)


# --------------------------------------------------------------------- report figures

def plot_systems(systems: Sequence[tuple[str, float, Sequence[float] | None]],
                 out_png: str | Path, chance: float | None = None, title: str = "",
                 highlight: str | None = None) -> Path:
    """UA (%) of each system as a dot with its 95% interval as a bar, one row per system
    (top to bottom in the given order): ``systems = [(label, ua, (lo, hi) or None)]`` with
    fractions; ``chance``: a dashed vertical line at that UA; ``highlight``: the label of
    the system printed in bold (the report's default system)."""
    fig, ax = plt.subplots(figsize=(8.0, 1.2 + 0.42 * len(systems)), constrained_layout=True)
    y = np.arange(len(systems))[::-1]
    for row, (label, ua, ci) in zip(y, systems):
        if ci is not None:
            ax.plot([100 * ci[0], 100 * ci[1]], [row, row], color="#4477aa", lw=2.5)
        ax.plot(100 * ua, row, "o", color="#114477", ms=7)
        ax.annotate(f"{100 * ua:.1f}", (100 * ua, row), xytext=(0, 7),
                    textcoords="offset points", ha="center", fontsize=8)
    if chance is not None:
        ax.axvline(100 * chance, ls="--", color="#aa3333", lw=1, label=f"chance {100 * chance:.1f}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_yticks(y, [s[0] for s in systems])
    for tick in ax.get_yticklabels():
        if tick.get_text() == highlight:
            tick.set_fontweight("bold")
    ax.set_xlabel("UA (%) with 95% interval")
    ax.set_ylim(-0.7, len(systems) - 0.3)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, ax, out_png, title)


def plot_fold_heatmap(matrix: np.ndarray, rows: Sequence[str], columns: Sequence[str],
                      out_png: str | Path, title: str = "") -> Path:
    """Per-fold UA as a heatmap: ``matrix`` (runs x folds) of fractions (NaN: no figure),
    one row per run, one column per fold (named by its test speakers); cells numbered (%)
    when the grid is small enough to read (at most 40 rows and 12 columns)."""
    values = 100 * np.asarray(matrix, dtype=float)
    width = min(16.0, 3.5 + 0.55 * len(columns))
    fig, ax = plt.subplots(figsize=(width, 1.4 + 0.22 * len(rows)), constrained_layout=True)
    image = ax.imshow(np.ma.masked_invalid(values), aspect="auto", cmap="viridis", vmin=0,
                      vmax=100, interpolation="nearest")
    if len(rows) <= 40 and len(columns) <= 12:
        for (i, j), v in np.ndenumerate(values):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=6.5,
                        color="white" if v < 60 else "black")
    ax.set_xticks(range(len(columns)), columns, rotation=45 if len(columns) > 6 else 0,
                  ha="right" if len(columns) > 6 else "center", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set_xlabel("fold (test speakers)")
    fig.colorbar(image, ax=ax, label="UA (%)", shrink=0.8)
    return _save(fig, ax, out_png, title)


def plot_forest(claims: Sequence[tuple[str, float, Sequence[float], str]], out_png: str | Path,
                title: str = "") -> Path:
    """The paired comparisons as a forest plot: per claim the UA difference a - b (points)
    with its 95% interval (bars), in percentage points, a vertical line at 0 and the verdict
    at the right: ``claims = [(label, diff, (lo, hi), verdict)]`` with fractions."""
    fig, ax = plt.subplots(figsize=(9.0, 1.2 + 0.45 * len(claims)), constrained_layout=True)
    y = np.arange(len(claims))[::-1]
    colours = {"supported": "#228833", "refuted": "#cc3311"}
    for row, (_, diff, ci, verdict) in zip(y, claims):
        colour = colours.get(verdict, "#555555")
        ax.plot([100 * ci[0], 100 * ci[1]], [row, row], color=colour, lw=2.2)
        ax.plot(100 * diff, row, "s", color=colour, ms=6)
    ax.axvline(0.0, color="black", lw=0.8)
    ax.set_yticks(y, [c[0] for c in claims], fontsize=8)
    right = ax.secondary_yaxis("right")
    right.set_yticks(y, [c[3] for c in claims], fontsize=8)
    ax.set_ylim(-0.7, len(claims) - 0.3)
    ax.set_xlabel("UA difference a - b (percentage points) with 95% paired interval")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, ax, out_png, title)


# ----------------------------------------------------------------------- timelines

def plot_timeline(panels: dict[str, Sequence[dict]], labels: Sequence[str],
                  out_png: str | Path, title: str = "") -> Path:
    """Scores per label over time, one panel per entry of ``panels`` (a file, a channel or a
    view; name -> timeline entries ``{"start_s", "end_s", "scores": {label: p}, "silent"}``
    in time order). Each label's score is drawn as a step over its window's [start, end)
    (overlapping windows: from the window's centre on); silent windows are shaded grey.
    Scores are the fused probabilities (0..1) that ``predict`` prints."""
    if not panels:
        raise ValueError("no timeline to plot")
    fig, axes = plt.subplots(len(panels), 1, figsize=(9.0, 0.6 + 2.3 * len(panels)),
                             sharex=True, squeeze=False, constrained_layout=True)
    colours = plt.get_cmap("tab10")
    for ax, (name, entries) in zip(axes[:, 0], panels.items()):
        starts = np.array([e["start_s"] for e in entries], float)
        ends = np.array([e["end_s"] for e in entries], float)
        # each window owns the time from its centre (first: its start) to the next centre
        centres = (starts + ends) / 2
        edges = np.concatenate([[starts[0] if len(starts) else 0.0],
                                (centres[1:] + centres[:-1]) / 2,
                                [ends[-1] if len(ends) else 0.0]])
        for k, label in enumerate(labels):
            values = [e.get("scores", {}).get(label, np.nan) for e in entries]
            if values:
                ax.stairs(values, edges, color=colours(k % 10), lw=1.8, label=label,
                          baseline=None)
        for e, a, b in zip(entries, edges[:-1], edges[1:]):
            if e.get("silent"):
                ax.axvspan(a, b, color="0.85", zorder=0)
        ax.set_ylim(0, 1)
        ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
        ax.set_ylabel("score (0-1)")
        ax.set_title(name, fontsize=9, loc="left")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(loc="upper right", fontsize=8, ncol=min(len(labels), 5))
    axes[-1, 0].set_xlabel("time (s)")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, None, out_png)


def plot_predictions(predictions: Sequence, labels: Sequence[str],
                     out_png: str | Path) -> Path | None:
    """``predict --plot``: the timelines of ``predictions`` (objects with ``.path`` and
    ``.timeline``, :class:`binser.model.Prediction`) drawn by :func:`plot_timeline`, one
    panel per file with a timeline (titled by the file name, its path where names repeat)
    and its overall label; nothing is written (None) when no file was scored."""
    scored = [p for p in predictions if p.timeline]
    names = [Path(p.path).name for p in scored]
    panels = {}
    for p, name in zip(scored, names):
        title = str(p.path) if names.count(name) > 1 else name
        panels[f"{title}: {p.label}"] = p.timeline
    return plot_timeline(panels, labels, out_png) if panels else None


def channel_panels(results: Sequence[dict]) -> dict[str, list[dict]]:
    """Per-channel analyses (``predict --per-channel``: :func:`binser.serve.stream.analyse_file`
    dicts ``{"path", "windows": [{"start_s", "end_s", "channels": {name: {"scores",
    "silent", ...}}}]}``) as :func:`plot_timeline` panels, one per file and channel
    (``"a.wav: left"``); files without windows (errors) are left out."""
    panels: dict[str, list[dict]] = {}
    for result in results:
        for window in result.get("windows") or []:
            for channel, item in (window.get("channels") or {}).items():
                panels.setdefault(f"{Path(result['path']).name}: {channel}", []).append(
                    {"start_s": window["start_s"], "end_s": window["end_s"],
                     "scores": item.get("scores", {}), "silent": item.get("silent", False)})
    return panels
