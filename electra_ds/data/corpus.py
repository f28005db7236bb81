"""Corpus stage: read the configured sources and write normalised UTF-8 documents (JSONL).

Sources (``--sources``: a JSON list, or the path of a JSON file holding one):

* ``{"type": "demo"}``: English prose every Python install carries: the ``pydoc_data`` help topics
  and the standard library's long docstrings (parsed with ``ast``, nothing is imported).
* ``{"type": "local", "paths": [...], "format": "auto|txt|jsonl|parquet", "text_field": "text",
  "documents": "file|line|paragraph", "strip_gutenberg": false}``: local files (globs allowed).
* ``{"type": "url", "url": "https://...", "sha256": "<64 hex>", "cache_dir": null, ...}`` plus the
  keys of a local source: one HTTP(S) file, downloaded resumably and atomically into ``cache_dir``
  (default ``<output dir>/downloads``) and verified against ``sha256`` (:mod:`electra_ds.data.download`).
* ``{"type": "hf", "name": ..., "config": null, "split": "train", "text_column": "text",
  "revision": null, "streaming": true, "max_documents": 0}``: a Hugging Face Hub dataset (fails fast
  when offline; ``max_documents`` > 0 reads only that many rows).

Every document is normalised (:func:`normalise_text`), filtered by length and written as
``{"id", "text", "source"}``; ids are deterministic. Per-source counts go to ``--stats``.
"""

from __future__ import annotations

import ast
import itertools
import json
import logging
import os
import sysconfig
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse
import socket

from electra_ds.common.errors import UserError
from electra_ds.common.settings import add_settings
from electra_ds.common.fileio import write_json, write_jsonl
from electra_ds.data.readers import TOO_LONG, expand_paths, iter_local
from electra_ds.data.text import normalise_text
from electra_ds.data.download import fetch
from electra_ds.data.download import check_url
from electra_ds.common.progress import file_bytes
from electra_ds.data.readers import format_of
from electra_ds.common.progress import Progress

log = logging.getLogger(__name__)

DECODE_POLICIES = ("fail", "replace", "skip")
# per-source counts (stats file and MLflow): documents and bytes in/out, and what each rule removed
COUNTS = ("documents_in", "bytes_in", "documents_out", "bytes_out", "decode_errors", "binary_files", "too_short",
          "too_long", "removed_control_chars", "removed_trailing_space_chars", "nfc_changed_documents",
          "gutenberg_documents", "removed_gutenberg_header_chars", "removed_gutenberg_footer_chars")
SOURCE_KEYS = {
    "demo": {"type", "name"},
    "local": {"type", "name", "paths", "format", "text_field", "documents", "strip_gutenberg", "on_decode_error"},
    "hf": {"type", "name", "config", "split", "text_column", "revision", "streaming", "max_documents"},
}
SOURCE_CHOICES = {"format": ("auto", "txt", "jsonl", "parquet"), "documents": ("file", "line", "paragraph"),
                  "on_decode_error": DECODE_POLICIES}
SOURCE_KEYS["url"] = {"type", "name", "url", "sha256", "cache_dir", "format", "text_field", "documents",
                      "strip_gutenberg", "on_decode_error"}
SOURCE_REQUIRED = {"local": "paths", "hf": "name", "url": ("url", "sha256")}
DEFAULT_DOWNLOADS = "downloads"  # beside the corpus output, unless cache_dir / $ELECTRA_DS_DOWNLOADS say otherwise
DEMO_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "tkinter",
                  "turtledemo", "__pycache__"}
DEMO_MIN_DOCSTRING = 200


