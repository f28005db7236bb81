"""Shards stage: ELECTRA example packing, document-level splits, determinism, and the memmap loader."""

from __future__ import annotations

import json
import pickle
import random
import shutil

import numpy as np
import pytest
from helpers import cli, cli_error
from helpers_data import demo_documents, demo_vocab, leftovers, scratch

from electra_ds import CLS_ID, PAD_ID, SEP_ID
from electra_ds.common.errors import UserError
from electra_ds.common.fileio import read_jsonl
from electra_ds.data import shards as shards_module
from electra_ds.data.shard_format import open_split, token_type_ids
from electra_ds.data.shards import write_shards
from electra_ds.data.splits import document_split
from electra_ds.data.text import split_sentences
from electra_ds.data.vocab_format import load_sentencepiece

L = 64
SETTINGS = dict(max_seq_len=L, valid_fraction=0.1, heldout_fraction=0.05, short_seq_prob=0.1, seed=3)


def shard_args(out, seed=3, docs=None):
    return ("shards", "--input", docs or demo_documents(), "--tokenizer-dir", demo_vocab(), "--output-dir", out,
            "--max-seq-len", L, "--valid-fraction", 0.1, "--heldout-fraction", 0.05, "--seed", seed, "--short-seq-prob", 0.1,
            "--examples-per-shard", 1000, "--threads", 2)


@pytest.fixture(scope="module")
def shards():
    out = scratch() / "shards"
    if not out.exists():
        assert cli(*shard_args(out)) == 0
    return out


def all_rows(shard_dir, split):
    index = json.loads((shard_dir / "index.json").read_text())
    files = [shard_dir / s["file"] for s in index["splits"][split]["shards"]]
    return np.concatenate([np.fromfile(f, dtype=np.uint16).reshape(-1, L) for f in files])


# -- example building ----------------------------------------------------------------------
# The reference: google-research/electra's build_pretraining_dataset.py example logic, written plainly
# on lists of ids. The stage plans the same examples on sentence lengths and copies with numpy; the
# tests below require byte-identical rows.
def reference_examples(sentences, max_seq_len, short_seq_prob, rng):
    """(A, B, tokens cut off) per example of one document's tokenized sentences."""
    def next_target():
        return (rng.randint(5, max_seq_len) if rng.random() < short_seq_prob else max_seq_len) - 3

    def segments(current, target):
        first_target = 10**9 if rng.random() < 0.1 else target // 2
        first, second = [], []
        for sentence in current:
            if (not first or len(first) + len(sentence) < first_target
                    or (not second and len(first) < first_target and rng.random() < 0.5)):
                first += sentence
            else:
                second += sentence
        n = len(first) + len(second)
        first = first[:max_seq_len - 2]
        second = second[:max(0, max_seq_len - len(first) - 3)]
        return first, second, n - len(first) - len(second)

    budget = max_seq_len - 3
    target, current, length = next_target(), [], 0
    for sentence in (s for s in sentences if s):
        for piece in [sentence[i:i + budget] for i in range(0, len(sentence), budget)]:
            current.append(piece)
            length += len(piece)
            if length >= target:
                yield segments(current, target)
                current, length, target = [], 0, next_target()
    if current:
        yield segments(current, target)


def reference_rows(docs, sp, max_seq_len, short_seq_prob, seed, split="train", **fractions):
    """All rows of one split, built document by document with the reference logic."""
    rows, cut = [], 0
    for doc in docs:
        if document_split(str(doc["id"]), seed=seed, **fractions) != split:
            continue
        sentences = sp.encode(split_sentences(doc["text"]))
        for a, b, c in reference_examples(sentences, max_seq_len, short_seq_prob, random.Random(f"{seed}:{doc['id']}")):
            ids = [CLS_ID, *a, SEP_ID] + ([*b, SEP_ID] if b else [])
            rows.append(ids + [PAD_ID] * (max_seq_len - len(ids)))
            cut += c
    return np.array(rows, dtype=np.uint16).reshape(-1, max_seq_len), cut


