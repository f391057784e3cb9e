"""The Python API (src/apis.py) against what infer.py writes and what evaluation feeds the
network: the same label maps, pixel for pixel, and the same top-k."""
import os

import numpy as np
import pytest
import mindspore as ms
from PIL import Image

from src.apis import inference_model, init_model
from src.models import build_model
from src.utils.checkpoint import save_checkpoint
from src.utils.config import load_config
from tests.test_eval_infer_export import (B0_DEMO, REPO, demo, load_tool,  # noqa: F401  (fixtures)
                                          no_runtime_setup)

ms.set_context(mode=ms.PYNATIVE_MODE)

# slide windows, two scales and flip: every test-time setting the API must take from the
# config, in few network calls (scale 1: two windows; scale 0.5: smaller than a window, whole)
SLIDE_MS_FLIP = {"eval_mode": "slide", "eval_crop_size": [64, 96], "eval_stride": [64, 32],
                 "eval_scales": [0.5, 1.0], "eval_flip": True, "eval_base_size": [64, 128]}


def val_images(demo):
    return sorted(str(p) for p in (demo["root"] / "city" / "leftImg8bit" / "val").rglob("*.png"))


def test_label_maps_equal_infer_py_gray_pngs(demo, tmp_path, capsys, no_runtime_setup):
    """infer.py and the API, same checkpoint, same image, slide + two scales + flip from the
    config: the same label map, pixel for pixel, and probabilities that agree with it."""
    folder = tmp_path / "images"
    folder.mkdir()
    path = str(folder / "scene.png")
    Image.open(val_images(demo)[1]).save(path)
    out = tmp_path / "infer"
    flags = [f"--{k}={v}".replace(" ", "") for k, v in SLIDE_MS_FLIP.items()]
    load_tool("infer.py").main([f"--config_path={B0_DEMO}", f"--infer_ckpt_path={demo['ckpt']}",
                                f"--data_path={folder}", f"--infer_output_path={out}",
                                "--mode=PYNATIVE", f"--output_dir={tmp_path}", *flags])
    capsys.readouterr()
    gray = np.asarray(Image.open(out / "scene_gray.png"))
    assert len(np.unique(gray)) > 1

    model = init_model(B0_DEMO, demo["ckpt"], device_target="CPU", mode="PYNATIVE",
                       log=lambda m: None, **SLIDE_MS_FLIP)
    [(label_map, probs)] = inference_model(model, [path], return_probs=True)
    assert np.issubdtype(label_map.dtype, np.integer) and label_map.shape == gray.shape
    assert np.array_equal(label_map, gray)
    assert probs.shape == (19,) + gray.shape and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    assert np.array_equal(probs.argmax(axis=0), label_map)


def test_arrays_batches_and_single_view_probabilities(demo):
    """RGB arrays in, one map each; three images of one size run as one batch give the maps
    of one-by-one runs; a single view's probabilities are the softmax of its logits."""
    model = init_model(B0_DEMO, demo["ckpt"], mode="PYNATIVE", eval_base_size=[64, 128],
                       log=lambda m: None)
    images = [np.asarray(Image.open(p).convert("RGB")) for p in val_images(demo)]
    one_by_one = inference_model(model, images, return_probs=True)
    batched = inference_model(model, images, return_probs=True, batch_size=3)
    assert len(one_by_one) == len(batched) == 3
    for (labels, probs), (b_labels, b_probs) in zip(one_by_one, batched):
        np.testing.assert_allclose(b_probs, probs, atol=1e-5)
        assert (b_labels == labels).mean() > 0.999  # batched float sums may break exact ties
    logits = model.predictor.batch_scores(images[:1])[0]
    soft = np.exp(logits - logits.max(0)) / np.exp(logits - logits.max(0)).sum(0)
    np.testing.assert_allclose(one_by_one[0][1], soft, rtol=1e-5, atol=1e-6)


def test_vit_topk_equals_eval_pipeline(demo, tmp_path):
    """ViT: the API's top-k from file paths are the network's logits ranked on exactly the
    images evaluation feeds it (decode, resize, centre crop, normalise)."""
    from src.data import create_dataset
    overrides = {"data_path": demo["imagenet"], "eval_image_size": 32, "eval_batch_size": 8,
                 "dataset_num_parallel_workers": 1}
    cfg = load_config(os.path.join(REPO, "config", "vit.tiny.demo.yaml"), values=overrides)
    ms.set_seed(4)
    net = build_model(cfg)
    net.set_train(False)
    ckpt = str(tmp_path / "vit.ckpt")
    save_checkpoint(net, ckpt)
    data = create_dataset(cfg, "val")
    logits = np.concatenate([net(ms.Tensor(b["image"])).asnumpy()
                             for b in data.create_dict_iterator(num_epochs=1, output_numpy=True)])

    model = init_model(cfg.config_path, ckpt, mode="PYNATIVE", log=lambda m: None, **overrides)
    val = os.path.join(demo["imagenet"], "val")
    paths = [os.path.join(val, c, f) for c in sorted(os.listdir(val))
             for f in sorted(os.listdir(os.path.join(val, c)))]
    results = inference_model(model, paths, topk=3, batch_size=8)  # the eval batches
    assert len(results) == len(paths) == len(logits)
    for (classes, scores), row in zip(results, logits):
        assert classes.tolist() == np.argsort(-row, kind="stable")[:3].tolist()
        soft = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
        np.testing.assert_allclose(scores, soft[classes], rtol=1e-4)


