"""Shards stage: tokenize documents and pack fixed-length ELECTRA examples into binary shards.

Each document goes to train, valid or held-out by :func:`electra_ds.data.splits.document_split` (held-out
documents are skipped: they feed the probe tasks). Batches of documents are tokenized and packed on
``--threads`` worker processes and come back in order. A document's lines (long ones cut at sentence
ends) are encoded with sentencepiece's batch encoder (or the WordPiece ``tokenizer.json`` of ``vocab.tokenizer:
wordpiece``, :class:`WordPieceEncoder`) and packed like google-research/electra's
``build_pretraining_dataset.py``: consecutive sentences of one document are collected up to a target
length (``max_seq_len``, or with ``--short-seq-prob`` a random shorter one), split into segments A and
B, truncated and written as ``[CLS] A [SEP] B [SEP]`` (``[CLS] A [SEP]`` when B is empty), right-padded
with [PAD]. A sentence longer than one example is cut into example-sized pieces first. Each document
draws from its own RNG (seed, document id), so its examples depend neither on the other documents nor
on the number of workers. Packing is planned on sentence lengths and done with numpy copies; no
Python list of token ids is built.

Layout of the output directory: ``<split>-00000.bin`` ... raw row-major ``(examples, max_seq_len)``
arrays (uint16, or uint32 for vocabularies over 65535) and ``index.json`` with counts and sha256s.
The format and its reader (:func:`open_split`, :func:`token_type_ids`) live in
:mod:`electra_ds.data.shard_format`, which training imports without this packer.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import itertools
import logging
import random
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from electra_ds import CLS_ID, MASK_ID, PAD_ID, SEP_ID
from electra_ds.common import progress
from electra_ds.common.errors import UserError
from electra_ds.common.fileio import atomic_path, sha256_file, write_json
from electra_ds.common.settings import add_settings
from electra_ds.data.parallel import batched, ordered_map
from electra_ds.data.shard_format import FORMAT, SPLITS, tokenizer_file
from electra_ds.data.splits import document_split
from electra_ds.data.text import split_sentences
from electra_ds.data.vocab_format import load_encoder

log = logging.getLogger(__name__)

SINGLE_SEGMENT_PROB = 0.1  # as in build_pretraining_dataset.py: sometimes only one segment
BATCH_DOCUMENTS = 2_000
BATCH_CHARS = 1_000_000  # at most 2 x workers batches in flight: bounds memory (and the idle tail)


# -- example building -------------------------------------------------------------------------
# Examples are planned on sentence lengths only: each is a list of token spans of the batch's flat id
# array, and _Examples.rows() copies all spans at once with numpy. No Python list of token ids is built.
def _next_target(max_seq_len: int, short_seq_prob: float, rng: random.Random) -> int:
    """Content tokens (without the 3 specials) to collect for the next example."""
    total = rng.randint(5, max_seq_len) if rng.random() < short_seq_prob else max_seq_len
    return total - 3


class _Examples:
    """The examples of one batch of documents for one split, as spans of the batch's flat id array."""

    def __init__(self, max_seq_len: int):
        self.max_seq_len = max_seq_len
        self.src: list[int] = []  # span starts in the flat ids
        self.dst: list[int] = []  # span starts in the row-major output
        self.size: list[int] = []  # span lengths
        self.seps: list[int] = []  # [SEP] positions in the row-major output
        self.count = 0
        self.documents = 0
        self.truncated_tokens = 0

    def add(self, first: list, n_first: int, second: list, n_second: int) -> None:
        """One ``[CLS] A [SEP] B [SEP]`` example from (start, length) spans; A and B truncated to fit."""
        keep_first = min(n_first, self.max_seq_len - 2)
        keep_second = min(n_second, max(0, self.max_seq_len - keep_first - 3))
        self.truncated_tokens += n_first + n_second - keep_first - keep_second
        pos = self.count * self.max_seq_len + 1
        for spans, left in ((first, keep_first), (second, keep_second)):
            if not left:
                continue
            for start, size in spans:
                size = min(size, left)
                self.src.append(start)
                self.dst.append(pos)
                self.size.append(size)
                pos += size
                left -= size
                if not left:
                    break
            self.seps.append(pos)
            pos += 1
        self.count += 1

    def rows(self, flat: np.ndarray, dtype) -> np.ndarray:
        """The (examples, max_seq_len) array: [CLS], the copied spans, [SEP]s, right-padded with [PAD]."""
        out = np.full(self.count * self.max_seq_len, PAD_ID, dtype=dtype)
        out[::self.max_seq_len] = CLS_ID
        out[np.asarray(self.seps, dtype=np.int64)] = SEP_ID
        size = np.asarray(self.size, dtype=np.int64)
        within = np.arange(int(size.sum())) - np.repeat(np.cumsum(size) - size, size)
        out[np.repeat(np.asarray(self.dst, dtype=np.int64), size) + within] = \
            flat[np.repeat(np.asarray(self.src, dtype=np.int64), size) + within]
        return out.reshape(self.count, self.max_seq_len)


