"""Plot curves from train.py logs and compute training-time statistics, like mmcls'
analyze_logs.py, for this repository's own log format.

    python tools/analyze_logs.py plot_curve LOG [LOG ...] [--keys loss lr mIoU] [--out curve.png]
                                 [--legend NAME ...] [--title TEXT] [--window_size W*H]
    python tools/analyze_logs.py cal_train_time LOG [LOG ...] [--include_outliers]

LOG is a ``train.log`` (one device), a ``train_rank{R}.log`` (one rank of a distributed
run) or a directory (its ``train.log`` or all its ``train_rank*.log``: one curve / one
report per rank). The lines read are those train.py writes (src/engine/trainer.py,
src/engine/evaluate.py):

    Epoch 3/200, step:100/1487, loss:0.0827, overflow:False, loss_scale:32768.0, step cost:182ms, lr:5.9e-05, eta:1:02:03
    Epoch 3/200 done: mean loss 0.0911, 0 overflowed step(s) skipped (0 in all), epoch cost 271.3s
    ===> aAcc: ..., mAcc: ...      ===> mIoU: ..., ckpt: ...      (segmentation evaluation)
    ===> Total data: N, top1 accuracy: ..., top5 accuracy: ..., ckpt: ...   (ViT evaluation)

(the seed's step line without ``lr``/``eta`` is read too). A log that several runs
appended to describes the last run, together with the runs it resumed from
(``resumed from ...: epoch E/T done``).

Keys: per logged step ``loss``, ``lr``, ``step_time`` (s/iter), ``loss_scale``, ``eta`` (s),
plotted against the iteration; per epoch ``mean_loss``, ``epoch_time`` and the evaluation
metrics ``mIoU``, ``mAcc``, ``aAcc``, ``top1``, ``top5``, plotted against the epoch. One
subplot per key, one curve per log.

cal_train_time prints, per log, the average step time and the slowest / fastest epoch
(mean step time over its step lines), the spread over epochs, the slowest / fastest step
line, and ETA statistics (the trainer's first ETA against the training time that actually
followed; what is left at the average step time). The first step line of each epoch is
left out unless --include_outliers (it carries graph compilation and data-pipeline
start-up).
"""
import argparse
import glob
import math
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from src.utils.errors import UserError  # noqa: E402
from src.utils.plotting import parse_window_size, pyplot, save_figure  # noqa: E402

STEP_KEYS = ("loss", "lr", "step_time", "loss_scale", "eta")
EPOCH_KEYS = ("mean_loss", "epoch_time", "mIoU", "mAcc", "aAcc", "top1", "top5")

_NUM = r"[-+0-9.eE]+|nan|inf|-inf"
STEP_RE = re.compile(
    rf"^Epoch (\d+)/(\d+), step:(\d+)/(\d+), loss:({_NUM}), overflow:(True|False), "
    rf"loss_scale:({_NUM}), step cost:([0-9.]+)ms(?:, lr:({_NUM}))?(?:, eta:(\d+):(\d\d):(\d\d))?")
EPOCH_DONE_RE = re.compile(rf"^Epoch (\d+)/(\d+) done: mean loss ({_NUM}),.* epoch cost ([0-9.]+)s")
CONFIG_RE = re.compile(r"^config: (.*), rank (\d+)/(\d+), device (\S+), seed (-?\d+)")
TRAINING_RE = re.compile(r"^training (\S+) (\S+): epochs (\d+)\.\.(\d+), (\d+) steps per epoch")
RESUMED_RE = re.compile(r"^resumed from (.*): epoch (\d+)/(\d+) done")
ACC_RE = re.compile(rf"^===> aAcc: ({_NUM}), mAcc: ({_NUM})")
MIOU_RE = re.compile(rf"^===> mIoU: ({_NUM}), ckpt: (.*)$")
TOPK_RE = re.compile(rf"^===> Total data: (\d+), top1 accuracy: ({_NUM}), top5 accuracy: ({_NUM}), ckpt: (.*)$")
RANK_FILE_RE = re.compile(r"train_rank(\d+)\.log$")


class LogError(UserError, ValueError):
    """A log file that cannot be read or lacks what was asked for."""


