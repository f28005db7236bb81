"""Corpus stage: read the configured sources and write normalised UTF-8 documents (JSONL).

Sources (``--sources``: a JSON list, or the path of a JSON file holding one) are of the types in
:data:`electra_ds.data.sources.SOURCES`, one class each: ``demo`` (built-in Python docs prose), ``local`` (files and
globs: txt, JSONL, parquet, gzip/zstd), ``url`` (one HTTP(S) file checked against its sha256) and ``hf`` (a Hugging
Face Hub dataset). This stage reads them through that table only.

Every document is normalised (:func:`normalise_text`), filtered by length and written as
``{"id", "text", "source"}``; ids are deterministic. Per-source counts go to ``--stats``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterator

from electra_ds.common.errors import UserError
from electra_ds.common.fileio import write_json, write_jsonl
from electra_ds.common.progress import Progress
from electra_ds.common.settings import add_settings
from electra_ds.data.readers import TOO_LONG
from electra_ds.data.sources import SOURCES, open_source, type_names
from electra_ds.data.text import normalise_text

log = logging.getLogger(__name__)

# per-source counts (stats file and MLflow): documents and bytes in/out, and what each rule removed
COUNTS = ("documents_in", "bytes_in", "documents_out", "bytes_out", "decode_errors", "binary_files", "too_short",
          "too_long", "removed_control_chars", "removed_trailing_space_chars", "nfc_changed_documents",
          "gutenberg_documents", "removed_gutenberg_header_chars", "removed_gutenberg_footer_chars")
DEFAULT_DOWNLOADS = "downloads"  # beside the corpus output, unless cache_dir / $ELECTRA_DS_DOWNLOADS say otherwise


def parse_sources(value) -> list[dict]:
    """Sources from a JSON string, a JSON file path or a list; checked for types and unknown keys."""
    if isinstance(value, str):
        text = value.strip()
        if not text.startswith(("[", "{")) and Path(text).is_file():
            text = Path(text).read_text(encoding="utf-8")
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"--sources is not valid JSON ({exc})", field="corpus.sources",
                            fix='pass a JSON list such as \'[{"type": "demo"}]\'') from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value:
        raise UserError("expected a non-empty list of sources", field="corpus.sources",
                        fix='e.g. [{"type": "demo"}]')
    for i, src in enumerate(value):
        field = f"corpus.sources[{i}]"
        if not isinstance(src, dict) or not isinstance(src.get("type"), str) or src["type"] not in SOURCES:
            raise UserError(f"unknown source {src!r}", field=field, fix=f"type must be {type_names()}")
        SOURCES[src["type"]].check(src, field)
    return value


def preflight(sources: list[dict], cache_dir=DEFAULT_DOWNLOADS) -> None:
    """Check what can fail before any text is read: local paths match files, remote hosts are reachable."""
    for i, src in enumerate(sources):
        open_source(src, f"corpus.sources[{i}]").preflight(cache_dir)


def source_labels(sources: list[dict]) -> list[str]:
    """Stats/record label per source: ``hf:<dataset>``, else its ``name``, else its type (``demo``, ``local``),
    with ``-<index>`` appended where two sources would share one."""
    labels = []
    for i, src in enumerate(sources):
        label = open_source(src, f"corpus.sources[{i}]").label()
        labels.append(f"{label}-{i}" if label in labels else label)
    return labels


def build_documents(sources: list[dict], stats: dict, *, min_chars: int = 1, max_chars: int = 0,
                    on_decode_error: str = "fail", cache_dir=DEFAULT_DOWNLOADS, tracker=None) -> Iterator[dict]:
    """Normalised, length-filtered records of all sources; fills ``stats`` (per source) as it goes and reports
    progress per source (:mod:`electra_ds.common.progress`)."""

    for i, (src, label) in enumerate(zip(sources, source_labels(sources), strict=True)):
        source = open_source(src, f"corpus.sources[{i}]")
        s = stats.setdefault(label, dict.fromkeys(COUNTS, 0))
        progress = Progress(f"corpus: source {label}", unit="docs", total_bytes=source.size(),
                            tracker=tracker, logger=log)
        items = source.documents(s, on_decode_error=on_decode_error, max_chars=max_chars, cache_dir=cache_dir)
        for doc_id, raw in items:  # raw None: skipped for bytes that are not UTF-8
            s["documents_in"] += 1
            if raw is None or raw is TOO_LONG:  # TOO_LONG: never read into memory
                s["too_long"] += raw is TOO_LONG
                progress.update(1)
                continue
            size = len(raw.encode("utf-8"))
            s["bytes_in"] += size
            progress.update(1, size)
            text = normalise_text(raw, s)
            if not text or len(text) < min_chars:  # whitespace only is no document, whatever min_chars says
                s["too_short"] += 1
                continue
            if max_chars and len(text) > max_chars:
                s["too_long"] += 1
                continue
            s["documents_out"] += 1
            s["bytes_out"] += len(text.encode("utf-8"))
            yield {"id": doc_id, "text": text, "source": label}
        progress.close()
        log.info("source %s: %d of %d documents kept", label, s["documents_out"], s["documents_in"])


def totals(stats: dict) -> dict:
    keys = next(iter(stats.values())).keys() if stats else ()
    return {k: sum(s[k] for s in stats.values()) for k in keys}


SETTINGS = {"corpus": ("sources", "min_chars", "max_chars", "on_decode_error")}


def add_arguments(parser) -> None:
    parser.add_argument("--output", required=True, help="documents JSONL (.gz for gzip)")
    parser.add_argument("--stats", required=True, help="per-source counts (JSON)")
    add_settings(parser, SETTINGS)


def run(args, tracker) -> None:
    sources = parse_sources(args.sources)
    cache_dir = Path(args.output).parent / DEFAULT_DOWNLOADS
    preflight(sources, cache_dir)
    tracker.log_params({"sources": json.dumps(sources), "min_chars": args.min_chars,
                        "max_chars": args.max_chars, "on_decode_error": args.on_decode_error})
    stats: dict = {}

    def checked():
        n = 0
        for record in build_documents(sources, stats, min_chars=args.min_chars, max_chars=args.max_chars,
                                      cache_dir=cache_dir, tracker=tracker,
                                      on_decode_error=args.on_decode_error):
            n += 1
            yield record
        if n == 0:  # raised inside the writer: the partial output is removed
            raise UserError(f"corpus is empty after normalisation (counts per source: {json.dumps(stats)})",
                            field="corpus.sources",
                            fix="check the sources' paths and text fields, and --min-chars/--max-chars")

    write_jsonl(args.output, checked())
    summary = {"sources": stats, "total": totals(stats)}
    write_json(args.stats, summary)
    tracker.log_metrics(summary["total"])
    tracker.log_metrics({f"source.{label}": s for label, s in stats.items()})
    tracker.log_artifact(args.stats)
    log.info("wrote %d documents (%d bytes) to %s", summary["total"]["documents_out"],
             summary["total"]["bytes_out"], args.output)
