"""MLflow tracking: one parent run per pipeline invocation, one child run per stage job.

The Snakefile's ``onstart`` handler calls :func:`start_pipeline_run` and exports the parent run id,
experiment, config hash and git commit through environment variables; every stage job then opens
a :class:`StageRun` that becomes a child of that parent (``mlflow.parentRunId``). Run standalone,
a stage creates a top-level run of its own.

Tracking never blocks or kills a job. Each call runs with a deadline (``ELECTRA_DS_MLFLOW_TIMEOUT``,
15 s; MLflow's own HTTP retries are capped to fit in it) and a sqlite store's "database is locked" is
retried within twice that. The first call that fails gives one warning line and turns tracking
*offline* for the rest of the process: every later call goes straight to a JSONL spool,
``<results_dir>/mlflow-spool/<stage>[-<wildcards>]-<pid>-<id>.jsonl``, one record per call (run
creation with experiment, tags and parent, params, metrics with step and timestamp, tags, the end
status, artifacts by path). ``electra-ds tracking-replay RESULTS_DIR [--tracking-uri URI]`` sends the
spool to MLflow later (:func:`replay`): runs that never reached MLflow got local ids (``spool-...``)
and are created then, children under their parent, and each replayed file is renamed to
``*.jsonl.replayed`` so a second replay adds nothing. Set ``ELECTRA_DS_MLFLOW=0`` to turn tracking off.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import subprocess
import threading
import time
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

ENV_PARENT = "ELECTRA_DS_MLFLOW_PARENT_RUN_ID"
ENV_EXPERIMENT = "ELECTRA_DS_MLFLOW_EXPERIMENT"
ENV_CONFIG_HASH = "ELECTRA_DS_CONFIG_HASH"
ENV_GIT_COMMIT = "ELECTRA_DS_GIT_COMMIT"
ENV_ENABLED = "ELECTRA_DS_MLFLOW"
ENV_TIMEOUT = "ELECTRA_DS_MLFLOW_TIMEOUT"  # seconds one tracking call may take (default 15)
ENV_SPOOL = "ELECTRA_DS_MLFLOW_SPOOL"  # spool folder for pipeline-level records when no results dir is known
DEFAULT_EXPERIMENT = "electra-ds"
DEFAULT_TIMEOUT = 15.0
SPOOL_DIRNAME = "mlflow-spool"
LOCAL_PREFIX = "spool-"  # run ids given to runs that exist only in a spool so far
REPLAY_IDS = "replay-ids.json"  # in the spool folder: spooled run id -> run id in the store

# MLflow's defaults (7 retries, backoff factor 2, 120 s timeout) make one call to a dead or silent
# server take minutes. These fit one request plus one retry into the call deadline; a value the user
# set in the environment wins (the deadline bounds the call anyway).
HTTP_LIMITS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
}
# Loggers that print retries, migrations and tracebacks while a store fails; quiet during tracking calls.
NOISY_LOGGERS = ("urllib3", "sqlalchemy", "alembic", "mlflow")
# Errors that mean the server answered and refused this one call: the store is fine, nothing to spool.
ANSWERED = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST", "BAD_REQUEST",
            "MALFORMED_REQUEST", "INVALID_STATE", "RESOURCE_CONFLICT"}
# sqlite errors that go away when the other writers are done (several jobs share one database file).
SQLITE_TRANSIENT = ("locked", "busy", "already exists", "unique constraint", "no such table", "duplicate column")


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


# -- bounded calls ---------------------------------------------------------------------------------

_degraded: set = set()  # tracking URIs that failed in this process: later calls go to the spool at once
_warned: set = set()  # one warning line per process (and URI)
_lock = threading.Lock()


def reset() -> None:
    """Forget earlier failures (for tests, or a long-lived process that knows the server is back)."""
    _degraded.clear()
    _warned.clear()


def is_degraded(uri: str | None) -> bool:
    """True once a call to this tracking URI failed in this process (later calls are spooled)."""
    return bool(uri) and uri in _degraded


def _is_sqlite(uri: str) -> bool:
    return uri.startswith("sqlite:")


def _is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _timeout() -> float:
    try:
        return max(1.0, float(os.environ.get(ENV_TIMEOUT, DEFAULT_TIMEOUT)))
    except ValueError:
        return DEFAULT_TIMEOUT


def _prepare(uri: str):
    """Import what a call needs in this thread (an import abandoned in a worker thread would hold the import
    lock), cap MLflow's HTTP retries, and return the MlflowClient class."""
    if _is_http(uri):
        for key, value in HTTP_LIMITS.items():
            os.environ.setdefault(key, value)
    from mlflow.entities import Metric, Param, RunTag  # noqa: F401
    from mlflow.tracking import MlflowClient

    with contextlib.suppress(Exception):
        if _is_sqlite(uri):
            import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
        elif _is_http(uri):
            import mlflow.store.tracking.rest_store  # noqa: F401
    return MlflowClient


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


