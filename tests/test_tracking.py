"""MLflow tracking: child runs under one parent, concurrent writers, failures never raise."""

import multiprocessing as mp
import os

import pytest

from electra_ds import tracking


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
