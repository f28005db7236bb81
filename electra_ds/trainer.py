"""The pretraining engine: data position, one training step, validation and checkpoints (used by pretrain.py).

The data position is a pure function of the optimizer step: step ``s`` reads the global batch
``perm[s*G:(s+1)*G]`` of its epoch's permutation, each rank takes a disjoint slice of it, and every random
draw (masking, sampling, dropout) is seeded from (seed, step, rank, micro-step) or, for the row-level draws,
from (seed, step, position in the global batch). So a restart from a checkpoint continues exactly where the
run stopped, and any world size gives the same global batch.

:class:`Trainer` builds the model and the DeepSpeed engine and resumes from the newest intact checkpoint
(:mod:`electra_ds.checkpoint`); :meth:`Trainer.train_step`, :meth:`Trainer.validate` and :meth:`Trainer.save`
are the three things the loop in :func:`electra_ds.pretrain.run` does. Training and validation share one
reduction of named statistics (:class:`electra_ds.step_metrics.MetricSums`).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np

from electra_ds.errors import UserError

log = logging.getLogger("electra_ds.pretrain")

EVAL_STREAM = 2 ** 31  # a "step" no training run reaches: validation draws never repeat training draws


# -- data position and randomness: pure functions of (seed, step, rank) ----------------------------------------
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


def global_token_counts(global_ids: np.ndarray, mask_prob: float, masking: str = "token", mask_count: str = "exact",
                        seeds=None, word_starts=None, device="cpu") -> tuple[float, float]:
    """(generator predictions, real tokens) in the whole global batch, the same on every rank: from the ids alone,
    or with whole-word masking (whose count depends on the draws) by replaying every row's masking draws from its
    per-row seed (``seeds``, in global-batch order) on the training ``device``."""
    from electra_ds.masking import prediction_count

    n_pred = prediction_count(global_ids, mask_prob, masking, mask_count, seeds, word_starts, device)
    return float(n_pred), float((global_ids != 0).sum())


def load_word_starts(args, shard_dir, vocab_size: int):
    """Whole-word masking's word-start table from ``--tokenizer-dir`` (checked against the shards' tokenizer),
    None for token masking; UserError for what a user can get wrong."""
    from electra_ds.masking import check_masking

    try:
        check_masking(args.masking, args.mask_count)
    except ValueError as exc:
        raise UserError(str(exc), field="pretrain.mask_count") from None
    if args.masking != "whole_word":
        return None
    if not args.tokenizer_dir:
        raise UserError("pretrain.masking whole_word needs the vocabulary to find word starts",
                        field="pretrain.masking", fix="pass --tokenizer-dir (the vocab stage's directory)")
    from electra_ds.fileio import read_json, sha256_file
    from electra_ds.masking import word_start_table

    from electra_ds.shard_format import tokenizer_file

    spm_model = tokenizer_file(args.tokenizer_dir)  # spm.model, or WordPiece's tokenizer.json
    expected = read_json(Path(shard_dir) / "index.json").get("tokenizer_sha256")
    if expected and spm_model.is_file() and sha256_file(spm_model) != expected:
        raise UserError("this is not the vocabulary the shards were made with", path=spm_model,
                        fix="pass the vocab directory the shards stage used as --tokenizer-dir")
    table = word_start_table(args.tokenizer_dir)
    if len(table) != vocab_size:
        raise UserError(f"the vocabulary has {len(table)} pieces, the shards {vocab_size}", path=spm_model)
    return table


def rank_micro_batches(indices: np.ndarray, rank: int, world: int, micro: int) -> list[np.ndarray]:
    per_rank = len(indices) // world
    mine = indices[rank * per_rank:(rank + 1) * per_rank]
    return [mine[i:i + micro] for i in range(0, per_rank, micro)]


# -- collectives on small Python objects ------------------------------------------------------------------------
def broadcast(obj, world: int):
    """rank 0's ``obj`` on every rank."""
    if world == 1:
        return obj
    import torch

    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def all_gather(obj, world: int) -> list:
    if world == 1:
        return [obj]
    import torch

    out = [None] * world
    torch.distributed.all_gather_object(out, obj)
    return out


