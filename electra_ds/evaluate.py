"""Aggregate per-(task, seed) fine-tuning results into one table (JSON and Markdown).

Each input is a ``metrics.json`` written by the finetune stage. Per task, every dev metric is
summarised over seeds (median, mean, sample std, min, max, values); the task's score is the median
over seeds of its main metric. Three averages are reported separately:

* ``glue_score``: the ELECTRA paper's GLUE dev average over the eight tasks without WNLI (CoLA MCC,
  STS-B Spearman, accuracy elsewhere, MNLI matched), over whichever of them are present - the
  JSON and the table say which are included and which are missing;
* ``probe_score``: the mean over the offline probe tasks, which are never counted as GLUE;
* ``average_score``: the mean over all tasks present (GLUE and probes).

JSON values are fractions; the Markdown table shows percentages with one decimal.
"""

from __future__ import annotations

import json
import logging
import statistics
from pathlib import Path

from electra_ds.errors import UserError
from electra_ds.fileio import atomic_path, write_json
from electra_ds.glue import TASKS, get_task

log = logging.getLogger(__name__)

GLUE_SCORE_TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte")
_REQUIRED = ("task", "seed", "dev", "main_metric", "main")


def add_arguments(p) -> None:
    p.add_argument("--metrics", nargs="+", required=True, help="metrics.json files from the finetune stage")
    p.add_argument("--output-json", required=True, help="aggregated results (JSON)")
    p.add_argument("--output-md", required=True, help="results table (Markdown)")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


def read_results(paths) -> list:
    """Load and check metrics.json files; every problem is a UserError naming the file."""
    results, seen = [], {}
    for path in map(Path, paths):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError("does not exist", path=path, fix="run the finetune stage first") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"is not a readable JSON file ({exc})", path=path) from None
        if not isinstance(data, dict):
            raise UserError("is not a finetune metrics.json (not an object)", path=path)
        for key in _REQUIRED:
            if key not in data:
                raise UserError("is not a finetune metrics.json", path=path, field=key)
        try:
            task = get_task(data["task"])
        except UserError as exc:
            raise UserError(str(exc), path=path) from None
        key = (task.name, data["seed"])
        if key in seen:
            raise UserError(f"duplicate result for task {task.name} seed {data['seed']} (also in {seen[key]})",
                            path=path, fix="pass each (task, seed) metrics.json once")
        seen[key] = path
        if not isinstance(data["main"], (int, float)):
            raise UserError("must be a number", path=path, field="main")
        results.append({**data, "task": task.name, "_path": str(path)})
    return results


