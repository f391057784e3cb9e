"""Step-level parity of the training recipes with PyTorch.

Three optimiser steps of the project's own TrainStep, built from a real recipe config with
the randomness off (dropout / drop path 0, a fixed batch with ignored pixels), against a
PyTorch version of the upstream recipe from the same weights: HF transformers models, torch
optimisers with mmcv's paramwise rule written out below, mmcv's poly/warmup by iteration.
The learning rate and weight decay are raised so that every rule moves the weights by much
more than the tolerance; the weights are compared tensor by tensor afterwards. They run on
the default kernel backend (PARITY_BACKEND=reference runs them on the other one).
"""
import os

import tempfile

import numpy as np
import mindspore as ms
import torch
import torch.nn.functional as F

from src.engine.amp import build_loss_scaler
from src.engine.loss import build_loss
from src.engine.optim import build_optimizer
from src.engine.schedules import build_lr_schedule
from src.engine.train_step import TrainStep
from src.models import build_model
from src.utils.checkpoint import load_into_net
from src.utils.config import load_config
from tests.engine.train_helpers import pynative_mode  # noqa: F401 (autouse)
from tests.segformer_oracle import hf_segformer, hub_state_dict, ms_name, rel_err, to_nvlabs

BACKEND = os.environ.get("PARITY_BACKEND", "auto")
STEPS = 3
TOTAL_ITERS = 5   # the schedule's length (epoch_size 1 x 5 steps): poly decays visibly
NO_RANDOMNESS = ["--device_target=CPU", "--mode=PYNATIVE", "--amp_level=O0",
                 "--loss_scale_type=none", "--drop_path_rate=0", "--decoder_dropout=0",
                 "--load_ckpt=False", "--sync_bn=False", "--epoch_size=1", "--max_iters=0"]


def mmcv_poly_lr(base_lr, i, total, power, min_lr, warmup, ratio):
    """mmcv PolyLrUpdaterHook(by_epoch=False) with linear warmup, for one group."""
    regular = (base_lr - min_lr) * (1 - i / total) ** power + min_lr
    if i < warmup:
        return regular * (1 - (1 - i / warmup) * (1 - ratio))
    return regular


def mmcv_param_groups(named_params, custom_keys, base_lr, base_wd):
    """mmcv DefaultOptimizerConstructor.add_params with custom_keys (bias_decay_mult and
    norm_decay_mult left at their default 1, as the upstream recipes do): the keys sorted
    alphabetically then by length, longest first; the first contained in the name wins."""
    keys = sorted(sorted(custom_keys), key=len, reverse=True)
    groups = []
    for name, param in named_params:
        group = {"params": [param], "lr": base_lr, "weight_decay": base_wd, "name": name}
        for key in keys:
            if key in name:
                group["lr"] = base_lr * custom_keys[key].get("lr_mult", 1.0)
                group["weight_decay"] = base_wd * custom_keys[key].get("decay_mult", 1.0)
                break
        group["initial_lr"] = group["lr"]
        groups.append(group)
    return groups


def run_ours(cfg, net, images, labels):
    lrs = build_lr_schedule(cfg, TOTAL_ITERS)
    assert len(lrs) == TOTAL_ITERS
    step = TrainStep(net, build_loss(cfg), build_optimizer(net, cfg), build_loss_scaler(cfg),
                     cfg.clip_grad_norm, device_target="CPU")
    step.set_train(True)
    losses = []
    for i in range(STEPS):
        loss, overflow, _ = step(ms.Tensor(images), ms.Tensor(labels), ms.Tensor(lrs[i], ms.float32))
        assert not bool(overflow.asnumpy()) and np.isfinite(float(loss.asnumpy()))
        losses.append(float(loss.asnumpy()))
    return losses


def assert_same_losses(ours, theirs):
    """The loss of every step: shows the loss normalisation (avg_non_ignore), which Adam's
    update, invariant to a constant factor, hides."""
    np.testing.assert_allclose(ours, theirs, rtol=2e-5)


