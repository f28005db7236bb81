"""Pretraining: ELECTRA generator + discriminator trained through ``deepspeed.initialize``.

Start it with ``electra-ds launch --nproc-per-node N -- pretrain ...`` (torchrun locally, srun under
SLURM). :func:`run` is the loop; the model, the engine, one training step, validation and checkpoints are
:class:`electra_ds.pretraining.trainer.Trainer`'s (where the data position and every random draw are pure functions of
(seed, step), so a restart continues exactly and any world size gives the same run).
The settings travel as one frozen :class:`electra_ds.pretraining.config.PretrainConfig`, built once in :func:`run`.

Outputs under ``--output-dir``: ``checkpoints/<tag>/`` (DeepSpeed plus ``electra_ds_manifest.json``: run
config, sizes and sha256 of every file; the last N intact ones kept; ``latest`` written only after the
manifest). A rerun resumes from the newest intact checkpoint, skipping damaged ones with a warning, and
refuses checkpoints of another configuration before loading anything (electra_ds.pretraining.checkpoint). A rank
stops within about a second when its launcher dies (distributed.exit_with_launcher), without a checkpoint.
``train_log.jsonl``: one line of metrics per log interval and validation pass; each checkpoint keeps a copy,
and on resume the log is cut back to (or restored from) the checkpoint's, so it always describes one
uninterrupted run. ``summary.json``: final metrics and the checkpoint to export, written last and atomically.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from electra_ds.common.errors import UserError
from electra_ds.common.fileio import open_nofollow, write_json
from electra_ds.common.layout import CHECKPOINTS, PRETRAIN_SUMMARY, TRAIN_LOG
from electra_ds.common.settings import add_settings
from electra_ds.pretraining.config import SETTINGS, PretrainConfig  # SETTINGS: the fields PretrainConfig declares
from electra_ds.tracking import shards_dataset

log = logging.getLogger(__name__)


def add_arguments(p) -> None:
    p.add_argument("--shards", required=True, help="shards directory (index.json + .bin files)")
    p.add_argument("--output-dir", required=True, help="checkpoints/, train_log.jsonl and summary.json go here")
    p.add_argument("--tokenizer-dir", default=None,
                   help="vocab stage output (spm.model): which pieces start a word, needed by --masking whole_word")
    add_settings(p, SETTINGS)


def run(args, tracker) -> None:
    from electra_ds.common.lock import OutputLock
    from electra_ds.pretraining import distributed
    from electra_ds.pretraining.trainer import Trainer

    config = PretrainConfig.from_args(args)  # what travels from here on: the run's settings, typed and frozen
    distributed.exit_with_launcher()  # a rank never outlives the torchrun/srun that started it
    env = distributed.setup_env()
    refuse_planted_links(config.output_dir, env["rank"])
    lock = OutputLock(config.output_dir, "pretrain")  # one run per output directory, held by rank 0
    if env["rank"] == 0:
        lock.acquire()
    try:
        _train(config, tracker, Trainer(config, env))
    finally:
        lock.release()


def _train(config: PretrainConfig, tracker, trainer) -> None:
    from electra_ds.pretraining import distributed

    rank, out = trainer.rank, Path(config.output_dir)
    train_log = TrainLog(out / TRAIN_LOG, trainer.start_step, trainer.ckpt_dir, trainer.resume_tag) if rank == 0 else None
    if rank == 0:
        _log_start(trainer, tracker)
    stall = distributed.StallWatch(out / ".heartbeats", trainer.rank, trainer.world,
                                   config.collective_timeout_minutes * 60, what="pretrain",
                                   kept=lambda: _kept_checkpoint(trainer.ckpt_dir), on_exit=_release_lock_file(out))
    stall.progress(trainer.step, "training")
    try:
        _loop(config, tracker, trainer, train_log, stall)
    finally:
        stall.stop()


def _loop(config: PretrainConfig, tracker, trainer, train_log, stall) -> None:
    import torch

    from electra_ds.pretraining.distributed import agree

    rank, out = trainer.rank, Path(config.output_dir)
    stop_signal = StopSignal()  # SLURM's time limit / preemption: checkpoint at the end of this step, exit
    plateau = PlateauWatch(config.warmup_steps, config.plateau_steps, config.objective)
    spikes = SpikeWatch(config.spike_factor)
    clock = Clock(trainer.start_step)
    last_train, last_ckpt_time = {}, time.time()

    while trainer.step < config.max_steps:
        trainer.train_step()
        step = trainer.step
        stall.progress(step, "training")
        failure = None  # a write that fails on rank 0 ends every rank together, not rank 0 alone
        if step % config.log_every == 0 or step == config.max_steps:
            metrics, tokens = trainer.collect()
            last_train = {**metrics, **clock.rates(step, tokens, trainer), "flops": step * trainer.step_flops}
            if rank == 0:
                spike = spikes.check(step, last_train["loss"])
                if spike is not None:
                    last_train["loss_spike"] = spike
                    tracker.set_tags({"loss_spike": f"step {step}: loss {last_train['loss']:.4g}, "
                                                    f"{spike:.1f}x the recent mean"})
                tracker.log_metrics({f"train/{k}": v for k, v in last_train.items()}, step=step)
                failure = _write_log(train_log, "train", step, last_train)
                log.info("step %d/%d [%3.0f%%] %s lr %.2e %.0f tok/s eta %s", step, config.max_steps,
                         100 * step / config.max_steps, _fmt_metrics(last_train), last_train["lr"],
                         last_train["tokens_per_s"], _fmt_seconds(clock.eta(step, config.max_steps)))
                plateau.check(step, last_train)
        if trainer.valid is not None and config.eval_every and step % config.eval_every == 0 \
                and step < config.max_steps:
            failure = _validate(trainer, tracker, train_log) or failure
            stall.progress(step, "validation")
        due_time = rank == 0 and 0 < config.checkpoint_minutes < (time.time() - last_ckpt_time) / 60
        due_time, stopping, failed = agree([due_time, stop_signal.received, failure is not None], trainer.device)
        if failed:
            trainer.raise_together(failure)
        if step % config.checkpoint_every == 0 or step == config.max_steps or due_time or stopping:
            trainer.save(train_log)
            stall.progress(step, "checkpoint saved")
            last_ckpt_time = time.time()
        if stopping and step < config.max_steps:
            raise SystemExit(f"pretrain: stopped by signal {stop_signal.received} at step {step}; checkpoint saved "
                             f"in {trainer.ckpt_dir} -- run the same command (or rule) again to resume")

    final_valid = {}
    if trainer.valid is not None:
        final_valid = _validate(trainer, tracker, train_log, quiet=False)
    failure = None
    if rank == 0:
        try:
            write_json(out / PRETRAIN_SUMMARY, {
                **config.select("summary"), "checkpoint_dir": trainer.ckpt_dir.relative_to(out).as_posix(),
                "tag": trainer.tag, "steps": trainer.step, "world_size": trainer.world,
                "zero_stage": trainer.zero_stage,
                "precision": trainer.precision, "model": trainer.shape.to_dict(), "optimizer": trainer.optimizer_name,
                "offload_optimizer": trainer.offload, "flops_per_token": trainer.fpt,
                "flops": trainer.step * trainer.step_flops, "final_train": last_train, "final_valid": final_valid,
                "skipped_steps": trainer.skips.total, "resume_changes": trainer.resume_changes,
                "tokens_per_example": trainer.train.max_seq_len, "seconds": clock.seconds(),
                "tokenizer_sha256": trainer.train.tokenizer_sha256})  # export checks its tokenizer against it
        except UserError as exc:  # a full disk: every rank ends with it
            failure = str(exc)
    if agree([failure is not None], trainer.device)[0]:
        trainer.raise_together(failure)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()  # an orderly teardown: gloo's threads otherwise race the exit


def _write_log(train_log, split: str, step: int, metrics: dict) -> str | None:
    """Append to train_log.jsonl (rank 0); the error text when the disk is full, for every rank to end with."""
    from electra_ds.common.diskspace import full_disk_error

    try:
        train_log.write(split, step, metrics)
    except OSError as exc:
        error = full_disk_error(exc, train_log.path, what="the training log", kept="the last checkpoint is kept")
        if error is None:
            raise
        return str(error)
    return None


def _kept_checkpoint(ckpt_dir) -> str:
    from electra_ds.pretraining.checkpoint import read_latest

    latest, _ = read_latest(ckpt_dir)
    return f"the last checkpoint, {latest}, is kept" if latest else "no checkpoint was written yet"


def _release_lock_file(out: Path):
    """What the stall watchdog does before it ends this process: the output directory's lock is let go (the OS
    drops the flock; this removes the holder record too, so that a requeued job on another node may start)."""
    from electra_ds.common.lock import OutputLock

    def release():
        OutputLock(out, "pretrain").remove_own_record()
    return release


def _validate(trainer, tracker, train_log, quiet: bool = True):
    """One validation pass, logged by rank 0. ``quiet``: return the error text of a failed log write (None if it
    worked) for the caller's agreement; else return the metrics, a failed write ending every rank at once."""
    metrics = trainer.validate()
    failure = None
    if trainer.rank == 0:
        tracker.log_metrics({f"valid/{key}": v for key, v in metrics.items()}, step=trainer.step)
        failure = _write_log(train_log, "valid", trainer.step, metrics)
        log.info("valid at step %d: %s", trainer.step, _fmt_metrics(metrics))
    if quiet:
        return failure
    from electra_ds.pretraining.distributed import agree

    if agree([failure is not None], trainer.device)[0]:
        trainer.raise_together(failure)
    return metrics


