"""Assertions of the SLURM CI stage (.ci/slurm.sh), from SLURM's own records and the run's files.

    python .ci/slurm_checks.py pipeline WORK RESULTS        the micro pipeline on the two-node cluster
    python .ci/slurm_checks.py same-losses REF RUN LABEL    two train_log.jsonl files describe the same run
    python .ci/slurm_checks.py resumed WORK RESULTS JOBID... a pretraining that was interrupted and resumed
    python .ci/slurm_checks.py one-task RESULTS JOBID        a pretraining job of 1 node x 1 process

SLURM commands go to the cluster's controller: .ci/slurm.sh runs this in the controller's network namespace.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MAX_STEPS = int(re.search(r"max_steps: (\d+)", (REPO / "tests/configs/micro_two_nodes.yaml").read_text()).group(1))
NODES = {"edsci-n1": ("eds-n1", "10.77.0.1"), "edsci-n2": ("eds-n2", "10.77.0.2")}
LOSS_KEYS = ("loss", "gen_loss", "disc_loss", "gen_acc", "disc_acc")
REL, ABS = 2e-4, 1e-5  # tests/test_pretrain.py::test_two_ranks_with_micro_b_match_one_rank_with_2b


def scontrol_job(job_id: str) -> dict:
    out = subprocess.run(["scontrol", "-o", "show", "job", str(job_id)], capture_output=True, text=True,
                         timeout=20, check=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def hostnames(nodelist: str) -> list[str]:
    return subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                          timeout=20, check=True).stdout.split()


def jobcomp(work: Path) -> list[dict]:
    lines = (work / "log/jobcomp.log").read_text().splitlines()
    return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in lines if line.strip()]


def rank_records(work: Path, job_id: str) -> list[dict]:
    ranks = json.loads((work / "ranks.json").read_text()) if (work / "ranks.json").exists() else []
    return [r for r in ranks if r["env"].get("SLURM_JOB_ID") == str(job_id)]


def store_port(job_id: str) -> int:
    return 15000 + int(job_id) % 20000  # electra_ds.pretraining.distributed.slurm_port


def check_ranks_on_two_nodes(work: Path, job_id: str) -> str:
    """Rank 0 in node 1's namespace, rank 1 in node 2's; rendezvous and gloo over the namespaces' link."""
    ranks = sorted(rank_records(work, job_id), key=lambda r: r["first_seen"])
    by_rank = {r["env"]["SLURM_PROCID"]: r for r in ranks}  # a requeued job's ranks: those of its last start
    assert sorted(by_rank) == ["0", "1"], \
        f"job {job_id}: expected processes of rank 0 and 1, the watcher saw {[(r['pid'], r['env']) for r in ranks]}"
    for rank, ns in (("0", "edsci-n1"), ("1", "edsci-n2")):
        r = by_rank[rank]
        node, _ = NODES[ns]
        assert r["netns"] == ns and r["hostname"] == node and r["env"]["SLURMD_NODENAME"] == node, (rank, r)
        assert r["env"]["SLURM_STEP_NUM_TASKS"] == "2" and r["env"]["SLURM_STEP_NUM_NODES"] == "2", (rank, r["env"])
    port = store_port(job_id)
    a1, a2 = NODES["edsci-n1"][1], NODES["edsci-n2"][1]
    c1 = [tuple(c) for c in by_rank["1"]["connections"]]
    c0 = [tuple(c) for c in by_rank["0"]["connections"]]
    assert any(remote == f"{a1}:{port}" for _, remote in c1), \
        f"rank 1 never connected to the rendezvous {a1}:{port} (node 1's namespace address): {c1}"
    gloo1 = [c for c in c1 if c[0].startswith(a2 + ":") and c[1].startswith(a1 + ":") and c[1] != f"{a1}:{port}"]
    gloo0 = [c for c in c0 if c[0].startswith(a1 + ":") and c[1].startswith(a2 + ":")]
    assert gloo1 and gloo0, f"no gloo pair between {a1} and {a2}: rank 0 {c0}, rank 1 {c1}"
    loop = [c for c in c0 + c1 if c[1].startswith("127.")]
    assert not loop, f"ranks talked over loopback, not the nodes' link: {loop}"
    r1 = by_rank["1"]
    moved = sum(r1["net_last"]["eth0"]) - sum(r1["net_first"]["eth0"])
    assert moved > 1_000_000, f"only {moved} bytes crossed node 2's link while rank 1 ran"
    return (f"rank 0 on {by_rank['0']['hostname']} ({a1}), rank 1 on {by_rank['1']['hostname']} ({a2}); "
            f"rendezvous {a1}:{port}; gloo pairs {len(gloo1)}; {moved / 1e6:.1f} MB over node 2's link")


