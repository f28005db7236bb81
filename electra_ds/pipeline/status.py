"""``electra-ds status RESULTS_DIR``: where a run stands, from its files only (fast; no torch, no MLflow).

What a user on a cluster login node wants without opening logs: which stages are done, each pretraining
run's step, rate, ETA, latest checkpoint and last metrics (``train_log.jsonl``), the exports, the
fine-tuning jobs done of planned, and the evaluation's headline. With ``--configfile`` the plan (models,
max steps, tasks x seeds) comes from the config; without it, what exists is counted.

Read (paths from :mod:`electra_ds.common.layout`): ``corpus/stats.json``, ``dedup/stats.json``,
``vocab/vocab_stats.json``, ``shards/index.json``, ``probes/probes.json``,
``pretrain/<model>/{summary.json,train_log.jsonl}``, its checkpoints (through
:mod:`electra_ds.pretraining.checkpoint`, as a resume sees them), the tail of ``logs/pretrain/<model>.log``
(``step N/M``, for the step budget when no config is given), ``export/<model>/``,
``finetune/<model>/<task>/seed<N>/metrics.json``, ``evaluate/results.json`` and the pipeline lock
``.electra-ds.lock``.
"""

from __future__ import annotations

import glob
import json
import os
import re
import socket
import sys
import time
from pathlib import Path

import yaml

from electra_ds.common import settings
from electra_ds.common.layout import Layout
from electra_ds.common.lock import pid_alive
from electra_ds.common.progress import format_bytes, format_count, format_seconds
from electra_ds.pipeline.study import plan_models
from electra_ds.pretraining import checkpoint

LOG_STEP = re.compile(r"step (\d+)/(\d+)")
# The pretraining metrics status shows (keys of a train_log.jsonl record) and their column names: base_rate is
# the entropy disc_loss must beat.
COLUMNS = {"loss": "loss", "gen_loss": "gen_loss", "gen_acc": "gen_acc", "disc_loss": "disc_loss",
           "base_entropy": "base_rate", "rtd_gain": "rtd_gain", "disc_auc": "disc_auc"}


def add_arguments(p) -> None:
    p.add_argument("results_dir", nargs="?", default=None,
                   help="the run's results directory (default: results_dir of --configfile, else results/demo)")
    p.add_argument("--configfile", default=None,
                   help="the pipeline config (planned models, max steps, fine-tuning tasks x seeds); "
                        "without it, what exists is counted")
    p.add_argument("--json", action="store_true", help="print the status as JSON instead of text")


# -- reading -----------------------------------------------------------------------------------------

