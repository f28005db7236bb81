"""Aggregate per-(task, seed) fine-tuning results: tables, report, plots and the GLUE submission.

Each input is a ``metrics.json`` written by the finetune stage. Per task, every dev metric is
summarised over seeds (median, mean, sample std, min, max, values); the task's score is the median
over seeds of its main metric. Four averages are reported separately:

* ``glue_score``: the ELECTRA paper's GLUE dev average over the eight tasks without WNLI (CoLA MCC,
  STS-B Spearman, accuracy elsewhere, MNLI matched), over whichever of them are present - the
  JSON and the table say which are included and which are missing;
* ``glue_score_common``: the common convention - each task's metrics averaged (MRPC and QQP
  (accuracy + F1) / 2, STS-B (Pearson + Spearman) / 2), MNLI-m and MNLI-mm counted as two entries,
  WNLI included when present; medians over seeds;
* ``probe_score``: the mean over the offline probe tasks, which are never counted as GLUE;
* ``average_score``: the mean over all tasks present (GLUE and probes).

With ``--linear-probe`` (the linear-probe stage's files), a *frozen probe* table: per model, each task's
dev accuracy of a linear reader on every layer, scratch as the baseline (:mod:`electra_ds.finetuning.linear_probe`).

Optional outputs (see :mod:`electra_ds.finetuning.report` and :mod:`electra_ds.finetuning.submission`): a comparison with
published ELECTRA numbers and earlier MLflow runs (in the Markdown and an HTML page), PNG plots of
the pretraining loss and per-task scores, and the GLUE leaderboard zip. JSON values are fractions;
tables show percentages with one decimal.
"""

from __future__ import annotations

import contextlib
import json
import logging
import statistics
from pathlib import Path

from electra_ds.common.errors import UserError
from electra_ds.common.fileio import atomic_path
from electra_ds.common.layout import PRETRAIN_SUMMARY, TRAIN_LOG
from electra_ds.common.settings import add_settings
from electra_ds.finetuning import linear_probe, plots, report
from electra_ds.finetuning.finetune import MODEL_RECIPE_FIELDS
from electra_ds.finetuning.glue import GLUE_SCORE_TASKS, SCORE_ENTRIES, TASKS, get_task
from electra_ds.finetuning.report import render_markdown, render_models, render_report, score_lines
from electra_ds.finetuning.submission import build_submission

log = logging.getLogger(__name__)

_REQUIRED = ("task", "seed", "dev", "main_metric", "main")
DEFAULT_MODEL = "model"  # metrics.json files written before models had names
# What the report and MLflow show of each pretrained model (from its pretrain summary.json).
PRETRAIN_HEADLINE = ("objective", "steps", "flops", "flops_per_token", "temperature", "mask_prob", "global_batch_size",
                     "seconds", "model", "final_train", "final_valid", "tokens_per_example")


SETTINGS = {"evaluate": ("submission_seed", "compare_runs")}


def add_arguments(p) -> None:
    p.add_argument("--metrics", nargs="+", required=True, help="metrics.json files from the finetune stage")
    p.add_argument("--output-json", required=True, help="aggregated results (JSON)")
    p.add_argument("--output-md", required=True, help="results table and comparisons (Markdown)")
    p.add_argument("--output-html", default=None, help="the same report as one self-contained HTML page")
    p.add_argument("--loss-plot", default=None, help="PNG of the pretraining loss curves")
    p.add_argument("--scores-plot", default=None, help="PNG of the per-task dev scores")
    p.add_argument("--epochs-plot", default=None,
                   help="PNG of the dev score and training loss after each fine-tuning epoch, per seed")
    p.add_argument("--models", nargs="*", default=None,
                   help="model names in report order (the first is the primary model: submission, published "
                        "comparison); default: as they appear in the metrics files")
    p.add_argument("--pretrain-dirs", nargs="*", default=[], metavar="NAME=DIR",
                   help="each pretrained model's pretrain output folder (summary.json, train_log.jsonl)")
    p.add_argument("--linear-probe", nargs="*", default=[], metavar="JSON",
                   help="the linear-probe stage's files (one per model): the frozen probe table")
    p.add_argument("--submission-zip", default=None,
                   help="write the GLUE leaderboard zip here (CoLA.tsv ... AX.tsv; probe tasks never)")
    add_settings(p, SETTINGS)


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
        model = str(data.get("model") or DEFAULT_MODEL)
        key = (model, task.name, data["seed"])
        if key in seen:
            raise UserError(f"duplicate result for model {model} task {task.name} seed {data['seed']} (also in "
                            f"{seen[key]})", path=path, fix="pass each (model, task, seed) metrics.json once")
        seen[key] = path
        if not isinstance(data["main"], (int, float)):
            raise UserError("must be a number", path=path, field="main")
        results.append({**data, "task": task.name, "model": model, "_path": str(path)})
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
            "majority_baseline": next((r["majority_baseline"]["main"] for r in runs
                                       if isinstance(r.get("majority_baseline"), dict)), None),
        }

    def average(names: list) -> float | None:
        return statistics.fmean(tasks[n]["main"]["median"] for n in names) if names else None

    glue = [n for n in GLUE_SCORE_TASKS if n in tasks]
    probes = [n for n, t in tasks.items() if t["is_probe"]]
    common = {}
    for entry, name, metric_names in SCORE_ENTRIES:
        if name in tasks and all(m in tasks[name]["metrics"] for m in metric_names):
            common[entry] = statistics.fmean(tasks[name]["metrics"][m]["median"] for m in metric_names)
    return {
        "scale": "fraction",
        "tasks": tasks,
        "glue_score": {"value": average(glue), "tasks": glue,
                       "missing": [n for n in GLUE_SCORE_TASKS if n not in tasks],
                       "excluded": [n for n, t in tasks.items() if not t["is_probe"] and n not in glue],
                       "convention": "ELECTRA dev: 8 tasks without WNLI; CoLA MCC, STS-B Spearman, "
                                     "accuracy elsewhere (MNLI matched); median over seeds"},
        "glue_score_common": {"value": statistics.fmean(common.values()) if common else None,
                              "entries": common,
                              "missing": [e for e, _, _ in SCORE_ENTRIES if e not in common],
                              "convention": "each task's metrics averaged (MRPC/QQP (acc+F1)/2, STS-B "
                                            "(Pearson+Spearman)/2), MNLI-m and MNLI-mm counted separately, "
                                            "WNLI included; median over seeds"},
        "probe_score": {"value": average(probes), "tasks": probes,
                        "note": "offline probes derived from held-out pretraining text; not GLUE"},
        "average_score": {"value": average(list(tasks)), "tasks": list(tasks)},
    }