def _stats(values: list) -> dict:
    return {"median": statistics.median(values), "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "values": values}


def summarize(results: list) -> dict:
    """Per-task statistics over seeds and the GLUE / probe / overall averages."""
    tasks = {}
    for name in [t for t in TASKS if any(r["task"] == t for r in results)]:
        runs = sorted((r for r in results if r["task"] == name), key=lambda r: r["seed"])
        main_metrics = {r["main_metric"] for r in runs}
        if len(main_metrics) > 1:
            raise UserError(f"seeds of task {name} disagree on the main metric: {sorted(main_metrics)}",
                            path=runs[0]["_path"], field="main_metric")
        flat = [_flatten(r["dev"]) for r in runs]
        names = [m for m in flat[0] if all(m in f for f in flat)]
        tasks[name] = {
            "is_probe": get_task(name).is_probe,
            "n_seeds": len(runs), "seeds": [r["seed"] for r in runs],
            "main_metric": runs[0]["main_metric"],
            "main": _stats([float(r["main"]) for r in runs]),
            "metrics": {m: _stats([f[m] for f in flat]) for m in names},
            "files": [r["_path"] for r in runs],
        }

    def average(names: list) -> float | None:
        return statistics.fmean(tasks[n]["main"]["median"] for n in names) if names else None

    glue = [n for n in GLUE_SCORE_TASKS if n in tasks]
    probes = [n for n, t in tasks.items() if t["is_probe"]]
    return {
        "scale": "fraction",
        "tasks": tasks,
        "glue_score": {"value": average(glue), "tasks": glue,
                       "missing": [n for n in GLUE_SCORE_TASKS if n not in tasks],
                       "excluded": [n for n, t in tasks.items() if not t["is_probe"] and n not in glue],
                       "convention": "ELECTRA dev: 8 tasks without WNLI; CoLA MCC, STS-B Spearman, "
                                     "accuracy elsewhere (MNLI matched); median over seeds"},
        "probe_score": {"value": average(probes), "tasks": probes,
                        "note": "offline probes derived from held-out pretraining text; not GLUE"},
        "average_score": {"value": average(list(tasks)), "tasks": list(tasks)},
    }


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def render_markdown(summary: dict) -> str:
    lines = [
        "# Fine-tuning results",
        "",
        "Dev-set scores in percent: median over seeds, with mean ± sample standard deviation of the main "
        "metric. Rows of kind *probe* are offline probe tasks derived from held-out pretraining text: "
        "they are not GLUE tasks and are averaged separately.",
        "",
        "| task | kind | metrics (median) | main | mean ± std | seeds |",
        "|---|---|---|---:|---:|---:|",
    ]
    for name, t in summary["tasks"].items():
        kind = "probe" if t["is_probe"] else "GLUE"
        metrics = ", ".join(f"{m} {_pct(s['median'])}" for m, s in t["metrics"].items())
        main = t["main"]
        lines.append(f"| {name} | {kind} | {metrics} | {t['main_metric']} {_pct(main['median'])} | "
                     f"{_pct(main['mean'])} ± {_pct(main['std'])} | {t['n_seeds']} |")
    glue, probe, overall = summary["glue_score"], summary["probe_score"], summary["average_score"]
    glue_note = f"{len(glue['tasks'])} of {len(GLUE_SCORE_TASKS)} tasks: {', '.join(glue['tasks']) or 'none'}"
    if glue["missing"]:
        glue_note += f"; missing: {', '.join(glue['missing'])}"
    if glue["excluded"]:
        glue_note += f"; not counted: {', '.join(glue['excluded'])}"
    if glue["tasks"]:
        lines.append(f"| **GLUE score** | GLUE | {glue_note} | {_pct(glue['value'])} | | |")
    if probe["tasks"]:
        lines.append(f"| **probe score** | probe | {len(probe['tasks'])} probe "
                     f"task{'' if len(probe['tasks']) == 1 else 's'}: {', '.join(probe['tasks'])} "
                     f"| {_pct(probe['value'])} | | |")
    if glue["tasks"] and probe["tasks"]:
        lines.append(f"| **average** | GLUE + probe | all {len(overall['tasks'])} tasks above "
                     f"| {_pct(overall['value'])} | | |")
    lines.append("")
    if glue["tasks"]:
        lines += [f"GLUE score convention: {glue['convention']}.", ""]
    return "\n".join(lines)


def run(args, tracker) -> None:
    results = read_results(args.metrics)
    summary = summarize(results)
    markdown = render_markdown(summary)
    json_path, md_path = Path(args.output_json), Path(args.output_md)
    with atomic_path(md_path) as tmp:
        tmp.write_text(markdown, encoding="utf-8")
    try:
        write_json(json_path, summary)
    except BaseException:
        md_path.unlink(missing_ok=True)  # both outputs or neither
        raise

    metrics = {}
    for name, t in summary["tasks"].items():
        metrics.update({f"{name}.{m}": s["median"] for m, s in t["metrics"].items()})
        metrics[f"{name}.main"] = t["main"]["median"]
    for key in ("glue_score", "probe_score", "average_score"):
        if summary[key]["value"] is not None:
            metrics[key] = summary[key]["value"]
    tracker.log_params({"n_results": len(results), "tasks": ",".join(summary["tasks"]),
                        "glue_score_tasks": ",".join(summary["glue_score"]["tasks"])})
    tracker.log_metrics(metrics)
    tracker.log_artifact(json_path)
    tracker.log_artifact(md_path)
    log.info("GLUE score %s (%s), probe score %s", _pct(summary["glue_score"]["value"]),
             ",".join(summary["glue_score"]["tasks"]) or "no GLUE tasks", _pct(summary["probe_score"]["value"]))
