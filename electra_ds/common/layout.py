"""Every path under ``results_dir``, named once: the workflow's rules, ``electra-ds status``, ``evaluate`` and the
tests take them from here, so the results layout is written down in one place.

``Layout(results_dir)`` joins each path to the results directory with ``/`` as written (``results/demo`` gives
``results/demo/corpus/documents.jsonl``; nothing is normalised, so the rules see the strings they always saw).
A path of one job (a model, a task, a seed, a dedup part) leaves each argument not given as its Snakemake
wildcard: ``Layout(r).pretrain_summary()`` is ``r/pretrain/{model}/summary.json``, the rule's output pattern,
and ``Layout(r).pretrain_summary("electra")`` the file of one model.

::

    corpus/documents.jsonl, stats.json                     dedup/documents.jsonl, stats.json
    dedup/parts/documents-<part>.jsonl, signatures-<part>/ (dedup.parts > 1)
    vocab/ (vocab_stats.json)   shards/ (index.json)   probes/ (probes.json)   prefetch/datasets.json
    pretrain/<model>/summary.json, train_log.jsonl, checkpoints/ (not a declared output: a rerun resumes)
    export/<model>/ (discriminator/, generator/, scratch.json for the scratch baseline), export/<model>.hub.json
    finetune/<model>/<task>/seed<seed>/metrics.json, test_predictions.tsv, model/ (kept for MNLI init)
    linear_probe/<model>.json
    evaluate/results.json, results.md, results.html, pretrain_loss.png, task_scores.png, finetune_epochs.png,
             glue_submission.zip
    logs/<rule>.log, logs/<rule>/<job>.log      benchmarks/<rule>.tsv, benchmarks/<rule>/<job>.tsv
    mlflow.db, mlflow-spool/, .electra-ds.lock
"""

from __future__ import annotations

import os

from electra_ds.common.lock import LOCK_NAME

# Names inside a pretraining run's folder (the pretrain stage's --output-dir), which evaluate reads too.
PRETRAIN_SUMMARY = "summary.json"
TRAIN_LOG = "train_log.jsonl"
CHECKPOINTS = "checkpoints"
# The default MLflow store and the spool of records MLflow did not take (electra_ds.tracking uses these names).
MLFLOW_DB = "mlflow.db"
SPOOL_DIRNAME = "mlflow-spool"
MLARTIFACTS = "mlartifacts"  # the local store's artifacts (a tracking server keeps its own)


