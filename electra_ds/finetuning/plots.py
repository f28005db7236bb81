"""PNG plots of the evaluation report (matplotlib's Agg backend), from structured files only.

* :func:`read_train_log`: a pretraining run's ``train_log.jsonl`` (one JSON object per log interval or
  validation pass, written by :mod:`electra_ds.pretraining.pretrain`);
* :func:`plot_pretraining`: the curves of every pretrained model against the optimizer step (top axis:
  tokens seen, or FLOPs): total loss, generator loss and accuracy, discriminator loss on its own axis with
  the base-rate entropy it must beat, ``rtd_gain`` and discriminator ROC AUC;
* :func:`plot_finetune_epochs`: dev main metric and training loss after each fine-tuning epoch, per task, model
  and seed;
* :func:`plot_task_scores`: main dev score per task and model (bars: median over seeds; dots: seeds).

Every figure has a title, labelled axes and a legend outside the axes (it never hides data).
"""

from __future__ import annotations

import json
from pathlib import Path

from electra_ds.common.fileio import atomic_path


def read_train_log(path) -> dict:
    """``{"train": [records], "valid": [records]}`` sorted by step; a missing file gives empty lists."""
    out = {"train": {}, "valid": {}}
    path = Path(path) if path else None
    if path is not None and path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                out.setdefault(record.get("split", "train"), {})[int(record["step"])] = record
    return {split: [records[s] for s in sorted(records)] for split, records in out.items()}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _same(values: dict) -> float | None:
    vals = [v for v in values.values() if v]
    return vals[0] if vals and all(abs(v - vals[0]) <= 1e-9 * abs(vals[0]) for v in vals) else None


def _second_axis(histories: dict, flops_per_step: dict, tokens_per_step: dict) -> tuple:
    """(factor, label) of the top axis: tokens per step when every model shares it, else FLOPs per step when
    shared, else the first model's tokens (or FLOPs) named as such; (None, None) when nothing is known."""
    names = list(histories)
    tokens = {n: (tokens_per_step or {}).get(n, 0) for n in names}
    flops = {n: flops_per_step.get(n, 0) for n in names}
    if _same(tokens):
        return _same(tokens), "tokens seen (incl. padding)"
    if _same(flops):
        return _same(flops), "pretraining FLOPs"
    for name in names:
        if tokens[name]:
            return tokens[name], f"tokens seen by {name}"
        if flops[name]:
            return flops[name], f"pretraining FLOPs of {name}"
    return None, None


# (key, panel title, y label); the discriminator's panels stay empty for MLM-only models
PRETRAIN_PANELS = (
    ("loss", "total loss (generator + weighted discriminator)", "loss (nats, weighted sum)"),
    ("gen_loss", "generator: masked-LM loss", "cross-entropy (nats per masked token)"),
    ("gen_acc", "generator: accuracy at masked positions", "accuracy (fraction)"),
    ("disc_loss", "discriminator loss vs the base rate it must beat", "cross-entropy (nats per token)"),
    ("rtd_gain", "learning signal: rtd_gain = 1 - disc_loss / H(replaced)", "rtd_gain (fraction of H)"),
    ("disc_auc", "discriminator ROC AUC (replaced vs original)", "ROC AUC"),
)


