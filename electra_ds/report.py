"""The evaluation report: this run beside published ELECTRA numbers and earlier MLflow runs, plots.

* :data:`PUBLISHED`: GLUE dev scores of ELECTRA-Small and -Base, in percent, with their source;
* :func:`earlier_runs`: finished ``evaluate`` runs in the MLflow store (never raises: MLflow off,
  unreachable or empty gives ``[]`` and a note);
* :func:`parse_pretrain_log`: the loss curve from the pretrain stage's log lines
  (``step 20/600 [  3%] loss 37.7 gen 8.6 disc 0.58 ...`` and ``valid at step 200: loss ...``);
* :func:`comparison_table` -> :func:`table_markdown` / :func:`table_html`;
* :func:`plot_pretrain_loss`, :func:`plot_task_scores`: PNGs through matplotlib's Agg backend;
* :func:`render_html`: one self-contained page (tables, images embedded as data URIs).

Heavy imports (matplotlib, mlflow) happen inside the functions that need them.
"""

from __future__ import annotations

import base64
import html
import logging
import os
import re
from pathlib import Path

log = logging.getLogger(__name__)

ELECTRA_TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte")
TASK_LABELS = {"cola": "CoLA (MCC)", "sst2": "SST-2 (acc)", "mrpc": "MRPC (acc)", "stsb": "STS-B (Spearman)",
               "qqp": "QQP (acc)", "mnli": "MNLI-m (acc)", "qnli": "QNLI (acc)", "rte": "RTE (acc)",
               "wnli": "WNLI (acc)"}

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
    return sum(scores[t] for t in ELECTRA_TASKS) / len(ELECTRA_TASKS)


# -- MLflow: earlier evaluate runs ---------------------------------------------------------------

def earlier_runs(tracking_uri: str | None, exclude_run_id: str | None = None, limit: int = 5) -> tuple:
    """Finished runs of the ``evaluate`` rule in the store, newest first: ``(runs, note)``.

    Each run is ``{"run_id", "label", "experiment", "metrics"}`` with metrics as logged (fractions).
    Never raises; an absent, disabled, unreachable or empty store gives ``([], reason)``.
    """
    if os.environ.get("ELECTRA_DS_MLFLOW", "1") == "0":
        return [], "MLflow is off (ELECTRA_DS_MLFLOW=0)"
    if not tracking_uri:
        return [], "no MLflow tracking URI"
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///"):]).is_file():
        return [], f"no MLflow store at {tracking_uri}"
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=tracking_uri)
        experiments = {e.experiment_id: e.name for e in client.search_experiments()}
        if not experiments:
            return [], "the MLflow store has no experiments"
        found = client.search_runs(list(experiments),
                                   filter_string="tags.`electra_ds.rule` = 'evaluate' and attributes.status = 'FINISHED'",
                                   order_by=["attributes.start_time DESC"], max_results=limit + 1)
    except Exception as exc:  # the report must not fail because of tracking
        log.warning("MLflow: could not search earlier evaluate runs (%s)", exc)
        return [], f"MLflow search failed: {exc}"
    runs = []
    for r in found:
        if r.info.run_id == exclude_run_id or not r.data.metrics:
            continue
        import datetime

        started = datetime.datetime.fromtimestamp(r.info.start_time / 1000).strftime("%Y-%m-%d %H:%M")
        runs.append({"run_id": r.info.run_id, "experiment": experiments.get(r.info.experiment_id, "?"),
                     "label": f"{experiments.get(r.info.experiment_id, '?')} {started} ({r.info.run_id[:8]})",
                     "metrics": dict(r.data.metrics)})
    runs = runs[:limit]
    return runs, (f"{len(runs)} earlier evaluate run(s) from {tracking_uri}" if runs
                  else f"no earlier evaluate runs in {tracking_uri}")


# -- pretraining loss curve ----------------------------------------------------------------------

_TRAIN_LINE = re.compile(r"\bstep (\d+)/\d+ \[\s*\d+%\] loss ([-\d.eE+naif]+) gen ([-\d.eE+naif]+) "
                         r"disc ([-\d.eE+naif]+)")
_VALID_LINE = re.compile(r"\bvalid at step (\d+): loss ([-\d.eE+naif]+)")


