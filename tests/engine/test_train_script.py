"""scripts/run_standalone_train.sh: argument checks, and train.log from a real (failing fast)
train.py run -- one clear error line, no line written twice."""
import os
import subprocess

import pytest

from tests.engine.train_helpers import ROOT

SCRIPT = os.path.join(ROOT, "scripts", "run_standalone_train.sh")
CONFIG = os.path.join(ROOT, "config", "segformer.b0.demo.yaml")


def run_script(args, tmp_path, **env):
    full_env = dict(os.environ, RUN_DIR=str(tmp_path / "run"), **env)
    return subprocess.run(["bash", SCRIPT, *args], cwd=ROOT, env=full_env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("args,message", [
    ([], "Usage: bash scripts/run_standalone_train.sh DEVICE_ID CONFIG_FILE"),
    (["0", "no_such.yaml"], "CONFIG_FILE not found: no_such.yaml"),
    (["x", CONFIG], "DEVICE_ID must be a non-negative integer"),
    (["0", CONFIG, "/no/such/dir"], "DATASET_PATH is not a directory: /no/such/dir"),
    (["0", CONFIG, "", "/no/such.ckpt"], "PRETRAINED_CKPT_PATH not found: /no/such.ckpt"),
    (["0", CONFIG, "", "", "maybe"], "RUN_EVAL must be True or False, got 'maybe'"),
])
def test_bad_arguments_are_refused_before_python_starts(args, message, tmp_path):
    result = run_script(args, tmp_path)
    assert result.returncode == 2 and message in result.stderr
    assert not (tmp_path / "run").exists()


def test_train_log_gets_the_error_of_a_bad_key_once(tmp_path):
    result = run_script(["0", CONFIG, "", "", "False", "--amp_level=O5"], tmp_path, FOREGROUND="1")
    assert result.returncode == 1
    lines = open(tmp_path / "run" / "train.log").read().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert errors == ["error: config key 'amp_level': 'O5' is not one of ['O0', 'O1', 'O2', 'O3']"]
    config_lines = [line for line in lines if line.startswith("config: ")]
    assert len(config_lines) == 1 and "rank 0/1" in config_lines[0]  # stdout == train.log: once
