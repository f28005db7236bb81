"""Tracking: the run each stage job logs to, and the pipeline's parent run.

* :mod:`~electra_ds.tracking.base`: the :class:`Tracker` protocol the stages use (start and end a run, log params,
  metrics, tags, artifacts, the dataset input, a model, the models of a study; find earlier runs for the report)
  and :class:`NullTracker`, which logs nowhere;
* :mod:`~electra_ds.tracking.mlflow_run`: MLflow, the one backend (:class:`StageRun`, the pipeline's parent run);
* :mod:`~electra_ds.tracking.store` and :mod:`~electra_ds.tracking.replay`: bounded calls to the MLflow store and
  the spool that ``electra-ds tracking-replay`` sends later.

:func:`open_tracker` is how ``electra-ds <stage>`` gets its tracker. This module re-exports the names the Snakefile,
the stages and the tests use (``tracking.StageRun``, ``tracking.start_pipeline_run``, ``tracking.reset``, ...).
"""

from __future__ import annotations

import os

from electra_ds.tracking.base import NullTracker, Tracker
from electra_ds.tracking.mlflow_run import (
    ENV_CONFIG_HASH,
    ENV_ENABLED,
    ENV_EXPERIMENT,
    ENV_GIT_COMMIT,
    ENV_PARENT,
    ENV_SPOOL,
    ENV_SYSTEM_METRICS,
    OFF_NOTE,
    StageRun,
    end_pipeline_run,
    find_earlier_runs,
    git_commit,
    shards_dataset,
    standard_tags,
    start_pipeline_run,
)
from electra_ds.tracking.replay import LOCAL_PREFIX, REPLAY_IDS, SPOOL_DIRNAME, replay, spool_dir_for
from electra_ds.tracking.store import (
    DEFAULT_TIMEOUT,
    ENV_TIMEOUT,
    HTTP_LIMITS,
    StoreUnusable,
    artifact_root_for,
    check_store,
    degraded_uris as _degraded,  # noqa: F401  (the failed-store set)
    reset,
    tracking_uri_for,
)

__all__ = [
    "DEFAULT_TIMEOUT", "ENV_CONFIG_HASH", "ENV_ENABLED", "ENV_EXPERIMENT", "ENV_GIT_COMMIT", "ENV_PARENT", "ENV_SPOOL",
    "ENV_SYSTEM_METRICS", "ENV_TIMEOUT", "HTTP_LIMITS", "LOCAL_PREFIX", "NullTracker", "OFF_NOTE", "REPLAY_IDS",
    "SPOOL_DIRNAME", "StageRun", "StoreUnusable", "Tracker", "artifact_root_for", "check_store", "end_pipeline_run",
    "find_earlier_runs", "git_commit", "open_tracker", "replay", "reset", "shards_dataset", "spool_dir_for",
    "standard_tags", "start_pipeline_run", "tracking_uri_for",
]

RANK0_NOTE = "tracking runs on rank 0 only"


def open_tracker(stage: str, *, results_dir=".", tracking_uri: str | None = None, wildcards: dict | None = None,
                 enabled: bool = True) -> Tracker:
    """The tracker of one stage job, used as ``with open_tracker(...) as tracker``: a :class:`NullTracker` where
    tracking is off (``ELECTRA_DS_MLFLOW=0``, or ``enabled`` False: ranks other than 0), else an MLflow
    :class:`StageRun` (its store: ``tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else
    ``<results_dir>/mlflow.db``). A second backend is chosen here."""
    if os.environ.get(ENV_ENABLED, "1") == "0":
        return NullTracker(OFF_NOTE)
    if not enabled:
        return NullTracker(RANK0_NOTE)
    return StageRun(stage, results_dir=results_dir, tracking_uri=tracking_uri, wildcards=wildcards)
