"""Speed and memory of our MindSpore models against the PyTorch reference (HF transformers).

    python benchmarks/bench_models.py [--cases b0_fwd_512x1024 vit_b16_fwd_b8 ...]
        [--runners ms_graph ms_graph_reference ms_pynative torch] [--repeats 5] [--warmup 1] [--threads 2]
        [--quick] [--out bench.json] [--data-config config/segformer.b0.demo.yaml]

Not a test (needs requirements-dev: torch + transformers). Every (case, runner) pair runs
in its own child process (this script with ``--worker``), so that one framework's thread
pools, allocator and peak RSS do not leak into the other's numbers. Each child builds the
model with random weights, runs ``--warmup`` untimed calls (GRAPH_MODE compiles there),
then ``--repeats`` timed ones, and reports the median and min wall time and its own peak
RSS (``resource.getrusage``, which includes model construction and graph compile).

Both frameworks get the same input (numpy, seed 0) and the same thread count:
``torch.set_num_threads(T)`` and ``mindspore.device_context.cpu.op_tuning.threads_num(T)``
(MindSpore's CPU kernel pool is 25 threads by default), plus ``OMP_NUM_THREADS=T`` in the
child's environment. The reference is HF ``SegformerForSemanticSegmentation`` /
``ViTForImageClassification`` with sdpa attention.

Cases (issue #9):
  b0_fwd_512x1024   SegFormer-B0 forward, 1x3x512x1024, 19 classes
  b0_fwd_1024x2048  SegFormer-B0 forward, 1x3x1024x2048
  b0_train_512x512  SegFormer-B0 train step (forward + CE loss + backward + AdamW), 2x3x512x512
  vit_b16_fwd_b8    ViT-B/16 classifier forward, 8x3x224x224, 1000 classes
  b0_slide_city     slide inference of one 1024x2048 image: 3 windows of 1024, stride 768
                    (ours: src/engine/inference.SegInferencer.image_frame_logits; reference:
                    the same mmseg slide loop around the HF model), logits summed, averaged
  data_pipeline     images/s of the training data pipeline at 512x1024 crops
                    (tools/benchmark_data.images_per_second on --data-config; MindSpore only)
"""
import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CASES = {
    "b0_fwd_512x1024": dict(kind="segformer_fwd", shape=(1, 3, 512, 1024)),
    "b0_fwd_1024x2048": dict(kind="segformer_fwd", shape=(1, 3, 1024, 2048)),
    "b0_train_512x512": dict(kind="segformer_train", shape=(2, 3, 512, 512)),
    "vit_b16_fwd_b8": dict(kind="vit_fwd", shape=(8, 3, 224, 224)),
    "b0_slide_city": dict(kind="segformer_slide", shape=(1, 3, 1024, 2048)),
    "data_pipeline": dict(kind="data", shape=None),
}
# ms_graph / ms_pynative: the cpu kernel backend (kernel_backend auto on this CPU);
# ms_graph_reference: the reference backend in GRAPH mode, the graph an exported MINDIR holds
RUNNERS = ("ms_graph", "ms_graph_reference", "ms_pynative", "torch")
BACKENDS = {"ms_graph": "cpu", "ms_graph_reference": "reference", "ms_pynative": "cpu"}
NUM_CLASSES = 19
VIT_CLASSES = 1000
SLIDE_CROP, SLIDE_STRIDE = (1024, 1024), (768, 768)
# Goals of issue #9: ours / PyTorch (median) at most this.
GOALS = {"b0_fwd_512x1024": 0.8, "b0_fwd_1024x2048": 0.8, "b0_train_512x512": 1.0,
         "vit_b16_fwd_b8": 1.0}


