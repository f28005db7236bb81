"""GLUE and probe task registry, and loaders for local GLUE TSV files or the Hugging Face Hub.

Every task is a frozen :class:`Task` that says where its files live, which columns hold the text
and the label, its label set (``None`` for STS-B regression), its metrics and the fine-tuning
defaults used by ELECTRA (3 epochs; 10 for RTE and STS-B).

Local files follow the layout the official GLUE download script writes (``<data_dir>/CoLA/train.tsv``
...). They are read with the ``csv`` module, tab-separated with quoting disabled (MRPC, MNLI and
QQP contain unbalanced quotes) and ``utf-8-sig`` (MRPC starts with a BOM). Columns are looked up
by header name where the file has a header; CoLA's train/dev files have none (source, label,
original label, sentence), its test file has ``index  sentence``. The two offline probe tasks
(derived from held-out pretraining text by the ``probes`` stage) reuse the CoLA and MRPC layouts;
their files are read with ``\\`` as csv escape character, as the probes stage writes them (probe
sentences contain no backslashes, so unescaped files read the same).

An example is a dict ``{"text_a", "text_b" (or None), "label" (label index, float for STS-B,
None for test), "idx" (int)}``. Label indices follow the Hub's ``nyu-mll/glue`` order, so local
and Hub data are interchangeable.
"""

from __future__ import annotations

import csv
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from electra_ds.common.errors import UserError
from electra_ds.common.userfiles import decode_error

log = logging.getLogger(__name__)

_NLI3 = ("entailment", "neutral", "contradiction")
_NLI2 = ("entailment", "not_entailment")
_BINARY = ("0", "1")
REGRESSION_RANGE = (0.0, 5.0)  # STS-B similarity scores
# finetune.init_from_mnli: the tasks the ELECTRA paper (appendix, GLUE test-set recipe) starts from the MNLI model:
# RTE and STS-B, RTE with a lower learning rate (2e-5). RoBERTa's recipe also starts MRPC from MNLI; ELECTRA's does not.
MNLI_INIT_TASKS = ("rte", "stsb")


@dataclass(frozen=True)
class Task:
    """One fine-tuning task: file layout, columns, labels and metrics."""

    name: str
    dirname: str                      # folder under the data dir (GLUE's own names: CoLA, SST-2, ...)
    layout: str                       # "headerless": train/dev without header, columns by position; or "header"
    text_columns: tuple               # train/dev text column(s): header names, or positions if headerless
    label_column: str | int | None
    labels: tuple | None              # label strings in index order; None for regression (STS-B)
    metrics: tuple
    main_metric: str
    is_probe: bool = False
    epochs: int = 3
    dev_splits: dict = field(default_factory=lambda: {"dev": "dev.tsv"})
    test_files: dict = field(default_factory=lambda: {"test": "test.tsv"})
    hub_config: str | None = None
    test_text_columns: tuple | None = None   # test text columns when they differ from train/dev
    index_column: str | None = "index"        # example id column, where the file has one
    hub_text_columns: tuple = ()
    has_train: bool = True
    skip_short_rows: bool = False              # QQP's train file has a few truncated rows; skip them
    escapechar: str | None = None              # probes: the probes stage escapes '"' and '\\' as csv does
    unordered_pair: bool = False               # the pair's order means nothing (official double_unordered)
    # How results show: the report's column label (default "<name> (<main metric>)"); whether the task counts in
    # the GLUE score (the 8 tasks without WNLI); its entries in the common convention's average, each (entry,
    # metrics averaged for it); the files of the GLUE server's zip, test split -> (file name, official rows).
    label: str | None = None
    in_glue_score: bool = False
    score_entries: tuple = ()
    submission: dict = field(default_factory=dict)

    @property
    def report_label(self) -> str:
        return self.label or f"{self.name} ({self.main_metric})"

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def splits(self) -> list:
        return (["train"] if self.has_train else []) + list(self.dev_splits) + list(self.test_files)

    def filename(self, split: str) -> str:
        if split == "train" and self.has_train:
            return "train.tsv"
        files = {**self.dev_splits, **self.test_files}
        if split not in files:
            raise UserError(f"task {self.name} has no split '{split}' (it has: {', '.join(self.splits)})",
                            field="split")
        return files[split]

    def is_test(self, split: str) -> bool:
        return split in self.test_files