class StoreUnusable(OSError):
    """The store cannot work as it is (not a database, read-only): retrying does not help."""


def check_store(uri: str) -> None:
    """Raise a short :class:`StoreUnusable` when a sqlite store cannot work (not a database, read-only),
    before SQLAlchemy and alembic fail on it with pages of tracebacks."""
    path = _sqlite_path(uri)
    if path is None:
        return
    if path.exists():
        with open(path, "rb") as fh:
            head = fh.read(16)
        if head and head != b"SQLite format 3\x00":
            raise StoreUnusable(f"{path} is not an SQLite database (corrupt or another file)")
        if not os.access(path, os.W_OK):
            raise StoreUnusable(f"{path} is read-only")
        if not os.access(path.parent, os.W_OK):
            raise StoreUnusable(f"{path.parent} is read-only (sqlite needs to write its journal there)")
    elif not path.parent.is_dir():
        raise StoreUnusable(f"{path.parent} does not exist")
    elif not os.access(path.parent, os.W_OK):
        raise StoreUnusable(f"{path.parent} is read-only; cannot create {path.name}")


def _client(uri: str):
    """A client for uri; call inside :func:`_call` (creating a sqlite client may migrate the database)."""
    check_store(uri)
    return _prepare(uri)(tracking_uri=uri)


@contextlib.contextmanager
def _quiet():
    loggers = [logging.getLogger(name) for name in NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    state = {"restore": True}
    try:
        yield state
    finally:
        if state["restore"]:  # a call abandoned in its thread may still log: keep quiet then
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def _in_thread(fn, timeout: float):
    """fn() in a daemon thread (never holds up process exit); TimeoutError when it has not returned in time."""
    box = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    worker = threading.Thread(target=target, name="electra-ds-mlflow", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise TimeoutError(f"no answer within {timeout:.0f} s")
    if "error" in box:
        raise box["error"]
    return box.get("result")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    text = text[0] if text else ""
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= 240 else text[:237] + "..."


def _answered(uri: str, exc: BaseException) -> bool:
    code = getattr(exc, "error_code", None)
    if _is_sqlite(uri):  # MLflow reports most SQLAlchemy errors, a broken file too, as BAD_REQUEST
        return code in ("INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST")
    return code in ANSWERED


def _transient_sqlite(exc: BaseException) -> bool:
    text = str(exc).lower()
    return not isinstance(exc, (TimeoutError, StoreUnusable)) and any(marker in text for marker in SQLITE_TRANSIENT)


def _warn_once(key: str, message: str) -> None:
    with _lock:
        if key in _warned:
            return
        _warned.add(key)
    log.warning(message)


def _call(uri: str, fn, *, what: str, offline_note: str = "") -> tuple:
    """Run fn() with a deadline; ``(True, result)``, or ``(False, None)`` after at most one warning per process.

    A failure turns the URI offline for this process (later calls return at once). A sqlite store retries
    transient errors ("database is locked") within twice the deadline; an HTTP store gets one attempt
    (MLflow retries once inside it).
    """
    if uri in _degraded:
        return False, None
    try:
        _prepare(uri)
    except Exception as exc:  # mlflow missing or broken
        _degraded.add(uri)
        _warn_once(uri, f"MLflow: cannot load MLflow ({_reason(exc)}); tracking is off{offline_note}")
        return False, None
    timeout = _timeout()
    deadline = time.monotonic() + (2 * timeout if _is_sqlite(uri) else timeout)
    delay = 0.2
    while True:
        left = max(0.5, deadline - time.monotonic())
        with _quiet() as quiet:
            try:
                return True, _in_thread(fn, left)
            except Exception as exc:  # tracking must never kill the job
                error = exc
                quiet["restore"] = not isinstance(exc, TimeoutError)
        if _is_sqlite(uri) and _transient_sqlite(error) and time.monotonic() + delay < deadline:
            time.sleep(delay)  # another job holds the database: wait for it
            delay = min(delay * 2, 3.0)
            continue
        if _answered(uri, error):  # the store works; this one call was refused
            _warn_once(f"{uri}:{what}", f"MLflow: {what} was refused ({_reason(error)}); skipped")
            return False, None
        _degraded.add(uri)
        _warn_once(uri, f"MLflow: {what} failed at {uri} ({_reason(error)}); tracking continues offline for "
                        f"this process{offline_note}")
        return False, None


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


# -- the spool -------------------------------------------------------------------------------------

def _now_ms() -> int:
    return int(time.time() * 1000)


def _is_local(run_id) -> bool:
    return isinstance(run_id, str) and run_id.startswith(LOCAL_PREFIX)


class _Spool:
    """Append-only JSONL file of tracking calls that did not reach MLflow; created on the first record."""

    def __init__(self, directory, name: str):
        safe = re.sub(r"[^A-Za-z0-9._=+-]+", "_", name).strip("_") or "run"
        self.path = Path(directory) / f"{safe[:120]}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        self._described: set = set()

    def write(self, record: dict) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"v": 1, "time": _now_ms(), **record}, default=str, ensure_ascii=False) + "\n")
        except OSError as exc:
            _warn_once(f"spool:{self.path.parent}", f"MLflow: cannot write the tracking spool {self.path} "
                                                    f"({_reason(exc)}); these records are lost")

    def describe(self, run_id: str, info: dict | None, remote: bool) -> None:
        """The run record replay needs to find or recreate the run (once per run and file)."""
        if run_id in self._described or info is None:
            return
        self._described.add(run_id)
        self.write({"op": "run", "run": run_id, "remote": remote, **info})


