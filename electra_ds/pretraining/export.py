"""Export: a pretraining checkpoint (any ZeRO stage) -> Hugging Face discriminator and generator.

Consolidates fp32 weights from the DeepSpeed checkpoint named in the pretraining summary and
writes ``<output-dir>/discriminator`` (``AutoModelForPreTraining``) and ``<output-dir>/generator``
(``AutoModelForMaskedLM``), each with config, ``model.safetensors`` and the tokenizer. Before the
directory is published the exported discriminator is reloaded and its outputs compared with the
training model's on the same input. A run with gradient-disentangled embedding sharing (``gdes``) is
exported with the discriminator's delta folded into its word and position tables: a plain
``ElectraForPreTraining``, checked against the training model's discriminator the same way. A
``uniform_generator`` run (the official ablation) has no generator: only ``discriminator`` is written.

Each exported folder gets a model card, ``README.md`` (:mod:`electra_ds.pretraining.model_card`: the Hub's YAML metadata and how
the model was made and loads), and a ``tokenizer_config.json`` naming ``PreTrainedTokenizerFast``, which
transformers 4.x and 5.x both load. :func:`push_to_hub` uploads an export to the Hugging Face Hub (the ``push``
stage; config ``export.push_to_hub``).

With MLflow tracking on, the exported discriminator is also logged as an MLflow model of the export's run
(transformers flavor; config ``mlflow.log_model``) and registered as a new version of ``--registered-model-name``
(config ``mlflow.registered_model_name``) when one is named: :meth:`electra_ds.tracking.StageRun.log_model`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from electra_ds.common.errors import UserError
from electra_ds.common.fileio import atomic_path, read_json
from electra_ds.common.progress import Progress
from electra_ds.common.settings import add_settings
from electra_ds.common.userfiles import load_hf_tokenizer
from electra_ds.data.shard_format import check_tokenizer

log = logging.getLogger(__name__)


SETTINGS = {"pretrain": ("model",), "": ("seed",)}


def add_arguments(p) -> None:
    p.add_argument("--pretrain-summary", default=None, help="summary.json written by the pretrain stage")
    p.add_argument("--scratch", action="store_true",
                   help="no checkpoint: write the architecture of --model with random weights (the scratch baseline)")
    p.add_argument("--tokenizer-dir", required=True, help="tokenizer directory from the vocab stage")
    p.add_argument("--output-dir", required=True, help="gets discriminator/ and generator/")
    p.add_argument("--tag", default=None, help="checkpoint tag to export (default: the summary's final one)")
    p.add_argument("--corpus-stats", default=None,
                   help="the corpus stage's stats.json, for the model card's datasets (default: corpus/stats.json "
                        "beside the tokenizer directory, when there is one)")
    p.add_argument("--mlflow-model", action=argparse.BooleanOptionalAction, default=True,
                   help="log the exported discriminator as an MLflow model of this run (transformers flavor)")
    p.add_argument("--registered-model-name", default=None,
                   help="register the logged model as a new version of this MLflow registry model")
    add_settings(p, SETTINGS)  # used with --scratch: the architecture and the seed of its random weights


def checkpoint_dir_of(summary: dict, summary_path) -> Path:
    """The checkpoint folder a pretrain summary names: relative to the summary's folder (``"checkpoints"``), or an
    absolute path as summaries written before relative paths hold."""
    path = Path(summary["checkpoint_dir"])
    return path if path.is_absolute() else Path(summary_path).parent / path


TOKENIZER_CLASS = "PreTrainedTokenizerFast"  # a name transformers 4.x and 5.x both load (5.x writes TokenizersBackend)


def save_tokenizer(tokenizer, folder) -> None:
    """``save_pretrained``, then name a tokenizer class every supported transformers version knows."""
    import json

    tokenizer.save_pretrained(folder)
    path = Path(folder) / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = TOKENIZER_CLASS
    for leaked in ("is_local", "local_files_only"):  # how 5.x loaded the vocabulary, not part of the tokenizer
        config.pop(leaked, None)
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _check_tokenizer(tokenizer, folder) -> None:
    """The saved tokenizer loads back (AutoTokenizer) with the same vocabulary and ids."""
    from transformers import AutoTokenizer

    text = ("The exported tokenizer must match.", "It is checked before publishing.")
    reloaded = AutoTokenizer.from_pretrained(folder)
    if len(reloaded) != len(tokenizer) or reloaded(*text)["input_ids"] != tokenizer(*text)["input_ids"]:
        raise RuntimeError(f"the tokenizer saved in {folder} does not reproduce the vocabulary's ids")


def _corpus_stats(args) -> dict | None:
    from electra_ds.pretraining.model_card import read_corpus_stats

    path = args.corpus_stats or Path(args.tokenizer_dir).parent / "corpus" / "stats.json"
    return read_corpus_stats(path)


def tokenizer_kind(tokenizer) -> str:
    """``wordpiece`` when the fast tokenizer's model is WordPiece (vocab.tokenizer: wordpiece), else
    ``sentencepiece`` (a unigram or BPE model the vocab stage trained with sentencepiece)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return "wordpiece" if type(getattr(backend, "model", None)).__name__ == "WordPiece" else "sentencepiece"


