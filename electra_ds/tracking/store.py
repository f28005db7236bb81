"""Talking to the MLflow store without ever blocking or killing a job: bounded calls, store checks, what is written.

Tracking never blocks or kills a job. Each call (:func:`bounded_call`) runs in a daemon thread with a deadline
(``ELECTRA_DS_MLFLOW_TIMEOUT``, 15 s; MLflow's own HTTP retries are capped to fit in it) and a sqlite store's
"database is locked" is retried within twice that. The first call that fails gives one warning line and turns
the store's URI *offline* (:func:`is_degraded`) for the rest of the process: callers then send their records to
the spool (:mod:`electra_ds.tracking.replay`) instead. A broken sqlite file (not a database, read-only) is found
by :func:`check_store` before SQLAlchemy and alembic fail on it with pages of tracebacks.

Also here: where the store and artifacts live by default (:func:`tracking_uri_for`, :func:`artifact_root_for`:
a tracking server keeps the artifacts where it was told to, ``mlflow server --artifacts-destination``), the
experiment lookup (:func:`experiment_id_for`), and the client writes shared by live tracking and replay
(``write_params``, ``write_metrics``, ``write_tags``, ``write_inputs``, ``write_model``, ``write_model_runs``),
each of which can be sent twice without doubling anything.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from pathlib import Path

from electra_ds.common.layout import MLARTIFACTS, MLFLOW_DB

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
# Set for every store (a user's own value wins): no usage telemetry from compute nodes that have no internet,
# no progress bars in job logs.
MLFLOW_QUIET = {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
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
    return f"sqlite:///{Path(results_dir).resolve() / MLFLOW_DB}"


def is_server(uri: str | None) -> bool:
    """True for a tracking server (``http(s)://``, ``databricks``): it decides where artifacts go."""
    return bool(uri) and uri.startswith(("http://", "https://", "databricks"))


def artifact_root_for(results_dir, tracking_uri: str | None = None) -> str | None:
    """Where a new experiment keeps its artifacts: ``<results_dir>/mlartifacts`` for a local store (sqlite, a
    database URI), None for a tracking server, so that the server's own artifact store is used
    (``mlflow server --artifacts-destination``; artifacts travel through the server)."""
    if is_server(tracking_uri):
        return None
    return (Path(results_dir).resolve() / MLARTIFACTS).as_uri()


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
    for key, value in MLFLOW_QUIET.items():
        os.environ.setdefault(key, value)
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

_quiet_lock = threading.Lock()
_quiet_state = {"depth": 0, "levels": None, "hold": False}


@contextlib.contextmanager
def _quiet():
    """Silence NOISY_LOGGERS during tracking calls; several threads may be in calls at once (system metrics):
    the first in saves the levels, the last out restores them. A call abandoned in its thread may still log, so
    after one (``state["restore"] = False``) they stay quiet."""
    loggers = [logging.getLogger(name) for name in NOISY_LOGGERS]
    with _quiet_lock:
        if _quiet_state["levels"] is None:
            _quiet_state["levels"] = [lg.level for lg in loggers]
            for lg in loggers:
                lg.setLevel(logging.CRITICAL + 1)
        _quiet_state["depth"] += 1
    state = {"restore": True}
    try:
        yield state
    finally:
        with _quiet_lock:
            _quiet_state["depth"] -= 1
            _quiet_state["hold"] = _quiet_state["hold"] or not state["restore"]
            if _quiet_state["depth"] == 0 and not _quiet_state["hold"]:
                for lg, level in zip(loggers, _quiet_state["levels"]):
                    lg.setLevel(level)
                _quiet_state["levels"] = None


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


def bounded_call(uri: str, fn, *, what: str, offline_note: str = "", timeout: float | None = None) -> tuple:
    """Run fn() with a deadline; ``(True, result)``, or ``(False, None)`` after at most one warning per process.

    A failure turns the URI offline for this process (later calls return at once). A sqlite store retries
    transient errors ("database is locked") within twice the deadline; an HTTP store gets one attempt
    (MLflow retries once inside it). ``timeout``: a longer deadline for one call that moves a lot of data (a
    model); each request in it still has MLflow's short HTTP timeout, so a dead or silent server fails as fast.
    """
    if uri in degraded_uris:
        return False, None
    try:
        _prepare(uri)
    except Exception as exc:  # mlflow missing or broken
        degraded_uris.add(uri)
        warn_once(uri, f"MLflow: cannot load MLflow ({short_reason(exc)}); tracking is off{offline_note}")
        return False, None
    timeout = max(timeout or 0.0, _timeout())
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


def write_inputs(client, run_id: str, datasets: list) -> None:
    """datasets: ``{name, digest, source_type, source, schema, profile, context}`` each (:func:`dataset_record`);
    MLflow keeps one input per dataset and run, so a second send adds nothing."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    inputs = [DatasetInput(Dataset(name=d["name"], digest=d["digest"], source_type=d["source_type"],
                                   source=d["source"], schema=d.get("schema"), profile=d.get("profile")),
                           tags=[InputTag(MLFLOW_DATASET_CONTEXT, d["context"])] if d.get("context") else [])
              for d in datasets]
    client.log_inputs(run_id, datasets=inputs)


# An exported discriminator is logged with MLflow's transformers flavor as a feature-extraction pipeline (model +
# tokenizer): MLflow's flavor has no task for ElectraForPreTraining's replaced-token head, and feature extraction
# runs any model (it returns the discriminator's per-token logits). ``mlflow.transformers.load_model`` gives the
# pipeline back; ``.model`` is the ElectraForPreTraining.
MODEL_TASK = "feature-extraction"
MODEL_PACKAGES = ("torch", "transformers", "tokenizers", "safetensors")


def _requirements() -> list:
    """The model's pip requirements, pinned to what is installed (MLflow's own guess asks for torchvision)."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for name in MODEL_PACKAGES:
        try:
            pins.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            pins.append(name)
    return pins


