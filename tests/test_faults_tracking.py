"""Tracking never blocks work: a dead, silent or broken MLflow store costs one bounded wait and one warning
line per process, the records go to a JSONL spool, and ``electra-ds tracking-replay`` sends them later."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from electra_ds import tracking
from electra_ds.tracking.store import MLFLOW_QUIET

BOUND_S = 20  # the call deadline is 15 s; a little slack for a loaded machine


@pytest.fixture()
def tracked(monkeypatch):
    """Tracking on, MLflow's HTTP settings as a user would have them (unset), a clean failure state."""
    monkeypatch.setenv("ELECTRA_DS_MLFLOW", "1")
    for name in ("MLFLOW_TRACKING_URI", tracking.ENV_PARENT, tracking.ENV_SPOOL, tracking.ENV_TIMEOUT,
                 tracking.ENV_EXPERIMENT, tracking.ENV_CONFIG_HASH, *tracking.HTTP_LIMITS, *MLFLOW_QUIET):
        monkeypatch.setenv(name, "x")  # so that monkeypatch removes what tracking sets in os.environ
        monkeypatch.delenv(name)
    monkeypatch.setenv(tracking.ENV_GIT_COMMIT, "deadbeef")
    monkeypatch.setenv(tracking.ENV_EXPERIMENT, "faults")
    tracking.reset()
    yield monkeypatch
    tracking.reset()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def dead_uri():
    return f"http://127.0.0.1:{_free_port()}"