def planned_rows(sentences, max_seq_len, short_seq_prob, rng):
    """The stage's planner on one document: (rows, tokens cut off)."""
    sizes = [len(s) for s in sentences]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int).tolist()
    flat = np.array([t for s in sentences for t in s], dtype=np.uint16)
    batch = shards_module._Examples(max_seq_len)
    shards_module._plan_document(batch, offsets[:-1], sizes, short_seq_prob, rng)
    return batch.rows(flat, np.uint16), batch.truncated_tokens


def synthetic_document(rng, n=300):
    """Sentences of 0 to 160 ids: empty ones, and some longer than one example."""
    return [[5 + (i * 7 + j) % 50 for j in range(rng.choice([0, rng.randint(1, 40), rng.randint(1, 160)]))]
            for i in range(n)]


@pytest.mark.parametrize("short_seq_prob", [0.0, 0.1, 1.0])
def test_planner_matches_the_reference_examples(short_seq_prob):
    for doc in range(20):
        sentences = synthetic_document(random.Random(doc))
        rows, cut = planned_rows(sentences, L, short_seq_prob, random.Random(doc))
        ref = list(reference_examples(sentences, L, short_seq_prob, random.Random(doc)))
        assert len(rows) == len(ref) and cut == sum(c for _, _, c in ref)
        for row, (a, b, _) in zip(rows.tolist(), ref):
            ids = [CLS_ID, *a, SEP_ID] + ([*b, SEP_ID] if b else [])
            assert row == ids + [PAD_ID] * (L - len(ids))


def test_examples_keep_every_token_or_count_it():
    sentences = synthetic_document(random.Random(0))
    rows, cut = planned_rows(sentences, L, 0.1, random.Random(1))
    n_sep = (rows == SEP_ID).sum(axis=1)
    content = np.count_nonzero(rows) - len(rows) - n_sep.sum()  # without [CLS] and [SEP]s
    assert content + cut == sum(map(len, sentences))
    assert (rows[:, 0] == CLS_ID).all() and (rows[:, 1] != SEP_ID).all()  # A is never empty
    assert (n_sep == 2).mean() > 0.5  # mostly two segments
    assert np.median(np.count_nonzero(rows, axis=1)[:-1]) == L  # most examples are full


def test_short_seq_prob_gives_shorter_examples():
    sentences = [[9] * 10 for _ in range(2000)]
    full = np.count_nonzero(planned_rows(sentences, L, 0.0, random.Random(0))[0], axis=1)
    short = np.count_nonzero(planned_rows(sentences, L, 1.0, random.Random(0))[0], axis=1)
    assert full[:-1].min() >= L - 1 and short.mean() < 0.75 * L


def test_token_type_ids_1d_2d_and_like_the_hf_tokenizer():
    row = np.array([CLS_ID, 7, 8, SEP_ID, 9, SEP_ID, PAD_ID, PAD_ID])
    assert token_type_ids(row).tolist() == [0, 0, 0, 0, 1, 1, 0, 0]
    single = np.array([CLS_ID, 7, SEP_ID, PAD_ID])
    both = token_type_ids(np.stack([row[:4], single]))
    assert both.shape == (2, 4) and both.tolist() == [[0, 0, 0, 0], [0, 0, 0, 0]]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(demo_vocab()))
    enc = tok("A first segment.", "And a second one.", padding="max_length", max_length=32)
    assert token_type_ids(np.array(enc["input_ids"])).tolist() == enc["token_type_ids"]


