"""The results layout (electra_ds/common/layout.py): every path under results_dir, spelled as the rules always
spelled them. A change here changes where a user's results are: these strings are the contract."""

from __future__ import annotations

from pathlib import Path

import pytest

from electra_ds.common.layout import Layout
from electra_ds.common.lock import ResultsLock


def test_each_path_of_one_job_is_spelled_as_the_rules_always_spelled_it():
    layout = Layout("r")
    assert layout.corpus_docs == "r/corpus/documents.jsonl"
    assert layout.corpus_stats == "r/corpus/stats.json"
    assert layout.dedup_part_docs("00002") == "r/dedup/parts/documents-00002.jsonl"
    assert layout.dedup_part_signatures("00002") == "r/dedup/parts/signatures-00002"
    assert layout.dedup_docs == "r/dedup/documents.jsonl"
    assert layout.dedup_stats == "r/dedup/stats.json"
    assert layout.vocab == "r/vocab"
    assert layout.vocab_stats == "r/vocab/vocab_stats.json"
    assert layout.shards == "r/shards"
    assert layout.shards_index == "r/shards/index.json"
    assert layout.probes == "r/probes"
    assert layout.probes_stats == "r/probes/probes.json"
    assert layout.prefetch_marker == "r/prefetch/datasets.json"
    assert layout.pretrain_dir("mlm") == "r/pretrain/mlm"
    assert layout.pretrain_summary("mlm") == "r/pretrain/mlm/summary.json"
    assert layout.train_log("mlm") == "r/pretrain/mlm/train_log.jsonl"
    assert layout.checkpoints("mlm") == "r/pretrain/mlm/checkpoints"
    assert layout.export_dir("mlm") == "r/export/mlm"
    assert layout.export_discriminator("mlm") == "r/export/mlm/discriminator"
    assert layout.export_scratch_record("mlm") == "r/export/mlm/scratch.json"
    assert layout.push_record("mlm") == "r/export/mlm.hub.json"
    assert layout.finetune_model_dir("mlm") == "r/finetune/mlm"
    assert layout.finetune_dir("mlm", "rte", 3) == "r/finetune/mlm/rte/seed3"
    assert layout.finetune_metrics("mlm", "rte", 3) == "r/finetune/mlm/rte/seed3/metrics.json"
    assert layout.finetune_predictions("mlm", "rte", 3) == "r/finetune/mlm/rte/seed3/test_predictions.tsv"
    assert layout.finetune_kept_model("mlm", "mnli", 3) == "r/finetune/mlm/mnli/seed3/model"
    assert layout.linear_probe("mlm") == "r/linear_probe/mlm.json"
    assert layout.evaluate_json == "r/evaluate/results.json"
    assert layout.evaluate_md == "r/evaluate/results.md"
    assert layout.evaluate_html == "r/evaluate/results.html"
    assert layout.loss_plot == "r/evaluate/pretrain_loss.png"
    assert layout.scores_plot == "r/evaluate/task_scores.png"
    assert layout.epochs_plot == "r/evaluate/finetune_epochs.png"
    assert layout.submission_zip == "r/evaluate/glue_submission.zip"
    assert layout.logs == "r/logs"
    assert layout.benchmarks == "r/benchmarks"
    assert layout.log("corpus") == "r/logs/corpus.log"
    assert layout.benchmark("corpus") == "r/benchmarks/corpus.tsv"
    assert layout.log("pretrain", "mlm") == "r/logs/pretrain/mlm.log"
    assert layout.benchmark("pretrain", "mlm") == "r/benchmarks/pretrain/mlm.tsv"
    job = layout.finetune_job("mlm", "rte", 3)
    assert layout.log("finetune", job) == "r/logs/finetune/mlm/rte-seed3.log"
    assert layout.benchmark("finetune", job) == "r/benchmarks/finetune/mlm/rte-seed3.tsv"
    assert layout.mlflow_db == "r/mlflow.db"
    assert layout.spool == "r/mlflow-spool"
    assert layout.lock == "r/.electra-ds.lock"


def test_with_nothing_given_a_path_is_the_rules_pattern_with_the_snakemake_wildcards():
    layout = Layout("r")
    assert layout.dedup_part_docs() == "r/dedup/parts/documents-{part}.jsonl"
    assert layout.dedup_part_signatures() == "r/dedup/parts/signatures-{part}"
    assert layout.pretrain_summary() == "r/pretrain/{model}/summary.json"
    assert layout.train_log() == "r/pretrain/{model}/train_log.jsonl"
    assert layout.export_dir() == "r/export/{model}"
    assert layout.push_record() == "r/export/{model}.hub.json"
    assert layout.finetune_metrics() == "r/finetune/{model}/{task}/seed{seed}/metrics.json"
    assert layout.finetune_predictions() == "r/finetune/{model}/{task}/seed{seed}/test_predictions.tsv"
    assert layout.linear_probe() == "r/linear_probe/{model}.json"
    assert layout.log("finetune", layout.finetune_job()) == "r/logs/finetune/{model}/{task}-seed{seed}.log"


@pytest.mark.parametrize("results_dir, corpus", [("results/demo/", "results/demo/corpus/documents.jsonl"),
                                                 (Path("/data/run 1"), "/data/run 1/corpus/documents.jsonl"),
                                                 ("./results", "./results/corpus/documents.jsonl")])
def test_results_dir_is_joined_as_given(results_dir, corpus):
    """A trailing slash is dropped (as `results_dir.rstrip("/")` always did); nothing else is normalised."""
    assert Layout(results_dir).corpus_docs == corpus


def test_the_names_other_modules_write_agree_with_the_layout(tmp_path, monkeypatch):
    """The MLflow store, its artifacts, the spool and the lock are found by tracking and common/lock: same places."""
    from electra_ds import tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    layout = Layout(tmp_path)
    assert tracking.tracking_uri_for(tmp_path) == f"sqlite:///{Path(layout.mlflow_db).resolve()}"
    assert tracking.spool_dir_for(tmp_path) == Path(layout.spool)  # where tracking-replay looks by default
    assert tracking.artifact_root_for(tmp_path) == Path(layout.mlartifacts).resolve().as_uri()
    assert ResultsLock(tmp_path).path == Path(layout.lock)