def _log_start(trainer, tracker) -> None:
    config = trainer.config
    tracker.log_params({**config.select("param"), "model": trainer.shape.to_dict(), "micro_batch_size": trainer.micro,
                        "grad_accum": trainer.accum, "world_size": trainer.world, "zero_stage": trainer.zero_stage,
                        "precision": trainer.precision, "optimizer": trainer.optimizer_name,
                        "device": trainer.device_type, "parameters": trainer.parameters,
                        "start_step": trainer.start_step})
    if trainer.resume_changes:  # resumed with changes the user allowed (--allow-resume-change)
        tracker.set_tags({"resume_changes": "; ".join(trainer.resume_changes)})
    tracker.log_input(shards_dataset(config.shards))  # the shards, by the sha256 of their index
    log.info("world size %d, micro-batch %d x accumulation %d = global %d; ZeRO stage %d; %s on %s; %s%s",
             trainer.world, trainer.micro, trainer.accum, config.global_batch_size, trainer.zero_stage,
             trainer.precision, trainer.device_type, trainer.optimizer_name,
             " with its state offloaded to the CPU" if trainer.offload else "")


class Clock:
    """Throughput since the last log line, and the ETA from the average step time of this run."""

    def __init__(self, start_step: int):
        self.start_step, self.t_start = start_step, time.time()
        self.t_last, self.step_last = self.t_start, start_step

    def rates(self, step: int, tokens: float, trainer) -> dict:
        now = time.time()
        elapsed, steps = max(now - self.t_last, 1e-9), step - self.step_last
        self.t_last, self.step_last = now, step
        config = trainer.config
        out = {"tokens_per_s": tokens / elapsed, "samples_per_s": steps * config.global_batch_size / elapsed}
        out["model_tflops"] = out["tokens_per_s"] * trainer.fpt / 1e12
        if config.peak_tflops > 0:
            out["mfu"] = out["model_tflops"] / (config.peak_tflops * trainer.world)
        return out

    def eta(self, step: int, max_steps: int) -> float:
        return (time.time() - self.t_start) / max(step - self.start_step, 1) * (max_steps - step)

    def seconds(self) -> float:
        return time.time() - self.t_start


