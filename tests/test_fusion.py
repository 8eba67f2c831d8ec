"""Score-level fusion: eqs. 8-10 by hand, planted best weights, documented tie-breaking."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from binser.errors import ConfigError
from binser.fusion import FUSIONS, GRID, SEARCHES, fuse, select_weights, two_stage_fusion

CLASSES = ["anger", "joy"]


def _two_class(d: list[float]) -> np.ndarray:
    """Probabilities [p, 1-p] whose difference p - (1-p) is ``d``."""
    p = (np.asarray(d, dtype=float) + 1) / 2
    return np.stack([p, 1 - p], axis=1)


def test_grid_has_eleven_points():
    assert len(GRID) == 11 and GRID[0] == 0.0 and GRID[-1] == 1.0 and GRID[3] == 0.3
    assert FUSIONS["left+right+mid+side"] == ("left", "right", "mid", "side")


def test_two_stage_fusion_by_hand():
    sl = np.array([[1.0, 0.0], [0.5, 0.5]])
    sr = np.array([[0.0, 1.0], [0.2, 0.8]])
    sm = np.array([[0.4, 0.6], [1.0, 0.0]])
    ss = np.array([[0.6, 0.4], [0.0, 1.0]])
    # a=0.25: s1 = [[.25,.75],[.275,.725]]; b=0.5: s2 = [[.5,.5],[.5,.5]]; g=0.5 -> mean
    expected = np.array([[0.375, 0.625], [0.3875, 0.6125]])
    np.testing.assert_allclose(two_stage_fusion(sl, sr, sm, ss, 0.25, 0.5, 0.5), expected)
    scores = {"left": sl, "right": sr, "mid": sm, "side": ss}
    np.testing.assert_allclose(
        fuse(scores, "left+right+mid+side", {"alpha": 0.25, "beta": 0.5, "gamma": 0.5}), expected)
    np.testing.assert_allclose(fuse(scores, "left+right", {"alpha": 0.25}),
                               [[0.25, 0.75], [0.275, 0.725]])
    np.testing.assert_allclose(fuse(scores, "mid+side", {"beta": 1.0}), sm)
    # g=1 keeps only the first stage, g=0 only the second
    np.testing.assert_allclose(two_stage_fusion(sl, sr, sm, ss, 1.0, 0.3, 1.0), sl)
    np.testing.assert_allclose(two_stage_fusion(sl, sr, sm, ss, 0.7, 0.0, 0.0), ss)


def _planted_pair():
    """Only alpha = 0.3 classifies both utterances correctly (margins of 0.05)."""
    # fused difference f(a) = dR + a*(dL - dR): utterance 0 (anger) needs f > 0 <=> a > 0.25,
    # utterance 1 (joy) needs f < 0 <=> a < 0.35
    left = _two_class([0.75, 0.65])
    right = _two_class([-0.25, -0.35])
    return left, right, ["anger", "joy"]


def test_select_weights_finds_planted_alpha():
    left, right, y = _planted_pair()
    weights, ua = select_weights({"left": left, "right": right}, y, "left+right", CLASSES)
    assert weights == {"alpha": 0.3} and ua == 1.0
    weights, ua = select_weights({"mid": left, "side": right}, y, "mid+side", CLASSES)
    assert weights == {"beta": 0.3} and ua == 1.0


def test_four_view_planted_and_tie_break_to_half():
    left, right, y = _planted_pair()
    flat = np.full_like(left, 0.5)       # mid/side carry no information
    scores = {"left": left, "right": right, "mid": flat, "side": flat}
    weights, ua = select_weights(scores, y, "left+right+mid+side", CLASSES)
    # every gamma > 0 and every beta are perfect with alpha = 0.3: ties go to 0.5
    assert weights == {"alpha": 0.3, "beta": 0.5, "gamma": 0.5} and ua == 1.0


def test_pair_ties_prefer_closest_to_half_then_smallest():
    # anger utterances: one right iff a < 0.45, one right iff a > 0.55; joy always right.
    left = _two_class([-0.55, 0.45, -1.0])
    right = _two_class([0.45, -0.55, -1.0])
    y = ["anger", "anger", "joy"]
    weights, ua = select_weights({"left": left, "right": right}, y, "left+right", CLASSES)
    assert weights == {"alpha": 0.4} and ua == pytest.approx(0.75)
    same = _two_class([0.2, -0.1, 0.3])
    weights, _ = select_weights({"left": same, "right": same}, y, "left+right", CLASSES)
    assert weights == {"alpha": 0.5}


def _reference_search(scores, y, classes):
    """Brute force over all 1331 weights with scikit-learn's balanced accuracy."""
    best = None
    for ia, ib, ig in itertools.product(range(11), repeat=3):
        w = {"alpha": GRID[ia], "beta": GRID[ib], "gamma": GRID[ig]}
        pred = np.asarray(classes)[fuse(scores, "left+right+mid+side", w).argmax(1)]
        ua = balanced_accuracy_score(y, pred)
        key = (-round(ua, 12), abs(ia - 5) + abs(ib - 5) + abs(ig - 5), (ia, ib, ig))
        if best is None or key < best[0]:
            best = (key, w, ua)
    return best[1], best[2]


