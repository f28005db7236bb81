"""Aggregation of per-(task, seed) metrics.json files: medians over seeds, GLUE vs probe scores,
the Markdown table, tracking calls and bad input."""

from __future__ import annotations

import argparse
import json
import statistics

import pytest
from helpers import cli

from electra_ds.finetuning import evaluate, report
from electra_ds.tracking import NullTracker


@pytest.fixture(autouse=True)
def _no_mlflow(monkeypatch):
    monkeypatch.setenv("ELECTRA_DS_MLFLOW", "0")


def write_metrics(root, task, seed, dev, main_metric, main, **extra):
    path = root / f"{task}-{seed}" / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"task": task, "seed": seed, "epochs": 3, "dev": dev, "main_metric": main_metric,
                                "main": main, "train_examples": 10, "seconds": 1.0, "model_dir": "m", **extra}))
    return path


@pytest.fixture
def results(tmp_path):
    paths = []
    for seed, (mcc, acc) in enumerate([(0.50, 0.60), (0.60, 0.70), (0.90, 0.65)]):
        paths.append(write_metrics(tmp_path, "cola", seed, {"mcc": mcc}, "mcc", mcc))
        paths.append(write_metrics(tmp_path, "rte", seed, {"accuracy": acc}, "accuracy", acc,
                                   majority_baseline={"prediction": 1, "dev": {"accuracy": 0.527}, "main": 0.527}))
    for seed, (m, mm) in enumerate([(0.80, 0.81), (0.82, 0.83)]):
        paths.append(write_metrics(tmp_path, "mnli", seed, {"dev_matched": {"accuracy": m},
                                                            "dev_mismatched": {"accuracy": mm}},
                                   "dev_matched.accuracy", m))
    paths.append(write_metrics(tmp_path, "wnli", 0, {"accuracy": 0.10}, "accuracy", 0.10))
    paths.append(write_metrics(tmp_path, "probe-acceptability", 0, {"mcc": 0.30, "accuracy": 0.66}, "mcc", 0.30))
    paths.append(write_metrics(tmp_path, "probe-adjacency", 0, {"accuracy": 0.70, "f1": 0.72}, "accuracy", 0.70))
    return paths


class RecordingTracker(NullTracker):
    """A tracker that keeps what the stage logs (the rest of the protocol logs nowhere)."""

    def __init__(self):
        super().__init__()
        self.metrics, self.params, self.artifacts = {}, {}, []

    def log_params(self, params):
        self.params.update(params)

    def log_metrics(self, metrics, step=None):
        self.metrics.update(metrics)

    def log_artifact(self, path, artifact_path=None):
        self.artifacts.append(str(path))


def evaluate_args(argv):
    parser = argparse.ArgumentParser()
    evaluate.add_arguments(parser)
    return parser.parse_args(argv)


