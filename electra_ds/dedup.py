"""Dedup stage: remove duplicate documents and count what was removed.

Steps are plain generators over records (``records in, records out, counts into a stats dict``), so
they chain and stream: only one 16-byte hash per kept document stays in memory, never the texts.

* :func:`exact_dedup`: drops a document whose normalised text (:func:`normalise_for_hash`: casefolded,
  whitespace collapsed) hashes like an earlier one; the first occurrence is kept.

A near-duplicate step (MinHash-LSH) slots in as another generator of the same shape in
:data:`STEPS`, after the exact step.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Iterable, Iterator

from electra_ds.errors import UserError
from electra_ds.fileio import read_jsonl, write_json, write_jsonl

log = logging.getLogger(__name__)


def normalise_for_hash(text: str) -> str:
    """The text two documents must share to count as exact duplicates: casefolded, whitespace collapsed."""
    return " ".join(text.casefold().split())


def text_hash(text: str) -> bytes:
    return hashlib.blake2b(normalise_for_hash(text).encode("utf-8"), digest_size=16).digest()


def exact_dedup(records: Iterable[dict], stats: dict | None = None) -> Iterator[dict]:
    """Yield each record whose normalised text was not seen before; count removals into ``stats``."""
    stats = {} if stats is None else stats
    for key in ("exact_duplicates_removed", "bytes_removed"):
        stats.setdefault(key, 0)
    seen: set[bytes] = set()
    for record in records:
        digest = text_hash(record["text"])
        if digest in seen:
            stats["exact_duplicates_removed"] += 1
            stats["bytes_removed"] += len(record["text"].encode("utf-8"))
            continue
        seen.add(digest)
        yield record


STEPS = (exact_dedup,)


def dedup_documents(records: Iterable[dict], stats: dict, path=None) -> Iterator[dict]:
    """Run every step of :data:`STEPS` over ``records``; fill documents_in/out and the steps' counts."""
    stats.update(documents_in=0, documents_out=0)

    def counted_in(items):
        for record in items:
            if not isinstance(record, dict) or not isinstance(record.get("text"), str) or "id" not in record:
                raise UserError(f"document {stats['documents_in'] + 1} has no string 'text' or no 'id'", path=path,
                                fix="feed the output of the corpus stage")
            stats["documents_in"] += 1
            yield record

    stream = counted_in(records)
    for step in STEPS:
        stream = step(stream, stats)
    for record in stream:
        stats["documents_out"] += 1
        yield record


def add_arguments(parser) -> None:
    parser.add_argument("--input", required=True, help="documents JSONL from the corpus stage")
    parser.add_argument("--output", required=True, help="kept documents JSONL (.gz for gzip)")
    parser.add_argument("--stats", required=True, help="dedup counts (JSON)")


def run(args, tracker) -> None:
    if not Path(args.input).is_file():
        raise UserError("input documents not found", path=args.input, fix="run the corpus stage first")
    stats: dict = {}

    def checked():
        try:
            yield from dedup_documents(read_jsonl(args.input), stats, args.input)
        except ValueError as exc:  # JSON decoding
            raise UserError(f"not valid JSONL ({exc})", path=args.input, fix="rerun the corpus stage") from None
        if stats["documents_in"] == 0:
            raise UserError("no documents in the input", path=args.input, fix="rerun the corpus stage")

    write_jsonl(args.output, checked())
    write_json(args.stats, stats)
    tracker.log_metrics(stats)
    tracker.log_artifact(args.stats)
    log.info("kept %d of %d documents (%d exact duplicates, %d bytes removed)", stats["documents_out"],
             stats["documents_in"], stats["exact_duplicates_removed"], stats["bytes_removed"])
