"""Data builders for the tests: cached demo documents and vocabulary, Gutenberg files (runners and paths: helpers.py).

Outputs that several test files need (demo documents, a demo vocabulary) are built once per test
process and cached here, whichever test file asks first.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from helpers import cli, shared_data

_CACHE: dict = {}
_ROOT = None


def gutenberg_files() -> list[Path]:
    files = sorted((shared_data() / "corpus" / "gutenberg").glob("*.txt"))
    if not files:
        pytest.skip("no Gutenberg books: shared/data/corpus/gutenberg absent or empty")
    return files


def scratch() -> Path:
    global _ROOT
    if _ROOT is None:
        _ROOT = Path(tempfile.mkdtemp(prefix="electra-ds-data-tests-"))
        atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)
    return _ROOT


def demo_documents() -> Path:
    """Demo corpus after dedup (built once)."""
    if "demo_docs" not in _CACHE:
        root = scratch()
        assert cli("corpus", "--sources", json.dumps([{"type": "demo"}]), "--output", root / "demo.jsonl",
                   "--stats", root / "demo_stats.json", "--min-chars", 200) == 0
        assert cli("dedup", "--input", root / "demo.jsonl", "--output", root / "demo_kept.jsonl",
                   "--stats", root / "demo_dedup.json") == 0
        _CACHE["demo_docs"] = root / "demo_kept.jsonl"
    return _CACHE["demo_docs"]


def demo_vocab(vocab_size: int = 2000) -> Path:
    """A unigram vocabulary trained on the demo documents (built once)."""
    key = f"demo_vocab_{vocab_size}"
    if key not in _CACHE:
        out = scratch() / key
        assert cli("vocab", "--input", demo_documents(), "--output-dir", out, "--vocab-size", vocab_size,
                   "--threads", 2) == 0
        _CACHE[key] = out
    return _CACHE[key]


def read_records(path) -> list[dict]:
    from electra_ds.common.fileio import read_jsonl

    return list(read_jsonl(path))


def leftovers(directory: Path) -> list[str]:
    """Temporary names an atomic write would leave behind if it failed to clean up."""
    return sorted(p.name for p in Path(directory).iterdir() if ".tmp-" in p.name)
