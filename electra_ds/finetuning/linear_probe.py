"""Frozen-feature linear probe: what each layer of an exported encoder holds for a linear reader (SentEval-style).

No fine-tuning: the encoder's weights stay as exported. For one exported discriminator (``AutoModel`` and
``AutoTokenizer`` from the export stage's ``discriminator`` folder):

* **features**: every layer's token states, the embedding layer's output included (``output_hidden_states``:
  ``num_layers + 1`` of them), mean-pooled over each sentence's real tokens (the attention mask: [CLS] and [SEP]
  count, padding does not); computed in ``torch.inference_mode``, fp32, batches of similar length padded to their
  own longest sequence. Single-sentence tasks use the sentence's vector u; sentence-pair tasks (MRPC, RTE, ...)
  SentEval's pair features ``[u, v, |u - v|, u * v]`` from each sentence encoded alone;
* **training set**: a fixed subset of ``train_examples`` training examples, a seeded choice that depends only on
  the task's file, so every model is probed on the same subset (``random.Random(seed)``, as finetune's
  ``max_train_examples``; with ``seed`` 0 the two choose the same examples);
* **reader**: per layer, features standardised (``StandardScaler`` fit on the training subset) and a logistic
  regression whose inverse regularisation ``C`` is chosen from ``cs`` by ``folds``-fold stratified
  cross-validation on the training subset (``LogisticRegressionCV``, accuracy, refit on the whole subset);
* **score**: accuracy (and the task's other metrics) on the whole dev set, per layer; the majority-class dev
  accuracy (the training subset's most frequent label); the best layer by dev accuracy (``best_layer``, what
  tables report, chosen on dev: optimistic) and by cross-validation accuracy (``best_layer_cv``, chosen without
  looking at dev).

One JSON per model (``--output``, written atomically). The evaluate stage puts the files it is given into a
*frozen probe* table: rows are models, columns task x layer, with the scratch model (random weights) as the
baseline a pretrained encoder must beat (random bag-of-embeddings features are a known strong baseline: Wieting and
Kiela, 2019, "No Training Required").
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
import warnings
from collections import Counter
from pathlib import Path

from electra_ds.common.errors import UserError
from electra_ds.common.fileio import read_json, write_json
from electra_ds.common.settings import add_settings
from electra_ds.common.userfiles import load_hf_tokenizer
from electra_ds.finetuning.glue import get_task, load_split, task_names
from electra_ds.finetuning.report import table_markdown

log = logging.getLogger(__name__)

SETTINGS = {"linear_probe": ("tasks", "train_examples", "seed", "cs", "folds", "batch_size", "max_length",
                             "threads")}
DEFAULT_TASKS = ("sst2", "mrpc")  # tasks: null, run by hand
MAX_ITER = 2000  # lbfgs iterations per fit; a fit that still has not converged is counted (not_converged)
PAIR_FEATURES = "[u, v, |u-v|, u*v]"
POOLING = "mean over the attention mask ([CLS] and [SEP] included), every layer incl. the embedding layer, fp32"


def add_arguments(p) -> None:
    p.add_argument("--model-dir", required=True, help="exported discriminator folder (model and tokenizer)")
    p.add_argument("--output", required=True, help="the probe's JSON (per task and layer: dev accuracy, C, ...)")
    p.add_argument("--data-dir", default=None, help="local folder with GLUE-layout task folders (SST-2/, MRPC/, ...)")
    p.add_argument("--probes-dir", default=None,
                   help="the probes stage's folder, for probe tasks (probe-acceptability, ...); default: --data-dir")
    p.add_argument("--model-name", default=None,
                   help="the model's name in the study (default: the folder above --model-dir, as export writes it)")
    add_settings(p, SETTINGS)


# -- features --------------------------------------------------------------------------------------------------

def load_encoder(model_dir):
    """Tokenizer and bare encoder (``AutoModel``: the discriminator without its head) of an exported folder."""
    import transformers
    from transformers import AutoModel

    from electra_ds.common import alibi

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise UserError("is not an exported model folder (no config.json)", path=model_dir, field="--model-dir",
                        fix="pass the export stage's discriminator folder (<results>/export/<model>/discriminator)")
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        tokenizer = load_hf_tokenizer(model_dir, field="--model-dir", fix="pass the export stage's discriminator folder")
        model = AutoModel.from_pretrained(model_dir, attn_implementation=alibi.implementation(model_dir))
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"cannot load the model or tokenizer: {exc}", path=model_dir, field="--model-dir",
                        fix="pass the export stage's discriminator folder") from None
    if tokenizer.pad_token_id is None:
        raise UserError("the tokenizer has no [PAD] token", path=model_dir)
    model.eval()
    return tokenizer, model


def sentence_features(model, tokenizer, texts: list, batch_size: int = 64, max_length: int = 128,
                      spread: TokenSpread | None = None):
    """Mean-pooled states of every layer: float32 array ``(num_layers + 1, len(texts), hidden)``, in input order.

    Each text is encoded alone ([CLS] text [SEP]); batches hold texts of similar length (sorted), padded to the
    batch's longest. ``spread``, if given, also takes in every token's state (see ``TokenSpread``)."""
    import numpy as np
    import torch

    max_length = min(max_length, getattr(model.config, "max_position_embeddings", max_length))
    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    layers, hidden = model.config.num_hidden_layers + 1, model.config.hidden_size
    out = np.zeros((layers, len(ids), hidden), dtype=np.float32)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    pad = tokenizer.pad_token_id
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            width = max(len(ids[i]) for i in idx)
            batch = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                batch[row, :len(ids[i])] = torch.tensor(ids[i], dtype=torch.long)
                mask[row, :len(ids[i])] = 1
            states = model(input_ids=batch, attention_mask=mask, token_type_ids=torch.zeros_like(batch),
                           output_hidden_states=True).hidden_states
            states = [h.float() for h in states]
            weights = mask.unsqueeze(-1).float()
            if spread is not None:
                spread.add([h[mask.bool()].double().numpy() for h in states])
            pooled = torch.stack([(h * weights).sum(1) / weights.sum(1) for h in states])
            out[:, idx] = pooled.numpy()
    return out


class TokenSpread:
    """Per layer, the share of the token states' mean squared norm that varies from token to token:
    1 - |mean state|^2 / mean |state|^2 over every real token ([CLS] and [SEP] included). Near 1 the states spread
    around the origin; near 0 they sit on one shared vector (the layer is anisotropic), so that a classifier head
    reading one token ([CLS]) starts from nearly the same input for every sentence. Standardised probe features do
    not see this (they remove the mean); fine-tuning does (docs/study.md, "Why ELECTRA's features fine-tune worse")."""

    def __init__(self):
        self.total, self.squares, self.tokens = None, None, 0

    def add(self, layers: list) -> None:
        """``layers``: per layer an array ``(tokens, hidden)`` of one batch's real tokens."""
        import numpy as np

        total = np.stack([h.sum(0) for h in layers])
        squares = np.array([float((h * h).sum()) for h in layers])
        if self.total is None:
            self.total, self.squares = total, squares
        else:
            self.total, self.squares = self.total + total, self.squares + squares
        self.tokens += len(layers[0])

    def shares(self) -> list:
        if not self.tokens:
            return []
        mean = self.total / self.tokens
        return [float(1 - (m @ m) / (sq / self.tokens)) if sq > 0 else 0.0 for m, sq in zip(mean, self.squares)]


