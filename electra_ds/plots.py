"""PNG plots of the evaluation report (matplotlib's Agg backend), from structured files only.

* :func:`read_train_log`: a pretraining run's ``train_log.jsonl`` (one JSON object per log interval or
  validation pass, written by :mod:`electra_ds.pretrain`);
* :func:`plot_pretraining`: the curves of every pretrained model against pretraining FLOPs, so models of
  an equal-compute study line up: generator (MLM) loss, discriminator loss beside the base-rate entropy
  it must beat, ``rtd_gain`` and discriminator ROC AUC, generator accuracy;
* :func:`plot_task_scores`: main dev score per task and model (bars: median over seeds; dots: seeds).
"""

from __future__ import annotations

import json
from pathlib import Path

from electra_ds.fileio import atomic_path


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


def _flops(record: dict, flops_per_step: float) -> float:
    return record.get("flops", record["step"] * flops_per_step)


def plot_pretraining(histories: dict, flops_per_step: dict, path) -> None:
    """``histories``: model name -> :func:`read_train_log` result; ``flops_per_step``: model name -> FLOPs."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    (ax_gen, ax_disc), (ax_gain, ax_acc) = axes
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    drawn = False
    for i, (name, history) in enumerate(histories.items()):
        color = colors[i % len(colors)]
        per_step = flops_per_step.get(name, 0.0)
        for split, style in (("train", "-"), ("valid", "o--")):
            records = history.get(split, [])
            if not records:
                continue
            drawn = True
            x = [_flops(r, per_step) for r in records]
            label = f"{name} ({split})"
            ax_gen.plot(x, [r["gen_loss"] for r in records], style, color=color, label=label, markersize=4)
            ax_acc.plot(x, [r["gen_acc"] for r in records], style, color=color, label=label, markersize=4)
            if "disc_loss" in records[0]:
                ax_disc.plot(x, [r["disc_loss"] for r in records], style, color=color, label=label, markersize=4)
                if split == "train":
                    ax_disc.plot(x, [r["base_entropy"] for r in records], ":", color=color, linewidth=1,
                                 label=f"{name}: base-rate entropy H(replaced)")
                ax_gain.plot(x, [r["rtd_gain"] for r in records], style, color=color, markersize=4,
                             label=f"{name} rtd_gain ({split})")
                if split == "valid":
                    ax_gain.plot(x, [r["disc_auc"] for r in records], "s:", color=color, markersize=4,
                                 label=f"{name} disc ROC AUC (valid)")
    titles = {ax_gen: ("generator / MLM loss", "loss (nats per masked token)"),
              ax_disc: ("discriminator loss vs the base rate it must beat", "loss (nats per token)"),
              ax_gain: ("learning signal: rtd_gain = 1 - disc_loss / H(replaced)", "rtd_gain, ROC AUC"),
              ax_acc: ("generator / MLM accuracy at masked positions", "accuracy")}
    for ax, (title, ylabel) in titles.items():
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("pretraining FLOPs")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no data (no replaced-token detection)" if drawn else "no pretraining log",
                    ha="center", va="center", transform=ax.transAxes)
    ax_gain.axhline(0, color="black", linewidth=0.5)
    fig.suptitle("pretraining curves (solid: training log intervals; dots: validation)")
    fig.tight_layout()
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
    for marker, (label, scores) in zip(("^", "v", "s"), (published or {}).items()):
        pts = [(x, scores[t]) for x, t in enumerate(tasks) if t in scores]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker, linestyle="none", color="black", label=label)
    metric = {t: next(s["tasks"][t]["main_metric"] for s in model_summaries.values() if t in s["tasks"])
              for t in tasks}
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels([f"{t}\n{metric[t]}" for t in tasks], fontsize=8)
    ax.set_ylabel("dev score (%)")
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
