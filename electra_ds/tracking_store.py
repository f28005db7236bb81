"""Talking to the MLflow store without ever blocking or killing a job: bounded calls, store checks, what is written.

Tracking never blocks or kills a job. Each call (:func:`bounded_call`) runs in a daemon thread with a deadline
(``ELECTRA_DS_MLFLOW_TIMEOUT``, 15 s; MLflow's own HTTP retries are capped to fit in it) and a sqlite store's
"database is locked" is retried within twice that. The first call that fails gives one warning line and turns
the store's URI *offline* (:func:`is_degraded`) for the rest of the process: callers then send their records to
the spool (:mod:`electra_ds.tracking_replay`) instead. A broken sqlite file (not a database, read-only) is found
by :func:`check_store` before SQLAlchemy and alembic fail on it with pages of tracebacks.

Also here: where the store and artifacts live by default (:func:`tracking_uri_for`, :func:`artifact_root_for`),
the experiment lookup (:func:`experiment_id_for`), and the client writes shared by live tracking and replay
(``write_params``, ``write_metrics``, ``write_tags``, ``write_model_runs``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from pathlib import Path

# One logger for all of tracking (store, API, replay): filters and levels set on it keep working.
log = logging.getLogger("electra_ds.tracking")

ENV_TIMEOUT = "ELECTRA_DS_MLFLOW_TIMEOUT"  # seconds one tracking call may take (default 15)
DEFAULT_TIMEOUT = 15.0
DEFAULT_EXPERIMENT = "electra-ds"

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


def now_ms() -> int:
    return int(time.time() * 1000)


# -- failure state -----------------------------------------------------------------------------------

degraded_uris: set = set()  # tracking URIs that failed in this process: later calls go to the spool at once
_warned: set = set()  # one warning line per process (and URI)
_lock = threading.Lock()


def reset() -> None:
    """Forget earlier failures (for tests, or a long-lived process that knows the server is back)."""
    degraded_uris.clear()
    _warned.clear()


def is_degraded(uri: str | None) -> bool:
    """True once a call to this tracking URI failed in this process (later calls are spooled)."""
    return bool(uri) and uri in degraded_uris


def warn_once(key: str, message: str) -> None:
    """Log message as a warning, once per process for each key."""
    with _lock:
        if key in _warned:
            return
        _warned.add(key)
    log.warning(message)


def short_reason(exc: BaseException) -> str:
    """One line naming the error, for a warning."""
    text = str(exc).strip().splitlines()
    text = text[0] if text else ""
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= 240 else text[:237] + "..."


# -- the store -----------------------------------------------------------------------------------------

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


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other stores and in-memory databases)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


class StoreUnusable(OSError):
    """The store cannot work as it is (not a database, read-only): retrying does not help."""


def check_store(uri: str) -> None:
    """Raise a short :class:`StoreUnusable` when a sqlite store cannot work (not a database, read-only),
    before SQLAlchemy and alembic fail on it with pages of tracebacks."""
    path = sqlite_path(uri)
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


def client_for(uri: str):
    """A client for uri; call inside :func:`bounded_call` (creating a sqlite client may migrate the database)."""
    check_store(uri)
    return _prepare(uri)(tracking_uri=uri)


# -- bounded calls -----------------------------------------------------------------------------------

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


def is_answered(uri: str, exc: BaseException) -> bool:
    """True when the store answered and refused this one call (it works; nothing to spool)."""
    code = getattr(exc, "error_code", None)
    if _is_sqlite(uri):  # MLflow reports most SQLAlchemy errors, a broken file too, as BAD_REQUEST
        return code in ("INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST")
    return code in ANSWERED


def _transient_sqlite(exc: BaseException) -> bool:
    text = str(exc).lower()
    return not isinstance(exc, (TimeoutError, StoreUnusable)) and any(marker in text for marker in SQLITE_TRANSIENT)


def bounded_call(uri: str, fn, *, what: str, offline_note: str = "") -> tuple:
    """Run fn() with a deadline; ``(True, result)``, or ``(False, None)`` after at most one warning per process.

    A failure turns the URI offline for this process (later calls return at once). A sqlite store retries
    transient errors ("database is locked") within twice the deadline; an HTTP store gets one attempt
    (MLflow retries once inside it).
    """
    if uri in degraded_uris:
        return False, None
    try:
        _prepare(uri)
    except Exception as exc:  # mlflow missing or broken
        degraded_uris.add(uri)
        warn_once(uri, f"MLflow: cannot load MLflow ({short_reason(exc)}); tracking is off{offline_note}")
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
        if is_answered(uri, error):  # the store works; this one call was refused
            warn_once(f"{uri}:{what}", f"MLflow: {what} was refused ({short_reason(error)}); skipped")
            return False, None
        degraded_uris.add(uri)
        warn_once(uri, f"MLflow: {what} failed at {uri} ({short_reason(error)}); tracking continues offline for "
                       f"this process{offline_note}")
        return False, None


# -- what is written (live and on replay) ----------------------------------------------------------------

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


def write_params(client, run_id: str, params: dict) -> None:
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])


def write_metrics(client, run_id: str, rows: list) -> None:
    """rows: ``[key, value, timestamp_ms, step]``."""
    from mlflow.entities import Metric

    items = [Metric(k, v, ts, step) for k, v, ts, step in rows]
    for i in range(0, len(items), 500):
        client.log_batch(run_id, metrics=items[i:i + 500])


def write_tags(client, run_id: str, tags: dict) -> None:
    from mlflow.entities import RunTag

    if tags:
        client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def write_model_runs(client, evaluate_run_id: str, parent: str | None, study: str, models: dict, ts: int,
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
