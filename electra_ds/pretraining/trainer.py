"""The pretraining engine: data position, one training step, validation and checkpoints (used by pretrain.py).

The data position is a pure function of the optimizer step: step ``s`` reads the global batch
``perm[s*G:(s+1)*G]`` of its epoch's permutation, each rank takes a disjoint slice of it, and every random
draw (masking, sampling, dropout) is seeded from (seed, step, rank, micro-step) or, for the row-level draws,
from (seed, step, position in the global batch). So a restart from a checkpoint continues exactly where the
run stopped, and any world size gives the same global batch.

:class:`Trainer` builds the model and the DeepSpeed engine and resumes from the newest intact checkpoint
(:mod:`electra_ds.pretraining.checkpoint`); :meth:`Trainer.train_step`, :meth:`Trainer.validate` and :meth:`Trainer.save`
are the three things the loop in :func:`electra_ds.pretraining.pretrain.run` does. Training and validation share one
reduction of named statistics (:class:`electra_ds.pretraining.step_metrics.MetricSums`).
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np

from electra_ds.common.dropout import use_cpu_dropout
from electra_ds.common.errors import UserError
from electra_ds.common.hardware import resolve_device
from electra_ds.common.layout import CHECKPOINTS, TRAIN_LOG
from electra_ds.pretraining.config import RESUME_CHANGEABLE, PretrainConfig
from electra_ds.pretraining.distributed import agree, all_gather, broadcast, process_group_timeout

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
    from electra_ds.pretraining.masking import prediction_count

    n_pred = prediction_count(global_ids, mask_prob, masking, mask_count, seeds, word_starts, device)
    return float(n_pred), float((global_ids != 0).sum())


def load_word_starts(config: PretrainConfig, vocab_size: int):
    """Whole-word masking's word-start table from ``--tokenizer-dir`` (checked against the shards' tokenizer),
    None for token masking; UserError for what a user can get wrong."""
    from electra_ds.pretraining.masking import MASKINGS, check_masking

    try:
        check_masking(config.masking, config.mask_count)
    except ValueError as exc:
        raise UserError(str(exc), field="pretrain.mask_count") from None
    if not MASKINGS[config.masking].needs_word_starts:
        return None
    if not config.tokenizer_dir:
        raise UserError(f"pretrain.masking {config.masking} needs the vocabulary to find word starts",
                        field="pretrain.masking", fix="pass --tokenizer-dir (the vocab stage's directory)")
    from electra_ds.common.fileio import read_json, sha256_file
    from electra_ds.data.shard_format import tokenizer_file
    from electra_ds.pretraining.masking import word_start_table

    spm_model = tokenizer_file(config.tokenizer_dir)  # spm.model, or WordPiece's tokenizer.json
    expected = read_json(Path(config.shards) / "index.json").get("tokenizer_sha256")
    if expected and spm_model.is_file() and sha256_file(spm_model) != expected:
        raise UserError("this is not the vocabulary the shards were made with", path=spm_model,
                        fix="pass the vocab directory the shards stage used as --tokenizer-dir")
    table = word_start_table(config.tokenizer_dir)
    if len(table) != vocab_size:
        raise UserError(f"the vocabulary has {len(table)} pieces, the shards {vocab_size}", path=spm_model)
    return table


def rank_micro_batches(indices: np.ndarray, rank: int, world: int, micro: int) -> list[np.ndarray]:
    per_rank = len(indices) // world
    mine = indices[rank * per_rank:(rank + 1) * per_rank]
    return [mine[i:i + micro] for i in range(0, per_rank, micro)]


def _local_world() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("SLURM_NTASKS_PER_NODE", "1")).split("(")[0] or 1)


class Trainer:
    """The model, its DeepSpeed engine, the data and where training stands (``step``), for the run ``config``."""

    def __init__(self, config: PretrainConfig, env: dict):
        from electra_ds.data.shard_format import open_split
        from electra_ds.pretraining.ds_config import load_ds_config, offloads_optimizer, zero_stage

        self.config, self.rank, self.world = config, env["rank"], env["world_size"]
        device_type = resolve_device(config.device, field="pretrain.device",
                                     fix="run on a GPU node, or set pretrain.device: cpu")
        os.environ.setdefault("DS_ACCELERATOR", device_type)

        # Everything a user can get wrong is checked before any process group or model exists.
        self.train = open_split(config.shards, "train", verify=True)
        self.valid = open_optional_split(config.shards, "valid")
        self.word_starts = load_word_starts(config, self.train.vocab_size)  # whole_word masking, else None
        ds_cfg = load_ds_config(config.ds_config, global_batch=config.global_batch_size,
                                micro_batch=config.micro_batch_size, world_size=self.world,
                                precision=config.precision, device_type=device_type)
        self.micro, self.accum = ds_cfg["train_micro_batch_size_per_gpu"], ds_cfg["gradient_accumulation_steps"]
        self.precision = "bf16" if ds_cfg["bf16"]["enabled"] else "fp16" if ds_cfg["fp16"]["enabled"] else "fp32"
        self.zero_stage, self.offload = zero_stage(ds_cfg), offloads_optimizer(ds_cfg)
        self.out = Path(config.output_dir)
        self.ckpt_dir = self.out / CHECKPOINTS

        import deepspeed
        import torch

        from electra_ds.pretraining.model import ElectraPretrainer, ModelShape
        from electra_ds.pretraining.shape import check_uniform_generator, flops_per_token
        from electra_ds.pretraining.step_metrics import MetricSums, TokenPrior

        try:
            self.shape = ModelShape(vocab_size=self.train.vocab_size, **config.model)
        except TypeError as exc:
            raise UserError(f"not a model shape: {exc}", field="pretrain.model") from None
        self.shape.max_position_embeddings = max(self.shape.max_position_embeddings, self.train.max_seq_len)
        _check_token_ids(self.train, self.shape.vocab_size)
        try:
            check_uniform_generator(config.uniform_generator, config.objective, config.embedding_sharing)
        except ValueError as exc:
            raise UserError(str(exc), field="pretrain.uniform_generator") from None
        # What every checkpoint records and a resume must match: the recorded settings, the resolved shape and the
        # shards' sequence length.
        self.run_config = {**config.select("recorded"), "model": self.shape.to_dict(),
                           "max_seq_len": self.train.max_seq_len}
        self.allowed_changes = resume_changes_allowed(config.allow_resume_change)
        self.resume_changes: list[str] = []  # the allowed differences this run resumed with

        # Which checkpoint to resume from is settled before any model exists: another run's checkpoints, or only
        # damaged ones, stop here with a UserError (on every rank: rank 0 decides and broadcasts).
        deepspeed.init_distributed(timeout=process_group_timeout(config.collective_timeout_minutes))
        if device_type == "cuda":
            torch.cuda.set_device(env["local_rank"])  # object collectives on NCCL use the current device
        from electra_ds.pretraining.checkpoint import choose_checkpoint

        resume_tag, _ = choose_checkpoint(self.ckpt_dir, self.run_config, self.rank, self.world,
                                          broadcast=lambda o: broadcast(o, self.world),
                                          all_gather=lambda o: all_gather(o, self.world), log=log,
                                          allow_changes=self.allowed_changes)

        torch.manual_seed(config.seed)
        model = ElectraPretrainer(self.shape, **config.select("pretrainer"), device_type=device_type)
        if device_type == "cpu" and config.dropout_masks == "fast":  # cheaper masks (electra_ds.common.dropout)
            use_cpu_dropout(model)
        if self.word_starts is not None:
            model.use_word_starts(self.word_starts)
        if config.output_bias_init == "prior" and resume_tag is None:  # a resume takes the checkpoint's biases
            # one pass over the training split, on rank 0 only (on a real corpus every rank reading it all is minutes)
            counts = broadcast(self.train.token_counts() if self.rank == 0 else None, self.world)
            biases = model.init_output_biases(counts)
            if self.rank == 0:
                log.info("output biases from the training tokens' unigram prior: %s", biases)
        self.parameters = sum(p.numel() for p in model.parameters())
        from electra_ds.common.optim import build_optimizer, lr_lambda

        optimizer = build_optimizer(config.optimizer, model.param_groups(config.weight_decay), config.learning_rate,
                                    offload=self.offload, fused=device_type == "cuda")
        self.optimizer_name = type(optimizer).__name__
        self._group_decay = [group["weight_decay"] for group in optimizer.param_groups]
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config.warmup_steps, config.max_steps,
                                                                            config.schedule))
        if device_type == "cpu":
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, _local_world())))
        self.engine, _, _, self.scheduler = deepspeed.initialize(model=model, optimizer=optimizer,
                                                                 lr_scheduler=scheduler, config=ds_cfg,
                                                                 dist_init_required=True)
        self.device, self.device_type = self.engine.device, device_type
        if not hasattr(self.engine.optimizer, "overflow"):  # stage 0 in fp32: DeepSpeed calls the torch optimizer
            skip_nonfinite_updates(self.engine.optimizer)
        self.skips = SkipWatch(config.max_skipped_steps, config.skip_window)
        self._nan = torch.tensor(float("nan"), device=self.device)
        if config.compile:
            self.engine.compile()

        self.fpt = flops_per_token(self.shape, self.train.max_seq_len, config.objective, config.mask_prob,
                                   config.uniform_generator)
        self.step_flops = self.fpt * config.global_batch_size * self.train.max_seq_len
        self.sums = MetricSums()
        self.prior = TokenPrior(self.shape.vocab_size, self.device)  # context-free baseline of the discriminator
        self._one = torch.ones((), dtype=torch.float64, device=self.device)
        self.step = self.start_step = 0
        self.tag = self.resume_tag = resume_tag
        if resume_tag is not None:
            self._resume(resume_tag)

    def _resume(self, tag: str) -> None:
        from electra_ds.pretraining.checkpoint import difference_line, field_differences, weights_only_loading

        with weights_only_loading():
            _, client = self.engine.load_checkpoint(str(self.ckpt_dir), tag=tag, load_module_strict=True)
        if client is None:
            raise UserError(f"checkpoint {tag} could not be loaded", path=self.ckpt_dir,
                            fix=f"delete {self.ckpt_dir / tag} to resume from the checkpoint before it")
        differences = field_differences(client.get("run_config"), self.run_config)
        changes = [difference_line(d) for d in differences]
        diffs = [difference_line(d) for d in differences if d[0] not in self.allowed_changes]
        if diffs:  # checked before loading already (manifest / legacy client state); kept as a last guard
            raise UserError(f"checkpoint {tag} was written with a different config ({'; '.join(diffs[:8])})",
                            path=self.ckpt_dir, fix=f"use a new results directory or delete {self.ckpt_dir}")
        self.resume_changes = changes
        if changes:
            self._apply_changed_hyperparameters()
            if self.rank == 0:
                log.warning("resuming %s with changes allowed by --allow-resume-change: %s", tag, "; ".join(changes))
        self.step = self.start_step = int(client["step"])
        if "token_prior" in client:
            self.prior.load(client["token_prior"])
        self.skips.load(client.get("skip_watch"))
        log.info("resumed from %s at step %d", self.ckpt_dir / tag, self.step)

    def _apply_changed_hyperparameters(self) -> None:
        """The checkpoint restored the optimizer's groups (their rate, weight decay) and the schedule's base rate
        as they were; this run's values replace them (the schedule's shape, a function, is this run's anyway)."""
        sched, rate = self.scheduler, self.config.learning_rate
        groups = self.engine.optimizer.param_groups
        sched.base_lrs = [rate for _ in groups]
        for group, decay, factor in zip(groups, self._group_decay, sched.lr_lambdas):
            group["initial_lr"] = rate
            group["lr"] = rate * factor(sched.last_epoch)
            group["weight_decay"] = decay
        sched._last_lr = [group["lr"] for group in groups]

    # -- the loop's three actions -----------------------------------------------------------------------------
    def train_step(self) -> None:
        """One optimizer step over the global batch of ``step``; its statistics are added to ``sums``."""
        import torch

        config, engine = self.config, self.engine
        engine.train()
        indices = global_batch_indices(len(self.train), config.global_batch_size, self.step, config.seed)
        row_seeds = [step_seed(config.seed, self.step, 0, i) for i in range(len(indices))]  # per global-batch position
        n_masked, n_real = global_token_counts(self.train.batch(indices), config.mask_prob, config.masking,
                                               config.mask_count, row_seeds, self.word_starts, self.device)
        parts = self.world * self.accum  # each micro-batch's loss sum is divided by the global count / parts
        skipped_before, finite = engine.skipped_steps, []
        micro_batches = rank_micro_batches(indices, self.rank, self.world, self.micro)
        for m, rows in enumerate(micro_batches):
            first_row = self.rank * (len(indices) // self.world) + m * self.micro  # position in the global batch
            torch.manual_seed(step_seed(config.seed, self.step, self.rank, m))  # dropout
            seeds = row_seeds[first_row:first_row + len(rows)]
            batch = torch.from_numpy(self.train.batch(rows)).to(self.device)
            outputs = engine(batch, seeds=seeds, gen_denominator=n_masked / parts, disc_denominator=n_real / parts)
            # A non-finite loss makes every gradient NaN (x 1.0 otherwise: bit-exact, and no host sync), so the
            # optimizer step's own check of the global gradient norm skips the whole update on every rank.
            finite.append(torch.isfinite(outputs["loss"]))
            engine.backward(outputs["loss"] * torch.where(finite[-1], 1.0, self._nan).to(outputs["loss"].dtype))
            engine.step()
            self.sums.add({**outputs["stats"], "loss_sum": outputs["loss"], "micro_batches": self._one})
        self.step += 1
        if engine.skipped_steps != skipped_before:  # the same on every rank (the norm is all-reduced)
            bad = [rows for rows, ok in zip(micro_batches, finite) if not bool(ok)]
            self._skipped(indices, all_gather([int(i) for rows in bad for i in rows], self.world))

    def _skipped(self, indices: np.ndarray, bad_rows: list[list[int]]) -> None:
        """Log a skipped update with the batch that caused it; stop every rank once too many are skipped."""
        step = self.step
        self.skips.add(step)
        if self.rank == 0:
            rows = sorted({i for part in bad_rows for i in part})
            culprit = (f"non-finite loss in examples {self._locate(rows)}" if rows else
                       f"finite losses but a non-finite gradient norm; the global batch is examples "
                       f"{self._locate(sorted(int(i) for i in indices))}")
            log.warning("step %d: update skipped (%s); nothing reached the weights or the optimizer state "
                        "(%d skipped in the last %d steps, the limit is %d)", step, culprit,
                        self.skips.count(step), self.skips.window, self.skips.limit)
        if self.skips.count(step) < self.skips.limit:
            return
        message = None
        if self.rank == 0:
            from electra_ds.common.errors import UserError
            from electra_ds.pretraining import checkpoint as ck

            latest, _ = ck.read_latest(self.ckpt_dir)
            recent = self.skips.recent(step)
            message = str(UserError(
                f"{len(recent)} of the last {self.skips.window} steps had a non-finite loss or gradient norm "
                f"(steps {', '.join(map(str, recent))}; their updates were skipped): stopping at step {step}; "
                + (f"the last checkpoint, {latest}, is kept" if latest else "no checkpoint was written yet"),
                field="pretrain.max_skipped_steps",
                fix="lower pretrain.learning_rate (or raise warmup_steps), or remove the examples named in the "
                    "warnings above; then run again: it resumes from the last checkpoint (pass "
                    "--allow-resume-change learning_rate to continue it with the new rate)"))
        self.raise_together(message)

    def _locate(self, rows: list[int], most: int = 6) -> str:
        """``12 (train-00000.bin row 12), ...``: examples of the train split with their shard file and row."""
        from electra_ds.common.fileio import read_json

        if not hasattr(self, "_shard_starts"):
            shards = [s for s in read_json(Path(self.config.shards) / "index.json")["splits"]["train"]["shards"]
                      if s["examples"] > 0]
            self._shard_starts = (np.cumsum([0] + [s["examples"] for s in shards]), [s["file"] for s in shards])
        starts, files = self._shard_starts
        shown = []
        for i in rows[:most]:
            k = int(np.searchsorted(starts, i, side="right")) - 1
            shown.append(f"{i} ({files[k]} row {i - starts[k]})")
        return ", ".join(shown) + (f" and {len(rows) - most} more" if len(rows) > most else "")

    def skip_state(self) -> dict:
        return self.skips.state()

    def _fold_pending_prior_counts(self) -> None:
        """Before a checkpoint: the id counts of the steps since the last :meth:`collect` go into the token prior
        now (reduced over the ranks, then zeroed in the pending sums), so the checkpoint holds them. A save at a step
        that is not a log step (SIGTERM, Ctrl-C, a time-based save) lost them otherwise, and the resumed run's
        token_prior_auc and context_auc differed from an uninterrupted run's. The counts are whole numbers in
        float64: adding them earlier gives the same prior."""
        import torch

        keys = ("ids_replaced", "ids_total")
        if not all(k in self.sums.sums for k in keys):  # mlm, or no step since the last collect (the same on all ranks)
            return
        counts = torch.stack([self.sums.sums[k] for k in keys])
        if self.world > 1:
            torch.distributed.all_reduce(counts)
        self.prior.add({"ids_replaced": counts[0], "ids_total": counts[1]})
        for k in keys:
            self.sums.sums[k] = torch.zeros_like(self.sums.sums[k])

    def collect(self) -> tuple[dict, float]:
        """(metrics, real tokens) of the training steps since the last call, over every rank (one all-reduce)."""
        self.sums.all_reduce()
        self.prior.add(self.sums.sums)
        metrics, tokens = self.sums.summary(), float(self.sums.sums["tokens"])
        metrics["lr"] = self.scheduler.get_last_lr()[0]
        metrics["skipped_steps"] = float(self.skips.total)
        grad_norm = self.engine.get_global_grad_norm()
        if grad_norm is not None and math.isfinite(float(grad_norm)):
            metrics["grad_norm"] = float(grad_norm)
        self.sums.reset()
        return metrics, tokens

    def validate(self) -> dict:
        """Validation on the first ``eval_examples`` examples with fixed draws; the same reduction as training."""
        import torch

        from electra_ds.pretraining.step_metrics import MetricSums

        config, engine = self.config, self.engine
        engine.eval()
        per_rank = min(len(self.valid), config.eval_examples) // self.world  # equal work per rank (ZeRO-3 collectives)
        rows = np.arange(self.rank * per_rank, (self.rank + 1) * per_rank)
        sums = MetricSums()
        with torch.no_grad():
            for i in range(0, len(rows), self.micro):
                part = rows[i:i + self.micro]
                seeds = [step_seed(config.seed, EVAL_STREAM, 0, int(r)) for r in part]  # the same draws at every eval
                out = engine(torch.from_numpy(self.valid.batch(part)).to(self.device), seeds=seeds)
                sums.add({**out["stats"], "loss_sum": out["loss"], "micro_batches": self._one})
        sums.all_reduce()
        sums.sums.update(self.prior.auc_stats(sums.sums))
        engine.train()
        return sums.summary()

    def save(self, train_log=None) -> str:
        """A DeepSpeed checkpoint (with a copy of ``train_log``'s lines up to this step), then its manifest, then
        ``latest`` (see electra_ds.pretraining.checkpoint); returns the tag.

        A write that fails on any rank (a full disk, a quota) ends every rank together with one error naming the
        checkpoint directory and the space it needed (:meth:`raise_together`): the partial tag directory is removed,
        ``latest`` still names the previous checkpoint, and a rerun resumes from it. DeepSpeed's save ends with a
        barrier that the ranks whose writes succeeded wait in; a rank whose write failed joins it, so nobody is left
        in a collective the others never reach."""
        import torch

        from electra_ds.common.diskspace import write_failure
        from electra_ds.pretraining import checkpoint as ck

        rank, world, ckpt_dir = self.rank, self.world, self.ckpt_dir
        tag = f"step{self.step:08d}"
        tag_dir = ckpt_dir / tag
        previous_latest, snapshot, failure = None, None, None
        if rank == 0:
            previous_latest, _ = ck.read_latest(ckpt_dir)
            try:
                if tag_dir.is_symlink():  # planted while the run went on (pretrain checked before it started)
                    raise OSError(errno.ELOOP, "is a symbolic link; refusing to write the checkpoint through it "
                                               "(remove the link)", str(tag_dir))
                if tag_dir.exists():
                    # Left by an interrupted save or a damaged checkpoint this run fell back past; never the one it
                    # resumed from (that one is at an earlier step). Removed before any rank writes (DeepSpeed's
                    # save_checkpoint starts with a barrier), so no stale file or manifest survives into the new one.
                    shutil.rmtree(tag_dir)
                snapshot = train_log.snapshot(ckpt_dir) if train_log is not None else None
            except OSError as exc:
                failure = exc
        self._save_failed(failure, tag, previous_latest)
        from deepspeed.checkpoint.constants import (
            UNIVERSAL_CHECKPOINT_INFO,
            UNIVERSAL_CHECKPOINT_VERSION_KEY,
            UNIVERSAL_CHECKPOINT_VERSION_VALUE,
        )

        self._fold_pending_prior_counts()
        # universal_checkpoint_info lets DeepSpeed's ds_to_universal convert this checkpoint for another world size.
        client_state = {"step": self.step, "run_config": self.run_config, "token_prior": self.prior.state(),
                        "skip_watch": self.skip_state(), UNIVERSAL_CHECKPOINT_INFO: {UNIVERSAL_CHECKPOINT_VERSION_KEY:
                                                                                     UNIVERSAL_CHECKPOINT_VERSION_VALUE}}
        try:
            self.engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state, save_latest=False)
        except Exception as exc:
            if not write_failure(exc):
                raise
            failure = exc
            torch.distributed.barrier()  # the one that ends save_checkpoint on the ranks whose writes succeeded
        if rank == 0 and failure is None and snapshot is not None:
            try:
                shutil.copyfile(snapshot, tag_dir / TRAIN_LOG)  # restored on resume if the log itself is lost
            except OSError as exc:
                failure = exc
        self._save_failed(failure, tag, previous_latest)
        torch.distributed.barrier()  # every rank's files are complete
        t0 = time.time()
        names = broadcast(ck.checkpoint_files(tag_dir) if rank == 0 else None, world)
        parts = all_gather(ck.hash_share(tag_dir, names, rank, world), world)  # each rank hashes its share
        manifest = None
        if rank == 0:
            digests = {k: v for part in parts for k, v in part.items()}
            unreadable = [n for n, d in digests.items() if d.startswith("error")]
            if unreadable:
                raise RuntimeError(f"checkpoint {tag_dir}: could not read back {unreadable[:3]} after saving")
            try:
                manifest = ck.write_manifest(tag_dir, tag=tag, step=self.step, run_config=self.run_config,
                                             world_size=world, digests=digests)
                ck.write_latest(ckpt_dir, tag)  # only now: `latest` never names a checkpoint without a manifest
            except OSError as exc:
                failure = exc
        self._save_failed(failure, tag, previous_latest)
        if rank == 0:
            removed = ck.prune(ckpt_dir, tag, self.config.keep_checkpoints, previous_latest)
            size = sum(m["size"] for m in manifest["files"].values())
            log.info("checkpoint %s saved (%d files, %.1f MB; manifest with sha256 in %.2f s)%s", tag, len(names),
                     size / 1e6, time.time() - t0, f"; removed {', '.join(removed)}" if removed else "")
        self.tag = tag
        return tag

    def _save_failed(self, failure: BaseException | None, tag: str, previous_latest: str | None) -> None:
        """Nothing when no rank's write failed; else every rank ends with one error (see :meth:`save`)."""
        from electra_ds.common.diskspace import full_disk_error, tree_bytes
        from electra_ds.common.errors import UserError

        failed = agree([failure is not None], self.device)[0]
        if not failed:
            return
        reports = all_gather(None if failure is None else _describe(failure), self.world)
        error = None
        if self.rank == 0:
            tag_dir = self.ckpt_dir / tag
            written = tree_bytes(tag_dir)
            shutil.rmtree(tag_dir, ignore_errors=True)  # a partial checkpoint is never taken for a whole one
            (self.ckpt_dir / f".{TRAIN_LOG}.snapshot").unlink(missing_ok=True)
            rank, (errno_, text) = next((r, rep) for r, rep in enumerate(reports) if rep is not None)
            exc = failure if failure is not None else (OSError(errno_, text) if errno_ else RuntimeError(text))
            kept = (f"checkpoint {tag} was not saved and its partial files are removed; `latest` still names "
                    f"{previous_latest}, which a rerun resumes from" if previous_latest else
                    f"checkpoint {tag} was not saved (its partial files are removed); no earlier checkpoint exists")
            needed = self._checkpoint_bytes(previous_latest)
            error = full_disk_error(exc, self.ckpt_dir, needed=max(needed, written), what=f"checkpoint {tag}",
                                    kept=kept)
            error = str(error) if error is not None else str(UserError(
                f"rank {rank} could not write checkpoint {tag} ({text[:200]}); {kept}", path=self.ckpt_dir,
                fix="check that the checkpoint directory is writable, then run the same command again"))
        self.raise_together(error)

    def _checkpoint_bytes(self, previous_tag: str | None) -> int:
        """What a checkpoint takes: the previous one's files, else an estimate (16 bytes a parameter: the weights
        and Adam's two moments in fp32, and fp32 master weights or a low-precision copy)."""
        if previous_tag:
            try:
                manifest = json.loads((self.ckpt_dir / previous_tag / "electra_ds_manifest.json").read_text())
                return sum(m["size"] for m in manifest["files"].values())
            except (OSError, ValueError, KeyError, TypeError):
                pass
        return 16 * self.parameters

    def raise_together(self, message: str | None) -> None:
        """End every rank with one error: ``message`` (rank 0's) is printed once by rank 0, the other ranks exit
        with the same status quietly, after a barrier so that none is left waiting in a collective."""
        import torch

        from electra_ds.common.errors import UserError

        message = broadcast(message, self.world)
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
        error = UserError(message)
        error.quiet = self.rank != 0  # read by electra_ds.cli
        raise error