def task_features(model, tokenizer, examples: list, batch_size: int = 64, max_length: int = 128,
                  spread: TokenSpread | None = None):
    """Features of examples, ``(num_layers + 1, n, dim)``: u for single sentences, [u, v, |u-v|, u*v] for pairs.
    Each distinct sentence is encoded once."""
    import numpy as np

    pair = bool(examples) and examples[0]["text_b"] is not None
    texts = list(dict.fromkeys([ex["text_a"] for ex in examples] + ([ex["text_b"] for ex in examples] if pair else [])))
    where = {t: i for i, t in enumerate(texts)}
    feats = sentence_features(model, tokenizer, texts, batch_size, max_length, spread)
    u = feats[:, [where[ex["text_a"]] for ex in examples]]
    if not pair:
        return u
    v = feats[:, [where[ex["text_b"]] for ex in examples]]
    return np.concatenate([u, v, np.abs(u - v), u * v], axis=-1)


# -- the reader ------------------------------------------------------------------------------------------------

def _cv_kwargs() -> dict:
    """LogisticRegressionCV options that mean plain L2 on every scikit-learn version (1.8 deprecates the implicit
    l1_ratios and the legacy attribute layout)."""
    import inspect

    from sklearn.linear_model import LogisticRegressionCV

    params = inspect.signature(LogisticRegressionCV).parameters
    if "use_legacy_attributes" in params:
        return {"l1_ratios": (0.0,), "use_legacy_attributes": False}
    return {}


