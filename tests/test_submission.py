"""GLUE leaderboard submission: seed choice, file names, label strings, the zip, and bad predictions."""

from __future__ import annotations

import json
import zipfile

import pytest

from electra_ds.common.errors import UserError
from electra_ds.finetuning import submission
from electra_ds.finetuning.evaluate import read_results
from electra_ds.finetuning.glue import get_task
from electra_ds.finetuning.submission import SUBMISSION_FILES, build_submission, choose_seed

# A few valid predictions per (task, split), in the server's label strings.
PREDICTIONS = {
    ("cola", "test"): ["1", "0"], ("sst2", "test"): ["0", "1", "1"], ("mrpc", "test"): ["1", "1"],
    ("stsb", "test"): ["3.250", "0.000", "5.000"], ("qqp", "test"): ["0", "1"],
    ("mnli", "test_matched"): ["entailment", "neutral", "contradiction"],
    ("mnli", "test_mismatched"): ["contradiction", "entailment"],
    ("mnli", "ax"): ["neutral", "entailment"], ("qnli", "test"): ["entailment", "not_entailment"],
    ("rte", "test"): ["not_entailment", "entailment"], ("wnli", "test"): ["0", "0"],
}


def write_run(root, task, seed, main, predictions=None, files=None):
    """A finetune output folder: metrics.json plus its prediction files."""
    out = root / task / f"seed{seed}"
    out.mkdir(parents=True)
    preds = predictions if predictions is not None else {
        split: rows for (t, split), rows in PREDICTIONS.items() if t == task}
    test_predictions = {}
    for split, rows in preds.items():
        name = (files or {}).get(split) or ("test_predictions.tsv" if split in ("test", "test_matched")
                                            else f"{split}_predictions.tsv")
        (out / name).write_text("index\tprediction\n" + "".join(f"{i}\t{r}\n" for i, r in enumerate(rows)))
        test_predictions[split] = {"file": name, "rows": len(rows)}
    info = get_task(task)
    dev = {m: main for m in info.metrics}
    if len(info.dev_splits) > 1:
        dev = {split: dict(dev) for split in info.dev_splits}
    main_metric = info.main_metric if len(info.dev_splits) == 1 else f"{next(iter(info.dev_splits))}.{info.main_metric}"
    (out / "metrics.json").write_text(json.dumps({
        "task": task, "seed": seed, "dev": dev, "main_metric": main_metric, "main": main,
        "test_predictions": test_predictions}))
    return out / "metrics.json"


def test_choose_seed_median_and_best():
    runs = [{"seed": s, "main": m} for s, m in [(1, 0.70), (2, 0.60), (3, 0.80), (4, 0.65), (5, 0.75)]]
    assert choose_seed(runs)["seed"] == 1                      # median of five: 0.70
    assert choose_seed(runs, "best")["seed"] == 3
    assert choose_seed(runs[:4])["seed"] == 4                  # even count: the lower middle (0.65)
    tie = [{"seed": 2, "main": 0.5}, {"seed": 1, "main": 0.5}]
    assert choose_seed(tie)["seed"] == 1 and choose_seed(tie, "best")["seed"] == 1
    with pytest.raises(UserError, match="'mean' is not one of median, best"):
        choose_seed(runs, "mean")


def test_full_submission_layout(tmp_path, monkeypatch):
    paths = []
    for task in ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"):
        paths.append(write_run(tmp_path / "ft", task, 1, 0.5))
    paths.append(write_run(tmp_path / "ft", "probe-adjacency", 1, 0.9, predictions={"test": ["1"]}))
    counts = {SUBMISSION_FILES[k]: len(v) for k, v in PREDICTIONS.items()}
    monkeypatch.setattr(submission, "OFFICIAL_TEST_ROWS", counts)
    manifest = build_submission(read_results(paths), tmp_path / "sub" / "glue.zip")
    assert manifest["complete"] and manifest["missing"] == [] and manifest["notes"] == []
    assert "probe-adjacency" not in manifest["seeds"]
    with zipfile.ZipFile(tmp_path / "sub" / "glue.zip") as zf:
        names = zf.namelist()
        assert names == ["CoLA.tsv", "SST-2.tsv", "MRPC.tsv", "STS-B.tsv", "QQP.tsv", "MNLI-m.tsv", "MNLI-mm.tsv",
                         "QNLI.tsv", "RTE.tsv", "WNLI.tsv", "AX.tsv"]
        for key, fname in SUBMISSION_FILES.items():
            lines = zf.read(fname).decode().splitlines()
            assert lines[0] == "index\tprediction"
            assert [line.split("\t") for line in lines[1:]] == [[str(i), p] for i, p in enumerate(PREDICTIONS[key])]
    assert not list((tmp_path / "sub").glob(".*tmp*"))


def test_partial_submission_lists_missing_and_short_files(tmp_path):
    paths = [write_run(tmp_path, "rte", s, m) for s, m in [(1, 0.6), (2, 0.7), (3, 0.5)]]
    paths.append(write_run(tmp_path, "cola", 1, 0.3, predictions={"test": []}))   # test file was absent
    manifest = build_submission(read_results(paths), tmp_path / "glue.zip", "best")
    assert manifest["seeds"] == {"rte": 2, "cola": 1} and manifest["files"]["RTE.tsv"]["seed"] == 2
    assert not manifest["complete"] and "CoLA.tsv" in manifest["missing"] and "AX.tsv" in manifest["missing"]
    assert any("RTE.tsv has 2 rows; the official test set has 3000" in n for n in manifest["notes"])
    assert any(n.startswith("CoLA.tsv: no test predictions") for n in manifest["notes"])
    with zipfile.ZipFile(tmp_path / "glue.zip") as zf:
        assert zf.namelist() == ["RTE.tsv"]


@pytest.mark.parametrize("task, rows, expected", [
    ("rte", ["entailment", "maybe"], "line 3: prediction 'maybe' is not entailment, not_entailment"),
    ("stsb", ["2.5", "7.1"], "line 3: prediction '7.1' is not a number in [0, 5]"),
    ("cola", ["1", "yes"], "line 3: prediction 'yes' is not 0, 1"),
])
def test_label_outside_the_set_is_an_error_and_no_zip(tmp_path, task, rows, expected):
    paths = [write_run(tmp_path, task, 1, 0.5, predictions={"test": rows})]
    with pytest.raises(UserError, match=r"test_predictions\.tsv: field 'prediction': " + expected.replace("[", r"\[")
                       .replace("]", r"\]")):
        build_submission(read_results(paths), tmp_path / "glue.zip")
    assert not (tmp_path / "glue.zip").exists()


def test_missing_prediction_file_and_bad_header(tmp_path):
    path = write_run(tmp_path, "rte", 1, 0.5)
    (path.parent / "test_predictions.tsv").unlink()
    with pytest.raises(UserError, match=r"test_predictions\.tsv: does not exist"):
        build_submission(read_results([path]), tmp_path / "glue.zip")
    (path.parent / "test_predictions.tsv").write_text("id\tlabel\n0\tentailment\n")
    with pytest.raises(UserError, match="has no 'index<TAB>prediction' header"):
        build_submission(read_results([path]), tmp_path / "glue.zip")
