"""The evaluation report: this run beside published ELECTRA numbers and earlier MLflow runs, plots.

* :data:`PUBLISHED`: GLUE dev scores of ELECTRA-Small and -Base, in percent, with their source;
* :func:`comparison_table` -> :func:`table_markdown` / :func:`table_html` (the earlier runs come from the
  tracker: :meth:`electra_ds.tracking.base.Tracker.earlier_runs`);
* :func:`model_table`: the models of one run side by side (scores, pretraining FLOPs, rtd_gain);
* :func:`render_html`: the Markdown report as one self-contained page (markdown-it-py; images embedded).

Heavy imports (markdown-it-py) happen inside the functions that need them.
"""

from __future__ import annotations

import base64
from pathlib import Path

from electra_ds.finetuning.glue import GLUE_SCORE_TASKS, TASKS


def _task_label(name: str, main_metric: str | None) -> str:
    """A task's column label: a registered task's own (glue.Task.report_label: ``CoLA (MCC)``), else
    ``<name> (<main metric>)``."""
    if name in TASKS:
        return TASKS[name].report_label
    return f"{name} ({main_metric})" if main_metric else name


# GLUE dev, percent, the ELECTRA convention's metric per task (CoLA MCC, STS-B Spearman, else accuracy).
# "paper": Clark et al. 2020 (ICLR): only the headline dev averages (79.9 Small, 85.1 Base) are used;
# per-task dev values of the paper are not reproduced here until checked against the PDF.
# "README": google-research/electra README, "Expected Results" (released checkpoints, dev, median over
# many seeds): Small++, Small trained on OpenWebText, and Base.
PUBLISHED = {
    "ELECTRA-Small (paper)": {
        "scores": {},
        "reported_average": 79.9,
        "source": "Clark et al. 2020, ELECTRA: GLUE dev average of ELECTRA-Small (per-task values not shown)"},
    "ELECTRA-Base (paper)": {
        "scores": {},
        "reported_average": 85.1,
        "source": "Clark et al. 2020, ELECTRA: GLUE dev average of ELECTRA-Base (per-task values not shown)"},
    "ELECTRA-Small-OWT (README)": {
        "scores": {"cola": 56.8, "sst2": 88.3, "mrpc": 87.4, "stsb": 86.8, "qqp": 88.3, "mnli": 78.9,
                   "qnli": 87.9, "rte": 68.5},
        "reported_average": None,
        "source": "github.com/google-research/electra README, Expected Results (Small on OpenWebText)"},
    "ELECTRA-Small++ (README)": {
        "scores": {"cola": 57.0, "sst2": 91.2, "mrpc": 88.0, "stsb": 87.5, "qqp": 89.0, "mnli": 81.3,
                   "qnli": 88.4, "rte": 66.7},
        "reported_average": None,
        "source": "github.com/google-research/electra README, Expected Results (released Small++)"},
    "ELECTRA-Base (README)": {
        "scores": {"cola": 67.7, "sst2": 95.1, "mrpc": 89.5, "stsb": 91.2, "qqp": 91.5, "mnli": 88.8,
                   "qnli": 93.2, "rte": 82.7},
        "reported_average": None,
        "source": "github.com/google-research/electra README, Expected Results (released Base)"},
}


def published_average(name: str) -> float:
    """Mean of the eight per-task values, or the quoted average where no per-task values are kept."""
    scores = PUBLISHED[name]["scores"]
    if not scores:
        return PUBLISHED[name]["reported_average"]
    return sum(scores[t] for t in GLUE_SCORE_TASKS) / len(GLUE_SCORE_TASKS)


# -- the comparison table ------------------------------------------------------------------------

def _pct(v) -> str:
    return "" if v is None else f"{v:.1f}"


