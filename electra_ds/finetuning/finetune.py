"""Fine-tune an exported ELECTRA discriminator on one task with one seed (plain PyTorch, no DeepSpeed).

Recipe of the ELECTRA paper's GLUE fine-tuning: Adam (eps 1e-6, no weight decay on biases and LayerNorm), linear
warmup and linear decay to zero, gradient clipping at 1.0, layer-wise learning rate decay (google-research/electra
``_get_layer_lrs``), 3 epochs (10 for RTE and STS-B), dynamic padding per batch. Three choices follow the official
code or the usual PyTorch form: ``finetune.optimizer`` (``adamw``: torch's AdamW with bias correction;
``adam_no_bias_correction``: the official AdamWeightDecayOptimizer), ``finetune.schedule`` (``warmup_then_decay``:
transformers' ``get_linear_schedule_with_warmup``; ``official``: ``peak x (1 - t/T) x min(1, t/W)``) and
``finetune.loss_reduction`` (``mean`` over the batch; ``sum``: the official ``reduce_sum``, so clipping at 1.0 bites
far more often). The dev split is scored after every epoch; the reported score is the
last epoch's (no best-epoch selection). Training batches are length-grouped (:func:`length_grouped_batches`)
and padded to their own longest example. ``precision: auto`` trains with bf16 autocast on GPUs that support it
and on CPUs with bf16 matrix units (AMX, AVX512-BF16); fp32 elsewhere (the official code trains in fp32).

Outputs, all written into a temporary folder that is renamed to ``--output-dir`` only at the end,
so a failed run leaves nothing behind:

* ``metrics.json``: task, seed, epochs, dev metrics, main metric and value, sizes, timing, hparams;
* ``test_predictions.tsv``: ``index<TAB>prediction`` with GLUE submission label strings (MNLI also
  writes ``test_mismatched_predictions.tsv``); header-only when the task has no test file;
* ``ax_predictions.tsv`` (MNLI only): the diagnostic set AX predicted with the fine-tuned MNLI model,
  when ``diagnostic/diagnostic.tsv`` is in the data directory (or from the Hub's ``ax`` config);
* ``model/`` with the fine-tuned weights and tokenizer, only with ``--keep-model``.

``--init-from`` starts from another fine-tuned model (the paper starts RTE, MRPC and STS-B from the
MNLI model): its encoder weights are loaded and the task head is re-initialised (new label set).

Device: ``--device auto`` uses the first GPU the job can see (``CUDA_VISIBLE_DEVICES``, which SLURM
and Snakemake set per job) and the CPU when there is none; one job uses one device.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import re
import statistics
import time
from collections import Counter
from pathlib import Path

from electra_ds.common.dropout import use_cpu_dropout
from electra_ds.common.errors import UserError
from electra_ds.common.fileio import atomic_path
from electra_ds.common.progress import Progress
from electra_ds.common.settings import add_settings
from electra_ds.finetuning.classifier import OfficialHead, layer_lr_groups, load_classifier
from electra_ds.finetuning.glue import (
    REGRESSION_RANGE,
    get_task,
    load_split,
    prediction_to_string,
    split_path,
    task_names,
)
from electra_ds.finetuning.metrics import compute_metrics

log = logging.getLogger(__name__)

_OUTPUT_NAMES = re.compile(r"^(metrics\.json|model|\w+_predictions\.tsv)$")


# keep_model and threads are also set per job by the rule (MNLI's model is kept for RTE/MRPC/STS-B; {threads})
SETTINGS = {"finetune": ("learning_rate", "layer_decay", "batch_size", "max_length", "epochs", "max_train_examples",
                         "warmup_fraction", "weight_decay", "max_steps", "double_unordered", "head", "keep_model",
                         "threads", "precision", "optimizer", "schedule", "loss_reduction", "dropout")}
# The recipe a model of a study may set for itself (models.<name>.finetune; electra_ds.pipeline.study checks it, the
# evaluation names those that differ between models); tasks, seeds, data and the job stay shared.
MODEL_RECIPE_FIELDS = ("learning_rate", "layer_decay", "epochs", "warmup_fraction", "weight_decay", "batch_size",
                       "dropout")


def add_arguments(p) -> None:
    p.add_argument("--model-dir", required=True, help="exported HF ELECTRA discriminator (with its tokenizer)")
    p.add_argument("--task", required=True, help=f"task name: {', '.join(task_names())}")
    p.add_argument("--seed", required=True, type=int, help="random seed (initialisation and data order)")
    p.add_argument("--output-dir", required=True, help="folder for metrics.json and test predictions")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data-dir", default=None, help="local folder with GLUE-layout task folders (CoLA/, ...)")
    src.add_argument("--hub-id", default=None, help="Hugging Face dataset id instead, e.g. nyu-mll/glue")
    p.add_argument("--init-from", default=None,
                   help="start from this fine-tuned model folder (e.g. the MNLI job's model/); head re-initialised")
    p.add_argument("--no-ax", dest="predict_ax", action="store_false",
                   help="MNLI: do not predict the diagnostic set AX")
    p.add_argument("--model-source", default="pretrained", choices=["pretrained", "scratch"],
                   help="scratch: ignore the weights in --model-dir and initialise its architecture randomly from "
                        "--seed (the no-pretraining baseline)")
    p.add_argument("--model-name", default=None, help="the model's name in the study (recorded in metrics.json)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto: the first visible GPU (CUDA_VISIBLE_DEVICES) if any, else CPU")
    add_settings(p, SETTINGS)


# -- batching ------------------------------------------------------------------------------------

def _encode(tokenizer, examples: list, max_length: int) -> list:
    """Token ids (compact numpy arrays: MNLI/QQP have ~400k examples) and labels, unpadded."""
    import numpy as np

    texts_a = [ex["text_a"] for ex in examples]
    texts_b = [ex["text_b"] for ex in examples] if examples and examples[0]["text_b"] is not None else None
    enc = tokenizer(texts_a, texts_b, truncation=True, max_length=max_length, return_token_type_ids=True)
    types = enc.get("token_type_ids") or [[0] * len(ids) for ids in enc["input_ids"]]
    return [{"input_ids": np.asarray(ids, dtype=np.int64), "token_type_ids": np.asarray(tt, dtype=np.int64),
             "label": ex["label"]} for ids, tt, ex in zip(enc["input_ids"], types, examples)]


REGRESSION_SCALE = REGRESSION_RANGE[1]  # STS-B: the model learns score / 5; predictions are scaled back


# Batches are padded to their longest example rounded up to a multiple of this. oneDNN builds (JIT-compiles) a kernel
# for each new matrix shape it meets, about 1-2.5 ms a matrix multiply here (measured on this CPU: the first call of
# a bf16 linear at a new length 3.5 ms, the next ones 1.0 ms), and length-grouped batches bring a new length nearly
# every step; rounding to 8 leaves at most 16 lengths, whose kernels stay cached. Measured per training step (demo
# export, 1 thread, bf16, dropout 0.1): CoLA 27.8 -> 26.9 ms, SST-2 32.6 -> 28.8, MRPC 89.3 -> 78.4, RTE 90.9 -> 83.0;
# 16 pads more and gains less. The padded positions are masked: a model predicts what it does without the rounding
# (test); in training, dropout draws its masks over the padded tensor, so a seed's draws are not those of before.
PAD_MULTIPLE = 8


def _collate(items: list, pad_id: int, regression: bool, device, multiple: int = PAD_MULTIPLE,
             limit: int | None = None):
    """A batch padded to its longest example rounded up to ``multiple`` (at most ``limit``, the model's
    positions), with the attention mask and, if the items have labels, the labels."""
    import torch

    longest = max(len(x["input_ids"]) for x in items)
    width = -(-longest // multiple) * multiple
    if limit is not None:
        width = max(longest, min(width, limit))
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    types = torch.zeros((len(items), width), dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for i, x in enumerate(items):
        n = len(x["input_ids"])
        ids[i, :n] = torch.from_numpy(x["input_ids"])
        types[i, :n] = torch.from_numpy(x["token_type_ids"])
        mask[i, :n] = 1
    batch = {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}
    if items[0]["label"] is not None:  # regression targets scaled to 0-1, as the official code trains STS-B
        batch["labels"] = torch.tensor([x["label"] / REGRESSION_SCALE if regression else x["label"] for x in items],
                                       dtype=torch.float if regression else torch.long)
    return {k: v.to(device) for k, v in batch.items()}


def length_grouped_batches(lengths: list, batch_size: int, generator, group_batches: int = 50) -> list[list[int]]:
    """Training batches of similar lengths, in random order (transformers' LengthGroupedSampler): a random
    permutation cut into groups of ``group_batches`` batches, each group sorted by length and cut into batches,
    the batches shuffled. Every example once per epoch; with dynamic padding a batch is padded to its own longest
    example, so it pays for little padding while the data order stays random."""
    import torch

    order = torch.randperm(len(lengths), generator=generator).tolist()
    group = batch_size * group_batches
    batches = []
    for start in range(0, len(order), group):
        chunk = sorted(order[start:start + group], key=lambda i: -lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def _positions(model) -> int | None:
    """How many positions the model has (the most a batch may be padded to), None if it does not say."""
    return getattr(getattr(model, "config", None), "max_position_embeddings", None)


def _predict(model, encoded: list, batch_size: int, pad_id: int, regression: bool, device, autocast) -> list:
    """Predictions in input order (label indices, or floats); batches sorted by length for speed."""
    import torch

    model.eval()
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]["input_ids"]))
    preds = [None] * len(encoded)
    positions = _positions(model)
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = _collate([{**encoded[i], "label": None} for i in idx], pad_id, regression, device, limit=positions)
            with autocast():
                logits = model(**batch).logits.float()
            values = (logits[:, 0] * REGRESSION_SCALE).tolist() if regression else logits.argmax(-1).tolist()
            for i, v in zip(idx, values):
                preds[i] = v
    return preds


# -- the stage -----------------------------------------------------------------------------------

def _check_output_dir(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(not _OUTPUT_NAMES.match(p.name) for p in out.iterdir())):
        raise UserError("exists and holds files that are not fine-tuning outputs; refusing to replace it",
                        path=out, fix="choose an empty or new --output-dir")


def _load_data(task, args) -> tuple:
    if not task.has_train or not task.dev_splits:
        raise UserError(f"task {task.name} has no train/dev data (it is test-only)", field="task",
                        fix="predict it with a model fine-tuned on MNLI")
    if args.data_dir is None and args.hub_id is None:
        raise UserError("no data source given", field="data-dir", fix="pass --data-dir DIR or --hub-id nyu-mll/glue")
    source = {"data_dir": args.data_dir, "hub_id": args.hub_id}
    train = load_split(task, "train", **source)
    dev = {split: load_split(task, split, **source) for split in task.dev_splits}
    tests, notes = {}, {}
    for split in task.test_files:
        if args.data_dir is not None and not split_path(task, split, args.data_dir).is_file():
            notes[split] = f"no {split_path(task, split, args.data_dir)}; header-only predictions"
            log.warning("%s: %s", task.name, notes[split])
            tests[split] = []
        else:
            tests[split] = load_split(task, split, **source)
    if task.name == "mnli" and args.predict_ax:
        ax_file = split_path("ax", "test", args.data_dir) if args.data_dir is not None else None
        if ax_file is not None and not ax_file.is_file():
            notes["ax"] = f"no {ax_file}; AX not predicted"
            log.warning("%s: %s", task.name, notes["ax"])
        else:
            tests["ax"] = load_split("ax", "test", **source)
    if args.max_train_examples and args.max_train_examples < len(train):
        keep = sorted(random.Random(0).sample(range(len(train)), args.max_train_examples))  # same subset per seed
        train = [train[i] for i in keep]
    if args.double_unordered and task.unordered_pair:  # as the official code: each training pair in both orders
        train = train + [{**ex, "text_a": ex["text_b"], "text_b": ex["text_a"]} for ex in train]
    return train, dev, tests, notes


@contextlib.contextmanager
def _torch_runtime(seed: int, threads: int | None, requested_device: str = "auto", precision: str = "auto"):
    """Seed everything, pick the device; restore torch's process-wide settings afterwards."""
    import numpy as np
    import torch

    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if threads:
        torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds CUDA; must precede the classifier head's initialisation
    from electra_ds.common.hardware import resolve_device, resolve_precision

    # the first GPU of the job's CUDA_VISIBLE_DEVICES when one is visible (auto), else the CPU
    device = torch.device("cuda", 0) if resolve_device(
        requested_device, field="--device", fix="run on a GPU node (finetune.gpus in the config requests one), "
                                                "or use --device auto/cpu") == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        # deterministic cuBLAS/cuDNN kernels (the CPU's kernels for this model already are, at a fixed thread count;
        # the switch also imports torch's compiler stack, 1-2 s of every CPU job's start-up: benchmarks/
        # finetune_throughput.py)
        torch.use_deterministic_algorithms(True, warn_only=True)
    use_bf16 = resolve_precision(precision, device.type) == "bf16"

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)

    try:
        yield device, use_bf16, autocast
    finally:
        torch.set_num_threads(saved[0])
        if device.type == "cuda":
            torch.use_deterministic_algorithms(saved[1], warn_only=saved[2])


