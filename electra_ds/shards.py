"""Shards stage: tokenize documents and pack fixed-length ELECTRA examples into binary shards.

Each document goes to train, valid or held-out by :func:`electra_ds.splits.document_split` (held-out
documents are skipped: they feed the probe tasks). Its lines (long ones cut at sentence ends) are
tokenized with sentencepiece's multi-threaded batch encoder, a batch of documents at a time, and
packed like google-research/electra's ``build_pretraining_dataset.py``: consecutive sentences of one
document are collected up to a target length (``max_seq_len``, or with ``--short-seq-prob`` a random
shorter one), split into segments A and B, truncated and written as ``[CLS] A [SEP] B [SEP]``
(``[CLS] A [SEP]`` when B is empty), right-padded with [PAD]. A sentence longer than one example is
cut into example-sized pieces first. Each document draws from its own RNG (seed, document id), so its
examples do not depend on the other documents.

Layout of the output directory: ``<split>-00000.bin`` ... raw row-major ``(examples, max_seq_len)``
arrays (uint16, or uint32 for vocabularies over 65535) and ``index.json`` with counts and sha256s.
:func:`open_split` memory-maps one split for training; :func:`token_type_ids` derives segment ids.
"""

from __future__ import annotations

import bisect
import collections
import hashlib
import itertools
import logging
import os
import random
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from electra_ds import CLS_ID, MASK_ID, PAD_ID, SEP_ID, SPECIAL_TOKENS, UNK_ID
from electra_ds.text import split_sentences
from electra_ds.errors import UserError
from electra_ds.fileio import atomic_path, read_json, read_jsonl, sha256_file, write_json
from electra_ds.splits import document_split

log = logging.getLogger(__name__)

FORMAT = "electra-ds-shards-v1"
SPLITS = ("train", "valid")
PACKINGS = ("electra", "plain")
SINGLE_SEGMENT_PROB = 0.1  # as in build_pretraining_dataset.py: sometimes only one segment
BATCH_DOCUMENTS = 2_000
BATCH_CHARS = 2_000_000  # with two batches in flight, bounds memory (Python int lists: ~36 B per token)


# -- example building -------------------------------------------------------------------------
def _next_target(max_seq_len: int, short_seq_prob: float, rng: random.Random) -> int:
    """Content tokens (without the 3 specials) to collect for the next example."""
    total = rng.randint(5, max_seq_len) if rng.random() < short_seq_prob else max_seq_len
    return total - 3


def _segments(sentences: list[list[int]], target: int, max_seq_len: int, rng: random.Random):
    """Split collected sentences into (A, B) as the official code does; truncate to fit. Returns (A, B, cut)."""
    first_target = 10**9 if rng.random() < SINGLE_SEGMENT_PROB else target // 2
    first: list[int] = []
    second: list[int] = []
    for sentence in sentences:
        # A takes a sentence while empty, while it stays under its target, or half of the time when it
        # would go over (as long as B is still empty); everything after goes to B
        if (not first or len(first) + len(sentence) < first_target
                or (not second and len(first) < first_target and rng.random() < 0.5)):
            first += sentence
        else:
            second += sentence
    n = len(first) + len(second)
    first = first[:max_seq_len - 2]
    second = second[:max(0, max_seq_len - len(first) - 3)]
    return first, second, n - len(first) - len(second)


def document_examples(sentences: list[list[int]], max_seq_len: int, short_seq_prob: float,
                      rng: random.Random) -> Iterator[tuple[list[int], list[int], int]]:
    """(segment A, segment B, tokens cut off) for one document's tokenized sentences."""
    budget = max_seq_len - 3
    target = _next_target(max_seq_len, short_seq_prob, rng)
    current: list[list[int]] = []
    length = 0
    for sentence in sentences:
        # over-long sentences become example-sized pieces
        pieces = (sentence,) if len(sentence) <= budget else [sentence[s:s + budget]
                                                              for s in range(0, len(sentence), budget)]
        for piece in pieces:
            current.append(piece)
            length += len(piece)
            if length >= target:
                yield _segments(current, target, max_seq_len, rng)
                current, length = [], 0
                target = _next_target(max_seq_len, short_seq_prob, rng)
    if current:
        yield _segments(current, target, max_seq_len, rng)


