"""The evaluation report: pretrain log parsing, plots, published numbers, earlier runs in the table, HTML."""

from __future__ import annotations

import json

import pytest

from electra_ds.finetuning import plots, report
from electra_ds.finetuning.report import PUBLISHED, comparison_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# train_log.jsonl as the pretrain stage writes it: a resume repeats step 4 (the later line wins).
TRAIN_LOG = "\n".join(json.dumps(r) for r in [
    {"split": "train", "step": 2, "loss": 37.7, "gen_loss": 8.6, "gen_acc": 0.01, "disc_loss": 0.582,
     "base_entropy": 0.42, "rtd_gain": -0.38, "flops": 2e9},
    {"split": "train", "step": 4, "loss": 30.1, "gen_loss": 7.9, "gen_acc": 0.02, "disc_loss": 0.444,
     "base_entropy": 0.42, "rtd_gain": -0.05, "flops": 4e9},
    {"split": "valid", "step": 4, "loss": 29.5, "gen_loss": 7.8, "gen_acc": 0.021, "disc_loss": 0.43,
     "base_entropy": 0.42, "rtd_gain": -0.02, "disc_auc": 0.55},
    {"split": "train", "step": 4, "loss": 30.0, "gen_loss": 7.8, "gen_acc": 0.02, "disc_loss": 0.444,
     "base_entropy": 0.42, "rtd_gain": -0.05, "flops": 4e9},
    {"split": "train", "step": 8, "loss": 25.0, "gen_loss": 7.0, "gen_acc": 0.05, "disc_loss": 0.36,
     "base_entropy": 0.42, "rtd_gain": 0.14, "flops": 8e9}]) + "\n"
MLM_LOG = json.dumps({"split": "train", "step": 9, "loss": 7.0, "gen_loss": 7.0, "gen_acc": 0.05, "flops": 8e9}) + "\n"


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


def test_read_train_log(tmp_path):
    path = tmp_path / "train_log.jsonl"
    path.write_text(TRAIN_LOG)
    history = plots.read_train_log(path)
    assert [(r["step"], r["loss"]) for r in history["train"]] == [(2, 37.7), (4, 30.0), (8, 25.0)]
    assert [r["step"] for r in history["valid"]] == [4]
    assert plots.read_train_log(tmp_path / "absent.jsonl") == {"train": [], "valid": []}


def test_plots_are_pngs_even_without_data(tmp_path):
    (tmp_path / "electra.jsonl").write_text(TRAIN_LOG)
    (tmp_path / "mlm.jsonl").write_text(MLM_LOG)
    histories = {"electra": plots.read_train_log(tmp_path / "electra.jsonl"),
                 "mlm": plots.read_train_log(tmp_path / "mlm.jsonl")}
    plots.plot_pretraining(histories, {"electra": 1e9, "mlm": 0.9e9}, tmp_path / "loss.png",
                           {"electra": 8192, "mlm": 8192})
    plots.plot_pretraining({}, {}, tmp_path / "empty.png")
    plots.plot_task_scores({"electra": summary(), "scratch": summary()}, tmp_path / "scores.png",
                           {"ELECTRA-Base (README)": PUBLISHED["ELECTRA-Base (README)"]["scores"]})
    for name in ("loss.png", "empty.png", "scores.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["electra.jsonl", "empty.png", "loss.png", "mlm.jsonl",
                                                          "scores.png"]  # no temporaries left


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
    assert "<table>" in page and "<strong>GLUE score</strong>" in page and "<h1>Title</h1>" in page


def test_probe_only_table_never_says_glue():
    table = comparison_table(summary(glue=False), [])
    assert table["columns"] == ["task", "this run"]
    text = report.table_markdown(table) + " ".join(table["notes"])
    assert "GLUE score" not in text and "ELECTRA-Small" not in text


def test_html_embeds_images(tmp_path):
    plots.plot_task_scores({"electra": summary()}, tmp_path / "scores.png")
    md = "| a | b |\n|---|---:|\n| x | 1.0 |\n\n- a list item\n\n![Scores](scores.png)\n\n![Absent](none.png)\n"
    page = report.render_html(md, {"Scores": tmp_path / "scores.png", "Absent": tmp_path / "none.png"})
    assert page.count("data:image/png;base64,") == 1 and 'alt="Scores"' in page
    assert "<td>x</td>" in page and "<li>a list item</li>" in page and "Absent: not available" in page
    assert_no_raw_markdown(page)


def assert_no_raw_markdown(page: str) -> None:
    """What a reader would see as Markdown source in the rendered page."""
    from html.parser import HTMLParser

    class Text(HTMLParser):
        chunks: list = []

        def handle_data(self, data):
            self.chunks.append(data)

    parser = Text()
    parser.chunks = []
    parser.feed(page)
    text = "".join(parser.chunks)
    for raw in ("![", "](", "|---", "**"):
        assert raw not in text, raw
    assert not any(line.lstrip().startswith("- ") for line in text.splitlines()), "a list left as text"


def test_second_axis_of_the_pretraining_plot():
    histories = {"a": {}, "b": {}}
    assert plots._second_axis(histories, {"a": 1e9, "b": 2e9}, {"a": 8192, "b": 8192}) == (8192, "tokens seen (incl. padding)")
    assert plots._second_axis(histories, {"a": 1e9, "b": 1e9}, {"a": 8192, "b": 4096}) == (1e9, "pretraining FLOPs")
    assert plots._second_axis(histories, {"a": 1e9, "b": 2e9}, {"a": 8192, "b": 4096}) == (8192, "tokens seen by a")
    assert plots._second_axis(histories, {}, {}) == (None, None)


