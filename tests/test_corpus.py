"""Corpus stage: normalisation, the demo / local / hf sources, and clear failures on bad input."""

from __future__ import annotations

import gzip
import itertools
import json
import re
import time

import pytest
from helpers import cli, cli_error, direct_network, refuse_connections
from helpers_data import demo_documents, gutenberg_files, leftovers, read_records

from electra_ds.common.errors import UserError
from electra_ds.data import corpus, readers, sources
from electra_ds.data.text import normalise_text, split_sentences


def run_corpus(tmp_path, sources, *extra):
    out, stats = tmp_path / "docs.jsonl", tmp_path / "stats.json"
    # tiny documents throughout: --min-chars 1 instead of the schema's 200 (an argument in extra wins)
    rc = cli("corpus", "--sources", json.dumps(sources), "--output", out, "--stats", stats, "--min-chars", "1", *extra)
    return rc, out, stats


def local(paths, **kw):
    return [{"type": "local", "paths": [str(p) for p in paths], **kw}]


# -- normalisation ------------------------------------------------------------------------
def test_normalise_text_line_ends_controls_nfc_and_spaces():
    raw = "\ufeffCafe\u0301 au lait  \r\nline two\x00\x07\tend\rthird \x1b[0m\n\n  "
    assert normalise_text(raw) == "Caf\u00e9 au lait\nline two\tend\nthird [0m"
    assert normalise_text(" \r\n\t ") == ""


def test_split_sentences_keeps_short_lines_and_cuts_long_ones_at_sentence_ends():
    long_line = " ".join(f"Sentence number {i} is here." for i in range(40))
    out = split_sentences(f"short line\n\n  {long_line}\nlast")
    assert out[0] == "short line" and out[-1] == "last"
    assert len(out) == 42 and out[1] == "Sentence number 0 is here."
    assert " ".join(out[1:-1]) == long_line  # nothing lost


# -- demo source ------------------------------------------------------------------------------
def test_demo_source_is_real_prose_and_deterministic(tmp_path):
    rc, out, stats = run_corpus(tmp_path, [{"type": "demo"}])
    assert rc == 0
    records = read_records(out)
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)) > 1000
    assert any(i.startswith("demo/topic/") for i in ids) and any(i.startswith("demo/doc/") for i in ids)
    assert all(set(r) == {"id", "text", "source"} and r["source"] == "demo" for r in records)
    assert "demo/doc/json/__init__.py:dumps" in ids
    assert not any("/test/" in i or "idlelib" in i or "tkinter" in i for i in ids)
    total = json.loads(stats.read_text())["total"]
    assert total["documents_out"] == len(records) and total["bytes_out"] > 1_000_000
    # a second run (here: the cached one, built with --min-chars 200) gives the same documents
    kept = {r["id"]: r["text"] for r in read_records(demo_documents())}
    assert all(kept[r["id"]] == r["text"] for r in records if r["id"] in kept)


# -- local sources ----------------------------------------------------------------------------
def test_local_txt_crlf_bom_and_document_modes(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "b.txt").write_bytes("\ufeffFirst paragraph,\r\nsecond line.\r\n\r\nSecond paragraph.\r\n".encode())
    (data / "a.txt").write_bytes(b"Alpha.\n")
    rc, out, _ = run_corpus(tmp_path, local([data / "*.txt"]))
    assert rc == 0
    records = read_records(out)
    assert [r["id"] for r in records] == ["local:data/a.txt", "local:data/b.txt"]  # sorted, moved-data-proof
    assert records[1]["text"] == "First paragraph,\nsecond line.\n\nSecond paragraph."
    rc, out, _ = run_corpus(tmp_path, local([data / "b.txt"], documents="paragraph"))
    assert [(r["id"], r["text"]) for r in read_records(out)] == [
        ("local:data/b.txt:p1", "First paragraph,\nsecond line."), ("local:data/b.txt:p2", "Second paragraph.")]
    rc, out, _ = run_corpus(tmp_path, local([data / "b.txt"], documents="line"))
    assert [r["id"] for r in read_records(out)] == ["local:data/b.txt:1", "local:data/b.txt:2",
                                                   "local:data/b.txt:4"]


