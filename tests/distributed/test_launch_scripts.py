"""scripts/run_distribute_train.sh and scripts/run_distribute_train_msrun.sh: argument and
rank-table validation, the per-rank environment and commands (DRY_RUN=1), and the clear
failure on a machine without Ascend cards."""
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.distributed.launch_utils import REPO, free_port, python_env, run

RANK_TABLE_SH = os.path.join(REPO, "scripts", "run_distribute_train.sh")
MSRUN_SH = os.path.join(REPO, "scripts", "run_distribute_train_msrun.sh")
CONFIG = os.path.join(REPO, "config", "segformer.b0.512x1024.city.yaml")   # device_target Ascend


def bash(script, args, cwd, **env):
    inherited = {k: v for k, v in os.environ.items() if k not in ("ASCEND_RT_VISIBLE_DEVICES", "DEV_DIR")}
    full_env = {**inherited, "PYTHON": sys.executable, **env}
    return subprocess.run(["bash", script] + [str(a) for a in args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def table_maker(tmp_path_factory):
    """Writes tables with tools/hccl_tools.py, once per module per (device list, range)."""
    made, directory = {}, tmp_path_factory.mktemp("tables")

    def make(visible, device_num="[0,2)"):
        key = (visible, device_num)
        if key not in made:
            out = directory / f"hccl_{len(made)}.json"
            first, end = map(int, device_num.strip("[)").split(","))
            ips = ",".join(f"192.98.{92 + i}.100" for i in range(first, end))
            proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "hccl_tools.py"),
                                   "--device_num", device_num, "--visible_devices", visible,
                                   "--server_ip", "10.0.0.1", "--device_ips", ips,
                                   "--output", str(out)], capture_output=True, text=True)
            assert proc.returncode == 0, proc.stderr
            made[key] = out
        return made[key]
    return make


@pytest.fixture()
def rank_table(table_maker, tmp_path):
    """A table in the test's directory: logical devices ``device_num`` (default the first
    two) of ``visible`` (default cards 0 and 1)."""
    def copy(visible="0,1", device_num="[0,2)"):
        return Path(shutil.copy(table_maker(visible, device_num), tmp_path / "hccl.json"))
    return copy


def card_dir(parent, ids):
    """A stand-in for /dev on a machine or container that sees the Ascend cards ``ids``."""
    path = Path(parent) / ("dev_" + "_".join(map(str, ids)))
    path.mkdir()
    for name in [f"davinci{i}" for i in ids] + ["davinci_manager", "devmm_svm", "hisi_hdc"]:
        (path / name).touch()
    return path


@pytest.fixture()
def launch_dir(tmp_path):
    (tmp_path / "data").mkdir()
    return tmp_path


def parse_dry_run(stdout):
    """'rank R: cd DIR && env K=V ... [taskset -c a-b] PYTHON train.py ARGS > train.log 2>&1'."""
    ranks = {}
    for line in stdout.splitlines():
        if not re.match(r"^rank \d+: cd ", line):
            continue
        head, _, command = line.partition(": cd ")
        words = shlex.split(command)
        assert words[1:3] == ["&&", "env"] and words[-2:] == ["train.log", "2>&1"], line
        env = dict(w.split("=", 1) for w in words[3:] if "=" in w and not w.startswith("--"))
        rest = [w for w in words[3:-3] if not ("=" in w and not w.startswith("--"))]
        ranks[int(head.split()[1])] = {"dir": words[0], "env": env, "argv": rest}
    return ranks