class _Sink:
    """One MLflow run: calls go to the store while it answers, to the spool once it does not."""

    def __init__(self, uri: str, spool_dir, name: str):
        self.uri = uri
        self.spool = _Spool(spool_dir, name)
        self.run_id = None
        self.info = None  # experiment, artifact root, run name, tags, start time: enough to recreate the run
        self._client = None

    @property
    def note(self) -> str:
        results = self.spool.path.parent.parent
        return (f"; unsent records go to {self.spool.path.parent}/ (send them later: "
                f"electra-ds tracking-replay {results})")

    def client(self):
        if self._client is None:
            self._client = _client(self.uri)
        return self._client

    def start(self, experiment: str, artifact_root: str | None, run_name: str, tags: dict, what: str) -> str:
        self.info = {"uri": self.uri, "experiment": experiment, "artifact_root": artifact_root, "run_name": run_name,
                     "tags": dict(tags), "start_time": _now_ms()}

        def create():
            client = self.client()
            exp_id = experiment_id_for(client, experiment, artifact_root)
            return client.create_run(exp_id, run_name=run_name, tags=tags,
                                     start_time=self.info["start_time"]).info.run_id

        ok, run_id = _call(self.uri, create, what=what, offline_note=self.note)
        if ok and run_id:
            self.run_id = run_id
        else:
            self.run_id = LOCAL_PREFIX + uuid.uuid4().hex
            self.spool.describe(self.run_id, self.info, remote=False)
        return self.run_id

    def attach(self, run_id: str) -> None:
        self.run_id = run_id

    def send(self, fn, record: dict, what: str) -> None:
        """fn(client) against the store, or the record into the spool."""
        if not _is_local(self.run_id) and self.uri not in _degraded:
            ok, _ = _call(self.uri, lambda: fn(self.client()), what=what, offline_note=self.note)
            if ok or self.uri not in _degraded:  # sent, or refused by a working store
                return
        self.spool.describe(self.run_id, self.info, remote=not _is_local(self.run_id))
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


def _log_params(client, run_id: str, params: dict) -> None:
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])


def _log_metrics(client, run_id: str, rows: list) -> None:
    from mlflow.entities import Metric

    items = [Metric(k, v, ts, step) for k, v, ts, step in rows]
    for i in range(0, len(items), 500):
        client.log_batch(run_id, metrics=items[i:i + 500])


