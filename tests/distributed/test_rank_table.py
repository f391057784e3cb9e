"""src/utils/rank_table.py: both rank-table layouts, every validation error, the CLI."""
import json
import subprocess
import sys

import pytest

from src.utils.rank_table import RankDevice, RankTableError, load_rank_table, local_devices
from tests.distributed.launch_utils import REPO

IPS = [f"192.98.{92 + i}.100" for i in range(8)]


def v1_table(servers=("10.0.0.1",), per_server=8):
    """A version 1.0 table exactly as the Ascend documentation shows it."""
    rank, server_list = 0, []
    for server in servers:
        devices = []
        for dev in range(per_server):
            devices.append({"device_id": str(dev), "device_ip": IPS[dev], "rank_id": str(rank)})
            rank += 1
        server_list.append({"server_id": server, "device": devices, "host_nic_ip": "reserve"})
    return {"version": "1.0", "server_count": str(len(servers)), "server_list": server_list,
            "status": "completed"}


def group_list_table():
    """The older layout (MindSpore 0.x era examples)."""
    return {
        "board_id": "0x0000", "chip_info": "910", "deploy_mode": "lab", "group_count": "1",
        "group_list": [{
            "device_num": "4", "server_num": "1", "group_name": "", "instance_count": "4",
            "instance_list": [{"devices": [{"device_id": str(d), "device_ip": IPS[d]}],
                               "rank_id": str(d), "server_id": "10.0.0.1"} for d in range(4)],
        }],
        "para_plane_nic_location": "device", "para_plane_nic_num": "4", "status": "completed",
    }