def test_summary_medians_and_separate_scores(results, tmp_path):
    out_json, out_md = tmp_path / "res" / "results.json", tmp_path / "res" / "results.md"
    args = evaluate_args(["--metrics", *map(str, results), "--output-json", str(out_json), "--output-md", str(out_md)])
    tracker = RecordingTracker()
    evaluate.run(args, tracker)
    summary = json.loads(out_json.read_text())
    cola = summary["tasks"]["cola"]
    assert cola["n_seeds"] == 3 and cola["seeds"] == [0, 1, 2] and not cola["is_probe"]
    assert cola["metrics"]["mcc"]["median"] == pytest.approx(0.60)
    assert cola["main"]["mean"] == pytest.approx(2.0 / 3)
    assert cola["main"]["std"] == pytest.approx(statistics.stdev([0.5, 0.6, 0.9]))
    assert summary["tasks"]["rte"]["main"]["median"] == pytest.approx(0.65)
    mnli = summary["tasks"]["mnli"]
    assert mnli["main_metric"] == "dev_matched.accuracy" and mnli["main"]["median"] == pytest.approx(0.81)
    assert mnli["metrics"]["dev_mismatched.accuracy"]["median"] == pytest.approx(0.82)
    assert summary["tasks"]["wnli"]["main"]["std"] == 0.0

    glue = summary["glue_score"]
    assert glue["tasks"] == ["cola", "mnli", "rte"] and glue["excluded"] == ["wnli"]
    assert glue["missing"] == ["sst2", "mrpc", "stsb", "qqp", "qnli"]
    assert glue["value"] == pytest.approx((0.60 + 0.81 + 0.65) / 3)  # WNLI and probes not counted
    assert summary["probe_score"]["tasks"] == ["probe-acceptability", "probe-adjacency"]
    assert summary["probe_score"]["value"] == pytest.approx((0.30 + 0.70) / 2)
    assert summary["average_score"]["value"] == pytest.approx((0.60 + 0.65 + 0.81 + 0.10 + 0.30 + 0.70) / 6)

    md = out_md.read_text()
    rows = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
    assert "| GLUE | mcc 60.0 | mcc 60.0 | 66.7 ± 20.8 | n/a | 3 |" in rows["cola"]  # no baseline recorded
    assert "| accuracy 65.0 | 65.0 ± 5.0 | 52.7 | 3 |" in rows["rte"]  # the constant answer's score beside it
    assert summary["tasks"]["rte"]["majority_baseline"] == 0.527 and summary["tasks"]["cola"]["majority_baseline"] is None
    assert "dev_matched.accuracy 81.0, dev_mismatched.accuracy 82.0" in rows["mnli"]
    for probe in ("probe-acceptability", "probe-adjacency"):
        assert rows[probe].split("|")[2].strip() == "probe"
    assert "| probe-acceptability | probe | mcc 30.0, accuracy 66.0 | mcc 30.0 |" in rows["probe-acceptability"]
    assert "3 of 8 tasks: cola, mnli, rte" in rows["**GLUE score**"] and "| 68.7 |" in rows["**GLUE score**"]
    assert "probe" not in rows["**GLUE score**"].split("|")[3] and "not counted: wnli" in rows["**GLUE score**"]
    assert "| 50.0 |" in rows["**probe score**"] and rows["**probe score**"].split("|")[2].strip() == "probe"
    assert "| 52.7 |" in rows["**average**"]

    assert tracker.metrics["cola.mcc"] == pytest.approx(0.60)
    assert tracker.metrics["mnli.dev_matched.accuracy"] == pytest.approx(0.81)
    assert tracker.metrics["probe-adjacency.f1"] == pytest.approx(0.72)
    assert tracker.metrics["glue_score"] == pytest.approx(glue["value"])
    assert tracker.metrics["probe_score"] == pytest.approx(0.5)
    assert tracker.artifacts == [str(out_json), str(out_md)]


def test_probe_only_run_has_no_glue_rows(tmp_path, monkeypatch):
    paths = [write_metrics(tmp_path, "probe-adjacency", s, {"accuracy": a, "f1": a}, "accuracy", a)
             for s, a in enumerate([0.6, 0.8])]
    out_json, out_md = tmp_path / "r.json", tmp_path / "r.md"
    argv = ["evaluate", "--metrics", *map(str, paths), "--output-json", str(out_json), "--output-md", str(out_md),
            "--results-dir", str(tmp_path)]
    assert cli(*argv) == 0
    summary = json.loads(out_json.read_text())
    assert summary["glue_score"]["value"] is None and summary["probe_score"]["value"] == pytest.approx(0.7)
    md = out_md.read_text()
    assert "GLUE score" not in md and "| **probe score** | probe | 1 probe task: probe-adjacency | 70.0" in md


