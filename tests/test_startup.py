"""Start-up of the ``binser`` command: help, the corpus list and argument errors import
none of the heavy modules (SciPy, scikit-learn, PyTorch ...) and their time is measured."""
from __future__ import annotations

import pytest

from binser.startup_time import (HEAVY_MODULES, STARTUP_COMMANDS, heavy_among,
                                 imported_modules, measure_startup)

REPORT = """import time: self [us] | cumulative | imported package
import time:       120 |        120 |   _io
import time:      3000 |      90000 | scipy.signal._peak_finding
import time:        50 |         50 |     binser.pooling
import time:        40 |         40 | binser.poolingx
"""


def test_importtime_report_is_parsed():
    assert imported_modules(REPORT) == {"_io", "scipy.signal._peak_finding", "binser.pooling",
                                        "binser.poolingx"}
    # a submodule counts for its package; a name that only starts alike does not
    assert heavy_among(imported_modules(REPORT)) == ("binser.pooling", "scipy")
    assert heavy_among({"torchvision_like", "sklearnish"}) == ()


@pytest.mark.parametrize("args", STARTUP_COMMANDS, ids=" ".join)
def test_light_commands_import_nothing_heavy(args):
    started = measure_startup(args, repeats=1)
    assert started.exit_code == (2 if args == ("inspect",) else 0)
    assert started.heavy == (), f"binser {' '.join(args)} imports {started.heavy}"
    assert started.wall_s > 0


def test_a_heavy_command_is_seen_as_heavy():
    """The check can fail: `experiment --help` builds its options from the experiment
    module (NumPy, scikit-learn ...)."""
    started = measure_startup(("experiment", "--help"), repeats=1)
    assert started.exit_code == 0
    assert "binser.experiment" in started.heavy and set(started.heavy) <= set(HEAVY_MODULES)


def test_bench_part_records_and_reports_every_command():
    from binser.startup_time import bench_part

    figures, lines = {}, []
    bench_part(None, [], None, figures, lines.append)
    assert [r["command"] for r in figures["startup"]] == [
        "binser " + " ".join(args) for args in STARTUP_COMMANDS]
    assert all(r["heavy_imports"] == [] for r in figures["startup"])
    assert len(lines) == len(STARTUP_COMMANDS) and lines[0].startswith("start-up binser --help: ")