def plain_examples(sentences: list[list[int]], max_seq_len: int) -> Iterator[tuple[list[int], list[int], int]]:
    """Plain packing: the document's tokens in order, cut into ``[CLS] piece [SEP]`` rows (one segment)."""
    tokens = [t for sentence in sentences for t in sentence]
    budget = max_seq_len - 2
    for start in range(0, len(tokens), budget):
        yield tokens[start:start + budget], [], 0


def example_row(first: list[int], second: list[int], max_seq_len: int, dtype) -> np.ndarray:
    ids = [CLS_ID, *first, SEP_ID] + ([*second, SEP_ID] if second else [])
    row = np.full(max_seq_len, PAD_ID, dtype=dtype)
    row[:len(ids)] = ids
    return row


def token_type_ids(input_ids: np.ndarray, sep_id: int = SEP_ID, pad_id: int = PAD_ID) -> np.ndarray:
    """Segment ids: 0 up to and including the first [SEP], 1 after it; padding gets 0. 1D or 2D."""
    ids = np.asarray(input_ids)
    is_sep = ids == sep_id
    after_first_sep = (np.cumsum(is_sep, axis=-1) - is_sep) > 0
    return (after_first_sep & (ids != pad_id)).astype(np.int64)


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


def _batches(documents: Iterable[dict]) -> Iterator[list[dict]]:
    batch, chars = [], 0
    for doc in documents:
        batch.append(doc)
        chars += len(doc["text"])
        if len(batch) >= BATCH_DOCUMENTS or chars >= BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _encoded_batches(documents: Iterable[dict], sp, threads: int, split_of):
    """([(doc, split, number of sentences)], ids of all their sentences) per batch of documents.

    The next batch is encoded in a background thread (sentencepiece releases the GIL) while the caller
    packs this one; at most two batches are in flight."""
    from concurrent.futures import ThreadPoolExecutor

    pending: collections.deque = collections.deque()
    with ThreadPoolExecutor(1) as pool:
        for batch in _batches(documents):
            docs, lines = [], []
            for doc in batch:
                split = split_of(doc)
                sentences = split_sentences(doc["text"]) if split != "heldout" else []
                docs.append((doc, split, len(sentences)))
                lines += sentences
            pending.append((docs, pool.submit(sp.encode, lines, num_threads=threads) if lines else None))
            if len(pending) > 1:
                docs, job = pending.popleft()
                yield docs, job.result() if job else []
        while pending:
            docs, job = pending.popleft()
            yield docs, job.result() if job else []


def _rows(flat: list[int], lengths: list[int], max_seq_len: int, dtype) -> np.ndarray:
    """Right-padded (examples, max_seq_len) array from the concatenated example ids."""
    lengths = np.asarray(lengths)
    rows = np.full((len(lengths), max_seq_len), PAD_ID, dtype=dtype)
    rows[np.arange(max_seq_len) < lengths[:, None]] = np.asarray(flat, dtype=dtype)
    return rows


def load_sentencepiece(tokenizer_dir):
    """The vocab stage's ``spm.model``, checked for ELECTRA's special ids."""
    import sentencepiece as spm

    model = Path(tokenizer_dir) / "spm.model"
    if not model.is_file():
        raise UserError("no spm.model in the tokenizer directory", path=model, fix="run the vocab stage first")
    sp = spm.SentencePieceProcessor(model_file=str(model))
    got = (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.piece_to_id(SPECIAL_TOKENS[MASK_ID]))
    if got != (PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID):
        raise UserError(f"special token ids {got} are not [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4", path=model,
                        fix="use a tokenizer made by the vocab stage")
    return sp


