"""Write an HCCL rank table (version 1.0 JSON) for the Ascend devices of this server.

    python tools/hccl_tools.py --device_num "[0,8)"
    python tools/hccl_tools.py --device_num "[0,4)" --visible_devices 4,5,6,7 --server_ip 10.0.0.1
    python tools/hccl_tools.py --device_num "[0,2)" --device_ips 192.98.92.100,192.98.93.100

``--device_num "[a,b)"`` picks the logical devices a..b-1 (half-open range), i.e. entries
a..b-1 of ``--visible_devices`` (default 0..7; in a container that only sees cards 4-7,
pass ``--visible_devices 4,5,6,7`` and ``--device_num "[0,4)"``). Rank i is the i-th
picked device. The table records the physical device ids, which must form a layout HCCL
runs on an Atlas 910 server: 1, 2, 4 or 8 cards, and 2 or 4 cards inside 0-3 or inside
4-7 (e.g. "[0,4)", "[4,8)", "[0,2)", "[4,6)", "[3,4)"; not "[0,3)" or "[2,6)").

Device IPs (the NIC address of each card, which HCCL connects to between servers) come
from, in order: ``--device_ips`` (one per picked device), ``hccn_tool -i <id> -ip -g``
(Ascend driver tools), or the ``address_<id>=<ip>`` lines of ``--hccn_conf`` (default
/etc/hccn.conf). When none of these exists (e.g. a container without the driver tools)
the table has no ``device_ip``: HCCL needs none for a job on one server, and a made-up
address would only fail later inside HCCL. A table for a multi-server job needs them.

Writes ``hccl_<n>p_<device ids>_<server ip>.json`` in the current directory (or
``--output``) and prints its path.
"""
import argparse
import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from src.utils.errors import UserError  # noqa: E402
from src.utils.rank_table import build_rank_table, load_rank_table, server_layout_error  # noqa: E402

RANGE = re.compile(r"^\s*\[\s*(\d+)\s*,\s*(\d+)\s*\)\s*$")


class HcclToolsError(UserError, ValueError):
    pass


def parse_device_range(text):
    """``"[0,8)"`` -> ``[0, 1, ..., 7]``."""
    match = RANGE.match(text)
    if not match:
        raise HcclToolsError(f"--device_num: expected a half-open range like \"[0,8)\", got {text!r}")
    first, last = int(match.group(1)), int(match.group(2))
    if first >= last:
        raise HcclToolsError(f"--device_num {text!r}: the range is empty (first {first} >= end {last})")
    return list(range(first, last))


def parse_id_list(text, option):
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items or not all(s.isdigit() for s in items):
        raise HcclToolsError(f"{option}: expected comma-separated device ids like 0,1,2,3, got {text!r}")
    ids = [int(s) for s in items]
    if len(set(ids)) != len(ids):
        raise HcclToolsError(f"{option}: device ids repeat in {text!r}")
    return ids


def check_ip(text, what):
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise HcclToolsError(f"{what}: {text!r} is not an IP address") from None
    return text


def ips_from_hccn_tool(device_ids):
    ips = {}
    for dev in device_ids:
        proc = subprocess.run(["hccn_tool", "-i", str(dev), "-ip", "-g"], capture_output=True,
                              text=True, timeout=30, check=False)
        # output: "ipaddr:192.98.92.100\nnetmask:255.255.255.0"
        match = re.search(r"ipaddr\s*:\s*(\S+)", proc.stdout)
        if proc.returncode != 0 or not match:
            raise HcclToolsError(f"'hccn_tool -i {dev} -ip -g' did not report an address "
                                 f"(exit {proc.returncode}): {(proc.stdout + proc.stderr).strip()[:200]}")
        ips[dev] = check_ip(match.group(1), f"hccn_tool -i {dev}")
    return ips


