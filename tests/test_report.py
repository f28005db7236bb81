"""The evaluation report: pretrain log parsing, plots, published numbers, earlier MLflow runs, HTML."""

from __future__ import annotations

import pytest

from electra_ds import report
from electra_ds.report import PUBLISHED, comparison_table, earlier_runs, parse_pretrain_log

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Lines as the pretrain stage logs them (with the CLI's time/stage/level prefix), a resume repeating
# step 4, DeepSpeed noise and a validation line.
PRETRAIN_LOG = """\
21:03:01 pretrain INFO world size 2, micro-batch 8 x accumulation 1 = global 16; ZeRO stage 2; fp32 on cpu
21:03:02 pretrain INFO step 2/8 [ 25%] loss 37.7000 gen 8.6000 disc 0.5820 gen_acc 0.010 disc_acc 0.850 lr 1.00e-03 512 tok/s eta 0m03s
[2025-01-01 21:03:02,000] [INFO] [logging.py:107:log_dist] [Rank 0] step=2, skipped=0, lr=[0.001]
21:03:03 pretrain INFO step 4/8 [ 50%] loss 30.1000 gen 7.9000 disc 0.4440 gen_acc 0.020 disc_acc 0.880 lr 2.00e-03 530 tok/s eta 0m02s
21:03:03 pretrain INFO valid at step 4: loss 29.5000 gen_acc 0.021 disc_acc 0.881
21:03:09 pretrain INFO resumed from results/pretrain/checkpoints at step 2
21:03:10 pretrain INFO step 4/8 [ 50%] loss 30.0000 gen 7.8000 disc 0.4440 gen_acc 0.020 disc_acc 0.880 lr 2.00e-03 530 tok/s eta 0m02s
21:03:11 pretrain INFO step 8/8 [100%] loss 25.0000 gen 7.0000 disc 0.3600 gen_acc 0.050 disc_acc 0.900 lr 0.00e+00 540 tok/s eta 0m00s
"""


def summary(glue=True, probes=True):
    def task(values, probe=False, metric="accuracy"):
        median = sorted(values)[len(values) // 2]
        return {"is_probe": probe, "main_metric": metric, "n_seeds": len(values),
                "main": {"median": median, "mean": sum(values) / len(values), "std": 0.01, "values": values},
                "metrics": {metric: {"median": median}}}

    tasks = {}
    if glue:
        tasks["cola"] = task([0.30, 0.35, 0.40], metric="mcc")
        tasks["rte"] = task([0.55, 0.60, 0.58])
    if probes:
        tasks["probe-adjacency"] = task([0.70], probe=True)
    return {"tasks": tasks,
            "glue_score": {"value": 0.47 if glue else None, "tasks": [t for t in ("cola", "rte") if glue]},
            "glue_score_common": {"value": 0.47 if glue else None},
            "probe_score": {"value": 0.70 if probes else None}}


def test_parse_pretrain_log(tmp_path):
    path = tmp_path / "pretrain.log"
    path.write_text(PRETRAIN_LOG)
    history = parse_pretrain_log(path)
    assert history["train"] == [(2, 37.7, 8.6, 0.582), (4, 30.0, 7.8, 0.444), (8, 25.0, 7.0, 0.36)]
    assert history["valid"] == [(4, 29.5)]
    assert parse_pretrain_log(tmp_path / "absent.log")["train"] == []
    assert parse_pretrain_log(None)["train"] == []


def test_plots_are_pngs_even_without_data(tmp_path):
    (tmp_path / "pretrain.log").write_text(PRETRAIN_LOG)
    report.plot_pretrain_loss(parse_pretrain_log(tmp_path / "pretrain.log"), tmp_path / "loss.png")
    report.plot_pretrain_loss(parse_pretrain_log(tmp_path / "none.log"), tmp_path / "empty.png")
    report.plot_task_scores(summary(), tmp_path / "scores.png")
    for name in ("loss.png", "empty.png", "scores.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.png", "loss.png", "pretrain.log", "scores.png"]


def test_published_numbers():
    small, base = PUBLISHED["ELECTRA-Small (paper)"], PUBLISHED["ELECTRA-Base (paper)"]
    assert base["reported_average"] == 85.1 and small["reported_average"] == 79.9
    assert report.published_average("ELECTRA-Small (paper)") == 79.9  # no per-task values: the quoted average
    assert PUBLISHED["ELECTRA-Small-OWT (README)"]["scores"]["rte"] == 68.5
    assert report.published_average("ELECTRA-Small++ (README)") == pytest.approx(81.1375)
    assert report.published_average("ELECTRA-Base (README)") == pytest.approx(87.4625)


def test_comparison_table_with_glue_and_earlier_runs():
    earlier = [{"label": "exp 2025-01-01 10:00 (abcdef12)", "metrics": {"cola.main": 0.25, "glue_score": 0.4}}]
    table = comparison_table(summary(), earlier)
    assert table["columns"] == ["task", "this run", *PUBLISHED, "exp 2025-01-01 10:00 (abcdef12)"]
    rows = {r[0]: r for r in table["rows"]}
    owt = 2 + list(PUBLISHED).index("ELECTRA-Small-OWT (README)")
    assert rows["CoLA (MCC)"][1] == "35.0 ± 1.0" and rows["CoLA (MCC)"][owt] == "56.8" and rows["CoLA (MCC)"][-1] == "25.0"
    assert rows["CoLA (MCC)"][2] == "-"  # the paper's per-task values are not shown
    assert rows["SST-2 (acc)"][1] == "-" and rows["SST-2 (acc)"][owt] == "88.3"   # not run here, published shown
    assert rows["**GLUE score** (ELECTRA: 8 tasks)"][2] == "79.9"
    assert rows["**GLUE score** (ELECTRA: 8 tasks)"][1] == "47.0 (2/8 tasks)"
    assert rows["**GLUE score** (ELECTRA: 8 tasks)"][-1] == "40.0"
    assert rows["**probe score** (offline probes, not GLUE)"][1] == "70.0"
    assert any("quoted average 79.9" in n for n in table["notes"])
    md = report.table_markdown(table)
    assert md.splitlines()[0].startswith("| task | this run | ELECTRA-Small (paper)")
    page = report.render_html("# Title\n\n" + md, {})
    assert "<table>" in page and "<b>GLUE score</b>" in page and "<h1>Title</h1>" in page


def test_probe_only_table_never_says_glue():
    table = comparison_table(summary(glue=False), [])
    assert table["columns"] == ["task", "this run"]
    text = report.table_markdown(table) + " ".join(table["notes"])
    assert "GLUE score" not in text and "ELECTRA-Small" not in text


def test_html_embeds_images(tmp_path):
    report.plot_task_scores(summary(), tmp_path / "scores.png")
    page = report.render_html("| a | b |\n|---|---:|\n| x | 1.0 |", {"Scores": tmp_path / "scores.png",
                                                                     "Absent": tmp_path / "none.png"})
    assert page.count("data:image/png;base64,") == 1 and "<figcaption>Scores</figcaption>" in page
    assert "<td>x</td><td>1.0</td>" in page


def test_earlier_runs_never_fail(tmp_path, monkeypatch):
    monkeypatch.setenv("ELECTRA_DS_MLFLOW", "0")
    assert earlier_runs(f"sqlite:///{tmp_path}/mlflow.db") == ([], "MLflow is off (ELECTRA_DS_MLFLOW=0)")
    monkeypatch.setenv("ELECTRA_DS_MLFLOW", "1")
    runs, note = earlier_runs(f"sqlite:///{tmp_path}/absent.db")
    assert runs == [] and "no MLflow store" in note and not (tmp_path / "absent.db").exists()
    assert earlier_runs(None)[0] == []
    runs, note = earlier_runs("unknown-scheme://nowhere")
    assert runs == [] and "failed" in note


def test_earlier_runs_from_a_real_store(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from electra_ds.tracking import StageRun

    monkeypatch.setenv("ELECTRA_DS_MLFLOW", "1")
    monkeypatch.delenv("ELECTRA_DS_MLFLOW_PARENT_RUN_ID", raising=False)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with StageRun("finetune", results_dir=tmp_path, tracking_uri=uri) as other:
        other.log_metrics({"main": 0.9})
    with StageRun("evaluate", results_dir=tmp_path, tracking_uri=uri) as old:
        old.log_metrics({"cola.main": 0.25, "glue_score": 0.4})
    with StageRun("evaluate", results_dir=tmp_path, tracking_uri=uri) as current:
        runs, note = earlier_runs(uri, exclude_run_id=current.run_id)
    assert [r["run_id"] for r in runs] == [old.run_id] and "1 earlier evaluate run" in note
    assert runs[0]["metrics"] == {"cola.main": 0.25, "glue_score": 0.4}
