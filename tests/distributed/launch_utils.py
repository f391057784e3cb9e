"""Helpers shared by the distributed tests: free ports, the environment, log tails."""
import os
import socket
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port():
    """A TCP port nobody listens on right now (the kernel picks it for port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def python_env(**extra):
    """The environment with this interpreter's directory first on PATH.

    msrun starts every worker as plain ``python`` from PATH, so without this a test run
    by /some/venv/bin/python could launch workers with a different interpreter.
    """
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env["GLOG_v"] = "3"   # MindSpore C++ logs: errors only (the tcp/topology chatter is WARNING)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def log_tails(log_dir, chars=3000):
    """The end of every log file under log_dir, for assertion messages."""
    parts = []
    for root, _, files in os.walk(log_dir):
        for name in sorted(files):
            if name.endswith(".log"):
                with open(os.path.join(root, name), errors="replace") as f:
                    parts.append(f"--- {os.path.join(root, name)}\n{f.read()[-chars:]}")
    return "\n".join(parts)


def run(cmd, env, timeout, cwd=REPO):
    return subprocess.run(cmd, cwd=cwd, env=env, timeout=timeout, capture_output=True, text=True)


def run_msrun_two_ranks(worker, out, logs, timeout):
    """``worker out`` as a real 2-rank msrun job on this machine; asserts that it succeeded."""
    cmd = [sys.executable, "-m", "mindspore.parallel.cluster.run", "--worker_num=2",
           "--local_worker_num=2", "--master_addr=127.0.0.1", f"--master_port={free_port()}",
           f"--log_dir={logs}", "--join=True", worker, str(out)]
    proc = run(cmd, python_env(), timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:] + log_tails(logs)
    return proc
