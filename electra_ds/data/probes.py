"""Offline probe tasks derived from held-out documents, written in GLUE TSV layouts.

The offline default has no GLUE data, so the fine-tuning path is exercised on two probes built
from documents the shards stage held out of pretraining (``splits.document_split == "heldout"``):

* ``probe-acceptability`` (CoLA layout, MCC): a real sentence (label 1) or the same kind of
  sentence with two of its words swapped (label 0);
* ``probe-adjacency`` (MRPC layout, accuracy and F1): two adjacent sentences of one document
  (label 1) or a sentence followed by one from another document (label 0).

They are probes of what pretraining learned, not GLUE, and are reported as such. Train, dev and
test examples come from disjoint documents.
"""

from __future__ import annotations

import csv
import logging
import random
import re
from pathlib import Path

from electra_ds.common import progress
from electra_ds.common.errors import UserError
from electra_ds.common.fileio import atomic_path, write_json
from electra_ds.common.settings import add_settings
from electra_ds.data.splits import document_split
from electra_ds.data.text import SENTENCE_END

log = logging.getLogger(__name__)

_WORD = re.compile(r"^[A-Za-z][a-z]*[,;:.!?]?$")


# valid/heldout fractions and seed are the shards stage's: the probes come from the documents it held out
SETTINGS = {"shards": ("valid_fraction", "heldout_fraction"), "probes": ("max_train", "max_eval", "min_eval"),
            "": ("seed",)}


def add_arguments(p) -> None:
    p.add_argument("--input", required=True, help="deduplicated documents (JSONL)")
    p.add_argument("--output-dir", required=True, help="gets probe-acceptability/ and probe-adjacency/")
    add_settings(p, SETTINGS)


def probe_sentences(text: str) -> list[str]:
    """Prose sentences of 6-40 words (code examples and headings are skipped)."""
    out = []
    for paragraph in re.split(r"\n\s*\n", text):
        if ">>>" in paragraph or paragraph.startswith((" ", "\t")):
            continue
        flat = " ".join(paragraph.split())
        for sentence in SENTENCE_END.split(flat):
            words = sentence.split()
            prose = sum(1 for w in words if _WORD.match(w))
            if 6 <= len(words) <= 40 and sentence[0].isupper() and sentence[-1] in ".!?" and prose >= 0.8 * len(words):
                out.append(sentence)
    return out


def swap_two_words(sentence: str, rng: random.Random) -> str | None:
    """Swap two different lower-case inner words, so capitals and final punctuation give nothing away."""
    words = sentence.split()
    inner = [i for i in range(1, len(words) - 1) if words[i].isalpha() and words[i].islower()]
    for _ in range(10):
        if len(inner) < 2:
            return None
        i, j = sorted(rng.sample(inner, 2))
        if words[i] != words[j]:
            words[i], words[j] = words[j], words[i]
            return " ".join(words)
    return None


def acceptability_examples(docs: list[list[str]], rng: random.Random) -> list[tuple[str, int]]:
    examples = []
    for sentences in docs:
        for s in sentences:
            if rng.random() < 0.5:
                examples.append((s, 1))
            elif (swapped := swap_two_words(s, rng)) is not None:
                examples.append((swapped, 0))
    rng.shuffle(examples)
    return examples


def adjacency_examples(docs: list[list[str]], rng: random.Random) -> list[tuple[str, str, int]]:
    pool = [(d, s) for d, sentences in enumerate(docs) for s in sentences]
    examples = []
    for d, sentences in enumerate(docs):
        for i in range(len(sentences) - 1):
            if rng.random() < 0.5:
                examples.append((sentences[i], sentences[i + 1], 1))
            else:
                for _ in range(10):
                    other_doc, other = rng.choice(pool)
                    if other_doc != d:
                        examples.append((sentences[i], other, 0))
                        break
    rng.shuffle(examples)
    return examples


def _write_tsv(path: Path, header: list[str] | None, rows) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\", lineterminator="\n")
        if header:
            w.writerow(header)
        w.writerows(rows)


def write_acceptability(task_dir: Path, splits: dict) -> None:
    task_dir.mkdir()
    for split in ("train", "dev"):  # CoLA: headerless source, label, original label, sentence
        _write_tsv(task_dir / f"{split}.tsv", None,
                   [("probe", label, "" if label else "*", s) for s, label in splits[split]])
    _write_tsv(task_dir / "test.tsv", ["index", "sentence"], [(i, s) for i, (s, _) in enumerate(splits["test"])])


def write_adjacency(task_dir: Path, splits: dict) -> None:
    task_dir.mkdir()
    for split in ("train", "dev"):  # MRPC: Quality, #1 ID, #2 ID, #1 String, #2 String
        _write_tsv(task_dir / f"{split}.tsv", ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
                   [(label, 2 * i, 2 * i + 1, a, b) for i, (a, b, label) in enumerate(splits[split])])
    _write_tsv(task_dir / "test.tsv", ["index", "#1 ID", "#2 ID", "#1 String", "#2 String"],
               [(i, 2 * i, 2 * i + 1, a, b) for i, (a, b, _) in enumerate(splits["test"])])


def run(args, tracker) -> None:

    by_split = {"train": [], "dev": [], "test": []}
    reading = progress.Progress("probes: reading held-out documents", unit="docs",
                                total_bytes=progress.file_bytes(args.input), tracker=tracker, logger=log)
    for doc in progress.read_jsonl(args.input, reading):
        if document_split(doc["id"], valid_fraction=args.valid_fraction, heldout_fraction=args.heldout_fraction,
                          seed=args.seed) != "heldout":
            continue
        sentences = probe_sentences(doc["text"])
        if sentences:
            part = document_split(doc["id"], valid_fraction=0.2, heldout_fraction=0.2, seed=args.seed + 1)
            by_split[{"heldout": "test", "valid": "dev", "train": "train"}[part]].append(sentences)
    reading.close()

    rng = random.Random(args.seed)
    tasks = {"probe-acceptability": ({}, write_acceptability, acceptability_examples),
             "probe-adjacency": ({}, write_adjacency, adjacency_examples)}
    stats = {}
    for name, (splits, _, build) in tasks.items():
        for split, docs in by_split.items():
            cap = args.max_train if split == "train" else args.max_eval
            splits[split] = build(docs, rng)[:cap]
            stats[f"{name}.{split}_examples"] = len(splits[split])
        if len(splits["dev"]) < args.min_eval or len(splits["train"]) < args.min_eval:
            raise UserError(f"only {len(splits['train'])} train / {len(splits['dev'])} dev examples for {name} from "
                            f"held-out documents", field="probes.heldout_fraction",
                            fix="raise shards.heldout_fraction or use a larger corpus")

    with atomic_path(args.output_dir, is_dir=True) as tmp:
        for name, (splits, write, _) in tasks.items():
            write(tmp / name, splits)
        write_json(tmp / "probes.json", stats)
    log.info("probe examples: %s", stats)
    tracker.log_params({"heldout_fraction": args.heldout_fraction, "seed": args.seed})
    tracker.log_metrics(stats)