def comparison_table(summary: dict, earlier: list) -> dict:
    """``{"columns": [...], "rows": [[label, cell, ...]], "notes": [...]}``, values in percent.

    Published columns appear only when the run has GLUE tasks; probe-only runs compare with earlier
    runs only. Earlier runs show their logged medians (``<task>.main``) and scores.
    """
    tasks = summary["tasks"]
    glue_tasks = [n for n, t in tasks.items() if not t["is_probe"]]
    probe_tasks = [n for n, t in tasks.items() if t["is_probe"]]
    published = list(PUBLISHED) if glue_tasks else []
    columns = ["task", "this run"] + published + [r["label"] for r in earlier]
    order = ([*GLUE_SCORE_TASKS] + [n for n in glue_tasks if n not in GLUE_SCORE_TASKS]) if glue_tasks else []
    rows = []
    for name in order + probe_tasks:
        t = tasks.get(name)
        this = (f"{_pct(100 * t['main']['median'])} ± {_pct(100 * t['main']['std'])}" if t else "-")
        label = _task_label(name, t["main_metric"] if t else None)
        cells = [label, this] + [_pct(PUBLISHED[p]["scores"].get(name)) or "-" for p in published]
        cells += [_pct(100 * r["metrics"][f"{name}.main"]) if f"{name}.main" in r["metrics"] else "-" for r in earlier]
        rows.append(cells)
    notes = []
    if glue_tasks:
        glue = summary["glue_score"]
        value = glue["value"]
        rows.append(["**GLUE score** (ELECTRA: 8 tasks)", _pct(None if value is None else 100 * value)
                     + (f" ({len(glue['tasks'])}/8 tasks)" if len(glue["tasks"]) < 8 else "")]
                    + [f"{published_average(p):.1f}" for p in published]
                    + [_pct(100 * r["metrics"]["glue_score"]) if "glue_score" in r["metrics"] else "-"
                       for r in earlier])
        common = summary.get("glue_score_common", {})
        if common.get("value") is not None:
            rows.append(["**GLUE score** (common: metrics averaged, MNLI-m/mm apart)",
                         _pct(100 * common["value"])] + ["-"] * len(published)
                        + [_pct(100 * r["metrics"]["glue_score_common"]) if "glue_score_common" in r["metrics"]
                           else "-" for r in earlier])
        for p in published:
            q = PUBLISHED[p]["reported_average"]
            notes.append(f"{p}: {PUBLISHED[p]['source']}" + (f"; quoted average {q:.1f}" if q is not None else ""))
    if probe_tasks:
        rows.append(["**probe score** (offline probes, not GLUE)", _pct(100 * summary["probe_score"]["value"])]
                    + ["-"] * len(published)
                    + [_pct(100 * r["metrics"]["probe_score"]) if "probe_score" in r["metrics"] else "-"
                       for r in earlier])
    return {"columns": columns, "rows": rows, "notes": notes}