def read_pretrain(pairs) -> dict:
    """``NAME=DIR`` -> {name: headline of DIR/summary.json, with the train log's path}."""
    out = {}
    for pair in pairs or []:
        name, sep, folder = pair.partition("=")
        if not sep:
            raise UserError(f"{pair!r} is not NAME=DIR", field="--pretrain-dirs")
        path = Path(folder) / PRETRAIN_SUMMARY
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"cannot read the pretraining summary ({exc})", path=path,
                            fix="run the pretrain stage first") from None
        out[name] = {**{k: data[k] for k in PRETRAIN_HEADLINE if k in data},
                     "train_log": str(Path(folder) / TRAIN_LOG)}
    return out


def finetune_recipe(results: list) -> dict:
    """The fine-tuning recipe a model's jobs ran with: each field a model may change (``models.<name>.finetune``) ->
    its sorted distinct values (one where every job agrees; epochs may differ by task). Results of older versions
    without ``hparams`` give what they have."""
    recipe = {}
    for key in MODEL_RECIPE_FIELDS:
        values = {r.get(key) if key == "epochs" else (r.get("hparams") or {}).get(key) for r in results}
        recipe[key] = sorted(v for v in values if v is not None)
    return recipe


def summarize_models(results: list, order: list | None, pretrain: dict) -> dict:
    """{model: {"source", "summary", "pretrain", "shape", "finetune_seconds", "finetune_recipe"}} in report order."""
    names = list(order or [])
    names += [r["model"] for r in results if r["model"] not in names]
    models = {}
    for name in names:
        mine = [r for r in results if r["model"] == name]
        if not mine:
            raise UserError(f"no fine-tuning results for model {name!r}", field="--models",
                            fix="pass its metrics.json files, or drop it from --models")
        source = mine[0].get("model_source", "pretrained")
        models[name] = {"source": source, "summary": summarize(mine), "pretrain": pretrain.get(name),
                        "shape": mine[0].get("model_shape", {}),
                        "finetune_seconds": sum(float(r.get("seconds", 0.0)) for r in mine),
                        "finetune_recipe": finetune_recipe(mine)}
    return models