def test_rank_table_dry_run_prints_each_ranks_environment_and_command(launch_dir, rank_table):
    table = rank_table()
    proc = bash(RANK_TABLE_SH, [2, table.name, CONFIG, "data", "", "False", "--batch_size=4"],
                cwd=launch_dir, DRY_RUN="1")
    assert proc.returncode == 0, proc.stderr
    ranks = parse_dry_run(proc.stdout)
    assert sorted(ranks) == [0, 1]
    cores = len(os.sched_getaffinity(0)) // 2
    for rank, device in ((0, 0), (1, 1)):
        r = ranks[rank]
        assert r["dir"] == str(launch_dir / "run_distribute_train" / f"device{device}")
        assert r["env"] == {"RANK_TABLE_FILE": str(table), "RANK_SIZE": "2",
                            "RANK_ID": str(rank), "DEVICE_ID": str(device)}
        argv = r["argv"]
        if cores >= 1 and shutil.which("taskset"):
            assert argv[:3] == ["taskset", "-c", f"{rank * cores}-{(rank + 1) * cores - 1}"]
            argv = argv[3:]
        assert argv[:2] == [sys.executable, os.path.join(REPO, "train.py")]
        assert argv[2:] == [f"--config_path={CONFIG}", "--run_distribute=True",
                            f"--data_path={launch_dir / 'data'}", "--run_eval=False",
                            "--batch_size=4",
                            # relative config path, resolved against the launch directory
                            f"--pretrained_ckpt_path={launch_dir / 'pretrained' / 'ms_pretrained_b0.ckpt'}"]
    assert not (launch_dir / "run_distribute_train").exists()


def rank_table_device_ids(launch_dir, table, device_num, **env):
    proc = bash(RANK_TABLE_SH, [device_num, table, CONFIG, "data"], cwd=launch_dir, DRY_RUN="1",
                BIND_CORE="0", **env)
    assert proc.returncode == 0, proc.stderr
    ranks = parse_dry_run(proc.stdout)
    assert sorted(ranks) == list(range(device_num))
    for r in ranks.values():
        assert os.path.basename(r["dir"]) == "device" + r["env"]["DEVICE_ID"]
    assert ranks[0]["argv"][0] == sys.executable           # BIND_CORE=0: no taskset
    return [int(ranks[r]["env"]["DEVICE_ID"]) for r in range(device_num)]


def test_rank_table_visible_devices_map_to_logical_ids(launch_dir, rank_table):
    # a server that sees all 8 cards; the process sees only cards 4-7
    table = rank_table("4,5,6,7")
    assert rank_table_device_ids(launch_dir, table, 2, DEV_DIR=str(card_dir(launch_dir, range(8))),
                                 ASCEND_RT_VISIBLE_DEVICES="4,5,6,7") == [0, 1]


def test_rank_table_in_a_container_with_cards_4_to_7(launch_dir, rank_table):
    # the table holds physical ids 4-7; in the container they are the logical devices 0-3
    table = rank_table("4,5,6,7", "[0,4)")
    cards = str(card_dir(launch_dir, [4, 5, 6, 7]))
    assert rank_table_device_ids(launch_dir, table, 4, DEV_DIR=cards) == [0, 1, 2, 3]
    # ... and ASCEND_RT_VISIBLE_DEVICES lists the container's logical ids
    table = rank_table("4,5,6,7", "[2,4)")                  # physical 6, 7
    assert rank_table_device_ids(launch_dir, table, 2, DEV_DIR=cards,
                                 ASCEND_RT_VISIBLE_DEVICES="2,3") == [0, 1]