def fit_probe(x_train, y_train, x_evals: dict, *, cs, folds: int = 5, seed: int = 0, max_iter: int = MAX_ITER) -> dict:
    """Standardise, choose C by stratified ``folds``-fold cross-validation (accuracy), refit on all of ``x_train``;
    predict every array of ``x_evals``. Returns ``{"C", "cv_accuracy", "predictions": {name: labels},
    "not_converged"}``."""
    import numpy as np
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    y_train = np.asarray(y_train)
    scaler = StandardScaler().fit(x_train)
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    clf = LogisticRegressionCV(Cs=[float(c) for c in cs], cv=cv, scoring="accuracy", max_iter=max_iter,
                               **_cv_kwargs())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit(scaler.transform(x_train), y_train)
    not_converged = 0
    for w in caught:
        if issubclass(w.category, ConvergenceWarning):
            not_converged += 1
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    scores = clf.scores_
    scores = next(iter(scores.values())) if isinstance(scores, dict) else scores
    per_c = np.asarray(scores, dtype=float).reshape(folds, -1).mean(axis=0)  # (n_cs,), one L2 ratio
    return {"C": float(np.ravel(clf.C_)[0]), "cv_accuracy": float(per_c.max()),
            "predictions": {name: clf.predict(scaler.transform(x)).tolist() for name, x in x_evals.items()},
            "not_converged": not_converged}


# -- one task --------------------------------------------------------------------------------------------------

def resolve_task(name: str):
    """The registered classification task called ``name``, or a UserError naming the field."""
    try:
        task = get_task(name)
    except UserError:
        raise UserError(f"unknown task {name!r}; valid tasks: {', '.join(task_names())}", field="linear_probe.tasks",
                        fix="use GLUE task names (sst2, mrpc, ...) or the probe tasks") from None
    if task.is_regression:
        raise UserError(f"task {task.name} is a regression task; the linear probe is a classifier",
                        field="linear_probe.tasks", fix="probe classification tasks (sst2, mrpc, cola, rte, ...)")
    if not task.has_train or not task.dev_splits:
        raise UserError(f"task {task.name} has no train/dev data (it is test-only)", field="linear_probe.tasks")
    return task


def training_subset(examples: list, n: int, seed: int) -> list:
    """``n`` examples chosen by ``seed`` alone (in file order): the same subset for every model."""
    if n >= len(examples):
        return list(examples)
    keep = sorted(random.Random(seed).sample(range(len(examples)), n))
    return [examples[i] for i in keep]


def _folds(labels: list, folds: int, task, path) -> int:
    smallest = min(Counter(labels).values())
    if len(set(labels)) < 2:
        raise UserError(f"the {task.name} training subset has a single label; a classifier needs two",
                        path=path, fix="use the task's real training file, or raise linear_probe.train_examples")
    if smallest < 2:
        raise UserError(f"the {task.name} training subset has a label with one example; cross-validation needs two",
                        path=path, fix="raise linear_probe.train_examples")
    if smallest < folds:
        log.warning("%s: the rarest label has %d training examples; cross-validating with %d folds instead of %d",
                    task.name, smallest, smallest, folds)
    return min(folds, smallest)