def _log_tags(client, run_id: str, tags: dict) -> None:
    from mlflow.entities import RunTag

    if tags:
        client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


# -- the pipeline's parent run ---------------------------------------------------------------------

_pipelines: dict = {}  # parent run id -> its _Sink (onstart and onsuccess run in one Snakemake process)


def _pipeline_spool_dir(uri: str, artifact_root: str | None, tags: dict) -> Path:
    if os.environ.get(ENV_SPOOL):
        return Path(os.environ[ENV_SPOOL])
    if tags.get("electra_ds.results_dir"):
        return Path(tags["electra_ds.results_dir"]) / SPOOL_DIRNAME
    if artifact_root and artifact_root.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return Path(unquote(urlparse(artifact_root).path)).parent / SPOOL_DIRNAME
    path = _sqlite_path(uri)
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
            sink.send(lambda c: _log_params(c, run_id, values), {"op": "params", "params": values},
                      what="logging the pipeline params")
        _pipelines[run_id] = sink
        return run_id
    except Exception as exc:  # never kill the workflow
        _warn_once(f"pipeline:{uri}", f"MLflow: creating the pipeline run failed ({_reason(exc)}); continuing")
        return None


def end_pipeline_run(uri: str, run_id: str | None, ok: bool) -> None:
    if not run_id or os.environ.get(ENV_ENABLED, "1") == "0":
        return
    try:
        sink = _pipelines.get(run_id)
        if sink is None:  # another process: a spool goes into $ELECTRA_DS_MLFLOW_SPOOL or beside the store
            sink = _Sink(uri, _pipeline_spool_dir(uri, None, {}), "pipeline")
            sink.attach(run_id)
        status, end = ("FINISHED" if ok else "FAILED"), _now_ms()
        sink.send(lambda c: c.set_terminated(run_id, status, end_time=end),
                  {"op": "terminated", "status": status, "end_time": end}, what="closing the pipeline run")
    except Exception as exc:
        _warn_once(f"pipeline-end:{uri}", f"MLflow: closing the pipeline run failed ({_reason(exc)}); continuing")


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

    @property
    def spool_path(self) -> Path:
        """Where this run's unsent records go (the file exists only once something was spooled)."""
        return self._sink.spool.path

    @property
    def offline(self) -> bool:
        """True when calls no longer reach MLflow (they are spooled)."""
        return bool(self.run_id) and (_is_local(self.run_id) or self.uri in _degraded)

    @property
    def _client(self):  # older callers reached for the client directly
        return self._sink._client

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self):
        if not self.enabled:
            return self
        try:
            parent = os.environ.get(ENV_PARENT)
            tags = {
                "electra_ds.rule": self.stage,
                "electra_ds.git_commit": os.environ.get(ENV_GIT_COMMIT) or git_commit(),
                "electra_ds.config_hash": os.environ.get(ENV_CONFIG_HASH, "standalone"),
                "electra_ds.study": os.environ.get(ENV_CONFIG_HASH, "standalone"),
                "electra_ds.kind": "stage",
            }
            tags.update({f"wildcard.{k}": str(v) for k, v in self.wildcards.items()})
            if _is_local(parent):  # the parent exists only in a spool: replay sets mlflow.parentRunId
                tags["electra_ds.spooled_parent"] = parent
            elif parent:
                tags["mlflow.parentRunId"] = parent
            name = self.stage + "".join(f"-{v}" for v in self.wildcards.values())
            self.run_id = self._sink.start(os.environ.get(ENV_EXPERIMENT, DEFAULT_EXPERIMENT),
                                           artifact_root_for(self.results_dir), name, tags,
                                           what=f"creating the run for stage {self.stage}")
        except Exception as exc:
            _warn_once(f"stage:{self.uri}", f"MLflow: creating the run for stage {self.stage} failed "
                                            f"({_reason(exc)}); continuing without it")
            self.run_id = None
        return self

    def __exit__(self, exc_type, exc, tb):
        if self.run_id:
            status = "FINISHED" if exc_type is None else ("KILLED" if exc_type is KeyboardInterrupt else "FAILED")
            end = _now_ms()
            self._send(lambda c: c.set_terminated(self.run_id, status, end_time=end),
                       {"op": "terminated", "status": status, "end_time": end}, what="closing the stage run")
        return False

    def _send(self, fn, record: dict, what: str) -> None:
        try:
            self._sink.send(fn, record, what)
        except Exception as exc:  # e.g. an unserialisable value: never raise into the stage
            _warn_once(f"send:{self.uri}:{what}", f"MLflow: {what} failed ({_reason(exc)}); skipped")

    # -- logging ---------------------------------------------------------------------------
    def log_params(self, params: dict) -> None:
        if not self.run_id:
            return
        try:
            values = _params_dict(params)
        except Exception:
            return
        self._send(lambda c: _log_params(c, self.run_id, values), {"op": "params", "params": values},
                   what="logging params")

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        if not self.run_id:
            return
        try:
            rows = _metric_rows(metrics, _now_ms(), int(step or 0))
        except Exception:
            return
        if rows:
            self._send(lambda c: _log_metrics(c, self.run_id, rows), {"op": "metrics", "metrics": rows},
                       what="logging metrics")

    def set_tags(self, tags: dict) -> None:
        if not self.run_id:
            return
        values = {str(k): str(v) for k, v in tags.items()}
        self._send(lambda c: _log_tags(c, self.run_id, values), {"op": "tags", "tags": values}, what="setting tags")

    def log_artifact(self, path, artifact_path: str | None = None) -> None:
        if not self.run_id or not Path(path).exists():
            return
        path = str(Path(path).resolve())
        self._send(lambda c: c.log_artifact(self.run_id, path, artifact_path),
                   {"op": "artifact", "path": path, "artifact_path": artifact_path}, what=f"logging artifact {path}")


