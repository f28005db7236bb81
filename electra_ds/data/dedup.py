"""Dedup stage: exact duplicates, then MinHash-LSH near-duplicates; one document kept per cluster.

Two passes over the input, so no text is ever held in memory:

1. **Sign** (:func:`sign_documents`, parallel over ``--threads`` processes): every document gets a
   64-bit hash of its normalised text (:func:`normalise_for_hash`: casefolded, whitespace collapsed)
   and, for near-duplicates, a MinHash signature and its LSH band keys (:mod:`electra_ds.data.minhash`).
   They go to a *signature directory* on disk (``meta.json``, ``hashes.u64``, ``sigs.u32``,
   ``keys.u64``); memory holds only one batch of documents at a time.
2. **Cluster**: exact duplicates are the repeats of a hash (the first occurrence is kept); among the
   rest, LSH candidates are verified by estimated Jaccard and clustered with union-find (one band's
   keys in memory at a time, never all pairs). The lowest-position document of a cluster is kept.
3. **Write**: the input is read again and kept lines are copied unchanged to ``--output``; removed
   documents are counted, and a sample of removed pairs gets its true Jaccard for the report.

Scatter/gather: ``--sign-only`` writes one input part's signature directory to ``--output``; a later
``electra-ds dedup --input part0 part1 ... --signatures sig0 sig1 ...`` clusters all parts together
and writes the kept documents of every part, in order, to one output.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import logging
import random
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from electra_ds.common.errors import UserError
from electra_ds.common.fileio import atomic_path, open_text, write_json
from electra_ds.common.progress import Progress, file_bytes
from electra_ds.common.settings import add_settings
from electra_ds.data.minhash import (
    MinHashConfig,
    Signer,
    clusters,
    estimated_jaccard,
    near_duplicate_pairs,
    true_jaccard,
)
from electra_ds.data.parallel import batched, ordered_map
from electra_ds.data.readers import open_binary
from electra_ds.data.rows import StackedRows

log = logging.getLogger(__name__)

BATCH_DOCUMENTS = 512
BATCH_CHARS = 4_000_000
SIGNATURE_FORMAT = "electra-ds-dedup-signatures-v1"


def normalise_for_hash(text: str) -> str:
    """The text two documents must share to count as exact duplicates: casefolded, whitespace collapsed."""
    return " ".join(text.casefold().split())


def text_hash(text: str) -> bytes:
    return hashlib.blake2b(normalise_for_hash(text).encode("utf-8"), digest_size=16).digest()


def exact_dedup(records: Iterable[dict], stats: dict | None = None) -> Iterator[dict]:
    """Streaming exact dedup (a set of 16-byte hashes): yield each record whose normalised text was not
    seen before; count removals into ``stats``. The stage itself uses the sort-based path below."""
    stats = {} if stats is None else stats
    for key in ("exact_duplicates_removed", "bytes_removed"):
        stats.setdefault(key, 0)
    seen: set[bytes] = set()
    for record in records:
        digest = text_hash(record["text"])
        if digest in seen:
            stats["exact_duplicates_removed"] += 1
            stats["bytes_removed"] += len(record["text"].encode("utf-8"))
            continue
        seen.add(digest)
        yield record


# -- pass 1: signatures ----------------------------------------------------------------------
def _lines(path) -> Iterator[str]:
    """Non-blank lines of a (possibly gzip/zstd-compressed) JSONL file; one per document."""


    with open_binary(Path(path)) as raw, io.TextIOWrapper(raw, encoding="utf-8", newline="\n") as f:
        for line in f:
            if line.strip():
                yield line


def _batches(path) -> Iterator[list[str]]:
    return batched(_lines(path), BATCH_DOCUMENTS, BATCH_CHARS)


def _parse(line: str, number: int, path) -> str:
    try:
        record = json.loads(line)
    except ValueError as exc:
        raise UserError(f"document {number} is not valid JSON ({exc})", path=path,
                        fix="feed the output of the corpus stage") from None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str) or "id" not in record:
        raise UserError(f"document {number} has no string 'text' or no 'id'", path=path,
                        fix="feed the output of the corpus stage")
    return record["text"]


_SIGNER: dict = {}


def _sign_batch(lines: list[str], first: int, path: str, config: MinHashConfig | None):
    """Worker: (exact hashes, signatures, band keys, has-shingles) of one batch of JSONL lines."""
    texts = [_parse(line, first + i, path) for i, line in enumerate(lines)]
    hashes = np.frombuffer(b"".join(
        hashlib.blake2b(normalise_for_hash(t).encode("utf-8"), digest_size=8).digest() for t in texts),
        dtype=np.uint64)
    if config is None:
        return hashes, None, None, None
    if _SIGNER.get("config") != config:
        _SIGNER.update(config=config, signer=Signer(config))
    return (hashes, *_SIGNER["signer"].sign(texts))


def sign_documents(path, out_dir: Path, config: MinHashConfig | None, workers: int = 1, tracker=None) -> dict:
    """Pass 1 over one input file: write its signature directory; return its meta."""

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n, blocks = 0, []
    without_shingles = 0
    sizes: collections.deque = collections.deque()  # bytes of the batches in flight, in order
    progress = Progress(f"dedup: signing {Path(path).name}", unit="docs", total_bytes=file_bytes(path),
                        tracker=tracker, logger=log)

    def jobs():
        start = 1
        for batch in _batches(path):
            sizes.append(sum(len(line.encode("utf-8")) for line in batch))
            yield batch, start, str(path), config
            start += len(batch)

    with open(out_dir / "hashes.u64", "wb") as fh, open(out_dir / "sigs.u32", "wb") as fs, \
            open(out_dir / "keys.u64", "wb") as fk, open(out_dir / "shingled.bool", "wb") as fo:
        for hashes, sigs, keys, ok in ordered_map(_sign_batch, jobs(), workers):
            fh.write(hashes.tobytes())
            n += len(hashes)
            progress.update(len(hashes), sizes.popleft())
            if sigs is not None:
                fs.write(sigs.tobytes())
                fk.write(np.ascontiguousarray(keys).tobytes())
                fo.write(ok.tobytes())
                blocks.append(len(hashes))
                without_shingles += int((~ok).sum())
    progress.close()
    meta = {"format": SIGNATURE_FORMAT, "documents": n, "blocks": blocks,
            "near": config.as_dict() if config else None, "documents_without_shingles": without_shingles}
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta


def _load_meta(sig_dir: Path, config: MinHashConfig | None) -> dict:
    meta_path = Path(sig_dir) / "meta.json"
    if not meta_path.is_file():
        raise UserError("not a signature directory (no meta.json)", path=sig_dir,
                        fix="run `electra-ds dedup --sign-only` on this input part first")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    want = config.as_dict() if config else None
    if meta.get("format") != SIGNATURE_FORMAT or meta.get("near") != want:
        raise UserError(f"signatures were made with other settings ({meta.get('near')}, now {want})",
                        path=sig_dir, fix="rerun the signature jobs with the same dedup settings")
    return meta


# -- pass 2: clustering ------------------------------------------------------------------------
class Signatures:
    """All parts' signature directories seen as one sequence of documents (memory-mapped)."""

    def __init__(self, dirs: list[Path], metas: list[dict], config: MinHashConfig | None):
        self.dirs, self.metas, self.config = dirs, metas, config
        self.n = sum(m["documents"] for m in metas)
        self.hashes = np.concatenate([np.fromfile(d / "hashes.u64", dtype=np.uint64) for d in dirs]) \
            if self.n else np.empty(0, dtype=np.uint64)
        if config is not None and self.n:
            self.bands, _ = config.lsh_params
            self.shingled = np.concatenate([np.fromfile(d / "shingled.bool", dtype=bool) for d in dirs])
            parts = [(d / "sigs.u32", m["documents"]) for d, m in zip(dirs, metas) if m["documents"]]
            rows = StackedRows([f for f, _ in parts], [n for _, n in parts], config.num_perm, np.uint32)
            self.sigs = rows.arrays()[0] if len(parts) == 1 else rows

    def band_keys(self, band: int) -> np.ndarray:
        out = []
        for d, meta in zip(self.dirs, self.metas):
            keys = np.memmap(d / "keys.u64", dtype=np.uint64, mode="r") if meta["documents"] else None
            offset = 0
            for size in meta["blocks"]:
                out.append(np.asarray(keys[offset + band * size: offset + (band + 1) * size]))
                offset += self.bands * size
        return np.concatenate(out)


