"""Pretraining throughput: the pipeline's real training step against the machine's matmul peak and a stock-HF loop.

Everything runs in this one invocation, on this machine, so every ratio compares numbers measured side by side:

1. **Peak**: the bf16 (and fp32) matmul rate at the model's own GEMM shapes (the discriminator's and generator's
   projections and feed-forward layers at micro-batch x sequence-length rows, the embedding projection, the
   generator's vocabulary projection at the masked rows), with all the cores the run uses. The best bf16 rate is
   "the peak".
2. **The pipeline's step**: ``electra-ds launch ... -- pretrain`` exactly as the Snakemake rule runs it (DeepSpeed
   engine, ZeRO-2, gloo on CPU), on synthetic shards, for each launch (``2x1``: 2 processes x 1 thread, ``1x2``:
   1 process x 2 threads) and precision asked for; tokens/s and model TFLOP/s are the median of the log intervals
   after the first (start-up, JIT builds and warm-up excluded), as ``train_log.jsonl`` reports them.
3. **Reference**: the same objective written with stock Hugging Face modules (full-vocabulary generator logits,
   eager attention, fp32, torch AdamW, ``torch.multinomial`` sampling), one process, all threads.

``--ceiling`` adds what the model's own ops reach without the pipeline around them: the whole pretraining model in
plain PyTorch (bf16 weights, no DeepSpeed) and its discriminator alone, eager and under torch.compile.
``--zero`` times other ZeRO stages than the presets' 2; ``--busy N`` times each variant again beside N spinning
low-priority processes (a machine something else also wants).

``--profile`` adds a torch.profiler breakdown of the pipeline's step (one process, the DeepSpeed engine built by
:class:`electra_ds.pretraining.trainer.Trainer`) by kind of work.

    python benchmarks/pretrain_throughput.py --shape tiny small --launch 2x1 1x2 --precision bf16 fp32
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from electra_ds import CLS_ID, MASK_ID, PAD_ID, SEP_ID  # noqa: E402
from electra_ds.pretraining.masking import mask_positions  # noqa: E402
from electra_ds.pretraining.model import ElectraPretrainer, ModelShape, electra_configs  # noqa: E402
from electra_ds.pretraining.shape import flops_per_token, generator_dims, generator_num_layers  # noqa: E402

SHAPES = {  # discriminator shapes; the generator is generator_fraction of the width
    "tiny": dict(embedding_size=128, hidden_size=128, num_layers=2, num_heads=2, intermediate_size=512),
    "study": dict(embedding_size=256, hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024,
                  attention_bias="alibi", generator_layers=0.25),  # config/presets/cpu-study.yaml's model
    "small": dict(embedding_size=128, hidden_size=256, num_layers=12, num_heads=4, intermediate_size=1024),
    "base": dict(embedding_size=768, hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072,
                 generator_fraction=1 / 3),
}


# -- 1. the peak at the model's own GEMM shapes ---------------------------------------------------------------------
def gemm_shapes(shape: ModelShape, rows: int, mask_prob: float = 0.15) -> list[tuple[str, int, int, int]]:
    """(name, M, K, N) of the forward matmuls of one micro-batch of ``rows`` token positions."""
    g_hidden, _, g_inter = generator_dims(shape)
    h, i, e = shape.hidden_size, shape.intermediate_size, shape.embedding_size
    out = [("disc qkv/out", rows, h, h), ("disc ffn up", rows, h, i), ("disc ffn down", rows, i, h),
           ("gen qkv/out", rows, g_hidden, g_hidden), ("gen ffn up", rows, g_hidden, g_inter),
           ("gen vocab projection", max(1, int(rows * mask_prob)), e, shape.vocab_size)]
    if e != h:
        out.append(("embedding projection", rows, e, h))
    return out


def matmul_tflops(m: int, k: int, n: int, dtype, device, seconds: float = 0.3) -> float:
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)
    for _ in range(2):
        a @ b
    reps, start = 0, time.perf_counter()
    while True:
        a @ b
        reps += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        if time.perf_counter() - start > seconds:
            break
    return 2 * m * k * n * reps / (time.perf_counter() - start) / 1e12


def print_peak(shape: ModelShape, rows: int, device) -> float:
    """Print the bf16 and fp32 rates at the model's GEMM shapes (:func:`gemm_shapes` of ``rows`` token positions) and
    return the peak: the best bf16 rate (the best fp32 one where bf16 has no matrix units)."""
    peak = {}
    print(f"{'GEMM (M x K x N)':36s} {'bf16':>8s} {'fp32':>8s}  TFLOP/s")
    for label, m, k, n in gemm_shapes(shape, rows):
        rates = {dt: matmul_tflops(m, k, n, dt, device) for dt in (torch.bfloat16, torch.float32)}
        for dt, r in rates.items():
            peak[dt] = max(peak.get(dt, 0), r)
        print(f"  {label + f' {m}x{k}x{n}':34s} {rates[torch.bfloat16]:8.2f} {rates[torch.float32]:8.2f}")
    peak_bf16 = peak[torch.bfloat16] if bf16_supported(device) else peak[torch.float32]
    print(f"peak (best bf16 rate at the model's shapes): {peak_bf16:.2f} TFLOP/s; best fp32 "
          f"{peak[torch.float32]:.2f}")
    return peak_bf16


def bf16_supported(device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    from electra_ds.common.hardware import cpu_has_bf16_matmul

    return cpu_has_bf16_matmul()


# -- 2. the pipeline's own step -----------------------------------------------------------------------------------
def synthetic_shards(out: Path, vocab: int, examples: int, seq_len: int, seed: int = 0) -> Path:
    """A shards directory of ``examples`` full rows ([CLS] a [SEP] b [SEP]) of Zipf-distributed ids."""
    from electra_ds.data.shard_format import FORMAT
    from electra_ds.data.shards import ShardWriter

    rng = np.random.default_rng(seed)
    ids = np.minimum(rng.zipf(1.2, size=(examples, seq_len)) + 4, vocab - 1).astype(np.uint16)
    ids[:, 0], ids[:, seq_len // 2], ids[:, -1] = CLS_ID, SEP_ID, SEP_ID
    out.mkdir(parents=True, exist_ok=True)
    splits = {}
    for split, rows in (("train", ids), ("valid", ids[:64])):
        writer = ShardWriter(out, split, examples_per_shard=100_000)
        writer.add(rows)
        splits[split] = writer.close()
    (out / "index.json").write_text(json.dumps({
        "format": FORMAT, "max_seq_len": seq_len, "dtype": "uint16", "vocab_size": vocab, "pad_id": PAD_ID,
        "cls_id": CLS_ID, "sep_id": SEP_ID, "mask_id": MASK_ID, "seed": seed, "splits": splits}))
    return out


def pipeline_rate(shards: Path, shape: dict, launch: str, precision: str, steps: int, log_every: int,
                  global_batch: int, micro: int, work: Path, extra=(), source: str | None = None,
                  zero: str = "2") -> dict:
    """tokens/s and model TFLOP/s of ``electra-ds launch -- pretrain`` (median of the log intervals after the
    first), and the resolved precision. ``source``: run the electra_ds package of another checkout (a baseline);
    ``zero``: the ZeRO stage (``ds_configs/zero<stage>.json``)."""
    nproc, threads = (int(x) for x in launch.split("x"))
    out = Path(tempfile.mkdtemp(prefix=f"pretrain-{launch}-{precision}{'-baseline' if source else ''}-", dir=work))
    cmd = [sys.executable, "-m", "electra_ds", "launch", "--nproc-per-node", str(nproc), "--cpus-per-task",
           str(threads), "--", "pretrain", "--shards", str(shards), "--output-dir", str(out),
           "--ds-config", str(REPO / "ds_configs" / f"zero{zero}.json"), "--model", json.dumps(shape),
           "--global-batch-size", str(global_batch), "--micro-batch-size", str(micro // nproc if micro else 0),
           "--learning-rate", "5e-4", "--warmup-steps", "10", "--max-steps", str(steps), "--precision", precision,
           "--checkpoint-every", str(10 * steps), "--log-every", str(log_every), "--eval-every", "0",
           "--plateau-steps", "0", "--results-dir", str(work), "--tracking-uri", f"file://{work}/mlruns", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MLFLOW_ALLOW_FILE_STORE": "true"}
    if source:
        env["PYTHONPATH"] = str(Path(source).resolve())
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:8])} ... failed:\n{res.stderr[-3000:]}")
    lines = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    train = [x for x in lines if x["split"] == "train"][1:] or [x for x in lines if x["split"] == "train"]
    summary = json.loads((out / "summary.json").read_text())
    return {"tokens_per_s": statistics.median(x["tokens_per_s"] for x in train),
            "model_tflops": statistics.median(x["model_tflops"] for x in train),
            "precision": summary["precision"], "flops_per_token": summary["flops_per_token"]}


class BusyCores:
    """``n`` processes spinning at the lowest priority (nice 19) while the block runs: the machine as it is when
    something else (a second job, an editor's indexer) wants a core, to see how each launch copes with it."""

    def __init__(self, n: int):
        self.n, self.procs = n, []

    def __enter__(self):
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=lambda: os.nice(19))
                      for _ in range(self.n)]
        return self

    def __exit__(self, *exc):
        for proc in self.procs:
            proc.kill()
            proc.wait()