def run(args, tracker) -> None:


    results = read_results(args.metrics)
    pretrain = read_pretrain(args.pretrain_dirs)
    models = summarize_models(results, args.models, pretrain)
    probes = linear_probe.read_results(args.linear_probe)  # {model: frozen probe}; none is fine
    probes = {name: probes[name] for name in [*models, *probes] if name in probes}  # report order
    sources = {name: m["source"] for name, m in models.items()}
    for name, probe in probes.items():
        if name in models:
            models[name]["linear_probe"] = {t: {"best_accuracy": r["best_accuracy"], "best_layer": r["best_layer"]}
                                            for t, r in probe["tasks"].items()}
    primary = next(iter(models))
    summary = dict(models[primary]["summary"])  # the primary model's tables stay at the top level
    summary["primary_model"] = primary
    summary["models"] = models
    if probes:
        summary["linear_probe"] = linear_probe.summary(probes, sources)
    if args.submission_zip:

        summary["submission"] = build_submission([r for r in results if r["model"] == primary],
                                                 args.submission_zip, args.submission_seed)
    earlier, earlier_note = ([], "not requested") if not args.compare_runs else (
        tracker.earlier_runs("evaluate", args.compare_runs))
    summary["earlier_runs"] = earlier
    table = report.comparison_table(summary, earlier)
    summary["comparison"] = table
    images = {"Pretraining curves": args.loss_plot, "Dev score per task and model": args.scores_plot,
              "Dev score and training loss after each fine-tuning epoch": args.epochs_plot}
    if args.loss_plot:
        histories = {name: plots.read_train_log(p["train_log"]) for name, p in pretrain.items()}
        per_step = {name: p.get("flops", 0.0) / max(p.get("steps", 1), 1) for name, p in pretrain.items()}
        tokens = {name: p.get("global_batch_size", 0) * p.get("tokens_per_example", 0) for name, p in pretrain.items()}
        plots.plot_pretraining(histories, per_step, args.loss_plot, tokens)
    if args.epochs_plot:
        order = list(models)
        plots.plot_finetune_epochs(sorted(results, key=lambda r: (order.index(r["model"]), r["seed"])),
                                   args.epochs_plot)
    if args.scores_plot:
        published = {} if not summary["glue_score"]["tasks"] else {
            name: report.PUBLISHED[name]["scores"] for name in ("ELECTRA-Small-OWT (README)", "ELECTRA-Base (README)")}
        plots.plot_task_scores({n: m["summary"] for n, m in models.items()}, args.scores_plot, published)
    markdown = render_models(models) + render_markdown(summary, primary if len(models) > 1 else None)
    for name, m in list(models.items())[1:]:
        markdown += "\n" + render_markdown(m["summary"], name, heading="##")
    markdown += ("\n" + linear_probe.render_markdown(probes, sources)) if probes else ""
    markdown += render_report(summary, table, earlier_note, images)
    json_path, md_path = Path(args.output_json), Path(args.output_md)
    html_path = Path(args.output_html) if args.output_html else None
    with contextlib.ExitStack() as stack:  # all outputs or none
        tmp_md = stack.enter_context(atomic_path(md_path))
        tmp_md.write_text(markdown, encoding="utf-8")
        if html_path:
            tmp_html = stack.enter_context(atomic_path(html_path))
            tmp_html.write_text(report.render_html(markdown, images), encoding="utf-8")
        tmp_json = stack.enter_context(atomic_path(json_path))
        tmp_json.write_text(json.dumps(summary, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                            encoding="utf-8")

    tracker.log_params({"n_results": len(results), "tasks": ",".join(summary["tasks"]), "models": ",".join(models),
                        "glue_score_tasks": ",".join(summary["glue_score"]["tasks"]),
                        "submission_seed": args.submission_seed})
    tracker.log_metrics(_model_metrics(models[primary]))
    for name, m in models.items():
        tracker.log_metrics({f"{name}.{k}": v for k, v in _model_metrics(m).items()})
    for path in (json_path, md_path, html_path, args.loss_plot, args.scores_plot, args.epochs_plot,
                 args.submission_zip):
        if path:
            tracker.log_artifact(path)

    tracker.log_model_runs({name: (_model_params(m), _model_metrics(m)) for name, m in models.items()})
    for name, m in models.items():
        for line in score_lines(m["summary"]):
            line = f"{name}: {line}" if len(models) > 1 else line
            print(line)
            log.info(line)


def _model_metrics(m: dict) -> dict:
    """Headline metrics of one model: dev medians per task, the scores, its pretraining's final figures."""
    summary, metrics = m["summary"], {}
    for name, t in summary["tasks"].items():
        metrics.update({f"{name}.{k}": s["median"] for k, s in t["metrics"].items()})
        metrics[f"{name}.main"] = t["main"]["median"]
    for key in ("glue_score", "glue_score_common", "probe_score", "average_score"):
        if summary[key]["value"] is not None:
            metrics[key] = summary[key]["value"]
    pre = m.get("pretrain") or {}
    for split in ("final_train", "final_valid"):
        for key in ("loss", "gen_loss", "gen_acc", "disc_loss", "rtd_gain", "disc_auc", "disc_precision",
                    "disc_recall"):
            if key in pre.get(split, {}):
                metrics[f"pretrain.{split.removeprefix('final_')}.{key}"] = pre[split][key]
    for key in ("flops", "steps", "seconds"):
        if key in pre:
            metrics[f"pretrain.{key}"] = pre[key]
    for task, probe in (m.get("linear_probe") or {}).items():
        metrics[f"linear_probe.{task}.best_accuracy"] = probe["best_accuracy"]
    metrics["finetune.seconds"] = m.get("finetune_seconds", 0.0)
    metrics["wall_seconds"] = pre.get("seconds", 0.0) + m.get("finetune_seconds", 0.0)
    return metrics


def _model_params(m: dict) -> dict:
    pre = m.get("pretrain") or {}
    shape = m.get("shape") or {}
    return {"source": m["source"], "objective": pre.get("objective", "none"),
            "temperature": pre.get("temperature", ""), "steps": pre.get("steps", 0),
            "generator_fraction": pre.get("model", {}).get("generator_fraction", ""),
            "shape": ", ".join(f"{k}={v}" for k, v in shape.items()),
            "tasks": ",".join(m["summary"]["tasks"])}