@pytest.mark.parametrize("visible, table_devices, message", [
    ("4,5,6,7", ("4,5,6,7", "[0,4)"),
     "ASCEND_RT_VISIBLE_DEVICES='4,5,6,7' lists logical ids, but this machine has 4 card(s) "
     "[4, 5, 6, 7] ({cards}/davinci<N>), logical ids 0-3; in a container, the cards it mounts "
     "are numbered from 0"),
    ("", ("0,1", "[0,2)"),
     "device_id 0 is not a card of this machine, which has 4 card(s) [4, 5, 6, 7] "
     "({cards}/davinci<N>), logical ids 0-3"),
    ("0,1", ("4,5,6,7", "[2,4)"),
     "device_id 6 (logical id 2 on this machine) is not in ASCEND_RT_VISIBLE_DEVICES=0,1"),
    ("3,2", ("4,5,6,7", "[2,4)"),
     "ASCEND_RT_VISIBLE_DEVICES='3,2': the Ascend runtime takes each id once, in ascending order"),
    ("0, 1", ("4,5,6,7", "[0,2)"),
     "ASCEND_RT_VISIBLE_DEVICES='0, 1' must list logical device ids separated by commas"),
])
def test_rank_table_container_errors(launch_dir, rank_table, visible, table_devices, message):
    cards = card_dir(launch_dir, [4, 5, 6, 7])
    table = rank_table(*table_devices)
    count = len(json.loads(table.read_text())["server_list"][0]["device"])
    proc = bash(RANK_TABLE_SH, [count, table, CONFIG, "data"], cwd=launch_dir, DRY_RUN="1",
                DEV_DIR=str(cards), ASCEND_RT_VISIBLE_DEVICES=visible)
    assert proc.returncode == 2
    assert f"error: {message.format(cards=cards)}" in proc.stderr
    assert "rank 0:" not in proc.stdout


def test_rank_table_launch_without_ascend_fails_clearly(launch_dir, rank_table):
    table = rank_table()
    no_cards = card_dir(launch_dir, [])
    proc = bash(RANK_TABLE_SH, [2, table, CONFIG, "data"], cwd=launch_dir, DEV_DIR=str(no_cards))
    assert proc.returncode == 2
    assert f"no Ascend device {no_cards}/davinci0 on this machine" in proc.stderr
    assert "run_distribute_train_msrun.sh" in proc.stderr
    assert not (launch_dir / "run_distribute_train").exists()


@pytest.mark.parametrize("args, message", [
    (["2", "{table}"], "Usage: bash scripts/run_distribute_train.sh DEVICE_NUM"),
    (["two", "{table}", CONFIG], "DEVICE_NUM must be a positive integer, got 'two'"),
    (["4", "{table}", CONFIG, "data"], "DEVICE_NUM=4 disagrees with rank table"),
    (["2", "missing.json", CONFIG], "RANK_TABLE_FILE not found: {dir}/missing.json"),
    (["2", "{broken}", CONFIG, "data"], "is not valid JSON (line 1, column 2"),
    (["2", "{table}", "nope.yaml"], "CONFIG_FILE not found: {dir}/nope.yaml"),
    (["2", "{table}", CONFIG, "nodata"], "DATASET_PATH is not a directory: {dir}/nodata"),
    (["2", "{table}", CONFIG], "data_path is not a directory: {dir}/data/cityscapes"),
    (["2", "{table}", CONFIG, "data", "no.ckpt"], "PRETRAINED_CKPT_PATH not found: {dir}/no.ckpt"),
    (["2", "{table}", CONFIG, "data", "", "yes"], "RUN_EVAL must be True or False, got 'yes'"),
    (["2", "{table}", CONFIG, "data", "--batch_sise=4"], "unknown config key 'batch_sise'"),
    (["2", "{table}", CONFIG, "data", "--device_target=CPU"],
     "a rank table launches HCCL on Ascend, but device_target is 'CPU'"),
])
def test_rank_table_script_errors(launch_dir, rank_table, args, message):
    table = rank_table()
    broken = launch_dir / "broken.json"
    broken.write_text("{oops")
    fill = {"table": str(table), "broken": str(broken), "dir": str(launch_dir)}
    proc = bash(RANK_TABLE_SH, [a.format(**fill) for a in args], cwd=launch_dir, DRY_RUN="1")
    assert proc.returncode == 2
    assert message.format(**fill) in proc.stderr
    assert proc.stdout == ""


