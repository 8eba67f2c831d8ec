"""The trained head (binser.head): learns a toy problem, is deterministic for a seed, never
trains on test rows, and its out-of-fold scores never see the held-out speakers."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from binser.errors import BinserError, ConfigError  # noqa: E402
from binser.head import AttentiveStatsHead, fold_proba  # noqa: E402

FAST = dict(attention_dim=8, n_seeds=2, max_epochs=40, patience=6, lr=3e-2, batch_size=16)


def toy(n_speakers: int = 6, per_class: int = 4, d: int = 6, seed: int = 0):
    """Three classes; class c shifts dimension c of a random half of the frames by +3, so
    only some frames carry the label (what attention can pick out); each speaker adds its
    own offset to every frame."""
    rng = np.random.default_rng(seed)
    frames, y, groups = [], [], []
    for s in range(n_speakers):
        offset = rng.normal(scale=0.5, size=d)
        for c in range(3):
            for _ in range(per_class):
                x = rng.normal(size=(int(rng.integers(5, 15)), d)) + offset
                x[rng.random(len(x)) < 0.5, c] += 3.0
                frames.append(x.astype(np.float32))
                y.append(f"c{c}")
                groups.append(f"s{s}")
    return frames, np.array(y), np.array(groups)


@pytest.mark.parametrize("hidden", [0, 16])
def test_learns_a_separable_toy_problem_and_probabilities_are_calibrated_rows(hidden):
    frames, y, groups = toy()
    head = AttentiveStatsHead(**FAST, hidden=hidden).fit(frames, y, groups)
    new, y_new, _ = toy(n_speakers=2, seed=1)
    proba = head.predict_proba(new)
    assert proba.shape == (len(new), 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)
    assert np.mean(head.predict(new) == y_new) >= 0.9
    assert head.best_score_ >= 0.8 and len(head.members_) == 2
    assert list(head.classes_) == ["c0", "c1", "c2"]
    np.testing.assert_array_equal(head.decision_function(new).argmax(1), proba.argmax(1))


def test_deterministic_for_a_seed_and_the_seed_matters():
    frames, y, groups = toy()
    a = AttentiveStatsHead(**FAST, random_state=3).fit(frames, y, groups).predict_proba(frames)
    b = AttentiveStatsHead(**FAST, random_state=3).fit(frames, y, groups).predict_proba(frames)
    c = AttentiveStatsHead(**FAST, random_state=4).fit(frames, y, groups).predict_proba(frames)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_never_trains_on_test_rows():
    frames, y, groups = toy()
    test = np.flatnonzero(groups == "s5")
    train = np.flatnonzero(groups != "s5")
    proba, head = fold_proba(AttentiveStatsHead(**FAST), frames, y, groups, train, test)
    planted = list(frames)
    planted[test[0]] = planted[test[0]] * 0 + 100.0        # a wild test utterance
    y_planted = y.copy()
    y_planted[test[1]] = "c0" if y[test[1]] != "c0" else "c1"   # and a wrong test label
    proba2, head2 = fold_proba(AttentiveStatsHead(**FAST), planted, y_planted, groups, train,
                               test)
    np.testing.assert_array_equal(proba[1:], proba2[1:])
    assert not np.allclose(proba[0], proba2[0])             # the planted row itself moved
    for net, net2 in zip(head.members_, head2.members_):
        for (name, p), (_, p2) in zip(net.state_dict().items(), net2.state_dict().items()):
            np.testing.assert_array_equal(p.numpy(), p2.numpy(), err_msg=name)


def test_out_of_fold_scores_never_see_the_held_out_speakers():
    frames, y, groups = toy()
    head = AttentiveStatsHead(**{**FAST, "n_seeds": 1}, inner_splits=3)
    oof = head.oof_proba(frames, y, groups)
    np.testing.assert_allclose(oof.sum(axis=1), 1.0, atol=1e-12)
    # a planted change in one speaker's rows moves only the models trained on that speaker:
    # the other rows of its held-out part (GroupKFold(3) over 6 speakers: 2 per part) stay
    from binser.classifier import inner_splits
    codes = np.unique(y, return_inverse=True)[1]
    part = next(test for _, test in inner_splits(codes, groups, 3)[0] if "s0" in groups[test])
    planted = [x + 50.0 if g == "s0" else x for x, g in zip(frames, groups)]
    oof2 = head.oof_proba(planted, y, groups)
    others = part[groups[part] != "s0"]
    assert len(others) > 0
    np.testing.assert_array_equal(oof[others], oof2[others])
    outside = np.setdiff1d(np.arange(len(y)), part)
    assert not np.allclose(oof[outside], oof2[outside])


def test_bad_input_is_a_one_line_config_error():
    frames, y, groups = toy(n_speakers=2)
    with pytest.raises(BinserError, match="utterance 1"):
        AttentiveStatsHead(**FAST).fit([frames[0], np.zeros((0, 6))] + frames[2:], y, groups)
    with pytest.raises(ConfigError, match="labels"):
        AttentiveStatsHead(**FAST).fit(frames, y[:-1], groups)
    with pytest.raises(ConfigError, match="dropout"):
        AttentiveStatsHead(dropout=1.5).fit(frames, y, groups)
    with pytest.raises(ConfigError, match="not fitted"):
        AttentiveStatsHead().predict(frames)
    bad = list(frames)
    bad[2] = bad[2].copy()
    bad[2][0, 0] = np.nan
    with pytest.raises(ConfigError, match="utterance 2: frames contain NaN"):
        AttentiveStatsHead(**FAST).fit(bad, y, groups)
    head = AttentiveStatsHead(**FAST).fit(frames, y, groups)
    with pytest.raises(BinserError, match="expected 6"):
        head.predict_proba([np.zeros((3, 5))])


def test_epoch_batches_cover_every_row_once_and_never_hold_a_single_row():
    from binser.head import _length_batches

    frames = [np.zeros((n, 2)) for n in np.random.default_rng(0).integers(1, 50, size=300)]
    rows = np.arange(3, 260)                               # 257 rows: 16 * 16 + 1
    batches = _length_batches(frames, rows, 16, np.random.default_rng(1))
    np.testing.assert_array_equal(np.sort(np.concatenate(batches)), rows)
    assert min(len(b) for b in batches) >= 2 and max(len(b) for b in batches) == 17
    # within a batch the lengths are close: sorted chunks of 8 batches
    spread = np.mean([np.ptp([len(frames[i]) for i in b]) for b in batches])
    assert spread < 15


def test_heldout_probabilities_cover_every_training_row_from_the_member_that_held_it_out():
    """With as many members as validation splits, every training row is scored exactly once,
    by the member early-stopped on it: rows of a split equal that member's calibrated
    probabilities; they are probabilities (rows sum to 1)."""
    from scipy.special import softmax

    from binser.head import AttentiveStatsHead, _logits

    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(3), 12)
    groups = np.tile(np.arange(6), 6)
    frames = [rng.normal(size=(5 + i % 4, 4)) + y[i] for i in range(len(y))]
    head = AttentiveStatsHead(n_seeds=3, val_splits=3, max_epochs=3, random_state=0).fit(
        frames, y, groups)
    held = head.heldout_oof_proba()
    assert held.shape == (36, 3) and np.isfinite(held).all()
    np.testing.assert_allclose(held.sum(axis=1), 1.0, atol=1e-9)
    from binser.classifier import inner_splits

    splits, _ = inner_splits(y, groups, 3, 0)
    _, val = splits[1]
    z = _logits(head.members_[1], frames, val, 16)
    np.testing.assert_allclose(held[val], softmax(head.temperatures_[1] * z, axis=1), atol=1e-6)