def ips_from_hccn_conf(path, device_ids):
    ips = {}
    with open(path, "r", encoding="utf-8") as f:
        for line in f:
            match = re.match(r"^\s*address_(\d+)\s*=\s*(\S+)\s*$", line)
            if match:
                ips[int(match.group(1))] = check_ip(match.group(2), f"{path}: address_{match.group(1)}")
    missing = [d for d in device_ids if d not in ips]
    if missing:
        raise HcclToolsError(f"{path} has no address_<id> line for device(s) {missing}")
    return ips


def device_ips(device_ids, explicit, hccn_conf):
    if explicit:
        ips = [check_ip(s.strip(), "--device_ips") for s in explicit.split(",") if s.strip()]
        if len(ips) != len(device_ids):
            raise HcclToolsError(f"--device_ips gives {len(ips)} address(es) for {len(device_ids)} "
                                 f"device(s) {device_ids}")
        return ips
    if shutil.which("hccn_tool"):
        found = ips_from_hccn_tool(device_ids)
    elif os.path.isfile(hccn_conf):
        found = ips_from_hccn_conf(hccn_conf, device_ids)
    else:
        print(f"note: no device IPs ('hccn_tool' is not on PATH and {hccn_conf} does not exist): "
              "the table has no device_ip, which is enough for a job on this server only; for a "
              "multi-server table pass them with --device_ips ip0,ip1,...", file=sys.stderr)
        return None
    return [found[d] for d in device_ids]


def host_ip():
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device_num", default="[0,8)",
                        help='half-open range of logical devices, e.g. "[0,8)" (default) or "[0,4)"')
    parser.add_argument("--visible_devices", default="0,1,2,3,4,5,6,7",
                        help="physical device ids this system sees, in logical order (default 0..7)")
    parser.add_argument("--server_ip", default="", help="this server's IP (default: resolve the hostname)")
    parser.add_argument("--device_ips", default="", help="comma-separated NIC IPs, one per picked device")
    parser.add_argument("--hccn_conf", default="/etc/hccn.conf", help="fallback source of device IPs")
    parser.add_argument("--output", default="", help="output file (default: hccl_<n>p_<ids>_<ip>.json)")
    args = parser.parse_args(argv)
    try:
        logical = parse_device_range(args.device_num)
        visible = parse_id_list(args.visible_devices, "--visible_devices")
        if logical[-1] >= len(visible):
            raise HcclToolsError(f"--device_num {args.device_num!r} needs {logical[-1] + 1} visible "
                                 f"devices but --visible_devices lists {len(visible)}: {visible}")
        device_ids = [visible[i] for i in logical]
        problem = server_layout_error(device_ids)
        if problem:
            picked = "" if visible == list(range(8)) else f" (--visible_devices {args.visible_devices})"
            raise HcclToolsError(f"--device_num {args.device_num!r} picks {problem}{picked}")
        server_ip = args.server_ip or host_ip()
        if not server_ip:
            raise HcclToolsError("cannot resolve this host's IP; pass --server_ip")
        check_ip(server_ip, "--server_ip")
        if ipaddress.ip_address(server_ip).is_loopback:
            print(f"warning: server_ip {server_ip} is a loopback address; fine for one server, "
                  "but pass --server_ip for a table that will be merged with other servers",
                  file=sys.stderr)
        ips = device_ips(device_ids, args.device_ips, args.hccn_conf)
    except HcclToolsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    table = build_rank_table(server_ip, device_ids, ips)
    output = args.output or (f"hccl_{len(device_ids)}p_{''.join(map(str, device_ids))}_{server_ip}.json")
    with open(output, "w", encoding="utf-8") as f:
        json.dump(table, f, indent=4)
        f.write("\n")
    load_rank_table(output)  # what we wrote must pass the same validation the launcher runs
    for rank, dev in enumerate(device_ids):
        print(f"rank_id:{rank}, device_id:{dev}" + (f", device_ip:{ips[rank]}" if ips else ""))
    print(f"rank table written: {os.path.abspath(output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
