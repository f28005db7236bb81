"""Pretraining: ELECTRA generator + discriminator trained through ``deepspeed.initialize``.

Start it with ``electra-ds launch --nproc-per-node N -- pretrain ...`` (torchrun locally, srun under
SLURM). The data position is a pure function of the optimizer step: step ``s`` reads the global
batch ``perm[s*G:(s+1)*G]`` of its epoch's permutation, each rank takes a disjoint slice of it, and
every random draw (masking, sampling, dropout) is seeded from (seed, step, rank, micro-step). A
restart from a checkpoint therefore continues exactly where the run stopped.

Outputs under ``--output-dir``: ``checkpoints/<tag>/`` (DeepSpeed plus ``electra_ds_manifest.json``: run
config, sizes and sha256 of every file; the last N intact ones kept; ``latest`` written only after the
manifest). A rerun resumes from the newest intact checkpoint, skipping damaged ones with a warning, and
refuses checkpoints of another configuration before loading anything (electra_ds.checkpoint). A rank
stops within about a second when its launcher dies (distributed.exit_with_launcher), without a checkpoint.
Other outputs: ``train_log.jsonl`` (one line of metrics per log interval and
validation pass; cut back to the checkpoint on resume) and ``summary.json`` (final metrics and the
checkpoint to export), written last and atomically.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np

from electra_ds.errors import UserError
from electra_ds.fileio import write_json

log = logging.getLogger(__name__)


def add_arguments(p) -> None:
    g = p.add_argument_group("data and outputs")
    g.add_argument("--shards", required=True, help="shards directory (index.json + .bin files)")
    g.add_argument("--output-dir", required=True, help="checkpoints/ and summary.json go here")
    g = p.add_argument_group("model")
    g.add_argument("--model", default="{}", help="JSON model shape: embedding_size, hidden_size, num_layers, "
                   "num_heads, intermediate_size, generator_fraction, dropout, attn_implementation")
    g.add_argument("--objective", default="electra", choices=["electra", "mlm", "adversarial"],
                   help="electra; mlm = BERT-style baseline on the same backbone; adversarial = experimental")
    g.add_argument("--adversarial-mle-weight", type=float, default=1.0,
                   help="adversarial objective: weight of the generator's MLM loss beside the policy gradient")
    g.add_argument("--mask-prob", type=float, default=0.15)
    g.add_argument("--disc-weight", type=float, default=50.0)
    g.add_argument("--temperature", type=float, default=1.0,
                   help="generator sampling temperature (official code's `temperature`; > 1 = easier replacements)")
    g.add_argument("--disallow-correct", action="store_true",
                   help="never sample the original token at a masked position (official code's ablation)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--ds-config", required=True, help="DeepSpeed JSON (ds_configs/)")
    g.add_argument("--global-batch-size", type=int, default=128)
    g.add_argument("--micro-batch-size", type=int, default=0, help="per process; 0 = global / world size")
    g.add_argument("--learning-rate", type=float, default=5e-4)
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument("--warmup-steps", type=int, default=10000)
    g.add_argument("--max-steps", type=int, default=1000000)
    g.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    g.add_argument("--compile", action="store_true", help="torch.compile the model (DeepSpeed engine.compile)")
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("checkpoints and logging")
    g.add_argument("--checkpoint-every", type=int, default=1000, help="steps between checkpoints")
    g.add_argument("--checkpoint-minutes", type=float, default=0, help="also checkpoint after this wall time (0 = off)")
    g.add_argument("--keep-checkpoints", type=int, default=3)
    g.add_argument("--log-every", type=int, default=50)
    g.add_argument("--eval-every", type=int, default=0, help="steps between validation passes (0 = only at the end)")
    g.add_argument("--eval-examples", type=int, default=256)
    g.add_argument("--plateau-steps", type=int, default=1000,
                   help="warn when rtd_gain stays below %s for this many steps after warmup (0 = never)" % "0.02")
    g.add_argument("--peak-tflops", type=float, default=0, help="per-device peak for MFU (0 = not reported)")


# --------------------------------------------------------------------------------------------------
# data position and randomness: pure functions of (seed, step, rank)

EVAL_STREAM = 2 ** 31  # a "step" no training run reaches: validation draws never repeat training draws


def step_seed(seed: int, step: int, rank: int, micro: int) -> int:
    return int(np.random.SeedSequence([seed, step, rank, micro]).generate_state(1, dtype=np.uint64)[0] >> 1)


def global_batch_indices(n_examples: int, global_batch: int, step: int, seed: int) -> np.ndarray:
    steps_per_epoch = n_examples // global_batch
    if steps_per_epoch == 0:
        raise UserError(f"the train split has {n_examples} examples, fewer than one global batch ({global_batch})",
                        field="pretrain.global_batch_size", fix="use a smaller global batch or a larger corpus")
    epoch, within = divmod(step, steps_per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n_examples)
    return perm[within * global_batch:(within + 1) * global_batch]


def global_token_counts(global_ids: np.ndarray, mask_prob: float) -> tuple[float, float]:
    """(masked positions, real tokens) in the whole global batch: known from the ids alone."""
    from electra_ds.model import masks_per_row

    _, n_mask = masks_per_row(global_ids, mask_prob)
    return float(n_mask.sum()), float((global_ids != 0).sum())


def rank_micro_batches(indices: np.ndarray, rank: int, world: int, micro: int) -> list[np.ndarray]:
    per_rank = len(indices) // world
    mine = indices[rank * per_rank:(rank + 1) * per_rank]
    return [mine[i:i + micro] for i in range(0, per_rank, micro)]


def lr_lambda(warmup: int, total: int):
    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))
    return f


def param_groups(model, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "LayerNorm" in name or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# --------------------------------------------------------------------------------------------------

def resolve_device(requested: str) -> str:
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("GPUs requested but none is available", field="pretrain.device",
                        fix="run on a GPU node, or set pretrain.device: cpu")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def run(args, tracker) -> None:
    from electra_ds import distributed
    from electra_ds.ds_config import load_ds_config, offloads_optimizer, zero_stage
    from electra_ds.shards import open_split

    distributed.exit_with_launcher()  # a rank never outlives the torchrun/srun that started it
    env = distributed.setup_env()
    rank, world = env["rank"], env["world_size"]
    device_type = resolve_device(args.device)
    os.environ.setdefault("DS_ACCELERATOR", device_type)

    # Everything a user can get wrong is checked before any process group or model exists.
    train = open_split(args.shards, "train", verify=True)
    valid = _open_optional(args.shards, "valid")
    shape_fields = json.loads(args.model)
    ds_cfg = load_ds_config(args.ds_config, global_batch=args.global_batch_size, micro_batch=args.micro_batch_size,
                            world_size=world, precision=args.precision, device_type=device_type)
    micro, accum = ds_cfg["train_micro_batch_size_per_gpu"], ds_cfg["gradient_accumulation_steps"]
    out = Path(args.output_dir)
    ckpt_dir = out / "checkpoints"

    import deepspeed
    import torch

    from electra_ds.model import ElectraPretrainer, ModelShape, flops_per_token
    from electra_ds.step_metrics import MetricSums, TokenPrior

    shape = ModelShape(vocab_size=train.vocab_size, **shape_fields)
    shape.max_position_embeddings = max(shape.max_position_embeddings, train.max_seq_len)
    _check_token_ids(train, shape.vocab_size)
    run_config = {"model": shape.to_dict(), "objective": args.objective, "mask_prob": args.mask_prob,
                  "disc_weight": args.disc_weight, "temperature": args.temperature,
                  "disallow_correct": args.disallow_correct,
                  "global_batch_size": args.global_batch_size, "max_seq_len": train.max_seq_len, "seed": args.seed}

    # Which checkpoint to resume from is settled before any model exists: another run's checkpoints, or only
    # damaged ones, stop here with a UserError (on every rank: rank 0 decides and broadcasts).
    deepspeed.init_distributed()
    if device_type == "cuda":
        torch.cuda.set_device(env["local_rank"])  # object collectives on NCCL use the current device
    resume_tag, _status = _choose_resume(ckpt_dir, run_config, rank, world)

    torch.manual_seed(args.seed)
    model = ElectraPretrainer(shape, mask_prob=args.mask_prob, disc_weight=args.disc_weight, objective=args.objective,
                              adversarial_mle_weight=args.adversarial_mle_weight, temperature=args.temperature,
                              disallow_correct=args.disallow_correct)
    groups = param_groups(model, args.weight_decay)
    offload = offloads_optimizer(ds_cfg)
    if offload:
        from deepspeed.ops.adam import DeepSpeedCPUAdam
        optimizer = DeepSpeedCPUAdam(groups, lr=args.learning_rate, betas=(0.9, 0.999), eps=1e-6, adamw_mode=True)
    else:
        optimizer = torch.optim.AdamW(groups, lr=args.learning_rate, betas=(0.9, 0.999), eps=1e-6,
                                      fused=device_type == "cuda")
    optimizer_name = type(optimizer).__name__
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(args.warmup_steps, args.max_steps))
    if device_type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, _local_world())))
    engine, optimizer, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer,
                                                           lr_scheduler=scheduler, config=ds_cfg,
                                                           dist_init_required=True)
    device = engine.device
    if args.compile:
        engine.compile()

    start_step, resumed = 0, {}
    if resume_tag is not None:
        from electra_ds.checkpoint import config_differences, weights_only_loading

        with weights_only_loading():
            _, client = engine.load_checkpoint(str(ckpt_dir), tag=resume_tag, load_module_strict=True)
        if client is None:
            raise UserError(f"checkpoint {resume_tag} could not be loaded", path=ckpt_dir,
                            fix=f"delete {ckpt_dir / resume_tag} to resume from the checkpoint before it")
        diffs = config_differences(client.get("run_config"), run_config)
        if diffs:  # checked before loading already (manifest / legacy client state); kept as a last guard
            raise UserError(f"checkpoint {resume_tag} was written with a different config ({'; '.join(diffs[:8])})",
                            path=ckpt_dir, fix=f"use a new results directory or delete {ckpt_dir}")
        start_step, resumed = int(client["step"]), client
        log.info("resumed from %s at step %d", ckpt_dir / resume_tag, start_step)
    final_tag = resume_tag
    train_log = TrainLog(out / "train_log.jsonl", start_step) if rank == 0 else None

    if rank == 0:
        tracker.log_params({"model": shape.to_dict(), "global_batch_size": args.global_batch_size,
                            "micro_batch_size": micro, "grad_accum": accum, "world_size": world,
                            "zero_stage": zero_stage(ds_cfg), "precision": args.precision,
                            "optimizer": optimizer_name, "learning_rate": args.learning_rate,
                            "warmup_steps": args.warmup_steps, "compile": args.compile,
                            "max_steps": args.max_steps, "mask_prob": args.mask_prob, "objective": args.objective,
                            "disc_weight": args.disc_weight, "seed": args.seed, "device": device_type,
                            "parameters": sum(p.numel() for p in model.parameters()),
                            "start_step": start_step})
        log.info("world size %d, micro-batch %d x accumulation %d = global %d; ZeRO stage %d; %s on %s; %s%s",
                 world, micro, accum, args.global_batch_size, zero_stage(ds_cfg), args.precision, device_type,
                 optimizer_name, " with its state offloaded to the CPU" if offload else "")

    stop_signal = StopSignal()  # SLURM's time limit / preemption: checkpoint at the end of this step, exit
    fpt = flops_per_token(shape, train.max_seq_len, args.objective, args.mask_prob)
    step_flops = fpt * args.global_batch_size * train.max_seq_len
    plateau = PlateauWatch(args.warmup_steps, args.plateau_steps, args.objective)
    sums = MetricSums()
    prior = TokenPrior(shape.vocab_size, device)  # context-free baseline of the discriminator (step_metrics)
    if "token_prior" in resumed:
        prior.load(resumed["token_prior"])
    one = torch.ones((), dtype=torch.float64, device=device)
    t_last, last_ckpt_time, t_start = time.time(), time.time(), time.time()
    steps_since = 0
    last = {}
    step = start_step
    while step < args.max_steps:
        engine.train()
        indices = global_batch_indices(len(train), args.global_batch_size, step, args.seed)
        n_masked, n_real = global_token_counts(train.batch(indices), args.mask_prob)
        parts = world * accum  # each micro-batch's loss sum is divided by the global count / parts
        for m, rows in enumerate(rank_micro_batches(indices, rank, world, micro)):
            first_row = rank * (len(indices) // world) + m * micro  # position in the global batch
            torch.manual_seed(step_seed(args.seed, step, rank, m))  # dropout
            seeds = [step_seed(args.seed, step, 0, first_row + i) for i in range(len(rows))]
            batch = torch.from_numpy(train.batch(rows)).to(device)
            outputs = engine(batch, seeds=seeds, gen_denominator=n_masked / parts, disc_denominator=n_real / parts)
            engine.backward(outputs["loss"])
            engine.step()
            sums.add({**outputs["stats"], "loss_sum": outputs["loss"], "micro_batches": one})
        step += 1
        steps_since += 1

        if step % args.log_every == 0 or step == args.max_steps:
            sums.all_reduce()
            prior.add(sums.sums)
            elapsed = time.time() - t_last
            grad_norm = engine.get_global_grad_norm()
            last = sums.summary()
            tokens_per_s = float(sums.sums["tokens"]) / max(elapsed, 1e-9)
            last.update({"lr": scheduler.get_last_lr()[0], "tokens_per_s": tokens_per_s,
                         "samples_per_s": steps_since * args.global_batch_size / max(elapsed, 1e-9),
                         "model_tflops": tokens_per_s * fpt / 1e12, "flops": step * step_flops})
            if grad_norm is not None and math.isfinite(float(grad_norm)):
                last["grad_norm"] = float(grad_norm)
            if args.peak_tflops > 0:
                last["mfu"] = last["model_tflops"] / (args.peak_tflops * world)
            if rank == 0:
                tracker.log_metrics({f"train/{k}": v for k, v in last.items()}, step=step)
                train_log.write("train", step, last)
                eta = (time.time() - t_start) / max(step - start_step, 1) * (args.max_steps - step)
                log.info("step %d/%d [%3.0f%%] %s lr %.2e %.0f tok/s eta %s", step, args.max_steps,
                         100 * step / args.max_steps, _fmt_metrics(last), last["lr"], tokens_per_s,
                         _fmt_seconds(eta))
                plateau.check(step, last)
            sums.reset()
            steps_since, t_last = 0, time.time()

        if valid is not None and args.eval_every and step % args.eval_every == 0 and step < args.max_steps:
            _evaluate(engine, valid, args, rank, world, micro, step, tracker, train_log, prior)

        minutes = (time.time() - last_ckpt_time) / 60
        due_time = rank == 0 and 0 < args.checkpoint_minutes < minutes
        due_time, stopping = _agree([due_time, stop_signal.received], device)
        if step % args.checkpoint_every == 0 or step == args.max_steps or due_time or stopping:
            final_tag = _save(engine, ckpt_dir, step, run_config, args.keep_checkpoints, rank, world,
                              prior.state())
            last_ckpt_time = time.time()
        if stopping and step < args.max_steps:
            raise SystemExit(f"pretrain: stopped by signal {stop_signal.received} at step {step}; checkpoint saved "
                             f"in {ckpt_dir} -- run the same command (or rule) again to resume")

    final_valid = {}
    if valid is not None:
        final_valid = _evaluate(engine, valid, args, rank, world, micro, step, tracker, train_log, prior)
    if rank == 0:
        write_json(out / "summary.json", {
            "checkpoint_dir": str(ckpt_dir.resolve()), "tag": final_tag, "steps": step, "world_size": world,
            "zero_stage": zero_stage(ds_cfg), "precision": args.precision, "model": shape.to_dict(),
            "objective": args.objective, "optimizer": optimizer_name, "offload_optimizer": offload,
            "temperature": args.temperature, "mask_prob": args.mask_prob,
            "global_batch_size": args.global_batch_size, "flops_per_token": fpt, "flops": step * step_flops,
            "final_train": last, "final_valid": final_valid, "tokens_per_example": train.max_seq_len,
            "seconds": time.time() - t_start})
    torch.distributed.barrier()


class TrainLog:
    """``train_log.jsonl``: metrics per log interval; on resume, lines past the checkpoint are dropped so the
    file always describes one uninterrupted run."""

    def __init__(self, path: Path, start_step: int):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if path.exists():
            kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= start_step]
        path.write_text("".join(line + "\n" for line in kept))

    def write(self, split: str, step: int, metrics: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"split": split, "step": step, **metrics}) + "\n")


def _open_optional(shard_dir, split):
    from electra_ds.shards import open_split

    try:
        ds = open_split(shard_dir, split, verify=True)
    except (UserError, KeyError):
        return None
    return ds if len(ds) > 0 else None


def _check_token_ids(train, vocab_size: int) -> None:
    sample = train.batch(np.arange(min(len(train), 4096)))
    if sample.size and int(sample.max()) >= vocab_size:
        raise UserError(f"token id {int(sample.max())} is beyond the vocabulary size {vocab_size}",
                        path=Path(train.path if hasattr(train, "path") else "shards"),
                        fix="rebuild the shards with the tokenizer that trained this vocabulary")


def _local_world() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("SLURM_NTASKS_PER_NODE", "1")).split("(")[0] or 1)


class StopSignal:
    """Remembers SIGTERM/SIGUSR1 (sent by SLURM before a time limit or on preemption) instead of dying."""

    def __init__(self):
        import signal

        self.received = 0
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.received = signum


def _agree(flags: list, device) -> list[bool]:
    """Every rank acts on a flag raised on any rank (one small all-reduce per step)."""
    import torch

    t = torch.tensor([float(bool(f)) for f in flags], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def _broadcast(obj, world: int):
    """rank 0's ``obj`` on every rank."""
    if world == 1:
        return obj
    import torch

    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _all_gather(obj, world: int) -> list:
    if world == 1:
        return [obj]
    import torch

    out = [None] * world
    torch.distributed.all_gather_object(out, obj)
    return out


