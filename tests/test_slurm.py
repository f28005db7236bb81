"""SLURM preflight: the profile where SLURM is absent, GPUs on a partition without them, a world size
that does not divide the global batch. Pure checks always run; the live ones need a responding
`sinfo` (.ci/slurm.sh brings up a two-node SLURM and runs this file again) and submit nothing."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import REPO, config_with
from helpers_slurm import slurm_jobs
from test_pipeline import micro_config, snakemake

from electra_ds.common.errors import UserError
from electra_ds.pipeline.slurm_preflight import check_slurm_jobs, check_world_size, gres_gpus, parse_partitions

# these tests run Snakemake in the checkout (its .snakemake folder): `make test` runs them alone, one at a time
pytestmark = pytest.mark.workflow

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
    # every placeholder in one error, whatever order the DAG lists its jobs in
    jobs = [{"rule": "pretrain", "partition": "<gpu-partition>", "account": "<account>"},
            {"rule": "vocab", "partition": "<partition>", "account": "<account>"}]
    for order in (jobs, jobs[::-1]):
        with pytest.raises(UserError) as err:
            check_slurm_jobs(order, run=_sinfo(SINFO), which=_all_tools)
        msg = str(err.value)
        assert "slurm_account is still the placeholder '<account>' (rules pretrain, vocab)" in msg
        assert "slurm_partition is still the placeholder '<gpu-partition>' (rules pretrain)" in msg
        assert "slurm_partition is still the placeholder '<partition>' (rules vocab)" in msg


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
    assert "resource slurm_partition is still the placeholder '<gpu-partition>' (rules pretrain)" in out
    assert not (tmp_path / "results" / "pretrain").exists()


# ---- what the SLURM plugin itself submits (its own code on the real DAG: tests/helpers_slurm.py) ----------------

def _preset(tmp_path, name, **overrides):
    """A preset (or test config) with dotted overrides, written beside the test."""
    return config_with(tmp_path, name, **overrides)


def _launch_args(shell: str) -> tuple[dict, list[str]]:
    """The options of `electra-ds launch` in a pretrain job's shell line, and the stage command after `--`."""
    words = shlex.split(shell.split(">")[0])
    launch = words[words.index("launch") + 1:words.index("--")]
    return dict(zip(launch[::2], launch[1::2])), words[words.index("--") + 1:]


def _flag(line: str, name: str):
    found = re.findall(rf"{name}[= ](\S+)", line)
    return found[-1] if found else None


