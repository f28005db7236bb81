"""MinHash signatures and LSH banding for near-duplicate detection, vectorised with numpy.

* Shingles: word n-grams (casefolded, whitespace-split) or character n-grams (whitespace collapsed).
  Each word is hashed once (xxh64); an n-gram's hash combines its words' hashes in numpy
  (order-sensitive polynomial, then a 64-bit finaliser). Character n-grams are rolled the same way
  over the code points, so no Python loop runs per shingle.
* Permutations: ``num_perm`` multiply-shift hashes ``(a*x + b) mod 2**64`` (a odd), the signature is
  the high 32 bits of each minimum. This is what makes it several times faster than datasketch's
  per-shingle SHA-1 plus ``mod (2**61-1)``; the estimator (fraction of equal slots) is the same.
* LSH: ``bands`` x ``rows`` (chosen like datasketch's ``MinHashLSH`` from the threshold when not
  given, weighting false negatives 19:1 since every candidate is verified); per band a 64-bit bucket
  key per document. Candidate pairs are documents within
  :data:`NEIGHBOURS` of each other in a band's sorted keys (all pairs of buckets up to that size,
  plus every member against the bucket's first), verified by their estimated Jaccard
  (signature agreement) >= threshold, and clustered with union-find (connected components).

:func:`edited_copy` makes a copy of a text at a chosen word-shingle Jaccard (for quality tests).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

import numpy as np

from electra_ds.common.errors import UserError

SHINGLES = ("word", "char")
FALSE_POSITIVE_WEIGHT = 0.05  # candidates are verified, so favour recall: (16 bands x 8 rows) at 0.8 / 128
NEIGHBOURS = 16  # candidate pairs: documents at most this far apart in a band's sorted keys
BLOCK = 2048  # shingles per (block, num_perm) product: bounds the temporary matrix
_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xBF58476D1CE4E5B9)
_M3 = np.uint64(0x94D049BB133111EB)
_MAX32 = np.uint32(0xFFFFFFFF)


@dataclass(frozen=True)
class MinHashConfig:
    """Near-duplicate settings; ``bands``/``rows`` 0 = derived from ``threshold`` and ``num_perm``."""

    num_perm: int = 128
    ngram: int = 5
    shingle: str = "word"
    threshold: float = 0.8
    bands: int = 0
    rows: int = 0
    seed: int = 1

    def __post_init__(self):
        if self.shingle not in SHINGLES:
            raise UserError(f"unknown shingle type {self.shingle!r}", field="dedup.shingle", fix="word or char")
        if not 1 <= self.ngram <= 64:
            raise UserError(f"ngram {self.ngram} out of range", field="dedup.ngram", fix="use 1..64 (e.g. 5 words)")
        if not 16 <= self.num_perm <= 1024:
            raise UserError(f"num_perm {self.num_perm} out of range", field="dedup.num_perm", fix="use 16..1024")
        if not 0 < self.threshold <= 1:
            raise UserError(f"threshold {self.threshold} out of range", field="dedup.threshold", fix="use (0, 1]")
        if (self.bands > 0) != (self.rows > 0) or self.bands * self.rows > self.num_perm:
            raise UserError(f"bands {self.bands} x rows {self.rows} do not fit num_perm {self.num_perm}",
                            field="dedup.bands", fix="set both (bands * rows <= num_perm) or neither")

    @property
    def lsh_params(self) -> tuple[int, int]:
        if self.bands:
            return self.bands, self.rows
        return optimal_bands(self.threshold, self.num_perm, FALSE_POSITIVE_WEIGHT, 1 - FALSE_POSITIVE_WEIGHT)

    def as_dict(self) -> dict:
        b, r = self.lsh_params
        return {**asdict(self), "bands": b, "rows": r}


def optimal_bands(threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5):
    """(bands, rows) minimising the weighted false-positive + false-negative areas (as datasketch)."""
    s_lo = np.linspace(0.0, threshold, 401)
    s_hi = np.linspace(threshold, 1.0, 401)
    best, opt = float("inf"), (1, 1)
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = np.trapezoid(1 - (1 - s_lo ** r) ** b, s_lo)
            fn = np.trapezoid((1 - s_hi ** r) ** b, s_hi)
            err = fp * fp_weight + fn * fn_weight
            if err < best:
                best, opt = err, (b, r)
    return opt


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.Generator(np.random.PCG64(seed))
    a = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
    return a, b


def _finalise(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (in place): spreads the combined n-gram hashes over all 64 bits."""
    h ^= h >> np.uint64(30)
    h *= _M2
    h ^= h >> np.uint64(27)
    h *= _M3
    h ^= h >> np.uint64(31)
    return h


