"""Export: a pretraining checkpoint (any ZeRO stage) -> Hugging Face discriminator and generator.

Consolidates fp32 weights from the DeepSpeed checkpoint named in the pretraining summary and
writes ``<output-dir>/discriminator`` (``AutoModelForPreTraining``) and ``<output-dir>/generator``
(``AutoModelForMaskedLM``), each with config, ``model.safetensors`` and the tokenizer. Before the
directory is published the exported discriminator is reloaded and its outputs compared with the
training model's on the same input. A run with gradient-disentangled embedding sharing (``gdes``) is
exported with the discriminator's delta folded into its word and position tables: a plain
``ElectraForPreTraining``, checked against the training model's discriminator the same way. A
``uniform_generator`` run (the official ablation) has no generator: only ``discriminator`` is written.
"""

from __future__ import annotations

import logging
from pathlib import Path

from electra_ds.errors import UserError
from electra_ds.fileio import atomic_path, read_json
from electra_ds.progress import Progress
from electra_ds.settings import add_settings

log = logging.getLogger(__name__)


SETTINGS = {"pretrain": ("model",), "": ("seed",)}


def add_arguments(p) -> None:
    p.add_argument("--pretrain-summary", default=None, help="summary.json written by the pretrain stage")
    p.add_argument("--scratch", action="store_true",
                   help="no checkpoint: write the architecture of --model with random weights (the scratch baseline)")
    p.add_argument("--tokenizer-dir", required=True, help="tokenizer directory from the vocab stage")
    p.add_argument("--output-dir", required=True, help="gets discriminator/ and generator/")
    p.add_argument("--tag", default=None, help="checkpoint tag to export (default: the summary's final one)")
    add_settings(p, SETTINGS)  # used with --scratch: the architecture and the seed of its random weights


def consolidated_state_dict(checkpoint_dir, tag: str, zero_stage: int) -> dict:
    """fp32 weights of the whole ElectraPretrainer from a DeepSpeed checkpoint; no arbitrary unpickling."""
    import torch

    from electra_ds.checkpoint import size_problem

    ckpt = Path(checkpoint_dir) / tag
    if not ckpt.is_dir():
        raise UserError(f"checkpoint {tag} not found", path=ckpt.parent, fix="rerun the pretrain stage")
    problem = size_problem(ckpt)  # cheap (sizes against the manifest); pretrain verifies digests on resume
    if problem:
        raise UserError(f"checkpoint {tag} is damaged: {problem}", path=ckpt.parent,
                        fix="rerun the pretrain stage: it resumes from the newest intact checkpoint")
    if zero_stage == 0:
        # zero_to_fp32 cannot parse stage-0 checkpoints: the full module is in the model states file.
        states = torch.load(ckpt / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=True)
        return {k: v.float() for k, v in states["module"].items()}
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from electra_ds.checkpoint import weights_only_loading

    with weights_only_loading():
        state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir), tag=tag)
    return {k: v.float() for k, v in state.items()}


def run_setting(summary: dict, tag: str, name: str, before):
    """A setting that shapes the run's state dict (``embedding_sharing``, ``uniform_generator``): the summary's,
    else the checkpoint manifest's run config, else ``before`` (runs from before the option)."""
    import json

    from electra_ds.checkpoint import MANIFEST

    if summary.get(name) is not None:
        return summary[name]
    try:
        run_config = json.loads((Path(summary["checkpoint_dir"]) / tag / MANIFEST).read_text())["run_config"]
    except (OSError, ValueError, KeyError):
        return before
    value = run_config.get(name)
    return before if value is None else value


