"""Fine-tuning: the same jobs through a baseline checkout and this one, side by side, in one run.

Issue 21 asked for fine-tuning without waste (length-grouped batches, bf16 where pretraining uses it, no start-up
cost that dominates a job) and the study's fine-tuning minutes down 4x or more *for the same work*. This script
runs that work: for each task, one ``electra-ds finetune`` job of the baseline (``--baseline-src``, a checkout of
an earlier electra-ds, e.g. ``git worktree add /tmp/base c23676e``; its package runs through PYTHONPATH) and the
same job of this checkout, with the same exported model, data, cap, epochs, learning rate and seed, each on one
thread, the two side by side (as the study runs two jobs on 2 cores), so both see the same machine. Every other
setting is each checkout's own default: that is what changed (this checkout: bf16 autocast where the CPU has bf16
matrix units, eager attention, length-grouped batches).

Per job it prints the process's wall time, the time the job itself counts from reading its data to writing its
outputs (``seconds`` in metrics.json; the rest is start-up: Python imports, the command line, MLflow), its steps
and its dev score, then the total job-minutes of each side and their ratio.

    git worktree add /tmp/base c23676e
    python benchmarks/finetune_throughput.py --baseline-src /tmp/base \\
        --model-dir results/demo/export/electra/discriminator --glue-dir ../shared/data/glue

The default work is the former study's (issue 21's "104 of the study's 168 job-minutes"): the five GLUE tasks it
fine-tuned, 2000 training examples, 3 epochs (10 for RTE and STS-B), learning rate 1e-3, a 128-wide 2-layer model
(the demo's export has that shape); one seed instead of three.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAPER_EPOCHS = {"rte": 10, "stsb": 10}  # the paper's (and both checkouts' default) epochs; 3 for the rest


def finetune_args(model_dir: Path, glue_dir: Path, task: str, args, output_dir: Path, results: Path) -> list[str]:
    """``electra-ds finetune``'s arguments for one job: the options both checkouts have, nothing else."""
    return ["finetune", "--model-dir", str(model_dir), "--task", task, "--seed", str(args.seed),
            "--output-dir", str(output_dir), "--data-dir", str(glue_dir), "--learning-rate", str(args.learning_rate),
            "--max-train-examples", str(args.max_train_examples),
            "--epochs", str(PAPER_EPOCHS.get(task, 3) if args.epochs == 0 else args.epochs),
            "--no-double-unordered", "--threads", "1", "--results-dir", str(results)]


def job(source: Path, model_dir: Path, glue_dir: Path, task: str, args, work: Path, label: str) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"{label}-{task}-", dir=work))
    results = work / f"{label}-results"  # one MLflow store a side, created before the first job (as in a study)
    cmd = [sys.executable, "-m", "electra_ds", *finetune_args(model_dir, glue_dir, task, args, out / "job", results)]
    env = {**os.environ, "PYTHONPATH": str(source), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=work, timeout=3600)
    wall = time.perf_counter() - start
    if res.returncode != 0:
        raise RuntimeError(f"{label} {task} failed:\n{res.stderr[-3000:]}")
    m = json.loads((out / "job" / "metrics.json").read_text())
    return {"wall": wall, "seconds": m["seconds"], "steps": m["steps"], "main": m["main"],
            "metric": m["main_metric"], "bf16": m.get("bf16")}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline-src", required=True, help="a checkout of an earlier electra-ds")
    p.add_argument("--model-dir", default=str(REPO / "results/demo/export/electra/discriminator"),
                   help="an exported discriminator both checkouts can load (no ALiBi: the baseline has none)")
    p.add_argument("--glue-dir", default=str(REPO.parent / "shared/data/glue"))
    p.add_argument("--tasks", nargs="+", default=["cola", "sst2", "mrpc", "stsb", "rte"])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--max-train-examples", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=0, help="0: 3, and 10 for RTE and STS-B")
    p.add_argument("--learning-rate", type=float, default=1e-3)
    return p


def main() -> None:
    args = parser().parse_args()
    model_dir, glue_dir = Path(args.model_dir).resolve(), Path(args.glue_dir).resolve()
    sides = {"baseline": Path(args.baseline_src).resolve(), "this checkout": REPO}
    print(f"model {model_dir}; {args.max_train_examples} training examples; seed {args.seed}; one thread a job, "
          f"the baseline's and this checkout's job of a task side by side")
    rows = []
    with tempfile.TemporaryDirectory(prefix="finetune-bench-") as tmp, ThreadPoolExecutor(2) as pool:
        work = Path(tmp)
        from mlflow.tracking import MlflowClient

        for label in sides:  # the tracking store the pipeline's earlier stages would have created
            results = work / f"{label.replace(' ', '-')}-results"
            results.mkdir()
            MlflowClient(f"sqlite:///{results}/mlflow.db").search_experiments()
        for task in args.tasks:
            futures = {label: pool.submit(job, src, model_dir, glue_dir, task, args, work, label.replace(" ", "-"))
                       for label, src in sides.items()}
            rows.append((task, {label: f.result() for label, f in futures.items()}))
            b, c = rows[-1][1]["baseline"], rows[-1][1]["this checkout"]
            print(f"  {task}: baseline {b['wall']:.1f} s, this checkout {c['wall']:.1f} s", flush=True)
    print("\n| task | side | wall s | job's own s | start-up s | steps | dev (metric) | bf16 |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    total = {label: 0.0 for label in sides}
    for task, by_side in rows:
        for label, r in by_side.items():
            total[label] += r["wall"]
            print(f"| {task} | {label} | {r['wall']:.1f} | {r['seconds']:.1f} | {r['wall'] - r['seconds']:.1f} | "
                  f"{r['steps']} | {100 * r['main']:.1f} ({r['metric']}) | {r['bf16']} |")
    b, c = total["baseline"], total["this checkout"]
    print(f"\njob-minutes: baseline {b / 60:.2f}, this checkout {c / 60:.2f}: **{b / c:.2f}x** less time for the "
          f"same jobs")


if __name__ == "__main__":
    main()