def pipeline_rows(results: dict, peak: float, label: str = "pipeline") -> None:
    for (launch, precision, *rest), r in results.items():
        attn = f" attention {rest[0]}" if rest else ""
        attn += "".join(f" {x}" for x in rest[1:])
        print(f"{label} {launch} {precision:5s} ({r['precision']}){attn}: {r['tokens_per_s']:9.0f} tokens/s "
              f"{r['model_tflops']:6.3f} model TFLOP/s = {100 * r['model_tflops'] / peak:5.1f}% of the peak", flush=True)


# -- profile of the pipeline's step ---------------------------------------------------------------------------------
CATEGORIES = (  # (category, substrings of profiler op names), first match wins
    ("optimizer", ("optimizer", "adam", "lerp_", "addcdiv_", "addcmul_", "_foreach")),
    ("communication", ("gloo", "allreduce", "all_reduce", "c10d", "broadcast", "reduce_scatter", "all_gather")),
    ("log_softmax / cross-entropy (vocabulary)", ("log_softmax", "nll_loss", "cross_entropy")),
    ("attention", ("scaled_dot_product", "_softmax", "softmax_backward", "bmm", "baddbmm")),
    ("matmul", ("aten::mm", "aten::addmm", "aten::matmul", "aten::linear")),
    ("layer norm", ("layer_norm",)),
    ("gelu / dropout", ("gelu", "dropout", "bernoulli")),
    ("dtype casts and copies", ("copy_", "_to_copy", "aten::to", "clone", "contiguous")),
    ("sampling and masking", ("searchsorted", "cumsum", "sort", "uniform_", "amax", "argmax", "gather", "scatter",
                              "bincount", "index", "masked", "nonzero", "where")),
)


