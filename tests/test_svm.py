"""binser.svm: the exact squared-hinge solver against independent references (liblinear run to
a tight tolerance, the KKT conditions, a brute-force line search), and the new classifier stage
against the previous one (liblinear) on real EMOVO features."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.svm import LinearSVC

from binser.experiment import ExperimentSettings, PooledFeatures, evaluate_fold
from binser.classifier import ViewClassifier
from binser.svm import (class_weights, line_search, linear_gram, ovr_problems, prefers_primal,
                        solve_grid, solve_grid_primal, solve_squared_hinge, with_intercept)

CS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def _data(n=90, d=40, k=3, seed=0, imbalance=True):
    rng = np.random.default_rng(seed)
    codes = np.arange(n) % k
    if imbalance:
        codes[: n // 4] = 0
    X = rng.standard_normal((n, d)) + 0.8 * rng.standard_normal((k, d))[codes]
    return (X - X.mean(0)) / X.std(0), codes


def _objective(beta, gram, y, c):
    o = gram @ beta
    return 0.5 * beta @ o + np.sum(c * np.maximum(0.0, 1.0 - y * o) ** 2)


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("d", [10, 150])       # more rows than features, and fewer
def test_every_C_and_class_equals_tightly_converged_liblinear(k, d):
    """liblinear's own solver for the shape (primal Newton for n > d, dual coordinate descent
    for d > n) run to tol 1e-12 gives the same weights, and never a lower objective."""
    X, codes = _data(d=d, k=k)
    gram, _ = linear_gram(X)
    ys, cs = ovr_problems(codes, np.arange(k), class_weights(codes, k, balanced=True))
    betas, unsettled = solve_grid(gram, ys, cs, CS)
    assert unsettled == 0
    for i, C in enumerate(CS):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = LinearSVC(C=C, class_weight="balanced", tol=1e-12, max_iter=100_000,
                            dual=d > len(X)).fit(X, codes)
        np.testing.assert_allclose(betas[i] @ X, ref.coef_, atol=1e-6)
        np.testing.assert_allclose(betas[i].sum(axis=1), ref.intercept_, atol=1e-6)
        for p in range(len(ys)):
            w_ref = np.append(ref.coef_[p], ref.intercept_[p])
            beta_ref = np.linalg.lstsq(np.hstack([X, np.ones((len(X), 1))]).T, w_ref,
                                       rcond=None)[0] if d > len(X) else None
            if beta_ref is not None:
                assert (_objective(betas[i, p], gram, ys[p], C * cs[p])
                        <= _objective(beta_ref, gram, ys[p], C * cs[p]) + 1e-9)


@pytest.mark.parametrize("k", [2, 4])
def test_feature_space_path_equals_liblinear_and_the_gram_path(k):
    """Many rows, few dimensions: the feature-space Newton solver gives liblinear's weights
    (tol 1e-12, primal) and the Gram-matrix solver's, at every C and class."""
    X, codes = _data(n=200, d=12, k=k)
    ys, cs = ovr_problems(codes, np.arange(k), class_weights(codes, k, balanced=True))
    ws, unsettled = solve_grid_primal(with_intercept(X), ys, cs, CS)
    betas, _ = solve_grid(linear_gram(X)[0], ys, cs, CS)
    assert unsettled == 0 and prefers_primal(*X.shape)
    for i, C in enumerate(CS):
        ref = LinearSVC(C=C, class_weight="balanced", tol=1e-12, max_iter=100_000,
                        dual=False).fit(X, codes)
        np.testing.assert_allclose(ws[i, :, :-1], ref.coef_, atol=1e-6)
        np.testing.assert_allclose(ws[i, :, -1], ref.intercept_, atol=1e-6)
        np.testing.assert_allclose(ws[i, :, :-1], betas[i] @ X, atol=1e-9)