def cmd_pipeline(work: Path, results: Path) -> None:
    records = [rec for rec in jobcomp(work) if rec["Name"] != "reference"]  # the one-node run beside the pipeline
    assert records, "jobcomp log is empty: no job ran under SLURM"
    by_rule: dict[str, list] = {}
    for rec in records:
        info = scontrol_job(rec["JobId"])  # MinJobAge=3600: scontrol still knows ended jobs
        rule = re.match(r"rule_([a-z_]+?)(_wildcards_|$)", info.get("Comment", "")).group(1)
        by_rule.setdefault(rule, []).append((rec, info))
        assert rec["JobState"] == "COMPLETED", (rule, rec)
    # evaluate is a local rule (Snakefile `localrules`): it runs on the login node, never as a SLURM job
    expected = {"corpus": 1, "dedup": 1, "vocab": 1, "shards": 1, "probes": 1, "pretrain": 1, "export": 1,
                "finetune": 2, "linear_probe": 1}
    got = {rule: len(jobs) for rule, jobs in by_rule.items()}
    assert got == expected, f"SLURM jobs per rule {got} != {expected}"
    used = sorted({h for rec in records for h in hostnames(rec["NodeList"])})
    (rec, info), = by_rule["pretrain"]
    job_id = rec["JobId"]
    assert info["NumNodes"] == "2" and info["NumTasks"] == "2", \
        f"pretrain job {job_id}: NumNodes={info['NumNodes']} NumTasks={info['NumTasks']}, want 2 and 2"
    assert rec["NodeCnt"] == "2" and sorted(hostnames(info["NodeList"])) == ["eds-n1", "eds-n2"], (rec, info)
    print(f"SLURM ran {len(records)} jobs on {used}, all COMPLETED: {got}")
    print(f"pretrain job {job_id}: NumNodes=2 NumTasks=2 NodeList={info['NodeList']} BatchHost={info['BatchHost']}")

    log = (results / "logs/pretrain/electra.log").read_text()
    launch = next(line for line in log.splitlines() if line.startswith("electra-ds launch:"))
    assert " srun -n 2 -N 2 --ntasks-per-node=1 " in f" {launch.split(':', 1)[1]} ", launch
    assert "world size 2," in log, "pretraining did not report world size 2"
    summary = json.loads((results / "pretrain/electra/summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == MAX_STEPS, summary
    print("pretraining:", launch.split(":", 1)[1].split(" -m ")[0].strip(), "| world size", summary["world_size"])
    print(check_ranks_on_two_nodes(work, job_id))

    from mlflow.tracking import MlflowClient
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("electra-ds-micro").experiment_id])
    kinds = [r.data.tags.get("electra_ds.kind") for r in runs]
    assert (results / "evaluate/results.json").is_file(), "the local rule evaluate wrote no results"
    jobs = sum(got.values())
    assert sorted(kinds) == ["model"] + ["pipeline"] + ["stage"] * (jobs + 1) and all(
        r.info.status == "FINISHED" for r in runs), [(r.data.tags.get("electra_ds.rule"), r.info.status) for r in runs]
    print(f"MLflow: {len(runs)} runs (1 pipeline + {jobs} SLURM jobs + evaluate on the login node + 1 model), "
          "all FINISHED")
    (work / "uninterrupted_train_log.jsonl").write_text((results / "pretrain/electra/train_log.jsonl").read_text())


def cmd_reference_cmd(work: Path, results: Path) -> None:
    """The pretraining command of the pipeline's job (rank 0's argv, as the watcher read it), with another
    output directory, started by ``electra-ds launch --nproc-per-node 2`` on one node."""
    out = str(results / "pretrain/electra")
    argv = next(r["argv"] for r in json.loads((work / "ranks.json").read_text())
                if r["env"]["SLURM_PROCID"] == "0" and out in r["argv"])
    stage = argv[argv.index("electra_ds") + 1:]
    stage[stage.index("--output-dir") + 1] = str(work / "reference")
    (work / "reference_cmd.txt").write_text(shlex.join(["electra-ds", "launch", "--nproc-per-node", "2", "--",
                                                        *stage]))