def table_markdown(table: dict) -> str:
    cols = table["columns"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(["---"] + ["---:"] * (len(cols) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in table["rows"]]
    return "\n".join(lines)


def render_html(markdown: str, images: dict) -> str:
    """A self-contained HTML page from the Markdown report (markdown-it-py, CommonMark + tables); every image
    the Markdown references (``![caption](file.png)``) is embedded as a data URI; ``images`` maps captions to
    the PNG files (absent files are left out with their reference)."""
    from markdown_it import MarkdownIt

    for caption, path in images.items():
        reference = f"![{caption}]({Path(path).name})" if path else None
        if reference is None or reference not in markdown:
            continue
        if Path(path).is_file():
            data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
            markdown = markdown.replace(reference, f"![{caption}](data:image/png;base64,{data})")
        else:
            markdown = markdown.replace(reference, f"*{caption}: not available*")
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    style = ("body{font-family:sans-serif;max-width:75em;margin:2em auto;padding:0 1em;color:#222}"
             # a table wider than the page scrolls inside its own box instead of pushing the page wide
             "table{border-collapse:collapse;margin:1em 0;display:block;width:max-content;max-width:100%;"
             "overflow-x:auto}"
             "th,td{border:1px solid #ccc;padding:.3em .6em}"
             "th{background:#f3f3f3}tr:nth-child(even) td{background:#fafafa}img{max-width:100%;display:block;"
             "margin:1em 0}h1{border-bottom:1px solid #ddd;padding-bottom:.2em}")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>electra-ds results</title>"
            f"<style>{style}</style></head><body>\n{body}\n</body></html>\n")


# -- the models of one run side by side --------------------------------------------------------------

def model_table(models: dict) -> dict:
    """One row per model: what it is, its pretraining (FLOPs, steps, validation rtd_gain), each task's main
    dev metric (median ± std over seeds) and its score (GLUE score if it has GLUE tasks, else probe score)."""
    tasks = []
    for m in models.values():
        tasks += [t for t in m["summary"]["tasks"] if t not in tasks]
    columns = ["model", "pretraining", "FLOPs", "valid rtd_gain", "valid context_auc"] + [
        _task_label(t, next(m["summary"]["tasks"][t]["main_metric"] for m in models.values() if t in m["summary"]["tasks"]))
        for t in tasks] + ["score"]
    rows = []
    for name, m in models.items():
        pre = m.get("pretrain") or {}
        what = "none (random weights)" if m["source"] == "scratch" else \
            f"{pre.get('objective', '?')}, {pre.get('steps', '?')} steps"
        if pre.get("temperature", 1.0) != 1.0 and pre.get("objective") != "mlm":
            what += f", T={pre['temperature']:g}"
        valid = pre.get("final_valid", {})
        cells = [name, what, f"{pre['flops']:.2e}" if pre.get("flops") else "0"]
        cells += [f"{valid[k]:.3f}" if k in valid else "-" for k in ("rtd_gain", "context_auc")]
        for t in tasks:
            s = m["summary"]["tasks"].get(t)
            cells.append(f"{_pct(100 * s['main']['median'])} ± {_pct(100 * s['main']['std'])}" if s else "-")
        summary = m["summary"]
        score = summary["glue_score"] if summary["glue_score"]["tasks"] else summary["probe_score"]
        kind = "GLUE" if summary["glue_score"]["tasks"] else "probe"
        cells.append(f"{kind} {_pct(100 * score['value'])}" if score["value"] is not None else "-")
        rows.append(cells)
    baselines = {t: majority_baseline(models, t) for t in tasks}
    if any(v is not None for v in baselines.values()):
        rows.append(["majority class", "none (a constant answer: the training set's most frequent label)", "0", "-",
                     "-"] + ["-" if baselines[t] is None else _pct(100 * baselines[t]) for t in tasks] + ["-"])
    return {"columns": columns, "rows": rows, "notes": []}


def majority_baseline(models: dict, task: str):
    """The task's constant-answer score on dev (finetune's ``majority_baseline``, the same for every model and
    seed), or None when no result records it (results of older versions)."""
    for m in models.values():
        value = m["summary"]["tasks"].get(task, {}).get("majority_baseline")
        if value is not None:
            return value
    return None


# -- the evaluate stage's Markdown --------------------------------------------------------------------------
def _percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def render_markdown(summary: dict, model: str | None = None, heading: str = "#") -> str:
    lines = [
        f"{heading} Fine-tuning results" + (f": {model}" if model else ""),
        "",
        "Dev-set scores in percent: median over seeds, with mean ± sample standard deviation of the main "
        "metric. Rows of kind *probe* are offline probe tasks derived from held-out pretraining text: "
        "they are not GLUE tasks and are averaged separately. *majority class*: what a constant answer (the "
        "training set's most frequent label) scores on the same dev set, the floor a model must beat.",
        "",
        "| task | kind | metrics (median) | main | mean ± std | majority class | seeds |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for name, t in summary["tasks"].items():
        kind = "probe" if t["is_probe"] else "GLUE"
        metrics = ", ".join(f"{m} {_percent(s['median'])}" for m, s in t["metrics"].items())
        main = t["main"]
        lines.append(f"| {name} | {kind} | {metrics} | {t['main_metric']} {_percent(main['median'])} | "
                     f"{_percent(main['mean'])} ± {_percent(main['std'])} | "
                     f"{_percent(t.get('majority_baseline'))} | {t['n_seeds']} |")
    glue, probe, overall = summary["glue_score"], summary["probe_score"], summary["average_score"]
    glue_note = f"{len(glue['tasks'])} of {len(GLUE_SCORE_TASKS)} tasks: {', '.join(glue['tasks']) or 'none'}"
    if glue["missing"]:
        glue_note += f"; missing: {', '.join(glue['missing'])}"
    if glue["excluded"]:
        glue_note += f"; not counted: {', '.join(glue['excluded'])}"
    if glue["tasks"]:
        lines.append(f"| **GLUE score** | GLUE | {glue_note} | {_percent(glue['value'])} | | | |")
        common = summary["glue_score_common"]
        if common["value"] is not None:
            note = f"{len(common['entries'])} entries: {', '.join(common['entries'])}"
            if common["missing"]:
                note += f"; missing: {', '.join(common['missing'])}"
            lines.append(f"| **GLUE score, common** | GLUE | {note} | {_percent(common['value'])} | | | |")
    if probe["tasks"]:
        lines.append(f"| **probe score** | probe | {len(probe['tasks'])} probe "
                     f"task{'' if len(probe['tasks']) == 1 else 's'}: {', '.join(probe['tasks'])} "
                     f"| {_percent(probe['value'])} | | | |")
    if glue["tasks"] and probe["tasks"]:
        lines.append(f"| **average** | GLUE + probe | all {len(overall['tasks'])} tasks above "
                     f"| {_percent(overall['value'])} | | | |")
    lines.append("")
    if glue["tasks"]:
        lines += [f"GLUE score convention: {glue['convention']}.", ""]
        if summary["glue_score_common"]["value"] is not None:
            lines += [f"GLUE score, common convention: {summary['glue_score_common']['convention']}.", ""]
    return "\n".join(lines)


def render_report(summary: dict, table: dict, earlier_note: str, images: dict) -> str:
    """The comparison, submission and plot sections appended to the results table."""

    has_glue = any(not t["is_probe"] for t in summary["tasks"].values())
    title = "Comparison with published ELECTRA numbers and earlier runs" if has_glue else "Comparison with earlier runs"
    lines = ["", f"## {title}", "",
             "Main dev metric in percent (this run: median ± std over seeds; earlier runs: their logged medians).",
             "", table_markdown(table), ""]
    lines += [f"- {note}" for note in table["notes"]]
    lines += [f"- Earlier runs: {earlier_note}.", ""]
    sub = summary.get("submission")
    if sub:
        lines += ["## Leaderboard submission", "",
                  f"`{Path(sub['zip']).name}` ({sub['seed_choice']} seed per task; "
                  f"{'complete' if sub['complete'] else 'incomplete'}):", ""]
        lines += [f"- {name}: {f['rows']} rows from {f['task']} seed {f['seed']}" for name, f in sub["files"].items()]
        if sub["missing"]:
            lines.append(f"- missing: {', '.join(sub['missing'])}")
        lines += [f"- note: {n}" for n in sub["notes"]] + [""]
    plots = {k: v for k, v in images.items() if v}
    if plots:
        lines += ["## Plots", ""]
        for caption, path in plots.items():
            lines += [f"### {caption}", "", PLOT_NOTES.get(caption, ""), "", f"![{caption}]({Path(path).name})", ""]
    return "\n".join(lines)


PLOT_NOTES = {
    "Pretraining curves": "Against the optimizer step (top axis: tokens seen). The discriminator's loss has its "
                          "own axis, with the base-rate entropy H(replaced) it must get below; `rtd_gain` > 0 and "
                          "ROC AUC > 0.5 mean it does better than guessing from the replacement rate.",
    "Dev score per task and model": "Bars: median over seeds (its value written in the bar); dots: the seeds.",
    "Dev score and training loss after each fine-tuning epoch":
        "One line per model and seed (dodged sideways a little so equal curves stay visible); the reported score is "
        "the last epoch's. Below each task's scores, its training loss (the epoch's mean): still falling at the last "
        "epoch means the model was still learning when fine-tuning stopped.",
}


def recipe_note(models: dict) -> str:
    """' and recipe', or what differs between the models' fine-tuning recipes (``models.<name>.finetune``)."""
    recipes = {name: m.get("finetune_recipe") or {} for name, m in models.items()}
    keys = sorted({k for r in recipes.values() for k in r}, key=lambda k: (k != "learning_rate", k != "epochs", k))
    differing = [k for k in keys if len({tuple(r.get(k, ())) for r in recipes.values()}) > 1]
    if not differing:
        return " and recipe"
    parts = [f"{name} " + ", ".join(f"{k.replace('_', ' ')} {'/'.join(f'{v:g}' for v in r.get(k, [])) or '?'}"
                                    for k in differing) for name, r in recipes.items()]
    return f"; **their fine-tuning recipes differ** (models.<name>.finetune): {'; '.join(parts)}"


def render_models(models: dict) -> str:
    """The side-by-side table (only when the run has more than one model)."""
    if len(models) < 2:
        return ""

    return "\n".join(["# Models side by side", "",
                      f"Each model fine-tuned on the same tasks with the same seeds{recipe_note(models)}; main dev "
                      "metric in percent, median ± sample std over seeds. *scratch* is the same architecture with "
                      "random weights: what pretraining adds is the distance to it. `rtd_gain` > 0 means the "
                      "discriminator beats the base rate; `context_auc` is the part of its ROC AUC that a context-free "
                      "per-token score does not already give (README, 'What a healthy run looks like').", "",
                      table_markdown(model_table(models)), "", ""])


def score_lines(summary: dict) -> list:
    lines = []
    if summary["glue_score"]["tasks"]:
        lines.append(f"GLUE score (ELECTRA convention, {len(summary['glue_score']['tasks'])}/8 tasks): "
                     f"{_percent(summary['glue_score']['value'])}")
        if summary["glue_score_common"]["value"] is not None:
            lines.append(f"GLUE score (common convention, {len(summary['glue_score_common']['entries'])} entries): "
                         f"{_percent(summary['glue_score_common']['value'])}")
    if summary["probe_score"]["tasks"]:
        lines.append(f"probe score ({len(summary['probe_score']['tasks'])} probe tasks, not GLUE): "
                     f"{_percent(summary['probe_score']['value'])}")
    return lines