@contextlib.contextmanager
def _fluent_store(uri: str):
    """MLflow's model logging reads the process-wide tracking URI: point it at ``uri`` for the call."""
    import mlflow
    from mlflow.tracking._tracking_service.utils import is_tracking_uri_set

    before = mlflow.get_tracking_uri() if is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)


def write_model(client, run_id: str, model: dict) -> str:
    """Log the exported model folder ``model["path"]`` as an MLflow model named ``model["name"]`` of the run
    (transformers flavor; the folder's README.md as its model card), then register it as a version of
    ``model["registered_model_name"]`` when one is named. Returns the model id. Sent twice, it finds the model the
    run already has (READY) and the version already registered from it: nothing is doubled. A model left PENDING
    by an interrupted attempt is marked FAILED and logged anew."""
    import mlflow
    from mlflow.entities import LoggedModelStatus

    path, name = Path(model["path"]), model["name"]
    exp_id = client.get_run(run_id).info.experiment_id
    model_id = None
    for found in client.search_logged_models([exp_id], filter_string=f"source_run_id = '{run_id}' AND name = '{name}'"):
        if found.status == LoggedModelStatus.READY and model_id is None:
            model_id = found.model_id
        elif found.status == LoggedModelStatus.PENDING:
            client.finalize_logged_model(found.model_id, LoggedModelStatus.FAILED)
    if model_id is None:
        from huggingface_hub import ModelCard
        from transformers import AutoModelForPreTraining, AutoTokenizer

        from electra_ds.common import alibi

        card = ModelCard.load(path / "README.md") if (path / "README.md").is_file() else None
        components = {"model": AutoModelForPreTraining.from_pretrained(
                          path, attn_implementation=alibi.implementation(path)),
                      "tokenizer": AutoTokenizer.from_pretrained(path)}
        logged = client.create_logged_model(exp_id, name=name, source_run_id=run_id,
                                            tags={"electra_ds.export": str(path)})
        with _fluent_store(client.tracking_uri):
            mlflow.transformers.log_model(components, name=name, task=MODEL_TASK, run_id=run_id,
                                          model_id=logged.model_id, model_card=card, await_registration_for=0,
                                          pip_requirements=_requirements())
        if client.get_logged_model(logged.model_id).status != LoggedModelStatus.READY:
            client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
        model_id = logged.model_id
    registered = model.get("registered_model_name")
    if registered and not client.search_model_versions(f"name = '{registered}' AND run_id = '{run_id}'"):
        from mlflow.exceptions import MlflowException

        try:
            client.create_registered_model(registered)
        except MlflowException as exc:
            if getattr(exc, "error_code", None) != "RESOURCE_ALREADY_EXISTS":
                raise
        client.create_model_version(registered, f"models:/{model_id}", run_id=run_id, model_id=model_id,
                                    await_creation_for=0)
    return model_id


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
                                   f"tags.`electra_ds.pipeline.study` = '{study}' and tags.`electra_ds.pretraining.model` = '{name}'",
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
