"""Corpus stage: read the configured sources and write normalised UTF-8 documents (JSONL).

Sources (``--sources``: a JSON list, or the path of a JSON file holding one):

* ``{"type": "demo"}``: English prose every Python install carries: the ``pydoc_data`` help topics
  and the standard library's long docstrings (parsed with ``ast``, nothing is imported).
* ``{"type": "local", "paths": [...], "format": "auto|txt|jsonl|parquet", "text_field": "text",
  "documents": "file|line|paragraph", "strip_gutenberg": false}``: local files (globs allowed).
* ``{"type": "hf", "name": ..., "config": null, "split": "train", "text_column": "text",
  "revision": null, "streaming": true, "max_documents": 0}``: a Hugging Face Hub dataset (fails fast
  when offline; ``max_documents`` > 0 reads only that many rows).

Every document is normalised (:func:`normalise_text`), filtered by length and written as
``{"id", "text", "source"}``; ids are deterministic. Per-source counts go to ``--stats``.
"""

from __future__ import annotations

import ast
import glob
import itertools
import json
import logging
import os
import re
import sysconfig
from pathlib import Path
from typing import Iterator

from electra_ds.errors import UserError
from electra_ds.text import normalise_text, strip_gutenberg
from electra_ds.fileio import write_json, write_jsonl

log = logging.getLogger(__name__)

DECODE_POLICIES = ("fail", "replace", "skip")
SOURCE_KEYS = {
    "demo": {"type", "name"},
    "local": {"type", "name", "paths", "format", "text_field", "documents", "strip_gutenberg", "on_decode_error"},
    "hf": {"type", "name", "config", "split", "text_column", "revision", "streaming", "max_documents"},
}
SOURCE_CHOICES = {"format": ("auto", "txt", "jsonl", "parquet"), "documents": ("file", "line", "paragraph"),
                  "on_decode_error": DECODE_POLICIES}
SOURCE_REQUIRED = {"local": "paths", "hf": "name"}
DEMO_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "tkinter",
                  "turtledemo", "__pycache__"}
DEMO_MIN_DOCSTRING = 200
_BAD_BYTES = re.compile("[\udc80-\udcff]")  # bytes that are not UTF-8, kept by surrogateescape


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