def open_optional_split(shard_dir, split: str):
    """The split, or None when the shards have none (or an empty one). A split that is listed but damaged
    (checksum, size, missing file) is an error, not a silently disabled validation."""
    from electra_ds.common.fileio import read_json
    from electra_ds.data.shard_format import open_split

    index = Path(shard_dir) / "index.json"
    if split not in read_json(index).get("splits", {}):
        return None
    ds = open_split(shard_dir, split, verify=True)
    return ds if len(ds) > 0 else None


def resume_changes_allowed(text: str | None) -> frozenset:
    names = frozenset(n.strip() for n in (text or "").split(",") if n.strip())
    unknown = sorted(names - set(RESUME_CHANGEABLE))
    if unknown:
        raise UserError(f"cannot continue a run with another {', '.join(unknown)}", field="pretrain.allow_resume_change",
                        fix=f"name only {', '.join(RESUME_CHANGEABLE)} (comma-separated); a run with another model, "
                            "data or objective needs a new output directory")
    return names


def skip_nonfinite_updates(optimizer) -> None:
    """Give a plain torch optimizer the check DeepSpeed's own optimizers make (ZeRO 1-3, bf16): a step whose
    gradients are not all finite is skipped, and ``overflow`` tells the engine, which then leaves the learning-rate
    schedule where it is and counts the step in ``skipped_steps``. DeepSpeed calls a client optimizer directly at
    ZeRO stage 0 in fp32, after averaging the gradients over the ranks (so every rank decides alike)."""
    import torch

    step = optimizer.step

    def guarded_step(*args, **kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        optimizer.overflow = bool(grads) and not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())
        return None if optimizer.overflow else step(*args, **kwargs)

    optimizer.overflow = False
    optimizer.step = guarded_step