_PAIR = ("sentence1", "sentence2")
TASKS: dict[str, Task] = {t.name: t for t in [
    Task("cola", "CoLA", "headerless", (3,), 1, _BINARY, ("mcc",), "mcc", hub_config="cola",
         test_text_columns=("sentence",), hub_text_columns=("sentence",),
         label="CoLA (MCC)", in_glue_score=True, score_entries=(("CoLA", ("mcc",)),),
         submission={"test": ("CoLA.tsv", 1063)}),
    Task("sst2", "SST-2", "header", ("sentence",), "label", _BINARY, ("accuracy",), "accuracy",
         hub_config="sst2", hub_text_columns=("sentence",),
         label="SST-2 (acc)", in_glue_score=True, score_entries=(("SST-2", ("accuracy",)),),
         submission={"test": ("SST-2.tsv", 1821)}),
    Task("mrpc", "MRPC", "header", ("#1 String", "#2 String"), "Quality", _BINARY, ("accuracy", "f1"),
         "accuracy", hub_config="mrpc", hub_text_columns=_PAIR, unordered_pair=True,
         label="MRPC (acc)", in_glue_score=True, score_entries=(("MRPC", ("accuracy", "f1")),),
         submission={"test": ("MRPC.tsv", 1725)}),
    Task("stsb", "STS-B", "header", _PAIR, "score", None, ("pearson", "spearman"), "spearman", epochs=10,
         hub_config="stsb", hub_text_columns=_PAIR, unordered_pair=True,
         label="STS-B (Spearman)", in_glue_score=True, score_entries=(("STS-B", ("pearson", "spearman")),),
         submission={"test": ("STS-B.tsv", 1379)}),
    Task("qqp", "QQP", "header", ("question1", "question2"), "is_duplicate", _BINARY, ("accuracy", "f1"),
         "accuracy", hub_config="qqp", index_column="id", hub_text_columns=("question1", "question2"),
         skip_short_rows=True,
         label="QQP (acc)", in_glue_score=True, score_entries=(("QQP", ("accuracy", "f1")),),
         submission={"test": ("QQP.tsv", 390965)}),
    Task("mnli", "MNLI", "header", _PAIR, "gold_label", _NLI3, ("accuracy",), "accuracy",
         dev_splits={"dev_matched": "dev_matched.tsv", "dev_mismatched": "dev_mismatched.tsv"},
         test_files={"test_matched": "test_matched.tsv", "test_mismatched": "test_mismatched.tsv"},
         hub_config="mnli", hub_text_columns=("premise", "hypothesis"),
         label="MNLI-m (acc)", in_glue_score=True,
         score_entries=(("MNLI-m", ("dev_matched.accuracy",)), ("MNLI-mm", ("dev_mismatched.accuracy",))),
         # the diagnostic set (AX) is predicted by the MNLI job
         submission={"test_matched": ("MNLI-m.tsv", 9796), "test_mismatched": ("MNLI-mm.tsv", 9847),
                     "ax": ("AX.tsv", 1104)}),
    Task("qnli", "QNLI", "header", ("question", "sentence"), "label", _NLI2, ("accuracy",), "accuracy",
         hub_config="qnli", hub_text_columns=("question", "sentence"),
         label="QNLI (acc)", in_glue_score=True, score_entries=(("QNLI", ("accuracy",)),),
         submission={"test": ("QNLI.tsv", 5463)}),
    Task("rte", "RTE", "header", _PAIR, "label", _NLI2, ("accuracy",), "accuracy", epochs=10,
         hub_config="rte", hub_text_columns=_PAIR,
         label="RTE (acc)", in_glue_score=True, score_entries=(("RTE", ("accuracy",)),),
         submission={"test": ("RTE.tsv", 3000)}),
    Task("wnli", "WNLI", "header", _PAIR, "label", _BINARY, ("accuracy",), "accuracy",
         hub_config="wnli", hub_text_columns=_PAIR,
         label="WNLI (acc)", score_entries=(("WNLI", ("accuracy",)),), submission={"test": ("WNLI.tsv", 146)}),
    # The diagnostic set: test only, predicted with an MNLI model (scored by the GLUE server with MCC).
    Task("ax", "diagnostic", "header", _PAIR, None, _NLI3, ("mcc",), "mcc", dev_splits={},
         test_files={"test": "diagnostic.tsv"}, hub_config="ax", hub_text_columns=("premise", "hypothesis"),
         has_train=False),
    # Offline probes written by the probes stage in the CoLA and MRPC layouts. Never part of GLUE.
    Task("probe-acceptability", "probe-acceptability", "headerless", (3,), 1, _BINARY, ("mcc", "accuracy"),
         "mcc", is_probe=True, test_text_columns=("sentence",), escapechar="\\"),
    Task("probe-adjacency", "probe-adjacency", "header", ("#1 String", "#2 String"), "Quality", _BINARY,
         ("accuracy", "f1"), "accuracy", is_probe=True, escapechar="\\"),
]}

