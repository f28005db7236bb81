"""The offline spool: the JSONL files tracking falls back to, and ``electra-ds tracking-replay`` that sends them.

Once a store fails (:mod:`electra_ds.tracking.store`), every later tracking call of the process goes straight to
a JSONL spool, ``<results_dir>/mlflow-spool/<stage>[-<wildcards>]-<pid>-<id>.jsonl`` (:class:`Spool`), one
record per call (run creation with experiment, tags and parent, params, metrics with step and timestamp, tags,
the end status, artifacts, dataset inputs and models by path). ``electra-ds tracking-replay RESULTS_DIR [--tracking-uri URI]`` sends the
spool to MLflow later (:func:`replay`), into the store the user names (``--tracking-uri``, else
``$MLFLOW_TRACKING_URI``, else the results directory's sqlite file), never one named inside a spool file, and uploads
artifacts and models only from under the results directory (a record pointing elsewhere, ``/etc/passwd`` say, is
refused with a warning naming it, and skipped). Runs that never reached MLflow got local ids (``spool-...``) and are
created then, children under their parent, and each replayed file is renamed to ``*.jsonl.replayed`` so a
second replay adds nothing. Every record can be sent twice without doubling anything (a replay cut off before
it renamed its file, or a record the store took just before it died): MLflow keeps a metric logged again with
the same step, timestamp and value once, a param or tag set to the same value, an artifact at its path and a
dataset input per run once, and :func:`~electra_ds.tracking.store.write_model` finds a model already logged.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import uuid
from pathlib import Path

from electra_ds.common.errors import UserError
from electra_ds.common.fileio import write_json
from electra_ds.common.layout import SPOOL_DIRNAME
from electra_ds.tracking.store import (
    DEFAULT_EXPERIMENT,
    artifact_root_for,
    client_for,
    experiment_id_for,
    is_answered,
    now_ms,
    short_reason,
    tracking_uri_for,
    warn_once,
    write_inputs,
    write_metrics,
    write_model,
    write_model_runs,
    write_params,
    write_tags,
)

log = logging.getLogger("electra_ds.tracking")  # one logger for all of tracking

LOCAL_PREFIX = "spool-"  # run ids given to runs that exist only in a spool so far
REPLAY_IDS = "replay-ids.json"  # in the spool folder: spooled run id -> run id in the store


def is_local(run_id) -> bool:
    """True for the local id of a run that exists only in a spool so far."""
    return isinstance(run_id, str) and run_id.startswith(LOCAL_PREFIX)


# -- writing the spool -----------------------------------------------------------------------------------

class Spool:
    """Append-only JSONL file of tracking calls that did not reach MLflow; created on the first record."""

    def __init__(self, directory, name: str):
        safe = re.sub(r"[^A-Za-z0-9._=+-]+", "_", name).strip("_") or "run"
        self.path = Path(directory) / f"{safe[:120]}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        self._described: set = set()

    def write(self, record: dict) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"v": 1, "time": now_ms(), **record}, default=str, ensure_ascii=False) + "\n")
        except OSError as exc:
            warn_once(f"spool:{self.path.parent}", f"MLflow: cannot write the tracking spool {self.path} "
                                                   f"({short_reason(exc)}); these records are lost")

    def describe(self, run_id: str, info: dict | None, remote: bool) -> None:
        """The run record replay needs to find or recreate the run (once per run and file)."""
        if run_id in self._described or info is None:
            return
        self._described.add(run_id)
        self.write({"op": "run", "run": run_id, "remote": remote, **info})


# -- replay: send spooled records to MLflow -------------------------------------------------------------

def spool_dir_for(path) -> Path:
    """The spool folder of a results directory (or the spool folder itself)."""
    path = Path(path)
    if path.name == SPOOL_DIRNAME or (not (path / SPOOL_DIRNAME).exists() and any(path.glob("*.jsonl"))):
        return path
    return path / SPOOL_DIRNAME


def read_spool(path: Path) -> list:
    """The records of one spool file; a line cut off when its job died is skipped with a warning."""
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


def replay(results_dir, tracking_uri: str | None = None, artifacts_under=()) -> dict:
    """Send every pending spool file under ``<results_dir>/mlflow-spool`` to MLflow, then rename it to
    ``*.jsonl.replayed``. Runs that exist only in the spool are created (tagged ``electra_ds.spool_id``, so an
    interrupted replay finds them again), children under their parent; the local-to-real id map is kept in
    ``mlflow-spool/replay-ids.json``. Returns counts; raises when the store cannot be reached (the files stay
    pending).

    A spool file is data, not instructions: the store is the one the user names (``tracking_uri``, else
    ``$MLFLOW_TRACKING_URI``, else the results directory's sqlite file), never the one the records were meant for
    (a spool naming another store, with no store named, is a UserError saying which to name), a new experiment's
    artifact location is the results directory's, and an artifact or model is uploaded only when it lies under the
    results directory or one of ``artifacts_under`` (symbolic links resolved); any other is refused with a warning
    naming it and skipped (counted in ``refused``), and the rest of the file is sent."""
    spool = spool_dir_for(results_dir)
    results = spool.parent
    files = sorted(spool.glob("*.jsonl"))
    content = {f: read_spool(f) for f in files}
    runs = {}
    for records in content.values():
        for r in records:
            if r.get("op") == "run" and r.get("run"):
                runs.setdefault(r["run"], r)
    named = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    uri = tracking_uri or tracking_uri_for(results)
    meant = sorted({r["uri"] for r in runs.values() if r.get("uri")} - {uri})
    if meant and not named:
        raise UserError(f"the spooled records were written for {', '.join(meant)}; replay sends them only to a store "
                        f"you name", path=spool, fix=f"run electra-ds tracking-replay {results} --tracking-uri URI "
                                                    f"(that store, if it is the one you mean, or another)")
    if meant:
        log.info("records written for %s are sent to %s, the store named", ", ".join(meant), uri)
    roots = [Path(os.path.realpath(results)), *(Path(os.path.realpath(r)) for r in artifacts_under)]
    summary = {"uri": uri, "spool": str(spool), "files": 0, "runs_created": 0, "records": 0, "skipped": 0,
               "refused": 0, "pending": 0}
    if not files:
        return summary
    client = client_for(uri)  # checks the store first: a short error for a broken sqlite file
    from mlflow.exceptions import MlflowException

    ids_path = spool / REPLAY_IDS
    all_ids = json.loads(ids_path.read_text(encoding="utf-8")) if ids_path.exists() else {}
    ids = all_ids.setdefault(uri, {})

    def save():
        write_json(ids_path, all_ids)  # atomic, and never through a link planted at its name or its temporary's

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
        if rec is None or (rec.get("remote") and not is_local(run_id)):
            if not is_local(run_id) and exists(run_id):  # a run the store has: log into it
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
            elif is_local(parent):  # its parent is not in this spool (yet): a later replay links them
                tags["electra_ds.spooled_parent"] = parent
        tags["electra_ds.spool_id"] = run_id
        exp_id = experiment_id_for(client, rec.get("experiment") or DEFAULT_EXPERIMENT,
                                   artifact_root_for(results, uri))  # not the location a spool file names
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
            outside = _outside(r, roots)
            if outside:
                log.warning("%s: %s record refused: %s; not uploaded (only files under %s are)", path.name, op,
                            outside, " or ".join(map(str, roots)))
                summary["refused"] += 1
                continue
            try:
                if op == "params":
                    write_params(client, target, r["params"])
                elif op == "metrics":
                    write_metrics(client, target, r["metrics"])
                elif op == "tags":
                    write_tags(client, target, r["tags"])
                elif op == "terminated":
                    client.set_terminated(target, r["status"], end_time=r.get("end_time"))
                elif op == "artifact":
                    if not Path(r["path"]).exists():
                        log.warning("%s: artifact %s is gone; skipped", path.name, r["path"])
                        summary["skipped"] += 1
                        continue
                    client.log_artifact(target, r["path"], r.get("artifact_path"))
                elif op == "inputs":
                    write_inputs(client, target, r["datasets"])
                elif op == "model":
                    if not (Path(r["model"]["path"]) / "config.json").is_file():
                        log.warning("%s: model folder %s is gone; skipped", path.name, r["model"]["path"])
                        summary["skipped"] += 1
                        continue
                    try:
                        write_model(client, target, r["model"])
                    except (MlflowException, OSError):  # the store's answer, or the way to it: handled below
                        raise
                    except Exception as exc:  # the folder cannot be made into an MLflow model: no retry helps
                        log.warning("%s: model %s cannot be logged (%s); skipped", path.name, r["model"]["path"],
                                    short_reason(exc))
                        summary["skipped"] += 1
                        continue
                elif op == "model_runs":
                    parent = resolve(r.get("parent")) if r.get("parent") else None
                    write_model_runs(client, target, parent, r["study"],
                                    {k: (v[0], v[1]) for k, v in r["models"].items()}, r["ts"],
                                    models_done=bool(r.get("models_done")))
                else:
                    log.warning("%s: unknown record %r skipped", path.name, op)
                    summary["skipped"] += 1
                    continue
                summary["records"] += 1
            except MlflowException as exc:
                if not is_answered(uri, exc):
                    raise
                log.warning("%s: %s record refused by the store (%s); skipped", path.name, op, short_reason(exc))
                summary["skipped"] += 1
        if unresolved:
            log.warning("%s: %d record(s) belong to a run this spool does not describe; the file stays pending",
                        path.name, unresolved)
            summary["pending"] += 1
            continue
        os.replace(path, path.with_name(path.name + ".replayed"))
        summary["files"] += 1

    # runs that reached the store while their pipeline parent was spooled: link them now
    local = {old: new for old, new in ids.items() if is_local(old)}
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


def _outside(record: dict, roots: list) -> str | None:
    """Why an artifact or model record points outside ``roots`` (every file of a folder, links resolved), or None."""
    if record.get("op") == "artifact":
        where = record.get("path")
    elif record.get("op") == "model":
        where = (record.get("model") or {}).get("path")
    else:
        return None
    if not isinstance(where, str) or not where:
        return f"no path ({where!r})"
    top = Path(where)
    paths = [top]
    if top.is_dir() and not top.is_symlink():
        paths += [Path(d) / n for d, dirs, files in os.walk(top) for n in dirs + files]
    for item in paths:
        real = Path(os.path.realpath(item))
        if not any(real == root or real.is_relative_to(root) for root in roots):
            return f"{item} is outside the results directory" + (f" (it resolves to {real})" if real != item else "")
    return None


def add_arguments(parser) -> None:
    """``electra-ds tracking-replay``: the command line of :func:`replay`."""
    parser.add_argument("results_dir", help="results directory holding mlflow-spool/ (or the spool folder itself)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow store to send the records to (default: $MLFLOW_TRACKING_URI, else sqlite in the "
                             "results directory; never a store named in a spool file)")
    parser.add_argument("--artifacts-under", action="append", default=[], metavar="DIR",
                        help="also upload artifacts and models lying under DIR (default: only those under the "
                             "results directory); repeatable")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def run_replay(args) -> int:
    logging.basicConfig(level=args.log_level, format="%(asctime)s tracking-replay %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    try:
        s = replay(args.results_dir, args.tracking_uri, args.artifacts_under)
    except UserError as exc:
        print(f"electra-ds tracking-replay: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        print(f"electra-ds tracking-replay: error: {short_reason(exc)} (the spool files stay pending)",
              file=sys.stderr)
        return 1
    print(f"tracking-replay: {s['files']} spool file(s) sent to {s['uri']}: {s['runs_created']} run(s) created, "
          f"{s['records']} record(s) logged, {s['skipped']} skipped, {s['refused']} refused (outside the results "
          f"directory), {s['pending']} file(s) still pending")
    return 0 if not s["pending"] and not s["refused"] else 1
