"""binser.classifier_bench: the synthetic growth data, the slope, and the bench part's wiring."""
from __future__ import annotations

import numpy as np
import pytest

from binser.benchmark import PARTS, BenchOptions, check_bench_options
from binser.classifier_bench import growth, loglog_slope, synthetic_features


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


def test_classifier_is_a_bench_part():
    assert "classifier" in PARTS
    check_bench_options(BenchOptions(root=".", parts=("classifier",)))