def decide(sigs: Signatures, exact: bool, threshold: float, tracker=None) -> dict:
    """Which documents to keep, and why the others go: ``keep``, ``exact`` and ``near`` masks,
    the cluster representative of every document and the near-duplicate counts."""
    n = sigs.n
    positions = np.arange(n, dtype=np.int64)
    exact_keep = np.ones(n, dtype=bool)
    if exact and n:
        _, first = np.unique(sigs.hashes, return_index=True)
        exact_keep[:] = False
        exact_keep[first] = True
    rep = positions
    info = {}
    if sigs.config is not None and n:
        valid = exact_keep & sigs.shingled
        with Progress("dedup: grouping LSH bands, verifying candidates", total=sigs.bands, unit="bands",
                      heartbeat=True, tracker=tracker, logger=log) as bands:
            def band_keys(band: int) -> np.ndarray:
                if band:  # a band's candidates are collected when the next band's keys are asked for
                    bands.update(1)
                return sigs.band_keys(band)

            pairs, est, n_candidates = near_duplicate_pairs(band_keys, n, sigs.sigs, threshold, sigs.bands, valid)
            bands.update(1)
        with Progress(f"dedup: clustering {len(pairs)} verified pairs", unit="docs", heartbeat=True,
                      logger=log) as grouped:
            rep = clusters(n, pairs)
            grouped.update(n)
        sizes = np.bincount(rep, minlength=n)
        sizes = sizes[sizes > 1]
        hist = np.bincount(sizes)
        info = {"candidate_pairs": int(n_candidates), "verified_pairs": int(len(pairs)),
                "clusters": int(len(sizes)), "largest_cluster": int(sizes.max()) if len(sizes) else 0,
                "cluster_sizes": {str(s): int(c) for s, c in enumerate(hist) if c},
                "documents_without_shingles": int((~sigs.shingled).sum())}
    near_removed = exact_keep & (rep != positions)
    return {"keep": exact_keep & ~near_removed, "exact_removed": ~exact_keep, "near_removed": near_removed,
            "rep": rep, "near": info}


