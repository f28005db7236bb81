"""The MLflow tracker: one parent run per pipeline invocation, one child run per stage job.

The Snakefile's ``onstart`` handler calls :func:`start_pipeline_run` and exports the parent run id,
experiment, config hash and git commit through environment variables; every stage job then opens
a :class:`StageRun` (the :class:`~electra_ds.tracking.base.Tracker` protocol) that becomes a child of that parent
(``mlflow.parentRunId``). Run standalone, a stage creates a top-level run of its own.
:meth:`StageRun.log_model_runs` adds one top-level run per model of a study (evaluate), and
:meth:`StageRun.earlier_runs` finds the finished runs of a rule for the report. Set ``ELECTRA_DS_MLFLOW=0`` to
turn tracking off.

Each run carries MLflow's standard tags (:func:`standard_tags`: source, user, git commit). A stage run can log
its dataset input (:func:`shards_dataset`, the pretraining run's shards with their index's sha256), a model
(:meth:`StageRun.log_model`: the export's discriminator, transformers flavor, registered when a registry name is
given) and, with ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=true`` (config ``mlflow.system_metrics``), the machine's
CPU, memory, disk, network and GPU use (:class:`SystemMetrics`).

Tracking never blocks or kills a job: every call is bounded and the first failure turns tracking offline
for the process (:mod:`electra_ds.tracking.store`); later calls go to a JSONL spool that
``electra-ds tracking-replay`` sends to MLflow later (:mod:`electra_ds.tracking.replay`).
"""

from __future__ import annotations

import datetime
import getpass
import json
import math
import os
import subprocess
import threading
import uuid
from pathlib import Path
from urllib.parse import unquote, urlparse

from electra_ds.common.layout import MLFLOW_DB
from electra_ds.tracking.replay import LOCAL_PREFIX, SPOOL_DIRNAME, Spool, is_local
from electra_ds.tracking.store import (
    DEFAULT_EXPERIMENT,
    artifact_root_for,
    bounded_call,
    client_for,
    experiment_id_for,
    is_degraded,
    log,
    now_ms,
    short_reason,
    sqlite_path,
    tracking_uri_for,
    warn_once,
    write_inputs,
    write_metrics,
    write_model,
    write_model_runs,
    write_params,
    write_tags,
)

ENV_PARENT = "ELECTRA_DS_MLFLOW_PARENT_RUN_ID"
ENV_EXPERIMENT = "ELECTRA_DS_MLFLOW_EXPERIMENT"
ENV_CONFIG_HASH = "ELECTRA_DS_CONFIG_HASH"
ENV_GIT_COMMIT = "ELECTRA_DS_GIT_COMMIT"
ENV_ENABLED = "ELECTRA_DS_MLFLOW"
OFF_NOTE = "MLflow is off (ELECTRA_DS_MLFLOW=0)"
ENV_SPOOL = "ELECTRA_DS_MLFLOW_SPOOL"  # spool folder for pipeline-level records when no results dir is known
ENV_SYSTEM_METRICS = "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"  # MLflow's own switch (config mlflow.system_metrics)
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # a stage's commit is its code's, wherever it runs from


def git_commit(cwd=None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        commit = out.stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (commit + ("-dirty" if dirty else "")) if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers) and no $USER
        return "unknown"


def standard_tags(source_name: str, commit: str | None = None) -> dict:
    """MLflow's standard run tags, which its UI shows: ``mlflow.source.name``, ``mlflow.source.type`` (JOB under
    SLURM, else LOCAL), ``mlflow.user`` and ``mlflow.source.git.commit`` (the commit without electra_ds.git_commit's
    ``-dirty`` mark; left out where it is unknown)."""
    tags = {"mlflow.source.name": source_name,
            "mlflow.source.type": "JOB" if os.environ.get("SLURM_JOB_ID") else "LOCAL",
            "mlflow.user": _user()}
    commit = (commit or "").removesuffix("-dirty")
    if commit and commit != "unknown":
        tags["mlflow.source.git.commit"] = commit
    return tags


def shards_dataset(shard_dir, context: str = "training") -> dict:
    """A shards directory as an MLflow dataset input: name = the folder's name, source = its path, digest = the
    sha256 of its ``index.json`` (which lists every shard's sha256), cut to the 36 characters MLflow stores; the
    whole sha256 and the counts per split are in the profile."""
    from electra_ds.common.fileio import sha256_file

    shard_dir = Path(shard_dir).resolve()
    index_path = shard_dir / "index.json"
    digest = sha256_file(index_path)
    index = json.loads(index_path.read_text(encoding="utf-8"))
    profile = {"sha256": digest, "max_seq_len": index.get("max_seq_len"), "vocab_size": index.get("vocab_size")}
    for split, info in (index.get("splits") or {}).items():
        if isinstance(info, dict):
            profile[split] = {k: info[k] for k in ("examples", "tokens", "documents") if k in info}
    return {"name": shard_dir.name, "digest": digest[:36], "source_type": "local",
            "source": json.dumps({"uri": str(shard_dir)}), "schema": None,
            "profile": json.dumps(profile, sort_keys=True), "context": context}


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


