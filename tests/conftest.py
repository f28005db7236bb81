"""Shared fixtures: offline environment, the real-data folder, and a small prepared corpus."""

from __future__ import annotations

import os
from pathlib import Path

import checkout_guard
import helpers
import pytest

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


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` for the session (tests/helpers_mlflow.py): sqlite backend and artifact store in
    tmp, a free port; a test that kills it starts it again on the same port and folders."""
    from helpers_mlflow import MlflowServer

    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    yield server
    server.kill()


# -- tests never write into the checkout ---------------------------------------------------------------
# Whatever appears under the repository during the session (outside tool caches: checkout_guard.CACHES) is
# listed at the end; under CI (CI set, as .ci/run is run) or ELECTRA_DS_CHECKOUT_CHECK=fail it fails the session.
# Elsewhere it is a warning, since a developer may be creating files in the checkout while the tests run.

def pytest_sessionstart(session):
    session.config._checkout_before = checkout_guard.snapshot(helpers.REPO)


def pytest_sessionfinish(session, exitstatus):
    before = getattr(session.config, "_checkout_before", None)
    if before is None:
        return
    new = checkout_guard.new_paths(before, checkout_guard.snapshot(helpers.REPO))
    session.config._checkout_new = new
    strict = os.environ.get("CI") or os.environ.get("ELECTRA_DS_CHECKOUT_CHECK") == "fail"
    if new and strict and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, config):
    new = getattr(config, "_checkout_new", None)
    if new:
        terminalreporter.write_sep("=", "tests wrote into the checkout (write under tmp_path instead)", red=True)
        for path in new[:50]:
            terminalreporter.write_line(f"  {path}")
        if len(new) > 50:
            terminalreporter.write_line(f"  ... and {len(new) - 50} more")
