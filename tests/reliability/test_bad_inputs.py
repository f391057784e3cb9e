"""Bad inputs and faults against the entry points, as a new user would make them.

Each case runs an entry point's ``main()`` in this process (the device set-up replaced, as
MindSpore sets it once per process) and asserts: exit status 1, the last line of the
output is one ``error: ...`` line naming the culprit, and nothing was written or
overwritten. Unexpected errors (bugs) keep their traceback, on stderr and in the log.
"""
import importlib.util
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import mindspore as ms
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
B0_DEMO = os.path.join(REPO, "config", "segformer.b0.demo.yaml")
VIT_DEMO = os.path.join(REPO, "config", "vit.tiny.demo.yaml")
ms.set_context(mode=ms.PYNATIVE_MODE)


def load_tool(path):
    name = "_bad_inputs_" + path.replace("/", "_").replace(".", "_")
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A 2-train/1-val Cityscapes-layout set and a 1-image-per-class ImageNet-layout set."""
    root = tmp_path_factory.mktemp("bad_inputs")
    city, imagenet = str(root / "city"), str(root / "imagenet")
    load_tool("tools/make_demo_data.py").main(
        ["--out", city, "--imagenet_out", imagenet, "--ade_out", "", "--num_train", "2",
         "--num_val", "1", "--height", "64", "--width", "128", "--imagenet_train_per_class", "1",
         "--imagenet_val_per_class", "1", "--imagenet_size", "32", "--seed", "3"])
    assert load_tool("tools/convert_dataset.py").main([city]) == 0
    return {"city": city, "imagenet": imagenet}


@pytest.fixture
def no_runtime_setup(monkeypatch):
    monkeypatch.setattr("src.utils.device.setup_runtime", lambda cfg: (0, 1))


def copy_of(src, tmp_path, name="data"):
    dst = str(tmp_path / name)
    shutil.copytree(src, dst)
    return dst


def files_under(path):
    return sorted(os.path.relpath(os.path.join(d, f), path)
                  for d, _, names in os.walk(path) for f in names) if os.path.exists(path) else []


def run_main(tool, argv, capsys):
    """Exit status and the stderr lines of ``tool``'s main(argv)."""
    with pytest.raises(SystemExit) as exc:
        load_tool(tool).main(argv)
    code, lines = exc.value.code, capsys.readouterr().err.strip().splitlines()
    if isinstance(code, str):  # SystemExit("message"): Python prints it to stderr, exit 1
        code, lines = 1, lines + code.splitlines()
    return code, lines


def assert_clear_error(code, lines, *names):
    """Exit 1 and a last line ``error: ...`` (``config error: ...`` from the config loader)
    holding every one of ``names``."""
    assert code == 1, lines
    assert lines and lines[-1].startswith(("error: ", "config error: ")), lines[-3:]
    for name in names:
        assert name in lines[-1], (name, lines[-1])
    assert "Traceback" not in "\n".join(lines) and "C++ Call Stack" not in "\n".join(lines)


def seg_train_args(data, out):
    return [f"--config_path={B0_DEMO}", f"--data_path={data}", "--mode=PYNATIVE",
            "--crop_size=[32,32]", "--base_size=[64,128]", "--epoch_size=1", "--run_eval=False",
            f"--output_dir={out}", f"--checkpoint_path={out}/ckpt"]


def first_train_pair(data):
    img = os.path.join(data, "leftImg8bit", "train", "aachen", "aachen_000000_000019_leftImg8bit.png")
    lab = os.path.join(data, "gtFine", "train", "aachen",
                       "aachen_000000_000019_gtFine_labelTrainIds.png")
    assert os.path.isfile(img) and os.path.isfile(lab)
    return img, lab


# --------------------------------------------------- errors inside the data pipeline --

def test_corrupt_training_image_is_the_last_line(demo, tmp_path, capsys, no_runtime_setup):
    """MindSpore's pipeline wraps the DataError in a RuntimeError with its C++ stack; the
    entry point prints only our message."""
    data = copy_of(demo["city"], tmp_path)
    image, _ = first_train_pair(data)
    with open(image, "wb") as f:
        f.write(b"not a png")
    out = str(tmp_path / "run")
    code, lines = run_main("train.py", seg_train_args(data, out), capsys)
    assert_clear_error(code, lines, image, "corrupt or truncated image")
    assert not os.path.exists(os.path.join(out, "ckpt"))
    log = open(os.path.join(out, "train.log")).read().splitlines()
    assert log[-1] == lines[-1]


