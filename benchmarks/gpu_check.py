"""The first-GPU check: is the GPU path fast and whole? One table, in minutes.

On a GPU (the full form, about 6-8 minutes on one H100-class GPU):

1. the bf16 matmul peak at the model's GEMM shapes and the pipeline's real pretraining step (``electra-ds launch --
   pretrain``, the DeepSpeed engine, 1 process) at ELECTRA-Small's and -Base's shapes: tokens/s, model TFLOP/s, MFU;
2. the pipeline on the offline demo corpus at ELECTRA-Small's shape: corpus, dedup, vocab, shards, 200 pretraining
   steps, export, and a short SST-2 fine-tune from that checkpoint (the demo's probe task when no GLUE folder is
   given), each stage's wall time and outcome.

``--reduced`` (what CI runs on CPU): the tiny shape only, 20 pretraining steps, a 1-epoch fine-tune of 200 examples.

    bash benchmarks/gpu_check.sh            # = python benchmarks/gpu_check.py [--glue-dir DIR] [--reduced]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))

from pretrain_throughput import (
    SHAPES,
    bf16_supported,
    gemm_shapes,
    matmul_tflops,
    pipeline_rate,
    synthetic_shards,  # noqa: E402
)


def electra_ds(*args, log: Path) -> float:
    """Run one stage; its wall time. A failure stops the check with the stage's log tail."""
    start = time.time()
    with open(log, "w") as f:
        res = subprocess.run([sys.executable, "-m", "electra_ds", *map(str, args)], stdout=f, stderr=subprocess.STDOUT)
    if res.returncode != 0:
        raise SystemExit(f"gpu_check: {args[0]} failed (exit {res.returncode}); last lines of {log}:\n"
                         + "\n".join(log.read_text().splitlines()[-25:]))
    return time.time() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reduced", action="store_true", help="CPU form: tiny shape, 20 steps (CI)")
    p.add_argument("--glue-dir", default=None, help="GLUE folder (original TSV layout) for the SST-2 fine-tune")
    p.add_argument("--work-dir", default=None, help="where the run writes (default: a new temporary folder)")
    args = p.parse_args()

    import torch

    from electra_ds.pretraining.model import ModelShape
    from electra_ds.pretraining.shape import flops_per_token

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="electra-ds-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    precision = "bf16" if bf16_supported(device) else "fp32"
    launch = "1x1" if device.type == "cuda" else "1x2"
    shapes = ["tiny"] if args.reduced else ["small", "base"]
    steps = 10 if args.reduced else 40
    rows = []

    # 1. peak and the pipeline's step per shape
    vocab = 30522
    shards = synthetic_shards(work / "synthetic-shards", vocab, 2048, 128)
    for shape_name in shapes:
        shape = ModelShape(vocab_size=vocab, **SHAPES[shape_name], dropout=0.1)
        micro = 32 if args.reduced else 128
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        peak = max(matmul_tflops(m, k, n, dtype, device) for _, m, k, n in gemm_shapes(shape, micro * 128))
        start = time.time()
        r = pipeline_rate(shards, {**SHAPES[shape_name], "dropout": 0.1}, launch, precision, steps,
                          max(2, steps // 5), micro, micro, work)
        rows.append((f"pretrain step, {shape_name} ({shape.hidden_size}x{shape.num_layers}), batch {micro}x128, "
                     f"{r['precision']}", f"{r['tokens_per_s']:,.0f} tokens/s, {r['model_tflops']:.2f} model TFLOP/s, "
                     f"MFU {100 * r['model_tflops'] / peak:.0f}% of {peak:.1f} (bf16 GEMM peak at its shapes)",
                     time.time() - start))
        assert abs(r["flops_per_token"] - flops_per_token(shape, 128)) < 1e-3 * r["flops_per_token"]

    # 2. the pipeline end to end at ELECTRA-Small's shape (tiny with --reduced) on the offline demo corpus
    data, logs = work / "demo", work / "logs"
    logs.mkdir(exist_ok=True)
    track = ["--results-dir", str(work), "--tracking-uri", f"sqlite:///{work}/mlflow.db"]
    t = electra_ds("corpus", "--output", data / "documents.jsonl", "--stats", data / "corpus-stats.json",
                   "--sources", '[{"type": "demo"}]', *track, log=logs / "corpus.log")
    t += electra_ds("dedup", "--input", data / "documents.jsonl", "--output", data / "dedup.jsonl", "--stats",
                    data / "dedup-stats.json", *track, log=logs / "dedup.log")
    t += electra_ds("vocab", "--input", data / "dedup.jsonl", "--output-dir", data / "vocab", "--vocab-size", 8000,
                    *track, log=logs / "vocab.log")
    t += electra_ds("shards", "--input", data / "dedup.jsonl", "--tokenizer-dir", data / "vocab", "--output-dir",
                    data / "shards", "--heldout-fraction", 0.25, *track, log=logs / "shards.log")
    rows.append(("data stages (demo corpus, dedup, vocab 8000, shards)", "ok", t))
    shape = {**SHAPES["tiny" if args.reduced else "small"], "dropout": 0.1}
    pretrain_steps = 20 if args.reduced else 200
    out = work / "pretrain"
    t = electra_ds("launch", "--nproc-per-node", 1, "--", "pretrain", "--shards", data / "shards", "--output-dir", out,
                   "--ds-config", REPO / "ds_configs" / "zero2.json", "--model", json.dumps(shape),
                   "--global-batch-size", 32 if args.reduced else 128, "--learning-rate", 1e-3, "--warmup-steps", 20,
                   "--max-steps", pretrain_steps, "--log-every", 10, "--eval-every", pretrain_steps // 2,
                   "--checkpoint-every", pretrain_steps // 2, "--precision", "auto", *track,
                   log=logs / "pretrain.log")
    summary = json.loads((out / "summary.json").read_text())
    valid = summary["final_valid"]
    rows.append((f"pretrain {pretrain_steps} steps ({summary['precision']}, checkpoint {summary['tag']})",
                 f"loss {summary['final_train']['loss']:.3f}, valid rtd_gain {valid.get('rtd_gain', float('nan')):.3f}, "
                 f"disc_auc {valid.get('disc_auc', float('nan')):.3f}", t))
    t = electra_ds("export", "--pretrain-summary", out / "summary.json", "--tokenizer-dir", data / "vocab",
                   "--output-dir", work / "export", *track, log=logs / "export.log")
    rows.append(("export (checks the exported model reproduces the trained one)", "ok", t))
    if args.glue_dir:
        task, data_dir = "sst2", args.glue_dir
    else:
        electra_ds("probes", "--input", data / "dedup.jsonl", "--output-dir", data / "probes",
                   "--heldout-fraction", 0.25, *track, log=logs / "probes.log")
        task, data_dir = "probe-acceptability", data / "probes"
    ft = work / "finetune"
    t = electra_ds("finetune", "--model-dir", work / "export" / "discriminator", "--task", task, "--seed", 1,
                   "--output-dir", ft, "--data-dir", data_dir, "--max-train-examples", 200 if args.reduced else 2000,
                   "--epochs", 1, "--learning-rate", 1e-4, "--precision", "auto", *track, log=logs / "finetune.log")
    metrics = json.loads((ft / "metrics.json").read_text())
    rows.append((f"fine-tune {task}, 1 epoch of {metrics['train_examples']} ({'bf16' if metrics['bf16'] else 'fp32'})",
                 f"dev {metrics['main_metric']} {metrics['main']:.3f} (majority {metrics['majority_baseline']['main']:.3f})",
                 t))

    width = max(len(r[0]) for r in rows)
    print(f"\nelectra-ds GPU check on {name}, torch {torch.__version__}{', reduced (CPU) form' if args.reduced else ''}")
    print(f"{'check':{width}s}  {'seconds':>7s}  result")
    for what, result, seconds in rows:
        print(f"{what:{width}s}  {seconds:7.1f}  {result}")
    print(f"work folder: {work}")


if __name__ == "__main__":
    main()