def refuse_planted_links(output_dir, rank: int) -> None:
    """Before any work: none of the files and folders pretraining writes in its output directory is a symbolic
    link (the log, the summary, the checkpoint folder, its ``latest``, the log snapshot, a step directory, the
    heartbeats), as a link planted there would have the run write into whatever it points at. Every rank checks
    (the same files); rank 0 reports. The output directory itself, and its parents, may be links."""
    from electra_ds.common.errors import UserError
    from electra_ds.common.fileio import refuse_links

    out = Path(output_dir)
    try:
        refuse_links(out, (TRAIN_LOG, PRETRAIN_SUMMARY, CHECKPOINTS, ".heartbeats"))
        refuse_links(out / CHECKPOINTS, ("latest", f".{TRAIN_LOG}.snapshot"), glob_pattern="*")
        refuse_links(out / ".heartbeats", glob_pattern="*")
    except UserError as exc:
        exc.quiet = rank != 0  # read by electra_ds.cli
        raise


class TrainLog:
    """``train_log.jsonl``: metrics per log interval. On resume the log is cut back to the checkpoint's step,
    taken from the checkpoint's own copy when there is one (the pipeline deletes an unfinished job's outputs),
    so the file always describes one uninterrupted run."""

    def __init__(self, path: Path, start_step: int, ckpt_dir: Path | None = None, tag: str | None = None):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        saved = ckpt_dir / tag / path.name if ckpt_dir is not None and tag else None
        source = saved if saved is not None and saved.is_file() else path
        kept = []
        if start_step and source.exists():
            kept = [line for line in source.read_text().splitlines() if line and json.loads(line)["step"] <= start_step]
        self.lines = [line + "\n" for line in kept]  # the whole log, also when the file is gone (see snapshot)
        with open_nofollow(path, "w") as f:  # never through a link planted at the log's name
            f.write("".join(self.lines))

    def write(self, split: str, step: int, metrics: dict) -> None:
        self.lines.append(json.dumps({"split": split, "step": step, "time": time.time(), **metrics}) + "\n")
        with open_nofollow(self.path, "a") as f:
            f.write(self.lines[-1])

    def snapshot(self, ckpt_dir: Path) -> Path:
        """The log so far, from memory, in a file of its own for the checkpoint's copy. Not the output file: on
        SLURM's SIGTERM (requeue, preemption, time limit) the job's Snakemake deletes its outputs at once, while
        the ranks still finish the step and write the checkpoint the next attempt resumes from."""
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        snap = ckpt_dir / f".{self.path.name}.snapshot"
        with open_nofollow(snap, "w") as f:
            f.write("".join(self.lines))
        return snap