def test_local_jsonl_gzip_and_parquet(tmp_path):
    with gzip.open(tmp_path / "part.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps({"body": "from gzip"}) + "\n\n" + json.dumps({"body": "second"}) + "\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["from parquet", None, "third"]}), tmp_path / "part.parquet")
    rc, out, stats = run_corpus(tmp_path, local([tmp_path / "part.*"], text_field="body"))
    assert rc == 0
    got = [(r["id"].split("/")[-1], r["text"]) for r in read_records(out)]
    assert got == [("part.jsonl.gz:1", "from gzip"), ("part.jsonl.gz:3", "second"),
                   ("part.parquet:1", "from parquet"), ("part.parquet:3", "third")]
    assert json.loads(stats.read_text())["total"]["too_short"] == 1  # the null row


def test_min_and_max_chars_are_counted(tmp_path):
    (tmp_path / "docs.jsonl.in").write_text("".join(json.dumps({"text": "x" * n}) + "\n" for n in (3, 10, 50)))
    rc, out, stats = run_corpus(tmp_path, local([tmp_path / "docs.jsonl.in"], format="jsonl"),
                                "--min-chars", 5, "--max-chars", 20)
    assert rc == 0 and [len(r["text"]) for r in read_records(out)] == [10]
    total = json.loads(stats.read_text())["total"]
    assert (total["documents_in"], total["too_short"], total["too_long"], total["documents_out"]) == (3, 1, 1, 1)


def test_gutenberg_books_with_headers_stripped(tmp_path):
    books = gutenberg_files()[:3]
    rc, out, stats = run_corpus(tmp_path, local(books, strip_gutenberg=True))
    assert rc == 0
    records = read_records(out)
    assert len(records) == 3
    for record in records:
        text = record["text"]
        assert "\r" not in text and "\ufeff" not in text and len(text) > 10_000
        assert "START OF THE PROJECT GUTENBERG" not in text.upper()
        assert "*** END OF" not in text.upper()
    total = json.loads(stats.read_text())["total"]
    assert total["bytes_out"] < sum(p.stat().st_size for p in books)
    # paragraph mode streams the same stripped text, one blank-line-separated paragraph per document
    rc, out, _ = run_corpus(tmp_path, local(books[:1], strip_gutenberg=True, documents="paragraph"), "--min-chars", 1)
    paragraphs = read_records(out)
    assert rc == 0 and len(paragraphs) > 100 and paragraphs[0]["id"].endswith(":p1")
    assert " ".join(" ".join(p["text"] for p in paragraphs).split()) == " ".join(records[0]["text"].split())


def test_tracker_gets_counts(tmp_path):
    logged = {}

    class Tracker:
        def log_params(self, p): logged.update(p)
        def log_metrics(self, m, step=None): logged.update(m)
        def log_artifact(self, path): logged["artifact"] = str(path)

    (tmp_path / "a.txt").write_text("Some text.")
    from electra_ds.cli import build_parser

    args = build_parser().parse_args(["corpus", "--sources", json.dumps(local([tmp_path / "a.txt"])),
                                      "--output", str(tmp_path / "o.jsonl"), "--stats", str(tmp_path / "s.json"),
                                      "--min-chars", "1"])
    corpus.run(args, Tracker())
    assert logged["documents_in"] == logged["documents_out"] == 1 and logged["bytes_out"] == 10
    assert "local" in logged["sources"] and logged["artifact"].endswith("s.json")


# -- bad input ------------------------------------------------------------------------------
def assert_no_output(tmp_path):
    assert not (tmp_path / "docs.jsonl").exists() and not (tmp_path / "stats.json").exists()
    assert leftovers(tmp_path) == []


