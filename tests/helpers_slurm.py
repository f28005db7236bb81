"""What snakemake-executor-plugin-slurm would submit for every job of a real DAG, from the plugin's own code.

:func:`slurm_jobs` runs a dry run of the workflow with the SLURM profile (this file as a script, in a subprocess
of its own). The dry run walks through every job of the DAG; for each, the installed plugin's own functions are
called on the real Snakemake job: ``get_submit_command`` + ``set_gres_string`` (the sbatch line; the plugin raises
WorkflowError for a job shape it refuses) and, for a job without ``mpi``, the jobstep plugin's settings of the
``srun -n1`` step it runs the job's shell line in. Only the cluster calls (sinfo, sacctmgr, sbatch) are left out.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV_OUT = "ELECTRA_DS_SLURM_JOBS_OUT"
# A dry run caps every job's threads at --cores (1 when not given); a real SLURM run from a login node has no such
# cap (the jobs' threads are what the config says), so the dry run gets more cores than any rule asks for.
UNCAPPED_CORES = "4096"


def slurm_jobs(tmp_path, *configfiles, profiles=("profiles/slurm",), extra=()) -> list[dict]:
    """One record per job, in the order the dry run schedules them: rule, wildcards, threads, local (a localrules
    job), resources, shell (the formatted shell line), and sbatch plus step (no mpi) or refused (the plugin's
    error)."""
    out = tmp_path / "slurm_jobs.json"
    cmd = [sys.executable, __file__, "-n", "--cores", UNCAPPED_CORES, "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(tmp_path / "workdir"),  # Snakemake's own files (.snakemake/) there, not in the checkout
           "--configfile", *map(str, configfiles), "--config", f"results_dir={tmp_path / 'results'}",
           *(a for p in profiles for a in ("--profile", str(REPO / p))), *extra]
    env = {**os.environ, ENV_OUT: str(out)}
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0 and out.exists(), res.stdout[-3000:] + res.stderr[-3000:]
    return json.loads(out.read_text())


def _record(job) -> dict:
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command, safe_quote
    from snakemake_executor_plugin_slurm.utils import set_gres_string
    from snakemake_executor_plugin_slurm_jobstep import get_cpu_setting, get_gpu_setting, get_node_setting
    from snakemake_interface_common.exceptions import WorkflowError

    res = job.resources
    record = {"rule": job.rule.name, "wildcards": dict(job.wildcards_dict), "threads": job.threads,
              # a `localrules` job: run where Snakemake runs, never submitted (job.is_local is true for every job of
              # a dry run, which executes locally)
              "local": job.rule.name in job.dag.workflow._localrules,
              "resources": {k: res.get(k) for k in ("nodes", "tasks", "mpi", "cpus_per_task", "gres", "gpu",
                                                    "tasks_per_gpu", "slurm_partition")},
              "shell": job.shellcmd}
    account, partition = res.get("slurm_account"), res.get("slurm_partition")
    params = {"run_uuid": "dry", "slurm_logfile": "slurm.log", "comment_str": f"rule_{job.name}",
              "account": f" -A {safe_quote(account)}" if account else "",
              "partition": f" -p {partition}" if partition else "", "workdir": str(REPO)}
    try:
        record["sbatch"] = get_submit_command(job, params) + set_gres_string(job)
        if "mpi" not in res.keys():  # the plugin's job step: `srun -n1 --cpu-bind=q <these> <the job>`
            record["step"] = " ".join(filter(None, [get_cpu_setting(job, bool(res.get("gpu"))),
                                                    get_gpu_setting(job), get_node_setting(job)]))
    except WorkflowError as exc:
        record["refused"] = str(exc)
    return record


def _main(argv) -> None:
    from snakemake import cli
    from snakemake.executors import dryrun

    records = []
    dry_run_job = dryrun.Executor.run_job

    def run_job(self, job):
        records.append(_record(job))
        dry_run_job(self, job)

    dryrun.Executor.run_job = run_job
    try:
        cli.main(argv)
    finally:
        Path(os.environ[ENV_OUT]).write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    _main(sys.argv[1:])