# -- the stage ------------------------------------------------------------------------------
def test_examples_are_well_formed(shards):
    index = json.loads((shards / "index.json").read_text())
    assert index["format"] == "electra-ds-shards-v1" and index["dtype"] == "uint16"
    assert (index["max_seq_len"], index["vocab_size"], index["pad_id"], index["cls_id"], index["sep_id"]) == (
        L, 2000, 0, 2, 3)
    for split in ("train", "valid"):
        rows = all_rows(shards, split)
        info = index["splits"][split]
        assert len(rows) == info["examples"] > 0 and np.count_nonzero(rows) == info["tokens"]
        assert info["documents"] > 0 and rows.max() < 2000
        assert (rows[:, 0] == CLS_ID).all()
        n_sep = (rows == SEP_ID).sum(axis=1)
        assert set(np.unique(n_sep)) <= {1, 2} and (n_sep == 2).any() and (n_sep == 1).any()
        length = np.count_nonzero(rows, axis=1)
        assert (rows[np.arange(len(rows)), length - 1] == SEP_ID).all()  # ends with [SEP], then only [PAD]
        assert all((r[n:] == PAD_ID).all() and (r[:n] != PAD_ID).all() for r, n in zip(rows, length))
        for shard in info["shards"]:
            assert (shards / shard["file"]).stat().st_size == shard["examples"] * L * 2
    assert len(index["splits"]["train"]["shards"]) == -(-index["splits"]["train"]["examples"] // 1000)


def test_stage_rows_match_the_reference_for_any_number_of_workers(shards, tmp_path):
    docs = list(read_jsonl(demo_documents()))
    sp = load_sentencepiece(demo_vocab())
    index = json.loads((shards / "index.json").read_text())
    fractions = dict(valid_fraction=0.1, heldout_fraction=0.05)
    for split in ("train", "valid"):  # the module fixture ran the CLI with --threads 2
        expected, cut = reference_rows(docs, sp, L, 0.1, 3, split, **fractions)
        assert np.array_equal(all_rows(shards, split), expected)
        assert index["splits"][split]["truncated_tokens"] == cut
    result = write_shards(docs, sp, tmp_path, **SETTINGS, workers=1, examples_per_shard=1000)
    for split in ("train", "valid"):
        assert result["splits"][split] == index["splits"][split]  # same counts and sha256s


def test_splits_are_by_document(shards, tmp_path):
    docs = list(read_jsonl(demo_documents()))
    split_of = {d["id"]: document_split(d["id"], valid_fraction=0.1, heldout_fraction=0.05, seed=3) for d in docs}
    index = json.loads((shards / "index.json").read_text())
    assert index["heldout_documents"] == sum(s == "heldout" for s in split_of.values()) > 0
    assert index["splits"]["valid"]["documents"] == sum(s == "valid" for s in split_of.values())
    # the valid shards are exactly what the valid documents alone produce: no train document leaks in
    sp = load_sentencepiece(demo_vocab())
    only_valid = [d for d in docs if split_of[d["id"]] == "valid"]
    result = write_shards(only_valid, sp, tmp_path, **SETTINGS, workers=2, examples_per_shard=10**6)
    assert result["splits"]["train"]["examples"] == 0
    assert np.array_equal(np.fromfile(tmp_path / "valid-00000.bin", dtype=np.uint16).reshape(-1, L),
                          all_rows(shards, "valid"))


def test_same_seed_same_bytes_other_seed_differs(shards, tmp_path):
    assert cli(*shard_args(tmp_path / "again")) == 0
    names = sorted(p.name for p in shards.iterdir())
    assert names == sorted(p.name for p in (tmp_path / "again").iterdir())
    assert all((shards / n).read_bytes() == (tmp_path / "again" / n).read_bytes() for n in names)
    assert cli(*shard_args(tmp_path / "other", seed=4)) == 0
    assert (tmp_path / "other" / "train-00000.bin").read_bytes() != (shards / "train-00000.bin").read_bytes()


def test_large_vocab_uses_uint32(tmp_path):
    class BigVocab:
        def get_piece_size(self):
            return 70_000

        def encode(self, lines, num_threads=1):
            return [[69_999] * len(line.split()) for line in lines]

    docs = [{"id": str(i), "text": "some words here.\nand more words"} for i in range(20)]
    result = write_shards(docs, BigVocab(), tmp_path, max_seq_len=16, valid_fraction=0.0)
    assert result["dtype"] == "uint32"
    rows = np.fromfile(tmp_path / "train-00000.bin", dtype=np.uint32).reshape(-1, 16)
    assert (rows == 69_999).sum() == 20 * 6 and (rows[:, 0] == CLS_ID).all()
    assert np.count_nonzero(rows) == result["splits"]["train"]["tokens"]


# -- the loader -----------------------------------------------------------------------------
def test_open_split_round_trip(shards):
    train = open_split(shards, "train")
    raw = all_rows(shards, "train")
    assert len(train) == len(raw) > 1000 and train.max_seq_len == L and train.vocab_size == 2000
    assert train.dtype == np.uint16
    idx = [0, 999, 1000, len(raw) - 1, 5, -1]  # crosses a shard boundary
    batch = train.batch(idx)
    assert batch.dtype == np.int64 and batch.shape == (len(idx), L)
    assert np.array_equal(batch, raw[idx].astype(np.int64))
    assert train[1000].dtype == np.int64 and np.array_equal(train[1000], raw[1000])
    assert np.array_equal(train[-1], raw[-1])
    with pytest.raises(IndexError):
        train[len(raw)]
    with pytest.raises(IndexError):
        train.batch([0, len(raw)])
    clone = pickle.loads(pickle.dumps(train))  # DataLoader workers get a copy without the memmaps
    assert len(pickle.dumps(train)) < 10_000 and np.array_equal(clone[7], train[7])
    assert len(open_split(shards, "valid", verify=False)) == len(all_rows(shards, "valid"))


def test_token_counts_count_every_id_of_the_split(shards):
    train = open_split(shards, "train")
    counts = train.token_counts(chunk_rows=333)  # chunks that do not divide the files' rows
    raw = all_rows(shards, "train").astype(np.int64)
    assert counts.shape == (train.vocab_size,) and counts.dtype == np.int64
    assert np.array_equal(counts, np.bincount(raw.reshape(-1), minlength=train.vocab_size))


def test_checksum_corruption_is_detected(shards, tmp_path):
    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    target = copy / "train-00001.bin"
    data = bytearray(target.read_bytes())
    data[123] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(UserError, match="checksum mismatch") as err:
        open_split(copy, "train")
    assert str(target) in str(err.value) and "rerun the shards stage" in str(err.value)
    open_split(copy, "valid")  # other splits are unaffected
    target.write_bytes(bytes(data[:-2]))
    with pytest.raises(UserError, match="size mismatch"):
        open_split(copy, "train")
    (copy / "index.json").unlink()
    with pytest.raises(UserError, match="no shard index") as err:
        open_split(copy)
    assert str(copy / "index.json") in str(err.value)


# -- bad input ------------------------------------------------------------------------------
def test_missing_tokenizer_is_a_user_error(tmp_path, capsys):
    msg = cli_error(capsys, "shards", "--input", demo_documents(), "--tokenizer-dir", tmp_path / "novocab",
                    "--output-dir", tmp_path / "out")
    assert str(tmp_path / "novocab") in msg and "spm.model or tokenizer.json" in msg and "vocab stage" in msg
    assert not (tmp_path / "out").exists()


def test_empty_train_split_is_a_user_error(tmp_path, capsys):
    # a single document that these fractions send to valid or held-out: nothing is left to train on
    doc_id = next(f"doc-{i}" for i in range(100)
                  if document_split(f"doc-{i}", valid_fraction=0.4, heldout_fraction=0.5, seed=0) != "train")
    docs = tmp_path / "docs.jsonl"
    docs.write_text(json.dumps({"id": doc_id, "text": "A single document."}) + "\n")
    msg = cli_error(capsys, "shards", "--input", docs, "--tokenizer-dir", demo_vocab(), "--output-dir",
                    tmp_path / "out", "--valid-fraction", 0.4, "--heldout-fraction", 0.5)
    assert "no training examples" in msg and str(docs) in msg
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_plain_packing_fills_rows_with_one_documents_tokens(tmp_path):
    sp = load_sentencepiece(demo_vocab())
    docs = list(read_jsonl(demo_documents()))[:300]
    result = write_shards(docs, sp, tmp_path, max_seq_len=L, valid_fraction=0.0, packing="plain", workers=2)
    rows = np.fromfile(tmp_path / "train-00000.bin", dtype=np.uint16).reshape(-1, L)
    assert len(rows) == result["splits"]["train"]["examples"] > 300
    assert (rows[:, 0] == CLS_ID).all() and ((rows == SEP_ID).sum(axis=1) == 1).all()
    assert token_type_ids(rows).max() == 0  # one segment
    full = np.count_nonzero(rows, axis=1) == L
    assert full.mean() > 0.5  # every row but a document's last is full
    tokens = sum(len(ids) for d in docs for ids in sp.encode(split_sentences(d["text"])))
    assert result["splits"]["train"]["tokens"] == tokens + 2 * len(rows)  # nothing lost or cut
    assert cli(*shard_args(tmp_path / "cli"), "--packing", "plain") == 0
    assert json.loads((tmp_path / "cli" / "index.json").read_text())["settings"]["packing"] == "plain"
