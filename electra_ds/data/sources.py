"""The corpus stage's source types, one class each, and :data:`SOURCES`, the one table from a config's ``type`` to
its class.

A source class says which config keys it takes (``keys``, ``required``, ``choices``), what it checks before any
text is read (:meth:`Source.preflight`), how many bytes it holds when that is known (:meth:`Source.size`, the
progress bar's total) and what its documents are (:meth:`Source.documents`: ``(id, text)`` pairs). The corpus stage
(:mod:`electra_ds.data.corpus`) and the prefetch plan (:mod:`electra_ds.pipeline.prefetch`) reach sources only
through :data:`SOURCES`, so a new source type is one class here plus its entry in the config schema
(``corpus.sources`` in ``electra_ds/schemas/config.schema.yaml``; tests/test_corpus.py checks that the two agree).
"""

from __future__ import annotations

import ast
import itertools
import os
import sysconfig
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

from electra_ds.common.errors import UserError
from electra_ds.common.progress import file_bytes
from electra_ds.data.download import check_url, fetch
from electra_ds.data.readers import expand_paths, format_of, iter_local

DECODE_POLICIES = ("fail", "replace", "skip")
# the keys of a source read like local files (local, url) and their values
FILE_KEYS = ("format", "text_field", "documents", "strip_gutenberg", "on_decode_error")
FILE_CHOICES = {"format": ("auto", "txt", "jsonl", "parquet"), "documents": ("file", "line", "paragraph"),
                "on_decode_error": DECODE_POLICIES}
DEMO_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "tkinter",
                  "turtledemo", "__pycache__"}
DEMO_MIN_DOCSTRING = 200


class Source:
    """One configured source (``config``: its dict from ``corpus.sources``; ``field``: ``corpus.sources[<i>]``).

    A subclass sets ``type`` (the config's ``type``), ``keys`` (every key it takes), ``required`` (the keys that
    must be set) and ``choices`` (keys with a closed set of values), and implements :meth:`documents`."""

    type: str
    keys: tuple[str, ...] = ("type", "name")
    required: tuple[str, ...] = ()
    choices: dict[str, tuple] = {}

    def __init__(self, config: dict, field: str):
        self.config, self.field = config, field

    @classmethod
    def check(cls, config: dict, field: str) -> None:
        """Refuse unknown keys, missing required keys and values outside their choices (a UserError naming the
        field)."""
        unknown = set(config) - set(cls.keys)
        if unknown:
            raise UserError(f"unknown key(s) {sorted(unknown)} for a {cls.type} source", field=field,
                            fix=f"allowed keys: {sorted(cls.keys)}")
        for key in cls.required:
            if not config.get(key):
                raise UserError(f"a {cls.type} source needs `{key}`", field=f"{field}.{key}")
        for key, choices in cls.choices.items():
            if key in config and config[key] not in choices:
                raise UserError(f"unknown value {config[key]!r}", field=f"{field}.{key}", fix=f"use one of {choices}")

    def label(self) -> str:
        """The source's name in the stats file and MLflow (before two equal labels are told apart)."""
        return self.config.get("name") or self.type

    def preflight(self, cache_dir) -> None:
        """Check what can fail before any text is read (a UserError); ``cache_dir``: the default download cache."""

    def size(self) -> int | None:
        """Total bytes of the text to read when known cheaply (the progress bar's total), else None."""
        return None

    def documents(self, stats: dict, *, on_decode_error: str, max_chars: int,
                  cache_dir) -> Iterator[tuple[str, object]]:
        """(id, text) per document. The text is None for a document skipped for bytes that are not UTF-8 and
        :data:`electra_ds.data.readers.TOO_LONG` for one too long to be read; ``stats`` (this source's counts)
        gets what the reader itself counts (decode errors, binary files, Gutenberg headers)."""
        raise NotImplementedError(f"{type(self).__name__}.documents")

    def hub_dataset(self) -> dict | None:
        """The Hugging Face Hub dataset this source reads (``id``, ``config``, ``split``, ``revision``: what
        ``electra-ds prefetch`` downloads before the offline jobs), or None."""
        return None


class DemoSource(Source):
    """``{"type": "demo"}``: English prose every Python install carries: the ``pydoc_data`` help topics and the
    standard library's long docstrings (parsed with ``ast``, nothing is imported)."""

    type = "demo"

    def documents(self, stats, *, on_decode_error, max_chars, cache_dir):
        return iter_demo()


class LocalSource(Source):
    """``{"type": "local", "paths": [...], "format": "auto|txt|jsonl|parquet", "text_field": "text",
    "documents": "file|line|paragraph", "strip_gutenberg": false, "on_decode_error": ...}``: local files (globs
    and directories allowed; :mod:`electra_ds.data.readers`)."""

    type = "local"
    keys = ("type", "name", "paths", *FILE_KEYS)
    required = ("paths",)
    choices = FILE_CHOICES

    @classmethod
    def check(cls, config, field):
        super().check(config, field)
        if isinstance(config["paths"], str):
            config["paths"] = [config["paths"]]

    def preflight(self, cache_dir):
        expand_paths(self.config["paths"], f"{self.field}.paths")

    def size(self):
        """The files' bytes when all are uncompressed text files, else None."""
        total = 0
        for path, _ in expand_paths(self.config["paths"], f"{self.field}.paths"):
            size = file_bytes(path)
            if size is None or format_of(path, self.config.get("format", "auto")) != "txt":
                return None
            total += size
        return total

    def documents(self, stats, *, on_decode_error, max_chars, cache_dir):
        return iter_local(self.config, self.field, self.config.get("on_decode_error", on_decode_error), stats,
                          max_chars)


