"""What a stage logs to: the :class:`Tracker` protocol, and :class:`NullTracker`, which logs nowhere.

``electra-ds <stage>`` opens one tracker per job (:func:`electra_ds.tracking.open_tracker`) and hands it to the
stage's ``run(args, tracker)``; the stage, its progress reports and the helpers it calls use these methods and
nothing else. MLflow is the one backend (:class:`electra_ds.tracking.mlflow_run.StageRun`); another is one new
module with a class that has these methods (``isinstance(obj, Tracker)`` checks that they are all there), chosen in
``open_tracker``. A tracker never raises into the stage and never holds it up: logging is best effort.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Tracker(Protocol):
    """One tracked run of one stage job. The run starts when its ``with`` block is entered and ends when the block
    is left: finished, failed (an exception) or killed (Ctrl-C)."""

    def __enter__(self) -> Tracker:
        """Start the run."""

    def __exit__(self, exc_type, exc, tb) -> bool:
        """End the run with the status the block ended in; returns False (an exception goes on)."""

    def log_params(self, params: dict) -> None:
        """The run's settings; nested dicts become dotted keys (``model.layers``)."""

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        """Numbers at ``step`` (0 when None); nested dicts become dotted keys, values that are not finite numbers
        are left out."""

    def set_tags(self, tags: dict) -> None:
        """Labels of the run (values as text)."""

    def log_artifact(self, path, artifact_path: str | None = None) -> None:
        """A file the stage wrote, kept with the run (under ``artifact_path``); a missing file is skipped."""

    def log_input(self, dataset: dict) -> None:
        """The dataset the run read (:func:`electra_ds.tracking.mlflow_run.shards_dataset`: name, digest, source,
        profile, context)."""

    def log_model(self, path, name: str = "discriminator", registered_model_name: str | None = None) -> None:
        """An exported Hugging Face model folder as a model of the run, registered as a new version of
        ``registered_model_name`` when given."""

    def log_model_runs(self, models: dict) -> None:
        """The models of a study side by side (evaluate): ``{name: (params, metrics)}``, the primary model first."""

    def earlier_runs(self, rule: str, limit: int) -> tuple[list, str]:
        """Up to ``limit`` finished runs of ``rule`` other than this one, newest first, and a note saying where
        they came from or why there are none: ``(runs, note)``, each run ``{"run_id", "label", "experiment",
        "metrics"}``."""


class NullTracker:
    """A tracker that logs nowhere and keeps nothing: what a job gets where tracking is off
    (``ELECTRA_DS_MLFLOW=0``, ranks other than 0), and what tests hand a stage. ``reason`` is the note
    :meth:`earlier_runs` gives (the report prints it)."""

    def __init__(self, reason: str = "tracking is off"):
        self.reason = reason

    def __enter__(self) -> NullTracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        return False

    def log_params(self, params: dict) -> None:
        pass

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        pass

    def set_tags(self, tags: dict) -> None:
        pass

    def log_artifact(self, path, artifact_path: str | None = None) -> None:
        pass

    def log_input(self, dataset: dict) -> None:
        pass

    def log_model(self, path, name: str = "discriminator", registered_model_name: str | None = None) -> None:
        pass

    def log_model_runs(self, models: dict) -> None:
        pass

    def earlier_runs(self, rule: str, limit: int) -> tuple[list, str]:
        return [], self.reason
