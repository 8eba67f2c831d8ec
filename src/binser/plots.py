"""Figures people would rather look at than read: the paper's Fig. 1 (Mel spectrograms of the
four binaural views), Figs. 4-6 (confusion matrices) and, for scene corpora, UA against a
condition (:func:`plot_condition_curves`). Rendered with matplotlib's Agg backend
(no display needed)."""
from __future__ import annotations

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
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


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
    """Title (if any), save as PNG at 110 dpi (parent folders made), close; the path."""
    if title:
        ax.set_title(title, fontsize=10)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
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