def expand_paths(patterns: list[str], field: str) -> list[tuple[Path, str]]:
    """(file, id stem) for each file matched by each glob / path / directory, sorted per pattern.

    The id stem is the file's path below the pattern's fixed directory, prefixed by that directory's
    name (``gutenberg/11-0.txt``), so document ids do not change when the data moves elsewhere.
    A pattern that matches nothing is an error.
    """
    files = []
    for pattern in patterns:
        p = Path(pattern)
        if p.is_dir():
            base = p
            matches = sorted(str(f) for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
        else:
            fixed = [part for part in itertools.takewhile(lambda s: not glob.has_magic(s), p.parts)]
            base = Path(*fixed).parent if len(fixed) == len(p.parts) else Path(*fixed) if fixed else Path(".")
            matches = sorted(m for m in glob.glob(pattern, recursive=True) if Path(m).is_file())
        if not matches:
            raise UserError("no file matches this path or glob", path=pattern, field=field,
                            fix="correct the path (relative paths are taken from the working directory)")
        prefix = base.resolve().name
        files.extend((Path(m), f"{prefix}/{Path(m).relative_to(base).as_posix()}") for m in matches)
    return files


def _format_of(path: Path, declared: str) -> str:
    if declared != "auto":
        return declared
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    last = suffixes[-1] if suffixes else ""
    return {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}.get(last, "txt")


def _open_binary(path: Path):
    if path.name.endswith(".gz"):
        import gzip

        return gzip.open(path, "rb")
    return open(path, "rb")


def _decode_error(path: Path, offset: int, where: str = "") -> UserError:
    gz = " (uncompressed)" if path.name.endswith(".gz") else ""
    return UserError(f"{where}not valid UTF-8 at byte offset {offset}{gz}", path=path,
                     fix="convert the file to UTF-8, or set `on_decode_error: replace` (or `skip`) in the "
                         "corpus config (command line: --on-decode-error replace)")


def iter_txt(path: Path, stem: str, documents: str, policy: str, stats: dict, gutenberg: bool = False):
    """(id, text) of a text file: the whole file, each line or each blank-line-separated paragraph.
    The text is None for a document skipped for bytes that are not UTF-8."""
    with _open_binary(path) as f:
        data = f.read()
    if policy == "fail":
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _decode_error(path, exc.start) from None
    text = data.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if gutenberg:
        text = strip_gutenberg(text)
    if documents == "file":
        units = [(f"local:{stem}", text)]
    elif documents == "line":
        units = ((f"local:{stem}:{i + 1}", line) for i, line in enumerate(text.split("\n")) if line.strip())
    else:
        paragraphs = (p for p in re.split(r"\n[^\S\n]*\n", text) if p.strip())
        units = ((f"local:{stem}:p{i + 1}", p) for i, p in enumerate(paragraphs))
    for doc_id, unit in units:
        if _BAD_BYTES.search(unit):
            stats["decode_errors"] += 1
            unit = None if policy == "skip" else _BAD_BYTES.sub("\ufffd", unit)
        yield doc_id, unit


def iter_jsonl(path: Path, stem: str, text_field: str, policy: str, stats: dict):
    """(id, text) per JSON line; the id is ``local:<dir>/<file>:<line number>``."""
    offset = 0
    with _open_binary(path) as f:
        for lineno, raw in enumerate(f, start=1):
            start, offset = offset, offset + len(raw)
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                stats["decode_errors"] += 1
                if policy == "fail":
                    raise _decode_error(path, start + exc.start, f"line {lineno}: ") from None
                if policy == "skip":
                    yield f"local:{stem}:{lineno}", None
                    continue
                line = raw.decode("utf-8", errors="replace")
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"not valid JSON ({exc.msg})", path=f"{path}:{lineno}",
                                fix="write one JSON object per line (JSONL)") from None
            text = record.get(text_field) if isinstance(record, dict) else None
            if not isinstance(text, str):
                what = "missing" if not isinstance(record, dict) or text_field not in record else "not a string"
                raise UserError(f"text field is {what}", path=f"{path}:{lineno}", field=text_field,
                                fix="set `text_field` of this source to the field that holds the text")
            yield f"local:{stem}:{lineno}", text


def iter_parquet(path: Path, stem: str, text_field: str):
    """(id, text) per parquet row; the id is ``local:<dir>/<file>:<row>`` (1-based)."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:
        raise UserError(f"cannot read as parquet ({exc})", path=path) from None
    if text_field not in pf.schema_arrow.names:
        raise UserError(f"no such column (columns: {', '.join(pf.schema_arrow.names)})", path=path,
                        field=text_field, fix="set `text_field` of this source to the text column")
    row = 0
    for batch in pf.iter_batches(columns=[text_field], batch_size=4096):
        for text in batch.column(0).to_pylist():
            row += 1
            yield f"local:{stem}:{row}", text or ""


def iter_local(source: dict, field: str, policy: str, stats: dict):
    fmt, documents = source.get("format", "auto"), source.get("documents", "file")
    text_field = source.get("text_field", "text")
    for path, stem in expand_paths(source["paths"], f"{field}.paths"):
        kind = _format_of(path, fmt)
        if kind == "txt":
            yield from iter_txt(path, stem, documents, policy, stats, bool(source.get("strip_gutenberg")))
        elif kind == "jsonl":
            yield from iter_jsonl(path, stem, text_field, policy, stats)
        else:
            yield from iter_parquet(path, stem, text_field)


def hub_unreachable_reason() -> str | None:
    """Why the Hugging Face Hub cannot be used now (offline variables, no connection), or None."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{var} is set"
    import socket
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError as exc:
        return f"cannot connect to {host}:443 ({exc})"
    return None