def _json(path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _age(path, now: float) -> float | None:
    try:
        return max(0.0, now - os.stat(path).st_mtime)
    except OSError:
        return None


def _existing(pattern: str) -> list[Path]:
    """The paths a glob pattern matches (hidden names too), sorted."""
    return sorted(Path(p) for p in glob.glob(pattern, include_hidden=True))


def load_plan(configfile) -> dict | None:
    """``{"results_dir", "models": {name: {"source", "max_steps", "global_batch_size"}}, "tasks", "seeds"}``
    from a pipeline config (schema defaults filled where the schema is at hand)."""
    if not configfile:
        return None

    try:
        config = yaml.safe_load(Path(configfile).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SystemExit(f"electra-ds status: error: cannot read --configfile {configfile}: {exc}") from None
    try:
        import jsonschema

        schema = settings.schema()
        settings.fill_defaults(config, schema)
        jsonschema.validate(config, schema)
        plans = {n: {"source": p["source"], "max_steps": p["pretrain"].get("max_steps"),
                     "global_batch_size": p["pretrain"].get("global_batch_size")}
                 for n, p in plan_models(config, schema).items()}
    except Exception:  # a config the pipeline would reject: fall back to what it says literally
        plans = None
    if plans is None:
        pre = config.get("pretrain") or {}
        plans = {}
        for name, entry in (config.get("models") or {"electra": {}}).items():
            entry = entry or {}
            plans[name] = {"source": entry.get("source", "pretrained"),
                           "max_steps": entry.get("max_steps", pre.get("max_steps")),
                           "global_batch_size": entry.get("global_batch_size", pre.get("global_batch_size"))}
    ft = config.get("finetune") or {}
    return {"results_dir": config.get("results_dir"), "models": plans, "tasks": list(ft.get("tasks") or []),
            "seeds": list(ft.get("seeds") or [])}


def _last_train_log(path) -> tuple[dict | None, dict | None, int]:
    """(last train record, last valid record, lines) of a train_log.jsonl; later lines win at equal steps."""
    train = valid = None
    lines = 0
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a line being written
                lines += 1
                if record.get("split", "train") == "valid":
                    valid = record
                else:
                    train = record
    except OSError:
        pass
    return train, valid, lines


def _log_budget(path) -> int | None:
    """``M`` of the last ``step N/M`` line in the tail of a pretraining log."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 65536))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    found = LOG_STEP.findall(tail)
    return int(found[-1][1]) if found else None


def _checkpoints(ckpt_dir) -> dict:
    """The checkpoints as a resume sees them (electra_ds.pretraining.checkpoint): the tag ``latest`` names, the
    tag directories newest first, and the run config in the manifest of the one ``latest`` names."""
    latest, _ = checkpoint.read_latest(ckpt_dir)
    tags = checkpoint.candidates(ckpt_dir, latest)
    manifest = _json(Path(ckpt_dir) / latest / checkpoint.MANIFEST) if latest else None
    return {"latest": latest, "tags": tags, "newest": tags[0] if tags else None,
            "run_config": (manifest or {}).get("run_config") or {}}


def pretrain_status(results, name: str, plan: dict | None, now: float) -> dict:
    layout = Layout(results)
    summary = _json(layout.pretrain_summary(name))
    train, valid, _ = _last_train_log(layout.train_log(name))
    ckpt = _checkpoints(layout.checkpoints(name))
    budget = (summary or {}).get("steps") if summary else None
    budget = budget or (plan or {}).get("max_steps") or _log_budget(layout.log("pretrain", name))
    batch = ((summary or {}).get("global_batch_size") or (plan or {}).get("global_batch_size")
             or ckpt["run_config"].get("global_batch_size"))
    step = (train or {}).get("step", 0)
    state = "done" if summary else ("started" if train or ckpt["tags"] else "not started")
    out = {"state": state, "step": (summary or {}).get("steps", step), "max_steps": budget,
           "checkpoint": ckpt["latest"] or ckpt["newest"], "checkpoints": len(ckpt["tags"]),
           "log_age_s": _age(layout.train_log(name), now),
           "train": {k: train[k] for k in COLUMNS if k in (train or {})},
           "valid": {k: valid[k] for k in COLUMNS if k in (valid or {})},
           "valid_step": (valid or {}).get("step"),
           "tokens_per_s": (train or {}).get("tokens_per_s"), "samples_per_s": (train or {}).get("samples_per_s")}
    if out["samples_per_s"] and batch:
        out["steps_per_s"] = out["samples_per_s"] / batch
        if state == "started" and budget:
            out["eta_s"] = max(0, budget - step) / out["steps_per_s"]
    if summary:
        out["seconds"] = summary.get("seconds")
    return out


def _exported(results, name: str) -> bool:
    return (Path(Layout(results).export_discriminator(name)) / "config.json").is_file()


def finetune_status(results, plan: dict | None, models: list[str]) -> dict:
    """Jobs done per model; planned = models x tasks x seeds from the config, else what exists."""
    stars = Layout(glob.escape(str(results)))  # the layout's paths as glob patterns
    done = {}
    for path in _existing(stars.finetune_metrics("*", "*", "*")):  # .../<model>/<task>/seed<N>/metrics.json
        model, task, seed = path.parts[-4], path.parts[-3], path.parts[-2].removeprefix("seed")
        done[(model, task, seed)] = path
    if plan and plan["tasks"] and plan["seeds"]:
        planned = [(m, t, str(s)) for m in models for t in plan["tasks"] for s in plan["seeds"]]
    else:
        planned = sorted(done)
    missing = [job for job in planned if job not in done]
    per_model = {}
    for m in dict.fromkeys([j[0] for j in planned] + [j[0] for j in done]):
        per_model[m] = {"done": sum(1 for j in done if j[0] == m), "planned": sum(1 for j in planned if j[0] == m)}
    return {"done": len([j for j in planned if j in done]), "planned": len(planned), "per_model": per_model,
            "missing": [f"{m}/{t}/seed{s}" for m, t, s in missing], "known_plan": bool(plan and plan["tasks"])}


def data_status(results) -> dict:
    """One line per data stage: done or not, and its headline counts."""
    layout = Layout(results)
    out = {}
    corpus = _json(layout.corpus_stats)
    out["corpus"] = corpus and (f"{format_count(corpus['total']['documents_out'])} documents, "
                                f"{format_bytes(corpus['total']['bytes_out'])} from {len(corpus['sources'])} "
                                f"source(s)")
    dedup = _json(layout.dedup_stats)
    out["dedup"] = dedup and (f"{format_count(dedup['documents_out'])} of {format_count(dedup['documents_in'])} "
                              f"documents kept ({dedup.get('exact_duplicates_removed', 0)} exact, "
                              f"{dedup.get('near_duplicates_removed', 0)} near duplicates removed)")
    vocab = _json(layout.vocab_stats)
    out["vocab"] = vocab and (f"{vocab.get('vocab_size')} pieces, coverage {vocab.get('coverage', 0):.5f}, "
                              f"{vocab.get('pieces_per_word', 0):.2f} pieces/word")
    index = _json(layout.shards_index)
    out["shards"] = index and ", ".join(
        f"{split} {format_count(s['examples'])} examples / {format_count(s['tokens'])} tokens"
        for split, s in index.get("splits", {}).items() if s.get("examples"))
    probes = _json(layout.probes_stats)
    out["probes"] = probes and ", ".join(
        f"{t} {probes.get(f'{t}.train_examples', 0)} train / {probes.get(f'{t}.dev_examples', 0)} dev"
        for t in sorted({k.split('.')[0] for k in probes}))
    return out


def collect(results, plan: dict | None = None, now: float | None = None) -> dict:
    results = Path(results)
    layout, stars = Layout(results), Layout(glob.escape(str(results)))  # stars: the paths as glob patterns
    now = time.time() if now is None else now
    planned_models = dict((plan or {}).get("models") or {})
    model_dirs = (stars.pretrain_dir("*"), stars.export_dir("*"), stars.finetune_model_dir("*"))
    found = sorted({p.name for pattern in model_dirs for p in _existing(pattern) if p.is_dir()})
    models = list(planned_models) + [m for m in found if m not in planned_models]
    scratch = {m for m in models if planned_models.get(m, {}).get("source") == "scratch"
               or Path(layout.export_scratch_record(m)).is_file()}
    status = {"results_dir": str(results), "data": data_status(results), "pretrain": {}, "export": {},
              "lock": _json(layout.lock)}
    for m in models:
        if m not in scratch:
            status["pretrain"][m] = pretrain_status(results, m, planned_models.get(m), now)
        status["export"][m] = {"done": _exported(results, m), "scratch": m in scratch}
    status["finetune"] = finetune_status(results, plan, models)
    evaluate = _json(layout.evaluate_json)
    status["evaluate"] = None if evaluate is None else {
        k: (evaluate.get(k) or {}).get("value") for k in ("glue_score", "glue_score_common", "probe_score")}
    return status


# -- printing ----------------------------------------------------------------------------------------

def _metric_table(p: dict) -> list[str]:
    """The last training and validation metrics as a small table (base_rate: the entropy disc_loss must beat)."""
    rows = [(f"train @{p['step']}", p["train"]), (f"valid @{p['valid_step']}", p["valid"])]
    rows = [(label, values) for label, values in rows if values]
    keys = [k for k in COLUMNS if any(k in values for _, values in rows)]
    if not rows:
        return []
    pad = " " * 13
    out = [pad + f"{'':<12}" + "".join(f"{COLUMNS[k]:>10}" for k in keys)]
    for label, values in rows:
        out.append(pad + f"{label:<12}" + "".join(f"{values[k]:>10.4g}" if k in values else f"{'-':>10}"
                                                    for k in keys))
    return out


def render(status: dict) -> str:
    mark = {True: "done", False: "-"}
    lines = [f"results: {status['results_dir']}"]
    lock = status.get("lock")
    if lock:
        here = lock.get("host") == socket.gethostname()
        alive = None
        if here and isinstance(lock.get("pid"), int):

            alive = pid_alive(lock["pid"])
        lines.append(f"pipeline: {'running' if alive else 'lock left by'} pid {lock.get('pid')} on "
                     f"{lock.get('host')} since {lock.get('started')}" + (" (not running)" if alive is False else ""))
    lines += ["", "data stages"]
    for stage, text in status["data"].items():
        lines.append(f"  {stage:<8} {mark[bool(text)]:<12} {text or ''}".rstrip())
    if status["pretrain"]:
        lines += ["", "pretraining"]
    for name, p in status["pretrain"].items():
        step, budget = p["step"], p["max_steps"]
        where = f"step {step}" + (f"/{budget} ({100 * step / budget:.0f}%)" if budget else "")
        head = f"  {name:<8} {p['state']:<12} {where}"
        if p.get("steps_per_s"):
            head += f", {p['steps_per_s']:.3g} steps/s"
        if p.get("tokens_per_s"):
            head += f", {format_count(p['tokens_per_s'])} tokens/s"
        if p.get("eta_s") is not None:
            head += f", ETA {format_seconds(p['eta_s'])}"
        if p["state"] == "done" and p.get("seconds"):
            head += f", took {format_seconds(p['seconds'])}"
        lines.append(head)
        detail = []
        if p["log_age_s"] is not None and p["state"] != "done":
            detail.append(f"last log line {format_seconds(p['log_age_s'])} ago")
        if p["checkpoint"]:
            detail.append(f"checkpoint {p['checkpoint']} ({p['checkpoints']} kept)")
        elif p["state"] != "not started":
            detail.append("no checkpoint yet")
        if detail:
            lines.append(f"  {'':<8} {'':<12} " + "; ".join(detail))
        lines += _metric_table(p)
    if status["export"]:
        lines += ["", "export"]
        for name, e in status["export"].items():
            note = "random weights (no pretraining)" if e["scratch"] else ""
            lines.append(f"  {name:<8} {mark[e['done']]:<12} {note}".rstrip())
    ft = status["finetune"]
    lines += ["", f"fine-tuning: {ft['done']} of {ft['planned']} jobs done"
              + ("" if ft["known_plan"] else " (no --configfile: counting what exists)")]
    for name, c in ft["per_model"].items():
        lines.append(f"  {name:<8} {c['done']}/{c['planned']}")
    if ft["missing"]:
        shown = ft["missing"][:8]
        lines.append(f"  to do: {', '.join(shown)}" + (f" and {len(ft['missing']) - len(shown)} more"
                                                        if len(ft["missing"]) > len(shown) else ""))
    ev = status["evaluate"]
    if ev is None:
        lines += ["", "evaluate: -"]
    else:
        scores = ", ".join(f"{k.replace('_', ' ')} {100 * v:.1f}" for k, v in ev.items() if v is not None)
        lines += ["", f"evaluate: done ({scores or 'no scores'}); report: "
                  f"{Path(Layout(status['results_dir']).evaluate_html)}"]
    return "\n".join(lines)


def run_status(args) -> int:
    plan = load_plan(args.configfile)
    results = args.results_dir or (plan or {}).get("results_dir") or "results/demo"
    if not Path(results).is_dir():
        print(f"electra-ds status: error: {results}: no such results directory", file=sys.stderr)
        return 2
    status = collect(results, plan)
    print(json.dumps(status, indent=2, sort_keys=True, default=str) if args.json else render(status))
    return 0
