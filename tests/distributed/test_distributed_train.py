"""End to end: ``scripts/run_distribute_train_msrun.sh 2 ...`` runs train.py on 2 CPU ranks
(127.0.0.1) and that is data parallelism.

Tiny SegFormer-B0 run (4 demo images, batch 1 per rank, 1 epoch = 2 steps per rank) with
deterministic data (no random resize/crop/flip/colour, no dropout), then:

* both ranks end with bit-identical trainable weights and optimiser moments, while their
  BatchNorm running statistics (local, not synchronised) differ: they saw different images;
* the two ranks' shards (what train.py's dataset gives rank 0 and rank 1 of 2, identified
  against the label files on disk) are disjoint halves of the training set;
* ``python train.py`` alone on rank 0's shard, fed the same images in the same order, starts
  from the same first-step loss as rank 0 (same weights, same data) but ends elsewhere:
  the only difference is the gradient exchange.
"""
import importlib.util
import os
import re
import shutil
import subprocess
import sys

import cv2
import mindspore as ms
import numpy as np
import pytest

from src.data import create_dataset, list_samples
from src.data.sampling import find_shard_sampler
from src.utils.config import load_config
from tests.distributed.launch_utils import REPO, free_port, log_tails, python_env

pytestmark = pytest.mark.slow   # subprocesses: a real 2-rank msrun job

CONFIG = os.path.join(REPO, "config", "segformer.b0.demo.yaml")
SEED = 1
NUM_TRAIN = 4
# deterministic inputs: full 64x128 scenes, no jitter/crop/flip/colour, no dropout
OVERRIDES = ["--mode=PYNATIVE", "--epoch_size=1", "--batch_size=1", "--base_size=[64,128]",
             "--crop_size=[64,128]", "--ratio_range=[1.0,1.0]", "--flip_prob=0.0",
             "--photometric_distortion=False", "--drop_path_rate=0.0", "--decoder_dropout=0.0",
             "--warmup_iters=0", "--dataset_num_parallel_workers=1", "--train_log_interval=1",
             f"--seed={SEED}", "--save_best_ckpt=False"]
CKPT = "segformer_mit_b0_1.ckpt"