class TrainLog:
    """What one train.log says about the run it describes."""

    def __init__(self, path):
        self.path = path
        self.rank, self.group_size = 0, 1
        self.model = self.backbone = ""
        self.steps_per_epoch = None
        self.epochs = None            # planned epochs
        self.steps = []               # dicts: epoch, step, iteration, covered, loss, ...
        self.epoch_done = {}          # epoch -> {"mean_loss", "epoch_time"}
        self.evals = {}               # epoch -> {"mIoU": ..., ...}
        self.runs = 0                 # runs appended to the file

    @property
    def label(self):
        parent = os.path.basename(os.path.dirname(os.path.abspath(self.path)))
        return f"{parent}/{os.path.basename(self.path)}"

    def has_key(self, key):
        return bool(self.series(key)[0])

    def available_keys(self):
        return [k for k in STEP_KEYS + EPOCH_KEYS if self.has_key(k)]

    def series(self, key):
        """(x, y) of ``key``: iterations for step keys, epochs for epoch/eval keys."""
        if key in STEP_KEYS:
            pts = [(s["iteration"], s[key]) for s in self.steps if s.get(key) is not None]
        elif key in ("mean_loss", "epoch_time"):
            pts = [(e, d[key]) for e, d in sorted(self.epoch_done.items())]
        elif key in EPOCH_KEYS:
            pts = [(e, m[key]) for e, m in sorted(self.evals.items()) if key in m]
        else:
            raise LogError(f"unknown key '{key}'; known keys: {', '.join(STEP_KEYS + EPOCH_KEYS)}")
        return [p[0] for p in pts], [p[1] for p in pts]


def _records(log):
    return log.steps, log.epoch_done, log.evals


def _restore(log, records, until_epoch):
    """Put back the records of the runs a resumed run continues, up to ``until_epoch``."""
    steps, epoch_done, evals = records
    log.steps = [s for s in steps if s["epoch"] <= until_epoch] + log.steps
    log.epoch_done = {**{e: d for e, d in epoch_done.items() if e <= until_epoch}, **log.epoch_done}
    log.evals = {**{e: m for e, m in evals.items() if e <= until_epoch}, **log.evals}


def parse_log(path):
    """Read one train.log / train_rank{R}.log into a ``TrainLog``."""
    if not os.path.isfile(path):
        raise LogError(f"log file not found: {path}")
    log = TrainLog(path)
    match = RANK_FILE_RE.search(os.path.basename(path))
    if match:
        log.rank = int(match.group(1))
    last_done, pending, earlier = 0, {}, ([], {}, {})
    prev_step = {}                   # epoch -> last logged step (for the iterations a line covers)
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        for raw in f:
            line = raw.strip()
            m = STEP_RE.match(line)
            if m:
                epoch, epochs, step, steps = (int(m.group(i)) for i in range(1, 5))
                log.steps_per_epoch, log.epochs = steps, epochs
                covered = step - prev_step.get(epoch, 0)
                prev_step[epoch] = step
                eta = (int(m.group(10)) * 3600 + int(m.group(11)) * 60 + int(m.group(12))
                       if m.group(10) else None)
                log.steps.append({
                    "epoch": epoch, "step": step, "iteration": (epoch - 1) * steps + step,
                    "covered": max(covered, 1), "loss": float(m.group(5)),
                    "overflow": m.group(6) == "True", "loss_scale": float(m.group(7)),
                    "step_time": float(m.group(8)) / 1000.0,
                    "lr": float(m.group(9)) if m.group(9) else None, "eta": eta})
                continue
            m = EPOCH_DONE_RE.match(line)
            if m:
                last_done = int(m.group(1))
                log.epochs = int(m.group(2))
                log.epoch_done[last_done] = {"mean_loss": float(m.group(3)),
                                             "epoch_time": float(m.group(4))}
                continue
            m = ACC_RE.match(line)
            if m:
                pending.update(aAcc=float(m.group(1)), mAcc=float(m.group(2)))
                continue
            m = MIOU_RE.match(line)
            if m:
                pending["mIoU"] = float(m.group(1))
                log.evals[last_done] = dict(pending)
                pending = {}
                continue
            m = TOPK_RE.match(line)
            if m:
                log.evals[last_done] = {"top1": float(m.group(2)), "top5": float(m.group(3))}
                continue
            m = CONFIG_RE.match(line)
            if m:                    # a new run starts: it replaces what came before ...
                log.runs += 1
                log.rank, log.group_size = int(m.group(2)), int(m.group(3))
                earlier = _records(log)
                log.steps, log.epoch_done, log.evals = [], {}, {}
                last_done, pending, prev_step = 0, {}, {}
                continue
            m = RESUMED_RE.match(line)
            if m:                    # ... unless it resumes: keep the epochs it does not redo
                last_done = int(m.group(2))
                _restore(log, earlier, last_done)
                continue
            m = TRAINING_RE.match(line)
            if m:
                log.model, log.backbone = m.group(1), m.group(2)
                log.epochs, log.steps_per_epoch = int(m.group(4)), int(m.group(5))
    return log