def _add_segments(examples: _Examples, starts: list, sizes: list, ends: list, i: int, j: int, target: int,
                  rng: random.Random) -> None:
    """Split pieces i..j (contiguous in the flat ids) into A and B as google-research/electra does.

    The official rule, sentence by sentence: A takes a sentence while A is empty or stays under its
    target, or on a coin flip the first time it would go over (while B is still empty); everything
    else goes to B, so a later short sentence can still join A. With probability 0.1 A's target is
    unbounded (one segment). Here the leading run of A and the coin flip are found by bisection, and
    only the sentences after B starts are visited one by one; the draws are the same."""
    first_target = 10**9 if rng.random() < SINGLE_SEGMENT_PROB else target // 2
    lo = starts[i]
    m = bisect.bisect_left(ends, lo + first_target, i + 1, j + 1)  # the first piece that takes A to its target
    if m > j:  # everything fits in A
        examples.add([(lo, ends[j] - lo)], ends[j] - lo, [], 0)
        return
    n_first = starts[m] - lo
    if n_first < first_target and rng.random() < 0.5:  # A takes it and is full; the rest is B
        examples.add([(lo, ends[m] - lo)], ends[m] - lo, [(ends[m], ends[j] - ends[m])] if m < j else [],
                     ends[j] - ends[m])
        return
    first, second, n_second = [(lo, n_first)], [], 0
    for k in range(m, j + 1):
        start, size = starts[k], sizes[k]
        spans = first if n_first + size < first_target else second
        if spans and spans[-1][0] + spans[-1][1] == start:  # contiguous with the last span: extend it
            spans[-1] = (spans[-1][0], spans[-1][1] + size)
        else:
            spans.append((start, size))
        if spans is first:
            n_first += size
        else:
            n_second += size
    examples.add(first, n_first, second, n_second)


def _plan_document(examples: _Examples, starts: list, sizes: list, short_seq_prob: float,
                   rng: random.Random) -> None:
    """ELECTRA examples of one document whose sentences are the spans (starts[i], sizes[i]).

    Consecutive sentences are collected until they reach the target length (``max_seq_len``, or with
    ``short_seq_prob`` a random shorter one); empty sentences are dropped and one longer than an
    example is cut into example-sized pieces first."""
    max_seq_len = examples.max_seq_len
    budget = max_seq_len - 3
    if 0 in sizes or max(sizes, default=0) > budget:
        pieces = [(start + o, min(budget, size - o)) for start, size in zip(starts, sizes)
                  for o in range(0, size, budget)]
        starts, sizes = [p[0] for p in pieces], [p[1] for p in pieces]
    if not sizes:
        return
    ends = starts[1:] + [starts[-1] + sizes[-1]]  # the pieces are contiguous in the flat ids
    i = 0
    while i < len(sizes):
        target = _next_target(max_seq_len, short_seq_prob, rng)
        # the first piece at which the example reaches its target (else the document's last piece)
        j = min(bisect.bisect_left(ends, starts[i] + target, i), len(sizes) - 1)
        _add_segments(examples, starts, sizes, ends, i, j, target, rng)
        i = j + 1


def _plan_plain(examples: _Examples, start: int, end: int) -> None:
    """Plain packing: the document's tokens [start, end) in order, as ``[CLS] piece [SEP]`` rows."""
    budget = examples.max_seq_len - 2
    for s in range(start, end, budget):
        examples.add([(s, min(budget, end - s))], min(budget, end - s), [], 0)