# -- model runs (evaluate) -----------------------------------------------------------------------------

def _log_model_runs(client, evaluate_run_id: str, parent: str | None, study: str, models: dict, ts: int,
                    models_done: bool = False) -> None:
    """models: ``{name: (params, metrics)}`` with params as strings and metrics finite floats; models_done: only
    the parent's share (the model runs were logged already)."""
    from mlflow.entities import Metric, Param, RunTag

    def metric_items(metrics):
        return [Metric(k, float(v), ts, 0) for k, v in sorted(metrics.items())]

    exp_id = client.get_run(evaluate_run_id).info.experiment_id
    for name, (params, metrics) in ({} if models_done else models).items():
        found = client.search_runs([exp_id], filter_string=f"tags.`electra_ds.kind` = 'model' and "
                                   f"tags.`electra_ds.study` = '{study}' and tags.`electra_ds.model` = '{name}'",
                                   max_results=1)
        tags = {"electra_ds.kind": "model", "electra_ds.study": study, "electra_ds.model": name,
                "electra_ds.config_hash": study, "electra_ds.evaluate_run": evaluate_run_id}
        run_id = found[0].info.run_id if found else client.create_run(exp_id, run_name=name, tags=tags).info.run_id
        client.log_batch(run_id, metrics=metric_items(metrics),
                         params=[] if found else [Param(k, v) for k, v in sorted(params.items())])
        client.set_terminated(run_id, "FINISHED")
    if parent:
        primary_params, primary_metrics = next(iter(models.values()))
        client.log_batch(parent, metrics=metric_items(primary_metrics),
                         tags=[RunTag("electra_ds.models", ",".join(models)), RunTag("electra_ds.study", study)])


