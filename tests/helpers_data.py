"""Helpers for the data-stage tests: the real-data folder, running the CLI, and cached demo outputs.

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

from electra_ds.cli import main

_CACHE: dict = {}
_ROOT = None


def shared_data() -> Path:
    """The read-only real-data folder (../shared/data or $ELECTRA_DS_SHARED_DATA); skip the test if absent."""
    sibling = Path(__file__).resolve().parents[2] / "shared" / "data"
    for candidate in (os.environ.get("ELECTRA_DS_SHARED_DATA"), sibling):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    pytest.skip("real data folder ../shared/data absent (set ELECTRA_DS_SHARED_DATA to use another)")


def gutenberg_files() -> list[Path]:
    files = sorted((shared_data() / "corpus" / "gutenberg").glob("*.txt"))
    if not files:
        pytest.skip("no Gutenberg books: shared/data/corpus/gutenberg absent or empty")
    return files


def cli(*args) -> int:
    """Run ``electra-ds`` in-process with MLflow off; return the exit status."""
    os.environ["ELECTRA_DS_MLFLOW"] = "0"
    return main([str(a) for a in args])


def cli_error(capsys, *args) -> str:
    """Run a command that must fail as a user error (exit 2); return its one-line message."""
    capsys.readouterr()
    assert cli(*args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "no error message printed"
    return err[-1]


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
    from electra_ds.fileio import read_jsonl

    return list(read_jsonl(path))


def leftovers(directory: Path) -> list[str]:
    """Temporary names an atomic write would leave behind if it failed to clean up."""
    return sorted(p.name for p in Path(directory).iterdir() if ".tmp-" in p.name)