# Every job shape of the presets and README: 1 GPU, 1 node x N GPUs, N nodes x M GPUs, CPU-only (1 and 2 processes,
# 1 and 2 nodes). The pretraining job must be accepted by the plugin, ask SLURM for the launch's processes, GPUs
# and CPUs, and the launch inside the job must start exactly those processes (srun for several, the process
# itself for one: the plugin runs a plain job's shell line in its own `srun -n1` step).
SHAPES = {  # name: (config, overrides, nodes, processes per node, GPUs per node, CPUs per process)
    "electra-small: 1 GPU": ("config/presets/electra-small.yaml", {}, 1, 1, 1, 8),
    "electra-base: 2 nodes x 8 GPUs": ("config/presets/electra-base.yaml", {}, 2, 8, 8, 8),
    "1 node x 8 GPUs": ("config/presets/electra-base.yaml", {"pretrain.nodes": 1}, 1, 8, 8, 8),
    "CPU only, 1 node x 2 processes (demo)": ("config/config.yaml", {}, 1, 2, 0, 1),
    "CPU only, 1 process": ("config/config.yaml", {"pretrain.processes_per_node": 1, "pretrain.threads": 2},
                            1, 1, 0, 2),
    "CPU only, 2 nodes x 1 process (CI)": ("tests/configs/micro.yaml", {"pretrain.nodes": 2,
                                           "pretrain.processes_per_node": 1, "pretrain.threads": 1}, 2, 1, 0, 1),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_the_slurm_plugin_accepts_every_pretraining_shape(tmp_path, shape):
    from electra_ds.pretraining.distributed import launch_command

    config, overrides, nodes, per_node, gpus, cpus = SHAPES[shape]
    jobs = slurm_jobs(tmp_path, _preset(tmp_path, config, **overrides))
    refused = [(j["rule"], j["refused"]) for j in jobs if j.get("refused")]
    assert not refused, refused
    job = next(j for j in jobs if j["rule"] == "pretrain")
    sbatch, tasks = job["sbatch"], nodes * per_node
    assert _flag(sbatch, "--nodes") == str(nodes) and _flag(sbatch, "--cpus-per-task") == str(cpus), sbatch
    assert _flag(sbatch, "--gres") == (f"gpu:{gpus}" if gpus else None), sbatch
    assert "--ntasks-per-gpu" not in sbatch  # it would bind each process to one GPU, hiding its peers from NCCL
    if tasks > 1:  # an MPI-style job: the shell line runs in the batch step and starts the tasks itself
        assert _flag(sbatch, "--ntasks") == str(tasks) and job["resources"]["mpi"] == "srun" and "step" not in job
    else:  # a plain job: the plugin runs the shell line in `srun -n1` with the job's CPUs
        assert _flag(sbatch, "--ntasks") in (None, "1") and job["resources"]["mpi"] is None, sbatch
        assert _flag(job["step"], "--cpus-per-task") == str(cpus) and _flag(job["step"], "--nodes") == "1"

    # What `electra-ds launch` runs inside that job (the SLURM variables of its shell line's environment there).
    opts, stage = _launch_args(job["shell"])
    step_env = {"SLURM_JOB_ID": "42"} if tasks > 1 else {"SLURM_JOB_ID": "42", "SLURM_STEP_ID": "0"}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("shutil.which", lambda name: f"/usr/bin/{name}")
        cmd = launch_command(stage, int(opts["--nproc-per-node"]), int(opts["--nnodes"]), opts["--launcher"],
                             environ=step_env, srun=opts["--srun"], cpus_per_task=int(opts["--cpus-per-task"]))
    if tasks > 1:
        assert cmd[:8] == ["srun", "-n", str(tasks), "-N", str(nodes), f"--ntasks-per-node={per_node}", "-c",
                           str(cpus)], cmd
    else:
        assert cmd[:3] == [sys.executable, "-m", "electra_ds"] and "srun" not in cmd, cmd
    assert cmd[-len(stage):] == stage and stage[0] == "pretrain"


def test_every_job_asks_slurm_for_the_cpus_its_command_uses(tmp_path):
    """electra-small through profiles/slurm: each job's --cpus-per-task is the threads its shell line uses (its
    --threads option, or the launch's CPUs per process), and the CPU-heavy stages get the config's threads."""
    cfg = yaml.safe_load((REPO / "config/presets/electra-small.yaml").read_text())
    jobs = [j for j in slurm_jobs(tmp_path, REPO / "config/presets/electra-small.yaml") if j["shell"]]
    assert {j["rule"] for j in jobs} >= {"corpus", "dedup", "vocab", "shards", "pretrain", "export", "finetune",
                                         "evaluate"}
    for job in jobs:
        cpus = _flag(job["sbatch"], "--cpus-per-task")
        if job["rule"] == "pretrain":
            used = _launch_args(job["shell"])[0]["--cpus-per-task"]
        else:
            used = _flag(job["shell"].split(">")[0], "--threads") or "1"  # no --threads option: one thread
            assert int(cpus) == job["threads"], job
        assert cpus == used, (job["rule"], job["sbatch"], job["shell"])
    by_rule = {j["rule"]: int(_flag(j["sbatch"], "--cpus-per-task")) for j in jobs}
    assert by_rule["dedup"] == cfg["dedup"]["threads"] and by_rule["vocab"] == cfg["vocab"]["threads"]
    assert by_rule["shards"] == cfg["shards"]["threads"] and by_rule["finetune"] == cfg["finetune"]["threads"]
    assert by_rule["pretrain"] == cfg["pretrain"]["threads"] // cfg["pretrain"]["processes_per_node"]