def run(args, tracker) -> None:
    from electra_ds.common.lock import OutputLock

    with OutputLock(args.output_dir, "finetune"):  # a second job on the same --output-dir stops, naming this one
        _run(args, tracker)


def _run(args, tracker) -> None:
    started = time.monotonic()
    task = get_task(args.task)
    out, model_dir = Path(args.output_dir), Path(args.model_dir)
    if not (model_dir / "config.json").is_file():
        raise UserError("is not an exported model folder (no config.json)", path=model_dir,
                        fix="pass the export stage's discriminator folder as --model-dir")
    _check_output_dir(out)
    init_from = Path(args.init_from) if args.init_from else None
    if init_from is not None and not (init_from / "config.json").is_file():
        raise UserError("has no fine-tuned model to start from (no config.json)", path=init_from, field="--init-from",
                        fix="run that fine-tuning job with --keep-model (finetune.init_from_mnli: true does this "
                            "for MNLI)")
    train, dev, tests, notes = _load_data(task, args)
    epochs = args.epochs or task.epochs
    hparams = {k: getattr(args, k) for k in ("learning_rate", "layer_decay", "batch_size", "max_length",
                                             "warmup_fraction", "weight_decay", "max_train_examples",
                                             "max_steps", "optimizer", "schedule", "loss_reduction", "head", "dropout")}
    tracker.log_params({"task": task.name, "seed": args.seed, "epochs": epochs, "model_dir": str(model_dir),
                        "model": args.model_name or model_dir.parent.name, "model_source": args.model_source,
                        "train_examples": len(train), "init_from": str(init_from or ""), **hparams})

    with _torch_runtime(args.seed, args.threads, args.device, args.precision) as (device, use_bf16, autocast):
        tokenizer, model = load_classifier(model_dir, task, init_from, scratch=args.model_source == "scratch",
                                           device_type=device.type, dropout=args.dropout)
        if args.head == "official":
            model.classifier = OfficialHead(model.config)
        if device.type == "cpu":  # cheaper dropout masks than PyTorch's CPU ones (1.07-1.11x a job at dropout 0.1)
            use_cpu_dropout(model)
        max_length = min(args.max_length, _positions(model) or args.max_length)
        model.to(device)
        enc_train = _encode(tokenizer, train, max_length)
        enc_dev = {s: _encode(tokenizer, ex, max_length) for s, ex in dev.items()}
        total_steps = epochs * math.ceil(len(enc_train) / args.batch_size)
        if args.max_steps:
            total_steps = min(total_steps, args.max_steps)
        optimizer, scheduler = build_optimizer(model, args, total_steps)
        log.info("%s seed %d: %d train examples, %d epochs, %d steps on %s%s", task.name, args.seed,
                 len(train), epochs, total_steps, device, " (bf16)" if use_bf16 else "")
        history, step, dev_results = _train(model, optimizer, scheduler, enc_train, enc_dev, task, args, epochs,
                                            total_steps, tokenizer.pad_token_id, device, autocast, tracker)
        test_preds = {}
        for split, examples in tests.items():
            preds = _predict(model, _encode(tokenizer, examples, max_length), 2 * args.batch_size,
                             tokenizer.pad_token_id, task.is_regression, device, autocast) if examples else []
            pred_task = get_task("ax") if split == "ax" else task
            test_preds[split] = [(ex["idx"], prediction_to_string(pred_task, p)) for ex, p in zip(examples, preds)]

    first_dev = next(iter(task.dev_splits))
    single = list(task.dev_splits) == ["dev"]
    main_value = dev_results[first_dev][task.main_metric]
    metrics = {
        "task": task.name, "seed": args.seed, "epochs": epochs,
        "model": args.model_name or model_dir.parent.name, "model_source": args.model_source,
        "model_shape": {k: getattr(model.config, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                              "embedding_size", "intermediate_size", "vocab_size")},
        "epochs_run": len(history), "steps": step,
        "is_probe": task.is_probe,
        "dev": dev_results["dev"] if single else dev_results,
        "main_metric": task.main_metric if single else f"{first_dev}.{task.main_metric}",
        "main": main_value,
        "majority_baseline": _majority_baseline(task, train, dev[first_dev]),
        "train_examples": len(train), "dev_examples": {s: len(ex) for s, ex in dev.items()},
        "test_predictions": {s: {"file": _prediction_file(task, s), "rows": len(p),
                                 **({"note": notes[s]} if s in notes else {})} for s, p in test_preds.items()},
        "history": history, "hparams": hparams, "device": str(device), "bf16": use_bf16,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "init_from": str(init_from.resolve()) if init_from is not None else None,
        **({"notes": {k: v for k, v in notes.items() if k not in test_preds}}
           if any(k not in test_preds for k in notes) else {}),
        "model_dir": str(model_dir.resolve()), "seconds": round(time.monotonic() - started, 3),
    }
    _write_outputs(out, metrics, test_preds, task, model if args.keep_model else None, tokenizer)
    tracker.log_metrics({"main": main_value, "seconds": metrics["seconds"]}, step=len(history))
    tracker.log_artifact(out / "metrics.json")
    log.info("%s seed %d: %s = %.4f -> %s", task.name, args.seed, metrics["main_metric"], main_value, out)