def expand_logs(paths):
    """Files as given; a directory stands for its train.log or all its train_rank*.log."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            ranks = sorted(glob.glob(os.path.join(path, "train_rank*.log")),
                           key=lambda p: int(RANK_FILE_RE.search(p).group(1)))
            single = os.path.join(path, "train.log")
            found = ranks or ([single] if os.path.isfile(single) else [])
            if not found:
                raise LogError(f"no train.log or train_rank*.log in directory {path}")
            files.extend(found)
        else:
            files.append(path)
    return files


def load_logs(paths):
    logs = [parse_log(path) for path in expand_logs(paths)]
    for log in logs:
        if not log.steps and not log.evals:
            raise LogError(f"{log.path}: no training step or evaluation lines (is it a log "
                           f"written by train.py?)")
    return logs


# ----------------------------------------------------------------------------- plots --

def plot_curve(logs, keys, out, legend=None, title=None, window_size=(12.0, 7.0)):
    """One subplot per key, one curve per log; written to ``out`` (PNG)."""
    plt = pyplot()

    legend = legend or [log.label for log in logs]
    if len(legend) != len(logs):
        raise LogError(f"--legend gives {len(legend)} names for {len(logs)} logs")
    for log in logs:
        for key in keys:
            if not log.has_key(key):
                raise LogError(f"key '{key}' not found in {log.path}; it has: "
                               f"{', '.join(log.available_keys()) or 'nothing plottable'}")
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(len(keys), 1, figsize=window_size, squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        for log, name in zip(logs, legend):
            x, y = log.series(key)
            marker = "o" if key in EPOCH_KEYS or len(x) < 30 else None
            ax.plot(x, y, label=name, marker=marker, markersize=3, linewidth=1.2)
        ax.set_ylabel(key)
        ax.set_xlabel("epoch" if key in EPOCH_KEYS else "iteration")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        if key == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, out)


# ------------------------------------------------------------------------ train time --

def format_hms(seconds):
    seconds = int(round(max(0.0, seconds)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _mean_step_time(lines):
    covered = sum(s["covered"] for s in lines)
    return sum(s["step_time"] * s["covered"] for s in lines) / covered


def train_time_stats(log, include_outliers=False):
    """Step-time and ETA statistics of one log (seconds). The first step line of each
    epoch is left out unless ``include_outliers`` (or unless nothing else is left)."""
    if not log.steps:
        raise LogError(f"{log.path}: no training step lines")
    first = {}
    for i, s in enumerate(log.steps):
        first.setdefault(s["epoch"], i)
    used = [s for i, s in enumerate(log.steps)
            if include_outliers or i != first[s["epoch"]]]
    outliers_left_out = not include_outliers and bool(used)
    if not used:
        used = list(log.steps)
    by_epoch = {}
    for s in used:
        by_epoch.setdefault(s["epoch"], []).append(s)
    epoch_means = {e: _mean_step_time(lines) for e, lines in by_epoch.items()}
    mean = _mean_step_time(used)
    std = (math.sqrt(sum((v - mean) ** 2 for v in epoch_means.values()) / len(epoch_means))
           if len(epoch_means) > 1 else 0.0)
    slowest_epoch = max(epoch_means, key=epoch_means.get)
    fastest_epoch = min(epoch_means, key=epoch_means.get)
    last = log.steps[-1]
    total_iters = (log.epochs or last["epoch"]) * (log.steps_per_epoch or last["step"])
    stats = {
        "lines": len(used), "iterations": sum(s["covered"] for s in used),
        "outliers_left_out": outliers_left_out,
        "mean": mean, "std_over_epochs": std, "epoch_means": epoch_means,
        "slowest_epoch": slowest_epoch, "fastest_epoch": fastest_epoch,
        "slowest_line": max(used, key=lambda s: s["step_time"]),
        "fastest_line": min(used, key=lambda s: s["step_time"]),
        "done_iterations": last["iteration"], "total_iterations": total_iters,
        "remaining_s": mean * (total_iters - last["iteration"]),
        "whole_run_s": mean * total_iters,
        "epoch_time_s": sum(d["epoch_time"] for d in log.epoch_done.values()),
        "epochs_done": len(log.epoch_done),
    }
    with_eta = [s for s in log.steps if s["eta"] is not None]
    if with_eta:
        first_eta = with_eta[0]
        later = [s for s in log.steps if s["iteration"] > first_eta["iteration"]]
        stats["first_eta"] = first_eta
        stats["last_eta"] = with_eta[-1]
        # training time that followed the first ETA, from the step lines themselves
        stats["followed_s"] = sum(s["step_time"] * s["covered"] for s in later)
    return stats


def train_time_report(log, stats):
    who = f" (rank {log.rank}/{log.group_size})" if log.group_size > 1 else ""
    out = [f"-----Analyze train time of {log.path}{who}-----"]
    note = ("the first line of each epoch left out (start-up, compilation); "
            "--include_outliers keeps it" if stats["outliers_left_out"] else "all lines")
    out.append(f"step lines used: {stats['lines']}, covering {stats['iterations']} iterations ({note})")
    out.append(f"slowest epoch {stats['slowest_epoch']}, average time is "
               f"{stats['epoch_means'][stats['slowest_epoch']]:.4f} s/iter")
    out.append(f"fastest epoch {stats['fastest_epoch']}, average time is "
               f"{stats['epoch_means'][stats['fastest_epoch']]:.4f} s/iter")
    out.append(f"time std over epochs is {stats['std_over_epochs']:.4f}")
    out.append(f"average iter time: {stats['mean']:.4f} s/iter")
    for which in ("slowest", "fastest"):
        s = stats[f"{which}_line"]
        out.append(f"{which} step line: epoch {s['epoch']} step {s['step']}: {s['step_time']:.4f} s/iter")
    out.append(f"progress: iteration {stats['done_iterations']}/{stats['total_iterations']}, "
               f"{stats['epochs_done']} epoch(s) done in {stats['epoch_time_s']:.1f} s "
               f"('epoch cost', evaluation and checkpoints not included)")
    out.append(f"at the average iter time: remaining {format_hms(stats['remaining_s'])}, "
               f"whole run {format_hms(stats['whole_run_s'])} (training steps only)")
    if "first_eta" in stats:
        first, last = stats["first_eta"], stats["last_eta"]
        out.append(f"ETA: first logged {format_hms(first['eta'])} at iteration {first['iteration']}, "
                   f"training time that followed {format_hms(stats['followed_s'])}; last logged "
                   f"{format_hms(last['eta'])} at iteration {last['iteration']}")
    return out


def rank_summary(logs, stats):
    """For the ranks of one distributed run: which rank is slowest on average."""
    means = {log.rank: s["mean"] for log, s in zip(logs, stats)}
    slow, fast = max(means, key=means.get), min(means, key=means.get)
    return [f"-----{len(logs)} ranks-----",
            f"slowest rank {slow}: {means[slow]:.4f} s/iter; fastest rank {fast}: "
            f"{means[fast]:.4f} s/iter; spread {means[slow] - means[fast]:.4f} s/iter"]


# ------------------------------------------------------------------------------- CLI --

def build_parser():
    parser = argparse.ArgumentParser(description="Analyse train.py logs.", allow_abbrev=False)
    sub = parser.add_subparsers(dest="task", required=True)
    plot = sub.add_parser("plot_curve", help="plot keys of one or more logs to a PNG",
                          allow_abbrev=False)
    plot.add_argument("logs", nargs="+", help="train.log / train_rank{R}.log files or run directories")
    plot.add_argument("--keys", nargs="+", default=["loss"],
                      help=f"keys to plot (default loss): {', '.join(STEP_KEYS + EPOCH_KEYS)}")
    plot.add_argument("--legend", nargs="+", help="one name per log (default: dir/file name)")
    plot.add_argument("--title", help="figure title")
    plot.add_argument("--out", default="curve.png", help="PNG file to write (default curve.png)")
    plot.add_argument("--window_size", type=parse_window_size, default=None, metavar="W*H",
                      help="figure size in inches (default 12 wide, 3.5 per key)")
    timing = sub.add_parser("cal_train_time", help="step-time and ETA statistics",
                            allow_abbrev=False)
    timing.add_argument("logs", nargs="+", help="train.log / train_rank{R}.log files or run directories")
    timing.add_argument("--include_outliers", action="store_true",
                        help="keep the first step line of each epoch")
    return parser


def main(argv):
    args = build_parser().parse_args(argv)
    try:
        logs = load_logs(args.logs)
        if args.task == "plot_curve":
            unknown = [k for k in args.keys if k not in STEP_KEYS + EPOCH_KEYS]
            if unknown:
                raise LogError(f"unknown key(s) {unknown}; known keys: {', '.join(STEP_KEYS + EPOCH_KEYS)}")
            size = args.window_size or (12.0, 1.0 + 3.0 * len(args.keys))
            plot_curve(logs, args.keys, args.out, args.legend, args.title, size)
            print(f"wrote {args.out} ({', '.join(args.keys)} of {len(logs)} log(s))")
        else:
            stats = [train_time_stats(log, args.include_outliers) for log in logs]
            for log, s in zip(logs, stats):
                print("\n".join(train_time_report(log, s)))
            if len(logs) > 1 and all(log.group_size > 1 for log in logs):
                print("\n".join(rank_summary(logs, stats)))
    except LogError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