# the GLUE score: the 8 tasks without WNLI, in the order the report and the published numbers show them
GLUE_SCORE_TASKS = tuple(t.name for t in TASKS.values() if t.in_glue_score)
# the common convention's average: (entry, task, metrics averaged for the entry), MNLI-m and MNLI-mm apart
SCORE_ENTRIES = tuple((entry, t.name, metrics) for t in TASKS.values() for entry, metrics in t.score_entries)


def task_names() -> list:
    return list(TASKS)


def get_task(name) -> Task:
    """Return the registered task called ``name`` (case-insensitive; ``sst-2``/``sts-b`` accepted)."""
    if isinstance(name, Task):
        return name
    key = str(name).strip().lower()
    key = {"sst-2": "sst2", "sts-b": "stsb", "diagnostic": "ax"}.get(key, key)
    if key not in TASKS:
        raise UserError(f"unknown task '{name}'; valid tasks: {', '.join(TASKS)}", field="task")
    return TASKS[key]


def prediction_to_string(task: Task, prediction) -> str:
    """The label string the GLUE submission format expects for one prediction."""
    if task.is_regression:
        return f"{min(max(float(prediction), 0.0), 5.0):.3f}"  # STS-B scores lie in [0, 5]
    return task.labels[int(prediction)]


def load_split(task, split: str, data_dir=None, hub_id: str | None = None) -> list:
    """Load one split of a task as a list of example dicts, from ``data_dir`` or the Hub."""
    task = get_task(task)
    if (data_dir is None) == (hub_id is None):
        raise UserError("give exactly one of a local GLUE data directory or a Hub dataset id",
                        field="data_dir/hub_id")
    if hub_id is not None:
        return _load_hub(task, split, hub_id)
    return _load_local(task, split, Path(data_dir))


def split_path(task, split: str, data_dir) -> Path:
    task = get_task(task)
    return Path(data_dir) / task.dirname / task.filename(split)


# -- local TSV files ---------------------------------------------------------------------------

def _load_local(task: Task, split: str, data_dir: Path) -> list:
    path = split_path(task, split, data_dir)
    if not path.is_file():
        where = path.parent if path.parent.is_dir() else data_dir
        raise UserError(f"{where} has no {path.name}; expected the original GLUE layout "
                        f"({task.dirname}/{path.name} under the data directory)", path=path,
                        fix="point --data-dir at the folder that holds the task folders, "
                            "or run the stage that writes them")
    test = task.is_test(split)
    headerless = task.layout == "headerless" and not test
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar=task.escapechar)
            header = None if headerless else next(reader, None)
            rows = [(reader.line_num, row) for row in reader if row and any(cell.strip() for cell in row)]
    except UnicodeDecodeError as exc:
        raise decode_error(path, exc) from None
    except csv.Error as exc:
        raise UserError(f"is not a readable TSV file ({exc})", path=path, fix="use the original GLUE file") from None
    if not rows:
        what = "is empty" if header is None else "has a header but no rows"
        raise UserError(f"{what}; expected {task.name} {split} examples", path=path)

    text_cols = (task.test_text_columns or task.text_columns) if test else task.text_columns
    if headerless:
        text_pos, label_pos, index_pos = list(text_cols), task.label_column, None
    else:
        header = [h.strip() for h in header]
        text_pos = [_column(header, c, path) for c in text_cols]
        label_pos = None if test or task.label_column is None else _column(header, task.label_column, path)
        index_pos = header.index(task.index_column) if task.index_column in header else None
    needed = max(p for p in [*text_pos, label_pos, index_pos] if p is not None) + 1

    examples, skipped = [], 0
    for row_no, (line, row) in enumerate(rows):
        if len(row) < needed:
            if task.skip_short_rows:
                skipped += 1
                continue
            raise UserError(f"line {line} has {len(row)} tab-separated fields, expected at least {needed}",
                            path=path, fix="check that the file is tab-separated and not truncated")
        label = None if label_pos is None else _parse_label(task, row[label_pos].strip(), path, line)
        examples.append({
            "text_a": row[text_pos[0]],
            "text_b": row[text_pos[1]] if len(text_pos) > 1 else None,
            "label": label,
            "idx": _parse_index(row[index_pos], path, line) if index_pos is not None else row_no,
        })
    if skipped:
        log.warning("%s: skipped %d truncated rows", path, skipped)
    if not examples:
        raise UserError("has no usable rows", path=path)
    return examples


