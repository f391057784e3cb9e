"""MindSpore 2.10, PYNATIVE mode: a ``@jit`` function called with a Parameter and a
``mutable`` tuple keeps the Parameter it was first compiled with. Its compile-cache key
names a Parameter argument by ``id()`` (``mindspore/graph/api.py`` ``_get_parameter_ids``),
so once that Parameter is freed, a new Parameter that CPython puts at the same address
reuses the graph, which still reads the dead Parameter's value (``set_data`` on the new
one is not seen either). The control, the same function with a single tensor instead of the
tuple, reads the new Parameter correctly at a reused address.

``ms.amp.StaticLossScaler`` / ``DynamicLossScaler.unscale`` is such a function
(``amp._grad_unscale_map(self.scale_value, mutable(grads))``): a loss scaler built after
another one was freed may divide the gradients by the old scaler's scale. This is what made
tests/engine/test_amp.py's clipping check apply ~0.09x its update (1/1024 of the gradient,
then too small to be clipped: (1/1024) / (0.01/0.923) = 0.09) inside a long pytest process.

Run: ``python tools/repro/ms_jit_parameter_id_reuse.py`` (no repository imports, ~10 s on
CPU). Prints each case and exits 1 if the stale value was read, 0 if MindSpore is fixed.
"""
import gc

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, jit, mutable

ms.set_context(mode=ms.PYNATIVE_MODE)
ms.set_device("CPU")


@jit
def divide_tuple(scale, grads):
    return tuple(g / scale for g in grads)


@jit
def divide_tensor(scale, x):
    return x / scale


def ones():
    return Tensor(np.ones(3, np.float32))


def rounds(name, make_old, make_new, call, count=20):
    """``count`` times: an old Parameter-holder (scale 1024) computes ``call`` and is freed,
    then a new one (scale 1.0) does. Counts the new results that are not 1 (stale) and the
    ones an id()-keyed cache predicts: the new Parameter's address was first compiled with an
    old (1024) Parameter. Returns whether any result was stale."""
    print(name)
    first_at, wrong, predicted = {}, 0, 0
    for _ in range(count):
        old = make_old()
        call(old)
        first_at.setdefault(id(old), 1024.0)
        del old
        gc.collect()
        new = make_new()
        got = call(new)
        predicted += first_at.setdefault(id(new), 1.0) != 1.0
        if got != 1.0:
            wrong += 1
            if wrong == 1:
                new.set_data(Tensor(4.0, ms.float32))
                print(f"  a new Parameter 1.0 at a freed one's id(): x / 1.0 -> {got:.10g}; "
                      f"after its set_data(4.0): x / 4.0 -> {call(new):.10g}")
    print(f"  {count} rounds: new Parameter (1.0) gave x / 1024 in {wrong}; predicted "
          f"by id() alone (its address was first compiled with an old 1024 Parameter): "
          f"{predicted}\n  {'STALE values read' if wrong else 'ok'}")
    return wrong > 0


def first(values):
    return float(values[0].asnumpy()[0])


def parameter(value):
    return Parameter(Tensor(value, ms.float32), name="scale_value")


def main():
    print(f"MindSpore {ms.__version__}, PYNATIVE mode")
    rounds("@jit f(parameter, tensor)  [control: no tuple argument]",
           lambda: parameter(1024.0), lambda: parameter(1.0),
           lambda p: float(divide_tensor(p, ones()).asnumpy()[0]))
    stale_tuple = rounds("@jit f(parameter, mutable((tensor, tensor)))",
                         lambda: parameter(1024.0), lambda: parameter(1.0),
                         lambda p: first(divide_tuple(p, mutable((ones(), ones())))))
    # the same through the public loss-scaler API (ms.amp._grad_unscale_map), on scale_value
    grads = (ones(), ones())
    stale_scaler = rounds("ms.amp: StaticLossScaler(1.0).unscale after a freed "
                          "DynamicLossScaler(1024)",
                          lambda: ms.amp.DynamicLossScaler(1024.0, 2, 1000).scale_value,
                          lambda: ms.amp.StaticLossScaler(1.0).scale_value,
                          lambda p: first(ms.amp._grad_unscale_map(p, mutable(grads))))
    return 1 if stale_tuple or stale_scaler else 0


if __name__ == "__main__":
    raise SystemExit(main())