def write_cards(folder: Path, names, *, summary=None, scratch=None, corpus_stats=None, vocab_size=None,
                title=None, tokenizer="sentencepiece") -> None:
    """``README.md``, the model card, in each exported model's folder."""
    from electra_ds.pretraining.model_card import render

    for name in names:
        (folder / name / "README.md").write_text(
            render(name, summary=summary, scratch=scratch, corpus_stats=corpus_stats, vocab_size=vocab_size,
                   name=f"{title} ({name})" if title else None, has_generator="generator" in names,
                   tokenizer=tokenizer),
            encoding="utf-8")


def consolidated_state_dict(checkpoint_dir, tag: str, zero_stage: int) -> dict:
    """fp32 weights of the whole ElectraPretrainer from a DeepSpeed checkpoint; no arbitrary unpickling."""
    import torch

    from electra_ds.pretraining.checkpoint import size_problem

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

    from electra_ds.pretraining.checkpoint import weights_only_loading

    with weights_only_loading():
        state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir), tag=tag)
    return {k: v.float() for k, v in state.items()}


def run_setting(summary: dict, tag: str, name: str, before, checkpoint_dir=None):
    """A setting that shapes the run's state dict (``embedding_sharing``, ``uniform_generator``): the summary's,
    else the checkpoint manifest's run config (in ``checkpoint_dir``: :func:`checkpoint_dir_of`), else ``before``
    (runs from before the option)."""
    import json

    from electra_ds.pretraining.checkpoint import MANIFEST

    if summary.get(name) is not None:
        return summary[name]
    try:
        folder = Path(checkpoint_dir if checkpoint_dir is not None else summary["checkpoint_dir"])
        run_config = json.loads((folder / tag / MANIFEST).read_text())["run_config"]
    except (OSError, ValueError, KeyError):
        return before
    value = run_config.get(name)
    return before if value is None else value


SUMMARY_FIELDS = ("tag", "model", "objective", "zero_stage", "steps")


def read_summary(path) -> dict:
    """The pretrain stage's summary.json; missing, empty, garbled or lacking a field it needs: a UserError."""
    try:
        summary = read_json(path)
    except FileNotFoundError:
        raise UserError("does not exist", path=path, fix="run the pretrain stage first") from None
    missing = [k for k in SUMMARY_FIELDS if not isinstance(summary, dict) or k not in summary]
    if missing or not isinstance(summary["model"], dict):
        raise UserError("is not a pretraining summary", path=path, field=(missing or ["model"])[0],
                        fix="pass the pretrain stage's summary.json (rerun pretraining if it was damaged)")
    return summary