class Layout:
    """The paths of one results directory (strings, as the rules write them)."""

    def __init__(self, results_dir):
        self.root = os.fspath(results_dir).rstrip("/")

    def _path(self, *parts: str) -> str:
        return "/".join((self.root, *parts))

    # -- data stages ------------------------------------------------------------------------------------
    @property
    def corpus_docs(self) -> str:
        return self._path("corpus", "documents.jsonl")

    @property
    def corpus_stats(self) -> str:
        return self._path("corpus", "stats.json")

    def dedup_part_docs(self, part="{part}") -> str:
        """One contiguous part of the corpus (dedup.parts > 1: one signing job each)."""
        return self._path("dedup", "parts", f"documents-{part}.jsonl")

    def dedup_part_signatures(self, part="{part}") -> str:
        return self._path("dedup", "parts", f"signatures-{part}")

    @property
    def dedup_docs(self) -> str:
        return self._path("dedup", "documents.jsonl")

    @property
    def dedup_stats(self) -> str:
        return self._path("dedup", "stats.json")

    @property
    def vocab(self) -> str:
        return self._path("vocab")

    @property
    def vocab_stats(self) -> str:
        return self._path("vocab", "vocab_stats.json")

    @property
    def shards(self) -> str:
        return self._path("shards")

    @property
    def shards_index(self) -> str:
        return self._path("shards", "index.json")

    @property
    def probes(self) -> str:
        return self._path("probes")

    @property
    def probes_stats(self) -> str:
        return self._path("probes", "probes.json")

    @property
    def prefetch_marker(self) -> str:
        """Written by the Hub prefetch (workflow/rules/hub.smk): the jobs reading the Hub wait for it."""
        return self._path("prefetch", "datasets.json")

    # -- pretraining and export -----------------------------------------------------------------------------
    def pretrain_dir(self, model="{model}") -> str:
        return self._path("pretrain", model)

    def pretrain_summary(self, model="{model}") -> str:
        return self._path("pretrain", model, PRETRAIN_SUMMARY)

    def train_log(self, model="{model}") -> str:
        return self._path("pretrain", model, TRAIN_LOG)

    def checkpoints(self, model="{model}") -> str:
        return self._path("pretrain", model, CHECKPOINTS)

    def export_dir(self, model="{model}") -> str:
        return self._path("export", model)

    def export_discriminator(self, model="{model}") -> str:
        """The Hugging Face discriminator of an export: what fine-tuning and the linear probe load."""
        return self._path("export", model, "discriminator")

    def export_scratch_record(self, model="{model}") -> str:
        """Present in the export of a scratch model (random weights, no pretraining)."""
        return self._path("export", model, "scratch.json")

    def push_record(self, model="{model}") -> str:
        """What the upload of an export to the Hub wrote (export.push_to_hub)."""
        return self._path("export", f"{model}.hub.json")

    # -- fine-tuning and evaluation ---------------------------------------------------------------------------
    def finetune_model_dir(self, model="{model}") -> str:
        """Every fine-tuning job of one model is under this folder."""
        return self._path("finetune", model)

    def finetune_dir(self, model="{model}", task="{task}", seed="{seed}") -> str:
        """One fine-tuning job's folder (the stage's --output-dir)."""
        return self._path("finetune", model, task, f"seed{seed}")

    def finetune_metrics(self, model="{model}", task="{task}", seed="{seed}") -> str:
        return self._path("finetune", model, task, f"seed{seed}", "metrics.json")

    def finetune_predictions(self, model="{model}", task="{task}", seed="{seed}") -> str:
        return self._path("finetune", model, task, f"seed{seed}", "test_predictions.tsv")

    def finetune_kept_model(self, model="{model}", task="{task}", seed="{seed}") -> str:
        """The fine-tuned weights a job keeps (--keep-model), e.g. MNLI's for the tasks started from it."""
        return self._path("finetune", model, task, f"seed{seed}", "model")

    def linear_probe(self, model="{model}") -> str:
        return self._path("linear_probe", f"{model}.json")

    @property
    def evaluate_json(self) -> str:
        return self._path("evaluate", "results.json")

    @property
    def evaluate_md(self) -> str:
        return self._path("evaluate", "results.md")

    @property
    def evaluate_html(self) -> str:
        return self._path("evaluate", "results.html")

    @property
    def loss_plot(self) -> str:
        return self._path("evaluate", "pretrain_loss.png")

    @property
    def scores_plot(self) -> str:
        return self._path("evaluate", "task_scores.png")

    @property
    def epochs_plot(self) -> str:
        return self._path("evaluate", "finetune_epochs.png")

    @property
    def submission_zip(self) -> str:
        return self._path("evaluate", "glue_submission.zip")

    # -- logs, benchmarks and the pipeline's own files ---------------------------------------------------------
    @property
    def logs(self) -> str:
        return self._path("logs")

    @property
    def benchmarks(self) -> str:
        return self._path("benchmarks")

    def log(self, rule: str, job: str | None = None) -> str:
        """A job's log: ``logs/<rule>.log`` for a rule of one job, ``logs/<rule>/<job>.log`` for one job of many."""
        return self._path("logs", f"{rule}.log" if job is None else f"{rule}/{job}.log")

    def benchmark(self, rule: str, job: str | None = None) -> str:
        """A job's Snakemake benchmark, named as its log (``.tsv``)."""
        return self._path("benchmarks", f"{rule}.tsv" if job is None else f"{rule}/{job}.tsv")

    @staticmethod
    def finetune_job(model="{model}", task="{task}", seed="{seed}") -> str:
        """A fine-tuning job's name under logs/finetune and benchmarks/finetune."""
        return f"{model}/{task}-seed{seed}"

    @property
    def mlflow_db(self) -> str:
        return self._path(MLFLOW_DB)

    @property
    def spool(self) -> str:
        return self._path(SPOOL_DIRNAME)

    @property
    def mlartifacts(self) -> str:
        return self._path(MLARTIFACTS)

    @property
    def lock(self) -> str:
        """Held while a pipeline runs on this results directory (electra_ds/common/lock.py)."""
        return self._path(LOCK_NAME)
