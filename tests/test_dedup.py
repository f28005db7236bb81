"""Dedup stage: exact duplicates by normalised-text hash, then MinHash-LSH near-duplicates; the first
document of a cluster is kept; counts and a report go to the stats file (and MLflow)."""

from __future__ import annotations

import json

from helpers import cli, cli_error
from helpers_data import demo_documents, leftovers, read_records

from electra_ds.common.fileio import write_jsonl
from electra_ds.data.dedup import exact_dedup, normalise_for_hash


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
    assert {k: stats[k] for k in ("documents_in", "documents_out", "exact_duplicates_removed",
                                  "near_duplicates_removed", "bytes_removed")} == {
        "documents_in": 5, "documents_out": 3, "exact_duplicates_removed": 2, "near_duplicates_removed": 0,
        "bytes_removed": len("ALPHA   text.") + len("Beta")}


def test_demo_corpus_has_duplicates_and_output_has_none(tmp_path):
    kept = read_records(demo_documents())  # already deduplicated by the cached pipeline
    stats = json.loads((demo_documents().parent / "demo_dedup.json").read_text())
    assert stats["exact_duplicates_removed"] > 0  # stdlib docstrings repeat (e.g. copied methods)
    assert stats["near_duplicates_removed"] > 0  # e.g. overloads documented with one changed word
    assert stats["documents_out"] == len(kept) == (stats["documents_in"] - stats["exact_duplicates_removed"]
                                                   - stats["near_duplicates_removed"])
    hashes = {normalise_for_hash(r["text"]) for r in kept}
    assert len(hashes) == len(kept)
    # and deduplicating again removes nothing
    assert cli("dedup", "--input", demo_documents(), "--output", tmp_path / "again.jsonl",
               "--stats", tmp_path / "again.json") == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["exact_duplicates_removed"] == again["near_duplicates_removed"] == 0


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


# -- near-duplicates ------------------------------------------------------------------------
def _near_docs():
    """Eight distinct paragraphs; d8 is d1 with one word changed, d9 is d3 with most words changed."""
    books = [r for r in read_records(demo_documents()) if len(r["text"].split()) > 120][:8]
    docs = [{"id": f"d{i}", "text": r["text"], "source": "s"} for i, r in enumerate(books)]
    words = docs[1]["text"].split()
    docs.append({"id": "d8", "text": " ".join(words[:60] + ["CHANGED"] + words[61:]), "source": "s"})
    other = docs[3]["text"].split()
    docs.append({"id": "d9", "text": " ".join(w if i % 2 else "x" for i, w in enumerate(other)), "source": "s"})
    return docs


def dedup(tmp_path, docs, *extra, name="out"):
    write_jsonl(tmp_path / "in.jsonl", docs)
    assert cli("dedup", "--input", tmp_path / "in.jsonl", "--output", tmp_path / f"{name}.jsonl",
               "--stats", tmp_path / f"{name}.json", *extra) == 0
    return read_records(tmp_path / f"{name}.jsonl"), json.loads((tmp_path / f"{name}.json").read_text())


def test_near_duplicates_removed_with_report(tmp_path):
    docs = _near_docs()
    kept, stats = dedup(tmp_path, docs, "--threads", 1)
    assert [r["id"] for r in kept] == [f"d{i}" for i in range(8)] + ["d9"]
    assert kept == [d for d in docs if d["id"] != "d8"]  # lines copied unchanged
    assert stats["near_duplicates_removed"] == 1 and stats["bytes_removed"] == len(docs[8]["text"].encode())
    near = stats["near"]
    assert near["clusters"] == 1 and near["cluster_sizes"] == {"2": 1} and near["verified_pairs"] == 1
    assert near["settings"]["num_perm"] == 128 and near["settings"]["bands"] * near["settings"]["rows"] <= 128
    (pair,) = near["sample_removed_pairs"]
    assert (pair["kept_id"], pair["removed_id"]) == ("d1", "d8")
    assert pair["true_jaccard"] > 0.9 and abs(pair["estimated_jaccard"] - pair["true_jaccard"]) < 0.1
    # near-dup off keeps it; parallel workers give the same bytes as one
    kept_off, stats_off = dedup(tmp_path, docs, "--no-near", name="off")
    assert len(kept_off) == 10 and stats_off["near_duplicates_removed"] == 0
    dedup(tmp_path, docs, "--threads", 2, name="two")
    assert (tmp_path / "two.jsonl").read_bytes() == (tmp_path / "out.jsonl").read_bytes()
    # a lower threshold catches the heavily edited copy as well: char shingles too
    kept_low, _ = dedup(tmp_path, docs, "--shingle", "char", "--ngram", 5, "--threshold", 0.3, name="low")
    assert "d8" not in {r["id"] for r in kept_low}