# -- the stage -----------------------------------------------------------------------------
def near_config(args) -> MinHashConfig | None:
    if not args.near:
        return None
    return MinHashConfig(num_perm=args.num_perm, ngram=args.ngram, shingle=args.shingle, threshold=args.threshold,
                         bands=args.bands, rows=args.rows, seed=args.minhash_seed)


def dedup_files(inputs: list[Path], output: Path, sig_dirs: list[Path], *, exact: bool = True,
                config: MinHashConfig | None = None, sample_pairs: int = 20, seed: int = 0, tracker=None) -> dict:
    """Cluster the signed inputs and write the kept documents; return the stats/report."""
    metas = [_load_meta(d, config) for d in sig_dirs]
    sigs = Signatures([Path(d) for d in sig_dirs], metas, config)
    decision = decide(sigs, exact, config.threshold if config else 1.0, tracker)
    keep, rep = decision["keep"], decision["rep"]
    near_ids = np.flatnonzero(decision["near_removed"])
    sampled = set(random.Random(seed).sample(near_ids.tolist(), min(sample_pairs, len(near_ids))))
    wanted = {int(rep[j]) for j in sampled} | sampled
    texts: dict[int, tuple[str, str]] = {}
    stats = {"documents_in": sigs.n, "documents_out": int(keep.sum()),
             "exact_duplicates_removed": int(decision["exact_removed"].sum()),
             "near_duplicates_removed": int(len(near_ids)), "bytes_removed": 0}
    pos = 0
    with atomic_path(output) as tmp, open_text(tmp, "w", compressed=str(output).endswith(".gz")) as out, \
            Progress("dedup: writing kept documents", total=sigs.n, unit="docs", tracker=tracker,
                     logger=log) as progress:
        for path, meta in zip(inputs, metas):
            seen = 0
            for line in _lines(path):
                progress.update(1, len(line))
                if pos >= sigs.n or seen >= meta["documents"]:
                    raise UserError(f"has more documents than its signatures ({meta['documents']})", path=path,
                                    fix="rerun the signature job for this part")
                if keep[pos]:
                    out.write(line if line.endswith("\n") else line + "\n")
                else:
                    record = json.loads(line)
                    stats["bytes_removed"] += len(record["text"].encode("utf-8"))
                if pos in wanted:
                    record = json.loads(line)
                    texts[pos] = (str(record["id"]), record["text"])
                pos += 1
                seen += 1
            if seen != meta["documents"]:
                raise UserError(f"has {seen} documents, its signatures {meta['documents']}", path=path,
                                fix="rerun the signature job for this part")
    est_of = {}
    if sampled:

        pairs = np.array(sorted((int(rep[j]), j) for j in sampled), dtype=np.int64)
        est_of = dict(zip(map(tuple, pairs.tolist()), estimated_jaccard(sigs.sigs, pairs).tolist()))
    stats["near"] = {**decision["near"], "settings": config.as_dict() if config else None,
                     "sample_removed_pairs": [
                         {"kept_id": texts[k][0], "removed_id": texts[j][0], "estimated_jaccard": round(e, 4),
                          "true_jaccard": round(true_jaccard(texts[k][1], texts[j][1], config.ngram, config.shingle), 4)}
                         for (k, j), e in est_of.items()]}
    return stats