def _choose_resume(ckpt_dir: Path, run_config: dict, rank: int, world: int):
    from electra_ds.checkpoint import choose_checkpoint

    return choose_checkpoint(ckpt_dir, run_config, rank, world, broadcast=lambda o: _broadcast(o, world),
                             all_gather=lambda o: _all_gather(o, world), log=log)


def _save(engine, ckpt_dir: Path, step: int, run_config: dict, keep: int, rank: int, world: int,
          token_prior) -> str:
    """A DeepSpeed checkpoint, then its manifest, then ``latest`` (see electra_ds.checkpoint); returns the tag."""
    import torch

    from electra_ds import checkpoint as ck

    tag = f"step{step:08d}"
    tag_dir = ckpt_dir / tag
    previous_latest = None
    if rank == 0:
        previous_latest, _ = ck.read_latest(ckpt_dir)
        if tag_dir.exists():
            # Left by an interrupted save or a damaged checkpoint this run fell back past; never the one it
            # resumed from (that one is at an earlier step). Removed before any rank writes (DeepSpeed's
            # save_checkpoint starts with a barrier), so no stale file or manifest survives into the new one.
            shutil.rmtree(tag_dir)
    from deepspeed.checkpoint.constants import UNIVERSAL_CHECKPOINT_INFO, UNIVERSAL_CHECKPOINT_VERSION_KEY, \
        UNIVERSAL_CHECKPOINT_VERSION_VALUE

    # universal_checkpoint_info lets DeepSpeed's ds_to_universal convert this checkpoint for another world size.
    client_state = {"step": step, "run_config": run_config, "token_prior": token_prior,
                    UNIVERSAL_CHECKPOINT_INFO: {UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE}}
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state, save_latest=False)
    torch.distributed.barrier()  # every rank's files are complete
    t0 = time.time()
    names = _broadcast(ck.checkpoint_files(tag_dir) if rank == 0 else None, world)
    parts = _all_gather(ck.hash_share(tag_dir, names, rank, world), world)  # each rank hashes its share
    if rank == 0:
        digests = {k: v for part in parts for k, v in part.items()}
        unreadable = [n for n, d in digests.items() if d.startswith("error")]
        if unreadable:
            raise RuntimeError(f"checkpoint {tag_dir}: could not read back {unreadable[:3]} after saving")
        manifest = ck.write_manifest(tag_dir, tag=tag, step=step, run_config=run_config, world_size=world,
                                     digests=digests)
        ck.write_latest(ckpt_dir, tag)  # only now: `latest` never names a checkpoint without a manifest
        removed = ck.prune(ckpt_dir, tag, keep, previous_latest)
        size = sum(m["size"] for m in manifest["files"].values())
        log.info("checkpoint %s saved (%d files, %.1f MB; manifest with sha256 in %.2f s)%s", tag, len(names),
                 size / 1e6, time.time() - t0, f"; removed {', '.join(removed)}" if removed else "")
    return tag