def run(args, tracker) -> None:
    import torch
    from transformers import AutoModelForMaskedLM, AutoModelForPreTraining

    from electra_ds.common import alibi
    from electra_ds.pretraining.model import ElectraPretrainer, ModelShape, token_type_ids_for

    if args.scratch:
        return export_scratch(args, tracker)
    if not args.pretrain_summary:
        raise UserError("nothing to export", field="--pretrain-summary",
                        fix="pass the pretrain stage's summary.json, or --scratch for random weights")
    summary = read_summary(args.pretrain_summary)
    tag = args.tag or summary["tag"]
    try:
        shape = ModelShape(**summary["model"])
    except TypeError as exc:
        raise UserError(f"not a model shape ({exc})", path=args.pretrain_summary, field="model") from None
    objective = summary["objective"]
    # what is exported belongs together: the tokenizer the shards (so the model) were made with, its vocabulary
    check_tokenizer(summary.get("tokenizer_sha256"), args.tokenizer_dir, f"the model of {args.pretrain_summary}")
    tokenizer = load_hf_tokenizer(args.tokenizer_dir, field="--tokenizer-dir")
    if len(tokenizer) != shape.vocab_size:
        raise UserError(f"the tokenizer has {len(tokenizer)} pieces, the model's vocabulary {shape.vocab_size}",
                        path=args.tokenizer_dir, field="--tokenizer-dir",
                        fix="pass the vocab directory the shards stage used (<results>/vocab)")
    ckpt_dir = checkpoint_dir_of(summary, args.pretrain_summary)
    with Progress(f"export: consolidating {tag}", unit="files", heartbeat=True, tracker=tracker, logger=log):
        state = consolidated_state_dict(ckpt_dir, tag, int(summary["zero_stage"]))
    sharing = run_setting(summary, tag, "embedding_sharing", "es", ckpt_dir)
    uniform = bool(run_setting(summary, tag, "uniform_generator", False, ckpt_dir))
    try:
        model = ElectraPretrainer.from_training_state(shape, objective, state, embedding_sharing=sharing,
                                                      uniform_generator=uniform)
    except ValueError as exc:
        raise UserError(f"checkpoint {tag} does not match the model ({exc})", path=ckpt_dir) from None
    nets = model.exported()
    # what the exported models must reproduce: the training model's modules (under gdes the discriminator with its
    # delta unfolded; the MLM baseline has no trained discriminator, its published encoder is the reference; a
    # uniform_generator run publishes no generator, so nets has none to check)
    trained = {"discriminator": nets["discriminator"] if model.discriminator is None else model.discriminator,
               "generator": model.generator}
    loaders = {"discriminator": AutoModelForPreTraining, "generator": AutoModelForMaskedLM}

    from electra_ds.common.diskspace import module_bytes

    with atomic_path(args.output_dir, is_dir=True, needed=module_bytes(*nets.values())) as tmp:
        for name, net in nets.items():
            net.save_pretrained(tmp / name, safe_serialization=True)
            save_tokenizer(tokenizer, tmp / name)
            _check_tokenizer(tokenizer, tmp / name)
        card_summary = {**summary, "tag": tag, "embedding_sharing": sharing, "uniform_generator": uniform}
        if tag != summary["tag"]:  # an earlier checkpoint: the summary's totals are the final one's
            digits = "".join(c for c in tag if c.isdigit())
            card_summary.update(steps=int(digits) if digits else None, flops=None, seconds=None, final_valid=None)
        write_cards(tmp, nets, summary=card_summary, corpus_stats=_corpus_stats(args), vocab_size=len(tokenizer),
                    title=Path(args.output_dir).name, tokenizer=tokenizer_kind(tokenizer))
        # Check: the exported models reproduce the training model's outputs.
        ids = torch.tensor([tokenizer("The exported model must match.", "It is checked before publishing.")["input_ids"]])
        kwargs = {"attention_mask": torch.ones_like(ids), "token_type_ids": token_type_ids_for(ids)}
        with torch.no_grad():
            reloaded = {name: loaders[name].from_pretrained(
                tmp / name, attn_implementation=alibi.implementation(tmp / name)).eval() for name in nets}
            diffs = {name: (net(ids, **kwargs).logits - trained[name](ids, **kwargs).logits).abs().max().item()
                     for name, net in reloaded.items()}
        if max(diffs.values()) > 1e-4:
            raise RuntimeError(f"exported models differ from the trained model: {diffs}")
    # the checkpoint's own step (an earlier tag's, not the summary's final one)
    log.info("exported %s (step %s) to %s; max output difference %s", tag, card_summary["steps"], args.output_dir, diffs)
    tracker.log_params({"tag": tag, "zero_stage": summary["zero_stage"], "steps": card_summary["steps"],
                        "embedding_sharing": sharing, "uniform_generator": uniform})
    tracker.log_metrics({f"export_max_abs_diff/{k}": v for k, v in diffs.items()})
    _log_model(args, tracker)