def agree(flags: list, device) -> list[bool]:
    """Every rank acts on a flag raised on any rank (one small all-reduce per step)."""
    import torch

    t = torch.tensor([float(bool(f)) for f in flags], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def resolve_device(requested: str) -> str:
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("GPUs requested but none is available", field="pretrain.device",
                        fix="run on a GPU node, or set pretrain.device: cpu")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def _local_world() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("SLURM_NTASKS_PER_NODE", "1")).split("(")[0] or 1)


class Trainer:
    """The model, its DeepSpeed engine, the data and where training stands (``step``)."""

    def __init__(self, args, env: dict):
        from electra_ds.ds_config import load_ds_config, offloads_optimizer, zero_stage
        from electra_ds.shard_format import open_split

        self.args, self.rank, self.world = args, env["rank"], env["world_size"]
        device_type = resolve_device(args.device)
        os.environ.setdefault("DS_ACCELERATOR", device_type)

        # Everything a user can get wrong is checked before any process group or model exists.
        self.train = open_split(args.shards, "train", verify=True)
        self.valid = open_optional_split(args.shards, "valid")
        self.word_starts = load_word_starts(args, args.shards, self.train.vocab_size)  # whole_word masking, else None
        ds_cfg = load_ds_config(args.ds_config, global_batch=args.global_batch_size,
                                micro_batch=args.micro_batch_size, world_size=self.world, precision=args.precision,
                                device_type=device_type)
        self.micro, self.accum = ds_cfg["train_micro_batch_size_per_gpu"], ds_cfg["gradient_accumulation_steps"]
        self.precision = "bf16" if ds_cfg["bf16"]["enabled"] else "fp16" if ds_cfg["fp16"]["enabled"] else "fp32"
        self.zero_stage, self.offload = zero_stage(ds_cfg), offloads_optimizer(ds_cfg)
        self.out = Path(args.output_dir)
        self.ckpt_dir = self.out / "checkpoints"

        import deepspeed
        import torch

        from electra_ds.model import ElectraPretrainer, ModelShape
        from electra_ds.shape import check_uniform_generator, flops_per_token
        from electra_ds.step_metrics import MetricSums, TokenPrior

        try:
            self.shape = ModelShape(vocab_size=self.train.vocab_size, **args.model)
        except TypeError as exc:
            raise UserError(f"not a model shape: {exc}", field="pretrain.model") from None
        self.shape.max_position_embeddings = max(self.shape.max_position_embeddings, self.train.max_seq_len)
        _check_token_ids(self.train, self.shape.vocab_size)
        try:
            check_uniform_generator(args.uniform_generator, args.objective, args.embedding_sharing)
        except ValueError as exc:
            raise UserError(str(exc), field="pretrain.uniform_generator") from None
        self.run_config = {"model": self.shape.to_dict(), "objective": args.objective, "mask_prob": args.mask_prob,
                           "disc_weight": args.disc_weight, "temperature": args.temperature,
                           "disallow_correct": args.disallow_correct, "masking": args.masking,
                           "mask_count": args.mask_count, "uniform_generator": args.uniform_generator,
                           "embedding_sharing": args.embedding_sharing, "optimizer": args.optimizer,
                           "schedule": args.schedule, "global_batch_size": args.global_batch_size,
                           "max_seq_len": self.train.max_seq_len, "seed": args.seed}

        # Which checkpoint to resume from is settled before any model exists: another run's checkpoints, or only
        # damaged ones, stop here with a UserError (on every rank: rank 0 decides and broadcasts).
        deepspeed.init_distributed()
        if device_type == "cuda":
            torch.cuda.set_device(env["local_rank"])  # object collectives on NCCL use the current device
        from electra_ds.checkpoint import choose_checkpoint

        resume_tag, _ = choose_checkpoint(self.ckpt_dir, self.run_config, self.rank, self.world,
                                          broadcast=lambda o: broadcast(o, self.world),
                                          all_gather=lambda o: all_gather(o, self.world), log=log)

        torch.manual_seed(args.seed)
        model = ElectraPretrainer(self.shape, mask_prob=args.mask_prob, disc_weight=args.disc_weight,
                                  objective=args.objective, adversarial_mle_weight=args.adversarial_mle_weight,
                                  temperature=args.temperature, disallow_correct=args.disallow_correct,
                                  masking=args.masking, mask_count=args.mask_count,
                                  uniform_generator=args.uniform_generator, embedding_sharing=args.embedding_sharing,
                                  device_type=device_type)
        if self.word_starts is not None:
            model.use_word_starts(self.word_starts)
        self.parameters = sum(p.numel() for p in model.parameters())
        from electra_ds.optim import build_optimizer, lr_lambda

        optimizer = build_optimizer(args.optimizer, model.param_groups(args.weight_decay), args.learning_rate,
                                    offload=self.offload, fused=device_type == "cuda")
        self.optimizer_name = type(optimizer).__name__
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(args.warmup_steps, args.max_steps,
                                                                            args.schedule))
        if device_type == "cpu":
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, _local_world())))
        self.engine, _, _, self.scheduler = deepspeed.initialize(model=model, optimizer=optimizer,
                                                                 lr_scheduler=scheduler, config=ds_cfg,
                                                                 dist_init_required=True)
        self.device, self.device_type = self.engine.device, device_type
        if args.compile:
            self.engine.compile()

        self.fpt = flops_per_token(self.shape, self.train.max_seq_len, args.objective, args.mask_prob,
                                   args.uniform_generator)
        self.step_flops = self.fpt * args.global_batch_size * self.train.max_seq_len
        self.sums = MetricSums()
        self.prior = TokenPrior(self.shape.vocab_size, self.device)  # context-free baseline of the discriminator
        self._one = torch.ones((), dtype=torch.float64, device=self.device)
        self.step = self.start_step = 0
        self.tag = self.resume_tag = resume_tag
        if resume_tag is not None:
            self._resume(resume_tag)

    def _resume(self, tag: str) -> None:
        from electra_ds.checkpoint import config_differences, weights_only_loading

        with weights_only_loading():
            _, client = self.engine.load_checkpoint(str(self.ckpt_dir), tag=tag, load_module_strict=True)
        if client is None:
            raise UserError(f"checkpoint {tag} could not be loaded", path=self.ckpt_dir,
                            fix=f"delete {self.ckpt_dir / tag} to resume from the checkpoint before it")
        diffs = config_differences(client.get("run_config"), self.run_config)
        if diffs:  # checked before loading already (manifest / legacy client state); kept as a last guard
            raise UserError(f"checkpoint {tag} was written with a different config ({'; '.join(diffs[:8])})",
                            path=self.ckpt_dir, fix=f"use a new results directory or delete {self.ckpt_dir}")
        self.step = self.start_step = int(client["step"])
        if "token_prior" in client:
            self.prior.load(client["token_prior"])
        log.info("resumed from %s at step %d", self.ckpt_dir / tag, self.step)

    # -- the loop's three actions -----------------------------------------------------------------------------
    def train_step(self) -> None:
        """One optimizer step over the global batch of ``step``; its statistics are added to ``sums``."""
        import torch

        args, engine = self.args, self.engine
        engine.train()
        indices = global_batch_indices(len(self.train), args.global_batch_size, self.step, args.seed)
        row_seeds = [step_seed(args.seed, self.step, 0, i) for i in range(len(indices))]  # per global-batch position
        n_masked, n_real = global_token_counts(self.train.batch(indices), args.mask_prob, args.masking, args.mask_count,
                                               row_seeds, self.word_starts, self.device)
        parts = self.world * self.accum  # each micro-batch's loss sum is divided by the global count / parts
        for m, rows in enumerate(rank_micro_batches(indices, self.rank, self.world, self.micro)):
            first_row = self.rank * (len(indices) // self.world) + m * self.micro  # position in the global batch
            torch.manual_seed(step_seed(args.seed, self.step, self.rank, m))  # dropout
            seeds = row_seeds[first_row:first_row + len(rows)]
            batch = torch.from_numpy(self.train.batch(rows)).to(self.device)
            outputs = engine(batch, seeds=seeds, gen_denominator=n_masked / parts, disc_denominator=n_real / parts)
            engine.backward(outputs["loss"])
            engine.step()
            self.sums.add({**outputs["stats"], "loss_sum": outputs["loss"], "micro_batches": self._one})
        self.step += 1

    def collect(self) -> tuple[dict, float]:
        """(metrics, real tokens) of the training steps since the last call, over every rank (one all-reduce)."""
        self.sums.all_reduce()
        self.prior.add(self.sums.sums)
        metrics, tokens = self.sums.summary(), float(self.sums.sums["tokens"])
        metrics["lr"] = self.scheduler.get_last_lr()[0]
        grad_norm = self.engine.get_global_grad_norm()
        if grad_norm is not None and math.isfinite(float(grad_norm)):
            metrics["grad_norm"] = float(grad_norm)
        self.sums.reset()
        return metrics, tokens

    def validate(self) -> dict:
        """Validation on the first ``eval_examples`` examples with fixed draws; the same reduction as training."""
        import torch

        from electra_ds.step_metrics import MetricSums

        args, engine = self.args, self.engine
        engine.eval()
        per_rank = min(len(self.valid), args.eval_examples) // self.world  # equal work per rank (ZeRO-3 collectives)
        rows = np.arange(self.rank * per_rank, (self.rank + 1) * per_rank)
        sums = MetricSums()
        with torch.no_grad():
            for i in range(0, len(rows), self.micro):
                part = rows[i:i + self.micro]
                seeds = [step_seed(args.seed, EVAL_STREAM, 0, int(r)) for r in part]  # the same draws at every eval
                out = engine(torch.from_numpy(self.valid.batch(part)).to(self.device), seeds=seeds)
                sums.add({**out["stats"], "loss_sum": out["loss"], "micro_batches": self._one})
        sums.all_reduce()
        sums.sums.update(self.prior.auc_stats(sums.sums))
        engine.train()
        return sums.summary()

    def save(self, train_log: Path | None = None) -> str:
        """A DeepSpeed checkpoint (with a copy of ``train_log`` up to this step), then its manifest, then
        ``latest`` (see electra_ds.checkpoint); returns the tag."""
        import torch

        from electra_ds import checkpoint as ck

        rank, world, ckpt_dir = self.rank, self.world, self.ckpt_dir
        tag = f"step{self.step:08d}"
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
        client_state = {"step": self.step, "run_config": self.run_config, "token_prior": self.prior.state(),
                        UNIVERSAL_CHECKPOINT_INFO: {UNIVERSAL_CHECKPOINT_VERSION_KEY:
                                                    UNIVERSAL_CHECKPOINT_VERSION_VALUE}}
        self.engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state, save_latest=False)
        if rank == 0 and train_log is not None and train_log.exists():
            shutil.copyfile(train_log, tag_dir / TRAIN_LOG)  # restored on resume if the log itself is lost
        torch.distributed.barrier()  # every rank's files are complete
        t0 = time.time()
        names = broadcast(ck.checkpoint_files(tag_dir) if rank == 0 else None, world)
        parts = all_gather(ck.hash_share(tag_dir, names, rank, world), world)  # each rank hashes its share
        if rank == 0:
            digests = {k: v for part in parts for k, v in part.items()}
            unreadable = [n for n, d in digests.items() if d.startswith("error")]
            if unreadable:
                raise RuntimeError(f"checkpoint {tag_dir}: could not read back {unreadable[:3]} after saving")
            manifest = ck.write_manifest(tag_dir, tag=tag, step=self.step, run_config=self.run_config,
                                         world_size=world, digests=digests)
            ck.write_latest(ckpt_dir, tag)  # only now: `latest` never names a checkpoint without a manifest
            removed = ck.prune(ckpt_dir, tag, self.args.keep_checkpoints, previous_latest)
            size = sum(m["size"] for m in manifest["files"].values())
            log.info("checkpoint %s saved (%d files, %.1f MB; manifest with sha256 in %.2f s)%s", tag, len(names),
                     size / 1e6, time.time() - t0, f"; removed {', '.join(removed)}" if removed else "")
        self.tag = tag
        return tag


TRAIN_LOG = "train_log.jsonl"


def open_optional_split(shard_dir, split: str):
    """The split, or None when the shards have none (or an empty one). A split that is listed but damaged
    (checksum, size, missing file) is an error, not a silently disabled validation."""
    from electra_ds.fileio import read_json
    from electra_ds.shard_format import open_split

    index = Path(shard_dir) / "index.json"
    if split not in read_json(index).get("splits", {}):
        return None
    ds = open_split(shard_dir, split, verify=True)
    return ds if len(ds) > 0 else None


def _check_token_ids(train, vocab_size: int) -> None:
    sample = train.batch(np.arange(min(len(train), 4096)))
    if sample.size and int(sample.max()) >= vocab_size:
        raise UserError(f"token id {int(sample.max())} is beyond the vocabulary size {vocab_size}", path=train.path,
                        fix="rebuild the shards with the tokenizer that trained this vocabulary")