def _roll(units: np.ndarray, n: int) -> np.ndarray:
    """Hash of every window of ``n`` consecutive units (the whole array if shorter)."""
    n = min(n, len(units))
    m = len(units) - n + 1
    h = units[:m].copy()
    for k in range(1, n):
        h *= _M1
        h += units[k:k + m]
    return _finalise(h)


def words_of(text: str) -> list[bytes]:
    """Casefolded words (split at any Unicode whitespace), UTF-8 encoded."""
    flat = " ".join(text.casefold().split())
    return flat.encode("utf-8").split(b" ") if flat else []


def shingle_hashes(text: str, ngram: int = 5, shingle: str = "word") -> np.ndarray:
    """uint64 hash of every shingle of ``text`` (repeats included); empty for a text with no words."""
    if shingle == "word":
        import xxhash

        words = words_of(text)
        if not words:
            return np.empty(0, dtype=np.uint64)
        units = np.fromiter(map(xxhash.xxh64_intdigest, words), dtype=np.uint64, count=len(words))
    else:
        flat = " ".join(text.casefold().split())
        if not flat:
            return np.empty(0, dtype=np.uint64)
        units = np.frombuffer(flat.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    return _roll(units, ngram)


def signature(hashes: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """uint32 MinHash signature of one document's shingle hashes (all 0xFFFFFFFF if there are none)."""
    if len(hashes) == 0:
        return np.full(len(a), _MAX32, dtype=np.uint32)
    best = None
    for start in range(0, len(hashes), BLOCK):
        v = np.multiply.outer(hashes[start:start + BLOCK], a)
        v += b
        m = v.min(axis=0)
        best = m if best is None else np.minimum(best, m, out=best)
    return (best >> np.uint64(32)).astype(np.uint32)


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(bands, n) uint64 bucket keys of an (n, num_perm) signature block."""
    sigs = np.asarray(sigs)
    keys = np.empty((bands, len(sigs)), dtype=np.uint64)
    for band in range(bands):
        h = np.full(len(sigs), np.uint64(band + 1), dtype=np.uint64)
        for col in sigs[:, band * rows:(band + 1) * rows].T:
            h *= _M1
            h += col.astype(np.uint64)
        keys[band] = _finalise(h)
    return keys


class Signer:
    """Everything a worker needs to turn texts into signatures and band keys."""

    def __init__(self, config: MinHashConfig):
        self.config = config
        self.a, self.b = permutations(config.num_perm, config.seed)
        self.bands, self.rows = config.lsh_params

    def sign(self, texts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(signatures (n, num_perm) uint32, band keys (bands, n) uint64, has-shingles (n,) bool)."""
        cfg = self.config
        sigs = np.empty((len(texts), cfg.num_perm), dtype=np.uint32)
        ok = np.empty(len(texts), dtype=bool)
        for i, text in enumerate(texts):
            hashes = shingle_hashes(text, cfg.ngram, cfg.shingle)
            ok[i] = len(hashes) > 0
            sigs[i] = signature(hashes, self.a, self.b)
        return sigs, band_keys(sigs, self.bands, self.rows), ok


# -- clustering ------------------------------------------------------------------------------
def candidate_pairs(keys: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """(m, 2) int64 document pairs (i < j) sharing one band's key: neighbours within
    :data:`NEIGHBOURS` in key order, plus each member against its bucket's first (lowest) document."""
    idx = np.arange(len(keys), dtype=np.int64) if valid is None else np.flatnonzero(valid)
    k = keys[idx]
    order = np.argsort(k, kind="stable")  # stable: within a bucket, documents stay in input order
    sk, si = k[order], idx[order]
    if len(sk) < 2:
        return np.empty((0, 2), dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, sk[1:] != sk[:-1]])
    sizes = np.diff(np.r_[starts, len(sk)])
    out = []
    for d in range(1, NEIGHBOURS + 1):
        same = sk[d:] == sk[:-d]
        if not same.any():
            break
        out.append(np.stack([si[:-d][same], si[d:][same]], axis=1))
    big = np.flatnonzero(sizes > NEIGHBOURS + 1)
    for s, size in zip(starts[big], sizes[big]):  # large buckets: star from the first member as well
        out.append(np.stack([np.full(size - 1, si[s]), si[s + 1:s + size]], axis=1))
    return np.concatenate(out) if out else np.empty((0, 2), dtype=np.int64)


def estimated_jaccard(sigs, pairs: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Fraction of equal signature slots for each pair (rows of ``sigs`` may be a memmap)."""
    est = np.empty(len(pairs), dtype=np.float64)
    for s in range(0, len(pairs), chunk):
        p = pairs[s:s + chunk]
        est[s:s + chunk] = (np.asarray(sigs[p[:, 0]]) == np.asarray(sigs[p[:, 1]])).mean(axis=1)
    return est


def near_duplicate_pairs(band_key_of, n: int, sigs, threshold: float, bands: int,
                         valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Verified pairs (i < j), their estimated Jaccard and the number of distinct candidates.

    ``band_key_of(band)`` returns that band's (n,) keys, so keys can be read one band at a time from disk.
    """
    found = []
    for band in range(bands):
        pairs = candidate_pairs(band_key_of(band), valid)
        if len(pairs):
            found.append(np.sort(pairs, axis=1))
    if not found:
        return np.empty((0, 2), dtype=np.int64), np.empty(0), 0
    code = np.unique(np.concatenate(found) @ np.array([n, 1], dtype=np.int64))
    pairs = np.stack([code // n, code % n], axis=1)
    est = estimated_jaccard(sigs, pairs)
    keep = est >= threshold
    return pairs[keep], est[keep], len(pairs)


def clusters(n: int, pairs: np.ndarray) -> np.ndarray:
    """Union-find over ``pairs``: the representative (lowest index) of every document's cluster."""
    parent = np.arange(n, dtype=np.int64)
    if len(pairs) == 0:
        return parent
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    first = np.full(labels.max() + 1, n, dtype=np.int64)
    np.minimum.at(first, labels, np.arange(n, dtype=np.int64))
    return first[labels]


def true_jaccard(a: str, b: str, ngram: int = 5, shingle: str = "word") -> float:
    """Exact Jaccard of two texts' shingle sets (hash sets; collisions are negligible at 64 bits)."""
    sa, sb = set(shingle_hashes(a, ngram, shingle).tolist()), set(shingle_hashes(b, ngram, shingle).tolist())
    return len(sa & sb) / len(sa | sb) if sa or sb else 1.0


# -- quality-test data -----------------------------------------------------------------------
def edited_copy(text: str, target: float, *, ngram: int = 5, seed: int = 0,
                replacements: list[str] | None = None) -> tuple[str, float]:
    """A copy of ``text`` with words replaced until its word-shingle Jaccard with ``text`` is closest
    to ``target``; returns (copy, true Jaccard). Replaced words come from ``replacements`` (default:
    made-up tokens that occur nowhere else)."""
    words = text.split()
    rng = random.Random(seed)
    positions = list(range(len(words)))
    rng.shuffle(positions)

    def edit(k):
        out = list(words)
        for j, pos in enumerate(positions[:k]):
            out[pos] = rng.choice(replacements) if replacements else f"x{seed}q{j}z"
        copy = " ".join(out)
        return copy, true_jaccard(text, copy, ngram)

    lo, hi = 0, len(words)
    best = edit(0)
    while lo <= hi:  # Jaccard falls as k grows
        mid = (lo + hi) // 2
        copy, j = edit(mid)
        if abs(j - target) < abs(best[1] - target):
            best = (copy, j)
        if j > target:
            lo = mid + 1
        else:
            hi = mid - 1
    return best