# A model upload may take longer than one call's deadline: this much more per byte (10 MB/s) plus a minute.
MODEL_SECONDS = (60.0, 1e-7)


class SystemMetrics:
    """CPU, memory, disk, network and GPU (with nvidia-ml-py) use of this machine while a stage runs, sampled by
    MLflow's own monitors every ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` seconds (10), averaged over
    ``MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING`` samples (1) and logged through the stage's run as MLflow's
    ``system/...`` metrics: bounded and spooled like every other metric. Never raises."""

    def __init__(self, run: "StageRun"):
        self.run = run
        self._stop = threading.Event()
        self._thread = None

    def start(self) -> None:
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self.monitor = SystemMetricsMonitor(self.run.run_id, tracking_uri=self.run.uri)
            self._thread = threading.Thread(target=self._loop, name="electra-ds-system-metrics", daemon=True)
            self._thread.start()
        except Exception as exc:  # psutil missing, ...
            warn_once("system-metrics", f"MLflow: system metrics are off ({short_reason(exc)})")

    def _loop(self) -> None:
        interval = float(self.monitor.sampling_interval)
        per_log = max(1, int(self.monitor.samples_before_logging))
        step, samples = 0, 0
        try:
            while not self._stop.wait(interval):
                self.monitor.collect_metrics()
                samples += 1
                if samples % per_log:
                    continue
                metrics = self.monitor.aggregate_metrics()
                for m in self.monitor.monitors:
                    m.clear_metrics()
                self.run.log_metrics({f"system/{k}": v for k, v in metrics.items()}, step=step)
                step += 1
        except Exception as exc:
            warn_once("system-metrics-loop", f"MLflow: system metrics stopped ({short_reason(exc)})")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)  # a logging call in flight is bounded; never wait for it here


class _Sink:
    """One MLflow run: calls go to the store while it answers, to the spool once it does not."""

    def __init__(self, uri: str, spool_dir, name: str):
        self.uri = uri
        self.spool = Spool(spool_dir, name)
        self.run_id = None
        self.info = None  # experiment, artifact root, run name, tags, start time: enough to recreate the run
        self._client = None

    @property
    def note(self) -> str:
        results = self.spool.path.parent.parent
        store = "" if self.uri == f"sqlite:///{results.resolve() / MLFLOW_DB}" else f" --tracking-uri {self.uri}"
        return (f"; unsent records go to {self.spool.path.parent}/ (send them later: "
                f"electra-ds tracking-replay {results}{store})")  # replay never takes the store from the files

    def client(self):
        if self._client is None:
            self._client = client_for(self.uri)
        return self._client

    def start(self, experiment: str, artifact_root: str | None, run_name: str, tags: dict, what: str) -> str:
        self.info = {"uri": self.uri, "experiment": experiment, "artifact_root": artifact_root, "run_name": run_name,
                     "tags": dict(tags), "start_time": now_ms()}

        def create():
            client = self.client()
            exp_id = experiment_id_for(client, experiment, artifact_root)
            return client.create_run(exp_id, run_name=run_name, tags=tags,
                                     start_time=self.info["start_time"]).info.run_id

        ok, run_id = bounded_call(self.uri, create, what=what, offline_note=self.note)
        if ok and run_id:
            self.run_id = run_id
        else:
            self.run_id = LOCAL_PREFIX + uuid.uuid4().hex
            self.spool.describe(self.run_id, self.info, remote=False)
        return self.run_id

    def attach(self, run_id: str) -> None:
        self.run_id = run_id

    def send(self, fn, record: dict, what: str, timeout: float | None = None) -> None:
        """fn(client) against the store, or the record into the spool."""
        if not is_local(self.run_id) and not is_degraded(self.uri):
            ok, _ = bounded_call(self.uri, lambda: fn(self.client()), what=what, offline_note=self.note,
                                 timeout=timeout)
            if ok or not is_degraded(self.uri):  # sent, or refused by a working store
                return
        self.spool.describe(self.run_id, self.info, remote=not is_local(self.run_id))
        self.spool.write({"run": self.run_id, **record})


