"""Vocab stage: sentencepiece with ELECTRA's special ids, saved as an AutoTokenizer-loadable fast tokenizer."""

from __future__ import annotations

import json
import random

import pytest

from electra_ds import CLS_ID, MASK_ID, PAD_ID, SEP_ID, UNK_ID
from electra_ds.text import split_sentences
from helpers import cli, cli_error
from helpers_data import demo_documents, demo_vocab, gutenberg_files, leftovers, scratch

VOCAB = 2000


def load(vocab_dir):
    import sentencepiece as spm
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(vocab_dir)), spm.SentencePieceProcessor(
        model_file=str(vocab_dir / "spm.model"))


@pytest.fixture(scope="module")
def gutenberg_vocab():
    """A vocabulary trained on a few real books, and lines of OTHER books held out for comparison."""
    books = gutenberg_files()
    train_books = [b for b in books if b.stat().st_size < 700_000][:6]
    other_books = [b for b in books if b not in train_books]
    root = scratch() / "gutenberg_vocab"
    root.mkdir(exist_ok=True)
    sources = [{"type": "local", "paths": [str(b) for b in train_books], "strip_gutenberg": True}]
    assert cli("corpus", "--sources", json.dumps(sources), "--output", root / "docs.jsonl",
               "--stats", root / "stats.json") == 0
    assert cli("vocab", "--input", root / "docs.jsonl", "--output-dir", root / "vocab", "--vocab-size", 4000,
               "--threads", 2) == 0
    lines = []
    for book in other_books[:8]:
        lines += split_sentences(book.read_text(encoding="utf-8-sig", errors="replace"))
    return root / "vocab", random.Random(0).sample(lines, 5000)


def test_directory_layout_and_stats():
    vocab = demo_vocab(VOCAB)
    assert {"spm.model", "spm.vocab", "tokenizer.json", "tokenizer_config.json", "vocab_stats.json"} <= {
        p.name for p in vocab.iterdir()}
    stats = json.loads((vocab / "vocab_stats.json").read_text())
    assert stats["vocab_size"] == VOCAB and stats["eval_on"] == "heldout" and stats["eval_lines"] > 100
    assert 0.99 < stats["coverage"] <= 1 and 0 <= stats["unknown_token_rate"] < 0.01
    assert 1 < stats["pieces_per_word"] < 3
    # runs of one symbol ("=====") can tie in unigram scores: a few demo lines differ, prose does not
    assert stats["fast_tokenizer_agreement"] >= 0.995
    assert len((vocab / "spm.vocab").read_text(encoding="utf-8").splitlines()) == VOCAB


def test_auto_tokenizer_is_fast_with_electra_special_ids():
    tok, sp = load(demo_vocab(VOCAB))
    assert tok.is_fast and len(tok) == VOCAB == sp.get_piece_size()
    assert (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id) == (
        PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID)
    assert [sp.id_to_piece(i) for i in range(5)] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert tok.model_max_length == 512
    # no lowercasing: case survives a round trip and changes the ids
    assert tok.decode(tok("The Python Interpreter")["input_ids"], skip_special_tokens=True) == "The Python Interpreter"
    assert tok("Python")["input_ids"] != tok("python")["input_ids"]


def test_single_and_pair_templates_give_token_type_ids():
    tok, sp = load(demo_vocab(VOCAB))
    single = tok("a list of values")
    body = sp.encode("a list of values")
    assert single["input_ids"] == [CLS_ID, *body, SEP_ID]
    assert single["token_type_ids"] == [0] * (len(body) + 2)
    pair = tok("first segment", "second one")
    a, b = sp.encode("first segment"), sp.encode("second one")
    assert pair["input_ids"] == [CLS_ID, *a, SEP_ID, *b, SEP_ID]
    assert pair["token_type_ids"] == [0] * (len(a) + 2) + [1] * (len(b) + 1)
    assert tok("x [MASK] y")["input_ids"].count(MASK_ID) == 1


def test_fast_tokenizer_matches_sentencepiece_on_heldout_real_lines(gutenberg_vocab):
    vocab, lines = gutenberg_vocab
    tok, sp = load(vocab)
    assert len(tok) == 4000
    ours = tok(lines, add_special_tokens=False)["input_ids"]
    theirs = sp.encode(lines)
    same = sum(a == b for a, b in zip(ours, theirs)) / len(lines)
    assert same >= 0.999, f"only {same:.4%} of {len(lines)} held-out lines encode identically"


def test_bpe_with_byte_fallback_matches_sentencepiece(tmp_path):
    out = tmp_path / "bpe"
    assert cli("vocab", "--input", demo_documents(), "--output-dir", out, "--vocab-size", 1500,
               "--model-type", "bpe", "--byte-fallback", "--threads", 2) == 0
    tok, sp = load(out)
    assert tok.is_fast and len(tok) == 1500 and tok.mask_token_id == MASK_ID
    lines = ["Unseen script: 日本語のテキスト and ümlauts.", "Return a new list.", "λ x: x ** 2  # squares"]
    for line in lines:
        ids = tok(line, add_special_tokens=False)["input_ids"]
        assert ids == sp.encode(line) and UNK_ID not in ids  # bytes, not [UNK]
    assert json.loads((out / "vocab_stats.json").read_text())["unknown_token_rate"] == 0


def test_same_seed_same_model(tmp_path):
    args = ("--input", demo_documents(), "--vocab-size", 800, "--sample-sentences", 5000, "--threads", 2)
    assert cli("vocab", *args, "--output-dir", tmp_path / "a") == 0
    assert cli("vocab", *args, "--output-dir", tmp_path / "b") == 0
    assert (tmp_path / "a" / "spm.model").read_bytes() == (tmp_path / "b" / "spm.model").read_bytes()
    stats = json.loads((tmp_path / "a" / "vocab_stats.json").read_text())
    assert stats["training_lines"] == 5000 < stats["total_lines"]


def test_vocab_size_too_large_is_a_user_error(tmp_path, capsys):
    small = tmp_path / "small.jsonl"
    small.write_text(json.dumps({"id": "1", "text": "a tiny corpus\nwith two lines only"}) + "\n")
    out = tmp_path / "vocab"
    msg = cli_error(capsys, "vocab", "--input", small, "--output-dir", out, "--vocab-size", 8000)
    assert "vocab.vocab_size" in msg and "--vocab-size 8000" in msg
    maximum = int(msg.split("at most ")[1].split()[0])
    assert 5 < maximum < 100 and f"to {maximum} or less" in msg
    assert not out.exists() and leftovers(tmp_path) == []


def test_missing_input_is_a_user_error(tmp_path, capsys):
    msg = cli_error(capsys, "vocab", "--input", tmp_path / "none.jsonl", "--output-dir", tmp_path / "vocab")
    assert str(tmp_path / "none.jsonl") in msg and not (tmp_path / "vocab").exists()
