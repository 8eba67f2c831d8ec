"""binser.classifier_bench: the synthetic growth data, the slope, and the bench part's wiring."""
from __future__ import annotations

import numpy as np
import pytest

from binser.benchmark import PARTS, BenchOptions, check_bench_options
from binser.classifier_bench import (exact_floor_seconds, fit_sizes, growth, loglog_slope,
                                     matrix_stage_seconds, synthetic_features)


def test_synthetic_features_have_emovos_shape():
    X, y, speakers = synthetic_features(588, dim=64)
    assert X.shape == (588, 64) and len(np.unique(speakers)) == 6
    counts = np.array([[np.sum((speakers == s) & (y == k)) for k in range(7)] for s in range(6)])
    assert counts.min() == counts.max() == 14          # EMOVO: 14 per emotion and speaker
    again, _, _ = synthetic_features(588, dim=64)
    np.testing.assert_array_equal(X, again)              # deterministic


def test_loglog_slope_of_power_laws():
    sizes = [300, 600, 1200, 3000]
    assert loglog_slope(sizes, [2e-6 * n ** 1.5 for n in sizes]) == pytest.approx(1.5)
    assert loglog_slope(sizes, [0.1 * n for n in sizes]) == pytest.approx(1.0)


def test_growth_times_both_solvers_and_skips_liblinear_beyond_its_limit():
    out = growth(sizes=(84, 168), liblinear_up_to=84)
    assert [r["utterances"] for r in out["rows"]] == [84, 168]
    assert out["rows"][0]["exact"] > 0 and out["rows"][0]["liblinear"] > 0
    assert out["rows"][1]["liblinear"] is None
    assert out["slope"]["liblinear"] is None and np.isfinite(out["slope"]["exact"])
    assert all(r["floor"] > 0 for r in out["rows"]) and np.isfinite(out["slope"]["floor"])


def test_floor_counts_exactly_the_fits_the_stage_makes(monkeypatch):
    """The floor lists one entry per SVM fit of one matrix's stage, with its rows and C count:
    checked against the solver calls of a real run."""
    import binser.classifier as classifier

    X, y, speakers = synthetic_features(168, dim=32)
    calls = []

    def recording(real):
        def solve(system, ys, cs, Cs):        # Gram (n, n) or rows (n, D + 1): n rows
            calls.append((system.shape[0], len(Cs)))
            return real(system, ys, cs, Cs)
        return solve

    for name in ("solve_grid", "solve_grid_primal"):
        monkeypatch.setattr(classifier, name, recording(getattr(classifier, name)))
    matrix_stage_seconds(X, y, speakers, "exact")
    assert sorted(calls) == sorted(fit_sizes(y, speakers))
    assert len(calls) == 1 + 3 + 9          # final fit, 3 search fits, 3 nested searches of 3
    assert fit_sizes(y, speakers)[0] == (140, 1)    # the final fit: 5 training speakers, one C


def test_floor_sums_one_gram_and_one_inverse_per_c_and_fit(monkeypatch):
    """Each distinct size is timed once; the floor is sum(gram + C-count * inverse)."""
    import binser.classifier_bench as bench

    ticks = iter(np.arange(0.0, 1000.0, 1.0))     # every perf_counter call advances 1 s
    monkeypatch.setattr(bench.time, "perf_counter", lambda: float(next(ticks)))
    # per size, best of 2 of (gram 1 s, inverse 1 s): 1 + C-count * 1 per fit
    assert exact_floor_seconds([(20, 5), (20, 5), (30, 1)], dim=8) == pytest.approx(6 + 6 + 2)


def test_classifier_is_a_bench_part():
    assert "classifier" in PARTS
    check_bench_options(BenchOptions(root=".", parts=("classifier",)))


def test_bench_part_prints_the_floor_beside_the_solvers(monkeypatch):
    import binser.classifier_bench as bench
    from binser.benchmark import classifier_part

    fake = {"rows": [{"utterances": 294, "exact": 0.125, "liblinear": 0.46, "floor": 0.019},
                     {"utterances": 2940, "exact": 13.2, "liblinear": None, "floor": 4.4}],
            "slope": {"exact": 2.02, "liblinear": None, "floor": 2.36}}
    monkeypatch.setattr(bench, "growth", lambda sizes, progress=None: fake)
    lines = []
    out = classifier_part(BenchOptions(root=".", parts=("classifier",), quick=True), None,
                          lines.append)
    assert out["growth"] is fake
    table = "\n".join(lines)
    assert "exact floor s" in table and "4.400" in table and "0.019" in table
    assert "floor 2.36" in table and "liblinear" not in table.split("slope:")[1]
