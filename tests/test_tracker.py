"""The tracker interface (electra_ds/tracking/base.py): the stages call nothing but the Tracker protocol's methods,
MLflow's StageRun and the NullTracker both implement all of it, the command line gets its tracker from
open_tracker, a stage runs end to end on the NullTracker, and the earlier runs the evaluation report shows come
from the tracker."""

from __future__ import annotations

import inspect
import re

import pytest
from helpers import REPO

from electra_ds import tracking
from electra_ds.tracking import NullTracker, StageRun, Tracker, open_tracker

# the methods written in the protocol's body (typing adds __subclasshook__ and __init__ of its own)
PROTOCOL = {name: inspect.signature(fn) for name, fn in vars(Tracker).items()
            if inspect.isfunction(fn) and fn.__qualname__ == f"Tracker.{name}"}


def _arguments(signature) -> list:
    return [(p.name, p.default) for p in signature.parameters.values()]


def test_the_stages_call_only_the_protocol():
    called = {}
    for path in (REPO / "electra_ds").rglob("*.py"):
        if "tracking" not in path.relative_to(REPO / "electra_ds").parts:
            for name in re.findall(r"\btracker\.(\w+)", path.read_text()):
                called.setdefault(name, path.name)
    assert {"log_params", "log_metrics", "log_artifact", "earlier_runs", "log_model_runs"} <= set(called)  # the scan
    outside = {name: where for name, where in called.items() if name not in PROTOCOL}
    assert not outside, f"stages call tracker methods the Tracker protocol lacks: {outside}"


@pytest.mark.parametrize("cls", [StageRun, NullTracker])
def test_each_backend_has_every_method_of_the_protocol(cls):
    for name, signature in PROTOCOL.items():
        assert name in vars(cls), f"{cls.__name__} has no {name}"
        assert _arguments(inspect.signature(vars(cls)[name])) == _arguments(signature), f"{cls.__name__}.{name}"
    assert isinstance(NullTracker() if cls is NullTracker else StageRun("corpus", enabled=False), Tracker)


def test_a_class_missing_one_method_is_not_a_tracker():
    methods = {k: v for k, v in vars(NullTracker).items() if inspect.isfunction(v)}
    for name in PROTOCOL:
        partial = type("Partial", (), {k: v for k, v in methods.items() if k != name})
        assert not isinstance(partial(), Tracker), name


def test_open_tracker_picks_mlflow_or_the_null_tracker(tmp_path, monkeypatch):
    monkeypatch.setenv("ELECTRA_DS_MLFLOW", "0")
    off = open_tracker("scatter", results_dir=tmp_path)
    assert type(off) is NullTracker
    assert off.earlier_runs("evaluate", 5) == ([], "MLflow is off (ELECTRA_DS_MLFLOW=0)")
    monkeypatch.setenv("ELECTRA_DS_MLFLOW", "1")
    assert type(open_tracker("pretrain", results_dir=tmp_path, enabled=False)) is NullTracker  # ranks other than 0
    uri = f"sqlite:///{tmp_path / 'other.db'}"
    run = open_tracker("finetune", results_dir=tmp_path, tracking_uri=uri, wildcards={"task": "rte"})
    assert type(run) is StageRun and run.stage == "finetune" and run.uri == uri and run.wildcards == {"task": "rte"}
    assert run.run_id is None and not list(tmp_path.iterdir())  # the run starts when its block is entered


def test_a_stage_runs_end_to_end_on_the_null_tracker(tmp_path, monkeypatch, capsys):
    """evaluate from the command line with tracking off: the job gets a NullTracker, writes every output, the
    report says why no earlier runs are shown, and no store or spool appears."""
    from test_evaluate import write_metrics

    from electra_ds import cli

    opened = []

    def spy(*args, **kwargs):
        opened.append(open_tracker(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(cli, "open_tracker", spy)
    monkeypatch.setenv("ELECTRA_DS_MLFLOW", "0")
    metrics = [write_metrics(tmp_path / "ft", "rte", seed, {"accuracy": acc}, "accuracy", acc)
               for seed, acc in enumerate([0.6, 0.7])]
    out = tmp_path / "evaluate"
    assert cli.main(["evaluate", "--metrics", *map(str, metrics), "--output-json", str(out / "results.json"),
                     "--output-md", str(out / "results.md"), "--results-dir", str(tmp_path)]) == 0
    [tracker] = opened
    assert type(tracker) is NullTracker
    assert "GLUE score (ELECTRA convention, 1/8 tasks): 65.0" in capsys.readouterr().out
    assert "- Earlier runs: MLflow is off (ELECTRA_DS_MLFLOW=0)." in (out / "results.md").read_text()
    assert (out / "results.json").is_file()
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlflow-spool").exists()


# -- earlier runs (what the evaluation report compares with) ---------------------------------------------------

@pytest.fixture()
def tracking_on(monkeypatch):
    monkeypatch.setenv("ELECTRA_DS_MLFLOW", "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(tracking.ENV_PARENT, raising=False)
    tracking.reset()
    yield monkeypatch
    tracking.reset()


def test_earlier_runs_never_fail(tmp_path, tracking_on):
    tracking_on.setenv("ELECTRA_DS_MLFLOW", "0")
    assert tracking.find_earlier_runs(f"sqlite:///{tmp_path}/mlflow.db", "evaluate") == (
        [], "MLflow is off (ELECTRA_DS_MLFLOW=0)")
    tracking_on.setenv("ELECTRA_DS_MLFLOW", "1")
    runs, note = tracking.find_earlier_runs(f"sqlite:///{tmp_path}/absent.db", "evaluate")
    assert runs == [] and "no MLflow store" in note and not (tmp_path / "absent.db").exists()
    assert tracking.find_earlier_runs(None, "evaluate")[0] == []
    runs, note = tracking.find_earlier_runs("unknown-scheme://nowhere", "evaluate")
    assert runs == [] and "failed" in note


def test_earlier_runs_from_a_real_store(tmp_path, tracking_on):
    pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with StageRun("finetune", results_dir=tmp_path, tracking_uri=uri) as other:
        other.log_metrics({"main": 0.9})
    with StageRun("evaluate", results_dir=tmp_path, tracking_uri=uri) as old:
        old.log_metrics({"cola.main": 0.25, "glue_score": 0.4})
    with StageRun("evaluate", results_dir=tmp_path, tracking_uri=uri) as current:
        runs, note = current.earlier_runs("evaluate", 5)
    assert [r["run_id"] for r in runs] == [old.run_id] and "1 earlier evaluate run" in note
    assert runs[0]["metrics"] == {"cola.main": 0.25, "glue_score": 0.4}


def test_no_earlier_runs_once_the_store_stopped_answering(tmp_path, tracking_on):
    (tmp_path / "mlflow.db").write_bytes(b"not a database" * 100)
    with StageRun("evaluate", results_dir=tmp_path) as run:
        assert run.offline
        assert run.earlier_runs("evaluate", 5) == ([], "MLflow did not answer (tracking is spooled)")