def _params_dict(params: dict) -> dict:
    return {k: str(v)[:6000] for k, v in sorted(_flatten(params).items())}


def _metric_rows(metrics: dict, ts: int, step: int) -> list:
    rows = []
    for k, v in sorted(_flatten(metrics).items()):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            continue
        rows.append([k, float(v), ts, int(step)])
    return rows



# -- the pipeline's parent run ---------------------------------------------------------------------

_pipelines: dict = {}  # parent run id -> its _Sink (onstart and onsuccess run in one Snakemake process)


def _pipeline_spool_dir(uri: str, artifact_root: str | None, tags: dict) -> Path:
    if os.environ.get(ENV_SPOOL):
        return Path(os.environ[ENV_SPOOL])
    if tags.get("electra_ds.results_dir"):
        return Path(tags["electra_ds.results_dir"]) / SPOOL_DIRNAME
    if artifact_root and artifact_root.startswith("file://"):

        return Path(unquote(urlparse(artifact_root).path)).parent / SPOOL_DIRNAME
    path = sqlite_path(uri)
    return (path.parent if path else Path.cwd()) / SPOOL_DIRNAME


def start_pipeline_run(uri: str, experiment: str, artifact_root: str | None, run_name: str, tags: dict,
                       params: dict | None = None, spool_dir=None) -> str | None:
    """Create the parent run of one pipeline invocation and return its id. Never raises or waits past the
    call deadline: when the store fails, the run is spooled and a local id (``spool-...``) is returned, which
    stage runs use as their parent and replay maps to the real run. None only when tracking is off."""
    if os.environ.get(ENV_ENABLED, "1") == "0":
        return None
    try:
        sink = _Sink(uri, spool_dir or _pipeline_spool_dir(uri, artifact_root, tags), "pipeline")
        full_tags = {**tags, "electra_ds.kind": "pipeline", "electra_ds.study": tags.get("electra_ds.config_hash", "")}
        run_id = sink.start(experiment, artifact_root, run_name, full_tags, what="creating the pipeline run")
        if params:
            values = {k: str(v)[:6000] for k, v in sorted(params.items())}
            sink.send(lambda c: write_params(c, run_id, values), {"op": "params", "params": values},
                      what="logging the pipeline params")
        _pipelines[run_id] = sink
        return run_id
    except Exception as exc:  # never kill the workflow
        warn_once(f"pipeline:{uri}", f"MLflow: creating the pipeline run failed ({short_reason(exc)}); continuing")
        return None


def end_pipeline_run(uri: str, run_id: str | None, ok: bool) -> None:
    if not run_id or os.environ.get(ENV_ENABLED, "1") == "0":
        return
    try:
        sink = _pipelines.get(run_id)
        if sink is None:  # another process: a spool goes into $ELECTRA_DS_MLFLOW_SPOOL or beside the store
            sink = _Sink(uri, _pipeline_spool_dir(uri, None, {}), "pipeline")
            sink.attach(run_id)
        status, end = ("FINISHED" if ok else "FAILED"), now_ms()
        sink.send(lambda c: c.set_terminated(run_id, status, end_time=end),
                  {"op": "terminated", "status": status, "end_time": end}, what="closing the pipeline run")
    except Exception as exc:
        warn_once(f"pipeline-end:{uri}", f"MLflow: closing the pipeline run failed ({short_reason(exc)}); continuing")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


# -- one stage job -----------------------------------------------------------------------------------