# -- writing --------------------------------------------------------------------------------
class ShardWriter:
    """Appends example rows of one split to ``<split>-NNNNN.bin`` files of ``examples_per_shard`` rows."""

    def __init__(self, out_dir: Path, split: str, examples_per_shard: int):
        self.out_dir, self.split, self.per_shard = Path(out_dir), split, examples_per_shard
        self.shards: list[dict] = []
        self._file = None
        self.documents = 0
        self.truncated_tokens = 0

    def add(self, rows: np.ndarray) -> None:
        while len(rows):
            if self._file is None or self.shards[-1]["examples"] == self.per_shard:
                self._open_next()
            take = rows[:self.per_shard - self.shards[-1]["examples"]]
            data = np.ascontiguousarray(take).tobytes()
            self._file.write(data)
            self._hash.update(data)
            self.shards[-1]["examples"] += len(take)
            self.shards[-1]["tokens"] += int(np.count_nonzero(take != PAD_ID))
            rows = rows[len(take):]

    def _open_next(self) -> None:
        self._close_file()
        name = f"{self.split}-{len(self.shards):05d}.bin"
        self._file = open(self.out_dir / name, "wb")
        self._hash = hashlib.sha256()
        self.shards.append({"file": name, "examples": 0, "tokens": 0})

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self.shards[-1]["sha256"] = self._hash.hexdigest()
            self._file = None

    def close(self) -> dict:
        self._close_file()
        return {"examples": sum(s["examples"] for s in self.shards), "tokens": sum(s["tokens"] for s in self.shards),
                "documents": self.documents, "truncated_tokens": self.truncated_tokens, "shards": self.shards}


def _batches(documents: Iterable[dict]) -> Iterator[tuple[list[tuple[str, str]]]]:
    """(id, text) pairs in batches of at most BATCH_DOCUMENTS documents or about BATCH_CHARS characters."""
    pairs = ((str(doc["id"]), doc["text"]) for doc in documents)
    return ((batch,) for batch in batched(pairs, BATCH_DOCUMENTS, BATCH_CHARS, chars=lambda pair: len(pair[1])))


@dataclasses.dataclass
class _Packer:
    """Splits, tokenizes and packs one batch of documents into example rows per split.

    Batches are independent (each document draws from its own RNG), so they run on worker processes
    and come back in order: the output is the same for any number of workers."""

    sp: object
    max_seq_len: int
    valid_fraction: float
    heldout_fraction: float
    short_seq_prob: float
    seed: int
    packing: str

    @property
    def dtype(self):
        return np.uint16 if self.sp.get_piece_size() <= 65535 else np.uint32

    def __call__(self, batch: list[tuple[str, str]]) -> tuple[dict, int]:
        """({split: (rows or None, documents, truncated tokens)}, held-out documents) of one batch."""
        docs, lines, heldout = [], [], 0
        for doc_id, text in batch:
            split = document_split(doc_id, valid_fraction=self.valid_fraction,
                                   heldout_fraction=self.heldout_fraction, seed=self.seed)
            if split == "heldout":
                heldout += 1
                continue
            sentences = split_sentences(text)
            docs.append((doc_id, split, len(sentences)))
            lines += sentences
        # one flat id array and the sentence lengths; the encoder's Python lists are freed at once
        encoded = self.sp.encode(lines, num_threads=1) if lines else []
        sizes = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        flat = np.fromiter(itertools.chain.from_iterable(encoded), dtype=self.dtype, count=int(sizes.sum()))
        del encoded
        offsets = np.concatenate([[0], np.cumsum(sizes)]).tolist()  # sentence i: flat[offsets[i]:offsets[i+1]]
        sizes = sizes.tolist()
        planned = {s: _Examples(self.max_seq_len) for s in SPLITS}
        i = 0
        for doc_id, split, n in docs:
            examples = planned[split]
            before = examples.count
            if self.packing == "plain":
                _plan_plain(examples, offsets[i], offsets[i + n])
            else:
                _plan_document(examples, offsets[i:i + n], sizes[i:i + n], self.short_seq_prob,
                               random.Random(f"{self.seed}:{doc_id}"))
            examples.documents += examples.count > before
            i += n
        return {s: (b.rows(flat, self.dtype) if b.count else None, b.documents, b.truncated_tokens)
                for s, b in planned.items()}, heldout


_WORKER: dict = {}


def _set_packer(packer: _Packer) -> None:
    _WORKER["packer"] = packer


def _pack(batch: list[tuple[str, str]]):
    return _WORKER["packer"](batch)


