"""Shared fixtures: offline environment, the real-data folder, and a small prepared corpus."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import helpers

# Tests never reach the Hub or the web; DeepSpeed uses its CPU accelerator; MLflow is off unless a
# test turns it on with its own store.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("ELECTRA_DS_MLFLOW", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return helpers.shared_data()


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
    """corpus -> dedup -> vocab -> shards on the built-in demo source, once per test session."""
    root = tmp_path_factory.mktemp("prepared")
    docs, kept, vocab, shards = root / "docs.jsonl", root / "kept.jsonl", root / "vocab", root / "shards"
    assert helpers.cli("corpus", "--sources", '[{"type": "demo"}]', "--output", str(docs),
                 "--stats", str(root / "corpus_stats.json"), "--min-chars", "200") == 0
    assert helpers.cli("dedup", "--input", str(docs), "--output", str(kept), "--stats", str(root / "dedup.json")) == 0
    assert helpers.cli("vocab", "--input", str(kept), "--output-dir", str(vocab), "--vocab-size", "2000",
                 "--threads", "2") == 0
    assert helpers.cli("shards", "--input", str(kept), "--tokenizer-dir", str(vocab), "--output-dir", str(shards),
                 "--max-seq-len", "64", "--valid-fraction", "0.05", "--heldout-fraction", "0.15",
                 "--threads", "2") == 0
    return {"root": root, "docs": kept, "vocab": vocab, "shards": shards}
