"""Pooling: hand-computed tiny cases of global and block-based temporal pooling (eqs. 3-7)."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone

from binser.errors import BinserError, ConfigError
from binser.pooling import (
    POOLINGS,
    BlockTemporalPooling,
    GlobalPooling,
    block_bounds,
    make_pooling,
    temporal_delta,
)

# 4 segments x 2 dimensions, integer values so every expected number is exact.
X4 = np.array([[1, 8], [4, 2], [3, 6], [0, 5]], dtype=np.float32)
# dX by hand: (X[t+1]-X[t-1])/2 with X[-1]:=X[0], X[4]:=X[3]
DX4 = np.array([[1.5, -3], [1, -1], [-2, 1.5], [-1.5, -0.5]])
X3 = np.array([[1, 2], [5, 0], [3, 7]], dtype=np.float32)
DX3 = np.array([[2, -1], [1, 2.5], [-1, 3.5]])


def test_temporal_delta_by_hand():
    np.testing.assert_allclose(temporal_delta(X4.astype(float)), DX4)
    np.testing.assert_allclose(temporal_delta(X3.astype(float)), DX3)
    np.testing.assert_array_equal(temporal_delta(np.array([[2.0, -1.0]])), [[0.0, 0.0]])


def test_global_pooling_by_hand():
    np.testing.assert_array_equal(GlobalPooling("max").fit_transform([X4]), [[4, 8]])
    np.testing.assert_array_equal(GlobalPooling("avg").fit_transform([X4]), [[2, 5.25]])


def test_block_pooling_l2_by_hand():
    out_max = BlockTemporalPooling("max", blocks=2).fit_transform([X4])
    np.testing.assert_array_equal(out_max, [[4, 8, 3, 6, 1.5, -1, -1.5, 1.5]])
    out_avg = BlockTemporalPooling("avg", blocks=2).fit_transform([X4])
    np.testing.assert_array_equal(out_avg, [[2.5, 5, 1.5, 5.5, 1.25, -2, -1.75, 0.5]])
    assert out_max.dtype == np.float32


def test_block_bounds_never_empty():
    assert block_bounds(4, 2) == [(0, 2), (2, 4)]
    assert block_bounds(3, 2) == [(0, 1), (1, 3)]
    assert block_bounds(1, 2) == [(0, 1), (0, 1)]
    assert block_bounds(3, 4) == [(0, 1), (0, 1), (1, 2), (2, 3)]
    for n in range(1, 12):
        for l in range(1, 8):
            bounds = block_bounds(n, l)
            assert len(bounds) == l and all(0 <= s < e <= n for s, e in bounds)


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_single_segment_fewer_than_blocks(kind):
    x1 = np.array([[2, -1]], dtype=np.float32)
    np.testing.assert_array_equal(BlockTemporalPooling(kind, blocks=2).transform([x1]),
                                  [[2, -1, 2, -1, 0, 0, 0, 0]])
    np.testing.assert_array_equal(BlockTemporalPooling(kind, blocks=4).transform([x1]),
                                  [[2, -1] * 4 + [0] * 8])


def test_three_segments_two_and_four_blocks():
    np.testing.assert_array_equal(BlockTemporalPooling("max", blocks=2).transform([X3]),
                                  [[1, 2, 5, 7, 2, -1, 1, 3.5]])
    np.testing.assert_array_equal(BlockTemporalPooling("avg", blocks=2).transform([X3]),
                                  [[1, 2, 4, 3.5, 2, -1, 0, 3]])
    # l=4 > n=3: blocks are segments 0, 0, 1, 2 (single segments, so max == avg)
    expected = [[1, 2, 1, 2, 5, 0, 3, 7, 2, -1, 2, -1, 1, 2.5, -1, 3.5]]
    for kind in ("max", "avg"):
        np.testing.assert_array_equal(BlockTemporalPooling(kind, blocks=4).transform([X3]), expected)


def test_levels_order_and_size():
    out = BlockTemporalPooling("max", levels=2, blocks=7).transform([X4])
    assert out.shape == (1, 2 * 2 * 3)
    level1 = [4, 8, 1.5, 1.5]          # X max over all, dX max over all
    level2 = [4, 8, 3, 6, 1.5, -1, -1.5, 1.5]
    np.testing.assert_array_equal(out, [level1 + level2])
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((n, 5)) for n in (1, 2, 7, 30)]
    stacked = np.hstack([BlockTemporalPooling("avg", blocks=l).transform(xs) for l in (1, 2, 3)])
    np.testing.assert_allclose(BlockTemporalPooling("avg", levels=3).transform(xs), stacked, rtol=1e-6)


def test_empty_utterance_raises_with_position():
    with pytest.raises(ValueError, match="utterance 1"):
        BlockTemporalPooling().transform([X4, np.zeros((0, 2))])
    with pytest.raises(BinserError, match="utterance 2"):
        GlobalPooling().fit([X4, X3, np.zeros((0, 2))])


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="utterance 1.*feature size"):
        GlobalPooling().transform([X4, np.zeros((2, 3))])
    with pytest.raises(ValueError, match="2-D"):
        GlobalPooling().transform([np.zeros(4)])
    with pytest.raises(ConfigError):
        GlobalPooling("median").transform([X4])
    with pytest.raises(ConfigError):
        BlockTemporalPooling(blocks=0).transform([X4])
    fitted = GlobalPooling().fit([X4])
    with pytest.raises(ValueError, match="expected 2"):
        fitted.transform([np.zeros((3, 5))])


def test_random_shapes_and_reference_values():
    rng = np.random.default_rng(1)
    d = 6
    xs = [rng.standard_normal((n, d)).astype(np.float32) for n in rng.integers(1, 20, size=9)]
    assert GlobalPooling("avg").fit_transform(xs).shape == (9, d)
    np.testing.assert_allclose(GlobalPooling("max").transform(xs), np.stack([x.max(0) for x in xs]))
    np.testing.assert_allclose(GlobalPooling("avg").transform(xs),
                               np.stack([x.mean(0) for x in xs]), rtol=1e-5, atol=1e-6)
    for l in (1, 2, 3, 5):
        assert BlockTemporalPooling("max", blocks=l).transform(xs).shape == (9, 2 * l * d)
    assert BlockTemporalPooling("max", levels=3).transform(xs).shape == (9, 2 * d * 6)
    # l=1 max pooling equals global max of X followed by global max of dX (np.gradient interior)
    out = BlockTemporalPooling("max", blocks=1).transform(xs)
    np.testing.assert_allclose(out[:, :d], GlobalPooling("max").transform(xs))
    for i, x in enumerate(xs):
        if len(x) >= 2:
            grad = np.gradient(x.astype(float), axis=0)  # one-sided at edges: differs there
            grad[0], grad[-1] = (x[1] - x[0]) / 2, (x[-1] - x[-2]) / 2
            np.testing.assert_allclose(out[i, d:], grad.max(0), rtol=1e-5, atol=1e-6)


def test_make_pooling_and_clone():
    assert POOLINGS == ("global-max", "global-avg", "block-max", "block-avg", "stats",
                        "block-stats")
    assert isinstance(make_pooling("global-avg"), GlobalPooling)
    block = make_pooling("block-max", blocks=3)
    assert isinstance(block, BlockTemporalPooling) and block.kind == "max" and block.blocks == 3
    assert make_pooling("block-avg", levels=2).levels == 2
    assert clone(block).get_params() == block.get_params()
    with pytest.raises(ConfigError, match="unknown pooling"):
        make_pooling("block-median")


def test_stats_pooling_against_numpy_and_blocks():
    from binser.pooling import StatsPooling

    rng = np.random.default_rng(3)
    xs = [rng.normal(size=(n, 4)) for n in (1, 2, 7)]
    out = make_pooling("stats").fit_transform(xs)
    assert out.shape == (3, 8)
    for row, x in zip(out, xs):
        np.testing.assert_allclose(row, np.r_[x.mean(0), x.std(0)], rtol=1e-6, atol=1e-6)
    assert np.all(out[0, 4:] == 0)                       # one frame: no spread
    blocks = make_pooling("block-stats", blocks=2).fit_transform(xs)
    assert isinstance(make_pooling("block-stats"), StatsPooling) and blocks.shape == (3, 16)
    x = xs[2]                                            # 7 rows -> blocks [0, 3) and [3, 7)
    np.testing.assert_allclose(blocks[2], np.r_[x[:3].mean(0), x[:3].std(0), x[3:].mean(0),
                                                x[3:].std(0)], rtol=1e-6, atol=1e-6)


def test_pool_utterances_flags_views_without_frames():
    from binser.pooling import PoolingInputError, pool_utterances

    xs = [np.ones((3, 2)), np.zeros((0, 2)), np.full((2, 2), 2.0)]
    out, silent = pool_utterances(make_pooling("stats"), xs)
    assert silent.tolist() == [False, True, False]
    np.testing.assert_array_equal(out[1], 0)
    np.testing.assert_allclose(out[2], [2, 2, 0, 0])
    with pytest.raises(PoolingInputError, match="every utterance is empty"):
        pool_utterances(make_pooling("stats"), [np.zeros((0, 2))])


def test_absolute_block_pooling_follows_eqs_6_and_7():
    x = np.array([[1.0, -4.0], [-3.0, 2.0], [0.5, 0.0]])
    signed = BlockTemporalPooling("max", blocks=1).fit_transform([x])[0]
    absolute = BlockTemporalPooling("max", blocks=1, absolute=True).fit_transform([x])[0]
    dx = np.array([[-2.0, 3.0], [-0.25, 2.0], [1.75, -1.0]])    # (x[t+1] - x[t-1]) / 2, edges
    np.testing.assert_allclose(signed, np.r_[x.max(0), dx.max(0)])
    np.testing.assert_allclose(absolute, np.r_[np.abs(x).max(0), np.abs(dx).max(0)])
    assert make_pooling("block-avg", absolute=True).absolute is True