def profile_pipeline_step(shards: Path, shape: dict, precision: str, threads: int, steps: int, micro: int,
                          global_batch: int, work: Path) -> tuple[list, list]:
    """(category, share of the step's wall time) of the pipeline's step on one process with ``threads`` threads:
    self time of the profiler's ops by category; "python, data and other" is the wall time no op accounts for.
    Also the ops themselves, (name, share), most first."""
    from torch.profiler import ProfilerActivity, profile

    from electra_ds.cli import build_parser
    from electra_ds.pretraining import distributed
    from electra_ds.pretraining.config import PretrainConfig
    from electra_ds.pretraining.trainer import Trainer

    torch.set_num_threads(threads)
    args = build_parser().parse_args([
        "pretrain", "--shards", str(shards), "--output-dir", str(work / f"profile-{precision}"),
        "--ds-config", str(REPO / "ds_configs" / "zero2.json"), "--model", json.dumps(shape),
        "--global-batch-size", str(global_batch), "--micro-batch-size", str(micro), "--learning-rate", "5e-4",
        "--warmup-steps", "10", "--max-steps", "1000", "--precision", precision, "--device", "cpu"])
    os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(distributed._free_port())})
    trainer = Trainer(PretrainConfig.from_args(args), distributed.setup_env())
    torch.set_num_threads(threads)
    for _ in range(3):
        trainer.train_step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        wall = (time.perf_counter() - start) * 1e6
    totals = dict.fromkeys([c for c, _ in CATEGORIES] + ["other ops"], 0.0)
    for event in prof.key_averages():
        name = event.key.lower()
        category = next((c for c, keys in CATEGORIES if any(k.lower() in name for k in keys)), "other ops")
        totals[category] += event.self_cpu_time_total
    # several threads run ops at once: scale the op time to the wall time, the rest is Python, data and other
    op_time = sum(totals.values())
    busy = min(op_time, wall)
    shares = [(c, busy * t / op_time / wall) for c, t in totals.items()]
    shares.append(("python, data and other (no op)", 1 - busy / wall))
    top = sorted(((e.key, busy * e.self_cpu_time_total / op_time / wall) for e in prof.key_averages()),
                 key=lambda x: -x[1])
    torch.distributed.destroy_process_group()
    return sorted(shares, key=lambda x: -x[1]), top


