"""ViewClassifier: scikit-learn reference equivalence, no test-fold or speaker leakage."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.calibration import CalibratedClassifierCV
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from binser.classifier import (
    FeatureFusionClassifier,
    ViewClassifier,
    concat_features,
    fit_calibration,
    fit_sigmoid,
    fit_temperature,
    inner_splits,
    row_space_basis,
)
from binser.errors import ConfigError

LABELS = np.array(["anger", "joy", "sadness"])


def _problem(n_per=5, speakers=6, d=200, signal=0.6, seed=0):
    """Every speaker has every class; the first dims carry a class signal plus noise."""
    rng = np.random.default_rng(seed)
    k = len(LABELS)
    codes = np.tile(np.repeat(np.arange(k), n_per), speakers)
    spk = np.repeat([f"s{i}" for i in range(speakers)], k * n_per)
    X = rng.standard_normal((len(codes), d))
    X[:, :k] += signal * np.eye(k)[codes] * 3
    X += rng.standard_normal(speakers)[np.searchsorted(np.unique(spk), spk)][:, None]  # speaker offset
    return X, LABELS[codes], spk


def _sklearn_reference(X, y, splits, Cs, tol=1e-4, max_iter=1000):
    # liblinear: dual when D exceeds the training rows, as ViewClassifier(solver="liblinear")
    dual = True if X.shape[1] > len(X) else "auto"
    pipe = make_pipeline(StandardScaler(), LinearSVC(class_weight="balanced", dual=dual,
                                                     tol=tol, max_iter=max_iter,
                                                     random_state=0))
    gs = GridSearchCV(pipe, {"linearsvc__C": list(Cs)}, scoring="balanced_accuracy", cv=splits)
    gs.fit(X, y)
    cal = CalibratedClassifierCV(gs.best_estimator_, method="sigmoid", cv=splits, ensemble=False)
    return gs, cal.fit(X, y)


# liblinear as ViewClassifier runs it (tol 1e-4), and the exact solver against liblinear run to
# a tolerance of 1e-10 (an independent reference for the optimum of the same problem)
SOLVER_REFERENCES = {"liblinear": dict(tol=1e-4, max_iter=1000),
                     "exact": dict(tol=1e-10, max_iter=200_000)}


@pytest.mark.parametrize("solver", ["exact", "liblinear"])
@pytest.mark.parametrize("d", [12, 200])  # D < n and D > n (row-space reduction for liblinear)
def test_matches_gridsearch_and_calibrated_sklearn(d, solver):
    X, y, spk = _problem(d=d, signal=0.25)
    Cs = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    model = ViewClassifier(Cs=Cs, calibration="sigmoid", solver=solver).fit(X, y, spk)
    splits, kind = inner_splits(np.unique(y, return_inverse=True)[1], spk, 3)
    assert kind == "group" and model.n_splits_ == 3
    gs, cal = _sklearn_reference(X, y, splits, Cs, **SOLVER_REFERENCES[solver])
    assert model.C_ == gs.best_params_["linearsvc__C"]
    assert model.best_score_ == pytest.approx(gs.best_score_, abs=1e-12)
    np.testing.assert_allclose(model.cv_scores_, gs.cv_results_["mean_test_score"], atol=1e-12)
    Xt, _, _ = _problem(d=d, speakers=2, seed=9)
    np.testing.assert_allclose(model.decision_function(Xt),
                               gs.best_estimator_.decision_function(Xt), atol=1e-7)
    np.testing.assert_allclose(model.predict_proba(Xt), cal.predict_proba(Xt), atol=1e-6)
    assert list(model.classes_) == list(LABELS)


def test_row_space_basis_preserves_inner_products():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((30, 100))
    x -= x.mean(0)                                  # rank 29, like standardised data
    basis = row_space_basis(x)
    assert basis.shape == (100, 29)
    np.testing.assert_allclose(basis.T @ basis, np.eye(29), atol=1e-10)
    z = x @ basis
    np.testing.assert_allclose(z @ z.T, x @ x.T, atol=1e-9)
    other = rng.standard_normal((5, 100))
    np.testing.assert_allclose((other @ basis) @ z.T, other @ x.T, atol=1e-9)


def test_platt_sigmoid_matches_hand_check():
    # perfectly symmetric data: b = 0, and a < 0 (larger decision -> more likely positive)
    f = np.array([-2.0, -1.0, -0.5, 0.5, 1.0, 2.0])
    pos = f > 0
    a, b = fit_sigmoid(f, pos)
    assert a < 0 and b == pytest.approx(0.0, abs=1e-6)
    # gradient of Platt's objective vanishes at the optimum (targets smoothed as Platt)
    t = np.where(pos, 4 / 5, 1 / 5)
    p = 1 / (1 + np.exp(a * f + b))
    assert abs(np.sum((t - p) * f)) < 1e-4 and abs(np.sum(t - p)) < 1e-4


def test_calibration_uses_seen_rows_and_borrows_when_impossible():
    rng = np.random.default_rng(3)
    codes = np.repeat([0, 1, 2], 20)
    dec = rng.standard_normal((60, 3)) + 2 * np.eye(3)[codes]
    seen = np.ones((60, 3), dtype=bool)
    seen[:10, 1] = False                 # rows scored by a fold model without class 1
    seen[codes == 2, 2] = False          # class 2 never seen where it is the truth
    a, b = fit_calibration(dec, codes, seen)
    assert (a[0], b[0]) == fit_sigmoid(dec[:, 0], codes == 0)
    assert (a[1], b[1]) == fit_sigmoid(dec[10:, 1], codes[10:] == 1)
    assert a[2] == pytest.approx((a[0] + a[1]) / 2) and b[2] == pytest.approx((b[0] + b[1]) / 2)
    none_seen = fit_calibration(dec, codes, np.zeros((60, 3), dtype=bool))
    np.testing.assert_array_equal(none_seen[0], -1.0)
    np.testing.assert_array_equal(none_seen[1], 0.0)


def test_probabilities_sum_to_one_and_separable_accuracy():
    X, y, spk = _problem(signal=1.0)
    Xt, yt, _ = _problem(signal=1.0, speakers=2, seed=5)
    model = ViewClassifier().fit(X, y, spk)
    proba = model.predict_proba(Xt)
    assert proba.shape == (len(Xt), 3) and (proba >= 0).all()
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-12)
    assert balanced_accuracy_score(yt, model.predict(Xt)) > 0.8        # chance is 1/3
    np.testing.assert_array_equal(model.predict(Xt), model.classes_[proba.argmax(1)])


def test_binary_problem():
    X, y, spk = _problem(signal=1.0)
    keep = y != "sadness"
    model = ViewClassifier(Cs=(1e-3, 1e-1)).fit(X[keep], y[keep], spk[keep])
    assert model.decision_function(X[:4]).shape == (4,)
    proba = model.predict_proba(X[keep])
    np.testing.assert_allclose(proba.sum(1), 1.0)
    # positive class is classes_[1]: its probability rises with the decision value
    order = np.argsort(model.decision_function(X[keep]))
    assert np.all(np.diff(proba[order, 1]) >= -1e-12)


def test_inner_fold_missing_a_class():
    X, y, spk = _problem(signal=1.0, d=60)
    keep = (y != "sadness") | np.isin(spk, ["s0"])      # sadness from one speaker only
    X, y, spk = X[keep], y[keep], spk[keep]
    splits, _ = inner_splits(np.unique(y, return_inverse=True)[1], spk, 3)
    assert any("sadness" not in set(y[train]) for train, _ in splits)   # the case under test
    model = ViewClassifier().fit(X, y, spk)
    assert np.isfinite(model.cv_scores_).all() and np.isfinite(model.calib_a_).all()
    Xt, yt, _ = _problem(signal=1.0, d=60, speakers=2, seed=8)
    proba = model.predict_proba(Xt)
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-12)
    assert balanced_accuracy_score(yt, model.predict(Xt)) > 0.6


def test_fitted_model_ignores_test_fold_features():
    """Planting a label-revealing signal in the test rows changes nothing learnt on train."""
    X, y, spk = _problem()
    test = np.isin(spk, ["s4", "s5"])
    train = ~test
    planted = X.copy()
    planted[test, 7] = 100.0 * np.searchsorted(LABELS, y[test])    # reveals the test labels
    clean_model = ViewClassifier().fit(X[train], y[train], spk[train])
    planted_model = ViewClassifier().fit(planted[train], y[train], spk[train])
    assert planted_model.C_ == clean_model.C_
    np.testing.assert_array_equal(planted_model.coef_, clean_model.coef_)
    np.testing.assert_array_equal(planted_model.predict_proba(X[test]), clean_model.predict_proba(X[test]))
    # and the planted dimension really would leak if it were in the training data
    leaky = ViewClassifier().fit(planted, y, spk)
    assert balanced_accuracy_score(y[test], leaky.predict(planted[test])) == 1.0


def _speaker_owns_class():
    """6 speakers, each the only speaker of its own class; features = speaker identity."""
    rng = np.random.default_rng(2)
    spk = np.repeat([f"s{i}" for i in range(6)], 8)
    codes = np.repeat(np.arange(6), 8)
    X = np.eye(6)[codes] * 5 + 0.01 * rng.standard_normal((len(codes), 6))
    X = np.hstack([X, rng.standard_normal((len(codes), 30))])
    labels = np.array([f"c{i}" for i in range(6)])[codes]
    return X, labels, spk


def test_oof_proba_never_uses_the_utterances_speaker():
    X, y, spk = _speaker_owns_class()
    model = ViewClassifier(Cs=(1e-2, 1.0))
    true_col = np.searchsorted(np.unique(y), y)
    # an SVM that saw the speakers is perfect on them (the identity feature leaks the class) ...
    assert (model.fit(X, y, spk).decision_function(X).argmax(1) == true_col).all()
    oof = model.oof_proba(X, y, spk)
    assert oof.shape == (len(y), 6)
    np.testing.assert_allclose(oof.sum(1), 1.0, atol=1e-12)
    # ... but out of fold, the true class was never seen: its probability is exactly 0
    assert (oof[np.arange(len(y)), true_col] == 0).all()
    # sensitivity check: without speaker groups the same features do leak
    leaked = model.oof_proba(X, y, groups=None)
    assert np.mean(leaked.argmax(1) == true_col) > 0.9


def test_oof_proba_is_out_of_fold_per_speaker():
    X, y, spk = _problem(signal=1.0, d=40)
    model = ViewClassifier(Cs=(1e-2, 1.0))
    oof = model.oof_proba(X, y, spk)
    splits, _ = inner_splits(np.unique(y, return_inverse=True)[1], spk, 3)
    for train, test in splits:
        expected = ViewClassifier(Cs=(1e-2, 1.0)).fit(X[train], y[train], spk[train])
        np.testing.assert_allclose(oof[test], expected.predict_proba(X[test]))
        assert not set(spk[train]) & set(spk[test])


def test_split_fallbacks():
    codes = np.repeat([0, 1, 2], 4)
    splits, kind = inner_splits(codes, None, 3)
    assert kind == "stratified" and len(splits) == 3
    assert sorted(np.concatenate([t for _, t in splits]).tolist()) == list(range(12))
    _, kind = inner_splits(codes, ["a"] * 12, 3)
    assert kind == "stratified"
    splits, kind = inner_splits(codes, ["a"] * 6 + ["b"] * 6, 3)
    assert kind == "group" and len(splits) == 2
    _, kind = inner_splits(np.array([0, 1, 1, 1]), None, 3)
    assert kind == "kfold"


@pytest.mark.parametrize("calibration", ["temperature", "sigmoid"])
def test_state_round_trip(calibration):
    X, y, spk = _problem(d=30)
    model = ViewClassifier(Cs=(1e-2, 1.0), calibration=calibration).fit(X, y, spk)
    state = model.get_state()
    assert all(isinstance(v, np.ndarray) and v.dtype != object for v in state.values())
    again = ViewClassifier.from_state(state)
    assert again.calibration == calibration
    np.testing.assert_array_equal(again.predict_proba(X), model.predict_proba(X))
    np.testing.assert_array_equal(again.predict(X), model.predict(X))


def test_state_without_calibration_field_is_platt():
    """States written before temperature scaling existed carry Platt parameters."""
    X, y, spk = _problem(d=30)
    model = ViewClassifier(Cs=(1e-2,), calibration="sigmoid").fit(X, y, spk)
    state = {k: v for k, v in model.get_state().items() if k != "calibration"}
    np.testing.assert_array_equal(ViewClassifier.from_state(state).predict_proba(X),
                                  model.predict_proba(X))


@pytest.mark.parametrize("d", [12, 200])
def test_temperature_keeps_the_svm_prediction(d):
    X, y, spk = _problem(d=d, signal=0.25)
    Cs = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    model = ViewClassifier(Cs=Cs).fit(X, y, spk)
    assert model.calibration == "temperature"
    splits, _ = inner_splits(np.unique(y, return_inverse=True)[1], spk, 3)
    gs, _ = _sklearn_reference(X, y, splits, Cs)
    Xt, _, _ = _problem(d=d, speakers=2, seed=9)
    np.testing.assert_array_equal(model.predict(Xt), gs.predict(Xt))
    proba = model.predict_proba(Xt)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(proba.argmax(1), model.decision_function(Xt).argmax(1))


def test_fit_temperature_minimises_the_log_loss():
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 3, 80)
    dec = rng.normal(size=(80, 3)) + 1.5 * np.eye(3)[codes]
    t = fit_temperature(dec, codes)

    def loss(tt):
        z = tt * dec
        z = z - z.max(axis=1, keepdims=True)
        return np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(80), codes])

    grid = np.linspace(0.01, 10, 5000)
    best = grid[np.argmin([loss(g) for g in grid])]
    assert t == pytest.approx(best, abs=3e-3)
    assert loss(t) <= loss(best) + 1e-9
    # a class the scoring model never saw: its column is ignored, rows of that class dropped
    seen = np.ones((80, 3), dtype=bool)
    seen[:40, 2] = False
    dec2 = dec.copy()
    dec2[:40, 2] = 1e6                      # would dominate if it were not masked
    keep = ~((np.arange(80) < 40) & (codes == 2))
    assert fit_temperature(dec2, codes, seen) == pytest.approx(
        fit_temperature(np.where(seen, dec, -50.0)[keep], codes[keep]), rel=1e-3)
    assert fit_temperature(dec, codes, np.zeros((80, 3), dtype=bool)) == 1.0


def test_errors():
    X, y, spk = _problem(d=10)
    with pytest.raises(ConfigError, match="2 classes"):
        ViewClassifier().fit(X, np.full(len(y), "joy"), spk)
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ConfigError, match="NaN"):
        ViewClassifier().fit(bad, y, spk)
    with pytest.raises(ConfigError, match="not fitted"):
        ViewClassifier().predict(X)
    with pytest.raises(ConfigError, match="Cs"):
        ViewClassifier(Cs=(0.0,)).fit(X, y, spk)
    model = ViewClassifier(Cs=(1.0,)).fit(X, y, spk)
    with pytest.raises(ConfigError, match="expects 10"):
        model.predict(X[:, :5])


def test_concat_features_and_feature_fusion():
    feats = {"left": np.ones((3, 2)), "right": np.zeros((3, 1)), "mid": np.full((3, 4), 2.0)}
    out = concat_features(feats, ("mid", "left"))
    assert out.shape == (3, 6)
    np.testing.assert_array_equal(out[0], [2, 2, 2, 2, 1, 1])
    with pytest.raises(ConfigError, match="side"):
        concat_features(feats, ("left", "side"))
    with pytest.raises(ConfigError, match="numbers of utterances"):
        concat_features({"left": np.ones((3, 2)), "right": np.ones((4, 2))}, ("left", "right"))
    assert isinstance(FeatureFusionClassifier(), ViewClassifier)