def parse_pretrain_log(path) -> dict:
    """``{"train": [(step, loss, gen, disc)], "valid": [(step, loss)]}`` from a pretrain log.

    A resumed run logs some steps twice; the last line for a step wins. A missing file gives empty
    lists (the plot then says so).
    """
    train, valid = {}, {}
    path = Path(path) if path else None
    if path is None or not path.is_file():
        return {"train": [], "valid": [], "source": str(path) if path else None}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if m := _TRAIN_LINE.search(line):
                train[int(m.group(1))] = tuple(float(m.group(i)) for i in (2, 3, 4))
            elif m := _VALID_LINE.search(line):
                valid[int(m.group(1))] = float(m.group(2))
    return {"train": [(s, *train[s]) for s in sorted(train)], "valid": sorted(valid.items()), "source": str(path)}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_pretrain_loss(history: dict, path) -> None:
    """Total, generator (MLM) and discriminator (replaced-token detection) loss against step."""
    from electra_ds.fileio import atomic_path

    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    if history["train"]:
        steps = [r[0] for r in history["train"]]
        ax1.plot(steps, [r[1] for r in history["train"]], label="train loss (gen + w * disc)")
        if history["valid"]:
            ax1.plot([s for s, _ in history["valid"]], [v for _, v in history["valid"]], "o--", label="valid loss")
        ax2.plot(steps, [r[2] for r in history["train"]], label="generator (MLM)")
        ax2.plot(steps, [r[3] for r in history["train"]], label="discriminator (RTD)")
        for ax in (ax1, ax2):
            ax.set_xlabel("step")
            ax.legend()
            ax.grid(alpha=0.3)
        ax1.set_ylabel("loss")
    else:
        for ax in (ax1, ax2):
            ax.text(0.5, 0.5, f"no pretraining log lines\n({history.get('source')})", ha="center", va="center",
                    transform=ax.transAxes)
            ax.set_axis_off()
    ax1.set_title("pretraining loss")
    ax2.set_title("generator and discriminator loss")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def plot_task_scores(summary: dict, path) -> None:
    """Main dev score per task: median (bar), each seed (dots), published ELECTRA numbers (markers)."""
    from electra_ds.fileio import atomic_path

    plt = _pyplot()
    names = list(summary["tasks"])
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(names) + 2), 4))
    xs = list(range(len(names)))
    medians = [100 * summary["tasks"][n]["main"]["median"] for n in names]
    colors = ["tab:gray" if summary["tasks"][n]["is_probe"] else "tab:blue" for n in names]
    ax.bar(xs, medians, color=colors, alpha=0.7, label="this run (median over seeds)")
    for x, n in zip(xs, names):
        values = [100 * v for v in summary["tasks"][n]["main"]["values"]]
        ax.plot([x] * len(values), values, "k.", markersize=5)
    for marker, name in zip(("^", "v"), ("ELECTRA-Small-OWT (README)", "ELECTRA-Base (README)")):
        pts = [(x, PUBLISHED[name]["scores"][n]) for x, n in zip(xs, names) if n in PUBLISHED[name]["scores"]]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker, linestyle="none", label=name)
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{n}\n{summary['tasks'][n]['main_metric']}" for n in names], fontsize=8)
    ax.set_ylabel("dev score (%)")
    ax.set_title("fine-tuning: main dev metric per task (dots: seeds)")
    ax.axhline(0, color="black", linewidth=0.5)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


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
    order = ([t for t in ELECTRA_TASKS] + [n for n in glue_tasks if n not in ELECTRA_TASKS]) if glue_tasks else []
    rows = []
    for name in order + probe_tasks:
        t = tasks.get(name)
        this = (f"{_pct(100 * t['main']['median'])} ± {_pct(100 * t['main']['std'])}" if t else "-")
        label = TASK_LABELS.get(name, f"{name} ({t['main_metric']})" if t else name)
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


def _html_cell(text: str) -> str:
    escaped = html.escape(text)
    return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", escaped)


def table_html(table: dict) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table["columns"])
    body = "".join("<tr>" + "".join(f"<td>{_html_cell(c)}</td>" for c in row) + "</tr>\n" for row in table["rows"])
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>"


def _markdown_table_to_html(md: str) -> str:
    """The pipe tables of :func:`electra_ds.evaluate.render_markdown` as HTML (other lines as paragraphs)."""
    out, rows = [], []

    def flush():
        if rows:
            cols, body = rows[0], [r for r in rows[2:]]
            out.append(table_html({"columns": cols, "rows": body}))
            rows.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
            continue
        flush()
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.strip():
            out.append(f"<p>{_html_cell(line)}</p>")
    flush()
    return "\n".join(out)


def render_html(markdown: str, images: dict) -> str:
    """A self-contained HTML page: the Markdown report's text and tables, then the PNGs inline."""
    figures = []
    for caption, path in images.items():
        if path and Path(path).is_file():
            data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
            figures.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                           f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:70em;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:.3em .6em}"
             "td:not(:first-child){text-align:right}th{background:#f3f3f3}img{max-width:100%}")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Fine-tuning results</title>"
            f"<style>{style}</style></head><body>\n{_markdown_table_to_html(markdown)}\n"
            + "\n".join(figures) + "\n</body></html>\n")