def _shared_legend(fig, axes, max_columns: int, fontsize: int) -> int:
    """One legend below the panels for every distinct label of ``axes`` (never on data); its number of rows."""
    handles: dict = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    if not handles:
        return 0
    columns = min(max_columns, len(handles))
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=columns, fontsize=fontsize,
               frameon=False)
    return -(-len(handles) // columns)


def plot_pretraining(histories: dict, flops_per_step: dict, path, tokens_per_step: dict | None = None) -> None:
    """Six panels against the optimizer step (top axis: tokens seen, or FLOPs): total loss, generator loss
    and accuracy, discriminator loss on its own axis with the base-rate entropy H(replaced) it must beat
    drawn as a reference line, rtd_gain (0 = the base rate) and discriminator ROC AUC (0.5 = chance).
    Lines: training log intervals; dots: validation passes. ``histories``: model name ->
    :func:`read_train_log` result; ``flops_per_step`` / ``tokens_per_step``: model name -> per step."""
    plt = _pyplot()
    from matplotlib.ticker import EngFormatter

    fig, axes = plt.subplots(3, 2, figsize=(13, 12))
    panels = dict(zip((k for k, _, _ in PRETRAIN_PANELS), axes.flat))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    drawn = False
    for i, (name, history) in enumerate(histories.items()):
        color = colors[i % len(colors)]
        for split, style in (("train", dict(linestyle="-", linewidth=1.3)),
                             ("valid", dict(linestyle="none", marker="o", markersize=5, markeredgecolor="black",
                                            markeredgewidth=0.5))):
            records = history.get(split, [])
            if not records:
                continue
            drawn = True
            label = f"{name}: {'training (log intervals)' if split == 'train' else 'validation'}"
            for key, ax in panels.items():
                points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
                if points:
                    ax.plot(*zip(*points), color=color, label=label, **style)
            base = [(r["step"], r["base_entropy"]) for r in records if r.get("base_entropy") is not None]
            if split == "train" and base:
                panels["disc_loss"].plot(*zip(*base), ":", color=color, linewidth=1.5,
                                         label=f"{name}: base-rate entropy H(replaced)")
    refs = {"rtd_gain": (0.0, "rtd_gain 0: no better than the base rate"), "disc_auc": (0.5, "ROC AUC 0.5: chance")}
    factor, second = _second_axis(histories, flops_per_step, tokens_per_step)
    for key, title, ylabel in PRETRAIN_PANELS:
        ax = panels[key]
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if not ax.lines:
            ax.text(0.5, 0.5, "no data (no replaced-token detection: MLM objective)" if drawn else
                    "no pretraining log", ha="center", va="center", transform=ax.transAxes, color="gray")
            continue
        if key in refs:
            ax.axhline(refs[key][0], color="black", linewidth=0.8, linestyle="--", label=refs[key][1])
        if factor:
            top = ax.secondary_xaxis("top", functions=(lambda x, f=factor: x * f, lambda x, f=factor: x / f))
            top.xaxis.set_major_formatter(EngFormatter(places=0, sep=""))
            top.set_xlabel(second, fontsize=8)
            top.tick_params(labelsize=8)
    rows = _shared_legend(fig, axes, max_columns=3, fontsize=9)
    fig.suptitle("Pretraining curves (lines: training log intervals; dots: validation passes)", fontsize=13)
    fig.tight_layout(rect=(0, 0.025 * rows + 0.01, 1, 0.98))  # the legend sits below the panels, never on data
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _dev_value(dev: dict, metric: str):
    value = dev
    for part in metric.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value if isinstance(value, (int, float)) else None


def plot_finetune_epochs(results: list, path) -> None:
    """After each fine-tuning epoch, per task: the dev main metric (upper panel) and the training loss, the mean
    over the epoch's batches (lower panel), one line per (model, seed) from each metrics.json's ``history`` (colour:
    model; line style and marker: seed). The loss shows whether a model has stopped learning (scratch converged)
    or is still learning when fine-tuning stops."""
    plt = _pyplot()
    tasks, models, seeds = [], [], []
    for r in results:
        for lst, v in ((tasks, r["task"]), (models, r.get("model", "model")), (seeds, r["seed"])):
            if v not in lst:
                lst.append(v)
    seeds.sort()
    columns = min(4, max(1, len(tasks)))
    n_rows = max(1, -(-len(tasks) // columns))
    fig, grid = plt.subplots(2 * n_rows, columns, figsize=(4.2 * columns + 0.5, 6.4 * n_rows + 1.2), squeeze=False)
    dev_axes = [grid[2 * (i // columns), i % columns] for i in range(n_rows * columns)]
    loss_axes = [grid[2 * (i // columns) + 1, i % columns] for i in range(n_rows * columns)]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles, markers = ("-", "--", ":", "-."), ("o", "s", "^", "D", "v", "P")
    for ax, loss_ax, task in zip(dev_axes, loss_axes, tasks):
        metric = next(r["main_metric"] for r in results if r["task"] == task)
        for r in (r for r in results if r["task"] == task):
            history = r.get("history", [])
            m, k = models.index(r.get("model", "model")), seeds.index(r["seed"])
            # dodged a little sideways, so equal curves of two seeds or models stay visible side by side
            lane = m * len(seeds) + k - (len(models) * len(seeds) - 1) / 2
            shift = 0.25 * lane / max(1, len(models) * len(seeds))
            style = {"color": colors[m % len(colors)], "linestyle": styles[k % len(styles)],
                     "marker": markers[k % len(markers)], "markersize": 5, "alpha": 0.9}
            points = [(h["epoch"], _dev_value(h.get("dev", {}), r["main_metric"])) for h in history]
            points = [(e, 100 * v) for e, v in points if v is not None]
            if points:
                ax.plot([e + shift for e, _ in points], [v for _, v in points], **style,
                        label=f"{r.get('model', 'model')} seed {r['seed']}")
            losses = [(h["epoch"], h["train_loss"]) for h in history
                      if isinstance(h.get("train_loss"), (int, float))]
            if losses:
                loss_ax.plot([e + shift for e, _ in losses], [v for _, v in losses], **style)
        ax.set_title(f"{task}: dev {metric}", fontsize=10)
        ax.set_ylabel(f"dev {metric.split('.')[-1]} (%)")
        loss_ax.set_title(f"{task}: training loss", fontsize=10)
        loss_ax.set_ylabel("training loss (epoch mean)")
        for a in (ax, loss_ax):
            a.set_xlabel("epoch")
            a.grid(alpha=0.3)
            epochs = sorted({round(x) for line in a.lines for x in line.get_xdata()})
            if epochs:
                a.set_xticks(epochs)
            else:
                a.text(0.5, 0.5, "no per-epoch history", ha="center", va="center", transform=a.transAxes,
                       color="gray")
    for a in dev_axes[len(tasks):] + loss_axes[len(tasks):]:
        a.set_visible(False)
    if not tasks:
        dev_axes[0].set_visible(True)
        dev_axes[0].text(0.5, 0.5, "no fine-tuning results", ha="center", va="center")
    rows = _shared_legend(fig, grid, max_columns=6, fontsize=8)
    fig.suptitle("Fine-tuning after each epoch: dev main metric and training loss (colour: model; line style: seed)",
                 fontsize=12)
    fig.tight_layout(rect=(0, min(0.4, (0.03 * rows + 0.01) * 3 / (2 * n_rows + 2)), 1, 0.97))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def plot_task_scores(model_summaries: dict, path, published: dict | None = None) -> None:
    """Main dev metric per task: one bar per model (median over seeds), dots for the seeds, and the published
    ELECTRA numbers (``published``: label -> {task: percent}) as markers."""
    plt = _pyplot()
    tasks = []
    for summary in model_summaries.values():
        tasks += [t for t in summary["tasks"] if t not in tasks]
    n_models = max(1, len(model_summaries))
    width = 0.8 / n_models
    fig, ax = plt.subplots(figsize=(max(8, 1.2 * len(tasks) * max(1, n_models / 2) + 2), 5))
    labelled = []
    for m, (name, summary) in enumerate(model_summaries.items()):
        xs, medians = [], []
        for x, task in enumerate(tasks):
            t = summary["tasks"].get(task)
            if t is None:
                continue
            pos = x - 0.4 + width * (m + 0.5)
            xs.append(pos)
            medians.append(100 * t["main"]["median"])
            values = [100 * v for v in t["main"]["values"]]
            ax.plot([pos] * len(values), values, "k.", markersize=4)
        ax.bar(xs, medians, width=width * 0.95, alpha=0.75, label=f"{name} (median over seeds)")
        labelled += list(zip(xs, medians))
    # each median written inside its bar, away from the seed dots; a bar too short for that (a 0 bar is no bar)
    # gets it just above the axis
    top = max([abs(v) for _, v in labelled] + [1.0])
    for x, v in labelled:
        inside = abs(v) >= 0.12 * top
        ax.text(x, v / 2 if inside else max(v, 0) + 0.03 * top, f"{v:.1f}", ha="center",
                va="center" if inside else "bottom", fontsize=8)
    for marker, (label, scores) in zip(("^", "v", "s"), (published or {}).items()):
        pts = [(x, scores[t]) for x, t in enumerate(tasks) if t in scores]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker, linestyle="none", color="black", label=label)
    metric = {t: next(s["tasks"][t]["main_metric"] for s in model_summaries.values() if t in s["tasks"])
              for t in tasks}
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels([f"{t}\n{metric[t]}" for t in tasks], fontsize=8)
    ax.set_ylabel("dev score (%)")
    ax.set_xlabel("task and its main dev metric")
    ax.set_title("Fine-tuning: main dev metric per task and model (dots: seeds)")
    ax.axhline(0, color="black", linewidth=0.5)
    handles, labels = ax.get_legend_handles_labels()
    columns = min(4, max(1, len(labels)))
    rows = -(-len(labels) // columns)
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=columns, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout(rect=(0, 0.06 * rows, 1, 1))  # the legend below the axes never hides a bar
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