@pytest.fixture()
def silent_uri():
    """A server that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    stop, held = threading.Event(), []

    def serve():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                held.append(conn)
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(2)
    for conn in held:
        conn.close()
    server.close()


def _warnings(caplog) -> list:
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]


def _lifecycle(uri, results_dir, wildcards=None, steps=3):
    parent = tracking.start_pipeline_run(uri, "faults", tracking.artifact_root_for(results_dir), "pipeline-x",
                                         tags={"electra_ds.config_hash": "cafe",
                                               "electra_ds.results_dir": str(results_dir)},
                                         params={"config": json.dumps({"a": 1})})
    os.environ[tracking.ENV_PARENT] = parent
    with tracking.StageRun("finetune", results_dir=results_dir, tracking_uri=uri,
                           wildcards=wildcards or {"task": "cola", "seed": 1}) as run:
        run.log_params({"lr": 0.1, "model": {"layers": 2}})
        for step in range(steps):
            run.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
        run.set_tags({"note": "offline"})
        stats = Path(results_dir) / "stats.json"  # an artifact under the results directory, as a stage's are
        stats.write_text('{"documents": 3}')
        run.log_artifact(stats)
        run.log_model_runs({"small": ({"layers": 2}, {"glue": 0.5})})
    tracking.end_pipeline_run(uri, parent, ok=True)
    return parent, run


def _spooled(results_dir) -> list:
    return [json.loads(line) for path in sorted((results_dir / "mlflow-spool").glob("*.jsonl"))
            for line in path.read_text().splitlines()]


def test_dead_server_costs_one_short_wait_and_one_warning(tracked, dead_uri, tmp_path, caplog, capfd):
    start = time.monotonic()
    with caplog.at_level("WARNING"):
        parent, run = _lifecycle(dead_uri, tmp_path)
    elapsed = time.monotonic() - start
    assert elapsed < BOUND_S, elapsed
    assert len(_warnings(caplog)) == 1, _warnings(caplog)
    assert "tracking-replay" in _warnings(caplog)[0]
    assert "Traceback" not in capfd.readouterr().err
    assert parent.startswith(tracking.LOCAL_PREFIX) and run.run_id.startswith(tracking.LOCAL_PREFIX)
    ops = [(r["op"], r["run"]) for r in _spooled(tmp_path)]
    for op in ("run", "params", "terminated"):
        assert (op, parent) in ops and (op, run.run_id) in ops
    assert [r["metrics"][0][3] for r in _spooled(tmp_path) if r["op"] == "metrics"] == [0, 1, 2]
    assert {op for op, _ in ops} >= {"tags", "artifact", "model_runs"}


def test_silent_server_is_bounded_and_later_calls_do_not_wait(tracked, silent_uri, tmp_path, caplog):
    start = time.monotonic()
    with caplog.at_level("WARNING"):
        with tracking.StageRun("pretrain", results_dir=tmp_path, tracking_uri=silent_uri) as run:
            entered = time.monotonic()
            for step in range(20):
                run.log_metrics({"loss": 1.0}, step=step)
            run.log_params({"lr": 0.1})
            logged = time.monotonic()
    assert entered - start < BOUND_S, entered - start
    assert logged - entered < 1.0, logged - entered  # offline: straight to the spool
    assert len(_warnings(caplog)) == 1, _warnings(caplog)
    assert sum(r["op"] == "metrics" for r in _spooled(tmp_path)) == 20


def test_deadline_bounds_a_call_even_with_long_mlflow_timeouts(tracked, silent_uri, tmp_path):
    tracked.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "120")  # as a user might set it
    tracked.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "5")
    tracked.setenv(tracking.ENV_TIMEOUT, "2")
    start = time.monotonic()
    with tracking.StageRun("pretrain", results_dir=tmp_path, tracking_uri=silent_uri) as run:
        run.log_metrics({"loss": 1.0}, step=1)
    assert time.monotonic() - start < 6
    assert run.offline and run.spool_path.is_file()


def test_replay_recreates_runs_with_nesting_once(tracked, dead_uri, tmp_path):
    from mlflow.tracking import MlflowClient

    from electra_ds.cli import main

    parent, run = _lifecycle(dead_uri, tmp_path, steps=4)
    # a stage that reached the store while its pipeline parent was only spooled
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.reset()
    os.environ[tracking.ENV_PARENT] = parent
    with tracking.StageRun("evaluate", results_dir=tmp_path, tracking_uri=store) as live:
        live.log_metrics({"score": 0.7})
    assert not live.offline

    summary = tracking.replay(tmp_path, store)
    assert summary["files"] == 2 and summary["pending"] == 0 and summary["runs_created"] == 2
    client = MlflowClient(store)
    exp = client.get_experiment_by_name("faults")
    pipeline = client.search_runs([exp.experiment_id], "tags.`electra_ds.kind` = 'pipeline'")
    assert len(pipeline) == 1 and pipeline[0].info.status == "FINISHED"
    parent_id = pipeline[0].info.run_id
    assert pipeline[0].data.params["config"] == json.dumps({"a": 1})
    assert pipeline[0].data.metrics["glue"] == 0.5  # the primary model's share of log_model_runs
    stages = client.search_runs([exp.experiment_id], "tags.`electra_ds.kind` = 'stage'")
    by_rule = {r.data.tags["electra_ds.rule"]: r for r in stages}
    assert set(by_rule) == {"finetune", "evaluate"}
    for r in by_rule.values():
        assert r.data.tags["mlflow.parentRunId"] == parent_id
        assert "electra_ds.spooled_parent" not in r.data.tags
    ft = by_rule["finetune"]
    assert ft.info.status == "FINISHED" and ft.info.run_name == "finetune-cola-1"
    assert ft.data.params == {"lr": "0.1", "model.layers": "2"} and ft.data.tags["note"] == "offline"
    history = client.get_metric_history(ft.info.run_id, "loss")
    assert sorted(m.step for m in history) == [0, 1, 2, 3]
    assert [a.path for a in client.list_artifacts(ft.info.run_id)] == ["stats.json"]
    models = client.search_runs([exp.experiment_id], "tags.`electra_ds.kind` = 'model'")
    assert [m.data.metrics for m in models] == [{"glue": 0.5}]

    # twice: nothing is added
    assert main(["tracking-replay", str(tmp_path), "--tracking-uri", store]) == 0
    assert not list((tmp_path / "mlflow-spool").glob("*.jsonl"))
    again = client.search_runs([exp.experiment_id], "")
    assert len(again) == 4  # pipeline, finetune, evaluate, model
    assert len(client.get_metric_history(ft.info.run_id, "loss")) == 4


def test_store_that_fails_mid_run_spools_the_rest_and_replays_into_the_same_run(tracked, tmp_path):
    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with tracking.StageRun("pretrain", results_dir=tmp_path, tracking_uri=store) as run:
        run.log_metrics({"loss": 2.0}, step=0)
        tracking._degraded.add(store)  # as after a failed call
        run.log_metrics({"loss": 1.0}, step=1)
    tracking.reset()
    assert tracking.replay(tmp_path, store)["runs_created"] == 0
    client = MlflowClient(store)
    assert sorted(m.step for m in client.get_metric_history(run.run_id, "loss")) == [0, 1]
    assert client.get_run(run.run_id).info.status == "FINISHED"


STAGE_SCRIPT = """
import sys
from electra_ds.tracking import StageRun
with StageRun("finetune", results_dir=sys.argv[1], wildcards={"task": "cola"}) as run:
    run.log_params({"lr": 0.1})
    for step in range(5):
        run.log_metrics({"loss": 1.0}, step=step)