def test_wrong_size_label_is_the_last_line(demo, tmp_path, capsys, no_runtime_setup):
    data = copy_of(demo["city"], tmp_path)
    image, label = first_train_pair(data)
    Image.fromarray(np.zeros((10, 20), np.uint8), mode="L").save(label)
    out = str(tmp_path / "run")
    code, lines = run_main("train.py", seg_train_args(data, out), capsys)
    assert_clear_error(code, lines, label, "label size 20x10", "differs from its image")
    assert not os.path.exists(os.path.join(out, "ckpt"))


def test_corrupt_val_image_in_classification_eval(demo, tmp_path, capsys, no_runtime_setup):
    """ViT evaluation reads through MindSpore's pipeline too (map operations)."""
    from src.models import build_model
    from src.utils.checkpoint import save_checkpoint
    from src.utils.config import load_config

    data = copy_of(demo["imagenet"], tmp_path)
    val_dir = os.path.join(data, "val")
    victim = os.path.join(val_dir, *sorted(
        os.path.relpath(os.path.join(d, f), val_dir) for d, _, fs in os.walk(val_dir) for f in fs)[0]
        .split(os.sep))
    with open(victim, "r+b") as f:  # JPEG signature kept, body and end marker gone
        f.truncate(40)
    args = [f"--config_path={VIT_DEMO}", f"--data_path={data}", "--mode=PYNATIVE",
            "--image_size=32", "--eval_image_size=32", f"--output_dir={tmp_path}/run"]
    ckpt = str(tmp_path / "vit.ckpt")
    save_checkpoint(build_model(load_config("", args)), ckpt)
    code, lines = run_main("eval.py", args + [f"--eval_ckpt_path={ckpt}"], capsys)
    assert_clear_error(code, lines, victim)
    assert files_under(str(tmp_path / "run")) == ["eval.log"]