def test_bad_inputs_are_named(demo, tmp_path):
    model = init_model(B0_DEMO, demo["ckpt"], mode="PYNATIVE", eval_base_size=[64, 128],
                       log=lambda m: None)
    with pytest.raises(ValueError, match=r"imgs\[1\]: expected an RGB uint8 array \[H, W, 3\], "
                                         r"got float32 \[8, 8, 3\]"):
        inference_model(model, [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.float32)])
    with pytest.raises(TypeError, match=r"imgs\[0\]: expected an image path"):
        inference_model(model, [3])
    with pytest.raises(ValueError, match="nope.png: image file not found"):
        inference_model(model, str(tmp_path / "nope.png"))
    with pytest.raises(ValueError, match="imgs is empty"):
        inference_model(model, [])
    with pytest.raises(TypeError, match="InferenceModel returned by init_model"):
        inference_model("model", str(tmp_path / "a.png"))
    from src.utils.config import ConfigError
    with pytest.raises(ConfigError, match="unknown config key 'eval_modes'.*did you mean 'eval_mode'"):
        init_model(B0_DEMO, demo["ckpt"], eval_modes="slide")
    with pytest.raises(ConfigError, match="'eval_flip'.*expects bool"):
        init_model(B0_DEMO, demo["ckpt"], eval_flip="yes")


_FRESH_PROCESS = """
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from src.apis import inference_model, init_model
config, ckpt, overrides, images, out = sys.argv[2:]
model = init_model(config, ckpt, log=lambda m: None, **json.loads(overrides))
results = inference_model(model, json.loads(images), return_probs=True, topk=3)
np.savez(out, *[np.asarray(part) for result in results for part in result])
"""


def _outputs(results):
    return [np.asarray(part) for result in results for part in result]


@pytest.mark.slow
def test_several_models_in_one_process_give_what_fresh_processes_give(demo, tmp_path):
    """The Python API building several models one after another in one process (SegFormer,
    ViT, each built twice, the first ones freed in between): every model's outputs equal
    those of a fresh process that builds only that model. docs/known_issues.md: MindSpore
    2.10 can hand a new object a freed one's compiled state in PYNATIVE mode."""
    import gc
    import json
    import subprocess
    import sys
    vit_overrides = {"data_path": demo["imagenet"], "eval_image_size": 32,
                     "dataset_num_parallel_workers": 1, "mode": "PYNATIVE"}
    cfg = load_config(os.path.join(REPO, "config", "vit.tiny.demo.yaml"), values=vit_overrides)
    ms.set_seed(4)
    vit_ckpt = str(tmp_path / "vit.ckpt")
    save_checkpoint(build_model(cfg), vit_ckpt)
    val = os.path.join(demo["imagenet"], "val")
    vit_images = [os.path.join(val, c, f) for c in sorted(os.listdir(val))
                  for f in sorted(os.listdir(os.path.join(val, c)))][::2]
    seg_overrides = {"mode": "PYNATIVE", **SLIDE_MS_FLIP}
    models = {"segformer": (B0_DEMO, demo["ckpt"], seg_overrides, val_images(demo)[:2]),
              "vit": (cfg.config_path, vit_ckpt, vit_overrides, vit_images)}

    in_process = {}
    for name in ["segformer", "vit", "segformer", "vit"]:
        config, ckpt, overrides, images = models[name]
        model = init_model(config, ckpt, log=lambda m: None, **overrides)
        outputs = _outputs(inference_model(model, images, return_probs=True, topk=3))
        in_process.setdefault(name, []).append(outputs)
        del model
        gc.collect()

    for name, (config, ckpt, overrides, images) in models.items():
        out = str(tmp_path / f"{name}.npz")
        done = subprocess.run([sys.executable, "-c", _FRESH_PROCESS, REPO, config, ckpt,
                               json.dumps(overrides), json.dumps(images), out],
                              capture_output=True, text=True, cwd=REPO, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        with np.load(out) as saved:
            fresh = [saved[f"arr_{i}"] for i in range(len(saved.files))]
        for outputs in in_process[name]:
            assert len(outputs) == len(fresh) >= 2 * len(images)  # (labels, probs) or top-k
            for got, want in zip(outputs, fresh):
                assert got.dtype == want.dtype and got.shape == want.shape
                np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=name)