def load_tool(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def demo_city(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("dp") / "city")
    load_tool("make_demo_data").main(["--out", root, "--imagenet_out", "", "--seed", "3",
                                      "--num_train", str(NUM_TRAIN), "--num_val", "1",
                                      "--height", "64", "--width", "128"])
    assert load_tool("convert_dataset").main([root]) == 0
    return root


def first_losses(log_path):
    with open(log_path) as f:
        return [float(x) for x in re.findall(r"step:\d+/\d+, loss:([0-9.eE+-]+)", f.read())]


def visit_order(cfg, rank_id, group_size):
    """Which training files (by index into ``list_samples``) the dataset of train.py gives
    rank ``rank_id`` of ``group_size``, in order; identified by comparing each label batch
    with the label files as read from disk. Iterated the way the trainer does."""
    label_files = [cv2.imread(label, cv2.IMREAD_UNCHANGED) for _, label in list_samples(cfg, "train")]
    data = create_dataset(cfg, "train", rank_id, group_size)
    data.get_dataset_size()
    find_shard_sampler(data).set_epoch(0)  # as the trainer does before its first epoch
    order = []
    for _, labels in data.create_tuple_iterator(num_epochs=1):
        for label in labels.asnumpy():
            match = [i for i, f in enumerate(label_files) if np.array_equal(label, f)]
            assert len(match) == 1, "every demo label file is distinct"
            order.append(match[0])
    return order


def link_subset(samples, slots, root):
    """A Cityscapes-layout folder whose k-th sorted sample is ``samples[slots[k]]``."""
    shutil.rmtree(root, ignore_errors=True)
    for k, index in enumerate(slots):
        image, label = samples[index]
        for src, kind, suffix in ((image, "leftImg8bit", "_leftImg8bit.png"),
                                  (label, "gtFine", "_gtFine_labelTrainIds.png")):
            dst = os.path.join(root, kind, "train", "aachen", f"aachen_{k:06d}_000019{suffix}")
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            os.symlink(src, dst)
    return root


def shard_copy_in_visit_order(samples, rank_order, root):
    """Rank 0's shard as a dataset that one process visits in rank 0's order."""
    link_subset(samples, rank_order, root)
    cfg = load_config(CONFIG, OVERRIDES + [f"--data_path={root}"])
    visited_slots = visit_order(cfg, 0, 1)               # the sampler's order of sorted slots
    slots = [None] * len(rank_order)
    for k, slot in enumerate(visited_slots):
        slots[slot] = rank_order[k]
    link_subset(samples, slots, root)
    assert [slots[s] for s in visit_order(cfg, 0, 1)] == rank_order
    return root


def test_two_ranks_via_msrun_script_train_as_one(demo_city, tmp_path):
    cfg = load_config(CONFIG, OVERRIDES + [f"--data_path={demo_city}"])
    samples = list_samples(cfg, "train")
    assert len(samples) == NUM_TRAIN
    # what train.py's dataset feeds rank 0 and rank 1 of 2: disjoint halves of the files
    shards = [visit_order(cfg, r, 2) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == NUM_TRAIN // 2
    assert sorted(shards[0] + shards[1]) == list(range(NUM_TRAIN))

    # one process alone on rank 0's shard, same images in the same order; it runs while
    # the msrun job does (the 2-rank job spends part of its time waiting on start-up)
    subset = shard_copy_in_visit_order(samples, shards[0], str(tmp_path / "shard0"))
    solo_out = tmp_path / "solo"
    solo = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "train.py"), f"--config_path={CONFIG}",
         f"--data_path={subset}", "--run_eval=False", *OVERRIDES, f"--output_dir={solo_out}",
         f"--checkpoint_path={solo_out / 'ckpt'}"],
        cwd=tmp_path, env=python_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    out = tmp_path / "dp"
    try:
        dp = subprocess.run(
            ["bash", os.path.join(REPO, "scripts", "run_distribute_train_msrun.sh"), "2", CONFIG,
             demo_city, "", "False", *OVERRIDES, "--rank_save_ckpt=all", f"--output_dir={out}",
             f"--checkpoint_path={out / 'ckpt'}"],
            cwd=tmp_path, env=python_env(PYTHON=sys.executable, MASTER_PORT=free_port(),
                                         CLUSTER_TIME_OUT=150, LOG_DIR=str(tmp_path / "logs")),
            capture_output=True, text=True, timeout=300)
        _, solo_err = solo.communicate(timeout=300)
    finally:
        if solo.poll() is None:
            solo.kill()
    assert dp.returncode == 0, dp.stdout[-2000:] + dp.stderr[-2000:] + log_tails(tmp_path / "logs")
    assert solo.returncode == 0, solo_err[-3000:]

    logs = [(out / f"train_rank{r}.log").read_text() for r in (0, 1)]
    for r, text in enumerate(logs):
        assert f"rank {r}/2" in text
        assert "2 steps per epoch, batch 1 x 2 device(s)" in text      # half the data each

    w0, w1 = (ms.load_checkpoint(str(out / "ckpt" / f"rank_{r}" / CKPT)) for r in (0, 1))
    assert w0.keys() == w1.keys()
    stats = [k for k in w0 if k.endswith(("moving_mean", "moving_variance"))]
    assert stats, "the decode head has a BatchNorm"
    for key in w0:
        if key not in stats:
            np.testing.assert_array_equal(w0[key].asnumpy(), w1[key].asnumpy(), err_msg=key)
    assert any(not np.array_equal(w0[k].asnumpy(), w1[k].asnumpy()) for k in stats)
    loss0, loss1 = first_losses(out / "train_rank0.log"), first_losses(out / "train_rank1.log")
    assert loss0[0] != loss1[0]                                        # different images

    solo_log = solo_out / "train.log"
    solo_losses = first_losses(solo_log)
    assert "2 steps per epoch, batch 1 x 1 device(s)" in solo_log.read_text()
    assert solo_losses[0] == pytest.approx(loss0[0], rel=1e-6)        # same start as rank 0
    assert solo_losses[1] != pytest.approx(loss0[1], rel=1e-6)        # then rank 0 took the mean step
    ws = ms.load_checkpoint(str(solo_out / "ckpt" / CKPT))
    trainable = [k for k in w0 if k not in stats and not k.startswith("optimizer.")
                 and w0[k].asnumpy().ndim > 0]
    diff = np.mean([np.abs(w0[k].asnumpy() - ws[k].asnumpy()).mean() for k in trainable])
    assert diff > 1e-5, f"data-parallel weights equal the single-shard run's (mean |diff| {diff})"
