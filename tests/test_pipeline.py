"""The whole DAG through Snakemake on a micro config, and bad input stopping it cleanly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, micro_config

# these tests run Snakemake in the checkout (its .snakemake folder): `make test` runs them alone, one at a time
pytestmark = pytest.mark.workflow

STAGES = ["corpus", "dedup", "vocab", "shards", "probes", "pretrain", "export", "finetune", "evaluate"]


def snakemake(configfile, results, extra=(), env_extra=None, timeout=600):
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "ELECTRA_DS_MLFLOW": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **(env_extra or {})}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", str(configfile),
           "--config", f"results_dir={results}", *extra]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.slow
def test_whole_dag_on_micro_config(tmp_path):
    from mlflow.tracking import MlflowClient
    from transformers import AutoModelForMaskedLM, AutoModelForPreTraining, AutoTokenizer

    results = tmp_path / "results"
    config = micro_config(tmp_path, models={"electra": {}, "scratch": {"source": "scratch"}})
    res = snakemake(config, results)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]

    # Every stage's outputs, log and benchmark.
    docs = [json.loads(line) for line in (results / "dedup/documents.jsonl").read_text().splitlines()]
    assert len(docs) > 1000 and all(d["id"] and d["text"] for d in docs)
    assert json.loads((results / "dedup/stats.json").read_text())["documents_out"] == len(docs)
    tok = AutoTokenizer.from_pretrained(results / "vocab")
    assert tok.is_fast and len(tok) == 1500 and tok.convert_tokens_to_ids("[MASK]") == 4
    index = json.loads((results / "shards/index.json").read_text())
    assert index["max_seq_len"] == 64 and index["splits"]["train"]["examples"] > 0
    for task in ("probe-acceptability", "probe-adjacency"):
        assert (results / "probes" / task / "train.tsv").stat().st_size > 0
    summary = json.loads((results / "pretrain/electra/summary.json").read_text())
    assert summary["steps"] == 8 and summary["world_size"] == 2 and summary["zero_stage"] == 2
    assert summary["flops"] > 0 and {"rtd_gain", "disc_auc", "base_entropy"} <= set(summary["final_valid"])
    assert not (results / "pretrain/scratch").exists()  # the scratch baseline is never pretrained
    for model in ("electra", "scratch"):
        assert AutoModelForPreTraining.from_pretrained(results / f"export/{model}/discriminator").config.hidden_size == 32
        assert AutoModelForMaskedLM.from_pretrained(results / f"export/{model}/generator").config.hidden_size == 8
        for task in ("probe-acceptability", "probe-adjacency"):
            metrics = json.loads((results / f"finetune/{model}/{task}/seed1/metrics.json").read_text())
            assert metrics["task"] == task and -1.0 <= metrics["main"] <= 1.0 and metrics["model"] == model
            assert (results / f"finetune/{model}/{task}/seed1/test_predictions.tsv").read_text().startswith(
                "index\tprediction")
    table = json.loads((results / "evaluate/results.json").read_text())
    assert set(table["tasks"]) == {"probe-acceptability", "probe-adjacency"}
    assert list(table["models"]) == ["electra", "scratch"] and table["primary_model"] == "electra"
    assert table["models"]["scratch"]["source"] == "scratch"
    md = (results / "evaluate/results.md").read_text()
    assert "probe" in md.lower() and "GLUE score" not in md and "Models side by side" in md
    # the frozen probe (linear_probe rule): one job per model, on the offline probe tasks, in the report
    for model in ("electra", "scratch"):
        probe = json.loads((results / f"linear_probe/{model}.json").read_text())
        assert set(probe["tasks"]) == {"probe-acceptability", "probe-adjacency"} and len(probe["layers"]) == 2
    assert "# Frozen probe" in md and set(table["linear_probe"]["models"]) == {"electra", "scratch"}
    assert len(list((results / "logs").rglob("*.log"))) == 15
    assert len(list((results / "benchmarks").rglob("*.tsv"))) == 15

    # MLflow: one parent run for the invocation, one child per job, tagged.
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name("electra-ds-micro")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("electra_ds.kind") == "pipeline"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(r.data.tags["electra_ds.rule"] for r in children) == sorted(
        STAGES + ["export"] + ["finetune"] * 3 + ["linear_probe"] * 2)
    # one top-level run per model, with its headline figures, for the runs table and the compare view
    model_runs = {r.data.tags["electra_ds.model"]: r for r in runs if r.data.tags.get("electra_ds.kind") == "model"}
    assert set(model_runs) == {"electra", "scratch"} and len(runs) == 1 + 15 + 2  # pipeline, jobs, models
    assert "mlflow.parentRunId" not in model_runs["electra"].data.tags
    assert {"probe_score", "pretrain.flops", "pretrain.valid.rtd_gain", "wall_seconds"} <= set(
        model_runs["electra"].data.metrics)
    assert model_runs["electra"].data.params["objective"] == "electra"
    assert model_runs["scratch"].data.params["source"] == "scratch"
    assert "probe_score" in parents[0].data.metrics  # the invocation's run carries the primary model's scores
    assert client.get_experiment(exp.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    config_hash = parents[0].data.tags["electra_ds.config_hash"]
    for r in children:
        assert r.info.status == "FINISHED"
        assert r.data.tags["electra_ds.config_hash"] == config_hash == r.data.tags["electra_ds.study"]
        assert r.data.tags["electra_ds.git_commit"]
    by_rule = {r.data.tags["electra_ds.rule"]: r for r in children}
    assert by_rule["corpus"].data.metrics["documents_out"] > 0
    assert {"train/loss", "train/gen_acc", "train/disc_acc", "train/lr", "train/tokens_per_s", "train/rtd_gain",
            "train/disc_auc", "valid/rtd_gain"} <= set(by_rule["pretrain"].data.metrics)
    assert any(r.data.tags.get("wildcard.task") == "probe-adjacency" for r in children)

    # A second invocation is a no-op for Snakemake (nothing to do), and creates no new runs.
    again = snakemake(config, results)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


def test_config_violating_the_schema_names_the_field(tmp_path):
    res = snakemake(micro_config(tmp_path, **{"pretrain.precision": "fp8"}), tmp_path / "results", extra=["-n"])
    assert res.returncode != 0
    assert "config field 'pretrain.precision': 'fp8' is not one of" in res.stdout + res.stderr
    assert not (tmp_path / "results").exists()


def test_vocab_threads_come_from_the_config_not_the_cores(tmp_path):
    # sentencepiece trains a different model with another thread count: --cores must not change it
    res = snakemake(micro_config(tmp_path, **{"vocab.threads": 3}), tmp_path / "results",
                    extra=["-n", "-p", "--cores", "1"])
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout + res.stderr
    (vocab,) = [line for line in out.splitlines() if line.startswith("Shell command: electra-ds vocab ")]
    assert "--threads 3 " in vocab
    (shards,) = [line for line in out.splitlines() if line.startswith("Shell command: electra-ds shards ")]
    assert "--threads 1 " in shards  # the shards' bytes do not depend on their worker count (test_shards)


def test_unknown_config_field_is_rejected(tmp_path):
    res = snakemake(micro_config(tmp_path, **{"pretrain.max_step": 5}), tmp_path / "results", extra=["-n"])
    assert res.returncode != 0 and "max_step" in res.stdout + res.stderr


def test_missing_corpus_path_stops_the_pipeline_with_one_clear_line(tmp_path):
    cfg = micro_config(tmp_path, **{"corpus.sources": [{"type": "local", "paths": [str(tmp_path / "nope/*.txt")]}]})
    results = tmp_path / "results"
    res = snakemake(cfg, results, extra=["--until", "corpus"])
    assert res.returncode != 0
    assert (results / "logs/corpus.log").exists(), res.stdout[-3000:] + res.stderr[-3000:]
    log = (results / "logs/corpus.log").read_text()
    assert "electra-ds corpus: error:" in log and "nope/*.txt" in log and "Traceback" not in log
    assert not (results / "corpus/documents.jsonl").exists()


@pytest.mark.slow
def test_dedup_split_into_scatter_and_gather_jobs_equals_one_job(tmp_path):
    outputs = {}
    for parts in (1, 3):
        results = tmp_path / f"parts{parts}"
        res = snakemake(micro_config(tmp_path, **{"dedup.parts": parts}), results, extra=["--until", "dedup"],
                        env_extra={"ELECTRA_DS_MLFLOW": "0"})
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        outputs[parts] = results
    assert len(list((outputs[3] / "dedup/parts").glob("signatures-*"))) == 3  # three signing jobs ran
    assert (outputs[1] / "dedup/documents.jsonl").read_bytes() == (outputs[3] / "dedup/documents.jsonl").read_bytes()
    one, three = (json.loads((outputs[p] / "dedup/stats.json").read_text()) for p in (1, 3))
    assert one["documents_out"] == three["documents_out"] and one["documents_out"] > 1000
