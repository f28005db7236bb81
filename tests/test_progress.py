"""Progress reporting (electra_ds/common/progress.py): plain lines in logs, a bar in a terminal, rates to MLflow."""

from __future__ import annotations

import gzip
import io
import json
import logging
import time

import pytest

from electra_ds.common import progress
from electra_ds.common.progress import Progress


class Tracker:
    def __init__(self):
        self.calls = []

    def log_metrics(self, metrics, step=None):
        self.calls.append((metrics, step))


class Terminal(io.StringIO):
    def isatty(self):
        return True


def progress_lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "electra_ds.progress"]


@pytest.fixture(autouse=True)
def plain(monkeypatch):
    monkeypatch.delenv("ELECTRA_DS_PROGRESS", raising=False)
    monkeypatch.delenv("ELECTRA_DS_PROGRESS_SECONDS", raising=False)


def test_log_lines_with_rate_eta_and_metrics(caplog, monkeypatch):
    monkeypatch.setenv("ELECTRA_DS_PROGRESS_SECONDS", "0")
    tracker = Tracker()
    caplog.set_level(logging.INFO, logger="electra_ds.progress")
    with Progress("dedup: signing", total=4, unit="docs", tracker=tracker, stream=io.StringIO()) as p:
        for _ in range(4):
            time.sleep(0.01)
            p.update(1, 2048)
    lines = progress_lines(caplog)
    assert len(lines) == 5
    assert lines[1].startswith("dedup: signing: 2 docs, 4.0 KiB in ") and "docs/s" in lines[1]
    assert "KiB/s" in lines[1] and "50% of 4" in lines[1] and "ETA " in lines[1]
    assert lines[-1].startswith("dedup: signing: done, 4 docs, 8.0 KiB in ") and "ETA" not in lines[-1]
    metrics, step = tracker.calls[0]
    assert step == 1 and set(metrics) == {"progress.dedup_signing.docs_per_s", "progress.dedup_signing.bytes_per_s"}
    assert metrics["progress.dedup_signing.docs_per_s"] > 0
    final, _ = tracker.calls[-1]
    assert "progress.dedup_signing.seconds" in final


def test_default_interval_gives_one_line_at_the_end(caplog):
    caplog.set_level(logging.INFO, logger="electra_ds.progress")
    p = Progress("shards", total_bytes=10_000, stream=io.StringIO())
    for _ in range(1000):
        p.update(1, 10)
    assert p.eta() is not None and p.eta() < 5  # done: the ETA on bytes is about zero
    p.close()
    p.close()  # twice is fine
    lines = progress_lines(caplog)
    assert len(lines) == 1 and "done, 1.0k docs" in lines[0]


def test_bar_in_a_terminal_and_off(caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="electra_ds.progress")
    term = Terminal()
    with Progress("finetune rte seed 1", total=10, unit="steps", bytes_unit="examples", stream=term) as p:
        for _ in range(10):
            p.update(1, 32)
    assert "finetune rte seed 1" in term.getvalue() and "10/10" in term.getvalue()
    assert "320 examples" in term.getvalue() and progress_lines(caplog) == []
    monkeypatch.setenv("ELECTRA_DS_PROGRESS", "off")
    quiet = Terminal()
    with Progress("x", total=3, stream=quiet) as p:
        p.update(3)
    assert quiet.getvalue() == "" and progress_lines(caplog) == []


def test_heartbeat_and_failure(caplog):
    caplog.set_level(logging.INFO, logger="electra_ds.progress")
    with Progress("vocab: training", heartbeat=True, seconds=0.05, stream=io.StringIO()):
        time.sleep(1.3)
    lines = progress_lines(caplog)
    assert lines[0].startswith("vocab: training: running for") and lines[-1].startswith("vocab: training: done in")
    caplog.clear()
    with pytest.raises(ValueError):
        with Progress("failing", stream=io.StringIO()) as p:
            p.update(1)
            raise ValueError("boom")
    assert progress_lines(caplog) == []  # no "done" for work that failed


def test_formats_and_file_sizes(tmp_path):
    assert progress.format_count(1234567) == "1.2M" and progress.format_count(12) == "12"
    assert progress.format_bytes(3 * 1024 ** 3) == "3.0 GiB" and progress.format_bytes(100) == "100 B"
    assert progress.format_seconds(3725) == "1h02m" and progress.format_seconds(75) == "1m15s"
    plain, packed = tmp_path / "docs.jsonl", tmp_path / "docs.jsonl.gz"
    records = [{"id": i, "text": "é" * i} for i in range(1, 4)]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    plain.write_text(text, encoding="utf-8")
    packed.write_bytes(gzip.compress(text.encode("utf-8")))
    assert progress.file_bytes(plain) == len(text.encode("utf-8")) and progress.file_bytes(packed) is None
    p = Progress("read", stream=io.StringIO())
    assert list(progress.read_jsonl(packed, p)) == records and p.done == 3 and p.bytes == len(text.encode("utf-8"))


def test_a_data_stage_logs_a_few_progress_lines(tmp_path, caplog):
    """The corpus stage over 3 sources: one progress line per source (the default interval never fires here)."""
    from electra_ds.data.corpus import build_documents, parse_sources

    for i in range(3):
        (tmp_path / f"s{i}.txt").write_text("\n".join(f"line {i} {j} of some text" for j in range(200)))
    sources = parse_sources(json.dumps([{"type": "local", "paths": [str(tmp_path / f"s{i}.txt")],
                                         "documents": "line", "name": f"s{i}"} for i in range(3)]))
    caplog.set_level(logging.INFO)
    tracker = Tracker()
    docs = list(build_documents(sources, {}, tracker=tracker))
    assert len(docs) == 600
    lines = [r.getMessage() for r in caplog.records if "corpus: source" in r.getMessage()]
    assert len(lines) == 3 and lines[0].startswith("corpus: source s0: done, 200 docs")
    assert len(caplog.records) <= 8
    assert any("progress.corpus_source_s2.docs_per_s" in m for m, _ in tracker.calls)
