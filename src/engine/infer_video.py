"""Segment a video into an overlay video (infer.py's engine for videos).

Inputs (``data_path``): a video file (``VIDEO_EXTENSIONS``, read by OpenCV), or, with
``infer_video=True``, a folder of images taken as the frames of one video in name order
(the folder listing of ``src/engine/infer_images.py``). Every frame goes through the same
``predict`` as infer.py's images (the Python API) and is written as infer.py's
``_overlap.png`` would be (50/50 blend of the frame and the class colours) into
``<infer_output_path>/<name>_overlay.mp4`` (MPEG-4, ``infer_video_fps`` frames per second;
0: the input video's rate, or 25 for frames), with a progress bar on stderr.

An unreadable frame image is reported and skipped, like an unreadable image; a frame of
another size than the first is an error naming both.
"""
import os
import sys
from types import SimpleNamespace

import cv2

from src.data import palette
from src.data.transforms import DataError, read_image
from src.engine.infer_images import InferInputError, check_writable, list_images
from src.utils.palette import color_image, overlap_image

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
FRAMES_FPS = 25.0  # a folder of frames carries no rate
FOURCC = "mp4v"


def is_video_input(cfg):
    """True when infer.py should write a video: a video file, or ``infer_video`` set."""
    path = str(cfg.data_path)
    return bool(cfg.infer_video) or (os.path.isfile(path) and path.lower().endswith(VIDEO_EXTENSIONS))


def _open(path):
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise InferInputError(f"{path}: OpenCV cannot open this video file")
    return capture


def plan_video(cfg):
    """Check the input and the output before any model is loaded. Returns a plan:
    ``name``, ``total`` frames (0 if unknown), ``fps``, ``frame_paths`` (frames folder) or
    ``video`` (file), and the output ``path``."""
    if cfg.format_only:
        raise InferInputError("format_only writes a benchmark's per-image files; it does not "
                              "apply to a video (data_path / infer_video)")
    data_path = str(cfg.data_path)
    output_dir = os.path.abspath(cfg.infer_output_path)
    fps = float(cfg.infer_video_fps)
    if fps < 0:
        raise InferInputError(f"config key 'infer_video_fps' must be >= 0 (0: the input's "
                              f"rate), got {cfg.infer_video_fps}")
    if os.path.isfile(data_path) and data_path.lower().endswith(VIDEO_EXTENSIONS):
        capture = _open(data_path)
        ok, _ = capture.read()
        total = max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
        fps = fps or capture.get(cv2.CAP_PROP_FPS) or FRAMES_FPS
        capture.release()
        if not ok:
            raise InferInputError(f"{data_path}: the video has no readable frame")
        plan = SimpleNamespace(video=data_path, frame_paths=None, total=total,
                               name=os.path.splitext(os.path.basename(data_path))[0])
    elif os.path.isdir(data_path):
        _, frames, _ = list_images(data_path, cfg, output_dir)
        plan = SimpleNamespace(video=None, frame_paths=frames, total=len(frames),
                               name=os.path.basename(os.path.normpath(data_path)))
    else:
        raise InferInputError(f"data_path {data_path!r}: expected a video file "
                              f"({', '.join(VIDEO_EXTENSIONS)}) or, with infer_video=True, a "
                              f"folder of frames")
    check_writable(output_dir)
    plan.fps = fps or FRAMES_FPS
    plan.path = os.path.join(output_dir, f"{plan.name}_overlay.mp4")
    return plan


def _frames(plan, failures, log):
    """(label for messages, RGB uint8 frame) in order; unreadable frame images skipped."""
    if plan.video is None:
        for path in plan.frame_paths:
            try:
                yield path, read_image(path)
            except DataError as err:
                failures.append((path, str(err)))
                log(f"skipped (not a readable image): {err}")
        return
    capture = _open(plan.video)
    try:
        index = 0
        while True:
            ok, bgr = capture.read()
            if not ok:
                return
            index += 1
            yield f"{plan.video} frame {index}", cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    finally:
        capture.release()


def run_video(predict, cfg, plan, log=print, progress=None):
    """Write the overlay video of ``plan`` (from ``plan_video``); ``predict(image)`` gives the
    class map of an RGB uint8 frame; the progress bar goes to ``progress`` (default
    stderr). Returns (frames written, [(path, reason)] skipped)."""
    from tqdm import tqdm

    colours = palette(cfg)
    failures, written, writer, size = [], 0, None, None
    log(f"video: {plan.total or 'unknown number of'} frames from "
        f"{plan.video or cfg.data_path}, overlay video will be saved to {plan.path}")
    bar = tqdm(total=plan.total or None, unit="frame", desc=os.path.basename(plan.path),
               file=progress or sys.stderr)  # stderr as it is now, not at import
    try:
        for label, frame in _frames(plan, failures, log):
            if writer is None:
                size = frame.shape
                writer = cv2.VideoWriter(plan.path, cv2.VideoWriter_fourcc(*FOURCC), plan.fps,
                                         (size[1], size[0]))
                if not writer.isOpened():
                    raise InferInputError(f"cannot write the video {plan.path} (OpenCV codec "
                                          f"{FOURCC}, {size[1]}x{size[0]} at {plan.fps} fps)")
            elif frame.shape != size:
                raise InferInputError(f"{label}: frame size {frame.shape[1]}x{frame.shape[0]} "
                                      f"(WxH) differs from the first frame's "
                                      f"{size[1]}x{size[0]}; a video has one size")
            overlay = overlap_image(frame, color_image(predict(frame), colours))
            writer.write(cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
            written += 1
            bar.update(1)
    finally:
        bar.close()
        if writer is not None:
            writer.release()
    log(f"video done: {written} frames written to {plan.path}")
    return written, failures