def finetune_result(task, seed, model, values, metric="accuracy", nested=None):
    history = []
    for epoch, v in enumerate(values, 1):
        dev = {metric: v} if nested is None else {split: {metric: v} for split in nested}
        history.append({"epoch": epoch, "steps": 10 * epoch, "train_loss": 0.5, "dev": dev})
    main_metric = metric if nested is None else f"{nested[0]}.{metric}"
    return {"task": task, "seed": seed, "model": model, "main_metric": main_metric, "main": values[-1],
            "history": history}


def test_finetune_epochs_plot(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    results = [finetune_result("rte", s, m, [0.5, 0.55 + 0.01 * s, 0.6]) for m in ("electra", "scratch")
               for s in (1, 2, 3)]
    results.append(finetune_result("mnli", 1, "electra", [0.7, 0.75], nested=["dev_matched", "dev_mismatched"]))
    results.append({"task": "cola", "seed": 1, "model": "electra", "main_metric": "mcc", "main": 0.1})  # no history
    drawn = {}
    original = plt.Figure.savefig

    def spy(fig, *args, **kwargs):
        drawn["lines"] = {ax.get_title(): [list(line.get_ydata()) for line in ax.lines] for ax in fig.axes}
        drawn["legend"] = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(plt.Figure, "savefig", spy)
    plots.plot_finetune_epochs(results, tmp_path / "epochs.png")
    assert (tmp_path / "epochs.png").read_bytes().startswith(PNG_MAGIC)
    assert len(drawn["lines"]["rte: dev accuracy"]) == 6
    assert drawn["lines"]["mnli: dev dev_matched.accuracy"] == [[70.0, 75.0]]
    assert drawn["lines"]["cola: dev mcc"] == []
    # the training loss below each task's scores: the epoch means of each run's history
    assert drawn["lines"]["rte: training loss"] == [[0.5, 0.5, 0.5]] * 6
    assert drawn["lines"]["cola: training loss"] == []
    assert "electra seed 1" in drawn["legend"] and "scratch seed 3" in drawn["legend"]
    plots.plot_finetune_epochs([], tmp_path / "none.png")
    assert (tmp_path / "none.png").read_bytes().startswith(PNG_MAGIC)


def test_pretraining_plot_panels(tmp_path, monkeypatch):
    """Discriminator loss on its own axis with the base rate beside it; reference lines; a legend outside."""
    import matplotlib.pyplot as plt

    (tmp_path / "log.jsonl").write_text(TRAIN_LOG)
    seen = {}
    original = plt.Figure.savefig

    def spy(fig, *args, **kwargs):
        for ax in fig.axes:
            seen[ax.get_title()] = (ax.get_xlabel(), ax.get_ylabel(), [line.get_label() for line in ax.lines],
                                    ax.get_ylim())
        seen["legends on axes"] = [ax for ax in fig.axes if ax.get_legend() is not None]
        seen["figure legend"] = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(plt.Figure, "savefig", spy)
    plots.plot_pretraining({"electra": plots.read_train_log(tmp_path / "log.jsonl")}, {"electra": 1e9},
                           tmp_path / "loss.png", {"electra": 8192})
    disc = seen["discriminator loss vs the base rate it must beat"]
    assert disc[0] == "optimizer step" and "nats per token" in disc[1]
    assert "electra: base-rate entropy H(replaced)" in disc[2]
    assert disc[3][1] < 1.0  # its own axis: not shared with the generator's loss (about 8)
    assert "rtd_gain 0: no better than the base rate" in seen["learning signal: rtd_gain = 1 - disc_loss / H(replaced)"][2]
    assert "ROC AUC 0.5: chance" in seen["discriminator ROC AUC (replaced vs original)"][2]
    assert "total loss (generator + weighted discriminator)" in seen
    assert seen["legends on axes"] == [] and "electra: validation" in seen["figure legend"]


def test_full_report_renders(tmp_path, monkeypatch):
    """The evaluate stage's HTML page: every plot embedded, no Markdown source left as text."""
    monkeypatch.setenv("ELECTRA_DS_MLFLOW", "0")
    from electra_ds.cli import main

    paths = []
    for model in ("electra", "scratch"):
        for seed in (1, 2):
            for task, metric in (("rte", "accuracy"), ("probe-adjacency", "accuracy")):
                data = finetune_result(task, seed, model, [0.5, 0.6 + 0.01 * seed], metric)
                data["dev"] = data["history"][-1]["dev"]
                path = tmp_path / "ft" / model / task / f"seed{seed}" / "metrics.json"
                path.parent.mkdir(parents=True)
                path.write_text(json.dumps(data))
                paths.append(str(path))
    pre = tmp_path / "pretrain"
    pre.mkdir()
    (pre / "train_log.jsonl").write_text(TRAIN_LOG)
    (pre / "summary.json").write_text(json.dumps({"objective": "electra", "steps": 8, "flops": 8e9,
                                                  "global_batch_size": 64, "tokens_per_example": 128}))
    out = tmp_path / "evaluate"
    assert main(["evaluate", "--metrics", *paths, "--output-json", str(out / "results.json"),
                 "--output-md", str(out / "results.md"), "--output-html", str(out / "results.html"),
                 "--loss-plot", str(out / "pretrain_loss.png"), "--scores-plot", str(out / "task_scores.png"),
                 "--epochs-plot", str(out / "finetune_epochs.png"), "--models", "electra", "scratch",
                 "--pretrain-dirs", f"electra={pre}", "--results-dir", str(tmp_path)]) == 0
    md = (out / "results.md").read_text()
    assert "![Dev score and training loss after each fine-tuning epoch](finetune_epochs.png)" in md
    page = (out / "results.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "<table>" in page and "<li>" in page
    assert_no_raw_markdown(page)
