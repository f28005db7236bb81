"""MLflow tracking: one parent run per pipeline invocation, one child run per stage job.

The Snakefile's ``onstart`` handler calls :func:`start_pipeline_run` and exports the parent run id,
experiment, config hash and git commit through environment variables; every stage job then opens
a :class:`StageRun` that becomes a child of that parent (``mlflow.parentRunId``). Run standalone,
a stage creates a top-level run of its own.

Tracking must never kill a job: every call retries briefly (several jobs may write one sqlite
database at once) and then warns and carries on. Set ``ELECTRA_DS_MLFLOW=0`` to turn it off.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import time
import warnings
from pathlib import Path

log = logging.getLogger(__name__)

ENV_PARENT = "ELECTRA_DS_MLFLOW_PARENT_RUN_ID"
ENV_EXPERIMENT = "ELECTRA_DS_MLFLOW_EXPERIMENT"
ENV_CONFIG_HASH = "ELECTRA_DS_CONFIG_HASH"
ENV_GIT_COMMIT = "ELECTRA_DS_GIT_COMMIT"
ENV_ENABLED = "ELECTRA_DS_MLFLOW"
DEFAULT_EXPERIMENT = "electra-ds"


def tracking_uri_for(results_dir, configured: str | None = None) -> str:
    """MLFLOW_TRACKING_URI wins, then the config's ``mlflow.tracking_uri``, then a sqlite file in results."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if configured:
        return configured
    return f"sqlite:///{Path(results_dir).resolve() / 'mlflow.db'}"


def artifact_root_for(results_dir) -> str:
    return (Path(results_dir).resolve() / "mlartifacts").as_uri()


def git_commit(cwd=None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        commit = out.stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (commit + ("-dirty" if dirty else "")) if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


_degraded = False  # after a call failed completely, later calls try once instead of backing off


def _with_retries(fn, *, what: str, attempts: int = 6, first_delay: float = 0.2):
    """Call fn(); retry on any error (e.g. 'database is locked'); warn and return None at the end."""
    global _degraded
    attempts = 1 if _degraded else attempts
    delay = first_delay
    for attempt in range(attempts):
        try:
            result = fn()
            _degraded = False
            return result
        except Exception as exc:  # tracking must never kill the job
            if attempt == attempts - 1:
                warnings.warn(f"MLflow: {what} failed after {attempts} attempt(s) ({exc}); continuing without it",
                              RuntimeWarning, stacklevel=3)
                _degraded = True
                return None
            time.sleep(delay)
            delay = min(delay * 2, 3.0)


# MLflow 3 opens an experiment of unknown kind on its GenAI overview; this tag opens it on the runs table.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def experiment_id_for(client, name: str, artifact_root: str | None = None) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:
            client.set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND)
        return exp.experiment_id
    try:
        exp_id = client.create_experiment(name, artifact_location=artifact_root, tags=dict([EXPERIMENT_KIND]))
    except Exception:  # created by a concurrent process in the meantime
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id
    return exp_id


def start_pipeline_run(uri: str, experiment: str, artifact_root: str | None, run_name: str, tags: dict,
                       params: dict | None = None) -> str | None:
    """Create the parent run of one pipeline invocation and return its id (None if tracking failed)."""

    def create():
        client = _client(uri)
        exp_id = experiment_id_for(client, experiment, artifact_root)
        run = client.create_run(exp_id, run_name=run_name, tags={**tags, "electra_ds.kind": "pipeline",
                                                                 "electra_ds.study": tags.get("electra_ds.config_hash", "")})
        if params:
            from mlflow.entities import Param

            items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
            for i in range(0, len(items), 100):
                client.log_batch(run.info.run_id, params=items[i:i + 100])
        return run.info.run_id

    return _with_retries(create, what="creating the pipeline run")


def end_pipeline_run(uri: str, run_id: str | None, ok: bool) -> None:
    if run_id:
        _with_retries(lambda: _client(uri).set_terminated(run_id, "FINISHED" if ok else "FAILED"),
                      what="closing the pipeline run")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


