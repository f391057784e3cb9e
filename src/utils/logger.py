"""Plain log lines to stdout and to a file (``train.log``, ``eval.log``, ``infer.log`` ...), as
the seeds show them: no timestamps or levels added, every line flushed at once so a killed
run keeps its log.

When stdout is already redirected into the log file (``scripts/run_standalone_train.sh``
runs ``python train.py ... >> train.log``), lines are printed once, not twice.
"""
import os
import sys
import traceback

from src.utils.errors import UserError, user_message


def _same_file(stream, path):
    try:
        return os.path.exists(path) and os.path.samefile(f"/proc/self/fd/{stream.fileno()}", path)
    except (OSError, ValueError, AttributeError):  # no fileno (pytest capture), no /proc
        return False


def train_log_name(rank_id=0, group_size=1):
    """``train.log`` on one device; ``train_rank{R}.log`` per rank when distributed."""
    return "train.log" if group_size == 1 else f"train_rank{rank_id}.log"


class LogFileError(UserError, OSError):
    """The log file cannot be created or opened."""


class FileLogger:
    """``log = FileLogger(path); log("text")``: print and append ``text`` to ``path``."""

    def __init__(self, path, mode="a"):
        self.path = os.path.abspath(path)
        directory = os.path.dirname(self.path)
        try:
            os.makedirs(directory, exist_ok=True)
            self.file = open(self.path, mode, encoding="utf-8")
        except OSError as err:
            raise LogFileError(f"cannot write the log file {self.path}: {err.strerror or err}") from None
        if _same_file(sys.stdout, self.path):
            self.file.close()
            self.file = None

    def __call__(self, message):
        text = str(message)
        print(text, flush=True)
        if self.file is not None:
            self.file.write(text + "\n")
            self.file.flush()

    def to_file(self, message):
        """Write ``message`` to the log file only (e.g. an error already shown on stderr)."""
        if self.file is not None:
            self.file.write(str(message) + "\n")
            self.file.flush()

    def close(self):
        if self.file is not None:
            self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def fail(message, code=1):
    """End an entry point with a one-line error on stderr (no traceback for user errors)."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def fail_on_error(err, log=None):
    """End an entry point on the exception ``err`` (exit status 1).

    A user error (``src.utils.errors``; also when MindSpore's data pipeline wrapped it) is
    one ``error: ...`` line naming the culprit. Anything else (a bug, ours or a library's, or
    a failure of the machine such as a full disk) keeps its full traceback, on stderr and in
    ``log``'s file, followed by one line saying what happened."""
    message = user_message(err)
    if message is not None:
        if log is not None:
            log.to_file(f"error: {message}")
        fail(message)
    trace = "".join(traceback.format_exception(err)).rstrip()
    print(trace, file=sys.stderr, flush=True)
    where = "above"
    if log is not None:
        log.to_file(trace)
        if log.file is not None:
            where = f"above and in {log.path}"
    text = str(err).strip()
    what = f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__
    fail(f"unexpected {what} (traceback {where})")
