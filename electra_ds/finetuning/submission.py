"""GLUE leaderboard submission: one TSV per task with the server's file names, zipped for upload.

The GLUE server (gluebenchmark.com) expects a zip whose root holds ``CoLA.tsv, SST-2.tsv, MRPC.tsv,
STS-B.tsv, QQP.tsv, MNLI-m.tsv, MNLI-mm.tsv, QNLI.tsv, RTE.tsv, WNLI.tsv, AX.tsv``, each with a
header ``index<TAB>prediction`` and one row per test example: ``0``/``1`` for CoLA, SST-2, MRPC,
QQP and WNLI, a float in [0, 5] for STS-B, ``entailment``/``neutral``/``contradiction`` for MNLI and
AX, ``entailment``/``not_entailment`` for QNLI and RTE. The finetune stage already writes its test
predictions in that form (``glue.prediction_to_string``); this module picks one seed per task,
checks every row against the task's label set and writes the files and the zip atomically.

Which seed: by default the **median seed** - the seed whose main dev score is the median over seeds
(for an even count the lower of the two middle scores; ties go to the lower seed). It is a
representative run, so the test score is not inflated by picking the luckiest seed on dev. ``best``
picks the seed with the highest main dev score instead (what BERT-style papers often submit).

Probe tasks are never part of a submission. Tasks without test predictions (or missing tasks) are
listed in the returned manifest under ``missing``; the zip holds what exists and
``complete`` says whether it has all eleven files the server needs.
"""

from __future__ import annotations

import csv
import statistics
import zipfile
from pathlib import Path

from electra_ds.common.errors import UserError
from electra_ds.common.fileio import atomic_path
from electra_ds.finetuning.glue import TASKS, get_task

# (task, test split) -> file name the GLUE server expects (AX comes from the MNLI job), and the rows of the official
# test sets, to flag partial predictions (e.g. a header-only file): both from the tasks' `submission` (glue.py), in
# task order with AX last, as the GLUE server's sample submission lists it
_FILES = sorted(((t.name, split, fname, rows) for t in TASKS.values() for split, (fname, rows) in t.submission.items()),
                key=lambda item: item[1] == "ax")
SUBMISSION_FILES = {(task, split): fname for task, split, fname, _ in _FILES}
OFFICIAL_TEST_ROWS = {fname: rows for _, _, fname, rows in _FILES}
SEED_CHOICES = ("median", "best")


def choose_seed(runs: list, how: str = "median") -> dict:
    """The run (a metrics.json dict with ``seed`` and ``main``) to submit for one task."""
    if how not in SEED_CHOICES:
        raise UserError(f"'{how}' is not one of {', '.join(SEED_CHOICES)}", field="submission_seed")
    runs = sorted(runs, key=lambda r: r["seed"])
    if how == "best":
        return max(runs, key=lambda r: (float(r["main"]), -r["seed"]))
    target = statistics.median_low([float(r["main"]) for r in runs])
    return min(runs, key=lambda r: (abs(float(r["main"]) - target), r["seed"]))


def _read_predictions(path: Path, task_name: str) -> list:
    task = get_task(task_name)
    if not path.is_file():
        raise UserError("does not exist", path=path, fix="rerun the finetune job that writes it")
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows or rows[0] != ["index", "prediction"]:
        raise UserError("has no 'index<TAB>prediction' header", path=path)
    out = []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != 2:
            raise UserError(f"line {line} has {len(row)} fields, expected 2", path=path)
        index, label = row
        if task.is_regression:
            try:
                ok = 0.0 <= float(label) <= 5.0
            except ValueError:
                ok = False
        else:
            ok = label in task.labels
        if not ok:
            allowed = "a number in [0, 5]" if task.is_regression else ", ".join(task.labels)
            raise UserError(f"line {line}: prediction '{label}' is not {allowed}", path=path,
                            field="prediction")
        out.append((index, label))
    return out


def _prediction_paths(run: dict) -> dict:
    """{(task, split): path} of one run's prediction files, from its metrics.json."""
    base = Path(run["_path"]).parent
    paths = {}
    for split, info in (run.get("test_predictions") or {}).items():
        if isinstance(info, dict) and info.get("file"):
            paths[(run["task"], split)] = base / info["file"]
    return paths


def build_submission(results: list, zip_path, how: str = "median") -> dict:
    """Write the leaderboard zip from finetune results; return a manifest (files, seeds, missing)."""
    by_task: dict = {}
    for r in results:
        if not get_task(r["task"]).is_probe:
            by_task.setdefault(r["task"], []).append(r)
    files, seeds = {}, {}
    for name, runs in by_task.items():
        chosen = choose_seed(runs, how)
        for key, path in _prediction_paths(chosen).items():
            if key in SUBMISSION_FILES:
                pred_task = "ax" if key[1] == "ax" else name
                files[SUBMISSION_FILES[key]] = {"rows": _read_predictions(path, pred_task), "source": str(path),
                                                "task": name, "seed": chosen["seed"]}
        seeds[name] = chosen["seed"]
    manifest_files, notes = {}, []
    zip_path = Path(zip_path)
    with atomic_path(zip_path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for fname in SUBMISSION_FILES.values():
                if fname not in files:
                    continue
                info = files[fname]
                if not info["rows"]:
                    notes.append(f"{fname}: no test predictions in {info['source']} (test file absent?)")
                    continue
                text = "index\tprediction\n" + "".join(f"{i}\t{p}\n" for i, p in info["rows"])
                zf.writestr(fname, text)
                n = len(info["rows"])
                manifest_files[fname] = {"rows": n, "task": info["task"], "seed": info["seed"],
                                         "source": info["source"]}
                if n != OFFICIAL_TEST_ROWS[fname]:
                    notes.append(f"{fname} has {n} rows; the official test set has {OFFICIAL_TEST_ROWS[fname]}")
    missing = [f for f in SUBMISSION_FILES.values() if f not in manifest_files]
    return {"zip": str(zip_path), "seed_choice": how, "seeds": seeds, "files": manifest_files,
            "missing": missing, "complete": not missing and not notes, "notes": notes}
