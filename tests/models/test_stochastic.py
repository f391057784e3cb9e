"""Dropout and stochastic depth draws (src/models/stochastic.py): a function of (seed, global
step, layer, element) computed by a counter-based generator in integer ops, the same bits in
GRAPH and PYNATIVE mode, on both kernel backends, in any process."""
import numpy as np
import pytest
import mindspore as ms

from src.models import stochastic
from src.models.backends import load_backend


def numpy_rounds(counter, keys):
    """An independent NumPy statement of the generator (Philox's round on 16-bit words)."""
    counter = np.asarray(counter, dtype=np.int64)
    a, b = counter & 0xFFFF, counter >> 16
    for r, multiplier in enumerate(stochastic.MULTIPLIERS):
        product = a * multiplier
        assert product.max() < 2 ** 31            # int32 never overflows
        a, b = (product >> 16) ^ int(keys[r]) ^ b, product & 0xFFFF
    return a, b


def numpy_step_key(seed, step):
    """Step ``step``'s round keys: the generator's first words at counters 10 * step + r under
    the seed's constants."""
    return numpy_rounds(10 * step + np.arange(10), stochastic.seed_constants(seed))[0]


def numpy_uniform(count, seed, step, stream):
    keys = numpy_step_key(seed, step) ^ stochastic.stream_constants(stream).astype(np.int64)
    a, b = numpy_rounds(np.arange(count), keys)
    return ((a << 8) | (b >> 8)).astype(np.float32) / np.float32(2 ** 24)


def test_step_keys_are_the_generator_at_the_step_counters():
    for seed, step in [(0, 0), (11, 7), (123, 159999)]:
        np.testing.assert_array_equal(stochastic.step_key(seed, step), numpy_step_key(seed, step))
    assert len({stochastic.step_key(1, step).tobytes() for step in range(50)}) == 50


def in_mode(mode, fn):
    old = ms.get_context("mode")
    ms.set_context(mode=mode)
    try:
        return fn()
    finally:
        ms.set_context(mode=old)


@pytest.mark.parametrize("mode", [ms.PYNATIVE_MODE, ms.GRAPH_MODE])
def test_uniform_is_the_counter_based_generator_bit_for_bit(mode):
    stochastic.set_step(seed=11, step=7)

    class Draw(ms.nn.Cell):
        def construct(self, key):
            return stochastic.uniform((3, 5, 7), key)

    key = ms.Tensor(stochastic.stream_constants(4))
    got = in_mode(mode, lambda: Draw()(key).asnumpy())
    np.testing.assert_array_equal(got, numpy_uniform(105, 11, 7, 4).reshape(3, 5, 7))
    # and it looks uniform: 2 ** 20 draws, mean, variance, deciles, neighbours uncorrelated
    many = numpy_uniform(1 << 20, 11, 7, 4)
    assert abs(many.mean() - 0.5) < 0.002 and abs(many.var() - 1 / 12) < 0.001
    assert np.abs(np.histogram(many, 10, (0, 1))[0] / many.size - 0.1).max() < 0.002
    assert abs(np.corrcoef(many[:-1], many[1:])[0, 1]) < 0.005


@pytest.mark.parametrize("mode", [ms.PYNATIVE_MODE, ms.GRAPH_MODE])
def test_masks_are_a_function_of_seed_step_and_layer(kernel_backend, mode):
    backend = load_backend(kernel_backend)
    layers = [backend.DropPath(0.5), backend.DropPath(0.5), stochastic.Dropout(0.5)]
    net = ms.nn.SequentialCell(layers)
    assert stochastic.number_streams(net) == 3
    assert [layer.stream for layer in layers] == [0, 1, 2]
    x = ms.Tensor(np.ones((64, 2, 3), np.float32))

    def draws(seed, step):
        stochastic.set_step(seed, step)
        return [(layer(x).asnumpy() > 0) for layer in layers]

    def run():
        for layer in layers:
            layer.set_train(True)
        return draws(5, 3), draws(5, 4), draws(5, 3), draws(6, 3)

    at3, at4, again, other_seed = in_mode(mode, run)
    for first, second in zip(at3, again):
        np.testing.assert_array_equal(first, second)             # same seed and step
    for first, second, third in zip(at3, at4, other_seed):
        assert (first != second).any() and (first != third).any()
    assert (at3[0] != at3[1]).any()                                # layers draw apart
    # DropPath keeps whole samples, with the generator's bits
    keep = numpy_uniform(64, 5, 3, 0) < 0.5
    np.testing.assert_array_equal(at3[0], np.broadcast_to(keep[:, None, None], x.shape))
    np.testing.assert_array_equal(at3[2], (numpy_uniform(384, 5, 3, 2) < 0.5).reshape(x.shape))


@pytest.mark.parametrize("mode", [ms.PYNATIVE_MODE, ms.GRAPH_MODE])
def test_dropout_scales_and_is_identity_at_eval(mode):
    drop, drop2d = stochastic.Dropout(0.25), stochastic.Dropout2d(0.25)
    x = ms.Tensor(np.ones((8, 300, 2, 3), np.float32))
    stochastic.set_step(0, 1)

    def run():
        drop.set_train(True)
        drop2d.set_train(True)
        out = drop(x).asnumpy(), drop2d(x).asnumpy(), drop2d(x.astype(ms.float16))
        drop.set_train(False)
        drop2d.set_train(False)
        return out + (drop(x).asnumpy(), drop2d(x).asnumpy())

    out, out2d, half, evaluated, evaluated2d = in_mode(mode, run)
    assert set(np.unique(out).tolist()) == {0.0, np.float32(1 / 0.75)}
    assert abs((out > 0).mean() - 0.75) < 0.01
    channels = out2d.reshape(8, 300, -1)
    assert (channels == channels[:, :, :1]).all()                 # whole channels
    assert abs((channels[:, :, 0] > 0).mean() - 0.75) < 0.03
    assert half.dtype == ms.float16
    np.testing.assert_array_equal(evaluated, x.asnumpy())
    np.testing.assert_array_equal(evaluated2d, x.asnumpy())