class StageRun:
    """A child MLflow run for one stage job; every method is safe (never raises)."""

    def __init__(self, stage: str, *, results_dir=None, tracking_uri: str | None = None,
                 wildcards: dict | None = None, enabled: bool = True):
        self.stage = stage
        self.run_id = None
        self.enabled = enabled and os.environ.get(ENV_ENABLED, "1") != "0"
        self.results_dir = Path(results_dir or ".")
        self.uri = tracking_uri or tracking_uri_for(self.results_dir)
        self.wildcards = wildcards or {}
        self._client = None

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self):
        if not self.enabled:
            return self
        parent = os.environ.get(ENV_PARENT)
        tags = {
            "electra_ds.rule": self.stage,
            "electra_ds.git_commit": os.environ.get(ENV_GIT_COMMIT) or git_commit(),
            "electra_ds.config_hash": os.environ.get(ENV_CONFIG_HASH, "standalone"),
            "electra_ds.study": os.environ.get(ENV_CONFIG_HASH, "standalone"),
            "electra_ds.kind": "stage",
        }
        tags.update({f"wildcard.{k}": str(v) for k, v in self.wildcards.items()})
        if parent:
            tags["mlflow.parentRunId"] = parent
        name = self.stage + "".join(f"-{v}" for v in self.wildcards.values())

        def create():
            client = _client(self.uri)
            exp_id = experiment_id_for(client, os.environ.get(ENV_EXPERIMENT, DEFAULT_EXPERIMENT),
                                       artifact_root_for(self.results_dir))
            run = client.create_run(exp_id, run_name=name, tags=tags)
            self._client = client
            return run.info.run_id

        self.run_id = _with_retries(create, what=f"creating the run for stage {self.stage}")
        return self

    def __exit__(self, exc_type, exc, tb):
        if self.run_id:
            status = "FINISHED" if exc_type is None else ("KILLED" if exc_type is KeyboardInterrupt else "FAILED")
            _with_retries(lambda: self._client.set_terminated(self.run_id, status), what="closing the stage run")
        return False

    # -- logging ---------------------------------------------------------------------------
    def log_params(self, params: dict) -> None:
        if not self.run_id:
            return
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in sorted(_flatten(params).items())]
        for i in range(0, len(items), 100):
            chunk = items[i:i + 100]
            _with_retries(lambda: self._client.log_batch(self.run_id, params=chunk), what="logging params")

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        if not self.run_id:
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = []
        for k, v in sorted(_flatten(metrics).items()):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
                continue
            items.append(Metric(k, float(v), ts, int(step or 0)))
        for i in range(0, len(items), 500):
            chunk = items[i:i + 500]
            _with_retries(lambda: self._client.log_batch(self.run_id, metrics=chunk), what="logging metrics")

    def set_tags(self, tags: dict) -> None:
        if not self.run_id:
            return
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        _with_retries(lambda: self._client.log_batch(self.run_id, tags=items), what="setting tags")

    def log_artifact(self, path, artifact_path: str | None = None) -> None:
        if not self.run_id or not Path(path).exists():
            return
        _with_retries(lambda: self._client.log_artifact(self.run_id, str(path), artifact_path),
                      what=f"logging artifact {path}", attempts=3)


def log_model_runs(tracker: StageRun, models: dict) -> None:
    """One top-level run per model of the study (``{name: (params, metrics)}``), so the runs table and the compare
    view put models side by side without opening child runs; the primary (first) model's metrics also go on the
    pipeline's parent run, which stands for the whole invocation. A rerun updates the same runs. Never raises."""
    if not tracker.run_id or not models:
        return
    from mlflow.entities import Metric, Param, RunTag

    study = os.environ.get(ENV_CONFIG_HASH, "standalone")
    ts = int(time.time() * 1000)

    def metric_items(metrics):
        return [Metric(k, float(v), ts, 0) for k, v in sorted(metrics.items())
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))]

    def log_all():
        client = tracker._client
        exp_id = client.get_run(tracker.run_id).info.experiment_id
        for name, (params, metrics) in models.items():
            found = client.search_runs([exp_id], filter_string=f"tags.`electra_ds.kind` = 'model' and "
                                       f"tags.`electra_ds.study` = '{study}' and tags.`electra_ds.model` = '{name}'",
                                       max_results=1)
            tags = {"electra_ds.kind": "model", "electra_ds.study": study, "electra_ds.model": name,
                    "electra_ds.config_hash": study, "electra_ds.evaluate_run": tracker.run_id}
            run_id = found[0].info.run_id if found else client.create_run(exp_id, run_name=name, tags=tags).info.run_id
            client.log_batch(run_id, metrics=metric_items(metrics),
                             params=[] if found else [Param(k, str(v)[:6000]) for k, v in sorted(params.items())])
            client.set_terminated(run_id, "FINISHED")
        parent = os.environ.get(ENV_PARENT)
        if parent:
            primary_params, primary_metrics = next(iter(models.values()))
            client.log_batch(parent, metrics=metric_items(primary_metrics),
                             tags=[RunTag("electra_ds.models", ",".join(models)),
                                   RunTag("electra_ds.study", study)])

    _with_retries(log_all, what="logging the model runs", attempts=2)
