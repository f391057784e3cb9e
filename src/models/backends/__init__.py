"""Kernel backends: one model definition, two implementations of its neutral layers.

The model files (``mit.py``, ``vit.py``, ``segmenter.py``, ``segformer_head.py``) hold the
math and are written once, against the neutral layers that a backend module provides
(``LayerNorm``, ``GELU``, ``PatchEmbedConv``, ``SpatialReductionConv``, ``DepthwiseConv3x3``,
``TokensToMap``, ``LinearGELU``, ``Attention``, ``SelfAttention``, ``UpsampleAdd``,
``SegmentationCrossEntropy``, ``DropPath``, and the flag ``FOLD_DECODE_HEAD``):

* ``reference`` -- standard MindSpore operators only. What Ascend and GPU run and what every
  export contains.
* ``cpu`` -- the same layers computed fast on a CPU (custom C++ kernels, im2col convs,
  transpose-free layouts). Same parameters under the same names: checkpoints move freely
  between the two.

The backend is chosen once, from the config key ``kernel_backend`` (``auto`` | ``reference``
| ``cpu``), by ``get_backend(cfg)``: ``build_model`` and ``build_loss`` call it; nothing
else reads it. ``auto`` is ``cpu`` on a CPU device (float32 or amp O1/O2) when the kernel
library builds, else ``reference``. Adding a backend is a new module here.
"""
import importlib
import warnings

from src.utils.errors import UserError

BACKENDS = ("reference", "cpu")
CHOICES = ("auto",) + BACKENDS


class BackendError(UserError, ValueError):
    """The configured kernel backend cannot be used here; the message says why."""


def resolve_backend(choice, device_target, amp_level="O0"):
    """The backend name for config values ``kernel_backend``, ``device_target``, ``amp_level``.

    ``cpu`` needs a CPU device and the compiled kernel library, and cannot run amp O3 (O3
    casts every operator input to float16, the float32-only custom kernels' too).
    """
    if choice not in CHOICES:
        raise BackendError(f"config key 'kernel_backend': '{choice}' is not one of {list(CHOICES)}")
    if choice == "reference":
        return "reference"
    cpu_possible = device_target == "CPU" and amp_level != "O3"
    if choice == "auto":
        if not cpu_possible:
            return "reference"
        from src.models.backends import cpu_kernels
        if cpu_kernels.library_path() is not None:
            return "cpu"
        warnings.warn(f"CPU kernels unavailable ({cpu_kernels.build_error()}); kernel_backend "
                      f"'auto' uses the reference backend, which is slower on CPU. Install a "
                      f"C++ compiler (g++), or set kernel_backend: reference to silence this.",
                      RuntimeWarning, stacklevel=2)
        return "reference"
    if device_target != "CPU":
        raise BackendError(f"config key 'kernel_backend': 'cpu' runs on device_target CPU only, "
                           f"this run's is '{device_target}'; use 'auto' or 'reference'")
    if amp_level == "O3":
        raise BackendError("config key 'kernel_backend': 'cpu' cannot run amp_level O3 (its "
                           "kernels take float32); use 'auto' or 'reference', or amp O1/O2")
    from src.models.backends import cpu_kernels
    if cpu_kernels.library_path() is None:
        raise BackendError(f"config key 'kernel_backend': 'cpu' needs the C++ kernel library, "
                           f"which did not build ({cpu_kernels.build_error()}); install g++ or "
                           f"use 'auto' / 'reference'")
    return "cpu"


def load_backend(name):
    """The backend module ``src.models.backends.<name>``."""
    if name not in BACKENDS:
        raise BackendError(f"kernel backend '{name}' is not one of {list(BACKENDS)}")
    return importlib.import_module(f"src.models.backends.{name}")


def get_backend(cfg):
    """The backend module the config asks for on its device (see ``resolve_backend``)."""
    return load_backend(resolve_backend(cfg.kernel_backend, cfg.device_target, cfg.amp_level))
