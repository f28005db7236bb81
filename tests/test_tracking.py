"""MLflow tracking: child runs under one parent, concurrent writers, failures never raise; against a real
``mlflow server``: artifacts in the server's store, standard tags, the dataset input, the exported model (logged,
loaded back, registered) and system metrics."""

import multiprocessing as mp
import os
import time

import pytest

from electra_ds import tracking
from electra_ds.tracking.store import MLFLOW_QUIET


def _stage_job(uri, parent, i, n_steps):
    os.environ.update({"ELECTRA_DS_MLFLOW": "1", tracking.ENV_PARENT: parent, tracking.ENV_EXPERIMENT: "concurrency",
                       tracking.ENV_CONFIG_HASH: "abc123", tracking.ENV_GIT_COMMIT: "deadbeef"})
    with tracking.StageRun("finetune", tracking_uri=uri, wildcards={"task": f"t{i}", "seed": 1}) as run:
        run.log_params({"index": i, "nested": {"lr": 0.1}})
        for step in range(n_steps):
            run.log_metrics({"loss": 1.0 / (step + 1), "step_index": step}, step=step)


@pytest.fixture()
def sqlite_uri(tmp_path, monkeypatch):
    monkeypatch.setenv("ELECTRA_DS_MLFLOW", "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tracking.tracking_uri_for(tmp_path)


def test_parallel_jobs_log_to_one_sqlite_store_without_loss(sqlite_uri, tmp_path):
    from mlflow.tracking import MlflowClient

    parent = tracking.start_pipeline_run(sqlite_uri, "concurrency", tracking.artifact_root_for(tmp_path),
                                         "pipeline-test", tags={"electra_ds.config_hash": "abc123"})
    assert parent
    n_jobs, n_steps = 6, 40
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_stage_job, args=(sqlite_uri, parent, i, n_steps)) for i in range(n_jobs)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
        assert p.exitcode == 0
    tracking.end_pipeline_run(sqlite_uri, parent, ok=True)

    client = MlflowClient(sqlite_uri)
    exp = client.get_experiment_by_name("concurrency")
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert len(children) == n_jobs
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.tags["electra_ds.rule"] == "finetune"
        assert run.data.tags["electra_ds.config_hash"] == "abc123"
        assert run.data.tags["wildcard.task"].startswith("t")
        assert run.data.params["nested.lr"] == "0.1"
        history = client.get_metric_history(run.info.run_id, "loss")
        assert sorted(m.step for m in history) == list(range(n_steps))
    assert client.get_run(parent).info.status == "FINISHED"


