"""HCCL rank tables: read, validate, build (standard library only).

A rank table tells HCCL (Ascend's collective library) which device of which server is
which rank. Two layouts exist; both are read:

* version 1.0 (what ``tools/hccl_tools.py`` writes)::

      {"version": "1.0", "server_count": "1", "status": "completed",
       "server_list": [{"server_id": "10.0.0.1", "host_nic_ip": "reserve",
                        "device": [{"device_id": "0", "device_ip": "192.1.27.6", "rank_id": "0"}, ...]}]}

* the older ``group_list`` layout::

      {"status": "completed", "group_count": "1",
       "group_list": [{"device_num": "8", "server_num": "1", "instance_count": "8",
                       "instance_list": [{"rank_id": "0", "server_id": "10.0.0.1",
                                          "devices": [{"device_id": "0", "device_ip": "192.1.27.6"}]}, ...]}]}

``device_ip`` (the card's NIC address) is what HCCL uses between servers: required in a
table that lists several servers, optional in a one-server table (checked when present).

Per server, HCCL on an Atlas 910 server (cards 0-7, linked by HCCS in two groups of four,
0-3 and 4-7) runs 1, 2, 4 or 8 ranks, and a 2- or 4-rank server must lie inside one group;
other layouts are refused here rather than inside HCCL.

Used by ``scripts/run_distribute_train.sh`` through the command line::

    python src/utils/rank_table.py RANK_TABLE_FILE --device_num 8 [--server_id ID]

prints ``RANK_SIZE=<all ranks>`` and then one ``<rank_id> <device_id>`` line per rank
that runs on this server, or a clear error (exit status 2).
"""
import argparse
import ipaddress
import json
import os
import socket
import sys
from dataclasses import dataclass


class RankTableError(ValueError):
    """A rank table problem; the message names the file and the field at fault."""


@dataclass(frozen=True)
class RankDevice:
    rank_id: int
    device_id: int
    device_ip: object      # str, or None when the table gives none (one-server tables only)
    server_id: str


@dataclass(frozen=True)
class RankTable:
    path: str
    layout: str            # "1.0" | "group_list"
    devices: tuple         # RankDevice, sorted by rank_id (= 0..rank_size-1)

    @property
    def rank_size(self):
        return len(self.devices)

    @property
    def server_ids(self):
        return list(dict.fromkeys(d.server_id for d in self.devices))

    def server_devices(self, server_id):
        return [d for d in self.devices if d.server_id == server_id]


# --------------------------------------------------------------------------- reading --

def _field(obj, key, where, path):
    if not isinstance(obj, dict):
        raise RankTableError(f"rank table {path}: {where} must be a JSON object, got {type(obj).__name__}")
    if key not in obj:
        raise RankTableError(f"rank table {path}: missing field '{where}.{key}'" if where
                             else f"rank table {path}: missing field '{key}'")
    return obj[key]


def _int_field(obj, key, where, path):
    value = _field(obj, key, where, path)
    text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else None
    if text is None or not text.isdigit():
        raise RankTableError(f"rank table {path}: '{where}.{key}' must be a non-negative integer "
                             f"(a string like \"0\"), got {value!r}")
    return int(text)


def _ip_field(obj, key, where, path, required=True):
    if not required and isinstance(obj, dict) and key not in obj:
        return None
    value = _field(obj, key, where, path)
    try:
        ipaddress.ip_address(str(value))
    except ValueError:
        raise RankTableError(f"rank table {path}: '{where}.{key}' must be an IP address, "
                             f"got {value!r}") from None
    return str(value)


def _list_field(obj, key, where, path):
    value = _field(obj, key, where, path)
    if not isinstance(value, list) or not value:
        raise RankTableError(f"rank table {path}: '{where}.{key}' must be a non-empty list, got {value!r}")
    return value


def _devices_v1(data, path):
    servers = _list_field(data, "server_list", "", path)
    if "server_count" in data and _int_field(data, "server_count", "", path) != len(servers):
        raise RankTableError(f"rank table {path}: server_count is {data['server_count']!r} but "
                             f"server_list has {len(servers)} entries")
    devices = []
    for s, server in enumerate(servers):
        where = f"server_list[{s}]"
        server_id = str(_field(server, "server_id", where, path))
        for d, dev in enumerate(_list_field(server, "device", where, path)):
            dwhere = f"{where}.device[{d}]"
            devices.append(RankDevice(_int_field(dev, "rank_id", dwhere, path),
                                      _int_field(dev, "device_id", dwhere, path),
                                      _ip_field(dev, "device_ip", dwhere, path, False), server_id))
    return devices