@pytest.mark.parametrize("case, expected", [
    ("missing", "does not exist"),
    ("not_json", "is not a readable JSON file"),
    ("no_main", "field 'main': is not a finetune metrics.json"),
    ("unknown_task", "unknown task 'glue-x'"),
    ("duplicate", "duplicate result for model model task rte seed 0"),
])
def test_bad_input_exits_2_without_output(tmp_path, monkeypatch, capsys, case, expected):
    good = write_metrics(tmp_path, "rte", 0, {"accuracy": 0.6}, "accuracy", 0.6)
    bad = tmp_path / "bad" / "metrics.json"
    bad.parent.mkdir()
    if case == "not_json":
        bad.write_text("{not json")
    elif case == "no_main":
        bad.write_text(json.dumps({"task": "rte", "seed": 1, "dev": {}, "main_metric": "accuracy"}))
    elif case == "unknown_task":
        bad.write_text(json.dumps({"task": "glue-x", "seed": 1, "dev": {}, "main_metric": "a", "main": 0.1}))
    elif case == "duplicate":
        bad.write_text(good.read_text())
    out_json, out_md = tmp_path / "out" / "r.json", tmp_path / "out" / "r.md"
    argv = ["evaluate", "--metrics", str(good), str(bad), "--output-json", str(out_json), "--output-md", str(out_md),
            "--results-dir", str(tmp_path)]
    assert cli(*argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("electra-ds evaluate: error: ") and expected in err
    if case != "duplicate":
        assert str(bad) in err
    assert not out_json.exists() and not out_md.exists()


def test_common_convention_averages_each_tasks_metrics(results, tmp_path):
    paths = list(results)
    for seed, (acc, f1) in enumerate([(0.80, 0.86), (0.84, 0.88)]):
        paths.append(write_metrics(tmp_path, "mrpc", seed, {"accuracy": acc, "f1": f1}, "accuracy", acc))
    paths.append(write_metrics(tmp_path, "stsb", 0, {"pearson": 0.70, "spearman": 0.68}, "spearman", 0.68))
    summary = evaluate.summarize(evaluate.read_results(paths))
    common = summary["glue_score_common"]
    # medians over seeds: MRPC acc 0.82, F1 0.87; MNLI-m 0.81 and MNLI-mm 0.82 are two entries; WNLI counted
    assert common["entries"] == pytest.approx({"CoLA": 0.60, "MRPC": (0.82 + 0.87) / 2, "STS-B": 0.69,
                                               "MNLI-m": 0.81, "MNLI-mm": 0.82, "RTE": 0.65, "WNLI": 0.10})
    assert common["value"] == pytest.approx(statistics.fmean(common["entries"].values()))
    assert common["missing"] == ["SST-2", "QQP", "QNLI"]
    # the ELECTRA convention: accuracy for MRPC, Spearman for STS-B, no WNLI
    assert summary["glue_score"]["value"] == pytest.approx((0.60 + 0.82 + 0.68 + 0.81 + 0.65) / 5)
    md = report.render_markdown(summary)
    assert "| **GLUE score, common** | GLUE | 7 entries: CoLA, MRPC, STS-B, MNLI-m, MNLI-mm, RTE, WNLI" in md


def test_full_report_submission_and_plots(tmp_path, monkeypatch, capsys):
    from test_report import TRAIN_LOG
    from test_submission import write_run

    paths = [write_run(tmp_path / "ft", "rte", s, m) for s, m in [(1, 0.60), (2, 0.70), (3, 0.65)]]
    paths += [write_run(tmp_path / "ft", "mnli", 1, 0.8), write_run(tmp_path / "ft", "cola", 1, 0.3)]
    paths.append(write_run(tmp_path / "ft", "probe-acceptability", 1, 0.9, predictions={"test": ["1"]}))
    pretrain = tmp_path / "pretrain"
    pretrain.mkdir()
    (pretrain / "train_log.jsonl").write_text(TRAIN_LOG)
    (pretrain / "summary.json").write_text(json.dumps({"objective": "electra", "steps": 8, "flops": 8e9,
                                                       "final_valid": {"rtd_gain": 0.2}}))
    out = tmp_path / "evaluate"
    argv = ["evaluate", "--metrics", *map(str, paths), "--output-json", str(out / "results.json"),
            "--output-md", str(out / "results.md"), "--output-html", str(out / "results.html"),
            "--loss-plot", str(out / "pretrain_loss.png"), "--scores-plot", str(out / "task_scores.png"),
            "--pretrain-dirs", f"model={pretrain}", "--submission-zip", str(out / "glue_submission.zip"),
            "--results-dir", str(tmp_path)]
    assert cli(*argv) == 0
    printed = capsys.readouterr().out
    assert "GLUE score (ELECTRA convention, 3/8 tasks):" in printed and "GLUE score (common convention" in printed
    assert "probe score (1 probe tasks, not GLUE): 90.0" in printed
    summary = json.loads((out / "results.json").read_text())
    sub = summary["submission"]
    assert sub["seeds"] == {"cola": 1, "mnli": 1, "rte": 3} and sub["seed_choice"] == "median"
    assert sorted(sub["files"]) == ["AX.tsv", "CoLA.tsv", "MNLI-m.tsv", "MNLI-mm.tsv", "RTE.tsv"]
    assert summary["models"]["model"]["pretrain"]["flops"] == 8e9 and summary["earlier_runs"] == []
    md = (out / "results.md").read_text()
    for text in ("## Comparison with published ELECTRA numbers and earlier runs", "ELECTRA-Base (paper)",
                 "## Leaderboard submission", "- RTE.tsv: 2 rows from rte seed 3", "missing: SST-2.tsv",
                 "![Pretraining curves](pretrain_loss.png)", "Earlier runs: MLflow is off"):
        assert text in md
    page = (out / "results.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "<table>" in page
    from test_report import assert_no_raw_markdown

    assert_no_raw_markdown(page)
    for png in ("pretrain_loss.png", "task_scores.png"):
        assert (out / png).read_bytes().startswith(b"\x89PNG")


def test_bad_prediction_label_stops_without_outputs(tmp_path, monkeypatch, capsys):
    from test_submission import write_run

    path = write_run(tmp_path, "rte", 1, 0.6, predictions={"test": ["entailment", "contradiction"]})
    out = tmp_path / "evaluate"
    argv = ["evaluate", "--metrics", str(path), "--output-json", str(out / "r.json"), "--output-md",
            str(out / "r.md"), "--submission-zip", str(out / "glue.zip"), "--results-dir", str(tmp_path)]
    assert cli(*argv) == 2
    err = capsys.readouterr().err
    assert "prediction 'contradiction' is not entailment, not_entailment" in err and "test_predictions.tsv" in err
    assert not out.exists() or not any(out.iterdir())


def test_models_table_ends_with_the_majority_class_row(tmp_path):
    paths = []
    for model, accs in (("electra", (0.60, 0.62)), ("scratch", (0.55, 0.58))):
        for seed, acc in enumerate(accs):
            paths.append(write_metrics(tmp_path / model, "mrpc", seed, {"accuracy": acc, "f1": acc}, "accuracy", acc,
                                       model=model, majority_baseline={"prediction": 1, "main": 0.684,
                                                                       "dev": {"accuracy": 0.684, "f1": 0.812}}))
            paths.append(write_metrics(tmp_path / model, "stsb", seed, {"pearson": 0.2, "spearman": 0.2},
                                       "spearman", 0.2, model=model,
                                       majority_baseline={"prediction": 2.7, "main": 0.0,
                                                          "dev": {"pearson": 0.0, "spearman": 0.0}}))
    models = evaluate.summarize_models(evaluate.read_results(paths), ["electra", "scratch"], {})
    table = report.model_table(models)
    assert [row[0] for row in table["rows"]] == ["electra", "scratch", "majority class"]
    cells = dict(zip(table["columns"], table["rows"][-1]))
    assert cells["MRPC (acc)"] == "68.4" and cells["STS-B (Spearman)"] == "0.0"  # below it, a model learned nothing


def test_the_models_table_says_where_the_fine_tuning_recipes_differ(tmp_path):
    def run(scratch_lr, scratch_epochs):
        paths = []
        for model, lr, epochs in (("electra", 1e-3, 10), ("scratch", scratch_lr, scratch_epochs)):
            for seed in (1, 2):
                hparams = {"learning_rate": lr, "layer_decay": 0.8, "batch_size": 32}
                paths.append(write_metrics(tmp_path / f"{model}-{scratch_lr}-{scratch_epochs}", "rte", seed,
                                           {"accuracy": 0.5}, "accuracy", 0.5, model=model, hparams=hparams,
                                           epochs=epochs))
        models = evaluate.summarize_models(evaluate.read_results(paths), ["electra", "scratch"], {})
        return report.render_models(models)

    same = run(1e-3, 10)
    assert "with the same seeds and recipe;" in same and "differ" not in same
    differs = run(3e-4, 10)
    assert "their fine-tuning recipes differ" in differs and "and recipe" not in differs
    assert "electra learning rate 0.001; scratch learning rate 0.0003;" in differs  # only what differs is named
    both = run(3e-4, 3)
    assert "electra learning rate 0.001, epochs 10; scratch learning rate 0.0003, epochs 3;" in both