def cmd_same_losses(ref: Path, run: Path, label: str) -> None:
    a = [json.loads(line) for line in ref.read_text().splitlines() if line.strip()]
    b = [json.loads(line) for line in run.read_text().splitlines() if line.strip()]
    assert [(r["split"], r["step"]) for r in a] == [(r["split"], r["step"]) for r in b], \
        f"{label}: logged steps differ: {[(r['split'], r['step']) for r in a]} vs {[(r['split'], r['step']) for r in b]}"
    worst = 0.0
    for x, y in zip(a, b):
        for key in LOSS_KEYS:
            if key not in x:
                continue
            diff = abs(x[key] - y[key])
            assert diff <= ABS + REL * abs(y[key]), f"{label}: {x['split']} step {x['step']} {key} {x[key]} != {y[key]}"
            worst = max(worst, diff / max(abs(y[key]), 1e-12))
    print(f"{label}: {len(a)} logged lines (train and valid) equal within rel {REL} / abs {ABS}; "
          f"largest relative difference {worst:.1e}; final loss {a[-1]['loss']:.5f} vs {b[-1]['loss']:.5f}")


def cmd_resumed(work: Path, results: Path, job_ids: list[str]) -> None:
    """The last job COMPLETED on both nodes and resumed from a checkpoint between the first and the last step."""
    last = scontrol_job(job_ids[-1])
    assert last["JobState"] == "COMPLETED" and last["NumNodes"] == "2", last
    log = (results / "logs/pretrain/electra.log").read_text()
    m = re.search(r"resumed from (\S+) at step (\d+)", log)
    assert m, "the pretraining log does not say it resumed from a checkpoint"
    step = int(m.group(2))
    summary = json.loads((results / "pretrain/electra/summary.json").read_text())
    assert 0 < step < summary["steps"] == MAX_STEPS and summary["world_size"] == 2, (step, summary)
    print(f"job {job_ids[-1]} COMPLETED on {last['NodeList']} (Restarts={last['Restarts']}), "
          f"resumed from {Path(m.group(1)).name} at step {step} of {summary['steps']}")
    print(check_ranks_on_two_nodes(work, job_ids[-1]))


def cmd_one_task(results: Path, job_id: str) -> None:
    """The pretraining of 1 node x 1 process: one SLURM job of one task (a plain job: the plugin refuses an MPI job
    of one task) that COMPLETED, whose one process `electra-ds launch` ran itself (no srun in the plugin's
    `srun -n1` step, no torchrun), as a world of one, for every step."""
    steps = int(re.search(r"max_steps: (\d+)", (REPO / "tests/configs/micro_one_task.yaml").read_text()).group(1))
    info = scontrol_job(job_id)
    assert info["JobState"] == "COMPLETED" and info["NumNodes"] == "1" and info["NumTasks"] == "1", \
        f"pretrain job {job_id}: {info}"
    assert info.get("Comment", "").startswith("rule_pretrain"), info
    log = (results / "logs/pretrain/electra.log").read_text()
    launch = next(line for line in log.splitlines() if line.startswith("electra-ds launch:"))
    started = launch.split(":", 1)[1].split()
    assert started[1:4] == ["-m", "electra_ds", "pretrain"], f"not the process itself: {launch}"
    assert "world size 1," in log, "pretraining did not report world size 1"
    summary = json.loads((results / "pretrain/electra/summary.json").read_text())
    assert summary["world_size"] == 1 and summary["steps"] == steps, summary
    print(f"pretrain job {job_id}: NumNodes=1 NumTasks=1 on {info['NodeList']}, COMPLETED; the launch ran "
          f"{' '.join(started[1:4])} itself; world size 1, {steps} steps")


if __name__ == "__main__":
    what = sys.argv[1]
    if what == "pipeline":
        cmd_pipeline(Path(sys.argv[2]), Path(sys.argv[3]))
    elif what == "reference-cmd":
        cmd_reference_cmd(Path(sys.argv[2]), Path(sys.argv[3]))
    elif what == "same-losses":
        cmd_same_losses(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4])
    elif what == "resumed":
        cmd_resumed(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:])
    elif what == "one-task":
        cmd_one_task(Path(sys.argv[2]), sys.argv[3])
    else:
        sys.exit(f"unknown check {what!r}")