class UrlSource(Source):
    """``{"type": "url", "url": "https://...", "sha256": "<64 hex>", "cache_dir": null, ...}`` plus the file keys
    of a local source: one HTTP(S) file, downloaded resumably and atomically into ``cache_dir`` (default
    ``$ELECTRA_DS_DOWNLOADS``, else the stage's ``<output dir>/downloads``), verified against ``sha256``
    (:mod:`electra_ds.data.download`) and read like a local file. Ids are ``url:<file name>...`` (the URL's last
    path part)."""

    type = "url"
    keys = ("type", "name", "url", "sha256", "cache_dir", *FILE_KEYS)
    required = ("url", "sha256")
    choices = FILE_CHOICES

    def download_dir(self, default) -> Path:
        return Path(self.config.get("cache_dir") or os.environ.get("ELECTRA_DS_DOWNLOADS") or default)

    def preflight(self, cache_dir):
        check_url(self.config["url"], self.config["sha256"], self.download_dir(cache_dir), self.field)

    def documents(self, stats, *, on_decode_error, max_chars, cache_dir):
        url = self.config["url"]
        path = fetch(url, self.config["sha256"], self.download_dir(cache_dir), self.field)
        stem = Path(urlparse(url).path).name or "download"
        policy = self.config.get("on_decode_error", on_decode_error)
        for doc_id, text in iter_local(self.config, self.field, policy, stats, max_chars, files=[(path, stem)]):
            yield "url:" + doc_id.removeprefix("local:"), text


class HubSource(Source):
    """``{"type": "hf", "name": ..., "config": null, "split": "train", "text_column": "text", "revision": null,
    "streaming": true, "max_documents": 0}``: a Hugging Face Hub dataset (fails fast when the Hub cannot be
    reached; offline, after ``electra-ds prefetch``, it is read from the local cache; ``max_documents`` > 0 reads
    only that many rows). Labelled ``hf:<dataset>``."""

    type = "hf"
    keys = ("type", "name", "config", "split", "text_column", "revision", "streaming", "max_documents")
    required = ("name",)

    def label(self):
        return f"hf:{self.config.get('name')}"

    def preflight(self, cache_dir):
        """Fail at once, before any download is tried, when the Hub cannot be reached. Offline (HF_HUB_OFFLINE /
        HF_DATASETS_OFFLINE: a compute node after the prefetch, electra_ds/pipeline/prefetch.py) the dataset must be
        in the local Hugging Face cache instead."""
        from electra_ds.common.hub import hub_unreachable, offline_reason

        if offline_reason():
            return self._check_cached()
        reason = hub_unreachable()
        if reason:
            raise UserError(f"source {self.config['name']}: the Hugging Face Hub is unreachable (offline: {reason})",
                            field=self.field, fix="run online, or pre-download the data and use a local source "
                                                  "(type: local, paths: [...])")

    def _check_cached(self) -> None:
        """Offline: the dataset's prepared copy is in the Hugging Face cache (what ``datasets`` falls back to)."""
        from electra_ds.common.hub import PREFETCH_FIX, datasets_cache, offline_reason

        try:
            import datasets

            datasets.load_dataset_builder(self.config["name"], self.config.get("config"))
        except Exception as exc:
            raise UserError(f"source {self.config['name']}: the Hugging Face Hub is unreachable (offline: "
                            f"{offline_reason()}) and the dataset is not in the local cache {datasets_cache()} "
                            f"({type(exc).__name__})", field=self.field,
                            fix=PREFETCH_FIX + "; or pre-download the data and use a local source "
                                               "(type: local, paths: [...])") from None

    def documents(self, stats, *, on_decode_error, max_chars, cache_dir):
        src, field = self.config, self.field
        name = src["name"]
        split, column = src.get("split", "train"), src.get("text_column", "text")
        try:
            import datasets

            ds = datasets.load_dataset(name, src.get("config"), split=split, revision=src.get("revision"),
                                       streaming=src.get("streaming", True))
            limit = src.get("max_documents") or None  # 0 / None: no limit
            for i, row in enumerate(itertools.islice(ds, limit)):
                if column not in row:
                    raise UserError(f"source {name}: no column {column!r} (columns: {', '.join(row)})",
                                    field=f"{field}.text_column", fix="set text_column to the text column")
                yield f"hf/{name}/{src.get('config') or 'default'}/{split}:{i}", row[column] or ""
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"source {name}: loading from the Hugging Face Hub failed "
                            f"({type(exc).__name__}: {exc})", field=field,
                            fix="check name/config/split/revision, or pre-download and use a local source") from None

    def hub_dataset(self):
        src = self.config
        return {"id": src["name"], "config": src.get("config"), "split": src.get("split") or "train",
                "revision": src.get("revision")}


# config ``type`` -> class, in the order the schema's enum and the error messages list them
SOURCES: dict[str, type[Source]] = {cls.type: cls for cls in (DemoSource, LocalSource, UrlSource, HubSource)}


def type_names() -> str:
    """``demo, local, url or hf``: the source types, for messages."""
    names = list(SOURCES)
    return f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else names[0]


def open_source(config: dict, field: str) -> Source:
    """The source object of one (checked) ``corpus.sources`` entry."""
    return SOURCES[config["type"]](config, field)


# -- the demo corpus ---------------------------------------------------------------------------
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
