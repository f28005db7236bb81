"""Watches the pretraining ranks of the two-node CI cluster (.ci/slurm.sh) from outside the nodes.

Every 0.3 s it lists the processes of each node's network namespace (``/proc/<pid>/ns/net`` against
``/run/netns/<name>``) and, for every ``python -m electra_ds pretrain`` rank it finds, records once the
environment srun gave it (SLURM_JOB_ID, SLURM_PROCID, SLURMD_NODENAME, ...) and its UTS hostname, and then
on every pass its established TCP connections (its socket inodes matched in ``/proc/<pid>/net/tcp``: the
TCPStore rendezvous and gloo's pairs) and its namespace's interface byte counters (``/proc/<pid>/net/dev``).
The whole record is rewritten atomically to the output JSON after each pass, so killing this watcher (as
the script does at the end) loses nothing.

    python .ci/netns_watch.py OUT.json NS_NAME=NODE_NAME [NS_NAME=NODE_NAME ...]
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time

ENV_KEYS = ("SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_STEP_NUM_TASKS",
            "SLURM_STEP_NUM_NODES", "SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURMD_NODENAME",
            "SLURM_RESTART_COUNT", "SLURM_NTASKS_PER_NODE")


def _addr(hexaddr: str) -> str:
    """``0100007F:1F90`` (tcp) or 32 hex digits (tcp6; IPv4-mapped shown as IPv4) -> ``127.0.0.1:8080``."""
    ip, port = hexaddr.split(":")
    raw = b"".join(struct.pack("<I", int(ip[i:i + 8], 16)) for i in range(0, len(ip), 8))
    addr = ipaddress.ip_address(raw)
    if addr.version == 6 and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return f"{addr}:{int(port, 16)}"


def _established(pid: int) -> set[tuple[str, str]]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    pairs = set()
    for table in ("tcp", "tcp6"):  # torch's TCPStore may use IPv6 sockets (IPv4-mapped addresses)
        with open(f"/proc/{pid}/net/{table}") as f:
            next(f)
            for line in f:
                cols = line.split()
                if cols[3] == "01" and cols[9] in inodes:  # ESTABLISHED, owned by this process
                    pairs.add((_addr(cols[1]), _addr(cols[2])))
    return pairs


def _net_bytes(pid: int) -> dict[str, list[int]]:
    out = {}
    with open(f"/proc/{pid}/net/dev") as f:
        for line in list(f)[2:]:
            name, rest = line.split(":", 1)
            cols = rest.split()
            out[name.strip()] = [int(cols[0]), int(cols[8])]  # rx bytes, tx bytes
    return out


def _hostname(pid: int) -> str:
    try:
        return subprocess.run(["nsenter", "-t", str(pid), "-u", "hostname"], capture_output=True, text=True,
                              timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def main() -> None:
    out_path = sys.argv[1]
    nodes = dict(arg.split("=", 1) for arg in sys.argv[2:])
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    ranks: dict[str, dict] = {}
    while not stop:
        ns_inode = {}
        for ns, node in nodes.items():
            try:
                ns_inode[f"net:[{os.stat(f'/run/netns/{ns}').st_ino}]"] = (ns, node)
            except OSError:
                pass
        changed = False
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            try:
                where = ns_inode.get(os.readlink(f"/proc/{pid}/ns/net"))
                if where is None:
                    continue
                key = f"{pid}@{where[0]}"
                if key not in ranks:
                    argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
                    argv = [a.decode() for a in argv if a]
                    # a rank: python -m electra_ds pretrain ... (not the srun line that starts it)
                    if not (argv and os.path.basename(argv[0]).startswith("python") and "-m" in argv
                            and argv[argv.index("-m") + 1:argv.index("-m") + 3] == ["electra_ds", "pretrain"]):
                        continue
                    env = dict(item.split("=", 1) for item in
                               open(f"/proc/{pid}/environ", "rb").read().decode(errors="replace").split("\0")
                               if "=" in item)
                    ranks[key] = {"pid": pid, "netns": where[0], "node": where[1], "hostname": _hostname(pid),
                                  "argv": argv, "env": {k: env.get(k) for k in ENV_KEYS},
                                  "first_seen": time.time(), "connections": [], "net_first": _net_bytes(pid)}
                    changed = True
                rec = ranks[key]
                conns = {tuple(c) for c in rec["connections"]} | _established(pid)
                if len(conns) != len(rec["connections"]):
                    changed = True
                rec["connections"] = sorted(conns)
                rec["net_last"] = _net_bytes(pid)
                rec["last_seen"] = time.time()
            except (OSError, ValueError, StopIteration):
                continue  # the process ended while we looked
        if changed or ranks:
            tmp = out_path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(list(ranks.values()), f, indent=1)
            os.replace(tmp, out_path)
        time.sleep(0.3)


if __name__ == "__main__":
    main()
