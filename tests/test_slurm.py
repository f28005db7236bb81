"""SLURM preflight: the profile where SLURM is absent, GPUs on a partition without them, a world size
that does not divide the global batch. Pure checks always run; the live ones need a responding
`sinfo` (.ci/slurm.sh brings up a two-node SLURM and runs this file again) and submit nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from electra_ds.slurm_preflight import check_slurm_jobs, check_world_size, gres_gpus, parse_partitions
from electra_ds.errors import UserError
from test_pipeline import micro_config, snakemake

SLURM_PROFILES = ["--profile", "profiles/slurm", "--profile", "profiles/slurm_ci"]


def _sinfo(out: str, returncode: int = 0):
    def run(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, returncode, stdout=out, stderr="sinfo: error: down")
    return run


def _all_tools(name):
    return f"/usr/bin/{name}"


SINFO = "cpu*|(null)\ngpu|gpu:a100:8(S:0-1)\nmixed|gpu:2,nvme:1\nmixed|(null)\n"


@pytest.mark.parametrize("gres,gpus", [("(null)", 0), ("gpu:8", 8), ("gpu:a100:4(S:0-1)", 4), ("gpu", 1),
                                       ("nvme:1,gpu:h100:8(S:0,1)", 8), ("shard:4", 0)])
def test_gres_gpus(gres, gpus):
    assert gres_gpus(gres) == gpus


def test_partitions_and_default():
    assert parse_partitions(SINFO) == ({"cpu": 0, "gpu": 8, "mixed": 2}, "cpu")


def test_a_good_submission_passes():
    jobs = [{"rule": "corpus", "partition": None, "account": None, "gpus": 0},
            {"rule": "pretrain", "partition": "gpu", "account": "proj1", "gpus": 8}]
    check_slurm_jobs(jobs, run=_sinfo(SINFO), which=_all_tools)


def test_slurm_absent_is_a_clear_error():
    with pytest.raises(UserError, match="SLURM executor is selected .* `sbatch` is not on PATH"):
        check_slurm_jobs([], run=_sinfo(SINFO), which=lambda name: None)
    with pytest.raises(UserError, match=r"`sinfo -h -o %P\|%G` failed: sinfo: error: down"):
        check_slurm_jobs([], run=_sinfo("", returncode=1), which=_all_tools)


def test_gpus_on_a_partition_without_them():
    job = {"rule": "pretrain", "partition": "cpu", "account": None, "gpus": 8}
    with pytest.raises(UserError, match="field 'pretrain.gpus_per_node': .*partition 'cpu' has no GPUs"):
        check_slurm_jobs([job], run=_sinfo(SINFO), which=_all_tools)
    with pytest.raises(UserError, match="has at most 2 per node"):
        check_slurm_jobs([{**job, "partition": "mixed"}], run=_sinfo(SINFO), which=_all_tools)


def test_unknown_partition_and_placeholders():
    with pytest.raises(UserError, match="partition 'gpux' does not exist .*cpu, gpu, mixed"):
        check_slurm_jobs([{"rule": "vocab", "partition": "gpux"}], run=_sinfo(SINFO), which=_all_tools)
    with pytest.raises(UserError, match="slurm_account.*still the placeholder '<account>'"):
        check_slurm_jobs([{"rule": "vocab", "partition": "cpu", "account": "<account>"}], run=_sinfo(SINFO),
                         which=_all_tools)


def test_world_size_must_divide_the_global_batch():
    assert check_world_size(256, 0, 2, 8, 8) == 16
    with pytest.raises(UserError, match="world size 3 .* does not divide the global batch 16"):
        check_world_size(16, 0, 1, 3)
    with pytest.raises(UserError, match="field 'pretrain.processes_per_node'.*one process per GPU"):
        check_world_size(256, 0, 2, 4, 8)


def test_world_size_error_stops_the_dag(tmp_path):
    res = snakemake(micro_config(tmp_path, **{"pretrain.processes_per_node": 3}), tmp_path / "results", extra=["-n"])
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert "field 'pretrain.global_batch_size': world size 3" in out and "Traceback" not in out


def _sinfo_answers() -> bool:
    if not shutil.which("sinfo"):
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def test_slurm_profile_where_slurm_is_absent(tmp_path):
    """SLURM's commands missing (a machine without SLURM) or failing (controller down): one clear error
    before anything is submitted or written. Where SLURM is installed, stand-ins that fail take its place."""
    env = {}
    if shutil.which("sinfo"):
        fake = tmp_path / "bin"
        fake.mkdir()
        for tool in ("sbatch", "sinfo", "squeue", "scontrol", "sacct", "scancel"):
            (fake / tool).write_text("#!/bin/sh\necho \"$0: error: Unable to contact slurm controller\" >&2\nexit 1\n")
            (fake / tool).chmod(0o755)
        env["PATH"] = f"{fake}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    res = snakemake(micro_config(tmp_path), tmp_path / "results", extra=SLURM_PROFILES, env_extra=env, timeout=180)
    out = res.stdout + res.stderr
    assert res.returncode != 0, out[-3000:]
    assert "the SLURM executor is selected" in out and "Fix: run on a SLURM login node" in out, out[-3000:]
    assert not (tmp_path / "results").exists()


live = pytest.mark.skipif(not _sinfo_answers(), reason="no responding SLURM here (sinfo)")


@live
def test_gpus_requested_on_a_partition_without_them(tmp_path):
    cfg = micro_config(tmp_path, **{"pretrain.gpus_per_node": 2})
    res = snakemake(cfg, tmp_path / "results", extra=SLURM_PROFILES, timeout=180)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert "rule pretrain asks for 2 GPUs per node but partition 'debug' has no GPUs" in out, out[-3000:]
    assert "field 'pretrain.gpus_per_node'" in out


@live
def test_site_placeholders_left_in_the_profile(tmp_path):
    res = snakemake(micro_config(tmp_path), tmp_path / "results", extra=["--profile", "profiles/slurm"], timeout=180)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert "resource slurm_partition is still the placeholder '<partition>'" in out, out[-3000:]