def _devices_group_list(data, path):
    groups = _list_field(data, "group_list", "", path)
    if len(groups) != 1:
        raise RankTableError(f"rank table {path}: group_list has {len(groups)} groups; "
                             "only a single group is supported (use the version 1.0 layout)")
    where = "group_list[0]"
    instances = _list_field(groups[0], "instance_list", where, path)
    devices = []
    for i, inst in enumerate(instances):
        iwhere = f"{where}.instance_list[{i}]"
        inst_devices = _list_field(inst, "devices", iwhere, path)
        if len(inst_devices) != 1:
            raise RankTableError(f"rank table {path}: '{iwhere}.devices' must hold exactly one "
                                 f"device per rank, got {len(inst_devices)}")
        dwhere = f"{iwhere}.devices[0]"
        devices.append(RankDevice(_int_field(inst, "rank_id", iwhere, path),
                                  _int_field(inst_devices[0], "device_id", dwhere, path),
                                  _ip_field(inst_devices[0], "device_ip", dwhere, path, False),
                                  str(_field(inst, "server_id", iwhere, path))))
    for key in ("device_num", "instance_count"):
        if key in groups[0] and _int_field(groups[0], key, where, path) != len(devices):
            raise RankTableError(f"rank table {path}: '{where}.{key}' is {groups[0][key]!r} but "
                                 f"instance_list has {len(devices)} ranks")
    return devices


HCCS_GROUPS = ((0, 1, 2, 3), (4, 5, 6, 7))
RANKS_PER_SERVER = (1, 2, 4, 8)


def server_layout_error(device_ids):
    """Why HCCL would refuse these physical device ids as one Atlas 910 server's ranks, or
    None when it accepts them."""
    ids = sorted(device_ids)
    if any(d > 7 for d in ids):
        return f"device ids {ids}: an Atlas 910 server has cards 0-7"
    if len(ids) not in RANKS_PER_SERVER:
        return (f"{len(ids)} devices {ids}: HCCL runs 1, 2, 4 or 8 ranks per Atlas 910 server")
    if len(ids) in (2, 4) and not any(set(ids) <= set(group) for group in HCCS_GROUPS):
        return (f"devices {ids}: a 2- or 4-card job must lie inside cards 0-3 or inside 4-7 "
                "(the two HCCS groups of an Atlas 910 server)")
    return None


def _check_consistent(devices, path):
    ranks = sorted(d.rank_id for d in devices)
    if ranks != list(range(len(devices))):
        raise RankTableError(f"rank table {path}: rank_id values must be 0..{len(devices) - 1}, "
                             f"each once; got {ranks}")
    servers = list(dict.fromkeys(d.server_id for d in devices))
    if len(servers) > 1:
        for d in devices:
            if d.device_ip is None:
                raise RankTableError(
                    f"rank table {path}: rank {d.rank_id} (server {d.server_id}, device_id "
                    f"{d.device_id}) has no device_ip; HCCL needs every device's IP when the "
                    f"table lists more than one server ({len(servers)}: {servers})")
    seen = {}
    for d in devices:
        for what, value in (("device_id", d.device_id), ("device_ip", d.device_ip)):
            if value is None:
                continue
            key = (d.server_id, what, value)
            if key in seen:
                raise RankTableError(f"rank table {path}: server {d.server_id} lists {what} {value} "
                                     f"twice (rank {seen[key]} and rank {d.rank_id})")
            seen[key] = d.rank_id
    for server in servers:
        problem = server_layout_error([d.device_id for d in devices if d.server_id == server])
        if problem:
            raise RankTableError(f"rank table {path}: server {server} lists {problem}")


