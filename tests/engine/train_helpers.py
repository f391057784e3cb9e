"""Shared pieces of the training-engine tests: a tiny SegFormer and the demo datasets."""
import atexit
import functools
import importlib.util
import os
import shutil
import tempfile

import mindspore as ms
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny_segformer(class_num=4, drop_path_rate=0.2, kernel_backend="cpu"):
    """The SegFormer layer types (overlap patch embed, efficient attention, Mix-FFN with
    depthwise conv, LayerNorm, BatchNorm head) at a few thousand parameters."""
    from src.models.backends import load_backend
    from src.models.mit import MixVisionTransformer
    from src.models.segformer import SegFormer
    from src.models.segformer_head import SegFormerHead

    backend = load_backend(kernel_backend)
    dims = (8, 16, 16, 16)
    backbone = MixVisionTransformer(backend, dims, num_heads=(1, 1, 1, 1), depths=(1, 1, 1, 1),
                                    drop_path_rate=drop_path_rate)
    return SegFormer(backbone, SegFormerHead(backend, dims, 16, class_num, dropout=0.1))


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.lru_cache(maxsize=None)
def demo_data():
    """(cityscapes_root, imagenet_root) of a small demo dataset, generated once per process
    with the project's own tools (the tests must not depend on data/ existing)."""
    base = tempfile.mkdtemp(prefix="engine_demo_")
    atexit.register(shutil.rmtree, base, ignore_errors=True)
    city, imnet = os.path.join(base, "city"), os.path.join(base, "imagenet")
    _load_tool("make_demo_data").main([
        "--out", city, "--imagenet_out", imnet, "--seed", "0", "--num_train", "8",
        "--num_val", "4", "--height", "128", "--width", "256",
        "--imagenet_train_per_class", "8", "--imagenet_val_per_class", "4",
        "--imagenet_size", "32"])
    if _load_tool("convert_dataset").main([city]) != 0:
        raise RuntimeError("tools/convert_dataset.py failed on the demo data")
    return city, imnet


def seg_demo_args(city, out_dir):
    """Overrides that shrink config/*.demo.yaml segmentation runs to test size (GRAPH mode:
    one compile, then ~0.3 s per SegFormer-B0 step on 2 cores)."""
    return [f"--data_path={city}", "--mode=GRAPH", "--device_target=CPU",
            "--crop_size=[64,64]", "--base_size=[64,128]", "--eval_base_size=[64,128]",
            "--eval_mode=whole", "--dataset_num_parallel_workers=1", "--batch_size=2",
            f"--output_dir={out_dir}", f"--checkpoint_path={os.path.join(out_dir, 'ckpt')}"]


def vit_demo_args(imnet, out_dir):
    return [f"--data_path={imnet}", "--mode=GRAPH", "--device_target=CPU", "--image_size=32",
            "--train_image_size=32", "--eval_image_size=32", "--batch_size=8",
            "--eval_batch_size=8", "--dataset_num_parallel_workers=1",
            f"--output_dir={out_dir}", f"--checkpoint_path={os.path.join(out_dir, 'ckpt')}"]


@pytest.fixture(autouse=True)
def pynative_mode():
    """Import into a test module to run its tests in PYNATIVE mode whatever another module
    set at import time (the execution mode is process-wide); GRAPH tests set it themselves."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    yield
    ms.set_context(mode=ms.PYNATIVE_MODE)


class Epochs:
    """A MindSpore-like tuple iterator: each ``for`` over it is one epoch of ``steps``."""

    def __init__(self, steps):
        self.steps = steps

    def __iter__(self):
        return iter([(None, None)] * self.steps)


class FakeBatches:
    """A dataset stand-in of ``steps`` empty batches per epoch (the fake step cells ignore
    their inputs); records the epoch count the trainer asks for."""

    def __init__(self, steps):
        self.steps = steps
        self.num_epochs = None

    def get_dataset_size(self):
        return self.steps

    def create_tuple_iterator(self, num_epochs):
        self.num_epochs = num_epochs
        return Epochs(self.steps)


class FakeStepCell:
    """Stands in for ``ScheduledTrainStep`` in trainer tests: step ``i`` (1-based, counted
    over the process) "returns" ``losses[i-1]``/``overflows[i-1]``/``scales[i-1]``; tallies are
    computed here from those lists, and ``reads`` records the step count at each read-back.
    ``on_step(i)`` runs during step ``i``."""

    def __init__(self, losses, overflows, scales=None, on_step=None):
        self.losses, self.overflows = list(losses), list(overflows)
        self.scales = list(scales) if scales is not None else [1.0] * len(self.losses)
        self.on_step = on_step
        self.calls, self.reads, self.read_from, self.run = 0, [], 0, 0
        self.started_at = None

    def start_at(self, global_step):
        self.started_at = global_step

    def __call__(self, images, labels):
        self.calls += 1
        if self.on_step:
            self.on_step(self.calls)

    def read_tallies(self):
        from src.engine.train_step import Tallies
        self.reads.append(self.calls)
        span = range(self.read_from, self.calls)
        finite = [self.losses[i] for i in span if not self.overflows[i]]
        longest = self.run
        for i in span:
            self.run = self.run + 1 if self.overflows[i] else 0
            longest = max(longest, self.run)
        self.read_from = self.calls
        last = self.calls - 1
        return Tallies(float(sum(finite)), len(finite), len(span) - len(finite), longest,
                       self.losses[last], bool(self.overflows[last]), self.scales[last])