def log_model_runs(tracker: StageRun, models: dict) -> None:
    """One top-level run per model of the study (``{name: (params, metrics)}``), so the runs table and the compare
    view put models side by side without opening child runs; the primary (first) model's metrics also go on the
    pipeline's parent run, which stands for the whole invocation. A rerun updates the same runs. Never raises;
    spooled (and replayed with the rest) when the store does not answer."""
    if not getattr(tracker, "run_id", None) or not models:
        return
    try:
        study = os.environ.get(ENV_CONFIG_HASH, "standalone")
        ts = _now_ms()
        clean = {}
        for name, (params, metrics) in models.items():
            clean[str(name)] = ({str(k): str(v)[:6000] for k, v in params.items()},
                                {str(k): float(v) for k, v in metrics.items() if isinstance(v, (int, float))
                                 and not isinstance(v, bool) and math.isfinite(float(v))})
        parent = os.environ.get(ENV_PARENT)
        record = {"op": "model_runs", "parent": parent, "study": study, "ts": ts,
                  "models": {k: [p, m] for k, (p, m) in clean.items()}}
        tracker._send(lambda c: _log_model_runs(c, tracker.run_id, None if _is_local(parent) else parent, study,
                                                clean, ts), record, what="logging the model runs")
        if _is_local(parent) and not tracker.offline:
            # the model runs reached the store; the parent's share waits in the spool with the parent run
            tracker._sink.spool.describe(tracker.run_id, tracker._sink.info, remote=True)
            tracker._sink.spool.write({"run": tracker.run_id, **record, "models_done": True})
    except Exception as exc:
        _warn_once(f"models:{getattr(tracker, 'uri', '')}", f"MLflow: logging the model runs failed "
                                                            f"({_reason(exc)}); skipped")


# -- replay: send spooled records to MLflow -------------------------------------------------------------

def spool_dir_for(path) -> Path:
    """The spool folder of a results directory (or the spool folder itself)."""
    path = Path(path)
    if path.name == SPOOL_DIRNAME or (not (path / SPOOL_DIRNAME).exists() and any(path.glob("*.jsonl"))):
        return path
    return path / SPOOL_DIRNAME


def _read_spool(path: Path) -> list:
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s:%d: unreadable record skipped (cut off when the job died?)", path, n)
    return records