def test_missing_path_is_a_user_error(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "*.txt"
    msg = cli_error(capsys, "corpus", "--sources", json.dumps(local([missing])), "--output", tmp_path / "docs.jsonl",
                    "--stats", tmp_path / "stats.json")
    assert str(missing) in msg and "corpus.sources[0].paths" in msg and "Fix:" in msg
    assert_no_output(tmp_path)


def test_empty_corpus_is_a_user_error(tmp_path, capsys):
    (tmp_path / "blank.txt").write_text(" \r\n\r\n\t\n")
    msg = cli_error(capsys, "corpus", "--sources", json.dumps(local([tmp_path / "blank.txt"])),
                    "--output", tmp_path / "docs.jsonl", "--stats", tmp_path / "stats.json")
    assert "corpus is empty after normalisation" in msg and "too_short" in msg
    assert_no_output(tmp_path)


def test_non_utf8_fail_replace_skip(tmp_path, capsys):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("Good line.\n".encode() + "caf\u00e9 cr\u00e8me\n".encode("latin-1"))
    (tmp_path / "ok.txt").write_text("A fine document.")
    sources = json.dumps(local([bad, tmp_path / "ok.txt"]))
    args = ("corpus", "--sources", sources, "--output", tmp_path / "docs.jsonl", "--stats", tmp_path / "stats.json",
            "--min-chars", "1")
    msg = cli_error(capsys, *args)
    assert str(bad) in msg and "byte offset 14" in msg and "on_decode_error: replace" in msg
    assert_no_output(tmp_path)

    assert cli(*args, "--on-decode-error", "replace") == 0
    texts = [r["text"] for r in read_records(tmp_path / "docs.jsonl")]
    assert texts == ["Good line.\ncaf\ufffd cr\ufffdme", "A fine document."]
    assert json.loads((tmp_path / "stats.json").read_text())["total"]["decode_errors"] == 1

    assert cli(*args, "--on-decode-error", "skip") == 0
    assert [r["text"] for r in read_records(tmp_path / "docs.jsonl")] == ["A fine document."]
    total = json.loads((tmp_path / "stats.json").read_text())["total"]
    assert (total["decode_errors"], total["documents_in"], total["documents_out"]) == (1, 2, 1)


def test_non_utf8_jsonl_line_names_line_and_offset(tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "\xff"}\n')
    msg = cli_error(capsys, "corpus", "--sources", json.dumps(local([path])), "--output", tmp_path / "docs.jsonl",
                    "--stats", tmp_path / "stats.json")
    assert str(path) in msg and "line 2" in msg and "byte offset 25" in msg
    assert_no_output(tmp_path)


def test_jsonl_missing_text_field_names_file_line_and_field(tmp_path, capsys):
    path = tmp_path / "docs.jsonl.in"
    path.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"content": "no text field"}) + "\n")
    msg = cli_error(capsys, "corpus", "--sources", json.dumps(local([path], format="jsonl")),
                    "--output", tmp_path / "docs.jsonl", "--stats", tmp_path / "stats.json")
    assert f"{path}:2" in msg and "field 'text'" in msg and "missing" in msg
    assert_no_output(tmp_path)


def test_unknown_source_key_is_rejected(tmp_path, capsys):
    msg = cli_error(capsys, "corpus", "--sources", json.dumps([{"type": "local", "path": ["x"]}]),
                    "--output", tmp_path / "docs.jsonl", "--stats", tmp_path / "stats.json")
    assert "corpus.sources[0]" in msg and "'path'" in msg
    assert_no_output(tmp_path)


def test_unknown_source_type_is_rejected_naming_the_types():
    """The command line's schema check refuses these first; parse_sources refuses them for any other caller."""
    for bad in ({"type": "ftp"}, {"type": ["local"]}, "demo"):
        with pytest.raises(UserError, match=re.escape("type must be demo, local, url or hf")) as caught:
            corpus.parse_sources([bad])
        assert "corpus.sources[0]" in str(caught.value) and "unknown source" in str(caught.value)


# -- the source table ---------------------------------------------------------------------------
def test_the_schema_and_the_source_table_name_the_same_types_keys_and_choices():
    """The schema is the user's contract, the table is what the stage reads: a source type is a class in
    electra_ds/data/sources.py plus its schema entry, and the two must say the same."""
    from electra_ds.common import settings

    items = settings.node("corpus", "sources")["items"]
    assert items["properties"]["type"]["enum"] == list(sources.SOURCES)
    per_type = {rule["if"]["properties"]["type"]["const"]: rule["then"] for rule in items["allOf"]}
    assert set(per_type) == set(sources.SOURCES)
    for name, cls in sources.SOURCES.items():
        entry = per_type[name]
        assert set(entry["properties"]) == set(cls.keys), name
        assert set(entry.get("required", [])) == set(cls.required), name
        enums = {key: tuple(spec["enum"]) for key, spec in entry["properties"].items() if "enum" in spec}
        assert enums == cls.choices, name