def write_shards(documents: Iterable[dict], sp, out_dir: Path, *, max_seq_len: int = 128,
                 valid_fraction: float = 0.01, heldout_fraction: float = 0.0, short_seq_prob: float = 0.1,
                 seed: int = 0, threads: int = 1, examples_per_shard: int = 100_000, packing: str = "electra") -> dict:
    """Write every split's shards into ``out_dir``; return the split summaries and the held-out count."""
    vocab_size = sp.get_piece_size()
    dtype = np.uint16 if vocab_size <= 65535 else np.uint32
    writers = {s: ShardWriter(out_dir, s, examples_per_shard) for s in SPLITS}
    heldout = 0

    def split_of(doc):
        return document_split(str(doc["id"]), valid_fraction=valid_fraction, heldout_fraction=heldout_fraction,
                              seed=seed)

    for docs, encoded in _encoded_batches(documents, sp, threads, split_of):
        encoded = iter(encoded)
        flat = {s: [] for s in SPLITS}
        lengths = {s: [] for s in SPLITS}
        for doc, split, n_sentences in docs:
            if split == "heldout":
                heldout += 1
                continue
            tokenized = list(itertools.islice(encoded, n_sentences))
            if not all(tokenized):
                tokenized = [ids for ids in tokenized if ids]
            n_before = len(lengths[split])
            if packing == "plain":
                examples = plain_examples(tokenized, max_seq_len)
            else:
                examples = document_examples(tokenized, max_seq_len, short_seq_prob, random.Random(f"{seed}:{doc['id']}"))
            out, lens = flat[split], lengths[split]
            for first, second, cut in examples:
                out.append(CLS_ID)
                out += first
                out.append(SEP_ID)
                if second:
                    out += second
                    out.append(SEP_ID)
                lens.append(len(first) + len(second) + (3 if second else 2))
                writers[split].truncated_tokens += cut
            writers[split].documents += len(lens) > n_before
        for split in SPLITS:
            if lengths[split]:
                writers[split].add(_rows(flat[split], lengths[split], max_seq_len, dtype))
    return {"splits": {s: w.close() for s, w in writers.items()}, "heldout_documents": heldout,
            "vocab_size": vocab_size, "dtype": np.dtype(dtype).name}


# -- reading --------------------------------------------------------------------------------
class ShardedExamples:
    """Random access over all shard files of one split (memory-mapped); rows come back as int64."""

    def __init__(self, shard_dir, split: str, index: dict):
        self.path, self.split = Path(shard_dir), split  # path: the shards directory
        self.max_seq_len = int(index["max_seq_len"])
        self.dtype = np.dtype(index["dtype"])
        self.vocab_size = int(index["vocab_size"])
        self._shards = [s for s in index["splits"][split]["shards"] if s["examples"] > 0]
        self._starts = np.cumsum([0] + [s["examples"] for s in self._shards])
        self._maps = None

    def _memmaps(self):
        if self._maps is None:
            self._maps = [np.memmap(self.path / s["file"], dtype=self.dtype, mode="r",
                                    shape=(s["examples"], self.max_seq_len)) for s in self._shards]
        return self._maps

    def __getstate__(self):  # pickle (DataLoader workers) without the memory maps
        return {**self.__dict__, "_maps": None}

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, i: int) -> np.ndarray:
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"example {i} out of range for {len(self)} examples")
        shard = bisect.bisect_right(self._starts, i) - 1
        return np.asarray(self._memmaps()[shard][i - self._starts[shard]], dtype=np.int64)

    def batch(self, indices) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        idx = np.where(idx < 0, idx + len(self), idx)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"indices out of range for {len(self)} examples")
        out = np.empty((idx.size, self.max_seq_len), dtype=np.int64)
        shard_of = np.searchsorted(self._starts, idx, side="right") - 1
        maps = self._memmaps()
        for shard in np.unique(shard_of):
            where = shard_of == shard
            out[where] = maps[shard][idx[where] - self._starts[shard]]
        return out


def open_split(shard_dir, split: str = "train", verify: bool = True) -> ShardedExamples:
    """Open one split of a shards directory; with ``verify`` check every file's size and sha256."""
    index_path = Path(shard_dir) / "index.json"
    if not index_path.is_file():
        raise UserError("no shard index", path=index_path, fix="run the shards stage")
    index = read_json(index_path)
    if index.get("format") != FORMAT:
        raise UserError(f"unknown shard format {index.get('format')!r} (expected {FORMAT})", path=index_path,
                        fix="rerun the shards stage")
    if split not in index["splits"]:
        raise UserError(f"no split {split!r} (have {', '.join(index['splits'])})", path=index_path)
    row_bytes = int(index["max_seq_len"]) * np.dtype(index["dtype"]).itemsize
    for shard in index["splits"][split]["shards"] if verify else ():
        path = Path(shard_dir) / shard["file"]
        if not path.is_file():
            raise UserError("shard file missing", path=path, fix="rerun the shards stage")
        size, expected = path.stat().st_size, shard["examples"] * row_bytes
        if size != expected:
            raise UserError(f"size mismatch: {size} bytes, the index says {expected}", path=path,
                            fix="rerun the shards stage")
        if sha256_file(path) != shard["sha256"]:
            raise UserError("checksum mismatch with index.json (the file changed or is corrupt)", path=path,
                            fix="rerun the shards stage")
    return ShardedExamples(shard_dir, split, index)