def write_shards(documents: Iterable[dict], sp, out_dir: Path, *, max_seq_len: int = 128,
                 valid_fraction: float = 0.01, heldout_fraction: float = 0.0, short_seq_prob: float = 0.05,
                 seed: int = 0, workers: int = 1, examples_per_shard: int = 100_000, packing: str = "electra") -> dict:
    """Write every split's shards into ``out_dir``; return the split summaries and the held-out count.
    ``workers`` processes tokenize and pack batches in parallel (each encodes with one thread)."""
    packer = _Packer(sp, max_seq_len=max_seq_len, valid_fraction=valid_fraction, heldout_fraction=heldout_fraction,
                     short_seq_prob=short_seq_prob, seed=seed, packing=packing)
    writers = {s: ShardWriter(out_dir, s, examples_per_shard) for s in SPLITS}
    heldout = 0
    for packed, n_heldout in ordered_map(_pack, _batches(documents), workers, _set_packer, (packer,)):
        heldout += n_heldout
        for split, (rows, documents_, truncated) in packed.items():
            if rows is not None:
                writers[split].add(rows)
            writers[split].documents += documents_
            writers[split].truncated_tokens += truncated
    return {"splits": {s: w.close() for s, w in writers.items()}, "heldout_documents": heldout,
            "vocab_size": sp.get_piece_size(), "dtype": np.dtype(packer.dtype).name}


# -- the stage ------------------------------------------------------------------------------
SETTINGS = {"shards": ("max_seq_len", "valid_fraction", "heldout_fraction", "short_seq_prob", "examples_per_shard",
                       "packing", "threads"),
            "": ("seed",)}


def add_arguments(parser) -> None:
    parser.add_argument("--input", required=True, help="documents JSONL (dedup output)")
    parser.add_argument("--tokenizer-dir", required=True,
                        help="vocab stage output (spm.model, or WordPiece's tokenizer.json)")
    parser.add_argument("--output-dir", required=True, help="shards directory to write")
    add_settings(parser, SETTINGS)


def _check_args(args) -> None:
    if args.valid_fraction + args.heldout_fraction >= 1:  # each field's own range is checked by the schema
        raise UserError("valid + heldout fractions must be below 1", field="shards.valid_fraction",
                        fix="e.g. valid_fraction 0.01, heldout_fraction 0.01")


def run(args, tracker) -> None:
    _check_args(args)
    if not Path(args.input).is_file():
        raise UserError("input documents not found", path=args.input, fix="run the dedup stage first")
    sp = load_encoder(args.tokenizer_dir)
    settings = {"max_seq_len": args.max_seq_len, "valid_fraction": args.valid_fraction,
                "heldout_fraction": args.heldout_fraction, "short_seq_prob": args.short_seq_prob,
                "seed": args.seed, "examples_per_shard": args.examples_per_shard, "packing": args.packing}
    tracker.log_params(settings)

    with atomic_path(args.output_dir, is_dir=True) as tmp:
        with progress.Progress("shards: tokenizing and packing", unit="docs",
                               total_bytes=progress.file_bytes(args.input), tracker=tracker, logger=log) as reading:
            result = write_shards(progress.read_jsonl(args.input, reading), sp, tmp, workers=args.threads,
                                  **{k: v for k, v in settings.items()})
        if result["splits"]["train"]["examples"] == 0:
            raise UserError("no training examples (every document went to valid/held-out, or none had text)",
                            path=args.input, fix="add text or lower --valid-fraction/--heldout-fraction")
        index = {"format": FORMAT, "max_seq_len": args.max_seq_len, "dtype": result["dtype"],
                 "vocab_size": result["vocab_size"], "pad_id": PAD_ID, "cls_id": CLS_ID, "sep_id": SEP_ID,
                 "mask_id": MASK_ID, "seed": args.seed, "settings": settings,
                 "tokenizer_sha256": sha256_file(tokenizer_file(args.tokenizer_dir)),
                 "heldout_documents": result["heldout_documents"], "splits": result["splits"]}
        write_json(tmp / "index.json", index)
    for split, s in result["splits"].items():
        tracker.log_metrics({f"{split}.{k}": s[k] for k in ("examples", "tokens", "documents", "truncated_tokens")})
        log.info("%s: %d examples, %d tokens, %d documents, %d shard(s)", split, s["examples"], s["tokens"],
                 s["documents"], len(s["shards"]))
    tracker.log_metrics({"heldout_documents": result["heldout_documents"]})
    tracker.log_artifact(Path(args.output_dir) / "index.json")