def probe_task(model, tokenizer, task, data_dir, args) -> dict:
    """Features, one reader per layer, and the task's dev scores (see the module docstring)."""
    from electra_ds.finetuning.metrics import compute_metrics

    started = time.monotonic()
    available = load_split(task, "train", data_dir=data_dir)
    train = training_subset(available, args.train_examples, args.seed)
    dev = {split: load_split(task, split, data_dir=data_dir) for split in task.dev_splits}
    y_train = [ex["label"] for ex in train]
    folds = _folds(y_train, args.folds, task, Path(data_dir) / task.dirname / "train.tsv")
    spread = TokenSpread()
    x_train = task_features(model, tokenizer, train, args.batch_size, args.max_length, spread)
    token_spread = spread.shares()
    x_dev = {s: task_features(model, tokenizer, ex, args.batch_size, args.max_length) for s, ex in dev.items()}
    features_s = time.monotonic() - started
    first = next(iter(task.dev_splits))
    dev_labels = {s: [ex["label"] for ex in ex_list] for s, ex_list in dev.items()}
    constant = Counter(y_train).most_common(1)[0][0]

    layers = []
    for layer in range(x_train.shape[0]):
        fit = fit_probe(x_train[layer], y_train, {s: x[layer] for s, x in x_dev.items()}, cs=args.cs, folds=folds,
                        seed=args.seed)
        scores = {s: compute_metrics(task, fit["predictions"][s], dev_labels[s]) for s in dev}
        entry = {"layer": layer, "name": layer_name(layer), "accuracy": scores[first]["accuracy"],
                 "metrics": scores[first], "C": fit["C"], "cv_accuracy": fit["cv_accuracy"],
                 "not_converged": fit["not_converged"], "token_spread": token_spread[layer]}
        if len(dev) > 1:
            entry["dev_splits"] = scores
        layers.append(entry)
        log.info("%s %s: dev accuracy %.4f (C %.3g, cv %.4f)", task.name, layer_name(layer), entry["accuracy"],
                 fit["C"], fit["cv_accuracy"])
    accuracy = [e["accuracy"] for e in layers]
    best = max(range(len(layers)), key=lambda i: (accuracy[i], -i))
    best_cv = max(range(len(layers)), key=lambda i: (layers[i]["cv_accuracy"], -i))
    pair = train[0]["text_b"] is not None
    return {
        "kind": "pair" if pair else "single", "features": PAIR_FEATURES if pair else "u", "dim": int(x_train.shape[-1]),
        "n_train": len(train), "n_train_available": len(available), "n_dev": len(dev[first]), "dev_split": first,
        "folds": folds,
        "majority": {"label": task.labels[constant],
                     "accuracy": sum(y == constant for y in dev_labels[first]) / len(dev_labels[first])},
        "layers": layers, "accuracy": accuracy, "C": [e["C"] for e in layers],
        "best_layer": best, "best_accuracy": accuracy[best],
        "best_layer_cv": best_cv, "best_layer_cv_accuracy": accuracy[best_cv], "token_spread": token_spread,
        "seconds": {"features": round(features_s, 3), "fit": round(time.monotonic() - started - features_s, 3)},
    }


def layer_name(layer: int) -> str:
    return "embeddings" if layer == 0 else f"layer {layer}"


# -- the stage -------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _threads(threads: int | None):
    """torch and the BLAS behind scikit-learn on ``threads`` threads; torch's setting restored afterwards.

    scikit-learn (and scipy's own OpenBLAS, and its OpenMP) are imported first: threadpoolctl limits only the
    libraries already loaded. Unlimited, OpenBLAS threads on a busy machine made one layer's reader 40x slower
    (measured: 119 s against 3 s for a 1024-wide pair feature set)."""
    import sklearn.linear_model  # noqa: F401  (loads scipy's BLAS and scikit-learn's OpenMP before the limit)
    import torch
    from threadpoolctl import threadpool_limits

    saved = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads) if threads else contextlib.nullcontext():
            yield
    finally:
        torch.set_num_threads(saved)


def _data_dir(task, args):
    folder, option = (args.probes_dir or args.data_dir, "--probes-dir") if task.is_probe else (args.data_dir,
                                                                                                "--data-dir")
    if folder is None:
        raise UserError(f"task {task.name} needs a data folder and none was given", field=option,
                        fix=f"pass {option} (GLUE layout: {task.dirname}/train.tsv, dev.tsv)")
    return folder


