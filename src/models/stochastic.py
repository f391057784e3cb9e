"""Training randomness that a resumed run repeats: draws that are a function of (seed, global
step, layer, element), not of a kernel's hidden state.

MindSpore 2.10's random kernels cannot be resumed on CPU. ``Dropout``, ``UniformReal``
(``ops.rand``) and ``StandardNormal`` take their seed as a primitive attribute and keep a draw
counter inside the kernel, which a new process restarts and no API sets. The ops that take
(seed, offset) as inputs from ``mindspore.default_generator`` (``mint.rand``,
``mint.nn.functional.dropout``, ``Dropout2dExt`` ...; the generator's seed and offset are
Parameters whose state ``get_rng_state`` returns) are documented for Ascend only and have no
CPU kernel in 2.10 (``DropoutExt``/``UniformExt``: "kernel unregistered", ``mint.rand``:
"Create kernelmod for op InplaceUniform failed"); the CPU ops with tensor seeds
(``MultinomialWithReplacement``, ``Randperm``) are documented for CPU only.

So the draws here are computed by a counter-based generator of the Philox kind (the
generator family of MindSpore's and PyTorch's own device kernels) in ordinary integer ops that
MindSpore documents for Ascend, GPU and CPU (int32 ``Mul``, ``FloorDiv``, ``BitwiseAnd``,
``BitwiseXor``, ``Range``): a 10-round Feistel network over 2 x 16-bit words (the element's
index), keyed per round with 16 bits. Each product is a 16-bit word times a 15-bit odd
multiplier, so no int32 operation overflows and every backend computes the same bits. The
round keys are the training step's key xor the layer's stream constant (its position among
the network's random layers, ``number_streams``). The step's key is the same generator's
output at counters ``10 * global_step + r`` under the seed's constants (``step_key_of``); the
trainer's step cell derives it on the device from its iteration counter before each step,
so a sink of several steps draws per step too. The top 24 bits of the output word pair make
a float32 uniform in [0, 1).

The key lives in one Parameter outside every Cell (``STEP_KEY``: process-wide, like
MindSpore's and PyTorch's default generators), so it is no network weight and in no
checkpoint; the training step writes it, the random layers read it.

A network run in training mode outside the trainer draws from the key last set (the same
masks on every call until ``set_step`` is called again).

Cost: ~55 int32 elementwise ops per drawn value. Negligible for DropPath (``[B]`` draws) and
Dropout2d (``[B, C]``); for element-wise dropout it is not, which matters for recipes with
element-wise dropout (Segmenter's ``decoder_dropout``): ``benchmarks/bench_dropout.py``
measures it, docs/performance.md has the numbers.
"""
import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

ROUNDS = 10
# odd multipliers below 2 ** 15: a 16-bit word times one stays below 2 ** 31
MULTIPLIERS = (0x7A4F, 0x5D2B, 0x6C8D, 0x4B57, 0x79E3, 0x56A9, 0x63C5, 0x4E1B, 0x7B33, 0x5A6F)
WORD = 65536


@ms.jit_class
class StepKey:
    """The round keys of the current training step: a Parameter outside every Cell (not a
    network weight, not in any checkpoint), read by the compiled graphs."""

    def __init__(self):
        self.key = Parameter(Tensor(np.zeros(ROUNDS, np.int32)), name="stochastic_step_key",
                             requires_grad=False)


STEP_KEY = StepKey()


def seed_constants(seed):
    """16-bit per-round constants of a run's seed (the round keys that make its step keys)."""
    state = np.random.SeedSequence([0x5EED5EED, int(seed) & 0xFFFFFFFF]).generate_state(ROUNDS)
    return (state & 0xFFFF).astype(np.int32)


def stream_constants(stream):
    """16-bit per-round constants of random layer number ``stream``."""
    state = np.random.SeedSequence([0x5EED, int(stream)]).generate_state(ROUNDS)
    return (state & 0xFFFF).astype(np.int32)


def _rounds(counter, keys):
    """The generator's 10 rounds on int32 ``counter`` values (< 2 ** 31) with 16-bit round
    ``keys``: the output word pair ``(a, b)``, 16 bits each."""
    # Philox's round on words (a, b): (a, b) <- (hi(M a) ^ key ^ b, lo(M a)); a bijection
    # (M is odd, so lo(M a) gives a back), the counter's words start as (low, high)
    a = ops.bitwise_and(counter, WORD - 1)
    b = ops.floor_divide(counter, WORD)
    for r in range(ROUNDS):
        product = a * MULTIPLIERS[r]
        a, b = (ops.bitwise_xor(ops.bitwise_xor(ops.floor_divide(product, WORD), keys[r]), b),
                ops.bitwise_and(product, WORD - 1))
    return a, b