def load_rank_table(path):
    """Read and validate a rank table file; returns a ``RankTable``."""
    if not os.path.isfile(path):
        raise RankTableError(f"rank table file not found: {path}")
    with open(path, "r", encoding="utf-8") as f:
        text = f.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise RankTableError(f"rank table {path} is not valid JSON "
                             f"(line {err.lineno}, column {err.colno}: {err.msg})") from None
    if not isinstance(data, dict):
        raise RankTableError(f"rank table {path}: top level must be a JSON object, got {type(data).__name__}")
    status = _field(data, "status", "", path)
    if status != "completed":
        raise RankTableError(f"rank table {path}: status is {status!r}; HCCL only accepts a table "
                             "whose status is \"completed\"")
    if "server_list" in data:
        version = str(data.get("version", "1.0"))
        if version != "1.0":
            raise RankTableError(f"rank table {path}: version {version!r} is not supported (expected \"1.0\")")
        layout, devices = "1.0", _devices_v1(data, path)
    elif "group_list" in data:
        layout, devices = "group_list", _devices_group_list(data, path)
    else:
        raise RankTableError(f"rank table {path}: neither 'server_list' (version 1.0 layout) nor "
                             "'group_list' (older layout) found")
    _check_consistent(devices, path)
    return RankTable(path, layout, tuple(sorted(devices, key=lambda d: d.rank_id)))


def _local_addresses():
    names = {"localhost", socket.gethostname()}
    addresses = set()
    for name in names:
        try:
            addresses.update(socket.gethostbyname_ex(name)[2])
        except OSError:
            pass
    return addresses


def local_devices(table, device_num, server_id=None):
    """The ranks this server runs, checked against DEVICE_NUM.

    ``server_id``: which server of the table this is. Not needed for a one-server table;
    otherwise it is matched against this host's addresses when not given.
    """
    servers = table.server_ids
    if server_id is None:
        if len(servers) == 1:
            server_id = servers[0]
        else:
            mine = [s for s in servers if s in _local_addresses()]
            if len(mine) != 1:
                raise RankTableError(
                    f"rank table {table.path} lists {len(servers)} servers {servers}; set SERVER_ID "
                    "to the server_id of this machine")
            server_id = mine[0]
    elif server_id not in servers:
        raise RankTableError(f"rank table {table.path}: server_id {server_id!r} not found; "
                             f"the table lists {servers}")
    devices = table.server_devices(server_id)
    if device_num != len(devices):
        raise RankTableError(
            f"DEVICE_NUM={device_num} disagrees with rank table {table.path}, which lists "
            f"{len(devices)} device(s) for server {server_id} "
            f"(device_id {[d.device_id for d in devices]})")
    return devices


# --------------------------------------------------------------------------- writing --

def build_rank_table(server_id, device_ids, device_ips=None):
    """A version 1.0 table for one server; rank i is ``device_ids[i]``. Without
    ``device_ips`` the devices have no ``device_ip`` (enough for a one-server job)."""
    if device_ips is not None and len(device_ids) != len(device_ips):
        raise RankTableError(f"{len(device_ids)} devices but {len(device_ips)} device IPs")

    def device(rank, dev):
        entry = {"device_id": str(dev)}
        if device_ips is not None:
            entry["device_ip"] = str(device_ips[rank])
        entry["rank_id"] = str(rank)
        return entry
    return {
        "version": "1.0",
        "server_count": "1",
        "server_list": [{
            "server_id": str(server_id),
            "device": [device(rank, dev) for rank, dev in enumerate(device_ids)],
            "host_nic_ip": "reserve",
        }],
        "status": "completed",
    }


# ---------------------------------------------------------------------- command line --

def main(argv=None):
    parser = argparse.ArgumentParser(description="Validate an HCCL rank table and print the "
                                                 "ranks of this server.")
    parser.add_argument("rank_table_file")
    parser.add_argument("--device_num", type=int, required=True,
                        help="processes to start on this server (must match the table)")
    parser.add_argument("--server_id", default=None, help="this server's server_id in the table")
    args = parser.parse_args(argv)
    try:
        if args.device_num < 1:
            raise RankTableError(f"DEVICE_NUM must be a positive integer, got {args.device_num}")
        table = load_rank_table(args.rank_table_file)
        devices = local_devices(table, args.device_num, args.server_id or None)
    except RankTableError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"RANK_SIZE={table.rank_size}")
    for d in devices:
        print(d.rank_id, d.device_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