# -- 3. the stock-HF reference loop ---------------------------------------------------------------------------------
class ReferenceElectra(torch.nn.Module):
    """The same objective written plainly with stock modules (no gathering, eager attention)."""

    def __init__(self, shape: ModelShape):
        super().__init__()
        from transformers import ElectraForMaskedLM, ElectraForPreTraining

        disc_cfg, gen_cfg = electra_configs(ModelShape(**{**shape.to_dict(), "attn_implementation": "eager"}))
        self.discriminator = ElectraForPreTraining(disc_cfg)
        self.generator = ElectraForMaskedLM(gen_cfg)
        self.generator.electra.embeddings = self.discriminator.electra.embeddings
        self.generator.generator_lm_head.weight = self.discriminator.electra.embeddings.word_embeddings.weight

    def forward(self, input_ids):
        attention_mask = (input_ids != PAD_ID).long()
        masked = mask_positions(input_ids, 0.15, torch.rand(input_ids.shape, device=input_ids.device))
        use_mask = masked & (torch.rand(input_ids.shape, device=input_ids.device) < 0.85)
        labels = input_ids.masked_fill(~masked, -100)
        gen = self.generator(input_ids.masked_fill(use_mask, MASK_ID), attention_mask=attention_mask, labels=labels)
        with torch.no_grad():
            probs = torch.softmax(gen.logits[masked].float(), -1)
            sampled = torch.multinomial(probs, 1).squeeze(-1)
            disc_input = input_ids.clone()
            disc_input[masked] = sampled
            replaced = (disc_input != input_ids).float()
        logits = self.discriminator(disc_input, attention_mask=attention_mask).logits
        real = attention_mask.bool()
        disc_loss = F.binary_cross_entropy_with_logits(logits[real], replaced[real])
        return {"loss": gen.loss + 50 * disc_loss}