print("WORK DONE", run.offline)
"""


def _run_stage(results_dir):
    env = {**os.environ, "ELECTRA_DS_MLFLOW": "1"}
    return subprocess.run([sys.executable, "-c", STAGE_SCRIPT, str(results_dir)], capture_output=True, text=True,
                          env=env, timeout=120)


@pytest.mark.parametrize("fault", ["corrupt", "read-only"])
def test_broken_sqlite_store_gives_one_warning_line(tracked, tmp_path, fault):
    db = tmp_path / "mlflow.db"
    if fault == "corrupt":
        db.write_bytes(os.urandom(4096))
    else:
        if os.geteuid() == 0:
            pytest.skip("running as root: file permissions do not stop root from writing mlflow.db")
        db.write_bytes(b"")
        db.chmod(0o444)
    start = time.monotonic()
    out = _run_stage(tmp_path)
    assert time.monotonic() - start < 60
    assert out.returncode == 0 and "WORK DONE True" in out.stdout, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("MLflow:"), out.stderr
    assert "Traceback" not in out.stderr
    assert len(_spooled(tmp_path)) == 1 + 1 + 5 + 1  # run, params, metrics, terminated


# ---- a real tracking server that dies and returns ------------------------------------------------------

def _wait_for(what, check, proc, timeout=300):
    """Poll check() until it is true; fail when the job ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        assert proc.poll() is None, f"the job ended before {what}"
        time.sleep(0.1)
    raise AssertionError(f"no {what} within {timeout} s")


def _stage_runs(client, rule):
    exp = client.get_experiment_by_name("server-faults")
    return client.search_runs([exp.experiment_id], f"tags.`electra_ds.rule` = '{rule}'") if exp else []


def _job(args, results, server, log):
    env = {**os.environ, "ELECTRA_DS_MLFLOW": "1", "MLFLOW_TRACKING_URI": server.url, "DS_ACCELERATOR": "cpu",
           tracking.ENV_EXPERIMENT: "server-faults", tracking.ENV_PARENT: "", tracking.ENV_CONFIG_HASH: "faults"}
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "electra_ds", *map(str, args), "--results-dir", str(results)],
                                stdout=out, stderr=subprocess.STDOUT, env=env)


def _finish(proc, log, killed_at):
    assert proc.wait(timeout=400) == 0, log.read_text()[-3000:]
    text = log.read_text()
    warnings = [line for line in text.splitlines() if "MLflow:" in line]
    assert len(warnings) == 1 and "tracking-replay" in warnings[0], warnings
    assert "Traceback" not in text
    return time.monotonic() - killed_at


def _histories(client, run_id):
    """Every metric of the run: key -> sorted [(step, value, timestamp)]."""
    return {key: sorted((m.step, m.value, m.timestamp) for m in client.get_metric_history(run_id, key))
            for key in client.get_run(run_id).data.metrics}


def _server_state(client, server):
    """What the server holds for the two jobs, as comparable values."""
    state = {}
    for rule in ("pretrain", "finetune"):
        [run] = _stage_runs(client, rule)
        state[rule] = {"id": run.info.run_id, "status": run.info.status, "params": run.data.params,
                       "metrics": _histories(client, run.info.run_id),
                       "artifacts": sorted(a.path for a in client.list_artifacts(run.info.run_id)),
                       "inputs": [(i.dataset.name, i.dataset.digest) for i in run.inputs.dataset_inputs]}
    state["stored_files"] = sorted(str(p.relative_to(server.artifacts)) for p in server.artifacts.rglob("*")
                                   if p.is_file())
    return state


