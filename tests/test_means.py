"""Channel means (bias correction) against numpy on the same batches."""

import numpy as np
import pytest

from qonnx.calib.means import ChannelMean


def test_channel_mean_of_batches_of_different_sizes_is_numpy_mean_of_all():
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((2, 3, 4, 4)).astype(np.float32) + np.arange(3).reshape(1, 3, 1, 1),
               rng.standard_normal((1, 3, 6, 5)).astype(np.float32) * 2]
    means = ChannelMean()
    for batch in batches:
        means.update(batch)
    # Every value of channel c from both batches, pooled (not the mean of the two batch means):
    # 2·16 + 30 = 62 values per channel.
    pooled = np.concatenate([np.moveaxis(b, 1, 0).reshape(3, -1) for b in batches], axis=1)
    assert pooled.shape == (3, 62) and means.count == 62
    np.testing.assert_allclose(means.mean(), pooled.astype(np.float64).mean(axis=1), rtol=1e-12)  # float64 sums


def test_non_finite_values_count_as_zero():
    x = np.array([[[1.0, np.nan], [np.inf, 2.0]], [[-np.inf, 4.0], [3.0, 5.0]]], np.float32)  # [2, 2, 2]
    means = ChannelMean()
    means.update(x)
    # channel 0: 1, nan→0, -inf→0, 4 → 5 / 4; channel 1: inf→0, 2, 3, 5 → 10 / 4
    assert means.mean().tolist() == [1.25, 2.5] and means.count == 4


def test_sums_are_float64():
    # 1e8 + 1 - 1e8 is 0 in float32 and 1 in float64: mean 1/3 over three values
    means = ChannelMean()
    means.update(np.array([[1e8], [1.0], [-1e8]], np.float32))
    assert means.mean().tolist() == [pytest.approx(1 / 3, rel=1e-15)]


def test_inputs_without_channels_are_ignored():
    means = ChannelMean()
    assert means.mean() is None
    means.update(np.ones(5, np.float32))  # rank 1: no channel axis
    assert means.sums is None and means.count == 0 and means.mean() is None
    means.update(np.zeros((0, 3), np.float32))  # no rows: sums of zero, nothing counted
    assert means.mean() is None
    means.update(np.array([[1.0, 2.0, 3.0]], np.float32))
    means.update(np.ones((1, 4), np.float32))  # another channel count: not the same input
    assert means.mean().tolist() == [1.0, 2.0, 3.0] and means.count == 1
    means.update(np.array([[3.0, 2.0, 1.0]], np.float32))
    assert means.mean().tolist() == [2.0, 2.0, 2.0] and means.count == 2


def test_merged_shards_give_the_mean_of_all_batches():
    rng = np.random.default_rng(1)
    batches = [rng.standard_normal((1, 3, 4, 4)).astype(np.float32) + k for k in range(5)]
    whole, first, second = ChannelMean(), ChannelMean(), ChannelMean()
    for k, batch in enumerate(batches):
        whole.update(batch)
        (first if k < 2 else second).update(batch)
    first.merge(second)
    assert first.count == whole.count == 80
    np.testing.assert_allclose(first.mean(), whole.mean(), rtol=1e-12)  # float64 sums in another order


def test_merge_with_nothing_seen_and_into_nothing_seen():
    seen = ChannelMean()
    seen.update(np.ones((1, 2, 3), np.float32))
    seen.merge(ChannelMean())
    assert seen.mean().tolist() == [1.0, 1.0] and seen.count == 3
    empty = ChannelMean()
    empty.merge(seen)
    assert empty.mean().tolist() == [1.0, 1.0] and empty.count == 3
    seen.update(np.full((1, 2, 3), 4.0, np.float32))  # a copy was taken, not the other's array
    assert empty.mean().tolist() == [1.0, 1.0] and empty.sums is not seen.sums


def test_merge_ignores_another_channel_count():
    two, three = ChannelMean(), ChannelMean()
    two.update(np.ones((1, 2, 3), np.float32))
    three.update(np.ones((1, 3, 3), np.float32))
    two.merge(three)
    assert two.sums.tolist() == [3.0, 3.0] and two.count == 3


def test_to_dict_round_trips():
    means = ChannelMean()
    assert ChannelMean.from_dict(means.to_dict()).sums is None and ChannelMean.from_dict(means.to_dict()).count == 0
    means.update(np.arange(12, dtype=np.float32).reshape(2, 3, 2))
    again = ChannelMean.from_dict(means.to_dict())
    assert again.sums.dtype == np.float64 and again.sums.tolist() == means.sums.tolist() and again.count == means.count == 4
    assert means.to_dict() == {"sums": [14.0, 22.0, 30.0], "count": 4}