def test_view_classifier_takes_the_feature_space_path_with_the_same_result(monkeypatch):
    """A ViewClassifier on a tall matrix (rows > 3 x dimensions) solves in feature space;
    forcing the Gram path gives the same C, decisions and probabilities."""
    X, codes = _data(n=240, d=10, k=3, imbalance=False)
    groups = np.arange(len(X)) % 4
    calls = []
    import binser.classifier as classifier
    real = classifier.solve_grid_primal
    monkeypatch.setattr(classifier, "solve_grid_primal",
                        lambda *a: calls.append(1) or real(*a))
    tall = ViewClassifier().fit(X, codes, groups)
    assert calls
    monkeypatch.setattr(classifier, "prefers_primal", lambda n, d: False)
    gram = ViewClassifier().fit(X, codes, groups)
    assert tall.C_ == gram.C_
    np.testing.assert_allclose(tall.decision_function(X), gram.decision_function(X), atol=1e-8)
    np.testing.assert_allclose(tall.predict_proba(X), gram.predict_proba(X), atol=1e-7)


def test_solution_meets_the_kkt_conditions_exactly():
    X, codes = _data(n=60, d=80, k=2)
    gram, _ = linear_gram(X)
    y = np.where(codes == 1, 1.0, -1.0)
    c = np.where(codes == 1, 0.7, 0.3)
    beta, settled = solve_squared_hinge(gram, y, c)
    assert settled
    margins = y * (gram @ beta)
    active = margins < 1
    # on the active rows: y_i beta_i = 2 c_i (1 - y_i o_i) > 0; elsewhere beta_i = 0
    np.testing.assert_allclose(y[active] * beta[active], 2 * c[active] * (1 - margins[active]),
                               rtol=1e-9, atol=1e-12)
    assert np.all(beta[~active] == 0)
    # and no nearby point is better (a convex problem: local = global)
    rng = np.random.default_rng(1)
    best = _objective(beta, gram, y, c)
    for _ in range(20):
        assert _objective(beta + 1e-4 * rng.standard_normal(len(beta)), gram, y, c) >= best


def test_line_search_matches_a_dense_scan():
    rng = np.random.default_rng(4)
    X, codes = _data(n=50, d=20, k=2, seed=3)
    gram, _ = linear_gram(X)
    y = np.where(codes == 1, 1.0, -1.0)
    c = np.full(len(y), 0.5)
    for _ in range(5):
        beta, d = rng.standard_normal(len(y)) * 0.05, rng.standard_normal(len(y)) * 0.05
        t = line_search(beta, d, gram @ beta, gram @ d, y, c)
        grid = np.linspace(0, 4, 40001)
        values = [_objective(beta + s * d, gram, y, c) for s in grid]
        assert _objective(beta + t * d, gram, y, c) <= min(values) + 1e-12
        assert abs(t - grid[int(np.argmin(values))]) <= 2e-4


def test_class_weights_are_sklearns_balanced():
    from sklearn.utils.class_weight import compute_class_weight

    codes = np.array([0, 0, 0, 1, 2, 2])
    np.testing.assert_allclose(class_weights(codes, 3, True),
                               compute_class_weight("balanced", classes=np.arange(3), y=codes))
    assert list(class_weights(np.array([0, 2, 2]), 3, True)) == [1.5, 0.0, 0.75]
    np.testing.assert_array_equal(class_weights(codes, 3, False), 1.0)