def batch_with_ignored_pixels(num_classes, size, seed):
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((2, 3, *size)).astype(np.float32)
    labels = rng.integers(0, num_classes, (2, *size)).astype(np.int32)
    labels[0, : size[0] // 4] = 255
    labels[1, :, -size[1] // 3:] = 255
    return images, labels


# ------------------------------------------------------------------------- SegFormer --

def nvlabs_names(ref, hub):
    """NVlabs name of each HF parameter (the mmcv rule reads those names): every hub tensor
    is replaced by its index, ``to_nvlabs`` renames (and fuses key/value into kv)."""
    names = list(hub)
    ids = {k: torch.full_like(v, float(i)) if v.is_floating_point() else v
           for i, (k, v) in enumerate(hub.items())}
    nv_of = {}
    for nv, t in to_nvlabs(ids).items():
        if t.is_floating_point():
            for i in torch.unique(t).tolist():
                nv_of[names[int(i)]] = nv
    by_value = {v.numpy().tobytes(): k for k, v in hub.items() if v.is_floating_point()}
    return [(nv_of[by_value[p.detach().numpy().tobytes()]], p) for p in ref.parameters()]


def test_segformer_nvlabs_recipe_steps_match_torch():
    cfg = load_config("config/segformer.b0.1024x1024.city.yaml", NO_RANDOMNESS + [
        f"--kernel_backend={BACKEND}", "--lr=1e-3", "--weight_decay=1.0", "--warmup_iters=2"])
    ref = hf_segformer("mit_b0", seed=5)
    with tempfile.TemporaryDirectory() as tmp:
        hub = hub_state_dict(ref, tmp)
    net = build_model(cfg)
    load_into_net(net, {ms_name(k): ms.Parameter(v.numpy(), name=ms_name(k))
                        for k, v in to_nvlabs(hub).items() if not k.endswith("num_batches_tracked")},
                  strict=True)
    images, labels = batch_with_ignored_pixels(19, (64, 96), seed=11)
    losses = run_ours(cfg, net, images, labels)

    # upstream: NVlabs local_configs (mmseg 0.x): AdamW betas (0.9, 0.999), custom_keys
    # pos_block/norm decay 0, head lr x10; poly power 1, min_lr 0, linear warmup from 1e-6;
    # CrossEntropyLoss averaged over ALL pixels of the batch (avg_non_ignore False)
    ref.train()
    for module in ref.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if hasattr(module, "drop_prob"):
            module.drop_prob = 0.0
    custom_keys = {"pos_block": {"decay_mult": 0.0}, "norm": {"decay_mult": 0.0},
                   "head": {"lr_mult": 10.0}}
    groups = mmcv_param_groups(nvlabs_names(ref, hub), custom_keys, 1e-3, 1.0)
    opt = torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8)
    x, y = torch.from_numpy(images), torch.from_numpy(labels).long()
    torch_losses = []
    for i in range(STEPS):
        for group in opt.param_groups:
            group["lr"] = mmcv_poly_lr(group["initial_lr"], i, TOTAL_ITERS, 1.0, 0.0, 2, 1e-6)
        logits = F.interpolate(ref(pixel_values=x).logits, size=y.shape[-2:], mode="bilinear",
                               align_corners=False)
        loss = F.cross_entropy(logits, y, ignore_index=255, reduction="none").mean()
        torch_losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()

    assert_same_losses(losses, torch_losses)
    with tempfile.TemporaryDirectory() as tmp:
        expected = {ms_name(k): v.numpy() for k, v in to_nvlabs(hub_state_dict(ref, tmp)).items()}
    # Gradient zero by construction, so Adam turns float noise into +-lr steps: the stage
    # projections' biases and norm4's bias (per-channel constants before the head's
    # BatchNorm on batch statistics) and the key half of kv.bias (a constant per query
    # under the attention softmax). The value half of kv.bias is compared.
    zero_grad = {f"decode_head.linear_c{i}.proj.bias" for i in range(1, 5)} | {"backbone.norm4.bias"}
    # Adam divides each element's momentum by its own RMS: where the gradients of the
    # steps nearly cancel in the momentum, float32 rounding (1e-7 of the gradients, in either
    # framework) decides a step of up to lr. That hits ~0.1% of the elements of a few
    # tensors (SGD, linear in the gradient, agrees on every element to 4e-7 with these
    # weights): every tensor must agree to 1e-4 of its largest value on 99.5% of its
    # elements and to 1e-2 everywhere. A changed rule (decay, lr multiplier, schedule)
    # moves every element of the tensors it governs. (Adam is invariant to a constant
    # loss factor: the loss normalisation shows in the losses compared above.)
    compared = 0
    for param in net.trainable_params():
        if param.name in zero_grad:
            continue
        ours, want = param.asnumpy(), expected[param.name]
        if param.name.endswith("attn.kv.bias"):
            half = ours.shape[0] // 2
            ours, want = ours[half:], want[half:]
        err = np.abs(ours - want) / np.abs(want).max()
        assert (err < 1e-4).mean() > 0.995 and err.max() < 1e-2, (
            param.name, (err >= 1e-4).mean(), err.max())
        compared += 1
    assert compared == len(net.trainable_params()) - len(zero_grad)


# ------------------------------------------------------------------------- Segmenter --

def test_segmenter_official_recipe_steps_match_torch():
    """rstrudel/segmenter: timm SGD (Nesterov, momentum 0.9, weight decay 0: no groups),
    polynomial lr (power 0.9, min 1e-5) per iteration, torch CrossEntropyLoss(ignore_index)
    = mean over non-ignored pixels, no gradient clipping (``clip_grad=None``). Weight decay
    stays 0 as upstream (timm would exempt 1-D tensors from a non-zero one, a rule this
    recipe does not use)."""
    from src.convert.vit_formats import OfficialSegmenter
    from tests.vit_oracle import MaskTransformerRef, hf_to_timm, hf_vit

    cfg = load_config("config/segmenter.tiny.mask.768x768.city.yaml", NO_RANDOMNESS + [
        f"--kernel_backend={BACKEND}", "--image_size=32", "--lr=2.0", "--min_lr=0.2"])
    hf = hf_vit("tiny", patch=16, image_size=32, num_labels=1000, eps=1e-5)
    decoder = MaskTransformerRef(19, 192, n_layers=2, seed=5)
    state = {"encoder." + k: np.array(v) for k, v in hf_to_timm(hf.state_dict()).items()}
    state.update({"decoder." + k: v.detach().numpy().copy() for k, v in decoder.state_dict().items()})
    converted, _ = OfficialSegmenter.convert(state, cfg)
    net = build_model(cfg)
    load_into_net(net, {k: ms.Parameter(np.asarray(v), name=k) for k, v in converted.items()},
                  strict=True)
    images, labels = batch_with_ignored_pixels(19, (32, 32), seed=12)
    losses = run_ours(cfg, net, images, labels)

    hf.train()
    decoder.train()
    params = list(hf.vit.parameters()) + list(decoder.parameters())
    opt = torch.optim.SGD(params, lr=2.0, momentum=0.9, nesterov=True, weight_decay=0.0)
    x, y = torch.from_numpy(images), torch.from_numpy(labels).long()
    torch_losses = []
    for i in range(STEPS):
        for group in opt.param_groups:
            group["lr"] = mmcv_poly_lr(2.0, i, TOTAL_ITERS, 0.9, 0.2, 0, 0.0)
        tokens = hf.vit(x).last_hidden_state[:, 1:]
        masks = F.interpolate(decoder(tokens, (2, 2)), size=(32, 32), mode="bilinear",
                              align_corners=False)
        loss = F.cross_entropy(masks, y, ignore_index=255)
        torch_losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()

    assert_same_losses(losses, torch_losses)
    expected = {"encoder." + k: v for k, v in hf_to_timm(hf.state_dict()).items()}
    expected.update({"decoder." + k: v.detach().numpy() for k, v in decoder.state_dict().items()})
    moved = []
    for param in net.trainable_params():
        want = np.asarray(expected[param.name])
        assert rel_err(param.asnumpy(), want) < 1e-4, (param.name, rel_err(param.asnumpy(), want))
        moved.append(rel_err(want, np.asarray(state[param.name])))
    # every tensor moved by far more than the tolerance (measured: 0.7% to 400%)
    assert min(moved) > 1e-3


# ------------------------------------------------------------------------------- ViT --

def test_vit_seed_recipe_steps_match_torch():
    """The seed's ViT recipe: AdamW with no_weight_decay_filter "beta,bias" (names holding
    either are not decayed; LayerNorm weights, pos_embed, cls_token are), linear warmup from
    0 then cosine to min_lr per iteration, cross entropy with label smoothing 0.1."""
    from tests.vit_oracle import hf_to_timm, hf_vit

    cfg = load_config("config/vit_patch16_imagenet2012_config.yml", NO_RANDOMNESS + [
        f"--kernel_backend={BACKEND}", "--backbone=vit_tiny_patch16_224", "--image_size=32",
        "--class_num=10", "--lr=1e-3", "--weight_decay=1.0", "--warmup_epochs=0", "--warmup_iters=2"])
    ref = hf_vit("tiny", patch=16, image_size=32, num_labels=10, eps=1e-6, seed=3)
    start = {k: np.array(v) for k, v in hf_to_timm(ref.state_dict()).items()}
    net = build_model(cfg)
    load_into_net(net, {k: ms.Parameter(v, name=k) for k, v in start.items()}, strict=True)
    rng = np.random.default_rng(13)
    images = rng.standard_normal((4, 3, 32, 32)).astype(np.float32)
    labels = rng.integers(0, 10, (4,)).astype(np.int32)
    losses = run_ours(cfg, net, images, labels)

    # timm name of each HF parameter (the filter reads those names): index-filled tensors
    # through hf_to_timm (which fuses q, k, v into qkv)
    named = list(ref.named_parameters())
    ids = hf_to_timm({n: torch.full_like(p, float(i)) for i, (n, p) in enumerate(named)})
    timm_of = {named[int(i)][0]: k for k, v in ids.items() for i in np.unique(v)}
    groups = [{"params": [p], "weight_decay": 0.0 if ("beta" in timm_of[n] or "bias" in timm_of[n])
               else 1.0} for n, p in named]
    opt = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    ref.train()
    x, y = torch.from_numpy(images), torch.from_numpy(labels).long()
    torch_losses = []
    for i in range(STEPS):
        lr = 1e-3 * i / 2 if i < 2 else 0.5 * 1e-3 * (1 + np.cos(np.pi * (i - 2) / (TOTAL_ITERS - 2)))
        for group in opt.param_groups:
            group["lr"] = lr
        loss = F.cross_entropy(ref(pixel_values=x).logits, y, label_smoothing=0.1)
        torch_losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()

    assert_same_losses(losses, torch_losses)
    expected = hf_to_timm(ref.state_dict())
    # zero gradient by construction: the key third of qkv.bias (a constant per query under
    # the softmax); Adam's ~0.1% noise-decided elements as in the SegFormer test
    for param in net.trainable_params():
        ours, want = param.asnumpy(), expected[param.name]
        assert rel_err(want, start[param.name]) > 1e-4, param.name   # every tensor moved
        if param.name.endswith("attn.qkv.bias"):
            third = ours.shape[0] // 3
            ours = np.concatenate([ours[:third], ours[2 * third:]])
            want = np.concatenate([want[:third], want[2 * third:]])
        err = np.abs(ours - want) / np.abs(want).max()
        assert (err < 1e-4).mean() > 0.995 and err.max() < 1e-2, (
            param.name, (err >= 1e-4).mean(), err.max())