def write(tmp_path, data, name="hccl.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def test_version_1_0_layout(tmp_path):
    table = load_rank_table(write(tmp_path, v1_table()))
    assert table.layout == "1.0" and table.rank_size == 8
    assert table.devices[3] == RankDevice(rank_id=3, device_id=3, device_ip="192.98.95.100",
                                          server_id="10.0.0.1")
    assert [d.rank_id for d in local_devices(table, 8)] == list(range(8))


def test_group_list_layout(tmp_path):
    table = load_rank_table(write(tmp_path, group_list_table()))
    assert table.layout == "group_list" and table.rank_size == 4
    assert [(d.rank_id, d.device_id, d.device_ip) for d in table.devices] == \
        [(d, d, IPS[d]) for d in range(4)]


def test_two_servers_pick_this_servers_ranks(tmp_path):
    table = load_rank_table(write(tmp_path, v1_table(("10.0.0.1", "10.0.0.2"))))
    assert table.rank_size == 16
    mine = local_devices(table, 8, server_id="10.0.0.2")
    assert [(d.rank_id, d.device_id) for d in mine] == [(8 + i, i) for i in range(8)]
    with pytest.raises(RankTableError, match="set SERVER_ID"):
        local_devices(table, 8)
    with pytest.raises(RankTableError, match="server_id '10.9.9.9' not found"):
        local_devices(table, 8, server_id="10.9.9.9")


def _broken(mutate):
    data = v1_table(per_server=2)
    mutate(data)
    return data


@pytest.mark.parametrize("data, message", [
    ("{not json", r"not valid JSON \(line 1, column 2"),
    ("[]", "top level must be a JSON object"),
    (_broken(lambda t: t.pop("status")), "missing field 'status'"),
    (_broken(lambda t: t.update(status="initializing")), "status is 'initializing'"),
    (_broken(lambda t: t.pop("server_list")), "neither 'server_list'"),
    (_broken(lambda t: t.update(version="2.0")), "version '2.0' is not supported"),
    (_broken(lambda t: t.update(server_count="2")), "server_count is '2' but server_list has 1"),
    (_broken(lambda t: t["server_list"][0]["device"][1].update(device_ip="192.98.93")),
     "must be an IP address"),
    (_broken(lambda t: t["server_list"][0]["device"][1].update(rank_id="one")),
     "must be a non-negative integer"),
    (_broken(lambda t: t["server_list"][0]["device"][1].update(rank_id="0")),
     r"rank_id values must be 0..1, each once; got \[0, 0\]"),
    (_broken(lambda t: t["server_list"][0]["device"][1].update(rank_id="5")),
     r"rank_id values must be 0..1"),
    (_broken(lambda t: t["server_list"][0]["device"][1].update(device_id="0")),
     "lists device_id 0 twice"),
    (_broken(lambda t: t["server_list"][0].update(device=[])), "must be a non-empty list"),
])
def test_invalid_tables_name_the_problem(tmp_path, data, message):
    path = write(tmp_path, data)
    with pytest.raises(RankTableError, match=message) as info:
        load_rank_table(path)
    assert path in str(info.value)


def test_device_ip_is_optional_on_one_server(tmp_path):
    data = v1_table(per_server=4)
    for dev in data["server_list"][0]["device"]:
        dev.pop("device_ip")
    table = load_rank_table(write(tmp_path, data))
    assert [(d.rank_id, d.device_id, d.device_ip) for d in table.devices] == \
        [(r, r, None) for r in range(4)]
    older = group_list_table()
    older["group_list"][0]["instance_list"][2]["devices"][0].pop("device_ip")
    assert load_rank_table(write(tmp_path, older, "old.json")).devices[2].device_ip is None


def test_device_ip_is_required_with_several_servers(tmp_path):
    data = v1_table(("10.0.0.1", "10.0.0.2"))
    data["server_list"][1]["device"][3].pop("device_ip")
    path = write(tmp_path, data)
    with pytest.raises(RankTableError) as info:
        load_rank_table(path)
    assert str(info.value) == (
        f"rank table {path}: rank 11 (server 10.0.0.2, device_id 3) has no device_ip; HCCL needs "
        "every device's IP when the table lists more than one server (2: ['10.0.0.1', '10.0.0.2'])")


def one_server(device_ids):
    data = v1_table(per_server=1)
    data["server_list"][0]["device"] = [
        {"device_id": str(d), "device_ip": f"192.98.{92 + d}.100", "rank_id": str(r)} for r, d in enumerate(device_ids)]
    return data


@pytest.mark.parametrize("device_ids", [[0], [5], [0, 1], [2, 3], [4, 5], [6, 7], [0, 1, 2, 3],
                                        [7, 6, 5, 4], list(range(8))])
def test_layouts_hccl_runs_are_accepted(tmp_path, device_ids):
    table = load_rank_table(write(tmp_path, one_server(device_ids)))
    assert [d.device_id for d in table.devices] == device_ids


@pytest.mark.parametrize("device_ids, message", [
    ([0, 1, 2], "3 devices [0, 1, 2]: HCCL runs 1, 2, 4 or 8 ranks per Atlas 910 server"),
    ([0, 1, 2, 3, 4, 5], "6 devices [0, 1, 2, 3, 4, 5]: HCCL runs 1, 2, 4 or 8 ranks per Atlas "
                         "910 server"),
    ([2, 3, 4, 5], "devices [2, 3, 4, 5]: a 2- or 4-card job must lie inside cards 0-3 or inside "
                   "4-7 (the two HCCS groups of an Atlas 910 server)"),
    ([4, 3], "devices [3, 4]: a 2- or 4-card job must lie inside cards 0-3 or inside 4-7 (the two "
             "HCCS groups of an Atlas 910 server)"),
    ([0, 8], "device ids [0, 8]: an Atlas 910 server has cards 0-7"),
])
def test_layouts_hccl_refuses_are_errors(tmp_path, device_ids, message):
    path = write(tmp_path, one_server(device_ids))
    with pytest.raises(RankTableError) as info:
        load_rank_table(path)
    assert str(info.value) == f"rank table {path}: server 10.0.0.1 lists {message}"


def test_missing_file(tmp_path):
    with pytest.raises(RankTableError, match="rank table file not found: .*nope.json"):
        load_rank_table(str(tmp_path / "nope.json"))


def test_device_num_must_match_the_table(tmp_path):
    table = load_rank_table(write(tmp_path, v1_table()))
    with pytest.raises(RankTableError, match=r"DEVICE_NUM=4 disagrees .* lists 8 device\(s\)"):
        local_devices(table, 4)


def test_command_line(tmp_path):
    path = write(tmp_path, v1_table(("10.0.0.1", "10.0.0.2"), per_server=2))
    ok = subprocess.run([sys.executable, "src/utils/rank_table.py", path, "--device_num", "2",
                         "--server_id", "10.0.0.2"], cwd=REPO, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.split("\n") == ["RANK_SIZE=4", "2 0", "3 1", ""]
    bad = subprocess.run([sys.executable, "src/utils/rank_table.py", path, "--device_num", "3",
                          "--server_id", "10.0.0.1"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stdout == ""
    assert "error: DEVICE_NUM=3 disagrees" in bad.stderr