# -- sources -------------------------------------------------------------------------------
def iter_demo() -> Iterator[tuple[str, str]]:
    """(id, text) of the built-in demo corpus: pydoc topics, then stdlib docstrings in sorted file order."""
    from pydoc_data.topics import topics

    for key in sorted(topics):
        yield f"demo/topic/{key}", topics[key]
    root = Path(sysconfig.get_paths()["stdlib"])
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in DEMO_SKIP_DIRS)
        for name in sorted(f for f in filenames if f.endswith(".py")):
            path = Path(dirpath) / name
            try:
                tree = ast.parse(path.read_bytes())
            except (SyntaxError, ValueError, UnicodeDecodeError, RecursionError, OSError):
                continue
            rel = path.relative_to(root).as_posix()
            seen: dict[str, int] = {}
            for qualname, doc in _docstrings(tree):
                if len(doc) < DEMO_MIN_DOCSTRING:
                    continue
                seen[qualname] = seen.get(qualname, 0) + 1
                suffix = f"#{seen[qualname]}" if seen[qualname] > 1 else ""
                yield f"demo/doc/{rel}:{qualname}{suffix}", doc


def _docstrings(node, prefix: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, ast.Module):
        doc = ast.get_docstring(node)
        if doc:
            yield "<module>", doc
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            qualname = f"{prefix}{child.name}"
            doc = ast.get_docstring(child)
            if doc:
                yield qualname, doc
            yield from _docstrings(child, qualname + ".")
        elif not isinstance(child, ast.Module):
            yield from _docstrings(child, prefix)  # defs inside if/try blocks


def download_dir(source: dict, default) -> Path:
    return Path(source.get("cache_dir") or os.environ.get("ELECTRA_DS_DOWNLOADS") or default)


def iter_url(source: dict, field: str, policy: str, stats: dict, max_chars: int, cache_dir):
    """A downloaded file read like a local one; ids ``url:<file name>...`` (the URL's last path part)."""


    path = fetch(source["url"], source["sha256"], download_dir(source, cache_dir), field)
    stem = Path(urlparse(source["url"]).path).name or "download"
    for doc_id, text in iter_local(source, field, policy, stats, max_chars, files=[(path, stem)]):
        yield "url:" + doc_id.removeprefix("local:"), text


def hub_unreachable_reason() -> str | None:
    """Why the Hugging Face Hub cannot be used now (offline variables, no connection), or None."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{var} is set"

    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError as exc:
        return f"cannot connect to {host}:443 ({exc})"
    return None


def check_hub(source: dict, field: str) -> None:
    """Fail at once, before any download is tried, when the Hub cannot be reached. Offline (HF_HUB_OFFLINE /
    HF_DATASETS_OFFLINE: a compute node after the prefetch, electra_ds/pipeline/prefetch.py) the dataset must be in the
    local Hugging Face cache instead."""
    from electra_ds.common.hub import offline_reason

    if offline_reason():
        return check_cached(source, field)
    reason = hub_unreachable_reason()
    if reason:
        raise UserError(f"source {source['name']}: the Hugging Face Hub is unreachable (offline: {reason})",
                        field=field, fix="run online, or pre-download the data and use a local source "
                                         "(type: local, paths: [...])")


def check_cached(source: dict, field: str) -> None:
    """Offline: the dataset's prepared copy is in the Hugging Face cache (what ``datasets`` falls back to)."""
    from electra_ds.common.hub import PREFETCH_FIX, datasets_cache, offline_reason

    try:
        import datasets

        datasets.load_dataset_builder(source["name"], source.get("config"))
    except Exception as exc:
        raise UserError(f"source {source['name']}: the Hugging Face Hub is unreachable (offline: {offline_reason()}) "
                        f"and the dataset is not in the local cache {datasets_cache()} "
                        f"({type(exc).__name__})", field=field,
                        fix=PREFETCH_FIX + "; or pre-download the data and use a local source "
                                           "(type: local, paths: [...])") from None


def iter_hf(source: dict, field: str):
    name = source["name"]
    split, column = source.get("split", "train"), source.get("text_column", "text")
    try:
        import datasets

        ds = datasets.load_dataset(name, source.get("config"), split=split, revision=source.get("revision"),
                                   streaming=source.get("streaming", True))
        limit = source.get("max_documents") or None  # 0 / None: no limit
        for i, row in enumerate(itertools.islice(ds, limit)):
            if column not in row:
                raise UserError(f"source {name}: no column {column!r} (columns: {', '.join(row)})",
                                field=f"{field}.text_column", fix="set text_column to the text column")
            yield f"hf/{name}/{source.get('config') or 'default'}/{split}:{i}", row[column] or ""
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"source {name}: loading from the Hugging Face Hub failed "
                        f"({type(exc).__name__}: {exc})", field=field,
                        fix="check name/config/split/revision, or pre-download and use a local source") from None