# ------------------------------------------------------------------ against the previous stage
def _emovo_log_mel_features(root, speakers=None, views=None):
    """Real, cheap utterance features of EMOVO (``speakers``: a subset): per view, mean and
    standard deviation over time of 32 log-Mel bands (two 'layers': the static bands and their
    deltas), so the layer choice, poolings and fusions of a fold all run. 32 bands keep even
    the four-view concatenation below the training rows (liblinear converges on it)."""
    from binser.audio import load_audio
    from binser.corpora import corpus as load_corpus
    from binser.spectrogram import deltas, log_mel
    from binser.views import VIEWS, binaural_views

    views = views or VIEWS
    corpus = [u for u in load_corpus("emovo", str(root))
              if speakers is None or u.speaker in speakers]
    labels = sorted({u.label for u in corpus})
    rows = {layer: {v: [] for v in views} for layer in (0, 1)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # the corpus's mono file
        for u in corpus:
            signals = binaural_views(load_audio(u.path))
            for v in views:
                mel = log_mel(signals[v], 16000)[::2]
                for layer, m in ((0, mel), (1, deltas(mel))):
                    rows[layer][v].append(np.concatenate([m.mean(1), m.std(1)]))
    by_layer = {layer: {} for layer in rows}
    for layer in rows:
        for v in views:
            X = np.asarray(rows[layer][v], dtype=np.float64)
            by_layer[layer][(v, "stats")] = X
            by_layer[layer][(v, "global-max")] = X[:, : X.shape[1] // 2]
    silent = {v: np.zeros(len(corpus), dtype=bool) for v in views}
    y = np.array([labels.index(u.label) for u in corpus])
    speakers = np.array([u.speaker for u in corpus])
    return PooledFeatures(by_layer, silent), y, speakers, views


def _compare_stage(features, speakers_tested) -> list[str]:
    """Evaluate each outer fold with both solvers. Every C, layer and best-view choice, every
    single-view and feature-fusion prediction must be identical; a score fusion may pick other
    nested weights only at a near-tie of the weight search (the out-of-fold probabilities
    differ by liblinear's tolerance, < 1e-4), and then its fold UA must be the same. Returns
    the fusions (fold:name) whose weights differed."""
    pooled, y, speakers, views = features
    settings = {solver: ExperimentSettings(dataset="emovo", root=".", views=tuple(views),
                                           poolings=("stats", "global-max"),
                                           fusion_pooling="stats", solver=solver)
                for solver in ("liblinear", "exact")}
    tied = []
    for speaker in speakers_tested:
        train, test = np.flatnonzero(speakers != speaker), np.flatnonzero(speakers == speaker)
        old, old_proba = evaluate_fold(pooled, y, speakers, train, test, settings["liblinear"], 7)
        new, new_proba = evaluate_fold(pooled, y, speakers, train, test, settings["exact"], 7)
        assert old.keys() == new.keys() and any(k.startswith("score-fusion/") for k in old)
        for name in old:
            if name.startswith("score-fusion/") and new[name][1] != old[name][1]:
                tied.append(f"{speaker}:{name}")
                assert np.mean(new[name][0] == y[test]) == np.mean(old[name][0] == y[test])
                continue
            np.testing.assert_array_equal(new[name][0], old[name][0], err_msg=name)  # predictions
            assert new[name][1] == old[name][1], name        # C, layer, weights, best view
        for view in old_proba:
            np.testing.assert_allclose(new_proba[view], old_proba[view], atol=1e-3)
    return tied


@pytest.mark.emovo
def test_new_stage_agrees_with_liblinear_on_emovo_subset(emovo_root):
    """Four EMOVO speakers, left and right: two outer folds with the same C, layer, fusion
    weights and predictions from the exact solver as from liblinear."""
    features = _emovo_log_mel_features(emovo_root, speakers={"f2", "f3", "m2", "m3"},
                                       views=("left", "right"))
    assert _compare_stage(features, ["f2", "m3"]) == []


@pytest.mark.emovo
@pytest.mark.slow
def test_new_stage_agrees_with_liblinear_on_all_emovo_folds(emovo_root):
    """All of EMOVO, four views, every LOSO fold (measured: one near-tie, fold f1's four-view
    lambda 1.0 vs 0.9, same fold UA)."""
    tied = _compare_stage(_emovo_log_mel_features(emovo_root), ["f1", "f2", "f3", "m1", "m2", "m3"])
    assert len(tied) <= 1, tied


def test_shared_inverse_path_equals_direct_factorisation(monkeypatch):
    """Class weights != 1 and inactive rows go through Woodbury / block-inverse corrections of
    the one (G + I/2C)^-1 per C; the same problems solved by a Cholesky factor per active set
    give the same solutions."""
    import binser.svm as svm

    X, codes = _data(n=120, d=200, k=4, seed=5)          # imbalanced: weights != 1
    gram, _ = linear_gram(X)
    ys, cs = ovr_problems(codes, np.arange(4), class_weights(codes, 4, balanced=True))
    assert not np.all(cs == 1.0)
    used = []
    real = svm._woodbury_solve
    monkeypatch.setattr(svm, "_woodbury_solve",
                        lambda *a: used.append(len(a[4])) or real(*a))
    betas, unsettled = solve_grid(gram, ys, cs, CS)
    assert unsettled == 0 and used and max(used) > 0      # weighted rows were corrected
    for i, C in enumerate(CS):
        for p in range(len(ys)):
            direct, settled = solve_squared_hinge(gram, ys[p], C * cs[p])   # no inverse
            assert settled
            np.testing.assert_allclose(betas[i, p], direct, atol=1e-9, rtol=1e-7)