def test_a_new_source_type_is_one_class_in_the_table(tmp_path, monkeypatch):
    """The stage reads sources only through the table: a class registered there is checked, labelled, counted
    and read with no other change."""

    class Echo(sources.Source):
        type = "echo"
        keys = ("type", "name", "texts")
        required = ("texts",)

        def documents(self, stats, *, on_decode_error, max_chars, cache_dir):
            return ((f"echo:{i}", text) for i, text in enumerate(self.config["texts"]))

    monkeypatch.setitem(sources.SOURCES, "echo", Echo)
    (tmp_path / "a.txt").write_text("Local text.")
    parsed = corpus.parse_sources(json.dumps([{"type": "echo", "texts": ["One.", " ", "Two."]},
                                              *local([tmp_path / "a.txt"])]))
    corpus.preflight(parsed)
    stats: dict = {}
    records = list(corpus.build_documents(parsed, stats))
    assert [(r["id"], r["text"], r["source"]) for r in records] == [
        ("echo:0", "One.", "echo"), ("echo:2", "Two.", "echo"), ("local:" + tmp_path.name + "/a.txt", "Local text.",
                                                                 "local")]
    assert (stats["echo"]["documents_in"], stats["echo"]["too_short"]) == (3, 1)
    for bad, words in (({"type": "echo"}, "a echo source needs `texts`"),
                       ({"type": "echo", "texts": ["x"], "paths": []}, "unknown key(s) ['paths'] for a echo source")):
        with pytest.raises(UserError, match=re.escape(words)):
            corpus.parse_sources([bad])