def test_msrun_dry_run(launch_dir):
    proc = bash(MSRUN_SH, [2, CONFIG, "data", "", "True", "--device_target=CPU"], cwd=launch_dir,
                DRY_RUN="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="23456", LOG_DIR="logs")
    assert proc.returncode == 0, proc.stderr
    path_line, command = proc.stdout.splitlines()
    # msrun starts workers as `python` from PATH: this interpreter's directory comes first
    assert path_line.split("=", 1)[1].split(os.pathsep)[0] == os.path.dirname(sys.executable)
    assert shlex.split(command) == [
        sys.executable, "-m", "mindspore.parallel.cluster.run", "--worker_num=2",
        "--local_worker_num=2", "--master_addr=127.0.0.1", "--master_port=23456",
        f"--log_dir={launch_dir / 'logs'}", "--join=True", "--cluster_time_out=600",
        "--bind_core=True", "--tail_worker_log=0", os.path.join(REPO, "train.py"),
        f"--config_path={CONFIG}", "--run_distribute=True", "--data_path=data", "--run_eval=True",
        "--device_target=CPU"]


@pytest.mark.parametrize("value, bound", [("", True), ("1", True), ("True", True),
                                          ("0", False), ("false", False)])
def test_both_launchers_bind_cores_by_default_and_read_bind_core_alike(launch_dir, rank_table,
                                                                        value, bound):
    env = {"BIND_CORE": value} if value else {}
    proc = bash(MSRUN_SH, [2, CONFIG, "data", "", "", "--device_target=CPU"], cwd=launch_dir,
                DRY_RUN="1", MASTER_PORT=str(free_port()), **env)
    assert proc.returncode == 0, proc.stderr
    assert f"--bind_core={bound}" in shlex.split(proc.stdout.splitlines()[-1])
    proc = bash(RANK_TABLE_SH, [2, rank_table().name, CONFIG, "data"], cwd=launch_dir,
                DRY_RUN="1", **env)
    assert proc.returncode == 0, proc.stderr
    pinned = [r["argv"][0] == "taskset" for r in parse_dry_run(proc.stdout).values()]
    can_pin = len(os.sched_getaffinity(0)) >= 2 and shutil.which("taskset") is not None
    assert pinned == [bound and can_pin] * 2


@pytest.mark.parametrize("script", [MSRUN_SH, RANK_TABLE_SH])
def test_bad_bind_core_is_a_clear_error(launch_dir, rank_table, script):
    args = ([2, CONFIG, "data"] if script == MSRUN_SH else [2, rank_table().name, CONFIG, "data"])
    proc = bash(script, args, cwd=launch_dir, DRY_RUN="1", BIND_CORE="yes")
    assert proc.returncode == 2
    assert ("error: BIND_CORE must be 1 (pin each process to its share of CPU cores) or 0 (off), "
            "got 'yes'") in proc.stderr


@pytest.mark.parametrize("args, env, message", [
    (["0", CONFIG], {}, "WORKER_NUM must be a positive integer, got '0'"),
    (["2"], {}, "Usage: bash scripts/run_distribute_train_msrun.sh WORKER_NUM CONFIG_FILE"),
    (["2", "nope.yaml"], {}, "CONFIG_FILE not found"),
    (["2", CONFIG, "data"], {"MASTER_PORT": "80"}, "MASTER_PORT must be a port number in 1024..65535"),
    (["2", CONFIG, "data"], {"LOCAL_WORKER_NUM": "3"}, "LOCAL_WORKER_NUM must be an integer in 1..WORKER_NUM"),
    (["2", CONFIG], {}, "data_path is not a directory: ./data/cityscapes/"),
    (["2", CONFIG, "data", "--lr=fast"], {}, "--lr: expected float, got 'fast'"),
])
def test_msrun_script_errors(launch_dir, args, env, message):
    proc = bash(MSRUN_SH, args, cwd=launch_dir, DRY_RUN="1", **env)
    assert proc.returncode == 2
    assert message in proc.stderr


RECORDER = """import os, sys
with open(os.path.join(sys.argv[1], str(os.getpid())), "w") as f:
    f.write(os.environ.get("MS_ROLE", "") + " " + os.environ.get("DEVICE_ID", "-"))
"""


@pytest.mark.slow   # a real msrun job (5 tiny processes)
def test_msrun_in_a_container_with_cards_4_to_7(launch_dir, tmp_path):
    cards = card_dir(launch_dir, [4, 5, 6, 7])
    proc = bash(MSRUN_SH, [4, CONFIG, "data"], cwd=launch_dir, DRY_RUN="1", DEV_DIR=str(cards),
                MASTER_PORT=str(free_port()), LOG_DIR="logs")
    assert proc.returncode == 0, proc.stderr
    path_line, command, *workers = proc.stdout.splitlines()
    assert workers == [f"worker {i}: DEVICE_ID={i}, card {cards}/davinci{4 + i}" for i in range(4)]
    # The printed msrun command with a recorder in place of train.py: DEVICE_ID is what msrun
    # itself exports to each worker.
    argv = shlex.split(command)
    recorder, records = tmp_path / "record_env.py", tmp_path / "records"
    recorder.write_text(RECORDER)
    records.mkdir()
    argv = argv[:argv.index(os.path.join(REPO, "train.py"))] + [str(recorder), str(records)]
    job = run(argv, python_env(PATH=path_line.split("=", 1)[1]), timeout=120, cwd=launch_dir)
    assert job.returncode == 0, job.stdout[-2000:] + job.stderr[-2000:]
    seen = sorted(p.read_text() for p in records.iterdir())
    assert seen == ["MS_SCHED -"] + [f"MS_WORKER {i}" for i in range(4)]


@pytest.mark.parametrize("workers, visible, expected", [
    (2, "2,3", ["worker 0: DEVICE_ID=0, card {cards}/davinci6",
                "worker 1: DEVICE_ID=1, card {cards}/davinci7"]),
    (4, "4,5,6,7", "error: LOCAL_WORKER_NUM=4: ASCEND_RT_VISIBLE_DEVICES='4,5,6,7' lists logical "
                   "ids, but this machine has 4 card(s) [4, 5, 6, 7] ({cards}/davinci<N>), logical "
                   "ids 0-3; in a container, the cards it mounts are numbered from 0"),
    (8, "", "error: LOCAL_WORKER_NUM=8: 8 processes on this machine need 8 Ascend cards, but they "
            "see 4: 4 card(s) [4, 5, 6, 7] ({cards}/davinci<N>), logical ids 0-3"),
    (4, "1,2", "error: LOCAL_WORKER_NUM=4: 4 processes on this machine need 4 Ascend cards, but "
               "they see 2: ASCEND_RT_VISIBLE_DEVICES=1,2 (2 card(s))"),
])
def test_msrun_container_cards(launch_dir, workers, visible, expected):
    cards = card_dir(launch_dir, [4, 5, 6, 7])
    proc = bash(MSRUN_SH, [workers, CONFIG, "data"], cwd=launch_dir, DRY_RUN="1",
                DEV_DIR=str(cards), MASTER_PORT=str(free_port()), ASCEND_RT_VISIBLE_DEVICES=visible)
    if isinstance(expected, list):
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines()[2:] == [e.format(cards=cards) for e in expected]
    else:
        assert proc.returncode == 2
        assert proc.stderr.strip() == expected.format(cards=cards)
        assert proc.stdout == ""


def test_msrun_busy_port(launch_dir):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = bash(MSRUN_SH, [2, CONFIG, "data"], cwd=launch_dir, MASTER_PORT=str(port))
    assert proc.returncode == 2
    assert f"MASTER_PORT {port} on 127.0.0.1 is not free" in proc.stderr


def test_setup_runtime_without_a_launcher_says_how_to_launch():
    code = ("from src.utils.config import load_config\n"
            "from src.utils.device import RuntimeSetupError, setup_runtime\n"
            "try:\n"
            "    setup_runtime(load_config('', ['--run_distribute=True', '--mode=PYNATIVE']))\n"
            "except RuntimeSetupError as err:\n"
            "    print('ERR', err)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MS_") and k != "RANK_TABLE_FILE"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)
    assert "ERR run_distribute=True on CPU needs the msrun variables" in proc.stdout, proc.stderr
    assert "scripts/run_distribute_train_msrun.sh" in proc.stdout