def check_hub(source: dict, field: str) -> None:
    """Fail at once, before any download is tried, when the Hub cannot be reached."""
    reason = hub_unreachable_reason()
    if reason:
        raise UserError(f"source {source['name']}: the Hugging Face Hub is unreachable (offline: {reason})",
                        field=field, fix="run online, or pre-download the data and use a local source "
                                         "(type: local, paths: [...])")


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
            raise UserError(f"unknown source {src!r}", field=field, fix="type must be demo, local or hf")
        unknown = set(src) - SOURCE_KEYS[src["type"]]
        if unknown:
            raise UserError(f"unknown key(s) {sorted(unknown)} for a {src['type']} source", field=field,
                            fix=f"allowed keys: {sorted(SOURCE_KEYS[src['type']])}")
        required = SOURCE_REQUIRED.get(src["type"])
        if required and not src.get(required):
            raise UserError(f"a {src['type']} source needs `{required}`", field=f"{field}.{required}")
        if isinstance(src.get("paths"), str):
            src["paths"] = [src["paths"]]
        for key, choices in SOURCE_CHOICES.items():
            if key in src and src[key] not in choices:
                raise UserError(f"unknown value {src[key]!r}", field=f"{field}.{key}", fix=f"use one of {choices}")
    return value


def preflight(sources: list[dict]) -> None:
    """Check what can fail before any text is read: local paths match files, the Hub is reachable."""
    for i, src in enumerate(sources):
        if src["type"] == "local":
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


def build_documents(sources: list[dict], stats: dict, *, min_chars: int = 1, max_chars: int = 0,
                    on_decode_error: str = "fail") -> Iterator[dict]:
    """Normalised, length-filtered records of all sources; fills ``stats`` (per source) as it goes."""
    for i, (source, label) in enumerate(zip(sources, source_labels(sources), strict=True)):
        field = f"corpus.sources[{i}]"
        s = stats.setdefault(label, dict.fromkeys(
            ("documents_in", "bytes_in", "documents_out", "bytes_out", "decode_errors", "too_short", "too_long"), 0))
        if source["type"] == "demo":
            items = iter_demo()
        elif source["type"] == "local":
            items = iter_local(source, field, source.get("on_decode_error", on_decode_error), s)
        else:
            items = iter_hf(source, field)
        for doc_id, raw in items:  # raw None: skipped for bytes that are not UTF-8
            s["documents_in"] += 1
            if raw is None:
                continue
            s["bytes_in"] += len(raw.encode("utf-8"))
            text = normalise_text(raw)
            if len(text) < min_chars:
                s["too_short"] += 1
                continue
            if max_chars and len(text) > max_chars:
                s["too_long"] += 1
                continue
            s["documents_out"] += 1
            s["bytes_out"] += len(text.encode("utf-8"))
            yield {"id": doc_id, "text": text, "source": label}
        log.info("source %s: %d of %d documents kept", label, s["documents_out"], s["documents_in"])


def totals(stats: dict) -> dict:
    keys = next(iter(stats.values())).keys() if stats else ()
    return {k: sum(s[k] for s in stats.values()) for k in keys}


def add_arguments(parser) -> None:
    parser.add_argument("--sources", required=True,
                        help='JSON list of sources (or a JSON file), e.g. \'[{"type": "demo"}]\'')
    parser.add_argument("--output", required=True, help="documents JSONL (.gz for gzip)")
    parser.add_argument("--stats", required=True, help="per-source counts (JSON)")
    parser.add_argument("--min-chars", type=int, default=1, help="drop documents shorter than this")
    parser.add_argument("--max-chars", type=int, default=0, help="drop documents longer than this (0: no limit)")
    parser.add_argument("--on-decode-error", choices=DECODE_POLICIES, default="fail",
                        help="non-UTF-8 bytes: fail, replace them with U+FFFD, or skip the document")


def run(args, tracker) -> None:
    sources = parse_sources(args.sources)
    preflight(sources)
    tracker.log_params({"sources": json.dumps(sources), "min_chars": args.min_chars,
                        "max_chars": args.max_chars, "on_decode_error": args.on_decode_error})
    stats: dict = {}

    def checked():
        n = 0
        for record in build_documents(sources, stats, min_chars=args.min_chars, max_chars=args.max_chars,
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