def step_key_of(global_step, seed_key):
    """The round keys of training step ``global_step`` (an int32 scalar Tensor; < 2 ** 31 / 10)
    of the run whose ``seed_constants`` are ``seed_key``: the generator's first words at
    counters ``10 * step + r``. Graph code: the trainer's step cell derives each step's key
    on the device (``ScheduledTrainStep``), also within a sink of several steps."""
    counter = global_step * ROUNDS + ops.arange(0, ROUNDS, 1, dtype=ms.int32)
    return _rounds(counter, seed_key)[0]


def step_key(seed, step):
    """The round keys of training step ``step`` of a run with seed ``seed`` (host side)."""
    return step_key_of(Tensor(int(step), ms.int32), Tensor(seed_constants(seed))).asnumpy()


def set_step(seed, step):
    """Make the next draws those of global step ``step`` (0-based) of a run seeded ``seed``
    (for a network run in training mode outside the trainer)."""
    STEP_KEY.key.set_data(Tensor(step_key(seed, step)))


def uniform(shape, stream_key):
    """float32 uniforms in [0, 1) of ``shape`` (static), multiples of 2 ** -24, for the layer
    whose stream constants are ``stream_key`` (an int32 ``[ROUNDS]`` Tensor)."""
    count = 1
    for size in shape:
        count *= size
    keys = ops.bitwise_xor(STEP_KEY.key, stream_key)
    a, b = _rounds(ops.arange(0, count, 1, dtype=ms.int32), keys)
    bits = a * 256 + ops.floor_divide(b, 256)   # 24 of the 32 bits
    return (bits.astype(ms.float32) * (2.0 ** -24)).reshape(shape)


_NEXT_STREAM = [0]


class StochasticCell(nn.Cell):
    """A layer that draws: holds its stream constants (a Tensor, not a Parameter). Its draws
    within one step depend on the shape only, so a network uses one instance per call site
    (an instance called twice in a step would draw the same mask twice)."""

    def __init__(self):
        super().__init__()
        self.set_stream(_NEXT_STREAM[0])
        _NEXT_STREAM[0] += 1

    def set_stream(self, stream):
        self.stream = int(stream)
        self.stream_key = Tensor(stream_constants(stream))

    def keep_mask(self, shape, keep_prob):
        """float32 0/1 of ``shape``: 1 with probability ``keep_prob``."""
        return (uniform(shape, self.stream_key) < keep_prob).astype(ms.float32)


def number_streams(net):
    """Number the random layers of ``net`` 0, 1, ... in cell order, so the draws of a layer
    depend on its place in the network, not on what else the process built before."""
    cells = [cell for _, cell in net.cells_and_names() if isinstance(cell, StochasticCell)]
    for index, cell in enumerate(cells):
        cell.set_stream(index)
    return len(cells)


class Dropout(StochasticCell):
    """``nn.Dropout(p)``: each element zeroed with probability ``p``, the rest scaled by
    ``1 / (1 - p)``; identity at eval or ``p == 0``."""

    def __init__(self, p=0.5):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p = float(p)
        self.keep_prob = 1.0 - self.p

    def construct(self, x):
        if not self.training or self.p == 0.0:
            return x
        scale = self.keep_mask(x.shape, self.keep_prob) * (1.0 / self.keep_prob)
        return x * scale.astype(x.dtype)


class Dropout2d(Dropout):
    """``nn.Dropout2d(p)`` on ``[B, C, H, W]``: whole channels of each image zeroed with
    probability ``p``, the rest scaled by ``1 / (1 - p)``. The ``[B, C]`` factor is tiled to
    the input's shape (MindSpore 2.10's CPU broadcasting Mul keeps 16 B per output element)."""

    def construct(self, x):
        if not self.training or self.p == 0.0:
            return x
        scale = self.keep_mask(x.shape[:2] + (1, 1), self.keep_prob) * (1.0 / self.keep_prob)
        return x * ops.tile(scale.astype(x.dtype), (1, 1) + x.shape[2:])