# -- the stage ------------------------------------------------------------------------------
def add_arguments(parser) -> None:
    parser.add_argument("--input", required=True, help="documents JSONL (dedup output)")
    parser.add_argument("--tokenizer-dir", required=True, help="vocab stage output (spm.model)")
    parser.add_argument("--output-dir", required=True, help="shards directory to write")
    parser.add_argument("--max-seq-len", type=int, default=128)
    parser.add_argument("--valid-fraction", type=float, default=0.01, help="fraction of documents for valid")
    parser.add_argument("--heldout-fraction", type=float, default=0.0,
                        help="fraction of documents kept out of pretraining (probe tasks)")
    parser.add_argument("--short-seq-prob", type=float, default=0.1,
                        help="probability of a random shorter target length")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="sentencepiece encode threads")
    parser.add_argument("--examples-per-shard", type=int, default=100_000)
    parser.add_argument("--packing", choices=PACKINGS, default="electra",
                        help="electra: [CLS] A [SEP] B [SEP] from consecutive sentences (official recipe); "
                             "plain: [CLS] + the next max_seq_len-2 tokens of the document + [SEP]")


def _check_args(args) -> None:
    if args.max_seq_len < 8:
        raise UserError(f"--max-seq-len {args.max_seq_len} is too short", field="shards.max_seq_len",
                        fix="use at least 8 (ELECTRA-Small uses 128)")
    fractions = (args.valid_fraction, args.heldout_fraction, args.short_seq_prob)
    if not all(0 <= f <= 1 for f in fractions) or args.valid_fraction + args.heldout_fraction >= 1:
        raise UserError("fractions must lie in [0, 1] and valid + heldout must be below 1",
                        field="shards.valid_fraction", fix="e.g. valid_fraction 0.01, heldout_fraction 0.01")
    if args.examples_per_shard < 1:
        raise UserError("--examples-per-shard must be positive", field="shards.examples_per_shard")


def run(args, tracker) -> None:
    _check_args(args)
    if not Path(args.input).is_file():
        raise UserError("input documents not found", path=args.input, fix="run the dedup stage first")
    sp = load_sentencepiece(args.tokenizer_dir)
    settings = {"max_seq_len": args.max_seq_len, "valid_fraction": args.valid_fraction,
                "heldout_fraction": args.heldout_fraction, "short_seq_prob": args.short_seq_prob,
                "seed": args.seed, "examples_per_shard": args.examples_per_shard, "packing": args.packing}
    tracker.log_params(settings)
    with atomic_path(args.output_dir, is_dir=True) as tmp:
        result = write_shards(read_jsonl(args.input), sp, tmp, threads=args.threads,
                              **{k: v for k, v in settings.items()})
        if result["splits"]["train"]["examples"] == 0:
            raise UserError("no training examples (every document went to valid/held-out, or none had text)",
                            path=args.input, fix="add text or lower --valid-fraction/--heldout-fraction")
        index = {"format": FORMAT, "max_seq_len": args.max_seq_len, "dtype": result["dtype"],
                 "vocab_size": result["vocab_size"], "pad_id": PAD_ID, "cls_id": CLS_ID, "sep_id": SEP_ID,
                 "mask_id": MASK_ID, "seed": args.seed, "settings": settings,
                 "tokenizer_sha256": sha256_file(Path(args.tokenizer_dir) / "spm.model"),
                 "heldout_documents": result["heldout_documents"], "splits": result["splits"]}
        write_json(tmp / "index.json", index)
    for split, s in result["splits"].items():
        tracker.log_metrics({f"{split}.{k}": s[k] for k in ("examples", "tokens", "documents", "truncated_tokens")})
        log.info("%s: %d examples, %d tokens, %d documents, %d shard(s)", split, s["examples"], s["tokens"],
                 s["documents"], len(s["shards"]))
    tracker.log_metrics({"heldout_documents": result["heldout_documents"]})
    tracker.log_artifact(Path(args.output_dir) / "index.json")