def run(args, tracker) -> None:
    import torch
    from transformers import AutoModelForMaskedLM, AutoModelForPreTraining, AutoTokenizer

    from electra_ds.model import ElectraPretrainer, ModelShape, token_type_ids_for

    if args.scratch:
        return export_scratch(args, tracker)
    if not args.pretrain_summary:
        raise UserError("nothing to export", field="--pretrain-summary",
                        fix="pass the pretrain stage's summary.json, or --scratch for random weights")
    summary = read_json(args.pretrain_summary)
    tag = args.tag or summary["tag"]
    shape = ModelShape(**summary["model"])
    objective = summary["objective"]
    with Progress(f"export: consolidating {tag}", unit="files", heartbeat=True, tracker=tracker, logger=log):
        state = consolidated_state_dict(summary["checkpoint_dir"], tag, int(summary["zero_stage"]))
    sharing = run_setting(summary, tag, "embedding_sharing", "es")
    uniform = bool(run_setting(summary, tag, "uniform_generator", False))
    try:
        model = ElectraPretrainer.from_training_state(shape, objective, state, embedding_sharing=sharing,
                                                      uniform_generator=uniform)
    except ValueError as exc:
        raise UserError(f"checkpoint {tag} does not match the model ({exc})", path=summary["checkpoint_dir"]) from None
    nets = model.exported()
    # what the exported models must reproduce: the training model's modules (under gdes the discriminator with its
    # delta unfolded; the MLM baseline has no trained discriminator, its published encoder is the reference; a
    # uniform_generator run publishes no generator, so nets has none to check)
    trained = {"discriminator": nets["discriminator"] if model.discriminator is None else model.discriminator,
               "generator": model.generator}
    loaders = {"discriminator": AutoModelForPreTraining, "generator": AutoModelForMaskedLM}
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_dir)

    with atomic_path(args.output_dir, is_dir=True) as tmp:
        for name, net in nets.items():
            net.save_pretrained(tmp / name, safe_serialization=True)
            tokenizer.save_pretrained(tmp / name)
        # Check: the exported models reproduce the training model's outputs.
        ids = torch.tensor([tokenizer("The exported model must match.", "It is checked before publishing.")["input_ids"]])
        kwargs = {"attention_mask": torch.ones_like(ids), "token_type_ids": token_type_ids_for(ids)}
        with torch.no_grad():
            reloaded = {name: loaders[name].from_pretrained(tmp / name).eval() for name in nets}
            diffs = {name: (net(ids, **kwargs).logits - trained[name](ids, **kwargs).logits).abs().max().item()
                     for name, net in reloaded.items()}
        if max(diffs.values()) > 1e-4:
            raise RuntimeError(f"exported models differ from the trained model: {diffs}")
    log.info("exported %s (step %s) to %s; max output difference %s", tag, summary["steps"], args.output_dir, diffs)
    tracker.log_params({"tag": tag, "zero_stage": summary["zero_stage"], "steps": summary["steps"],
                        "embedding_sharing": sharing, "uniform_generator": uniform})
    tracker.log_metrics({f"export_max_abs_diff/{k}": v for k, v in diffs.items()})


def export_scratch(args, tracker) -> None:
    """The scratch baseline: the configured architecture with random weights, in the same layout as a real
    export (fine-tuning with ``--model-source scratch`` re-initialises it from each fine-tuning seed)."""
    import json

    import torch
    from transformers import AutoTokenizer

    from electra_ds.model import ElectraPretrainer, ModelShape

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_dir)
    try:
        shape = ModelShape(vocab_size=len(tokenizer), **args.model)
    except TypeError as exc:
        raise UserError(f"not a model shape: {exc}", field="--model") from None
    torch.manual_seed(args.seed)
    model = ElectraPretrainer(shape).eval()
    with atomic_path(args.output_dir, is_dir=True) as tmp:
        for name, net in (("discriminator", model.discriminator), ("generator", model.generator)):
            net.save_pretrained(tmp / name, safe_serialization=True)
            tokenizer.save_pretrained(tmp / name)
        (tmp / "scratch.json").write_text(json.dumps({"source": "scratch", "seed": args.seed,
                                                       "model": shape.to_dict()}, indent=2) + "\n")
    log.info("wrote a randomly initialised model (scratch baseline) to %s", args.output_dir)
    tracker.log_params({"source": "scratch", "seed": args.seed, "model": shape.to_dict()})