@pytest.mark.slow  # about 60 s: a tiny pretraining and a fine-tuning job, two restarts of the server
def test_server_killed_mid_pretraining_and_mid_finetuning_then_replay_loses_and_doubles_nothing(
        tracked, mlflow_server, prepared, tmp_path):
    """SIGKILL of a real mlflow server (and its worker) in the middle of a pretraining run, then (restarted) in
    the middle of a fine-tuning job: both jobs end normally with one warning line each; after the server returns,
    tracking-replay leaves it holding every param, metric (the same count and values as the jobs' own logs) and
    artifact, and a second replay of the same spool changes nothing."""
    import hashlib
    import shutil

    from helpers_models import build_tiny_model_dir
    from test_faults_pretrain import args_for
    from test_finetune import _write_probes

    from electra_ds.cli import main

    server, client = mlflow_server, mlflow_server.client()
    results = tmp_path / "results"
    jobs = []
    try:
        # 1. pretraining: the server dies after the first logged steps
        out = results / "pretrain"
        pretrain = _job(args_for(prepared, out, steps=40, extra=("--checkpoint-every", "20")), results, server,
                        tmp_path / "pretrain.log")
        jobs.append(pretrain)
        _wait_for("logged training step", lambda: any("train/loss" in r.data.metrics
                                                       for r in _stage_runs(client, "pretrain")), pretrain)
        server.kill()
        killed = time.monotonic()
        assert _finish(pretrain, tmp_path / "pretrain.log", killed) < 120

        # 2. fine-tuning: the server is back, and dies once the job's run exists
        server.start()
        model = build_tiny_model_dir(tmp_path / "tiny", ["The cat sat on the mat.", "A dog barked at the moon."] * 20,
                                     vocab_size=120)
        _write_probes(tmp_path / "probes")
        ft_out = results / "finetune"
        finetune = _job(["finetune", "--model-dir", model, "--task", "probe-acceptability", "--seed", "1",
                         "--output-dir", ft_out, "--data-dir", tmp_path / "probes", "--epochs", "3", "--threads", "1",
                         "--max-length", "64"], results, server, tmp_path / "finetune.log")
        jobs.append(finetune)
        _wait_for("fine-tuning run", lambda: _stage_runs(client, "finetune"), finetune)
        server.kill()
        killed = time.monotonic()
        assert _finish(finetune, tmp_path / "finetune.log", killed) < 120

        spool = results / "mlflow-spool"
        pending = sorted(spool.glob("*.jsonl"))
        assert [p.name.split("-")[0] for p in pending] == ["finetune", "pretrain"]  # both jobs spooled something

        # 3. the server returns: replay, then replay the same records again
        server.start()
        keep = tmp_path / "spool-copy"
        shutil.copytree(spool, keep)
        assert main(["tracking-replay", str(results), "--tracking-uri", server.url]) == 0
        state = _server_state(client, server)
        for path in pending:  # as if the first replay had stopped before marking its files done
            shutil.copy(keep / path.name, path)
        assert main(["tracking-replay", str(results), "--tracking-uri", server.url]) == 0
        assert _server_state(client, server) == state
    finally:  # no job left behind; the session's server runs again for the tests after this one
        for job in jobs:
            if job.poll() is None:
                job.kill()
        if server.proc is None:
            server.start()

    # nothing lost: the jobs' own records, every one, and nothing else twice
    pre = state["pretrain"]
    assert pre["status"] == "FINISHED"
    expected = {}
    for rec in map(json.loads, (out / "train_log.jsonl").read_text().splitlines()):
        for key, value in rec.items():
            if key not in ("split", "step", "time") and isinstance(value, (int, float)) and not isinstance(value, bool):
                expected.setdefault(f"{rec['split']}/{key}", []).append((rec["step"], float(value)))
    assert len(expected["train/loss"]) == 40
    for key, points in expected.items():
        assert [(s, v) for s, v, _ in pre["metrics"][key]] == sorted(points), key
    for key, points in pre["metrics"].items():
        assert len({(s, t) for s, _, t in points}) == len(points), f"{key} logged twice"
    assert {k: pre["params"][k] for k in ("max_steps", "start_step", "learning_rate")} == \
        {"max_steps": "40", "start_step": "0", "learning_rate": "0.003"}
    index_sha = hashlib.sha256((prepared["shards"] / "index.json").read_bytes()).hexdigest()
    assert pre["inputs"] == [("shards", index_sha[:36])]

    ft = state["finetune"]
    metrics = json.loads((ft_out / "metrics.json").read_text())
    assert ft["status"] == "FINISHED"
    assert {k: ft["params"][k] for k in ("task", "seed", "epochs")} == \
        {"task": "probe-acceptability", "seed": "1", "epochs": "3"}
    assert [(s, v) for s, v, _ in ft["metrics"]["train_loss"]] == [(h["epoch"], h["train_loss"])
                                                                    for h in metrics["history"]]
    assert [v for _, v, _ in ft["metrics"]["main"]] == [metrics["main"]]
    assert ft["artifacts"] == ["metrics.json"]
    [stored] = [server.artifacts / p for p in state["stored_files"] if p.endswith("metrics.json")]
    assert stored.read_bytes() == (ft_out / "metrics.json").read_bytes()
    assert not (results / "mlartifacts").exists()