def build_optimizer(model, args, total_steps: int):
    """(optimizer, scheduler) of a fine-tuning job: layer-wise rates and weight decay groups
    (:func:`layer_lr_groups`), ``args.optimizer`` and ``args.schedule``, warming up over ``warmup_fraction x
    total_steps`` steps (the official schedule keeps the product's fraction, as create_optimizer does)."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    from electra_ds.common import optim

    groups = [{k: v for k, v in g.items() if k != "names"}
              for g in layer_lr_groups(model, args.learning_rate, args.layer_decay, args.weight_decay)]
    # torch's fused AdamW (CPU and CUDA): one kernel for all tensors instead of ~10 small ops per tensor; 1.21x a
    # 128-wide 2-layer model's whole training step on one CPU thread (benchmarks/finetune_throughput.py, docs/speed.md)
    optimizer = optim.build_optimizer(args.optimizer, groups, args.learning_rate, offload=False, fused=True)
    warmup = args.warmup_fraction * total_steps
    if args.schedule == "official":
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, optim.lr_lambda(warmup, total_steps, "official"))
    else:  # transformers' t/W ramp (0 at the first step), then linear decay from the peak
        scheduler = get_linear_schedule_with_warmup(optimizer, int(warmup), total_steps)
    return optimizer, scheduler


def _train(model, optimizer, scheduler, enc_train, enc_dev, task, args, epochs, total_steps, pad_id, device,
           autocast, tracker) -> tuple:
    """The training loop; scores every dev split after each epoch. Returns (history, steps, last dev scores)."""
    import torch


    regression = task.is_regression
    generator = torch.Generator().manual_seed(args.seed)
    lengths = [len(x["input_ids"]) for x in enc_train]
    positions = _positions(model)
    history, step, dev_results = [], 0, {}
    progress = Progress(f"finetune {task.name} seed {args.seed}: training", total=total_steps, unit="steps",
                        bytes_unit="examples", tracker=tracker, logger=log)
    for epoch in range(1, epochs + 1):
        model.train()
        losses = []
        for rows in length_grouped_batches(lengths, args.batch_size, generator):
            if step >= total_steps:
                break
            batch = _collate([enc_train[i] for i in rows], pad_id, regression, device, limit=positions)
            with autocast():
                loss = model(**batch).loss  # the mean over the batch
            (loss * len(rows) if args.loss_reduction == "sum" else loss).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())  # reported per example whatever the reduction
            step += 1
            progress.update(1, len(batch["input_ids"]))
        if not losses:
            break
        dev_results = {}
        for split, enc in enc_dev.items():
            preds = _predict(model, enc, 2 * args.batch_size, pad_id, regression, device, autocast)
            dev_results[split] = _score(task, preds, [x["label"] for x in enc])
        train_loss = sum(losses) / len(losses)
        history.append({"epoch": epoch, "steps": step, "train_loss": train_loss,
                        "dev": dev_results["dev"] if list(dev_results) == ["dev"] else dev_results})
        tracker.log_metrics({"train_loss": train_loss, **dev_results}, step=epoch)
        log.info("epoch %d/%d (step %d/%d): train loss %.4f, dev %s", epoch, epochs, step, total_steps, train_loss,
                 dev_results)
    progress.close()
    return history, step, dev_results


def _majority_baseline(task, train: list, dev: list) -> dict:
    """What a constant answer scores on the (first) dev split: the training set's most frequent label (its mean
    for regression, whose correlations are then 0), so a reader can tell a score from no learning at all."""
    labels = [ex["label"] for ex in train]
    constant = statistics.fmean(labels) if task.is_regression else Counter(labels).most_common(1)[0][0]
    scores = _score(task, [constant] * len(dev), [ex["label"] for ex in dev])
    return {"prediction": constant, "dev": scores, "main": scores[task.main_metric]}


def _score(task, preds, labels) -> dict:

    return compute_metrics(task, preds, labels)


def _prediction_file(task, split: str) -> str:
    return "test_predictions.tsv" if split == next(iter(task.test_files)) else f"{split}_predictions.tsv"


def _write_outputs(out: Path, metrics: dict, test_preds: dict, task, model, tokenizer) -> None:
    from electra_ds.common.diskspace import module_bytes

    with atomic_path(out, is_dir=True, needed=module_bytes(model) if model is not None else None) as tmp:
        for split, rows in test_preds.items():
            with open(tmp / _prediction_file(task, split), "w", encoding="utf-8", newline="\n") as f:
                f.write("index\tprediction\n")
                f.writelines(f"{idx}\t{label}\n" for idx, label in rows)
        if model is not None:
            model.save_pretrained(tmp / "model")
            tokenizer.save_pretrained(tmp / "model")
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8")