SETTINGS = {"dedup": ("exact", "near", "shingle", "ngram", "num_perm", "threshold", "bands", "rows", "minhash_seed",
                     "sample_pairs", "threads")}


def add_arguments(parser) -> None:
    parser.add_argument("--input", required=True, nargs="+", help="documents JSONL from the corpus stage "
                        "(several: parts deduplicated together, in order)")
    parser.add_argument("--output", required=True,
                        help="kept documents JSONL (.gz for gzip); with --sign-only the signature directory")
    parser.add_argument("--stats", help="dedup counts and report (JSON); required unless --sign-only")
    parser.add_argument("--sign-only", action="store_true",
                        help="scatter step: write the signature directory of one input part to --output")
    parser.add_argument("--signatures", nargs="+", default=None,
                        help="gather step: signature directories of the --input parts (same order)")
    add_settings(parser, SETTINGS)


def run(args, tracker) -> None:
    inputs = [Path(p) for p in args.input]
    for path in inputs:
        if not path.is_file():
            raise UserError("input documents not found", path=path, fix="run the corpus stage first")
    config = near_config(args)
    settings = {"exact": args.exact, "near": config.as_dict() if config else False, "threads": args.threads}
    if args.sign_only:
        if len(inputs) != 1:
            raise UserError("--sign-only takes one --input part", field="dedup", fix="run one job per part")
        with atomic_path(args.output, is_dir=True) as tmp:
            meta = sign_documents(inputs[0], tmp, config, args.threads, tracker)
        tracker.log_params(settings)
        tracker.log_metrics({"documents_in": meta["documents"]})
        log.info("signed %d documents of %s -> %s", meta["documents"], inputs[0], args.output)
        return
    if not args.stats:
        raise UserError("--stats is required (unless --sign-only)", field="dedup", fix="add --stats FILE")
    tracker.log_params(settings)
    output = Path(args.output)
    if args.signatures:
        if len(args.signatures) != len(inputs):
            raise UserError(f"{len(args.signatures)} signature directories for {len(inputs)} inputs",
                            field="dedup", fix="give one --signatures directory per --input part, in order")
        stats = dedup_files(inputs, output, [Path(d) for d in args.signatures], exact=args.exact, config=config,
                            sample_pairs=args.sample_pairs, tracker=tracker)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}.work-") as work:
            dirs = []
            for i, path in enumerate(inputs):
                dirs.append(Path(work) / f"part-{i}")
                sign_documents(path, dirs[-1], config, args.threads, tracker)
            if sum(json.loads((d / "meta.json").read_text())["documents"] for d in dirs) == 0:
                raise UserError("no documents in the input", path=inputs[0], fix="rerun the corpus stage")
            stats = dedup_files(inputs, output, dirs, exact=args.exact, config=config,
                                sample_pairs=args.sample_pairs, tracker=tracker)
    if stats["documents_in"] == 0:
        output.unlink(missing_ok=True)
        raise UserError("no documents in the input", path=inputs[0], fix="rerun the corpus stage")
    write_json(args.stats, stats)
    tracker.log_metrics(stats)
    tracker.log_artifact(args.stats)
    log.info("kept %d of %d documents (%d exact, %d near duplicates; %d bytes removed)", stats["documents_out"],
             stats["documents_in"], stats["exact_duplicates_removed"], stats["near_duplicates_removed"],
             stats["bytes_removed"])
