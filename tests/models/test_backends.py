"""The kernel-backend seam: how the backend is chosen, that both hold the same parameters,
and that the model files hold no device or backend switches of their own."""
import os
import re

import numpy as np
import mindspore as ms
import pytest
from mindspore.nn.utils import no_init_parameters

from src.models import build_model
from src.models.backends import BackendError, cpu_kernels, load_backend, resolve_backend
from src.utils.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL_FILES = ("mit.py", "vit.py", "segmenter.py", "segformer.py", "segformer_head.py",
               "layers.py", "__init__.py")


@pytest.fixture
def no_kernel_library(monkeypatch, tmp_path):
    """The kernel library cannot be built (no C++ compiler)."""
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    monkeypatch.setenv(cpu_kernels.ENV_CACHE, str(tmp_path))
    cpu_kernels.build_library.cache_clear()
    yield
    cpu_kernels.build_library.cache_clear()


def test_auto_is_cpu_on_a_cpu_device_and_reference_elsewhere():
    assert resolve_backend("auto", "CPU") == "cpu"
    assert resolve_backend("auto", "CPU", "O1") == "cpu"
    assert resolve_backend("auto", "CPU", "O2") == "cpu"
    # O3 casts every operator input to float16, the float32-only kernels' too
    assert resolve_backend("auto", "CPU", "O3") == "reference"
    assert resolve_backend("auto", "Ascend") == "reference"
    assert resolve_backend("auto", "GPU") == "reference"
    for target in ("CPU", "Ascend", "GPU"):
        assert resolve_backend("reference", target) == "reference"


def test_auto_without_kernel_library_warns_and_uses_reference(no_kernel_library):
    with pytest.warns(RuntimeWarning, match="CPU kernels unavailable.*nonexistent"):
        assert resolve_backend("auto", "CPU") == "reference"


def test_impossible_choices_are_clear_errors(no_kernel_library):
    with pytest.raises(BackendError, match="'kernel_backend'.*'fast'.*'auto', 'reference', 'cpu'"):
        resolve_backend("fast", "CPU")
    with pytest.raises(BackendError, match="'cpu' runs on device_target CPU only.*'Ascend'"):
        resolve_backend("cpu", "Ascend")
    with pytest.raises(BackendError, match="'cpu' cannot run amp_level O3"):
        resolve_backend("cpu", "CPU", "O3")
    with pytest.raises(BackendError, match="needs the C\\+\\+ kernel library.*nonexistent/g\\+\\+"):
        resolve_backend("cpu", "CPU")


def _layer_modules(net):
    return {type(cell).__module__ for _, cell in net.cells_and_names()
            if type(cell).__module__.startswith("src.models.backends")}


@pytest.mark.parametrize("model,backbone", [("segformer", "mit_b0"),
                                            ("segmenter", "vit_tiny_patch16_384"),
                                            ("vit", "vit_tiny_patch16_224")])
def test_both_backends_hold_the_same_parameters(model, backbone):
    """Same names, shapes and initial values (same seed): checkpoints move freely."""
    params = {}
    for name in ("reference", "cpu"):
        ms.set_seed(3)
        net = build_model(load_config("", [f"--model={model}", f"--backbone={backbone}",
                                           f"--kernel_backend={name}", "--class_num=5"]))
        assert _layer_modules(net) == {f"src.models.backends.{name}"}
        params[name] = {p.name: p.asnumpy() for p in net.get_parameters()}
    assert list(params["reference"]) == list(params["cpu"])
    for key, value in params["reference"].items():
        np.testing.assert_array_equal(value, params["cpu"][key], err_msg=key)


def test_build_model_follows_device_and_amp_level():
    def layers_of(*overrides):
        with no_init_parameters():
            return _layer_modules(build_model(load_config("", list(overrides))))

    assert layers_of() == {"src.models.backends.cpu"}             # CPU, auto
    assert layers_of("--amp_level=O3") == {"src.models.backends.reference"}
    assert layers_of("--device_target=Ascend") == {"src.models.backends.reference"}
    with pytest.raises(BackendError, match="'cpu' runs on device_target CPU only"):
        layers_of("--device_target=GPU", "--kernel_backend=cpu")


def test_model_files_hold_no_device_or_backend_switches():
    """The math only: no global device reads, environment variables or kernel flags."""
    pattern = re.compile(r"get_context\(|use_cpu_kernel|\.im2col|MS_SEG_CPU_KERNELS|os\.environ"
                         r"|cpu_kernels")
    found = []
    for name in MODEL_FILES:
        with open(os.path.join(ROOT, "src", "models", name)) as f:
            found += [f"{name}:{i}: {line.strip()}" for i, line in enumerate(f, 1)
                      if pattern.search(line)]
    assert not found, found


@pytest.mark.parametrize("mode", [ms.PYNATIVE_MODE, ms.GRAPH_MODE])
def test_drop_path_is_timm_per_sample_stochastic_depth(kernel_backend, mode):
    """Each sample's branch is kept with probability keep_prob and scaled by 1/keep_prob, or
    zeroed, as a whole (timm's drop_path); identity at eval; the activation dtype is kept."""
    drop_path = load_backend(kernel_backend).DropPath(0.25)
    x = ms.Tensor(np.ones((4000, 3, 5), np.float32))
    old = ms.get_context("mode")
    ms.set_context(mode=mode)
    try:
        drop_path.set_train(True)
        out = drop_path(x).asnumpy()
        half = drop_path(x.astype(ms.float16))
        drop_path.set_train(False)
        evaluated = drop_path(x).asnumpy()
    finally:
        ms.set_context(mode=old)
    per_sample = out.reshape(4000, -1)
    assert (per_sample == per_sample[:, :1]).all()                  # one factor per sample
    assert set(np.unique(per_sample).tolist()) == {0.0, np.float32(1 / 0.75)}
    assert abs((per_sample[:, 0] > 0).mean() - 0.75) < 0.03        # 4.4 binomial sd
    assert half.dtype == ms.float16 and half.shape == x.shape
    np.testing.assert_array_equal(evaluated, x.asnumpy())