def test_unreachable_tracking_server_warns_and_continues(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("ELECTRA_DS_MLFLOW", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    monkeypatch.delenv(tracking.ENV_PARENT, raising=False)
    tracking.reset()
    with caplog.at_level("WARNING", logger="electra_ds.tracking"):
        with tracking.StageRun("pretrain", results_dir=tmp_path, tracking_uri="http://127.0.0.1:9") as run:
            run.log_metrics({"loss": 1.0}, step=1)
            run.log_params({"a": 1})
            run.log_artifact(__file__)
            done = True
    tracking.reset()
    assert done
    assert [r.message for r in caplog.records if r.name == "electra_ds.tracking" and "MLflow" in r.message]
    assert run.spool_path.is_file()


def test_disabled_tracking_does_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("ELECTRA_DS_MLFLOW", "0")
    with tracking.StageRun("corpus", results_dir=tmp_path) as run:
        run.log_metrics({"x": 1})
    assert run.run_id is None and not (tmp_path / "mlflow.db").exists()


# ---- a real tracking server (mlflow server, started by the mlflow_server fixture) ------------------------

@pytest.fixture()
def to_server(mlflow_server, monkeypatch):
    """Tracking on, to the session's server (MLflow's own calls too), with what a pipeline would export unset."""
    monkeypatch.setenv("ELECTRA_DS_MLFLOW", "1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    for name in (tracking.ENV_PARENT, tracking.ENV_GIT_COMMIT, tracking.ENV_CONFIG_HASH, tracking.ENV_SYSTEM_METRICS,
                 "SLURM_JOB_ID", *tracking.HTTP_LIMITS, *MLFLOW_QUIET):
        monkeypatch.setenv(name, "x")  # so that monkeypatch removes what tracking sets in os.environ
        monkeypatch.delenv(name)
    monkeypatch.setenv(tracking.ENV_EXPERIMENT, "server")
    tracking.reset()
    yield mlflow_server
    tracking.reset()


def _fake_shards(folder):
    import json

    folder.mkdir(parents=True)
    (folder / "index.json").write_text(json.dumps({"max_seq_len": 64, "vocab_size": 300, "splits": {
        "train": {"examples": 40, "tokens": 2000, "documents": 7}, "valid": {"examples": 4, "tokens": 200}}}))
    return folder


def test_server_keeps_the_artifacts_and_gets_standard_tags_and_the_dataset_input(to_server, tmp_path):
    import getpass
    import hashlib
    import json
    import subprocess

    from helpers import REPO

    server = to_server
    assert tracking.artifact_root_for(tmp_path, server.url) is None
    assert tracking.artifact_root_for(tmp_path, "sqlite:///x.db") == (tmp_path / "mlartifacts").resolve().as_uri()
    shards = _fake_shards(tmp_path / "shards")
    with tracking.StageRun("pretrain", results_dir=tmp_path, tracking_uri=server.url) as run:
        run.log_input(tracking.shards_dataset(shards))
        run.log_artifact(shards / "index.json")
    assert not run.offline and not (tmp_path / "mlartifacts").exists()
    client = server.client()
    got = client.get_run(run.run_id)
    assert client.get_experiment(got.info.experiment_id).artifact_location.startswith("mlflow-artifacts:")
    stored = list(server.artifacts.rglob("index.json"))
    assert len(stored) == 1 and stored[0].read_bytes() == (shards / "index.json").read_bytes()

    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    tags = got.data.tags
    assert tags["mlflow.source.name"] == "electra-ds pretrain" and tags["mlflow.source.type"] == "LOCAL"
    assert tags["mlflow.user"] == getpass.getuser()
    assert tags["mlflow.source.git.commit"] == head and tags["electra_ds.git_commit"].startswith(head)

    [given] = got.inputs.dataset_inputs
    sha256 = hashlib.sha256((shards / "index.json").read_bytes()).hexdigest()
    assert given.dataset.name == "shards" and given.dataset.digest == sha256[:36]
    assert json.loads(given.dataset.source) == {"uri": str(shards.resolve())}
    profile = json.loads(given.dataset.profile)
    assert profile["sha256"] == sha256 and profile["train"] == {"examples": 40, "tokens": 2000, "documents": 7}
    assert [(t.key, t.value) for t in given.tags] == [("mlflow.data.context", "training")]


def test_export_logs_a_transformers_model_registers_it_and_replay_never_doubles_it(to_server, tmp_path,
                                                                                   monkeypatch):
    """The export's discriminator as an MLflow model (transformers flavor) that loads back, registered under the
    given name; with the server down the export does not wait, and the replay logs and registers it once."""
    import shutil

    import mlflow
    import torch
    from helpers import cli
    from helpers_mlflow import free_port
    from helpers_models import build_tiny_model_dir
    from mlflow.entities import LoggedModelStatus
    from test_pretrain import TINY
    from transformers import AutoModelForPreTraining

    server, client = to_server, to_server.client()
    vocab = build_tiny_model_dir(tmp_path / "tiny", ["The cat sat on the mat.", "A dog barked at the moon."] * 20,
                                 vocab_size=120)

    def export(out, uri):
        return cli("export", "--scratch", "--tokenizer-dir", vocab, "--output-dir", out, "--model", TINY,
                   "--registered-model-name", "electra-ds-test", "--results-dir", tmp_path, "--tracking-uri", uri)

    assert export(tmp_path / "export", server.url) == 0
    [run] = client.search_runs([client.get_experiment_by_name("server").experiment_id],
                               "tags.`electra_ds.rule` = 'export'")
    [model] = client.search_logged_models([run.info.experiment_id],
                                          filter_string=f"source_run_id = '{run.info.run_id}'")
    assert model.name == "discriminator" and model.status == LoggedModelStatus.READY
    info = mlflow.models.get_model_info(f"models:/{model.model_id}")
    flavor = info.flavors["transformers"]
    assert flavor["task"] == "feature-extraction" and flavor["pipeline_model_type"] == "ElectraForPreTraining"
    assert list(server.artifacts.rglob("MLmodel")) and not (tmp_path / "mlartifacts").exists()
    pipe = mlflow.transformers.load_model(f"models:/{model.model_id}")
    exported = AutoModelForPreTraining.from_pretrained(tmp_path / "export" / "discriminator")
    for name, tensor in exported.state_dict().items():
        assert torch.equal(pipe.model.state_dict()[name], tensor), name
    assert len(pipe("The cat sat.")[0]) > 2  # one replaced-token logit per token
    [version] = client.search_model_versions("name = 'electra-ds-test'")
    assert version.run_id == run.info.run_id and version.source == f"models:/{model.model_id}"

    # the server down: no wait, one spool; replayed (twice: as if the first had stopped before renaming) once
    tracking.reset()
    dead = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    assert export(tmp_path / "export2", dead) == 0
    assert time.monotonic() - start < 60  # the export itself, a few seconds; a dead server adds about one
    [spooled] = (tmp_path / "mlflow-spool").glob("export-*.jsonl")
    assert '"op": "model"' in spooled.read_text()
    keep = tmp_path / "spool-copy.jsonl"
    shutil.copy(spooled, keep)
    for _ in range(2):
        summary = tracking.replay(tmp_path, server.url)
        assert summary["pending"] == 0 and summary["skipped"] == 0
        shutil.copy(keep, spooled)
    runs = client.search_runs([run.info.experiment_id], "tags.`electra_ds.rule` = 'export'")
    assert len(runs) == 2
    models = client.search_logged_models([run.info.experiment_id], filter_string="name = 'discriminator'")
    assert [m.status for m in models] == [LoggedModelStatus.READY] * 2
    versions = client.search_model_versions("name = 'electra-ds-test'")
    assert sorted(v.version for v in versions) == ["1", "2"]


def test_system_metrics_when_switched_on(to_server, tmp_path, monkeypatch):
    server = to_server
    with tracking.StageRun("finetune", results_dir=tmp_path, tracking_uri=server.url) as quiet:
        time.sleep(0.5)
    monkeypatch.setenv(tracking.ENV_SYSTEM_METRICS, "true")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    with tracking.StageRun("finetune", results_dir=tmp_path, tracking_uri=server.url) as run:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "system/cpu_utilization_percentage" not in \
                server.client().get_run(run.run_id).data.metrics:
            time.sleep(0.2)
    client = server.client()
    assert not [k for k in client.get_run(quiet.run_id).data.metrics if k.startswith("system/")]
    metrics = client.get_run(run.run_id).data.metrics
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(metrics)
    assert 0 < metrics["system/system_memory_usage_megabytes"]