class StageRun:
    """A child MLflow run for one stage job; every method is safe (never raises, never waits past the deadline).

    ``run_id`` is the MLflow run id, a local ``spool-...`` id when the run could only be spooled, or None when
    tracking is off.
    """

    def __init__(self, stage: str, *, results_dir=None, tracking_uri: str | None = None,
                 wildcards: dict | None = None, enabled: bool = True):
        self.stage = stage
        self.run_id = None
        self.enabled = enabled and os.environ.get(ENV_ENABLED, "1") != "0"
        self.results_dir = Path(results_dir or ".")
        self.uri = tracking_uri or tracking_uri_for(self.results_dir)
        self.wildcards = wildcards or {}
        name = self.stage + "".join(f"-{v}" for v in self.wildcards.values())
        self._sink = _Sink(self.uri, self.results_dir / SPOOL_DIRNAME, name)
        self._system = None

    @property
    def spool_path(self) -> Path:
        """Where this run's unsent records go (the file exists only once something was spooled)."""
        return self._sink.spool.path

    @property
    def offline(self) -> bool:
        """True when calls no longer reach MLflow (they are spooled)."""
        return bool(self.run_id) and (is_local(self.run_id) or is_degraded(self.uri))

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self):
        if not self.enabled:
            return self
        try:
            parent = os.environ.get(ENV_PARENT)
            commit = os.environ.get(ENV_GIT_COMMIT) or git_commit(PACKAGE_DIR)
            tags = {
                **standard_tags(f"electra-ds {self.stage}", commit),
                "electra_ds.rule": self.stage,
                "electra_ds.git_commit": commit,
                "electra_ds.config_hash": os.environ.get(ENV_CONFIG_HASH, "standalone"),
                "electra_ds.study": os.environ.get(ENV_CONFIG_HASH, "standalone"),
                "electra_ds.kind": "stage",
            }
            tags.update({f"wildcard.{k}": str(v) for k, v in self.wildcards.items()})
            if is_local(parent):  # the parent exists only in a spool: replay sets mlflow.parentRunId
                tags["electra_ds.spooled_parent"] = parent
            elif parent:
                tags["mlflow.parentRunId"] = parent
            name = self.stage + "".join(f"-{v}" for v in self.wildcards.values())
            self.run_id = self._sink.start(os.environ.get(ENV_EXPERIMENT, DEFAULT_EXPERIMENT),
                                           artifact_root_for(self.results_dir, self.uri), name, tags,
                                           what=f"creating the run for stage {self.stage}")
        except Exception as exc:
            warn_once(f"stage:{self.uri}", f"MLflow: creating the run for stage {self.stage} failed "
                                           f"({short_reason(exc)}); continuing without it")
            self.run_id = None
        if self.run_id and os.environ.get(ENV_SYSTEM_METRICS, "").strip().lower() in ("true", "1"):
            self._system = SystemMetrics(self)
            self._system.start()
        return self

    def __exit__(self, exc_type, exc, tb):
        if self._system is not None:
            self._system.stop()
        if self.run_id:
            status = "FINISHED" if exc_type is None else ("KILLED" if exc_type is KeyboardInterrupt else "FAILED")
            end = now_ms()
            self._send(lambda c: c.set_terminated(self.run_id, status, end_time=end),
                       {"op": "terminated", "status": status, "end_time": end}, what="closing the stage run")
        return False

    def _send(self, fn, record: dict, what: str, timeout: float | None = None) -> None:
        try:
            self._sink.send(fn, record, what, timeout=timeout)
        except Exception as exc:  # e.g. an unserialisable value: never raise into the stage
            warn_once(f"send:{self.uri}:{what}", f"MLflow: {what} failed ({short_reason(exc)}); skipped")

    # -- logging ---------------------------------------------------------------------------
    def log_params(self, params: dict) -> None:
        if not self.run_id:
            return
        try:
            values = _params_dict(params)
        except Exception:
            return
        self._send(lambda c: write_params(c, self.run_id, values), {"op": "params", "params": values},
                   what="logging params")

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        if not self.run_id:
            return
        try:
            rows = _metric_rows(metrics, now_ms(), int(step or 0))
        except Exception:
            return
        if rows:
            self._send(lambda c: write_metrics(c, self.run_id, rows), {"op": "metrics", "metrics": rows},
                       what="logging metrics")

    def set_tags(self, tags: dict) -> None:
        if not self.run_id:
            return
        values = {str(k): str(v) for k, v in tags.items()}
        self._send(lambda c: write_tags(c, self.run_id, values), {"op": "tags", "tags": values}, what="setting tags")

    def log_artifact(self, path, artifact_path: str | None = None) -> None:
        if not self.run_id or not Path(path).exists():
            return
        path = str(Path(path).resolve())
        self._send(lambda c: c.log_artifact(self.run_id, path, artifact_path),
                   {"op": "artifact", "path": path, "artifact_path": artifact_path}, what=f"logging artifact {path}")

    def log_input(self, dataset: dict) -> None:
        """A dataset input of the run (:func:`shards_dataset`)."""
        if not self.run_id or not dataset:
            return
        self._send(lambda c: write_inputs(c, self.run_id, [dataset]), {"op": "inputs", "datasets": [dataset]},
                   what="logging the dataset input")

    def log_model(self, path, name: str = "discriminator", registered_model_name: str | None = None) -> None:
        """The exported model folder ``path`` as an MLflow model of this run (transformers flavor), registered as a
        new version of ``registered_model_name`` when given (:func:`electra_ds.tracking.store.write_model`). The call
        may take a minute plus 10 MB/s of the folder's size against a working server; a dead or silent one fails
        as fast as any other call, and the model is spooled (replay logs it from the folder)."""
        path = Path(path).resolve()
        if not self.run_id or not (path / "config.json").is_file():
            return
        model = {"path": str(path), "name": name, "registered_model_name": registered_model_name or None}
        base, per_byte = MODEL_SECONDS
        self._send(lambda c: write_model(c, self.run_id, model), {"op": "model", "model": model},
                   what=f"logging the model {name}", timeout=base + per_byte * _folder_bytes(path))

    # -- what evaluate needs ------------------------------------------------------------------
    def log_model_runs(self, models: dict) -> None:
        """One top-level run per model of the study (``{name: (params, metrics)}``), so the runs table and the
        compare view put models side by side without opening child runs; the primary (first) model's metrics also
        go on the pipeline's parent run, which stands for the whole invocation. A rerun updates the same runs.
        Never raises; spooled (and replayed with the rest) when the store does not answer."""
        if not self.run_id or not models:
            return
        try:
            study = os.environ.get(ENV_CONFIG_HASH, "standalone")
            ts = now_ms()
            clean = {}
            for name, (params, metrics) in models.items():
                clean[str(name)] = ({str(k): str(v)[:6000] for k, v in params.items()},
                                    {str(k): float(v) for k, v in metrics.items() if isinstance(v, (int, float))
                                     and not isinstance(v, bool) and math.isfinite(float(v))})
            parent = os.environ.get(ENV_PARENT)
            record = {"op": "model_runs", "parent": parent, "study": study, "ts": ts,
                      "models": {k: [p, m] for k, (p, m) in clean.items()}}
            self._send(lambda c: write_model_runs(c, self.run_id, None if is_local(parent) else parent, study,
                                                  clean, ts), record, what="logging the model runs")
            if is_local(parent) and not self.offline:
                # the model runs reached the store; the parent's share waits in the spool with the parent run
                self._sink.spool.describe(self.run_id, self._sink.info, remote=True)
                self._sink.spool.write({"run": self.run_id, **record, "models_done": True})
        except Exception as exc:
            warn_once(f"models:{self.uri}", f"MLflow: logging the model runs failed ({short_reason(exc)}); skipped")

    def earlier_runs(self, rule: str, limit: int) -> tuple:
        """Finished runs of ``rule`` in this run's store other than this one, newest first: ``(runs, note)``
        (:func:`find_earlier_runs`); none, with a note saying so, once the store stopped answering."""
        if self.offline:
            return [], "MLflow did not answer (tracking is spooled)"
        return find_earlier_runs(self.uri, rule, exclude_run_id=self.run_id, limit=limit)