def run(args, tracker) -> None:
    started = time.monotonic()
    tasks = [resolve_task(t) for t in (args.tasks if args.tasks is not None else DEFAULT_TASKS)]
    if not tasks:
        raise UserError("no tasks to probe", field="linear_probe.tasks", fix="name at least one task")
    if len({t.name for t in tasks}) != len(tasks):
        raise UserError(f"a task is named twice: {[t.name for t in tasks]}", field="linear_probe.tasks")
    data_dirs = {t.name: _data_dir(t, args) for t in tasks}  # every missing folder before any work
    model_dir = Path(args.model_dir)
    name = args.model_name or model_dir.resolve().parent.name
    tracker.log_params({"model": name, "model_dir": str(model_dir), "tasks": ",".join(t.name for t in tasks),
                        "train_examples": args.train_examples, "seed": args.seed, "folds": args.folds,
                        "cs": ",".join(f"{c:g}" for c in args.cs)})
    with _threads(args.threads):
        tokenizer, model = load_encoder(model_dir)
        results = {}
        for task in tasks:
            results[task.name] = probe_task(model, tokenizer, task, data_dirs[task.name], args)
    config = model.config
    out = {
        "model": name, "model_dir": str(model_dir.resolve()),
        "model_shape": {k: getattr(config, k, None) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                              "embedding_size", "intermediate_size", "vocab_size")},
        "layers": [layer_name(i) for i in range(config.num_hidden_layers + 1)],
        "pooling": POOLING,
        "settings": {"train_examples": args.train_examples, "seed": args.seed, "cs": list(args.cs),
                     "folds": args.folds, "batch_size": args.batch_size, "max_length": args.max_length,
                     "max_iter": MAX_ITER, "threads": args.threads,
                     "reader": "StandardScaler + LogisticRegressionCV (L2, lbfgs, accuracy)"},
        "tasks": results,
        "seconds": round(time.monotonic() - started, 3),
    }
    write_json(args.output, out)
    metrics = {"seconds": out["seconds"]}
    for task, r in results.items():
        metrics.update({f"{task}.layer{i}.accuracy": a for i, a in enumerate(r["accuracy"])})
        metrics.update({f"{task}.best_accuracy": r["best_accuracy"], f"{task}.majority": r["majority"]["accuracy"]})
    tracker.log_metrics(metrics)
    tracker.log_artifact(args.output)
    for task, r in results.items():
        line = (f"{name} {task}: dev accuracy per layer " + " / ".join(f"{100 * a:.1f}" for a in r["accuracy"])
                + f" (best: {layer_name(r['best_layer'])}; majority class {100 * r['majority']['accuracy']:.1f}; "
                  f"{r['n_train']} training examples, {r['n_dev']} dev)")
        print(line)
        log.info(line)
    log.info("linear probe of %s: %.1f s -> %s", name, out["seconds"], args.output)


# -- the evaluate stage's table -------------------------------------------------------------------------------------

_REQUIRED = ("model", "tasks", "layers")


def read_results(paths) -> dict:
    """``{model: probe JSON}`` from linear-probe outputs; every problem is a UserError naming the file."""
    out = {}
    for path in map(Path, paths or []):
        try:
            data = read_json(path)
        except FileNotFoundError:
            raise UserError("does not exist", path=path, fix="run the linear-probe stage first") from None
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise UserError(f"is not a readable JSON file ({exc})", path=path) from None
        if not isinstance(data, dict) or any(k not in data for k in _REQUIRED):
            missing = next((k for k in _REQUIRED if not isinstance(data, dict) or k not in data), None)
            raise UserError("is not a linear-probe result", path=path, field=missing)
        if not isinstance(data["tasks"], dict):
            raise UserError("is not a linear-probe result (tasks is not an object)", path=path, field="tasks")
        for task, r in data["tasks"].items():
            if not isinstance(r, dict) or not isinstance(r.get("accuracy"), list) or "best_layer" not in r:
                raise UserError("is not a linear-probe result (per-layer accuracy missing)", path=path,
                                field=f"tasks.{task}.accuracy")
        if data["model"] in out:
            raise UserError(f"a second linear-probe result for model {data['model']!r}", path=path,
                            fix="pass each model's file once")
        out[data["model"]] = {**data, "_path": str(path)}
    return out


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def probe_table(results: dict, sources: dict | None = None) -> dict:
    """``{"columns", "rows", "notes"}`` (percent): a row per model, for each task its per-layer dev accuracy and
    its best layer; with a scratch model (``sources[name] == "scratch"``), each task's best minus scratch's best;
    a last row with each task's majority-class accuracy."""
    sources = sources or {}
    tasks = []
    for r in results.values():
        tasks += [t for t in r["tasks"] if t not in tasks]
    depth = {t: max(len(r["tasks"][t]["accuracy"]) for r in results.values() if t in r["tasks"]) for t in tasks}
    scratch = next((n for n in results if sources.get(n) == "scratch"), None)
    columns = ["model"]
    for t in tasks:
        columns += [f"{t} {'emb' if i == 0 else f'L{i}'}" for i in range(depth[t])] + [f"{t} best (layer)"]
        if scratch is not None:
            columns.append(f"{t} best - scratch")
    rows = []
    for name, r in results.items():
        label = f"{name} (random weights: the baseline)" if name == scratch else name
        cells = [label]
        for t in tasks:
            task = r["tasks"].get(t)
            if task is None:
                cells += ["-"] * (depth[t] + 1 + (scratch is not None))
                continue
            acc = task["accuracy"]
            cells += [_pct(a) for a in acc] + ["-"] * (depth[t] - len(acc))
            best = task["best_layer"]
            cells.append(f"{_pct(acc[best])} ({'emb' if best == 0 else f'L{best}'})")
            if scratch is not None:
                base = results[scratch]["tasks"].get(t)
                cells.append("-" if base is None or name == scratch
                             else f"{100 * (acc[best] - base['accuracy'][base['best_layer']]):+.1f}")
        rows.append(cells)
    majority = ["majority class"]
    for t in tasks:
        value = next((r["tasks"][t].get("majority", {}).get("accuracy") for r in results.values() if t in r["tasks"]),
                     None)
        majority += [_pct(value)] * depth[t] + [_pct(value)] + (["-"] if scratch is not None else [])
    rows.append(majority)
    notes = []
    for t in tasks:
        r = next(r["tasks"][t] for r in results.values() if t in r["tasks"])
        notes.append(f"{t}: {r['n_train']} training examples (the same for every model), {r['n_dev']} dev examples, "
                     f"features {r['features']}")
        # One probe of one pretraining run per model: no seed spread to show, so say what chance alone moves.
        p = r["accuracy"][r["best_layer"]]
        se = math.sqrt(p * (1 - p) / r["n_dev"]) if r["n_dev"] else float("nan")
        notes.append(f"{t}: one run per model (one pretraining seed, one training subset), so no spread is shown; "
                     f"a dev accuracy near {100 * p:.0f}% on {r['n_dev']} examples has a binomial standard error of "
                     f"{100 * se:.1f} points, so a difference between two models under about "
                     f"{100 * 2 * math.sqrt(2) * se:.1f} points (2 standard errors of a difference) is not evidence. "
                     "*best* is chosen on dev, which flatters every model alike")
    return {"columns": columns, "rows": rows, "notes": notes}