def _random_four_view(seed, n=60):
    rng = np.random.default_rng(seed)
    classes = ["anger", "fear", "joy", "sadness"]
    y = rng.choice(classes, size=n)
    codes = np.searchsorted(classes, y)
    scores = {}
    for v, strength in zip(("left", "right", "mid", "side"), (1.0, 0.3, 0.6, 0.1)):
        logits = rng.standard_normal((n, 4)) + strength * np.eye(4)[codes]
        scores[v] = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return scores, y, classes


def test_four_view_search_matches_brute_force_reference():
    scores, y, classes = _random_four_view(3)
    weights, ua = select_weights(scores, y, "left+right+mid+side", classes, search="joint")
    ref_weights, ref_ua = _reference_search(scores, y, classes)
    assert weights == ref_weights
    assert ua == pytest.approx(ref_ua, abs=1e-12)
    pred = np.asarray(classes)[fuse(scores, "left+right+mid+side", weights).argmax(1)]
    assert balanced_accuracy_score(y, pred) == pytest.approx(ua, abs=1e-12)


def _reference_staged(scores, y, classes):
    """Staged search by brute force: each pair on its own, then gamma with them fixed."""
    def pick(uas):  # best UA, then closest to 0.5, then smallest index
        return min(range(11), key=lambda i: (-round(uas[i], 12), abs(i - 5), i))

    names = np.asarray(classes)
    ua_a = [balanced_accuracy_score(y, names[fuse(scores, "left+right", {"alpha": w}).argmax(1)])
            for w in GRID]
    ua_b = [balanced_accuracy_score(y, names[fuse(scores, "mid+side", {"beta": w}).argmax(1)])
            for w in GRID]
    a, b = GRID[pick(ua_a)], GRID[pick(ua_b)]
    ua_g = [balanced_accuracy_score(y, names[fuse(scores, "left+right+mid+side",
                                                  {"alpha": a, "beta": b, "gamma": g}).argmax(1)])
            for g in GRID]
    ig = pick(ua_g)
    return {"alpha": a, "beta": b, "gamma": GRID[ig]}, ua_g[ig]


@pytest.mark.parametrize("seed", [3, 8])
def test_staged_search_matches_brute_force_reference(seed):
    scores, y, classes = _random_four_view(seed)
    weights, ua = select_weights(scores, y, "left+right+mid+side", classes, search="staged")
    ref_weights, ref_ua = _reference_staged(scores, y, classes)
    assert weights == ref_weights
    assert ua == pytest.approx(ref_ua, abs=1e-12)
    assert select_weights(scores, y, "left+right+mid+side", classes) == (weights, ua)  # default


def _staged_differs_from_joint():
    """Left+right alone is best at any alpha >= 0.3 (one joy error), which ties to 0.5; but the
    mid+side views rescue utterances 0 and 1 at alpha <= 0.2, where left+right gets utterance 2
    right, so only the joint search reaches UA 1. Mid and side are identical (beta ties to 0.5)
    and undecided on utterance 2 (the arg-max tie goes to anger: wrong)."""
    # left+right difference: dR + a*(dL - dR) = -0.1 + 0.4a for utterances 0 and 2 (> 0 iff
    # a > 0.25), the mirror image for utterance 1
    left = _two_class([0.3, -0.3, 0.3])
    right = _two_class([-0.1, 0.1, -0.1])
    mid = _two_class([0.8, -0.8, 0.0])
    return {"left": left, "right": right, "mid": mid, "side": mid.copy()}, ["anger", "joy", "joy"]


