"""tools/hccl_tools.py writes the version 1.0 rank table HCCL documents."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from src.utils.rank_table import load_rank_table
from tests.distributed.launch_utils import REPO

TOOL = os.path.join(REPO, "tools", "hccl_tools.py")


@pytest.fixture()
def hccl_tools(monkeypatch, tmp_path):
    """The tool as a module, run in tmp_path, with no Ascend driver tools on PATH."""
    spec = importlib.util.spec_from_file_location("hccl_tools", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    return module


def expected_table(server, devices):
    """The documented layout, spelled out: strings everywhere, rank = order of devices;
    ``devices``: (device_id, device_ip) pairs, or device ids alone for a table without IPs."""
    def entry(rank, dev):
        if isinstance(dev, int):
            return {"device_id": str(dev), "rank_id": str(rank)}
        return {"device_id": str(dev[0]), "device_ip": dev[1], "rank_id": str(rank)}
    return {
        "version": "1.0",
        "server_count": "1",
        "server_list": [{
            "server_id": server,
            "device": [entry(r, d) for r, d in enumerate(devices)],
            "host_nic_ip": "reserve",
        }],
        "status": "completed",
    }


def test_eight_devices_with_explicit_ips(hccl_tools, tmp_path, capsys):
    ips = [f"192.98.{92 + i}.100" for i in range(8)]
    assert hccl_tools.main(["--device_num", "[0,8)", "--server_ip", "10.0.0.1",
                            "--device_ips", ",".join(ips), "--hccn_conf", "/nonexistent"]) == 0
    out = tmp_path / "hccl_8p_01234567_10.0.0.1.json"
    assert json.loads(out.read_text()) == expected_table("10.0.0.1", list(zip(range(8), ips)))
    assert str(out) in capsys.readouterr().out


def test_hccn_conf_and_visible_devices(hccl_tools, tmp_path):
    conf = tmp_path / "hccn.conf"
    conf.write_text("".join(f"address_{i}=192.98.{92 + i}.100\nnetmask_{i}=255.255.255.0\n"
                            for i in range(8)))
    # a container that sees physical cards 4..7 as logical 0..3; take logical [1,3)
    assert hccl_tools.main(["--device_num", "[1, 3)", "--visible_devices", "4,5,6,7",
                            "--server_ip", "10.0.0.2", "--hccn_conf", str(conf),
                            "--output", "t.json"]) == 0
    assert json.loads((tmp_path / "t.json").read_text()) == expected_table(
        "10.0.0.2", [(5, "192.98.97.100"), (6, "192.98.98.100")])


def test_hccn_tool_is_preferred(hccl_tools, tmp_path):
    fake = tmp_path / "bin" / "hccn_tool"
    fake.parent.mkdir()
    # the real tool prints "ipaddr:<ip>\nnetmask:<mask>" for `hccn_tool -i <id> -ip -g`
    fake.write_text('#!/bin/sh\necho "ipaddr:10.20.30.$2"\necho "netmask:255.255.255.0"\n')
    fake.chmod(0o755)
    assert hccl_tools.main(["--device_num", "[0,2)", "--server_ip", "10.0.0.3",
                            "--output", "t.json"]) == 0
    assert json.loads((tmp_path / "t.json").read_text()) == expected_table(
        "10.0.0.3", [(0, "10.20.30.0"), (1, "10.20.30.1")])


@pytest.mark.parametrize("device_num, visible, physical", [
    ("[0,8)", "0,1,2,3,4,5,6,7", list(range(8))),
    ("[0,4)", "0,1,2,3,4,5,6,7", [0, 1, 2, 3]),
    ("[4,8)", "0,1,2,3,4,5,6,7", [4, 5, 6, 7]),
    ("[0,2)", "0,1,2,3,4,5,6,7", [0, 1]),
    ("[4,6)", "0,1,2,3,4,5,6,7", [4, 5]),
    ("[3,4)", "0,1,2,3,4,5,6,7", [3]),
    ("[7,8)", "0,1,2,3,4,5,6,7", [7]),
    ("[0,4)", "4,5,6,7", [4, 5, 6, 7]),          # a container that sees cards 4-7
    ("[2,4)", "4,5,6,7", [6, 7]),
])
def test_layouts_hccl_runs(hccl_tools, tmp_path, device_num, visible, physical):
    ips = ",".join(f"192.98.{92 + d}.100" for d in physical)
    assert hccl_tools.main(["--device_num", device_num, "--visible_devices", visible,
                            "--server_ip", "10.0.0.1", "--device_ips", ips, "--output", "t.json"]) == 0
    table = json.loads((tmp_path / "t.json").read_text())
    assert [int(d["device_id"]) for d in table["server_list"][0]["device"]] == physical


@pytest.mark.parametrize("args, message", [
    (["--device_num", "[0,3)"], "--device_num '[0,3)' picks 3 devices [0, 1, 2]: HCCL runs 1, 2, "
                                "4 or 8 ranks per Atlas 910 server"),
    (["--device_num", "[2,6)"], "--device_num '[2,6)' picks devices [2, 3, 4, 5]: a 2- or 4-card "
                                "job must lie inside cards 0-3 or inside 4-7 (the two HCCS groups "
                                "of an Atlas 910 server)"),
    (["--device_num", "[3,5)"], "--device_num '[3,5)' picks devices [3, 4]: a 2- or 4-card job"),
    (["--device_num", "[0,6)"], "--device_num '[0,6)' picks 6 devices [0, 1, 2, 3, 4, 5]: HCCL runs"),
    (["--device_num", "[1,4)", "--visible_devices", "4,5,6,7"],
     "--device_num '[1,4)' picks 3 devices [5, 6, 7]: HCCL runs 1, 2, 4 or 8 ranks per Atlas 910 "
     "server (--visible_devices 4,5,6,7)"),
    (["--device_num", "[0,2)", "--visible_devices", "8,9"],
     "--device_num '[0,2)' picks device ids [8, 9]: an Atlas 910 server has cards 0-7"),
    (["--device_num", "0-8"], "expected a half-open range"),
    (["--device_num", "[3,3)"], "the range is empty"),
    (["--device_num", "[0,5)", "--visible_devices", "4,5,6,7"], "needs 5 visible devices"),
    (["--device_num", "[0,2)", "--device_ips", "1.2.3.4"], "gives 1 address(es) for 2"),
    (["--device_num", "[0,2)", "--device_ips", "1.2.3.4,1.2.3"], "'1.2.3' is not an IP address"),
    (["--device_num", "[0,2)", "--visible_devices", "0,0"], "device ids repeat"),
    (["--device_num", "[0,2)", "--server_ip", "myhost"], "--server_ip: 'myhost' is not an IP"),
])
def test_errors(hccl_tools, tmp_path, capsys, args, message):
    assert hccl_tools.main(args + ["--hccn_conf", str(tmp_path / "none.conf")]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.glob("*.json"))


def test_command_line_without_ascend(tmp_path):
    """On this machine (no Ascend driver tools, no hccn.conf) the CLI invents no device IPs:
    the table has none, which HCCL accepts for a job on one server."""
    proc = subprocess.run([sys.executable, TOOL, "--device_num", "[0,4)", "--server_ip", "10.0.0.1",
                           "--hccn_conf", str(tmp_path / "none.conf")], cwd=tmp_path,
                          capture_output=True, text=True, env={**os.environ, "PATH": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert "the table has no device_ip" in proc.stderr
    assert "pass them with --device_ips" in proc.stderr
    out = tmp_path / "hccl_4p_0123_10.0.0.1.json"
    assert json.loads(out.read_text()) == expected_table("10.0.0.1", [0, 1, 2, 3])
    assert proc.stdout.splitlines()[:4] == [f"rank_id:{r}, device_id:{r}" for r in range(4)]
    assert [d.device_ip for d in load_rank_table(str(out)).devices] == [None] * 4