def _column(header: list, name, path: Path) -> int:
    if name not in header:
        raise UserError(f"missing column '{name}' (header has: {', '.join(header)})", path=path, field=name,
                        fix="use the original GLUE file, with its header row")
    return header.index(name)


def _parse_label(task: Task, value: str, path: Path, line: int):
    if task.is_regression:
        try:
            score = float(value)
        except ValueError:
            raise UserError(f"line {line}: label '{value}' is not a number", path=path,
                            field=str(task.label_column)) from None
        low, high = REGRESSION_RANGE
        if not low <= score <= high:  # also NaN
            raise UserError(f"line {line}: score {value} is outside {task.name}'s range {low:g}-{high:g}", path=path,
                            field=str(task.label_column), fix="use the original GLUE file (similarity scores 0-5)")
        return score
    if value not in task.labels:
        raise UserError(f"line {line}: label '{value}' is not one of {', '.join(task.labels)}",
                        path=path, field=str(task.label_column))
    return task.labels.index(value)


def _parse_index(value: str, path: Path, line: int) -> int:
    try:
        return int(value)
    except ValueError:
        raise UserError(f"line {line}: index '{value}' is not an integer", path=path) from None


# -- Hugging Face Hub -------------------------------------------------------------------------

def _hub_split(split: str) -> str:
    return split.replace("dev", "validation", 1) if split.startswith("dev") else split


def check_hub_reachable(hub_id: str, timeout: float = 3.0) -> None:
    """Fail fast (UserError) when the Hub (``HF_ENDPOINT`` when set) cannot be reached. In offline mode
    (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE: a compute node after the prefetch, electra_ds/pipeline/prefetch.py) nothing
    is checked: the datasets are read from the local cache, and :func:`_load_hub` says what to do when they are not
    there."""
    from electra_ds.common.hub import hub_unreachable, offline_reason

    if offline_reason():
        return
    reason = hub_unreachable(timeout)
    if reason:
        raise UserError(f"{reason} to download '{hub_id}'", field="hub_id",
                        fix="use --data-dir with a local GLUE folder") from None


def _load_hub(task: Task, split: str, hub_id: str) -> list:
    if task.hub_config is None:
        raise UserError(f"task {task.name} exists only locally (probe tasks are derived offline)",
                        field="hub_id", fix="use --data-dir with the probes stage's output folder")
    task.filename(split)  # validates the split name
    check_hub_reachable(hub_id)
    import datasets

    try:
        ds = datasets.load_dataset(hub_id, task.hub_config, split=_hub_split(split))
    except Exception as exc:  # network, missing config or split: all the user's environment
        from electra_ds.common.hub import PREFETCH_FIX, datasets_cache, offline_reason

        if offline_reason():
            raise UserError(f"{offline_reason()}, and the Hub dataset '{hub_id}' config {task.hub_config} is not in "
                            f"the local cache {datasets_cache()} ({type(exc).__name__})", field="hub_id",
                            fix=PREFETCH_FIX + "; or use --data-dir with a local GLUE folder") from None
        raise UserError(f"could not load {hub_id} config {task.hub_config} split {_hub_split(split)}: {exc}",
                        field="hub_id") from None
    cols = task.hub_text_columns
    examples = []
    for i, row in enumerate(ds):
        label = row.get("label")
        if label is None or (not task.is_regression and int(label) < 0):
            label = None
        elif task.is_regression:
            label = float(label)
        else:
            label = int(label)
        examples.append({"text_a": row[cols[0]], "text_b": row[cols[1]] if len(cols) > 1 else None,
                         "label": None if task.is_test(split) else label, "idx": int(row.get("idx", i))})
    return examples