def test_staged_and_joint_searches_differ():
    scores, y = _staged_differs_from_joint()
    staged, staged_ua = select_weights(scores, y, "left+right+mid+side", CLASSES, search="staged")
    pair_a, _ = select_weights(scores, y, "left+right", CLASSES)
    pair_b, _ = select_weights(scores, y, "mid+side", CLASSES)
    assert pair_a == {"alpha": 0.5} and pair_b == {"beta": 0.5}
    assert staged == {**pair_a, **pair_b, "gamma": 0.5} and staged_ua == pytest.approx(0.75)
    joint, joint_ua = select_weights(scores, y, "left+right+mid+side", CLASSES, search="joint")
    assert joint == {"alpha": 0.2, "beta": 0.5, "gamma": 0.5} and joint_ua == 1.0
    assert (joint["alpha"], joint["beta"]) != (staged["alpha"], staged["beta"])
    assert select_weights(scores, y, "left+right+mid+side", CLASSES) == (staged, staged_ua)
    for weights, ua in ((staged, staged_ua), (joint, joint_ua)):   # UA at the chosen weights
        pred = np.asarray(CLASSES)[fuse(scores, "left+right+mid+side", weights).argmax(1)]
        assert balanced_accuracy_score(y, pred) == pytest.approx(ua, abs=1e-12)


def test_staged_gamma_ties_restricted_to_gamma():
    # alpha = 0.3 is perfect alone; mid/side are flat, so gamma = 0 (mid/side only) misses the
    # joy utterance and every gamma > 0 is perfect: the tie goes to 0.5
    left, right, y = _planted_pair()
    flat = np.full_like(left, 0.5)
    scores = {"left": left, "right": right, "mid": flat, "side": flat}
    assert select_weights(scores, y, "left+right+mid+side", CLASSES, search="staged") == (
        {"alpha": 0.3, "beta": 0.5, "gamma": 0.5}, 1.0)
    # left = right are wrong on the joy utterance at every alpha (alpha ties to 0.5), mid = side
    # are right on both; joy is right iff g*0.11 + (1-g)*(-0.09) < 0 <=> g < 0.45: the perfect
    # gammas are 0.0..0.4 and the tie goes to the one closest to 0.5, not the smallest
    both = _two_class([0.5, 0.11])
    ms = _two_class([0.4, -0.09])
    scores = {"left": both, "right": both.copy(), "mid": ms, "side": ms.copy()}
    weights, ua = select_weights(scores, y, "left+right+mid+side", CLASSES, search="staged")
    assert weights == {"alpha": 0.5, "beta": 0.5, "gamma": 0.4} and ua == 1.0


@pytest.mark.parametrize("fusion", ["left+right", "mid+side"])
def test_two_view_searches_identical(fusion):
    scores, y, classes = _random_four_view(5)
    assert SEARCHES == ("staged", "joint")
    staged = select_weights(scores, y, fusion, classes, search="staged")
    assert staged == select_weights(scores, y, fusion, classes, search="joint")
    assert staged == select_weights(scores, y, fusion, classes)


def test_unknown_search():
    left, right, y = _planted_pair()
    with pytest.raises(ConfigError, match="search"):
        select_weights({"left": left, "right": right}, y, "left+right", CLASSES, search="greedy")


def test_bad_inputs():
    left, right, y = _planted_pair()
    with pytest.raises(ConfigError, match="unknown fusion"):
        fuse({"left": left}, "left+mono", {"alpha": 0.5})
    with pytest.raises(ConfigError, match="right"):
        select_weights({"left": left}, y, "left+right", CLASSES)
    with pytest.raises(ConfigError, match="gamma"):
        fuse({"left": left, "right": right, "mid": left, "side": right}, "left+right+mid+side",
             {"alpha": 0.5, "beta": 0.5})
    with pytest.raises(ConfigError, match="surprise"):
        select_weights({"left": left, "right": right}, ["anger", "surprise"], "left+right", CLASSES)


# ----------------------------------------------------------------------------- rules as data


@pytest.fixture
def left_mono_rule():
    """A test-only rule added in one place, the table: ``s = d*left + (1-d)*mono``."""
    from binser.fusion import FusionRule, Stage, register_fusion, unregister_fusion

    rule = register_fusion(FusionRule("left+mono", "Left, Mono",
                                      (Stage("s", "delta", "left", "mono", "δ"),)))
    yield rule.name
    unregister_fusion(rule.name)