def _evaluate(engine, valid, args, rank: int, world: int, micro: int, step: int, tracker, train_log, prior) -> dict:
    """Validation on the first ``eval_examples`` examples with fixed draws; the same reduction as training."""
    import torch

    from electra_ds.step_metrics import MetricSums

    engine.eval()
    per_rank = min(len(valid), args.eval_examples) // world  # equal work per rank (ZeRO-3 collectives)
    rows = np.arange(rank * per_rank, (rank + 1) * per_rank)
    sums = MetricSums()
    one = torch.ones((), dtype=torch.float64, device=engine.device)
    with torch.no_grad():
        for i in range(0, len(rows), micro):
            part = rows[i:i + micro]
            seeds = [step_seed(args.seed, EVAL_STREAM, 0, int(r)) for r in part]  # the same draws at every eval
            out = engine(torch.from_numpy(valid.batch(part)).to(engine.device), seeds=seeds)
            sums.add({**out["stats"], "loss_sum": out["loss"], "micro_batches": one})
    sums.all_reduce()
    sums.sums.update(prior.auc_stats(sums.sums))
    metrics = sums.summary()
    if rank == 0:
        tracker.log_metrics({f"valid/{key}": v for key, v in metrics.items()}, step=step)
        train_log.write("valid", step, metrics)
        log.info("valid at step %d: %s", step, _fmt_metrics(metrics))
    engine.train()
    return metrics