def test_hf_source_fails_fast_when_offline(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sources = json.dumps([{"type": "hf", "name": "some/dataset"}])
    start = time.perf_counter()
    msg = cli_error(capsys, "corpus", "--sources", sources, "--output", tmp_path / "docs.jsonl",
                    "--stats", tmp_path / "stats.json")
    assert time.perf_counter() - start < 5
    assert "source some/dataset" in msg and "unreachable" in msg and "HF_HUB_OFFLINE" in msg
    assert "local source" in msg
    assert_no_output(tmp_path)


def test_hf_source_fails_fast_without_a_connection(tmp_path, capsys, monkeypatch):
    import socket

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)

    direct_network(monkeypatch)

    def refuse(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    msg = cli_error(capsys, "corpus", "--sources", json.dumps([{"type": "hf", "name": "some/dataset"}]),
                    "--output", tmp_path / "docs.jsonl", "--stats", tmp_path / "stats.json")
    assert "unreachable" in msg and "cannot reach huggingface.co:443" in msg
    assert_no_output(tmp_path)


def test_hf_source_checks_the_mirror_hf_endpoint_names(tmp_path, capsys, monkeypatch):
    """With HF_ENDPOINT (a mirror or a private Hub) the check asks that host, as huggingface_hub will, not
    huggingface.co."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    direct_network(monkeypatch)
    monkeypatch.setenv("HF_ENDPOINT", "http://hf-mirror.internal:8080")
    asked = refuse_connections(monkeypatch, "connection refused")
    msg = cli_error(capsys, "corpus", "--sources", json.dumps([{"type": "hf", "name": "some/dataset"}]),
                    "--output", tmp_path / "docs.jsonl", "--stats", tmp_path / "stats.json")
    assert asked == [("hf-mirror.internal", 8080)]
    assert "cannot reach hf-mirror.internal:8080" in msg
    assert_no_output(tmp_path)


# -- compressed files, streaming, per-rule counts ----------------------------------------------
def test_zstd_and_gzip_txt_and_jsonl(tmp_path):
    import zstandard

    (tmp_path / "a.txt.zst").write_bytes(zstandard.ZstdCompressor().compress("Zstd text,\r\nline two.".encode()))
    with gzip.open(tmp_path / "b.txt.gz", "wb") as f:
        f.write(b"Gzip text.")
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(
        (json.dumps({"text": "zstd json"}) + "\n").encode()))
    rc, out, _ = run_corpus(tmp_path, local([tmp_path / "a.txt.zst", tmp_path / "b.txt.gz", tmp_path / "c.jsonl.zst"]))
    assert rc == 0
    assert [(r["id"].split("/")[-1], r["text"]) for r in read_records(out)] == [
        ("a.txt.zst", "Zstd text,\nline two."), ("b.txt.gz", "Gzip text."), ("c.jsonl.zst:1", "zstd json")]


def test_every_mode_streams_across_blocks_with_crlf(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "READ_BLOCK", 7)  # CRLF pairs and multi-byte characters split across reads
    text = "\ufeffone \u00e9t\u00e9\r\ntwo\r\rfour line\r\n\r\nsix\n"
    (tmp_path / "t.txt").write_bytes(text.encode())
    expected = {"line": [("1", "one \u00e9t\u00e9"), ("2", "two"), ("4", "four line"), ("6", "six")],
                "paragraph": [("p1", "one \u00e9t\u00e9\ntwo"), ("p2", "four line"), ("p3", "six")],
                "file": [("t.txt", "one \u00e9t\u00e9\ntwo\n\nfour line\n\nsix")]}
    for mode, want in expected.items():
        rc, out, _ = run_corpus(tmp_path, local([tmp_path / "t.txt"], documents=mode))
        assert rc == 0
        assert [(r["id"].rsplit(":", 1)[-1].rsplit("/", 1)[-1], r["text"]) for r in read_records(out)] == want


def test_fifty_megabyte_line_dropped_by_max_chars_without_reading_it_into_memory(tmp_path):
    import tracemalloc

    big = tmp_path / "big.txt"
    with open(big, "wb") as f:
        f.write(b"A short line first.\n\n")
        for _ in range(50):
            f.write(b"word " * 209_715)  # 50 MiB, no newline
    with open(tmp_path / "big.jsonl", "wb") as f:  # one 50 MB JSON line, then a small one
        f.write(b'{"text": "' + b"word " * 10_485_760 + b'"}\n{"text": "A small record."}\n')
    (tmp_path / "small.txt").write_text("A small file.")
    expected = {"line": ["A short line first.", "A small file."], "paragraph": ["A short line first.", "A small file."],
                "file": ["A small file."]}
    tracemalloc.start()
    try:
        for (mode, kept), gutenberg in itertools.product(expected.items(), (False, True)):
            rc, out, stats = run_corpus(tmp_path, local([big, tmp_path / "small.txt"], documents=mode,
                                                        strip_gutenberg=gutenberg), "--max-chars", 100_000)
            assert rc == 0 and [r["text"] for r in read_records(out)] == kept, (mode, gutenberg)
            assert json.loads(stats.read_text())["total"]["too_long"] == 1
        rc, out, stats = run_corpus(tmp_path, local([tmp_path / "big.jsonl"]), "--max-chars", 100_000)
        assert rc == 0 and [r["text"] for r in read_records(out)] == ["A small record."]
        assert json.loads(stats.read_text())["total"]["too_long"] == 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 30 * 2**20  # blocks of 1 MiB, never the 50 MB line


def test_fifty_megabyte_line_kept_without_a_limit(tmp_path):
    big = tmp_path / "big.txt"
    big.write_bytes(b"word " * 10_485_760)  # 50 MiB, one line, no newline
    rc, out, stats = run_corpus(tmp_path, local([big], documents="line"))
    assert rc == 0
    (record,) = read_records(out)
    assert len(record["text"]) == 50 * 2**20 - 1 and record["id"].endswith("big.txt:1")


def test_binary_file_fails_clearly_or_is_skipped_and_counted(tmp_path, capsys):
    (tmp_path / "ok.txt").write_text("A fine document.")
    (tmp_path / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 10)
    sources = json.dumps(local([tmp_path / "image.txt", tmp_path / "ok.txt"]))
    args = ("corpus", "--sources", sources, "--output", tmp_path / "docs.jsonl", "--stats", tmp_path / "stats.json",
            "--min-chars", "1")
    msg = cli_error(capsys, *args)
    assert str(tmp_path / "image.txt") in msg and "binary" in msg and "on_decode_error: skip" in msg
    assert_no_output(tmp_path)
    assert cli(*args, "--on-decode-error", "skip") == 0
    assert [r["text"] for r in read_records(tmp_path / "docs.jsonl")] == ["A fine document."]
    total = json.loads((tmp_path / "stats.json").read_text())["total"]
    assert (total["binary_files"], total["documents_in"], total["documents_out"]) == (1, 1, 1)


def test_per_rule_counts_on_gutenberg_and_controls(tmp_path):
    book = gutenberg_files()[0]
    (tmp_path / "ctl.txt").write_text("tab\there\x07\x1b and trailing   \nCafe\u0301")
    rc, out, stats = run_corpus(tmp_path, local([book], strip_gutenberg=True) + local([tmp_path / "ctl.txt"]))
    assert rc == 0
    per = json.loads(stats.read_text())["sources"]
    g, c = per["local"], per["local-1"]
    assert g["gutenberg_documents"] == 1 and g["removed_gutenberg_header_chars"] > 300
    assert g["removed_gutenberg_footer_chars"] > 10_000  # the licence
    assert (c["removed_control_chars"], c["removed_trailing_space_chars"], c["nfc_changed_documents"]) == (2, 3, 1)


def test_empty_documents_are_counted_not_written(tmp_path):
    (tmp_path / "docs.jsonl.in").write_text("".join(json.dumps({"text": t}) + "\n" for t in ("", " \n\t", "kept")))
    rc, out, stats = run_corpus(tmp_path, local([tmp_path / "docs.jsonl.in"], format="jsonl"))
    assert rc == 0 and [r["text"] for r in read_records(out)] == ["kept"]
    assert json.loads(stats.read_text())["total"]["too_short"] == 2


# -- url sources (a local HTTP server; never the web) -------------------------------------------
class _Server:
    """A threaded HTTP server on 127.0.0.1 serving ``files`` with Range support; records Range headers."""

    def __init__(self, files: dict[str, bytes]):
        import http.server
        import threading

        ranges = self.ranges = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                data = files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if self.headers.get("Range"):
                    ranges.append(self.headers["Range"])
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_error(416)
                        return
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                self.wfile.write(data[start:])

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_url_source_downloads_verifies_resumes_and_caches(tmp_path):
    import hashlib

    book = gutenberg_files()[0].read_bytes()
    digest = hashlib.sha256(book).hexdigest()
    server = _Server({"/books/pg11.txt": book})
    try:
        src = [{"type": "url", "url": f"{server.url}/books/pg11.txt", "sha256": digest, "strip_gutenberg": True}]
        downloads = tmp_path / "downloads"
        part = downloads / f"{digest[:12]}-pg11.txt.part"
        downloads.mkdir()
        part.write_bytes(book[:50_000])  # an interrupted earlier download
        rc, out, _ = run_corpus(tmp_path, src)
        assert rc == 0 and server.ranges == ["bytes=50000-"]
        (record,) = read_records(out)
        assert record["id"] == "url:pg11.txt" and "START OF THE PROJECT" not in record["text"]
        assert not part.exists() and (downloads / f"{digest[:12]}-pg11.txt").read_bytes() == book
        first = out.read_bytes()
    finally:
        server.close()
    rc, out, _ = run_corpus(tmp_path, src)  # server gone: the verified cache is used, same output
    assert rc == 0 and out.read_bytes() == first


def test_url_source_behind_a_proxy_checks_the_proxy(tmp_path, capsys, monkeypatch):
    """The download goes through HTTPS_PROXY (urllib picks it), so the reachability check connects to the proxy, not
    to the file's host, which a node behind a proxy cannot reach directly; the message names both."""
    direct_network(monkeypatch)
    monkeypatch.delenv("ELECTRA_DS_OFFLINE", raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.cluster.example:3128")
    asked = refuse_connections(monkeypatch, "connection refused")
    src = [{"type": "url", "url": "https://data.example.org/books.txt", "sha256": "0" * 64,
            "cache_dir": str(tmp_path / "downloads")}]
    msg = cli_error(capsys, "corpus", "--sources", json.dumps(src), "--output", tmp_path / "docs.jsonl",
                    "--stats", tmp_path / "stats.json")
    assert asked == [("proxy.cluster.example", 3128)]
    assert "cannot reach the proxy proxy.cluster.example:3128 for data.example.org" in msg
    assert_no_output(tmp_path)


def test_url_checksum_mismatch_and_unreachable_host(tmp_path, capsys):
    server = _Server({"/a.txt": b"Some text that is not what the checksum says."})
    try:
        src = [{"type": "url", "url": f"{server.url}/a.txt", "sha256": "0" * 64}]
        msg = cli_error(capsys, "corpus", "--sources", json.dumps(src), "--output", tmp_path / "docs.jsonl",
                        "--stats", tmp_path / "stats.json")
        assert f"{server.url}/a.txt" in msg and "checksum mismatch" in msg and "sha256" in msg
        assert_no_output(tmp_path)
        assert not list((tmp_path / "downloads").iterdir())  # neither a final nor a partial file
    finally:
        server.close()
    start = time.perf_counter()
    msg = cli_error(capsys, "corpus", "--sources", json.dumps(src), "--output", tmp_path / "docs.jsonl",
                    "--stats", tmp_path / "stats.json")  # the server is gone: refused at once
    assert time.perf_counter() - start < 5
    assert "unreachable" in msg and "local source" in msg
    bad = [{"type": "url", "url": "ftp://x/y.txt", "sha256": "0" * 64}]
    msg = cli_error(capsys, "corpus", "--sources", json.dumps(bad), "--output", tmp_path / "docs.jsonl",
                    "--stats", tmp_path / "stats.json")
    assert "corpus.sources[0].url" in msg
    assert_no_output(tmp_path)