def _log_model(args, tracker) -> None:
    if args.mlflow_model:
        tracker.log_model(Path(args.output_dir) / "discriminator", registered_model_name=args.registered_model_name)


def export_scratch(args, tracker) -> None:
    """The scratch baseline: the configured architecture with random weights, in the same layout as a real
    export (fine-tuning with ``--model-source scratch`` re-initialises it from each fine-tuning seed)."""
    import json

    import torch

    from electra_ds.pretraining.model import ElectraPretrainer, ModelShape

    tokenizer = load_hf_tokenizer(args.tokenizer_dir, field="--tokenizer-dir")
    try:
        shape = ModelShape(vocab_size=len(tokenizer), **args.model)
    except TypeError as exc:
        raise UserError(f"not a model shape: {exc}", field="--model") from None
    torch.manual_seed(args.seed)
    model = ElectraPretrainer(shape).eval()
    record = {"source": "scratch", "seed": args.seed, "model": shape.to_dict()}
    with atomic_path(args.output_dir, is_dir=True) as tmp:
        for name, net in (("discriminator", model.discriminator), ("generator", model.generator)):
            net.save_pretrained(tmp / name, safe_serialization=True)
            save_tokenizer(tokenizer, tmp / name)
            _check_tokenizer(tokenizer, tmp / name)
        write_cards(tmp, ("discriminator", "generator"), scratch=record, vocab_size=len(tokenizer),
                    title=Path(args.output_dir).name, tokenizer=tokenizer_kind(tokenizer))
        (tmp / "scratch.json").write_text(json.dumps(record, indent=2) + "\n")
    log.info("wrote a randomly initialised model (scratch baseline) to %s", args.output_dir)
    tracker.log_params({"source": "scratch", "seed": args.seed, "model": shape.to_dict()})
    _log_model(args, tracker)


# -- the Hugging Face Hub ------------------------------------------------------------------------------------

def push_to_hub(export_dir, repo_id: str, private: bool = True, *, commit_message: str | None = None) -> str:
    """Upload an export (``<export_dir>/discriminator`` at the repo's root, ``generator/`` beside it when there is
    one; model cards included) to the Hub repo ``repo_id``, created first (``private``; an existing repo keeps its
    visibility). Returns the repo's URL. Needs a token (``hf auth login`` or ``HF_TOKEN``) and internet."""
    from huggingface_hub import HfApi

    export_dir = Path(export_dir)
    disc = export_dir / "discriminator"
    if not (disc / "config.json").is_file():
        raise UserError("not an exported model (no discriminator/config.json)", path=export_dir,
                        fix="run the export stage first")
    message = commit_message or f"electra-ds export {export_dir.name}"
    api = HfApi()
    try:
        url = api.create_repo(repo_id, private=private, repo_type="model", exist_ok=True)
        api.upload_folder(folder_path=str(disc), repo_id=repo_id, repo_type="model", commit_message=message)
        if (export_dir / "generator" / "config.json").is_file():
            api.upload_folder(folder_path=str(export_dir / "generator"), path_in_repo="generator", repo_id=repo_id,
                              repo_type="model", commit_message=message + " (generator)")
    except Exception as exc:  # network, authentication, permissions: the user's environment
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise UserError(f"push of {export_dir} to the Hugging Face Hub repo {repo_id} failed "
                        f"({type(exc).__name__}: {first})", field="export.push_to_hub.repo_id",
                        fix="log in where this runs (`hf auth login` or HF_TOKEN, with write access to the repo's "
                            "owner), run it where huggingface.co is reachable, and check the repo id") from None
    return str(url)