HEADLINE = ("loss", "gen_loss", "gen_acc", "disc_loss", "base_entropy", "rtd_gain", "disc_auc", "token_prior_auc",
            "context_auc", "disc_precision", "disc_recall")


def _fmt_metrics(m: dict) -> str:
    return " ".join(f"{k} {m[k]:.4f}" if k.endswith("loss") or k == "base_entropy" else f"{k} {m[k]:.3f}"
                    for k in HEADLINE if k in m)


PLATEAU_GAIN = 0.02


class PlateauWatch:
    """Warns once when, after warmup, ``rtd_gain`` stays below PLATEAU_GAIN for ``patience`` steps: the
    discriminator is only predicting the base rate of replaced tokens, i.e. it is not learning."""

    def __init__(self, warmup: int, patience: int, objective: str):
        self.warmup, self.patience = warmup, patience
        self.enabled = patience > 0 and objective != "mlm"
        self.low_since = None
        self.warned = False

    def check(self, step: int, metrics: dict) -> bool:
        """True when the warning is issued (at most once per run)."""
        if not self.enabled or self.warned or step <= self.warmup or "rtd_gain" not in metrics:
            return False
        if metrics["rtd_gain"] >= PLATEAU_GAIN:
            self.low_since = None
            return False
        self.low_since = step if self.low_since is None else self.low_since
        if step - self.low_since < self.patience:
            return False
        self.warned = True
        log.warning(
            "rtd_gain has stayed below %.2f (now %.4f, disc_auc %.3f) for %d steps after warmup: the discriminator "
            "only predicts the base rate of replaced tokens (%.1f%%) and is not learning. At small scale the "
            "generator's temperature-1 samples are too plausible to tell apart early on. Try more steps and data, "
            "a smaller generator (model.generator_fraction) or pretrain.temperature 1.5-2; a hotter generator makes "
            "replacements easier to spot from token rarity alone, so judge it by valid context_auc, not rtd_gain. "
            "See README, 'What a healthy run looks like'.", PLATEAU_GAIN, metrics["rtd_gain"],
            metrics.get("disc_auc", float("nan")), step - self.low_since,
            100 * metrics.get("replaced_frac", 0.0))
        return True


def _fmt_seconds(s: float) -> str:
    s = int(max(s, 0))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
