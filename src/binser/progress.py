"""Console progress of long commands: one overall line and per-stage bars, and warnings that
never share a line with a bar (no torch, no numpy: cheap to import anywhere).

Use::

    from binser.progress import StageTracker, bar, grouped_warnings, say

    with StageTracker(["check files", "features", "classifiers"], weights=[1, 6, 3]) as stages:
        with stages.stage("check files"):
            for path in bar(paths, desc="preflight", unit="file"):   # "check files: preflight"
                ...
        with stages.stage("features"), grouped_warnings({MonoInputWarning: "results.json"}):
            ...
        say("results written")            # a line above the bars, never glued to one

**Overall line** (position 0, while a tracker is open): ``stage n of N: <stage> | elapsed
M:SS | left ~M:SS`` (:func:`overall_text`). Progress is measured in *work units*: each stage
owns ``weights[i] / sum(weights)`` of the whole (equal weights by default); a stage counts as
done at its end, and within the current stage the fraction ``n / total`` of its newest
:func:`bar` counts. Time left = elapsed x (1 - done) / done (the average rate so far; "?"
until some work is done), an estimate that is only as good as the weights. On a terminal
the line stays at the top and is also redrawn every :data:`TICK_S` seconds, so elapsed time
moves during a long step without a bar; when the output is a file or a pipe it is printed
as a plain line at the start of each stage instead (logs get no cursor movements).

**Stage bars** (:func:`bar`): a tqdm bar that disappears when done; while a stage is open its
name is prefixed (``"features: layer 4"``), so no two bars of a run share a name. With no
tracker open, :func:`bar` is exactly the plain bar binser always used.

**Warnings** (:func:`grouped_warnings`): warnings raised inside are collected; at the end a
warning that names a file (message ``"<path>: <text>"``) and repeats with the same text and
category is issued once, as ``"<text> (<count> files: a.wav, b.wav, c.wav, ...; all listed in
<where>)"``; other warnings are issued again unchanged (one of each distinct message). All of
them go through :mod:`warnings` (filters and the ``binser`` command's one-line display apply).
:func:`show_warning` and :func:`say` write through ``tqdm.write``, which clears the bars,
prints the line and redraws them; :func:`above_bars` does the same for any line printer
(e.g. ``print``).
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import warnings
from typing import Any, Iterable, Iterator, Mapping, Sequence

WORK_UNITS = 1000       # the overall line's total: stage weights are scaled to this
SHOWN_FILES = 3         # file names shown in a grouped warning before "..."
TICK_S = 1.0            # the overall line is redrawn this often (seconds) on a terminal

_active: "StageTracker | None" = None
_lock = threading.Lock()


def clock(seconds: float | None) -> str:
    """``M:SS`` (``H:MM:SS`` from an hour; ``?`` for None): 75.2 -> '1:15'."""
    if seconds is None:
        return "?"
    s = int(round(max(0.0, seconds)))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def time_left(elapsed_s: float, done: float) -> float | None:
    """Seconds left at the average rate so far: ``elapsed * (1 - done) / done`` for a done
    fraction in (0, 1]; None when nothing is done yet."""
    if done <= 0:
        return None
    return elapsed_s * (1.0 - min(done, 1.0)) / done


def overall_text(index: int, n_stages: int, name: str, elapsed_s: float,
                 left_s: float | None) -> str:
    """The overall line: ``stage 2 of 5: features | elapsed 0:41 | left ~1:20``
    (``index`` counts from 1)."""
    return (f"stage {index} of {n_stages}: {name} | elapsed {clock(elapsed_s)} | "
            f"left ~{clock(left_s)}")


class StageTracker:
    """The stages of one command, in order, with the overall line.

    ``names``: the stages (distinct); ``weights``: their expected relative cost (positive,
    default equal); ``enabled``: False draws nothing (the tracker still counts);
    ``file``: where the lines go (default stderr). A context manager: open it around the
    whole command; ``stage(name)`` around each stage (stages may be skipped; the overall
    line then jumps). Attributes: ``index`` (1-based number of the current stage, 0 before
    the first), ``done`` (fraction of the work done, 0..1), ``elapsed_s``.
    """

    def __init__(self, names: Sequence[str], weights: Sequence[float] | None = None,
                 enabled: bool = True, file=None):
        names = list(names)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"stage names must be distinct and not empty, got {names}")
        weights = [1.0] * len(names) if weights is None else [float(w) for w in weights]
        if len(weights) != len(names) or any(not w > 0 for w in weights):
            raise ValueError(f"one positive weight per stage, got {weights} for {names}")
        total = sum(weights)
        self.names = names
        self.shares = [w / total for w in weights]
        self.enabled = enabled
        self.file = file
        self.index = 0
        self._base = 0.0            # share of the stages finished
        self._fraction = 0.0        # fraction of the current stage done (its newest bar)
        self._start: float | None = None
        self._line = None
        self._terminal = False
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    # -- the overall numbers -------------------------------------------------------------
    @property
    def elapsed_s(self) -> float:
        return 0.0 if self._start is None else time.monotonic() - self._start

    @property
    def done(self) -> float:
        share = self.shares[self.index - 1] if self.index else 0.0
        return min(1.0, self._base + share * self._fraction)

    def text(self) -> str:
        """The overall line now (:func:`overall_text`)."""
        name = self.names[self.index - 1] if self.index else "starting"
        return overall_text(max(self.index, 1), len(self.names), name, self.elapsed_s,
                            time_left(self.elapsed_s, self.done))

    # -- context managers ----------------------------------------------------------------
    def __enter__(self) -> "StageTracker":
        global _active
        self._start = time.monotonic()
        stream = self.file or sys.stderr
        self._terminal = bool(getattr(stream, "isatty", lambda: False)())
        if self.enabled and self._terminal:
            from tqdm.auto import tqdm

            self._line = tqdm(total=WORK_UNITS, bar_format="{desc}", position=0, leave=False,
                              file=stream, dynamic_ncols=True)
            self._stop.clear()
            self._ticker = threading.Thread(target=self._tick, args=(TICK_S,), daemon=True,
                                            name="binser-progress")
            self._ticker.start()
        with _lock:
            self._previous, _active = _active, self
        self.refresh()
        return self

    def __exit__(self, *exc) -> None:
        global _active
        with _lock:
            _active = self._previous
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None
        if self._line is not None:
            self._line.close()
            self._line = None

    def _tick(self, seconds: float) -> None:
        while not self._stop.wait(seconds):
            self.refresh()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator["StageTracker"]:
        """The stage ``name`` (one of ``names``, after the current one) runs inside."""
        if name not in self.names:
            raise ValueError(f"unknown stage {name!r}; the stages are {self.names}")
        index = self.names.index(name) + 1
        if index <= self.index:
            raise ValueError(f"stage {name!r} comes before the current one "
                             f"({self.names[self.index - 1]!r})")
        self._base = sum(self.shares[:index - 1])
        self.index, self._fraction = index, 0.0
        self.refresh()
        if self.enabled and not self._terminal:
            say(self.text(), file=self.file)
        try:
            yield self
        finally:
            self._fraction = 1.0
            self.refresh()

    # -- updates from the stage's bars -----------------------------------------------------
    def advance(self, fraction: float) -> None:
        """The current stage is ``fraction`` (0..1) done."""
        self._fraction = min(1.0, max(0.0, float(fraction)))
        self.refresh()

    def refresh(self) -> None:
        if self._line is not None:
            self._line.set_description_str(self.text(), refresh=True)

    def bar_name(self, desc: str) -> str:
        """``"<stage>: <desc>"`` inside a stage (``desc`` alone if it is the stage's name)."""
        if not self.index:
            return desc
        stage = self.names[self.index - 1]
        return stage if desc in ("", stage) else f"{stage}: {desc}"


def active() -> StageTracker | None:
    """The innermost open tracker, if any."""
    return _active


def _tqdm_class():
    from tqdm.auto import tqdm

    class StageBar(tqdm):
        """A tqdm bar that also moves the overall line of the tracker it was made under."""

        tracker: StageTracker | None = None

        def update(self, n=1):
            shown = super().update(n)
            if shown and self.tracker is not None and self.total:   # as often as it draws
                self.tracker.advance(self.n / self.total)
            return shown

        def close(self):
            if self.tracker is not None and self.total and not self.disable:
                self.tracker.advance(self.n / self.total)
            super().close()

    return StageBar


def bar(iterable: Iterable | None = None, total: float | None = None, desc: str = "",
        unit: str = "it", enabled: bool = True, **kwargs: Any):
    """A progress bar (tqdm; disappears when done; nothing drawn when ``enabled`` is False).

    Inside an open :class:`StageTracker` stage it sits below the overall line, is named
    ``"<stage>: <desc>"`` and its fraction done moves the overall line. ``iterable`` and
    ``total`` as in tqdm; other keyword arguments are passed on.
    """
    tracker = _active
    cls = _tqdm_class()
    kwargs.setdefault("leave", False)
    if tracker is not None:
        if tracker._line is not None:   # below the overall line
            kwargs.setdefault("position", 1)
        kwargs.setdefault("file", tracker.file or sys.stderr)
        desc = tracker.bar_name(desc)
    made = cls(iterable, total=total, desc=desc, unit=unit, disable=not enabled, **kwargs)
    made.tracker = tracker
    return made


def say(text: str, file=None) -> None:
    """Print a line above any bars (the bars are cleared, the line written, the bars redrawn)."""
    from tqdm.auto import tqdm

    tqdm.write(text, file=file or sys.stderr)


def above_bars(printer):
    """``printer`` (a function of one line, e.g. ``print``) wrapped so that each line is
    written above the bars, never glued to one (tqdm's external write mode)."""
    def write(text: str) -> None:
        from tqdm.auto import tqdm

        with tqdm.external_write_mode():
            printer(text)
    return write


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A replacement for :func:`warnings.showwarning` that writes through :func:`say`:
    binser's own warnings as one line ``binser: warning: <message>``, other libraries' as
    Python formats them."""
    if getattr(category, "__module__", "").split(".")[0] == "binser":
        text = f"binser: warning: {message}"
    else:
        text = warnings.formatwarning(message, category, filename, lineno, line).rstrip("\n")
    say(text, file=file)


def split_file(message: str) -> tuple[str | None, str]:
    """``"/data/a.wav: mono input ..."`` -> ``("/data/a.wav", "mono input ...")``; a message
    whose head before the first ``": "`` does not look like a file path (no path separator
    and no suffix such as ``.wav``) -> ``(None, message)``."""
    head, sep, tail = message.partition(": ")
    if not sep or not head or " " in os.path.basename(head):
        return None, message
    looks_like_path = os.sep in head or "/" in head or os.path.splitext(head)[1] != ""
    return (head, tail) if looks_like_path else (None, message)


def group_text(text: str, files: Sequence[str], where: str | None = None) -> str:
    """One line for a repeated file warning: ``"<text> (3 files: a.wav, b.wav, c.wav, ...;
    all listed in <where>)"`` (base names; the first :data:`SHOWN_FILES`)."""
    names = [os.path.basename(f) or f for f in files[:SHOWN_FILES]]
    more = ", ..." if len(files) > SHOWN_FILES else ""
    listed = f"; all listed in {where}" if where else ""
    return f"{text} ({len(files)} files: {', '.join(names)}{more}{listed})"


@contextlib.contextmanager
def grouped_warnings(where: Mapping[type, str] | None = None) -> Iterator[list]:
    """Collect the warnings raised inside; at the end issue each repeated file warning once
    with its count (:func:`group_text`; ``where[category]`` says where the full list is,
    e.g. ``"results.json 'mono_files'"``) and every other distinct warning once, in the order
    first seen. Yields the list of collected :class:`warnings.WarningMessage` (for callers
    that want the files). Filters set outside still apply when they are issued; warnings
    from other processes are not seen."""
    where = dict(where or {})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught
    groups: dict[tuple, list] = {}
    for w in caught:
        path, text = split_file(str(w.message))
        key = (w.category, text if path is not None else str(w.message), path is not None)
        groups.setdefault(key, [])
        if path is None or path not in groups[key]:
            groups[key].append(path if path is not None else w)
    for (category, text, has_file), members in groups.items():
        if has_file and len(members) > 1:
            message = group_text(text, members, where.get(category))
        elif has_file:
            message = f"{members[0]}: {text}"
        else:
            message = text
        warnings.warn_explicit(message, category, "binser", 0, registry={})