# -- earlier runs (the evaluation report) ----------------------------------------------------------------

def find_earlier_runs(tracking_uri: str | None, rule: str, exclude_run_id: str | None = None,
                      limit: int = 5) -> tuple:
    """Finished runs of ``rule`` in the store, newest first: ``(runs, note)``.

    Each run is ``{"run_id", "label", "experiment", "metrics"}`` with metrics as logged (fractions).
    Never raises; an absent, disabled, unreachable or empty store gives ``([], reason)``.
    """
    if os.environ.get(ENV_ENABLED, "1") == "0":
        return [], OFF_NOTE
    if not tracking_uri:
        return [], "no MLflow tracking URI"
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///"):]).is_file():
        return [], f"no MLflow store at {tracking_uri}"
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=tracking_uri)
        experiments = {e.experiment_id: e.name for e in client.search_experiments()}
        if not experiments:
            return [], "the MLflow store has no experiments"
        finished = f"tags.`electra_ds.rule` = '{rule}' and attributes.status = 'FINISHED'"
        found = client.search_runs(list(experiments), filter_string=finished,
                                   order_by=["attributes.start_time DESC"], max_results=limit + 1)
    except Exception as exc:  # the report must not fail because of tracking
        log.warning("MLflow: could not search earlier %s runs (%s)", rule, exc)
        return [], f"MLflow search failed: {exc}"
    runs = []
    for r in found:
        if r.info.run_id == exclude_run_id or not r.data.metrics:
            continue
        started = datetime.datetime.fromtimestamp(r.info.start_time / 1000).strftime("%Y-%m-%d %H:%M")
        runs.append({"run_id": r.info.run_id, "experiment": experiments.get(r.info.experiment_id, "?"),
                     "label": f"{experiments.get(r.info.experiment_id, '?')} {started} ({r.info.run_id[:8]})",
                     "metrics": dict(r.data.metrics)})
    runs = runs[:limit]
    return runs, (f"{len(runs)} earlier {rule} run(s) from {tracking_uri}" if runs
                  else f"no earlier {rule} runs in {tracking_uri}")