def test_pipeline_error_in_a_real_process_ends_with_our_line(demo, tmp_path):
    """The real output (MindSpore's own stderr lines included) ends with the culprit."""
    data = copy_of(demo["city"], tmp_path)
    image, _ = first_train_pair(data)
    with open(image, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n truncated")
    out = str(tmp_path / "run")
    proc = subprocess.run([sys.executable, "train.py", *seg_train_args(data, out)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert proc.returncode == 1
    assert lines[-1].startswith("error: ") and image in lines[-1]
    assert "C++ Call Stack" not in proc.stderr and "Traceback" not in proc.stderr
    assert not os.path.exists(os.path.join(out, "ckpt"))


# ------------------------------------------------------ values checked at start-up --

@pytest.mark.parametrize("override,names", [
    ("--eval_mode=slid", ["config key 'eval_mode'", "'slid'", "whole, slide"]),
    ("--crop_size=512", ["config key 'crop_size'", "expected [H, W]", "got [512]"]),
    ("--base_size=0,1024", ["config key 'base_size'", "2 positive numbers", "got [0, 1024]"]),
])
def test_bad_values_fail_before_any_work(demo, tmp_path, capsys, no_runtime_setup, override, names):
    out = str(tmp_path / "run")
    code, lines = run_main("train.py", seg_train_args(demo["city"], out) + [override], capsys)
    assert_clear_error(code, lines, *names)
    assert not os.path.exists(out)


def test_missing_val_split_fails_before_training(demo, tmp_path, capsys, no_runtime_setup):
    data = copy_of(demo["city"], tmp_path)
    shutil.rmtree(os.path.join(data, "gtFine", "val"))
    out = str(tmp_path / "run")
    args = [a for a in seg_train_args(data, out) if a != "--run_eval=False"]
    code, lines = run_main("train.py", args, capsys)
    label_dir = os.path.join(data, "gtFine", "val")
    assert_clear_error(code, lines, "run_eval=True evaluates after each epoch",
                       f"label directory of split 'val' not found: {label_dir}")
    assert "Epoch 1" not in open(os.path.join(out, "train.log")).read()
    assert not os.path.exists(os.path.join(out, "ckpt"))


def test_checkpoint_path_probe_leaves_nothing_behind(tmp_path):
    from src.engine.startup import check_writable_dir
    check_writable_dir(str(tmp_path / "a" / "b" / "ckpt"), "checkpoint_path")
    check_writable_dir(str(tmp_path), "checkpoint_path")
    assert os.listdir(tmp_path) == []


def test_unwritable_checkpoint_path_fails_before_training(demo, tmp_path, capsys,
                                                         no_runtime_setup):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    out = str(tmp_path / "run")
    args = seg_train_args(demo["city"], out) + [f"--checkpoint_path={blocker}/ckpt"]
    code, lines = run_main("train.py", args, capsys)
    assert_clear_error(code, lines, "config key 'checkpoint_path'", f"{blocker}/ckpt",
                       f"{blocker} is a file, not a folder")
    assert "Epoch 1" not in open(os.path.join(out, "train.log")).read()
    assert blocker.read_text() == "x"


# ------------------------------------------------- unexpected errors keep their trace --

def test_unexpected_error_keeps_its_traceback(demo, tmp_path, capsys, monkeypatch,
                                              no_runtime_setup):
    """A bug (here a KeyError deep in training) is no user error: its traceback goes to
    stderr and train.log, and the last line says it was unexpected."""
    def broken_train(cfg, rank_id, group_size, log):
        return {}["missing key"]

    monkeypatch.setattr("src.engine.trainer.train", broken_train)
    out = str(tmp_path / "run")
    code, lines = run_main("train.py", seg_train_args(demo["city"], out), capsys)
    assert code == 1
    text = "\n".join(lines)
    assert "Traceback (most recent call last)" in text and "broken_train" in text
    assert lines[-1].startswith("error: unexpected KeyError: 'missing key'")
    assert os.path.join(out, "train.log") in lines[-1]
    log = open(os.path.join(out, "train.log")).read()
    assert "Traceback (most recent call last)" in log and "broken_train" in log


def test_user_message_of_wrapped_and_plain_errors():
    from src.data import DataError
    from src.utils.errors import user_message

    wrapped = RuntimeError(
        "Exception thrown from user defined Python function in dataset.\n\n----\n- Python Call "
        "Stack:\n----\nTraceback (most recent call last):\n  File \"x.py\", line 1, in f\n"
        "src.data.transforms.DataError: /d/a.png: corrupt\n  second line\n\n"
        "------------------------------------------------------------------\n"
        "- C++ Call Stack: (For framework developers)\n---\ngenerator_op.cc(383).")
    assert user_message(wrapped) == "/d/a.png: corrupt\n  second line"
    assert user_message(DataError("/d/b.png: bad")) == "/d/b.png: bad"
    assert user_message(ValueError("a bug")) is None
    assert user_message(RuntimeError("ValueError: a bug quoted")) is None
    try:
        try:
            raise DataError("/d/c.png: bad")
        except DataError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert user_message(outer) == "/d/c.png: bad"


# ------------------------------------------------------------------ silent surprises --

def test_pretrained_path_left_unread_by_load_ckpt_false_is_said(demo, tmp_path, capsys,
                                                                no_runtime_setup):
    """--pretrained_ckpt_path with load_ckpt: False (the demo config's) trains from scratch,
    saying so at start-up with both keys and how to load it."""
    out = str(tmp_path / "run")
    ckpt = str(tmp_path / "pretrained.ckpt")
    load_tool("train.py").main(seg_train_args(demo["city"], out) + [f"--pretrained_ckpt_path={ckpt}"])
    log = open(os.path.join(out, "train.log")).read().splitlines()
    warning = (f"warning: pretrained_ckpt_path={ckpt} is not loaded because load_ckpt=False: "
               f"training starts from the initial weights; add --load_ckpt=True to load it")
    assert warning in log
    assert log.index(warning) < min(i for i, line in enumerate(log) if line.startswith("Epoch 1"))


def test_unused_pretrained_warning_only_when_a_path_is_left_unread():
    from src.engine.trainer import unused_pretrained_warning
    from src.utils.config import load_config
    # the shipped recipes: a default path with load_ckpt True, or no path with load_ckpt False
    assert unused_pretrained_warning(load_config(B0_DEMO, [])) is None
    assert unused_pretrained_warning(load_config(VIT_DEMO, [])) is None
    city = os.path.join(REPO, "config", "segformer.b0.512x1024.city.yaml")
    assert unused_pretrained_warning(load_config(city, [])) is None
    warning = unused_pretrained_warning(load_config(city, ["--load_ckpt=False"]))
    assert warning.startswith("warning: pretrained_ckpt_path=./pretrained/ms_pretrained_b0.ckpt "
                              "is not loaded because load_ckpt=False")
    assert "--load_ckpt=True" in warning


def label_files(data):
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(os.path.join(data, "gtFine"))
                  for f in fs if f.endswith("_gtFine_labelTrainIds.png"))


def ignore_everything(path):
    """Rewrite the label ``path`` as all ignore_label (255), keeping its size."""
    with Image.open(path) as im:
        size = im.size
    Image.fromarray(np.full(size[::-1], 255, np.uint8), mode="L").save(path)


def verify(data, capsys, *args):
    """Exit status and stdout lines of tools/verify_dataset.py on the demo config."""
    code = load_tool("tools/verify_dataset.py").main([B0_DEMO, f"--data_path={data}", *args])
    return code, capsys.readouterr().out.strip().splitlines()


def test_all_ignore_labels_fail_verification_and_warn_in_training(demo, tmp_path, capsys,
                                                                  no_runtime_setup):
    data = copy_of(demo["city"], tmp_path)
    labels = label_files(data)
    for path in labels:
        ignore_everything(path)
    train_labels = [p for p in labels if os.sep + "train" + os.sep in p]
    code, lines = verify(data, capsys, "--split=train")
    assert code == 1, lines
    text = "\n".join(lines)
    assert ("no label file of split 'train' has a labelled pixel: training would see a loss of "
            "exactly 0 (2 of 2 label file(s) of split 'train' have no labelled pixel (all "
            "ignore_label 255 after the label rule)") in text
    assert all(path in text for path in train_labels)
    # training runs (a crop may be all ignored) but says that its loss is 0 throughout
    out = str(tmp_path / "run")
    load_tool("train.py").main(seg_train_args(data, out))
    log = open(os.path.join(out, "train.log")).read().splitlines()
    assert ("warning: all 1 step(s) of epoch 1 had a loss of exactly 0: its batches most likely "
            "hold no labelled pixel (every label pixel ignore_label=255), so nothing is learnt; "
            f"check the data with python tools/verify_dataset.py {B0_DEMO} --data_path={data}") in log


def test_some_all_ignore_labels_are_a_note_of_verification(demo, tmp_path, capsys):
    data = copy_of(demo["city"], tmp_path)
    _, label = first_train_pair(data)
    ignore_everything(label)
    code, lines = verify(data, capsys, "--split=train")
    assert code == 0, lines
    assert lines[0].endswith(": OK")
    assert lines[1] == ("  note: 1 of 2 label file(s) of split 'train' have no labelled pixel "
                        "(all ignore_label 255 after the label rule):")
    assert lines[2].strip() == label


def gray16_png(path, height=6, width=10, seed=0):
    """A real 16-bit grayscale PNG (PIL mode I;16) with values over the whole 0..65535."""
    values = np.random.default_rng(seed).integers(0, 65536, (height, width)).astype(np.uint16)
    values[0, :3] = (0, 255, 65535)
    Image.fromarray(values).save(path)
    with Image.open(path) as im:
        assert im.mode == "I;16"
    return values


def test_16bit_gray_image_is_read_as_opencv_reads_it(tmp_path):
    """OpenCV's IMREAD_COLOR (mmcv.imread): the high byte of each value, in 3 channels;
    not PIL's convert("RGB"), which clips at 255 (a white image)."""
    import cv2
    from src.apis import _decode
    from src.data.transforms import read_image
    path = str(tmp_path / "gray16.png")
    values = gray16_png(path)
    image = read_image(path)
    expected = np.repeat((values >> 8).astype(np.uint8)[:, :, None], 3, axis=2)
    assert image.dtype == np.uint8 and image.shape == (6, 10, 3)
    np.testing.assert_array_equal(image, expected)
    np.testing.assert_array_equal(image, cv2.imread(path, cv2.IMREAD_COLOR)[:, :, ::-1])
    # the classification path (MindSpore's Decode, in the dataset and the API) agrees
    np.testing.assert_array_equal(_decode(path), expected)


def test_16bit_gray_image_in_a_dataset_and_infer(demo, tmp_path, capsys, no_runtime_setup,
                                                 b0_ckpt):
    from src.data import eval_source
    from src.utils.config import load_config
    data = copy_of(demo["city"], tmp_path)
    val = os.path.join(data, "leftImg8bit", "val")
    image_path = sorted(os.path.join(d, f) for d, _, fs in os.walk(val) for f in fs)[0]
    values = gray16_png(image_path, 64, 128)
    image, _ = eval_source(load_config(B0_DEMO, [f"--data_path={data}"])).load(0)
    np.testing.assert_array_equal(image, np.repeat((values >> 8).astype(np.uint8)[:, :, None], 3, 2))
    # infer.py reads it through the same function: same prediction as the 8-bit conversion
    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(image_path, folder / "a16.png")
    Image.fromarray(image).save(folder / "b8.png")
    out = tmp_path / "out"
    load_tool("infer.py").main(infer_args(b0_ckpt, folder, out, tmp_path))
    gray = [np.asarray(Image.open(out / f"{stem}_gray.png")) for stem in ("a16", "b8")]
    np.testing.assert_array_equal(gray[0], gray[1])


def test_16bit_labels_read_as_their_values_or_a_clear_error(demo, tmp_path, capsys):
    from src.data import DataError
    from src.data.transforms import read_label
    path = str(tmp_path / "label16.png")
    values = np.array([[0, 3, 255], [18, 1, 0]], np.uint16)
    Image.fromarray(values).save(path)
    label = read_label(path)
    assert label.dtype == np.uint8
    np.testing.assert_array_equal(label, values)
    values[1, 1] = 300  # mmseg's astype(np.uint8) would make it class 44
    Image.fromarray(values).save(path)
    with pytest.raises(DataError, match=rf"^{path}: 16-bit label holds values \[300\] outside 0..255"):
        read_label(path)
    data = copy_of(demo["city"], tmp_path)
    _, label_path = first_train_pair(data)
    with Image.open(label_path) as im:
        raw = np.asarray(im).astype(np.uint16)
    raw[0, 0] = 1000
    Image.fromarray(raw).save(label_path)
    code, lines = verify(data, capsys, "--split=train")
    assert code == 1
    assert f"  - {label_path}: 16-bit label holds values [1000] outside 0..255" in "\n".join(lines)


def test_float_image_is_refused_by_name(tmp_path):
    from src.data import DataError
    from src.data.transforms import read_image
    path = str(tmp_path / "float.tif")
    Image.fromarray(np.ones((4, 4), np.float32)).save(path)
    with pytest.raises(DataError, match=rf"^{path}: floating-point image \(mode F\) is not supported"):
        read_image(path)


def test_symlink_loop_in_the_data_folder_is_reported_not_followed(demo, tmp_path, capsys,
                                                                  no_runtime_setup):
    """`find -L`: "File system loop detected". Followed, each loop would list the split's
    files again and again (hundreds of samples from 2)."""
    from src.data import DataError, list_samples
    from src.utils.config import load_config
    data = copy_of(demo["city"], tmp_path)
    links = []
    for top in ("leftImg8bit", "gtFine"):
        link = os.path.join(data, top, "train", "aachen", "loop")
        os.symlink("..", link)
        links.append(link)
    real = os.path.join(data, "leftImg8bit", "train")
    code, lines = verify(data, capsys, "--split=train")
    assert code == 1, lines
    text = "\n".join(lines)
    assert (f"1 folder(s) under {real} lead to a folder already listed (a symlink loop or a "
            f"second link to one folder)") in text
    assert all(f"{link} -> {os.path.dirname(os.path.dirname(link))}" in text for link in links)
    with pytest.raises(DataError, match="symlink loop"):
        list_samples(load_config(B0_DEMO, [f"--data_path={data}"]), "train")
    # training stops before any work; the error lists the links, one a line, as every
    # listing problem does (the last line names the last link)
    out = str(tmp_path / "run")
    code, lines = run_main("train.py", seg_train_args(data, out), capsys)
    assert code == 1
    first = next(i for i, line in enumerate(lines) if line.startswith("error: "))
    assert lines[first].startswith(f"error: 1 folder(s) under {real} lead to a folder already listed")
    assert [line.strip() for line in lines[first + 1:]] == [
        f"{links[0]} -> {real}", f"1 folder(s) under {os.path.dirname(links[1])[:-len('/aachen')]} "
        f"lead to a folder already listed (a symlink loop or a second link to one folder), so "
        f"their files would count more than once; remove the link(s):",
        f"{links[1]} -> {os.path.dirname(os.path.dirname(links[1]))}"]
    assert "Traceback" not in "\n".join(lines)
    assert not os.path.exists(os.path.join(out, "ckpt"))


def test_file_discovery_enters_each_real_folder_once(tmp_path):
    from src.data.listing import walk_files
    for folder in ("a", "c"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x.png").write_bytes(b"")
    os.symlink(tmp_path / "c", tmp_path / "b_link")   # listed before the real c
    os.symlink(tmp_path / "a", tmp_path / "z_link")   # a second way into a
    os.symlink("../a", tmp_path / "a" / "up")          # a loop back into a
    os.symlink(tmp_path / "a" / "x.png", tmp_path / "file_link.png")  # files are never repeats
    files, repeated = walk_files(str(tmp_path))
    assert [os.path.relpath(f, tmp_path) for f in files] == ["file_link.png", "a/x.png", "b_link/x.png"]
    assert repeated == [f"{tmp_path}/c (already listed through {tmp_path}/b_link)",
                        f"{tmp_path}/z_link -> {tmp_path}/a",
                        f"{tmp_path}/a/up -> {tmp_path}/a"]


def test_symlink_loop_in_the_infer_folder_is_an_error(b0_ckpt, images_folder, tmp_path, capsys,
                                                      no_runtime_setup):
    link = images_folder / "again"
    os.symlink(images_folder, link)
    out = tmp_path / "out"
    code, lines = run_main("infer.py", infer_args(b0_ckpt, images_folder, out, tmp_path), capsys)
    assert_clear_error(code, lines, f"{link} -> {images_folder}")
    assert not os.path.exists(out)


# ------------------------------------------------------------- export, eval, infer --

@pytest.fixture(scope="module")
def b0_ckpt(tmp_path_factory):
    from src.models import build_model
    from src.utils.checkpoint import save_checkpoint
    from src.utils.config import load_config
    path = str(tmp_path_factory.mktemp("b0") / "segformer_b0.ckpt")
    save_checkpoint(build_model(load_config(B0_DEMO, ["--mode=PYNATIVE"])), path)
    return path


def test_export_of_a_shape_the_network_cannot_take(b0_ckpt, tmp_path, capsys, no_runtime_setup):
    """SegFormer's stride-32 stage cannot take 16x16: MindSpore would still write a MINDIR
    that fails only when loaded."""
    stem = str(tmp_path / "net")
    code, lines = run_main("export.py", [f"--config_path={B0_DEMO}", "--mode=PYNATIVE",
                                         f"--export_ckpt_path={b0_ckpt}", f"--export_file_name={stem}",
                                         "--export_input_shape=1,3,16,16"], capsys)
    assert_clear_error(code, lines, "export_input_shape [1, 3, 16, 16]", "Conv2d",
                       "nothing was written")
    assert os.listdir(tmp_path) == []


def test_eval_with_a_distributed_config_runs_on_one_device(demo, b0_ckpt, tmp_path, capsys,
                                                           monkeypatch):
    """A training recipe with run_distribute: True evaluates on one machine without a
    launcher (saying so); training keeps requiring the launcher."""
    import src.utils.device as device
    for key in device.MSRUN_ENV + ("RANK_TABLE_FILE",):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(device, "_check_device", lambda target, device_id: None)
    args = [f"--config_path={B0_DEMO}", "--mode=PYNATIVE", "--run_distribute=True",
            f"--data_path={demo['city']}", "--eval_base_size=[64,128]", f"--output_dir={tmp_path}"]
    load_tool("eval.py").main(args + [f"--eval_ckpt_path={b0_ckpt}"])
    out = capsys.readouterr().out
    assert ("run_distribute=True in the config, but no distributed launcher started this "
            "process: running on one device") in out
    assert "===> mIoU:" in out
    code, lines = run_main("train.py", args + [f"--checkpoint_path={tmp_path}/ckpt"], capsys)
    assert_clear_error(code, lines, "run_distribute=True on CPU needs the msrun variables")
    assert not os.path.exists(tmp_path / "ckpt")


@pytest.fixture
def images_folder(demo, tmp_path):
    """A folder holding one image (a demo val scene)."""
    folder = tmp_path / "images"
    folder.mkdir()
    val = os.path.join(demo["city"], "leftImg8bit", "val")
    first = sorted(os.path.join(d, f) for d, _, fs in os.walk(val) for f in fs)[0]
    shutil.copy(first, folder / "scene.png")
    return folder


@pytest.fixture
def alarm():
    """Fail (instead of hanging the suite) if a call blocks, e.g. on opening a FIFO."""
    import signal

    def timeout(*_):
        raise TimeoutError("blocked for 120 s")
    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def infer_args(b0_ckpt, data, out, tmp_path):
    return [f"--config_path={B0_DEMO}", "--mode=PYNATIVE", f"--infer_ckpt_path={b0_ckpt}",
            f"--data_path={data}", f"--infer_output_path={out}", f"--output_dir={tmp_path}/logs",
            "--eval_base_size=[64,128]"]


def test_infer_output_folder_is_the_input_folder(b0_ckpt, images_folder, tmp_path, capsys,
                                                 no_runtime_setup):
    before = files_under(str(images_folder))
    code, lines = run_main("infer.py", infer_args(b0_ckpt, images_folder, images_folder, tmp_path),
                           capsys)
    assert_clear_error(code, lines, f"infer_output_path {images_folder}", "is the input folder")
    assert files_under(str(images_folder)) == before


def test_infer_skips_a_fifo_named_like_an_image(b0_ckpt, images_folder, tmp_path, capsys, alarm,
                                                no_runtime_setup):
    os.mkfifo(images_folder / "pipe.png")
    out = tmp_path / "out"
    load_tool("infer.py").main(infer_args(b0_ckpt, images_folder, out, tmp_path))
    assert "skipping 1 file(s) that are not images" in capsys.readouterr().out
    assert "scene_gray.png" in files_under(str(out)) and "pipe_gray.png" not in files_under(str(out))
    code, lines = run_main("infer.py", infer_args(b0_ckpt, images_folder / "pipe.png", out, tmp_path),
                           capsys)
    assert_clear_error(code, lines, "pipe.png is neither a regular file nor a folder")


# ------------------------------------------------------------------------ converter --

def mit_b0_imagenet_state():
    """The tensors by which an NVlabs ImageNet MiT-B0 is recognised (embed dims, depths)."""
    state = {}
    for stage, dim in enumerate((32, 64, 160, 256), start=1):
        state[f"patch_embed{stage}.proj.weight"] = np.ones((dim, 3, 3, 3), np.float32)
        for block in range(2):
            state[f"block{stage}.{block}.norm1.weight"] = np.ones(dim, np.float32)
    return state


@pytest.mark.parametrize("key,value,expected", [
    ("block2.1.norm1.weight", np.array([1.0, np.nan] * 32, np.float32), "non-finite"),
    ("patch_embed3.proj.weight", np.ones((160, 3, 3, 3), np.float32) * np.inf, "non-finite"),
    ("patch_embed1.proj.weight", np.ones((32, 3, 3, 3), np.int32), "dtype int32"),
    ("block1.0.norm1.weight", np.ones(32, bool), "dtype bool"),
])
def test_converter_refuses_bad_values(tmp_path, capsys, key, value, expected):
    from safetensors.numpy import save_file
    state = mit_b0_imagenet_state()
    state[key] = value
    src, out = str(tmp_path / "mit_b0.safetensors"), str(tmp_path / "out.ckpt")
    save_file(state, src)
    with pytest.raises(SystemExit) as exc:
        load_tool("tools/convert_model.py").main([f"--pt_model_path={src}",
                                                  f"--ms_model_path={out}"])
    message = str(exc.value.code)
    assert message.startswith("convert_model: error:") and "\n" not in message
    assert f"'backbone.{key}' (checkpoint key '{key}')" in message and expected in message
    assert not os.path.exists(out)


def test_fused_tensor_names_its_faulty_part():
    from src.convert.common import BadValuesError, check_values
    q = np.ones((4, 4), np.float32)
    k = np.ones((4, 4), np.float32)
    v = np.full((4, 4), np.nan, np.float32)
    source = {"layers.0.attention.q_proj.weight": q, "layers.0.attention.k_proj.weight": k,
              "layers.0.attention.v_proj.weight": v}
    with pytest.raises(BadValuesError, match=r"'blocks.0.attn.qkv.weight' \(from parts such as "
                                             r"'layers.0.attention.v_proj.weight'\) holds 16 "):
        check_values({"blocks.0.attn.qkv.weight": np.concatenate([q, k, v])}, source)