class StopSignal:
    """Remembers SIGTERM/SIGUSR1 (sent by SLURM before a time limit or on preemption) and a first SIGINT (Ctrl-C,
    which torchrun passes on to the ranks) instead of dying: the run checkpoints the step it is in and stops. A
    second Ctrl-C interrupts at once, as usual."""

    def __init__(self):
        import signal

        self.received = 0
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        import signal

        self.received = signum
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)


HEADLINE = ("loss", "gen_loss", "gen_acc", "disc_loss", "base_entropy", "rtd_gain", "disc_auc", "token_prior_auc",
            "context_auc", "disc_precision", "disc_recall")


def _fmt_metrics(m: dict) -> str:
    return " ".join(f"{k} {m[k]:.4f}" if k.endswith("loss") or k == "base_entropy" else f"{k} {m[k]:.3f}"
                    for k in HEADLINE if k in m)


SPIKE_HISTORY = 20  # logged training losses the spike check compares with


class SpikeWatch:
    """Warns when a logged training loss is more than ``factor`` times the mean of the last SPIKE_HISTORY logged
    losses (finite ones; a non-finite loss is the skipped-step check's business). Returns the ratio of a spike."""

    def __init__(self, factor: float):
        self.factor = factor
        self.history: list[float] = []

    def check(self, step: int, loss: float) -> float | None:
        import math

        if not math.isfinite(loss):
            return None
        ratio = None
        if self.factor > 0 and len(self.history) >= 3:
            mean = sum(self.history) / len(self.history)
            if mean > 0 and loss > self.factor * mean:
                ratio = loss / mean
                log.warning("step %d: loss spike: %.4g is %.1fx the mean of the last %d logged losses (%.4g); "
                            "pretrain.spike_factor is %g", step, loss, ratio, len(self.history), mean, self.factor)
        self.history = (self.history + [loss])[-SPIKE_HISTORY:]
        return ratio


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
