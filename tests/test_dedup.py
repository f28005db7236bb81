"""Dedup stage: exact duplicates by normalised-text hash, first occurrence kept, counts reported."""

from __future__ import annotations

import json

from electra_ds.dedup import exact_dedup, normalise_for_hash
from electra_ds.fileio import write_jsonl
from helpers_data import cli, cli_error, demo_documents, leftovers, read_records


def test_normalise_for_hash_ignores_case_and_whitespace_only():
    assert normalise_for_hash("  Hello\n\tWORLD  ") == normalise_for_hash("hello world")
    assert normalise_for_hash("Straße") == normalise_for_hash("STRASSE")  # casefold, not lower
    assert normalise_for_hash("hello, world") != normalise_for_hash("hello world")


def test_exact_dedup_keeps_first_occurrence_in_order():
    records = [{"id": "a", "text": "One two."}, {"id": "b", "text": "Other."}, {"id": "c", "text": "one  TWO."},
               {"id": "d", "text": "Other!"}, {"id": "e", "text": "other."}]
    stats = {}
    kept = list(exact_dedup(records, stats))
    assert [r["id"] for r in kept] == ["a", "b", "d"]
    assert stats == {"exact_duplicates_removed": 2, "bytes_removed": len("one  TWO.") + len("other.")}


def test_exact_dedup_streams():
    consumed = []

    def source():
        for i in range(10**9):
            consumed.append(i)
            yield {"id": str(i), "text": f"text {i % 3}"}

    it = exact_dedup(source())
    assert [next(it)["id"] for _ in range(3)] == ["0", "1", "2"]
    assert len(consumed) == 3  # lazily pulls only what it needs


def test_cli_counts_and_output(tmp_path):
    docs = [{"id": f"d{i}", "text": t, "source": "s"} for i, t in
            enumerate(["Alpha text.", "beta", "ALPHA   text.", "gamma", "Beta"])]
    write_jsonl(tmp_path / "in.jsonl.gz", docs)
    assert cli("dedup", "--input", tmp_path / "in.jsonl.gz", "--output", tmp_path / "out.jsonl",
               "--stats", tmp_path / "stats.json") == 0
    assert read_records(tmp_path / "out.jsonl") == [docs[0], docs[1], docs[3]]
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats == {"documents_in": 5, "documents_out": 3, "exact_duplicates_removed": 2,
                     "bytes_removed": len("ALPHA   text.") + len("Beta")}


def test_demo_corpus_has_duplicates_and_output_has_none(tmp_path):
    kept = read_records(demo_documents())  # already deduplicated by the cached pipeline
    stats = json.loads((demo_documents().parent / "demo_dedup.json").read_text())
    assert stats["exact_duplicates_removed"] > 0  # stdlib docstrings repeat (e.g. copied methods)
    assert stats["documents_out"] == len(kept) == stats["documents_in"] - stats["exact_duplicates_removed"]
    hashes = {normalise_for_hash(r["text"]) for r in kept}
    assert len(hashes) == len(kept)
    # and deduplicating again removes nothing
    assert cli("dedup", "--input", demo_documents(), "--output", tmp_path / "again.jsonl",
               "--stats", tmp_path / "again.json") == 0
    assert json.loads((tmp_path / "again.json").read_text())["exact_duplicates_removed"] == 0


def test_missing_input_is_a_user_error(tmp_path, capsys):
    missing = tmp_path / "nope.jsonl"
    msg = cli_error(capsys, "dedup", "--input", missing, "--output", tmp_path / "out.jsonl",
                    "--stats", tmp_path / "stats.json")
    assert str(missing) in msg and "corpus stage" in msg
    assert not (tmp_path / "out.jsonl").exists() and not (tmp_path / "stats.json").exists()


def test_records_without_text_are_a_user_error(tmp_path, capsys):
    (tmp_path / "in.jsonl").write_text(json.dumps({"id": "x", "body": "no text"}) + "\n")
    msg = cli_error(capsys, "dedup", "--input", tmp_path / "in.jsonl", "--output", tmp_path / "out.jsonl",
                    "--stats", tmp_path / "stats.json")
    assert str(tmp_path / "in.jsonl") in msg and "document 1" in msg and "'text'" in msg
    assert not (tmp_path / "out.jsonl").exists() and leftovers(tmp_path) == []
