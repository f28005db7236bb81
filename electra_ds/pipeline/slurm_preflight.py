"""Checks the Snakemake workflow runs before it submits anything with the SLURM profile (and locally, for the
world size): SLURM reachable, partitions present, GPUs on them, a world size that divides the global batch.
Each failure is a :class:`UserError` naming the fix. The launcher itself is :mod:`electra_ds.pretraining.distributed`.
"""

from __future__ import annotations

import shutil
import subprocess

from electra_ds.common.errors import UserError
from electra_ds.pretraining.ds_config import derive_batch


def _slurm_query(cmd: list[str], run=subprocess.run, timeout: int = 20) -> str:
    """stdout of a SLURM client command, or a UserError saying SLURM is not usable here."""
    fix = ("run on a SLURM login node (sbatch, sinfo and squeue on PATH, slurmctld reachable), "
           "or drop --profile/--executor slurm to run locally")
    try:
        res = run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise UserError(f"the SLURM executor is selected but {cmd[0]} is not installed here", fix=fix)
    except subprocess.TimeoutExpired:
        raise UserError(f"the SLURM executor is selected but `{' '.join(cmd)}` did not answer in {timeout} s",
                        fix=fix)
    if res.returncode != 0:
        detail = (res.stderr or res.stdout).strip().splitlines()
        raise UserError(f"the SLURM executor is selected but `{' '.join(cmd)}` failed"
                        + (f": {detail[-1]}" if detail else ""), fix=fix)
    return res.stdout


def gres_gpus(gres: str) -> int:
    """GPUs per node in a sinfo %G field: ``gpu:a100:8(S:0-1),nvme:1`` -> 8, ``(null)`` -> 0."""
    best = 0
    for item in gres.split(","):
        item = item.split("(")[0].strip()
        parts = item.split(":")
        if parts[0] != "gpu":
            continue
        count = parts[-1] if len(parts) > 1 else "1"
        best = max(best, int(count) if count.isdigit() else 1)
    return best


def parse_partitions(sinfo_out: str) -> tuple[dict[str, int], str | None]:
    """``sinfo -h -o '%P|%G'`` -> ({partition: max GPUs per node}, default partition)."""
    gpus: dict[str, int] = {}
    default = None
    for line in sinfo_out.splitlines():
        if "|" not in line:
            continue
        name, gres = line.strip().split("|", 1)
        if name.endswith("*"):
            name = name[:-1]
            default = name
        gpus[name] = max(gpus.get(name, 0), gres_gpus(gres))
    return gpus, default


def check_slurm_jobs(jobs: list[dict], run=subprocess.run, which=shutil.which) -> None:
    """Preflight for the SLURM executor. ``jobs``: one dict per job to submit with keys
    rule, partition, account, gpus (GPUs per node the job asks for)."""
    for tool in ("sbatch", "sinfo", "squeue"):
        if not which(tool):
            raise UserError(f"the SLURM executor is selected (profiles/slurm) but `{tool}` is not on PATH",
                            fix="run on a SLURM login node, or run locally without --profile profiles/slurm")
    partitions, default = parse_partitions(_slurm_query(["sinfo", "-h", "-o", "%P|%G"], run=run))
    # Every placeholder left in the profile, in one error (the order of the DAG's jobs is not stable).
    placeholders: dict[tuple[str, str], list[str]] = {}
    for job in jobs:
        for key, value in (("slurm_partition", job.get("partition")), ("slurm_account", job.get("account"))):
            if isinstance(value, str) and value.startswith("<"):
                rules = placeholders.setdefault((key, value), [])
                if job["rule"] not in rules:
                    rules.append(job["rule"])
    if placeholders:
        what = "; ".join(f"resource {key} is still the placeholder {value!r} (rules {', '.join(sorted(rules))})"
                         for (key, value), rules in sorted(placeholders.items()))
        keys = sorted({key for key, _ in placeholders})
        raise UserError(what, field=", ".join(keys),
                        fix=f"set {' and '.join(keys)} for your site in a site profile given after profiles/slurm "
                            "(see profiles/README.md)")
    for job in jobs:
        partition = job.get("partition") or default
        if partition is None:
            raise UserError(f"rule {job['rule']}: no partition given and the cluster has no default partition",
                            field="slurm_partition", fix="set default-resources: slurm_partition in your profile")
        if partition not in partitions:
            raise UserError(f"rule {job['rule']}: partition {partition!r} does not exist (sinfo lists: "
                            f"{', '.join(sorted(partitions)) or 'none'})", field="slurm_partition",
                            fix="set slurm_partition in your SLURM profile to one of those")
        if job.get("gpus", 0) > partitions[partition]:
            have = partitions[partition]
            raise UserError(f"rule {job['rule']} asks for {job['gpus']} GPUs per node but partition {partition!r} "
                            + (f"has at most {have} per node" if have else "has no GPUs (sinfo %G shows no gpu GRES)"),
                            field="pretrain.gpus_per_node",
                            fix="submit pretrain to a GPU partition (set-resources: pretrain: slurm_partition: ... "
                                "in your profile) or set pretrain.gpus_per_node: 0 for CPU processes")


def check_world_size(global_batch: int, micro_batch: int, nodes: int, processes_per_node: int,
                     gpus_per_node: int = 0) -> int:
    """World size = nodes x processes_per_node; it must divide the global batch (with the micro-batch)."""

    if gpus_per_node and processes_per_node != gpus_per_node:
        raise UserError(f"processes_per_node {processes_per_node} != gpus_per_node {gpus_per_node}: "
                        "pretraining starts one process per GPU", field="pretrain.processes_per_node",
                        fix=f"set pretrain.processes_per_node: {gpus_per_node}")
    world = nodes * processes_per_node
    try:
        derive_batch(global_batch, micro_batch, world)
    except UserError:
        raise UserError(f"world size {world} (nodes {nodes} x processes_per_node {processes_per_node}) "
                        f"with micro-batch {micro_batch or 'auto'} does not divide the global batch {global_batch}",
                        field="pretrain.global_batch_size",
                        fix="make global_batch_size a multiple of micro_batch_size x nodes x processes_per_node")
    return world