def synthetic_batch(vocab: int, batch: int, seq_len: int, generator: torch.Generator) -> torch.Tensor:
    """``batch`` rows of random ids shaped as the shards' ([CLS] a [SEP] b [SEP])."""
    ids = torch.randint(5, vocab, (batch, seq_len), generator=generator)
    ids[:, 0], ids[:, seq_len // 2], ids[:, -1] = CLS_ID, SEP_ID, SEP_ID
    return ids


def reference_tokens_per_s(shape: ModelShape, batch: int, seq_len: int, steps: int, device) -> float:
    ids = synthetic_batch(shape.vocab_size, batch, seq_len, torch.Generator().manual_seed(0)).to(device)
    model = ReferenceElectra(shape).to(device)
    opt = torch.optim.AdamW(ElectraPretrainer.param_groups(model, 0.01), lr=1e-4, eps=1e-6)
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        model(ids)["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - start)
    return batch * seq_len / statistics.median(times)


# -- 4. ceilings: the same model without the pipeline around it ---------------------------------------------------
def ceiling_rates(shape: ModelShape, batch: int, seq_len: int, device, steps: int = 6) -> list[tuple]:
    """(label, tokens/s, model TFLOP/s, seconds before the first timed step) of plain-PyTorch forward + backward
    steps, bf16 weights (fp32 where bf16 has no matrix units), no DeepSpeed, optimizer or data loading, all threads:

    - the pipeline's whole pretraining model (:class:`ElectraPretrainer`: masking, generator, sampling,
      discriminator, losses), FLOPs counted as the pipeline counts them;
    - the discriminator alone (``ElectraForPreTraining`` and a replaced-token loss on random labels), FLOPs of the
      discriminator only, eager and compiled with ``torch.compile``.

    What the model's own ops reach on this machine: the pipeline's step can come near these, not above them."""
    from transformers import ElectraForPreTraining

    dtype = torch.bfloat16 if bf16_supported(device) else torch.float32
    g = torch.Generator().manual_seed(0)
    ids = synthetic_batch(shape.vocab_size, batch, seq_len, g).to(device)
    labels = torch.randint(0, 2, (batch, seq_len), generator=g).float().to(device)

    def rate(label, model, loss_of, flops):
        def step():
            loss_of(model).backward()
            for p in model.parameters():
                p.grad = None
            if device.type == "cuda":
                torch.cuda.synchronize()
        start = time.perf_counter()
        step(), step()
        warm = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(steps):
            step()
        tokens = batch * seq_len * steps / (time.perf_counter() - start)
        return label, tokens, tokens * flops / 1e12, warm

    full = ElectraPretrainer(shape, device_type=device.type).to(device, dtype)
    disc_cfg, _ = electra_configs(shape, device.type)
    disc = ElectraForPreTraining(disc_cfg).to(device, dtype)

    def rtd_loss(model):
        return F.binary_cross_entropy_with_logits(model(input_ids=ids).logits.float(), labels)

    disc_flops = flops_per_token(shape, seq_len, uniform_generator=True)
    return [rate("whole pretraining model, eager", full, lambda m: m(ids)["loss"], flops_per_token(shape, seq_len)),
            rate("discriminator alone, eager", disc, rtd_loss, disc_flops),
            rate("discriminator alone, torch.compile", torch.compile(disc), rtd_loss, disc_flops)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", nargs="+", choices=sorted(SHAPES), default=["tiny", "small"])
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--global-batch", type=int, default=64)
    p.add_argument("--micro-batch", type=int, default=0, help="per launch, across its processes (0 = global)")
    p.add_argument("--steps", type=int, default=30, help="pipeline steps per variant")
    p.add_argument("--log-every", type=int, default=5)
    p.add_argument("--launch", nargs="+", default=["2x1", "1x2"], help="processes x threads")
    p.add_argument("--precision", nargs="+", default=["bf16", "fp32"])
    p.add_argument("--dropout", type=float, default=0.0, help="the model's dropout (the presets' CPU recipes: 0)")
    p.add_argument("--attention", nargs="+", default=["auto"], choices=["auto", "sdpa", "eager"],
                   help="model.attn_implementation (auto: eager on CPU; sdpa on CPU = PyTorch's math kernel)")
    p.add_argument("--zero", nargs="+", default=["2"], choices=["0", "1", "2", "3"],
                   help="ZeRO stages to time (ds_configs/zero<stage>.json; the presets use 2)")
    p.add_argument("--busy", type=int, default=0,
                   help="time each variant again beside this many processes spinning at nice 19 (a shared machine)")
    p.add_argument("--reference-steps", type=int, default=3, help="0 skips the stock-HF reference loop")
    p.add_argument("--baseline-src", default=None,
                   help="a checkout of an earlier electra-ds (e.g. `git worktree add /tmp/base c23676e`): its pipeline "
                        "runs the --baseline-launch variants here too, and the ratio against it is printed")
    p.add_argument("--baseline-variant", nargs="+", default=["2x1:fp32", "2x1:bf16"], help="launch:precision")
    p.add_argument("--ceiling", action="store_true",
                   help="also time the model in plain PyTorch (no DeepSpeed), and its discriminator eager and compiled")
    p.add_argument("--profile", action="store_true", help="profile the pipeline's step by kind of work")
    p.add_argument("--profile-launch", default="1x2")
    p.add_argument("--profile-top", type=int, default=0, help="also print the N ops with the most self time")
    p.add_argument("--profile-worker", default=None, help=argparse.SUPPRESS)  # one profile in a fresh process
    args = p.parse_args()
    if args.profile_worker:
        return profile_worker(args)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    threads = os.cpu_count() if device.type == "cpu" else torch.get_num_threads()
    torch.set_num_threads(threads)
    work = Path(tempfile.mkdtemp(prefix="electra-ds-bench-"))
    shards = synthetic_shards(work / "shards", args.vocab, max(4 * args.global_batch, 1024), args.seq_len)
    print(f"device {torch.cuda.get_device_name() if device.type == 'cuda' else f'cpu, {threads} threads'}, torch "
          f"{torch.__version__}; vocab {args.vocab}, global batch {args.global_batch} x {args.seq_len}")
    for name in args.shape:
        shape_dict = {**SHAPES[name], "dropout": args.dropout}
        shape = ModelShape(vocab_size=args.vocab, max_position_embeddings=max(512, args.seq_len), **shape_dict)
        micro = args.micro_batch or args.global_batch
        print(f"\n== shape {name}: {shape_dict} (generator {generator_dims(shape)[0]} wide, "
              f"{generator_num_layers(shape)} layers); {flops_per_token(shape, args.seq_len) / 1e6:.1f} MFLOP/token")
        peak_bf16 = print_peak(shape, micro * args.seq_len // (2 if "2x1" in args.launch else 1), device)
        def run(launch, precision, attention, zero):
            return pipeline_rate(shards, {**shape_dict, "attn_implementation": attention}, launch, precision,
                                 args.steps, args.log_every, args.global_batch, micro, work, zero=zero)

        results, variants = {}, {}  # variants: the key each result is printed under -> run()'s arguments
        for launch in args.launch:
            for precision in args.precision:
                for attention in args.attention:
                    for zero in args.zero:
                        key = (launch, precision, attention) + ((f"zero{zero}",) if len(args.zero) > 1 else ())
                        variants[key] = (launch, precision, attention, zero)
                        results[key] = r = run(*variants[key])
                        pipeline_rows({key: r}, peak_bf16)
        best = max(results, key=lambda key: results[key]["tokens_per_s"])
        print(f"fastest launch, precision and attention: {' '.join(best)}")
        if args.busy:
            with BusyCores(args.busy):
                for key, variant in variants.items():
                    r = run(*variant)
                    pipeline_rows({(*key, f"{args.busy} busy core(s)"): r}, peak_bf16)
                    print(f"ratio {' '.join(key)} quiet / with {args.busy} busy core(s): "
                          f"{results[key]['tokens_per_s'] / r['tokens_per_s']:.2f}x", flush=True)
        if args.baseline_src:
            for variant in args.baseline_variant:
                launch, precision = variant.split(":")
                r = pipeline_rate(shards, shape_dict, launch, precision, args.steps, args.log_every,
                                  args.global_batch, micro, work, source=args.baseline_src)
                pipeline_rows({(launch, precision): r}, peak_bf16, label=f"baseline {Path(args.baseline_src).name}")
                print(f"ratio pipeline {' '.join(best)} / baseline {launch} {precision}: "
                      f"{results[best]['tokens_per_s'] / r['tokens_per_s']:.2f}x")
        for key, r in results.items():
            if key != best:
                print(f"ratio {' '.join(best)} / {' '.join(key)}: "
                      f"{results[best]['tokens_per_s'] / r['tokens_per_s']:.2f}x")
        if args.reference_steps:
            ref = reference_tokens_per_s(shape, micro, args.seq_len, args.reference_steps, device)
            print(f"reference (stock HF, eager, fp32, 1 process x {threads} threads): {ref:.0f} tokens/s")
            print(f"ratio pipeline {' '.join(best)} / reference tokens/s: "
                  f"{results[best]['tokens_per_s'] / ref:.2f}x")
        if args.ceiling:
            for label, tokens, tflops, warm in ceiling_rates(shape, micro, args.seq_len, device):
                print(f"ceiling, {label} (1 process x {threads} threads): {tokens:9.0f} tokens/s {tflops:6.3f} "
                      f"model TFLOP/s = {100 * tflops / peak_bf16:5.1f}% of the peak (first 2 steps {warm:.0f} s)",
                      flush=True)
        if args.profile:
            for precision in args.precision:  # one process each: DeepSpeed's groups outlive destroy_process_group
                subprocess.run([sys.executable, __file__, "--profile-worker", precision, "--shape", name,
                                "--vocab", str(args.vocab), "--global-batch", str(args.global_batch),
                                "--micro-batch", str(micro), "--profile-launch", args.profile_launch,
                                "--profile-top", str(args.profile_top), "--dropout", str(args.dropout),
                                "--seq-len", str(args.seq_len), "--attention", args.attention[0]], check=True)


def profile_worker(args) -> None:
    name, precision = args.shape[0], args.profile_worker
    _, threads = (int(x) for x in args.profile_launch.split("x"))
    work = Path(tempfile.mkdtemp(prefix="electra-ds-profile-"))
    shards = synthetic_shards(work / "shards", args.vocab, max(4 * args.global_batch, 1024), args.seq_len)
    shape = {**SHAPES[name], "dropout": args.dropout, "attn_implementation": args.attention[0]}
    shares, top = profile_pipeline_step(shards, shape, precision, threads, 5,
                                        args.micro_batch or args.global_batch, args.global_batch, work)
    print(f"profile of the pipeline's step, shape {name}, 1 process x {threads} threads, {precision}, attention "
          f"{args.attention[0]} "
          f"(share of wall time):")
    for category, share in shares:
        print(f"  {category:45s} {100 * share:5.1f}%")
    for op, share in top[:args.profile_top]:
        print(f"    op {op:50s} {100 * share:5.1f}%")


if __name__ == "__main__":
    main()
