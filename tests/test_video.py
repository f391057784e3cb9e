"""infer.py on a video file and on a folder of frames: an overlay video whose frames are the
API's predictions blended as infer.py's _overlap.png, with a progress bar."""
import os

import cv2
import numpy as np
import pytest
import mindspore as ms
from PIL import Image

from src.apis import inference_model, init_model
from src.data.cityscapes import PALETTE as CITYSCAPES_PALETTE
from src.utils.palette import color_image, overlap_image
from tests.test_eval_infer_export import (B0_DEMO, export_quarter_resolution_mindir,  # noqa: F401  (fixtures)
                                          demo, load_tool, no_runtime_setup, run_main)

ms.set_context(mode=ms.PYNATIVE_MODE)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, demo):
    """A small 19-class net as a dynamic MINDIR, and a 3-frame MJPG video of demo scenes."""
    tmp = tmp_path_factory.mktemp("video")
    mindir = export_quarter_resolution_mindir(tmp / "tiny", seed=6)
    frames = [np.asarray(Image.open(p).convert("RGB")) for p in
              sorted((demo["root"] / "city" / "leftImg8bit" / "val").rglob("*.png"))]
    video = str(tmp / "drive.avi")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (128, 64))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return {"mindir": mindir, "video": video, "frames": frames}


def read_video(path):
    capture = cv2.VideoCapture(path)
    frames = []
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    fps = capture.get(cv2.CAP_PROP_FPS)
    capture.release()
    return frames, fps


def test_video_file_gives_overlay_video(tiny, tmp_path, capsys, no_runtime_setup):
    out = tmp_path / "out"
    load_tool("infer.py").main([f"--config_path={B0_DEMO}", f"--infer_ckpt_path={tiny['mindir']}",
                                f"--data_path={tiny['video']}", f"--infer_output_path={out}",
                                "--mode=PYNATIVE", f"--output_dir={tmp_path}",
                                "--eval_base_size=64,128"])
    captured = capsys.readouterr()
    assert "3/3" in captured.err  # the progress bar
    assert f"video done: 3 frames written to {out}/drive_overlay.mp4" in captured.out
    assert os.listdir(out) == ["drive_overlay.mp4"]
    written, fps = read_video(str(out / "drive_overlay.mp4"))
    assert fps == pytest.approx(10.0) and len(written) == 3

    model = init_model(B0_DEMO, tiny["mindir"], mode="PYNATIVE", eval_base_size=[64, 128],
                       log=lambda m: None)
    inputs, _ = read_video(tiny["video"])  # the frames as the decoder gives them
    for frame, got in zip(inputs, written):
        expected = overlap_image(frame, color_image(inference_model(model, frame),
                                                    CITYSCAPES_PALETTE))
        error = np.abs(got.astype(int) - expected).mean()
        # MPEG-4 is lossy (~9 grey levels at this size); a frame without the overlay, or the
        # overlay moved by 8 pixels, is several times further off
        assert error < 12, error
        assert np.abs(got.astype(int) - frame).mean() > 3 * error
        assert np.abs(got.astype(int) - np.roll(expected, 8, axis=1)).mean() > 2 * error


def test_folder_of_frames_and_bad_inputs(tiny, tmp_path, capsys, no_runtime_setup):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, frame in enumerate(tiny["frames"][:2]):
        Image.fromarray(frame).save(frames / f"{i:04d}.png")
    base = [f"--config_path={B0_DEMO}", f"--infer_ckpt_path={tiny['mindir']}", "--mode=PYNATIVE",
            f"--output_dir={tmp_path}", "--eval_base_size=64,128",
            f"--infer_output_path={tmp_path}/out"]
    load_tool("infer.py").main(base + [f"--data_path={frames}", "--infer_video=True"])
    written, fps = read_video(str(tmp_path / "out" / "frames_overlay.mp4"))
    assert len(written) == 2 and fps == pytest.approx(25.0)
    capsys.readouterr()

    Image.fromarray(tiny["frames"][0][:32]).save(frames / "0002.png")
    err = run_main("infer.py", base + [f"--data_path={frames}", "--infer_video=True"], capsys)
    assert "0002.png: frame size 128x32 (WxH) differs from the first frame's 128x64" in err
    err = run_main("infer.py", base + [f"--data_path={tiny['video']}", "--format_only=True"], capsys)
    assert "format_only" in err and "does not apply to a video" in err
    fake = tmp_path / "notes.mp4"
    fake.write_text("not a video")
    err = run_main("infer.py", base + [f"--data_path={fake}"], capsys)
    assert "notes.mp4: OpenCV cannot open this video file" in err
