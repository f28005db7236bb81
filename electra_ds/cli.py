"""``electra-ds <stage> ...``: one subcommand per pipeline stage.

Each stage module provides ``add_arguments(parser)`` and ``run(args, tracker)``. The command line adds
the options every stage shares (logging, MLflow tags), opens the stage's MLflow run and turns a
:class:`~electra_ds.errors.UserError` into one clear line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from electra_ds.constraints import check_stage_args
from electra_ds.errors import UserError
from electra_ds.settings import check_settings
from electra_ds.tracking import StageRun

STAGES = {
    "corpus": "Read the configured sources and write normalised UTF-8 documents (JSONL).",
    "scatter": "Split a documents JSONL into N contiguous parts (scatter step of a split dedup).",
    "dedup": "Remove exact duplicates (normalised-text hash), then near-duplicates (MinHash LSH); report counts.",
    "vocab": "Train a sentencepiece vocabulary with ELECTRA's special tokens; save a HF tokenizer dir.",
    "shards": "Tokenize documents and pack fixed-length examples into binary shards with an index.",
    "probes": "Derive offline probe tasks (GLUE TSV layout) from held-out documents.",
    "pretrain": "Train ELECTRA (generator + discriminator) through DeepSpeed; write checkpoints.",
    "export": "Export the pretrained discriminator and generator in Hugging Face format.",
    "push": "Upload an exported model (discriminator at the repo root, generator under generator/, model cards "
            "included) to the Hugging Face Hub.",
    "finetune": "Fine-tune the exported discriminator on one task with one seed; write metrics + predictions.",
    "linear-probe": "Frozen-feature linear probe of an exported model: per task and layer, dev accuracy of a "
                    "logistic regression on mean-pooled features.",
    "evaluate": "Aggregate fine-tuning results into one table (JSON and Markdown).",
    "launch": "Start a command on N processes: torchrun locally, srun inside a SLURM allocation.",
    "tracking-replay": "Send MLflow records spooled while the tracking store was down (<results-dir>/mlflow-spool).",
    "status": "Where a run stands: stages done, pretraining step/rate/ETA/checkpoint/metrics, fine-tuning jobs.",
    "prefetch": "Download the Hugging Face Hub datasets a config reads (corpus sources, GLUE) into the HF cache, "
                "on a machine with internet, so that the jobs can read them offline.",
}
# commands that are not pipeline stages (no MLflow run, no tracking options), and modules with another name
MODULES = {"launch": "distributed", "tracking-replay": "tracking_replay", "status": "status", "prefetch": "prefetch"}


def _wildcards(text: str) -> dict:
    out = {}
    for item in filter(None, (text or "").split(",")):
        key, _, value = item.partition("=")
        out[key.strip()] = value.strip()
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="electra-ds", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="stage", required=True, metavar="<stage>")
    for stage, help_text in STAGES.items():
        module = importlib.import_module(f"electra_ds.{MODULES.get(stage, stage.replace('-', '_'))}")
        p = sub.add_parser(stage, help=help_text, description=help_text,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        module.add_arguments(p)
        if stage not in MODULES:
            common = p.add_argument_group("tracking and logging")
            common.add_argument("--results-dir", default=".",
                                help="results directory (the default MLflow store is <results-dir>/mlflow.db)")
            common.add_argument("--tracking-uri", default=None,
                                help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite in results)")
            common.add_argument("--rule", default=None, help="rule name tagged on the MLflow run (default: stage)")
            common.add_argument("--wildcards", default="", type=_wildcards,
                                help="comma-separated key=value wildcards tagged on the MLflow run")
            common.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
        p.set_defaults(_module=module)
    return parser


def main(argv=None) -> int:

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no tqdm bars in job logs
    args = build_parser().parse_args(argv)
    stage = args.stage
    if stage == "launch":
        return args._module.run_launch(args)
    if stage == "tracking-replay":
        return args._module.run_replay(args)
    if stage == "status":
        return args._module.run_status(args)
    if stage == "prefetch":
        return args._module.run_prefetch(args)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format=f"%(asctime)s {stage} %(levelname)s %(message)s", datefmt="%H:%M:%S")

    rank0 = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))) == 0
    try:
        check_settings(args, getattr(args._module, "SETTINGS", {}))  # ranges and choices, from the schema
        check_stage_args(stage, args)  # what holds between fields (heads | hidden size, seed range, ...)
        with StageRun(args.rule or stage, results_dir=args.results_dir, tracking_uri=args.tracking_uri,
                      wildcards=args.wildcards, enabled=rank0) as tracker:
            args._module.run(args, tracker)
    except UserError as exc:
        if not getattr(exc, "quiet", False):  # quiet: another rank of the same run reports it (trainer.raise_together)
            print(f"electra-ds {stage}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
