"""MinHash-LSH: shingles, signature estimates, LSH parameters, clustering, and the quality test on real
books with planted near-duplicates at known Jaccard levels."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from helpers import cli
from helpers_data import gutenberg_files, read_records

from electra_ds.common.errors import UserError
from electra_ds.data.minhash import (
    MinHashConfig,
    Signer,
    candidate_pairs,
    clusters,
    edited_copy,
    near_duplicate_pairs,
    optimal_bands,
    shingle_hashes,
)
from electra_ds.data.text import strip_gutenberg


def test_word_shingles_ignore_case_and_spacing_but_not_order():
    a = shingle_hashes("The quick brown fox jumps over", 5)
    assert len(a) == 2 and a.dtype == np.uint64
    assert np.array_equal(a, shingle_hashes("the  QUICK\nbrown fox\tjumps over", 5))
    assert not np.array_equal(a, shingle_hashes("quick the brown fox jumps over", 5))
    assert len(shingle_hashes("two words", 5)) == 1 and len(shingle_hashes("  \n", 5)) == 0
    assert len(shingle_hashes("abcdefg", 3, "char")) == 5
    assert np.array_equal(shingle_hashes("Ab  cd", 3, "char"), shingle_hashes("ab cd", 3, "char"))


def test_signature_agreement_estimates_jaccard():
    rng = random.Random(0)
    signer = Signer(MinHashConfig(num_perm=256))
    errors = []
    for target in (0.2, 0.5, 0.8, 0.95):
        words = [f"w{rng.randrange(10**6)}" for _ in range(800)]
        copy, truth = edited_copy(" ".join(words), target, seed=rng.randrange(1000))
        sigs, _, ok = signer.sign([" ".join(words), copy])
        assert ok.all() and abs(truth - target) < 0.02
        errors.append(abs((sigs[0] == sigs[1]).mean() - truth))
    assert max(errors) < 0.08  # 256 permutations: standard error <= 0.031


def test_lsh_parameters_match_datasketch():
    datasketch_lsh = pytest.importorskip("datasketch.lsh")
    for threshold, num_perm, fp in ((0.8, 128, 0.5), (0.5, 64, 0.5), (0.8, 128, 0.05)):
        assert optimal_bands(threshold, num_perm, fp, 1 - fp) == datasketch_lsh._optimal_param(
            threshold, num_perm, fp, 1 - fp)
    assert MinHashConfig().lsh_params == (16, 8)  # recall-leaning default: candidates are verified
    assert MinHashConfig(bands=16, rows=8).lsh_params == (16, 8)
    with pytest.raises(UserError, match="dedup.bands"):
        MinHashConfig(bands=20, rows=8)
    with pytest.raises(UserError, match="dedup.shingle"):
        MinHashConfig(shingle="sentence")


def test_candidates_from_large_buckets_and_union_find_keeps_the_lowest():
    keys = np.array([7, 3, 7, 9, 3] + [5] * 40, dtype=np.uint64)
    pairs = {tuple(p) for p in candidate_pairs(keys).tolist()}
    assert {(0, 2), (1, 4)} <= pairs and not any(3 in p for p in pairs)
    assert all((5, j) in pairs for j in range(6, 45))  # star from the first of a big bucket
    valid = np.ones(len(keys), dtype=bool)
    valid[2] = False
    assert (0, 2) not in {tuple(p) for p in candidate_pairs(keys, valid).tolist()}
    rep = clusters(8, np.array([[5, 6], [1, 5], [2, 3]]))
    assert rep.tolist() == [0, 1, 2, 2, 4, 1, 1, 7]


# -- quality on real books ----------------------------------------------------------------
LEVELS = (0.5, 0.6, 0.7, 0.9, 0.95)  # planted copies: true Jaccard below and above the 0.8 threshold


def planted_corpus(n_bases: int = 150, words_per_doc: int = 400):
    """Distinct 400-word passages of real books, each followed later by one edited copy at a known level."""
    books = gutenberg_files()
    passages = []
    for book in books:
        words = strip_gutenberg(book.read_text(encoding="utf-8-sig")).split()
        step = max(words_per_doc, len(words) // 4)
        passages += [" ".join(words[s:s + words_per_doc]) for s in range(2000, len(words) - words_per_doc, step)][:4]
    rng = random.Random(7)
    bases = rng.sample(passages, min(n_bases, len(passages)))
    vocab = [w for p in bases[:20] for w in p.split()]
    docs = [{"id": f"base{i}", "text": t} for i, t in enumerate(bases)]
    truth = {}
    for i, text in enumerate(bases):
        copy, j = edited_copy(text, LEVELS[i % len(LEVELS)], seed=i, replacements=vocab)
        docs.append({"id": f"copy{i}", "text": copy})
        truth[(i, len(bases) + i)] = j
    return docs, truth


def test_planted_near_duplicates_recall_and_precision(tmp_path):
    docs, truth = planted_corpus()
    n = len(docs)
    assert n >= 240 and min(truth.values()) < 0.55 and max(truth.values()) > 0.93
    cfg = MinHashConfig()  # 5-word shingles, 128 permutations, threshold 0.8
    b, r = cfg.lsh_params
    sigs, keys, _ = Signer(cfg).sign([d["text"] for d in docs])
    pairs, est, _ = near_duplicate_pairs(lambda band: keys[band], n, sigs, cfg.threshold, b)
    found = {tuple(p) for p in pairs.tolist()}
    positives = {p for p, j in truth.items() if j >= cfg.threshold}
    hits = len(found & positives)
    recall, precision = hits / len(positives), hits / max(1, len(found))
    assert len(positives) >= 50
    assert recall >= 0.95 and precision >= 0.95, (recall, precision)
    # the stage removes exactly the copies above the threshold and keeps every base (the lower position)
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    assert cli("dedup", "--input", tmp_path / "docs.jsonl", "--output", tmp_path / "kept.jsonl",
               "--stats", tmp_path / "stats.json", "--threads", 2) == 0
    kept = {d["id"] for d in read_records(tmp_path / "kept.jsonl")}
    assert all(f"base{i}" in kept for i in range(len(truth)))
    removed = {f"copy{j - len(truth)}" for (_, j) in positives}
    assert len(removed - kept) >= 0.95 * len(removed) and len({d["id"] for d in docs} - kept - removed) <= 2
    report = json.loads((tmp_path / "stats.json").read_text())["near"]["sample_removed_pairs"]
    assert len(report) == 20 and all(abs(p["estimated_jaccard"] - p["true_jaccard"]) < 0.15 for p in report)
