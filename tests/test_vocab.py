"""Vocab stage: sentencepiece with ELECTRA's special ids, saved as an AutoTokenizer-loadable fast tokenizer."""

from __future__ import annotations

import json
import random

import pytest
from helpers import cli, cli_error
from helpers_data import demo_documents, demo_vocab, gutenberg_files, leftovers, scratch

from electra_ds import CLS_ID, MASK_ID, PAD_ID, SEP_ID, UNK_ID
from electra_ds.data.text import split_sentences

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


# -- WordPiece (vocab.tokenizer: wordpiece, issue 25 item 4) ----------------------------------------------------
WP_VOCAB = 800


@pytest.fixture(scope="module")
def wordpiece_vocab():
    out = scratch() / "wordpiece_vocab"
    if not out.exists():
        assert cli("vocab", "--input", demo_documents(), "--output-dir", out, "--tokenizer", "wordpiece",
                   "--vocab-size", WP_VOCAB, "--sample-sentences", 5000) == 0
    return out


def test_wordpiece_is_uncased_with_electra_special_ids(wordpiece_vocab):
    from transformers import AutoTokenizer

    assert {p.name for p in wordpiece_vocab.iterdir()} == {"tokenizer.json", "tokenizer_config.json", "vocab.txt",
                                                           "vocab_stats.json"}  # no spm.model
    tok = AutoTokenizer.from_pretrained(str(wordpiece_vocab))
    assert tok.is_fast and len(tok) == WP_VOCAB
    assert (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id) == (
        PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID)
    assert (wordpiece_vocab / "vocab.txt").read_text(encoding="utf-8").splitlines()[:5] == [
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    # lower-cased, accents stripped; a long word is one piece then ## continuations
    assert tok("Café ÜBER Naïve")["input_ids"] == tok("cafe uber naive")["input_ids"]
    pieces = tok.tokenize("interpreters")
    assert len(pieces) > 1 and not pieces[0].startswith("##") and all(p.startswith("##") for p in pieces[1:])
    assert "".join(p.removeprefix("##") for p in pieces) == "interpreters"
    pair = tok("The list", "a Tuple [MASK]")
    a, b = tok("The list", add_special_tokens=False)["input_ids"], tok("a Tuple", add_special_tokens=False)["input_ids"]
    assert pair["input_ids"] == [CLS_ID, *a, SEP_ID, *b, MASK_ID, SEP_ID]
    assert pair["token_type_ids"] == [0] * (len(a) + 2) + [1] * (len(b) + 2)
    assert tok.decode(tok("The Python interpreter returns a list.")["input_ids"], skip_special_tokens=True) == \
        "the python interpreter returns a list."
    stats = json.loads((wordpiece_vocab / "vocab_stats.json").read_text())
    assert stats["tokenizer"] == "wordpiece" and stats["vocab_size"] == WP_VOCAB and stats["eval_on"] == "heldout"
    assert 0.999 < stats["coverage"] <= 1 and stats["unknown_token_rate"] < 0.001 and 1 < stats["pieces_per_word"] < 4


def test_wordpiece_tokenizer_survives_export_as_auto_tokenizer(wordpiece_vocab, tmp_path):
    """The export stage's own save and check (AutoTokenizer reloads it with the same vocabulary and ids)."""
    from transformers import AutoTokenizer

    from electra_ds.pretraining.export import _check_tokenizer, save_tokenizer

    tok = AutoTokenizer.from_pretrained(str(wordpiece_vocab))
    save_tokenizer(tok, tmp_path / "exported")
    _check_tokenizer(tok, tmp_path / "exported")
    reloaded = AutoTokenizer.from_pretrained(str(tmp_path / "exported"))
    lines = ["Résumé of the Interpreter's ERRORS.", "x [MASK] y", "日本語 and ümlauts"]
    assert [reloaded(line)["input_ids"] for line in lines] == [tok(line)["input_ids"] for line in lines]
    assert reloaded.mask_token_id == MASK_ID and len(reloaded) == WP_VOCAB


def test_an_export_with_a_wordpiece_vocabulary_says_so_in_its_model_card(wordpiece_vocab, tmp_path):
    out = tmp_path / "export"
    tiny = {"hidden_size": 32, "num_heads": 2, "num_layers": 1, "intermediate_size": 64, "embedding_size": 32}
    assert cli("export", "--scratch", "--tokenizer-dir", wordpiece_vocab, "--output-dir", out, "--model",
               json.dumps(tiny), "--results-dir", tmp_path) == 0
    card = (out / "discriminator" / "README.md").read_text()
    assert f"an uncased WordPiece vocabulary of {WP_VOCAB} tokens" in card and "sentencepiece" not in card


def test_wordpiece_from_a_bert_vocab_txt_moves_the_specials_to_electra_ids(tmp_path, capsys):
    """BERT's vocab.txt has [PAD]=0 [UNK]=100 [CLS]=101 [SEP]=102 [MASK]=103: they move to 0-4, the rest keep order."""
    from transformers import AutoTokenizer

    bert = (["[PAD]"] + [f"[unused{i}]" for i in range(3)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
            + ["the", "un", "##aff", "##able", ".", "a"])
    (tmp_path / "vocab.txt").write_text("\n".join(bert) + "\n", encoding="utf-8")
    docs = tmp_path / "docs.jsonl"
    docs.write_text(json.dumps({"id": "1", "text": "The unaffable. A line\nand another line"}) + "\n")
    out = tmp_path / "wp"
    assert cli("vocab", "--input", docs, "--output-dir", out, "--tokenizer", "wordpiece",
               "--vocab-file", tmp_path / "vocab.txt") == 0
    tok = AutoTokenizer.from_pretrained(str(out))
    order = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[unused0]", "[unused1]", "[unused2]",
             "the", "un", "##aff", "##able", ".", "a"]
    assert len(tok) == len(bert) and tok.convert_tokens_to_ids(order) == list(range(len(order)))
    assert (out / "vocab.txt").read_text(encoding="utf-8").splitlines() == order
    assert tok("UNAFFABLE the xyz")["input_ids"] == [CLS_ID, 9, 10, 11, 8, UNK_ID, SEP_ID]

    (tmp_path / "no_mask.txt").write_text("\n".join(t for t in bert if t != "[MASK]") + "\n", encoding="utf-8")
    msg = cli_error(capsys, "vocab", "--input", docs, "--output-dir", tmp_path / "bad", "--tokenizer", "wordpiece",
                    "--vocab-file", tmp_path / "no_mask.txt")
    assert "vocab.vocab_file" in msg and "[MASK]" in msg and not (tmp_path / "bad").exists()
    msg = cli_error(capsys, "vocab", "--input", docs, "--output-dir", tmp_path / "bad", "--vocab-file",
                    tmp_path / "vocab.txt")
    assert "vocab.tokenizer: wordpiece" in msg and not (tmp_path / "bad").exists()


def test_wordpiece_shards_and_whole_word_starts(wordpiece_vocab, tmp_path):
    """The shards stage packs with the WordPiece tokenizer (index records its vocabulary and tokenizer.json's
    sha256); literal special tokens in the text stay text; whole-word masking's word starts are the non-## tokens,
    and a masked word takes its ## continuations with it."""
    import torch
    from transformers import AutoTokenizer

    from electra_ds.common.fileio import sha256_file
    from electra_ds.data.shard_format import open_split
    from electra_ds.data.vocab_format import load_encoder
    from electra_ds.pretraining.masking import whole_word_positions, word_start_table

    out = tmp_path / "shards"
    assert cli("shards", "--input", demo_documents(), "--tokenizer-dir", wordpiece_vocab, "--output-dir", out,
               "--max-seq-len", 64, "--threads", 1) == 0
    index = json.loads((out / "index.json").read_text())
    assert index["vocab_size"] == WP_VOCAB and index["tokenizer_sha256"] == sha256_file(
        wordpiece_vocab / "tokenizer.json")
    rows = torch.from_numpy(open_split(out, "train").batch(list(range(64))))
    assert (rows[:, 0] == CLS_ID).all() and ((rows == SEP_ID).sum(1) >= 1).all()
    tok = AutoTokenizer.from_pretrained(str(wordpiece_vocab))
    text = tok.decode(rows[0], skip_special_tokens=True)
    assert text and text == text.lower()
    assert load_encoder(wordpiece_vocab).encode(["a [MASK] b"])[0].count(MASK_ID) == 0

    starts = word_start_table(wordpiece_vocab)
    vocab = tok.get_vocab()
    assert len(starts) == WP_VOCAB and not starts[[PAD_ID, CLS_ID, SEP_ID, MASK_ID]].any() and starts[UNK_ID]
    assert all(starts[i] != token.startswith("##") for token, i in vocab.items() if i > MASK_ID)
    scores = torch.rand(rows.shape, generator=torch.Generator().manual_seed(0))
    masked, start_of = whole_word_positions(rows, 0.15, scores, starts)
    continuation = ~starts[rows] & (rows > MASK_ID)
    assert continuation.any() and (masked.gather(1, start_of) == masked)[rows > MASK_ID].all()
    assert masked.any()


def test_wordpiece_same_config_same_vocabulary(tmp_path):
    """The trainer's order of equal-count merges varies between runs; the saved ids must not."""
    args = ("--input", demo_documents(), "--tokenizer", "wordpiece", "--vocab-size", 600, "--sample-sentences", 3000)
    for name in ("a", "b"):
        assert cli("vocab", *args, "--output-dir", tmp_path / name) == 0
    for file in ("tokenizer.json", "vocab.txt"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes(), file