def simd_level():
    """The widest x86 SIMD the CPU has (our C++ kernels are built for it: results from an
    AVX-512 machine and an AVX2 one are not comparable), else the machine name."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), [])
    except OSError:
        flags = []
    for level in ("avx512f", "avx2", "avx", "sse4_2"):
        if level in flags:
            return level
    return platform.machine()


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def make_input(shape, seed=0):
    import numpy as np
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def make_labels(shape, seed=1):
    import numpy as np
    n, _, h, w = shape
    labels = np.random.default_rng(seed).integers(0, NUM_CLASSES, (n, h, w)).astype(np.int32)
    labels[:, :8] = 255  # some ignored pixels, as in Cityscapes
    return labels


def time_calls(fn, warmup, repeats):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


# --------------------------------------------------------------------- MindSpore --

def ms_setup(mode, threads):
    import mindspore as ms
    ms.set_device("CPU")
    ms.device_context.cpu.op_tuning.threads_num(threads)
    ms.set_context(mode=ms.PYNATIVE_MODE if mode == "ms_pynative" else ms.GRAPH_MODE)
    return ms


def ms_cfg(model, runner, overrides=()):
    from src.utils.config import load_config
    overrides = [f"--kernel_backend={BACKENDS[runner]}", *overrides]
    if model == "segformer":
        args = ["--model=segformer", "--backbone=mit_b0", f"--class_num={NUM_CLASSES}"]
    else:
        args = ["--model=vit", "--backbone=vit_base_patch16_224", f"--class_num={VIT_CLASSES}",
                "--image_size=224"]
    return load_config("", args + list(overrides))


def ms_case(case, mode, threads, warmup, repeats):
    ms = ms_setup(mode, threads)
    from src.models import build_model
    spec = CASES[case]
    kind, shape = spec["kind"], spec["shape"]
    if kind == "data":
        return ms_data_pipeline(warmup, repeats)
    x = make_input(shape)
    if kind in ("segformer_fwd", "vit_fwd"):
        net = build_model(ms_cfg("segformer" if kind == "segformer_fwd" else "vit", mode))
        net.set_train(False)
        images = ms.Tensor(x)
        fn = lambda: net(images).asnumpy()  # noqa: E731  (asnumpy waits for the result)
    elif kind == "segformer_slide":
        from src.engine.inference import SegInferencer
        cfg = ms_cfg("segformer", mode, ["--eval_mode=slide",
                                         f"--eval_crop_size={list(SLIDE_CROP)}",
                                   f"--eval_stride={list(SLIDE_STRIDE)}"])
        net = build_model(cfg)
        net.set_train(False)
        inferencer = SegInferencer(net, cfg)
        fn = lambda: inferencer.image_frame_logits(x).argmax(axis=1)  # noqa: E731
    else:  # segformer_train: the trainer's TrainStep (loss scale 1, no clipping)
        from src.engine.amp import build_loss_scaler
        from src.engine.loss import build_loss
        from src.engine.optim import build_optimizer
        from src.engine.train_step import TrainStep
        cfg = ms_cfg("segformer", mode, ["--optimizer=adamw"])
        net = build_model(cfg)
        net.set_train(True)
        step = TrainStep(net, build_loss(cfg), build_optimizer(net, cfg), build_loss_scaler(cfg),
                         device_target="CPU")
        images, labels = ms.Tensor(x), ms.Tensor(make_labels(shape))
        lr = ms.Tensor(6e-5, ms.float32)
        fn = lambda: step(images, labels, lr)[0].asnumpy()  # noqa: E731
    return {"times": time_calls(fn, warmup, repeats)}


def ms_data_pipeline(warmup, repeats):
    from tools.benchmark_data import images_per_second
    from src.utils.config import load_config
    cfg = load_config(os.path.join(ROOT, DATA_CONFIG[0]),
                      ["--crop_size=[512,1024]", "--base_size=[1024,2048]"])
    rate = images_per_second(cfg, max(repeats, 2))
    return {"times": [1.0 / rate], "images_per_second": rate, "config": DATA_CONFIG[0]}


DATA_CONFIG = ["config/segformer.b0.demo.yaml"]


# ----------------------------------------------------------------------- PyTorch --

def torch_case(case, threads, warmup, repeats):
    import torch
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    torch.manual_seed(0)
    spec = CASES[case]
    kind, shape = spec["kind"], spec["shape"]
    if kind == "data":
        return None
    x = torch.from_numpy(make_input(shape))
    if kind == "vit_fwd":
        from transformers import ViTConfig, ViTForImageClassification
        config = ViTConfig(image_size=224, patch_size=16, num_labels=VIT_CLASSES,
                           attn_implementation="sdpa")
        model = ViTForImageClassification(config).eval()
    else:
        from transformers import SegformerConfig, SegformerForSemanticSegmentation
        config = SegformerConfig(num_labels=NUM_CLASSES, attn_implementation="sdpa")  # = B0
        model = SegformerForSemanticSegmentation(config)
        model.train(kind == "segformer_train")
    if kind in ("segformer_fwd", "vit_fwd"):
        def fn():
            with torch.inference_mode():
                model(pixel_values=x).logits
    elif kind == "segformer_slide":
        def fn():
            with torch.inference_mode():
                torch_slide(model, x).argmax(1)
    else:
        labels = torch.from_numpy(make_labels(shape)).long()
        optimizer = torch.optim.AdamW(model.parameters(), lr=6e-5, weight_decay=0.01)

        def fn():
            optimizer.zero_grad(set_to_none=True)
            loss = model(pixel_values=x, labels=labels).loss  # upsample + CE(ignore 255)
            loss.backward()
            optimizer.step()
    return {"times": time_calls(fn, warmup, repeats)}


def torch_slide(model, x):
    """mmseg slide_inference around the HF model (the reference of b0_slide_city)."""
    import torch
    import torch.nn.functional as F
    n, _, height, width = x.shape
    (h_crop, w_crop), (h_stride, w_stride) = SLIDE_CROP, SLIDE_STRIDE
    h_grids = max(height - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(width - w_crop + w_stride - 1, 0) // w_stride + 1
    summed = x.new_zeros((n, NUM_CLASSES, height, width))
    count = x.new_zeros((1, 1, height, width))
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y2 = min(h_idx * h_stride + h_crop, height)
            x2 = min(w_idx * w_stride + w_crop, width)
            y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
            logits = model(pixel_values=x[:, :, y1:y2, x1:x2]).logits
            summed[:, :, y1:y2, x1:x2] += F.interpolate(logits, size=(y2 - y1, x2 - x1),
                                                        mode="bilinear", align_corners=False)
            count[:, :, y1:y2, x1:x2] += 1
    return summed / count


# ------------------------------------------------------------------------ driver --

def worker(args):
    if args.worker == "torch":
        result = torch_case(args.case, args.threads, args.warmup, args.repeats)
    else:
        result = ms_case(args.case, args.worker, args.threads, args.warmup, args.repeats)
    if result is not None:
        result["peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(result))


def run_child(case, runner, args):
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), GLOG_v="3")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", runner, "--case", case,
           "--threads", str(args.threads), "--warmup", str(args.warmup),
           "--repeats", str(args.repeats), "--data-config", args.data_config]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}
    result = json.loads(lines[-1][len("RESULT "):])
    if result is None:
        return None
    times = result.pop("times")
    result.update(median_s=statistics.median(times), min_s=min(times), repeats=len(times),
                  process_wall_s=wall)
    return result


def fmt(value, spec):
    return "-" if value is None else format(value, spec)


def print_table(results):
    head = (f"{'case':18s} {'runner':18s} {'median s':>9s} {'min s':>8s} {'RSS MiB':>8s} "
            f"{'x torch':>8s} {'RSS x':>6s} {'goal':>5s}")
    print(head)
    print("-" * len(head))
    for case, runs in results.items():
        for runner, r in runs.items():
            if r is None:
                continue
            if "error" in r:
                print(f"{case:18s} {runner:18s} ERROR {r['error'][:200]}")
                continue
            if "images_per_second" in r:
                print(f"{case:18s} {runner:18s} {r['images_per_second']:.2f} images/s "
                      f"({r['config']}), RSS {r['peak_rss_mb']:.0f} MiB")
                continue
            ratio = r.get("ratio")
            print(f"{case:18s} {runner:18s} {r['median_s']:9.3f} {r['min_s']:8.3f} "
                  f"{r['peak_rss_mb']:8.0f} {fmt(ratio, '8.2f')} "
                  f"{fmt(r.get('rss_ratio'), '6.2f')} "
                  f"{fmt(GOALS.get(case) if runner != 'torch' else None, '5.1f')}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--runners", nargs="+", default=list(RUNNERS), choices=list(RUNNERS))
    p.add_argument("--repeats", type=int, default=5, help="timed calls per case and runner")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls first (GRAPH compiles)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for both frameworks")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 repeat, no warm-up "
                   "beyond the compile call")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--data-config", default=DATA_CONFIG[0],
                   help="config whose data_path the data_pipeline case reads")
    p.add_argument("--worker", choices=RUNNERS, help=argparse.SUPPRESS)
    p.add_argument("--case", choices=list(CASES), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    DATA_CONFIG[0] = args.data_config
    if args.worker:
        worker(args)
        return 0
    if args.quick:
        args.repeats, args.warmup = 1, 1
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    machine = {"platform": platform.platform(), "processor": platform.processor() or "?",
               "cpu_count": os.cpu_count(), "simd": simd_level(), "threads": args.threads,
               "loadavg_start": load, "repeats": args.repeats, "warmup": args.warmup}
    print(f"{machine['platform']}, {os.cpu_count()} CPUs ({machine['simd']}), "
          f"{args.threads} threads, "
          f"load average {' '.join(load)}, warm-up {args.warmup}, repeats {args.repeats}",
          flush=True)
    results = {}
    for case in args.cases:
        runs = {}
        runners = ["ms_pynative"] if CASES[case]["kind"] == "data" else args.runners
        for runner in runners:
            print(f"  {case} / {runner} ...", flush=True)
            runs[runner] = run_child(case, runner, args)
        ref = runs.get("torch")
        for runner, r in runs.items():
            if r and "error" not in r and ref and "error" not in ref and "median_s" in r:
                r["ratio"] = r["median_s"] / ref["median_s"]
                r["rss_ratio"] = r["peak_rss_mb"] / ref["peak_rss_mb"]
        results[case] = runs
    with open("/proc/loadavg") as f:
        machine["loadavg_end"] = f.read().split()[:3]
    print()
    print_table(results)
    print(f"load average at the end: {' '.join(machine['loadavg_end'])}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"machine": machine, "results": results}, f, indent=2)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