class SkipWatch:
    """The steps whose update was skipped: at ``limit`` of them within the last ``window`` steps the run stops.
    Saved in every checkpoint, so a resumed run counts as the uninterrupted one would."""

    def __init__(self, limit: int, window: int):
        self.limit, self.window = limit, window
        self.steps: list[int] = []
        self.total = 0

    def add(self, step: int) -> None:
        self.steps.append(step)
        self.total += 1

    def recent(self, step: int) -> list[int]:
        return [s for s in self.steps if s > step - self.window]

    def count(self, step: int) -> int:
        return len(self.recent(step))

    def state(self) -> dict:
        return {"steps": self.steps[-self.limit:], "total": self.total}

    def load(self, state: dict | None) -> None:
        if state:
            self.steps, self.total = list(state["steps"]), int(state["total"])


def _describe(exc: BaseException) -> tuple[int | None, str]:
    """(errno, text) of a failed write, to send to rank 0 (an exception object may not pickle)."""
    if isinstance(exc, OSError):
        return exc.errno, f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    return None, str(exc)


def _check_token_ids(train, vocab_size: int) -> None:
    sample = train.batch(np.arange(min(len(train), 4096)))
    if sample.size and int(sample.max()) >= vocab_size:
        raise UserError(f"token id {int(sample.max())} is beyond the vocabulary size {vocab_size}", path=train.path,
                        fix="rebuild the shards with the tokenizer that trained this vocabulary")