def _missing(exc: BaseException) -> bool:
    return getattr(exc, "error_code", None) in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def replay(results_dir, tracking_uri: str | None = None) -> dict:
    """Send every pending spool file under ``<results_dir>/mlflow-spool`` to MLflow, then rename it to
    ``*.jsonl.replayed``. Runs that exist only in the spool are created (tagged ``electra_ds.spool_id``, so an
    interrupted replay finds them again), children under their parent; the local-to-real id map is kept in
    ``mlflow-spool/replay-ids.json``. The store is ``tracking_uri``, else the one the records were meant for,
    else ``tracking_uri_for(results_dir)``. Returns counts; raises when the store cannot be reached (the files
    stay pending)."""
    spool = spool_dir_for(results_dir)
    files = sorted(spool.glob("*.jsonl"))
    content = {f: _read_spool(f) for f in files}
    runs = {}
    for records in content.values():
        for r in records:
            if r.get("op") == "run" and r.get("run"):
                runs.setdefault(r["run"], r)
    if not tracking_uri:
        meant = [r["uri"] for r in runs.values() if r.get("uri")]
        tracking_uri = max(set(meant), key=meant.count) if meant else tracking_uri_for(spool.parent)
    uri = tracking_uri
    summary = {"uri": uri, "spool": str(spool), "files": 0, "runs_created": 0, "records": 0, "skipped": 0,
               "pending": 0}
    if not files:
        return summary
    check_store(uri)
    from mlflow.exceptions import MlflowException

    client = _prepare(uri)(tracking_uri=uri)
    ids_path = spool / REPLAY_IDS
    all_ids = json.loads(ids_path.read_text(encoding="utf-8")) if ids_path.exists() else {}
    ids = all_ids.setdefault(uri, {})

    def save():
        tmp = ids_path.with_name(ids_path.name + ".tmp")
        tmp.write_text(json.dumps(all_ids, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, ids_path)

    def exists(run_id: str) -> bool:
        try:
            client.get_run(run_id)
            return True
        except MlflowException as exc:
            if _missing(exc):
                return False
            raise

    resolving = set()

    def resolve(run_id) -> str | None:
        if not run_id:
            return None
        if run_id in ids:
            return ids[run_id]
        rec = runs.get(run_id)
        if rec is None or (rec.get("remote") and not _is_local(run_id)):
            if not _is_local(run_id) and exists(run_id):  # a run the store has: log into it
                ids[run_id] = run_id
                return run_id
            if rec is None:
                return None
        if run_id in resolving:
            return None
        resolving.add(run_id)
        tags = dict(rec.get("tags") or {})
        parent = tags.pop("electra_ds.spooled_parent", None) or tags.get("mlflow.parentRunId")
        if parent:
            new_parent = resolve(parent)
            if new_parent:
                tags["mlflow.parentRunId"] = new_parent
            elif _is_local(parent):  # its parent is not in this spool (yet): a later replay links them
                tags["electra_ds.spooled_parent"] = parent
        tags["electra_ds.spool_id"] = run_id
        exp_id = experiment_id_for(client, rec.get("experiment") or DEFAULT_EXPERIMENT, rec.get("artifact_root"))
        found = client.search_runs([exp_id], f"tags.`electra_ds.spool_id` = '{run_id}'", max_results=1)
        if found:
            new = found[0].info.run_id
        else:
            new = client.create_run(exp_id, run_name=rec.get("run_name"), tags=tags,
                                    start_time=rec.get("start_time")).info.run_id
            summary["runs_created"] += 1
        ids[run_id] = new
        save()
        return new

    for path, records in content.items():
        unresolved = 0
        for r in records:
            op = r.get("op")
            if op == "run":
                resolve(r.get("run"))
                continue
            target = resolve(r.get("run"))
            if target is None:
                unresolved += 1
                continue
            try:
                if op == "params":
                    _log_params(client, target, r["params"])
                elif op == "metrics":
                    _log_metrics(client, target, r["metrics"])
                elif op == "tags":
                    _log_tags(client, target, r["tags"])
                elif op == "terminated":
                    client.set_terminated(target, r["status"], end_time=r.get("end_time"))
                elif op == "artifact":
                    if not Path(r["path"]).exists():
                        log.warning("%s: artifact %s is gone; skipped", path.name, r["path"])
                        summary["skipped"] += 1
                        continue
                    client.log_artifact(target, r["path"], r.get("artifact_path"))
                elif op == "model_runs":
                    parent = resolve(r.get("parent")) if r.get("parent") else None
                    _log_model_runs(client, target, parent, r["study"],
                                    {k: (v[0], v[1]) for k, v in r["models"].items()}, r["ts"],
                                    models_done=bool(r.get("models_done")))
                else:
                    log.warning("%s: unknown record %r skipped", path.name, op)
                    summary["skipped"] += 1
                    continue
                summary["records"] += 1
            except MlflowException as exc:
                if not _answered(uri, exc):
                    raise
                log.warning("%s: %s record refused by the store (%s); skipped", path.name, op, _reason(exc))
                summary["skipped"] += 1
        if unresolved:
            log.warning("%s: %d record(s) belong to a run this spool does not describe; the file stays pending",
                        path.name, unresolved)
            summary["pending"] += 1
            continue
        os.replace(path, path.with_name(path.name + ".replayed"))
        summary["files"] += 1

    # runs that reached the store while their pipeline parent was spooled: link them now
    local = {old: new for old, new in ids.items() if _is_local(old)}
    if local:
        experiments = [e.experiment_id for e in client.search_experiments()]
        token = None
        while experiments:
            page = client.search_runs(experiments, "tags.`electra_ds.spooled_parent` LIKE 'spool-%'",
                                      max_results=1000, page_token=token)
            for run in page:
                new_parent = local.get(run.data.tags.get("electra_ds.spooled_parent"))
                if new_parent:
                    client.set_tag(run.info.run_id, "mlflow.parentRunId", new_parent)
                    client.delete_tag(run.info.run_id, "electra_ds.spooled_parent")
            token = page.token
            if not token:
                break
    save()
    return summary


def add_arguments(parser) -> None:
    """``electra-ds tracking-replay``: the command line of :func:`replay`."""
    parser.add_argument("results_dir", help="results directory holding mlflow-spool/ (or the spool folder itself)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow store to send the records to (default: the store they were meant for, "
                             "else $MLFLOW_TRACKING_URI, else sqlite in the results directory)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def run_replay(args) -> int:
    logging.basicConfig(level=args.log_level, format="%(asctime)s tracking-replay %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    try:
        s = replay(args.results_dir, args.tracking_uri)
    except Exception as exc:
        print(f"electra-ds tracking-replay: error: {_reason(exc)} (the spool files stay pending)",
              file=__import__("sys").stderr)
        return 1
    print(f"tracking-replay: {s['files']} spool file(s) sent to {s['uri']}: {s['runs_created']} run(s) created, "
          f"{s['records']} record(s) logged, {s['skipped']} skipped, {s['pending']} file(s) still pending")
    return 0 if not s["pending"] else 1
