"""Start-up time of the ``binser`` command: wall seconds and the heavy modules it imports.

``measure_startup(args)`` runs ``python -m binser ARGS`` in fresh processes and returns a
:class:`Startup`: ``wall_s`` is the median wall time in seconds (process start to exit,
interpreter start-up included), ``exit_code`` the command's exit status, and ``heavy`` the
sorted names from :data:`HEAVY_MODULES` that the command imported (read from the
``-X importtime`` report on stderr of one more, untimed run). A command that only prints
help, lists the corpora or refuses its arguments should import none of them: they are what
makes start-up slow (SciPy, scikit-learn, PyTorch, and binser's modules that import them).

:data:`STARTUP_COMMANDS` are the commands ``binser bench --parts startup`` times
(:func:`bench_part`): ``--help``, ``datasets``, and ``inspect`` without its file (an argument
error).
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

HEAVY_MODULES: tuple[str, ...] = (
    "scipy", "sklearn", "torch", "pandas", "matplotlib", "librosa", "av",
    "binser.benchmark", "binser.experiment", "binser.spectrogram", "binser.pooling",
    "binser.features", "binser.model",
)

STARTUP_COMMANDS: tuple[tuple[str, ...], ...] = (("--help",), ("datasets",), ("inspect",))


@dataclass(frozen=True)
class Startup:
    """One command's start-up: ``wall_s`` median seconds, its ``exit_code``, ``heavy``
    modules of :data:`HEAVY_MODULES` it imported (sorted)."""

    args: tuple[str, ...]
    wall_s: float
    exit_code: int
    heavy: tuple[str, ...]


def imported_modules(importtime_report: str) -> set[str]:
    """Module names in a ``-X importtime`` report (lines ``import time: self | cumulative |
    name``, the name indented by its nesting)."""
    names = set()
    for line in importtime_report.splitlines():
        fields = line.removeprefix("import time:").split("|")
        if line.startswith("import time:") and len(fields) == 3 and fields[1].strip().isdigit():
            names.add(fields[2].strip())   # the header row has no numbers
    return names


def heavy_among(modules: set[str]) -> tuple[str, ...]:
    """The :data:`HEAVY_MODULES` entries imported: the name itself or any submodule of it."""
    return tuple(sorted(h for h in HEAVY_MODULES
                        if any(m == h or m.startswith(h + ".") for m in modules)))


def measure_startup(args: tuple[str, ...], repeats: int = 3, timeout_s: float = 60.0
                    ) -> Startup:
    """``binser ARGS`` in ``repeats`` fresh processes (median wall time), then once more
    under ``-X importtime`` for the heavy imports (not timed: the report slows it)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}

    def once(*options: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *options, "-m", "binser", *args],
                              capture_output=True, text=True, timeout=timeout_s, env=env,
                              stdin=subprocess.DEVNULL)

    walls = []
    for _ in range(max(1, repeats)):
        began = time.perf_counter()
        once()
        walls.append(time.perf_counter() - began)
    traced = once("-X", "importtime")
    return Startup(tuple(args), statistics.median(walls), traced.returncode,
                   heavy_among(imported_modules(traced.stderr)))


def startup_rows(repeats: int = 3) -> list[dict]:
    """:func:`measure_startup` of every :data:`STARTUP_COMMANDS` entry as plain dicts."""
    return [{"command": "binser " + " ".join(s.args), "wall_s": s.wall_s,
             "exit_code": s.exit_code, "heavy_imports": list(s.heavy)}
            for s in (measure_startup(args, repeats) for args in STARTUP_COMMANDS)]


def bench_part(options, files, whisper, figures: dict, report) -> None:
    """``binser bench --parts startup``: :func:`startup_rows` into ``figures["startup"]``,
    one line each (the benchmark's part signature; the other arguments are not used)."""
    rows = startup_rows()
    figures["startup"] = rows
    for row in rows:
        heavy = ", ".join(row["heavy_imports"]) or "none"
        report(f"start-up {row['command']}: {row['wall_s']:.2f} s (exit {row['exit_code']}; "
               f"heavy imports: {heavy})")
