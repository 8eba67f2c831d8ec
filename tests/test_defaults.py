"""The rule for defaults (binser.defaults): switches justified by outer test UA are refused
or flagged exploratory; inner-CV evidence is read from results.json and must favour the new
value."""
from __future__ import annotations

import numpy as np
import pytest

from binser.defaults import (CURRENT_DEFAULTS, DefaultChoiceError, audit_defaults,
                             check_default_choice, layer_inner_scores)
from binser.errors import ConfigError


def _results(scores_by_view):
    """results.json with fold_layer_scores: {view: [{layer: inner UA} per fold]}."""
    runs = [{"name": f"{v}/stats", "fold_layer_scores": folds}
            for v, folds in scores_by_view.items()]
    runs.append({"name": "speaker-norm:left/stats",          # not plain: never read
                 "fold_layer_scores": [{"3": 0.0, "4": 1.0}] * 2})
    return {"fusion_pooling": "stats", "runs": runs}


RESULTS = _results({
    "left": [{"3": 0.56, "4": 0.52}, {"3": 0.54, "4": 0.53}],
    "right": [{"3": 0.55, "4": 0.54}, {"3": 0.50, "4": 0.55}],
})


def test_a_switch_made_on_outer_test_ua_is_refused_or_flagged():
    with pytest.raises(DefaultChoiceError, match="outer test UA, which the rule forbids"):
        check_default_choice("layer", "auto", 4, "outer-test")
    flagged = check_default_choice("layer", "auto", 4, "outer-test", exploratory=True)
    assert flagged["status"] == "exploratory" and "exploratory" in flagged["reason"]


def test_layer_evidence_is_read_from_results_by_hand():
    scores = layer_inner_scores(RESULTS)
    assert scores["3"] == pytest.approx([(0.56 + 0.55) / 2, (0.54 + 0.50) / 2])
    assert scores["4"] == pytest.approx([(0.52 + 0.54) / 2, (0.53 + 0.55) / 2])
    assert scores["auto"] == pytest.approx([(0.56 + 0.55) / 2, (0.54 + 0.55) / 2])
    with pytest.raises(ConfigError, match="--layer auto"):
        layer_inner_scores({"runs": [{"name": "left/stats"}]})


def test_inner_evidence_accepts_refuses_and_flags_a_selection_policy():
    ok = check_default_choice("layer", 3, 4, "inner-cv", inner_scores={"3": [0.6, 0.55],
                                                                        "4": [0.5, 0.56]})
    assert ok["status"] == "accepted" and ok["inner_cv"]["folds_new_better"] == 1
    assert ok["inner_cv"]["mean_new"] == pytest.approx(0.575)
    # layer 3 has the higher mean (0.5375 vs 0.535) though layer 4 wins fold 2
    assert check_default_choice("layer", 3, 4, "inner-cv", results=RESULTS)["status"] == \
        "accepted"
    with pytest.raises(DefaultChoiceError, match="not supported by the inner evidence"):
        check_default_choice("layer", 4, 3, "inner-cv", results=RESULTS)
    auto = check_default_choice("layer", "auto", 4, "inner-cv", results=RESULTS)
    assert auto["status"] == "exploratory" and "optimistic" in auto["reason"]
    with pytest.raises(ConfigError, match="no inner-CV scores for 7"):
        check_default_choice("layer", 7, 4, "inner-cv", results=RESULTS)
    with pytest.raises(ConfigError, match="needs its source"):
        check_default_choice("pooling", "stats", "block-max", "a-priori")
    with pytest.raises(ConfigError, match="unknown evidence"):
        check_default_choice("pooling", "stats", "block-max", "test-ua")


def test_current_defaults_state_how_they_were_chosen():
    audit = {a["setting"]: a for a in audit_defaults()}
    assert set(audit) == {d.setting for d in CURRENT_DEFAULTS}
    assert audit["layer"]["status"] == "accepted"             # layer 3, nested inner CV
    assert audit["layer"]["inner_cv"]["folds_new_better"] == 5
    assert audit["backbone"]["status"] == "exploratory"
    assert audit["classifier"]["status"] == audit["fusion"]["status"] == "accepted"


def test_nested_layer_policy_scores_never_read_the_outer_test_rows_and_score_policies_honestly():
    """Layer 0 carries the class, layer 1 is noise. Every candidate is scored inside the outer
    training speakers only (planting a label oracle into the outer test rows of the noise
    layer changes nothing), `auto` finds layer 0 in every inner split, so its nested score
    equals fixed layer 0's and beats fixed layer 1's."""
    from binser.defaults import nested_layer_policy_scores
    from binser.evaluation import folds

    rng = np.random.default_rng(0)
    n, k = 96, 3
    y = np.tile(np.arange(k), n // k)
    groups = np.repeat([f"s{i}" for i in range(6)], n // 6)
    signal = rng.normal(size=(n, 6)) + 2.5 * np.eye(k, 6)[y]
    noise = rng.normal(size=(n, 6))
    fold_list = folds(list(groups), "loso")[:2]
    leaked = noise.copy()
    leaked[fold_list[0][1], :k] = 40.0 * np.eye(k)[y[fold_list[0][1]]]
    a = nested_layer_policy_scores({0: signal, 1: noise}, y, groups, fold_list, fixed=(0, 1))
    b = nested_layer_policy_scores({0: signal, 1: leaked}, y, groups, fold_list, fixed=(0, 1))
    assert a["1"][0] == b["1"][0] and a["auto"] == b["auto"]      # outer test rows unread
    assert set(a) == {"0", "1", "auto", "auto-set"} and all(len(v) == 2 for v in a.values())
    assert a["auto"] == a["0"] and np.mean(a["0"]) > np.mean(a["1"]) + 0.3
    with pytest.raises(ConfigError):
        nested_layer_policy_scores({0: signal}, y, groups, fold_list, fixed=(5,))


def test_a_selection_policy_backed_by_nested_inner_cv_is_accepted():
    scores = {"auto": [0.56, 0.55], "3": [0.54, 0.53]}
    nested = check_default_choice("layer", "auto", "3", "nested-inner-cv", inner_scores=scores)
    plain = check_default_choice("layer", "auto", "3", "inner-cv", inner_scores=scores)
    assert nested["status"] == "accepted" and plain["status"] == "exploratory"