def test_scatter_gather_equals_one_job(tmp_path):
    docs = _near_docs() + [{"id": "dup", "text": _near_docs()[2]["text"].upper(), "source": "s"}]
    kept, stats = dedup(tmp_path, docs)
    import gzip

    write_jsonl(tmp_path / "p0.jsonl", docs[:5])
    write_jsonl(tmp_path / "p1.jsonl.gz", docs[5:])
    for part in ("p0.jsonl", "p1.jsonl.gz"):
        assert cli("dedup", "--sign-only", "--input", tmp_path / part, "--output", tmp_path / f"sig-{part}") == 0
        assert (tmp_path / f"sig-{part}" / "meta.json").is_file()
    assert cli("dedup", "--input", tmp_path / "p0.jsonl", tmp_path / "p1.jsonl.gz", "--signatures",
               tmp_path / "sig-p0.jsonl", tmp_path / "sig-p1.jsonl.gz", "--output", tmp_path / "gathered.jsonl",
               "--stats", tmp_path / "gathered.json") == 0
    assert (tmp_path / "gathered.jsonl").read_bytes() == (tmp_path / "out.jsonl").read_bytes()
    gathered = json.loads((tmp_path / "gathered.json").read_text())
    assert gathered["exact_duplicates_removed"] == stats["exact_duplicates_removed"] == 1
    assert gathered["near_duplicates_removed"] == stats["near_duplicates_removed"] == 1
    assert gzip.open(tmp_path / "p1.jsonl.gz").read()  # the part is untouched


def test_signatures_with_other_settings_are_rejected(tmp_path, capsys):
    write_jsonl(tmp_path / "p0.jsonl", _near_docs())
    assert cli("dedup", "--sign-only", "--input", tmp_path / "p0.jsonl", "--output", tmp_path / "sig") == 0
    msg = cli_error(capsys, "dedup", "--input", tmp_path / "p0.jsonl", "--signatures", tmp_path / "sig",
                    "--num-perm", 64, "--output", tmp_path / "out.jsonl", "--stats", tmp_path / "s.json")
    assert str(tmp_path / "sig") in msg and "other settings" in msg and "Fix:" in msg
    assert not (tmp_path / "out.jsonl").exists() and leftovers(tmp_path) == []


def test_zstd_input_and_bad_json_line(tmp_path, capsys):
    import zstandard

    lines = "".join(json.dumps(d) + "\n" for d in _near_docs())
    (tmp_path / "in.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))
    assert cli("dedup", "--input", tmp_path / "in.jsonl.zst", "--output", tmp_path / "out.jsonl",
               "--stats", tmp_path / "s.json") == 0
    assert len(read_records(tmp_path / "out.jsonl")) == 9
    (tmp_path / "bad.jsonl").write_text(lines + '{"id": "x", "text": \n')
    msg = cli_error(capsys, "dedup", "--input", tmp_path / "bad.jsonl", "--output", tmp_path / "o2.jsonl",
                    "--stats", tmp_path / "s2.json")
    assert str(tmp_path / "bad.jsonl") in msg and "document 11 is not valid JSON" in msg
    assert not (tmp_path / "o2.jsonl").exists() and leftovers(tmp_path) == []


def test_tracker_gets_the_report(tmp_path):
    logged = {}

    class Tracker:
        def log_params(self, p): logged["params"] = p
        def log_metrics(self, m, step=None): logged.update(m)
        def log_artifact(self, path): logged["artifact"] = str(path)

    from electra_ds.cli import build_parser
    from electra_ds.data import dedup as stage

    write_jsonl(tmp_path / "in.jsonl", _near_docs())
    args = build_parser().parse_args(["dedup", "--input", str(tmp_path / "in.jsonl"), "--output",
                                      str(tmp_path / "o.jsonl"), "--stats", str(tmp_path / "s.json")])
    stage.run(args, Tracker())
    assert logged["near_duplicates_removed"] == 1 and logged["near"]["sample_removed_pairs"]
    assert logged["params"]["near"]["threshold"] == 0.8 and logged["artifact"].endswith("s.json")
