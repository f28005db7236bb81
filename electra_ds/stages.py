"""The one table of ``electra-ds`` subcommands: each name, the module that implements it, and its help line.

The command line (``cli``), the workflow (``stage_args`` in ``workflow/rules/common.smk``) and the tests look a
stage's module up here. A pipeline stage's module provides ``add_arguments(parser)``, ``run(args, tracker)`` and
``SETTINGS`` (the config fields it takes as options); a tool command (``tracked=False``) provides
``add_arguments`` and its own entry point, and opens no MLflow run.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    module: str  # dotted module path
    help: str
    tracked: bool = True  # a pipeline stage: an MLflow run and the shared tracking options
    entry: str = "run"  # the function cli calls: run(args, tracker) for stages, <entry>(args) for tools


STAGES: dict[str, Stage] = {
    "corpus": Stage("electra_ds.data.corpus",
                    "Read the configured sources and write normalised UTF-8 documents (JSONL)."),
    "scatter": Stage("electra_ds.data.scatter",
                     "Split a documents JSONL into N contiguous parts (scatter step of a split dedup)."),
    "dedup": Stage("electra_ds.data.dedup", "Remove exact duplicates (normalised-text hash), then near-duplicates "
                                            "(MinHash LSH); report counts."),
    "vocab": Stage("electra_ds.data.vocab",
                   "Train a sentencepiece vocabulary with ELECTRA's special tokens; save a HF tokenizer dir."),
    "shards": Stage("electra_ds.data.shards",
                    "Tokenize documents and pack fixed-length examples into binary shards with an index."),
    "probes": Stage("electra_ds.data.probes",
                    "Derive offline probe tasks (GLUE TSV layout) from held-out documents."),
    "pretrain": Stage("electra_ds.pretraining.pretrain",
                      "Train ELECTRA (generator + discriminator) through DeepSpeed; write checkpoints."),
    "export": Stage("electra_ds.pretraining.export",
                    "Export the pretrained discriminator and generator in Hugging Face format."),
    "push": Stage("electra_ds.pretraining.push",
                  "Upload an exported model (discriminator at the repo root, generator under generator/, model "
                  "cards included) to the Hugging Face Hub."),
    "finetune": Stage("electra_ds.finetuning.finetune", "Fine-tune the exported discriminator on one task with "
                                                        "one seed; write metrics + predictions."),
    "linear-probe": Stage("electra_ds.finetuning.linear_probe",
                          "Frozen-feature linear probe of an exported model: per task and layer, dev accuracy of a "
                          "logistic regression on mean-pooled features."),
    "evaluate": Stage("electra_ds.finetuning.evaluate",
                      "Aggregate fine-tuning results into one table (JSON and Markdown)."),
    # tools: no MLflow run
    "launch": Stage("electra_ds.pretraining.distributed",
                    "Start a command on N processes: torchrun locally, srun inside a SLURM allocation.",
                    tracked=False, entry="run_launch"),
    "tracking-replay": Stage("electra_ds.tracking.replay", "Send MLflow records spooled while the tracking store "
                                                           "was down (<results-dir>/mlflow-spool).",
                             tracked=False, entry="run_replay"),
    "status": Stage("electra_ds.pipeline.status", "Where a run stands: stages done, pretraining "
                                                  "step/rate/ETA/checkpoint/metrics, fine-tuning jobs.",
                    tracked=False, entry="run_status"),
    "prefetch": Stage("electra_ds.pipeline.prefetch",
                      "Download the Hugging Face Hub datasets a config reads (corpus sources, GLUE) into the HF "
                      "cache, on a machine with internet, so that the jobs can read them offline.",
                      tracked=False, entry="run_prefetch"),
}


def module(stage: str):
    """The module that implements ``electra-ds <stage>``."""
    return importlib.import_module(STAGES[stage].module)