# -- the stage ---------------------------------------------------------------------------
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
        if not isinstance(src, dict) or src.get("type") not in SOURCE_KEYS:
            raise UserError(f"unknown source {src!r}", field=field, fix="type must be demo, local, url or hf")
        unknown = set(src) - SOURCE_KEYS[src["type"]]
        if unknown:
            raise UserError(f"unknown key(s) {sorted(unknown)} for a {src['type']} source", field=field,
                            fix=f"allowed keys: {sorted(SOURCE_KEYS[src['type']])}")
        required = SOURCE_REQUIRED.get(src["type"], ())
        for key in (required,) if isinstance(required, str) else required:
            if not src.get(key):
                raise UserError(f"a {src['type']} source needs `{key}`", field=f"{field}.{key}")
        if isinstance(src.get("paths"), str):
            src["paths"] = [src["paths"]]
        for key, choices in SOURCE_CHOICES.items():
            if key in src and src[key] not in choices:
                raise UserError(f"unknown value {src[key]!r}", field=f"{field}.{key}", fix=f"use one of {choices}")
    return value


def preflight(sources: list[dict], cache_dir=DEFAULT_DOWNLOADS) -> None:
    """Check what can fail before any text is read: local paths match files, remote hosts are reachable."""
    for i, src in enumerate(sources):
        if src["type"] == "url":

            check_url(src["url"], src["sha256"], download_dir(src, cache_dir), f"corpus.sources[{i}]")
        elif src["type"] == "local":
            expand_paths(src["paths"], f"corpus.sources[{i}].paths")
        elif src["type"] == "hf":
            check_hub(src, f"corpus.sources[{i}]")


def source_labels(sources: list[dict]) -> list[str]:
    """Stats/record label per source: ``hf:<dataset>``, else its ``name``, else its type (``demo``, ``local``),
    with ``-<index>`` appended where two sources would share one."""
    labels = []
    for i, src in enumerate(sources):
        label = f"hf:{src.get('name')}" if src["type"] == "hf" else (src.get("name") or src["type"])
        labels.append(f"{label}-{i}" if label in labels else label)
    return labels


def source_bytes(source: dict, field: str) -> int | None:
    """Total bytes of a local source made of uncompressed text files (an ETA's total), else None."""
    if source["type"] != "local":
        return None

    total = 0
    for path, _ in expand_paths(source["paths"], f"{field}.paths"):
        size = file_bytes(path)
        if size is None or format_of(path, source.get("format", "auto")) != "txt":
            return None
        total += size
    return total


def build_documents(sources: list[dict], stats: dict, *, min_chars: int = 1, max_chars: int = 0,
                    on_decode_error: str = "fail", cache_dir=DEFAULT_DOWNLOADS, tracker=None) -> Iterator[dict]:
    """Normalised, length-filtered records of all sources; fills ``stats`` (per source) as it goes and reports
    progress per source (:mod:`electra_ds.common.progress`)."""

    for i, (source, label) in enumerate(zip(sources, source_labels(sources), strict=True)):
        field = f"corpus.sources[{i}]"
        s = stats.setdefault(label, dict.fromkeys(COUNTS, 0))
        progress = Progress(f"corpus: source {label}", unit="docs", total_bytes=source_bytes(source, field),
                            tracker=tracker, logger=log)
        if source["type"] == "demo":
            items = iter_demo()
        elif source["type"] == "local":
            items = iter_local(source, field, source.get("on_decode_error", on_decode_error), s, max_chars)
        elif source["type"] == "url":
            items = iter_url(source, field, source.get("on_decode_error", on_decode_error), s, max_chars, cache_dir)
        else:
            items = iter_hf(source, field)
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