def render_markdown(results: dict, sources: dict | None = None, heading: str = "#") -> str:
    """The report's *frozen probe* section ('' when there are no results)."""
    if not results:
        return ""
    table = probe_table(results, sources)
    cols = table["columns"]
    lines = [f"{heading} Frozen probe: linear readers on each layer", "",
             "Dev accuracy in percent of a logistic regression on each layer's frozen features (mean-pooled over "
             "the tokens, standardised; regularisation chosen by cross-validation on the training subset), per "
             "model: *emb* is the embedding layer, *L1*... the transformer layers. No fine-tuning: what a linear "
             "reader finds in the encoder as it is. Pair tasks use [u, v, |u-v|, u*v] of the two sentences encoded "
             "alone. *best* is the layer with the highest dev accuracy (chosen on dev). The scratch model (same "
             "architecture, random weights) is the bar pretraining must clear.", "",
             table_markdown(table)]
    lines += [""] + [f"- {note}" for note in table["notes"]] + [""]
    lines += spread_markdown(results)
    return "\n".join(lines)


def spread_markdown(results: dict) -> list:
    """Lines of a small table: each model's token spread per layer (``TokenSpread``), on its first probe task."""
    rows = []
    for name, r in results.items():
        task, entry = next(iter(r["tasks"].items()), (None, None))
        if entry and entry.get("token_spread"):
            rows.append((name, task, entry["token_spread"]))
    if not rows:
        return []
    depth = max(len(s) for _, _, s in rows)
    table = {"columns": ["model", "sentences of"] + ["emb" if i == 0 else f"L{i}" for i in range(depth)],
             "rows": [[name, task] + [f"{v:.2f}" for v in shares] + ["-"] * (depth - len(shares))
                      for name, task, shares in rows]}
    return ["Token spread per layer: the share of the token states' mean squared norm that varies from token to "
            "token (1 - |mean state|^2 / mean |state|^2, over the probe's training sentences). Near 0 the states "
            "share one vector, and a head reading [CLS] starts from nearly the same input for every sentence; the "
            "standardised probe above does not see this, fine-tuning does (docs/study.md).", "",
            table_markdown(table), ""]


def summary(results: dict, sources: dict | None = None) -> dict:
    """What results.json keeps: per model and task the per-layer accuracy, C, best layers and sizes; the table."""
    keep = ("accuracy", "C", "best_layer", "best_accuracy", "best_layer_cv", "best_layer_cv_accuracy", "majority",
            "n_train", "n_dev", "features", "seconds", "token_spread")
    return {"models": {name: {"layers": r["layers"], "seconds": r.get("seconds"), "file": r["_path"],
                              "tasks": {t: {k: v for k, v in task.items() if k in keep}
                                        for t, task in r["tasks"].items()}}
                       for name, r in results.items()},
            "table": probe_table(results, sources)}