def test_a_rule_added_to_the_table_reaches_fuse_search_and_report(left_mono_rule):
    from binser.report import build_blocks
    from binser.results import validate_results

    left, mono, y = _planted_pair()          # only a weight of 0.3 gets both right
    scores = {"left": left, "mono": mono}
    assert FUSIONS[left_mono_rule] == ("left", "mono")
    np.testing.assert_allclose(fuse(scores, left_mono_rule, {"delta": 0.25}),
                               0.25 * left + 0.75 * mono)
    assert select_weights(scores, y, left_mono_rule, CLASSES) == ({"delta": 0.3}, 1.0)
    run = {"ua": 1.0, "wa": 1.0, "macro_f1": 1.0, "fold_ua": [1.0], "confusion": [[1, 0], [0, 1]],
           "weights": {"delta": 0.3}}
    results = {"dataset": "t", "protocol": "loso", "classes": CLASSES, "n_utterances": 2,
               "backbone": "b", "mode": "frozen",
               "runs": [{**run, "name": "score-fusion/left+mono", "selection": "nested"},
                        {**run, "name": "feature-fusion/left+mono"}]}
    assert validate_results(results) == []
    tables = [b for b in build_blocks(results, {}) if b[0] == "table"]
    rows = [row for table in tables for row in table[2] if row[0] == "Left, Mono"]
    assert len(rows) == 2 and "δ=0.3" in rows[0]     # score- and feature-fusion tables


def _three_view_rule(register_fusion, FusionRule, Stage):
    """Two stages over three views with a non-convex combine: p*x + (1-p)**2 * y."""
    return register_fusion(FusionRule(
        "lr-then-mid", "L/R then Mid",
        (Stage("t", "p", "left", "right"), Stage("u", "q", "t", "mid")),
        combine=lambda w, x, y: w * x + (1 - w) ** 2 * y))


@pytest.mark.parametrize("search", SEARCHES)
def test_a_new_two_stage_rule_matches_brute_force(search):
    from binser.fusion import FusionRule, Stage, register_fusion, unregister_fusion

    rule = _three_view_rule(register_fusion, FusionRule, Stage)
    try:
        scores, y, classes = _random_four_view(11)
        names = np.asarray(classes)

        def ua_at(**w):
            return balanced_accuracy_score(y, names[fuse(scores, rule.name, w).argmax(1)])

        def key(w, ua):   # best UA, then closest to equal weights, then smallest
            return (-round(ua, 12), sum(abs(round(v * 10) - 5) for v in w.values()),
                    tuple(w.values()))

        if search == "joint":
            grid = [{"p": p, "q": q} for p in GRID for q in GRID]
            expected = min(((w, ua_at(**w)) for w in grid), key=lambda c: key(*c))
        else:
            pred_t = {p: balanced_accuracy_score(y, names[(p * scores["left"] + (1 - p) ** 2
                                                          * scores["right"]).argmax(1)])
                      for p in GRID}
            p = min(GRID, key=lambda v: key({"p": v}, pred_t[v]))
            expected = min((({"p": p, "q": q}, ua_at(p=p, q=q)) for q in GRID),
                           key=lambda c: key({"q": c[0]["q"]}, c[1]))
        weights, ua = select_weights(scores, y, rule.name, classes, search=search)
        assert weights == expected[0] and ua == pytest.approx(expected[1], abs=1e-12)
    finally:
        unregister_fusion(rule.name)


def test_malformed_rules_are_refused():
    from binser.fusion import FusionRule, Stage, register_fusion

    with pytest.raises(ConfigError, match="already exists"):
        register_fusion(FusionRule("left+right", "x", (Stage("s", "w", "left", "right"),)))
    with pytest.raises(ConfigError, match="before"):
        register_fusion(FusionRule("bad", "x", (Stage("a", "w", "b", "left"),
                                                Stage("b", "v", "a", "right"))))


def test_weights_are_shown_as_lambda_but_keyed_gamma():
    from binser.fusion import describe_weights, weight_symbols

    scores, y, classes = _random_four_view(3)
    weights, _ = select_weights(scores, y, "left+right+mid+side", classes)
    assert list(weights) == ["alpha", "beta", "gamma"]             # results.json keys kept
    assert describe_weights({"alpha": 0.3, "beta": 0.5, "gamma": 0.4}) == \
        "alpha=0.3, beta=0.5, lambda=0.4"
    assert weight_symbols() == {"alpha": "α", "beta": "β", "gamma": "λ",
                                "eta": "η"}   # eta: the added views' stage (M20)
