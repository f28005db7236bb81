"""The shard format and its reader, apart from the packer that writes it (:mod:`electra_ds.data.shards`).

A shards directory holds ``<split>-00000.bin`` ... raw row-major ``(examples, max_seq_len)`` arrays of token
ids (uint16, or uint32 for vocabularies over 65535), right-padded with [PAD], and ``index.json``: the format
name, ``max_seq_len``, ``dtype``, ``vocab_size`` and per split its shards' files, example counts and sha256s.
:func:`open_split` checks and memory-maps one split; :func:`token_type_ids` derives segment ids from [SEP].
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from electra_ds import PAD_ID, SEP_ID
from electra_ds.common.errors import UserError
from electra_ds.common.fileio import read_json, sha256_file
from electra_ds.data.rows import StackedRows

FORMAT = "electra-ds-shards-v1"
SPLITS = ("train", "valid")


def token_type_ids(input_ids: np.ndarray, sep_id: int = SEP_ID, pad_id: int = PAD_ID) -> np.ndarray:
    """Segment ids: 0 up to and including the first [SEP], 1 after it; padding gets 0. 1D or 2D."""
    ids = np.asarray(input_ids)
    is_sep = ids == sep_id
    after_first_sep = (np.cumsum(is_sep, axis=-1) - is_sep) > 0
    return (after_first_sep & (ids != pad_id)).astype(np.int64)



def file_identity(path) -> tuple:
    """What changes when a file is rewritten, replaced or truncated: (device, inode, size, mtime in ns)."""
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class ShardedExamples:
    """Random access over all shard files of one split (memory-mapped); rows come back as int64.

    Each file's identity (device, inode, size, mtime) is taken when the split is opened, before its sha256 is
    checked (:func:`open_split`), and every read checks it again for the files it touches (one ``stat`` each): a
    shard rewritten, replaced or truncated while a run is training stops the run at its next read with an error
    naming the file, before a truncated memory map can crash the process (SIGBUS) and before a batch of other data
    is trained on."""

    def __init__(self, shard_dir, split: str, index: dict, identities: dict | None = None):
        self.path, self.split = Path(shard_dir), split  # path: the shards directory
        self.max_seq_len = int(index["max_seq_len"])
        self.dtype = np.dtype(index["dtype"])
        self.vocab_size = int(index["vocab_size"])
        self.tokenizer_sha256 = index.get("tokenizer_sha256")
        shards = [s for s in index["splits"][split]["shards"] if s["examples"] > 0]
        files = [self.path / s["file"] for s in shards]
        self._identity = [(identities or {}).get(f) or file_identity(f) for f in files]
        self._rows = StackedRows(files, [s["examples"] for s in shards], self.max_seq_len, self.dtype, np.int64)

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i: int) -> np.ndarray:
        if not -len(self) <= int(i) < len(self):
            raise IndexError(f"example {i} out of range for {len(self)} examples")
        return self.batch([i])[0]

    def batch(self, indices) -> np.ndarray:
        for part in self._rows.parts(indices):
            self.check_unchanged(part)
        return self._rows.gather(indices)

    def token_counts(self, chunk_rows: int = 65536) -> np.ndarray:
        """How often each vocabulary id occurs in this split (padding included), file by file in chunks: one pass,
        about a second for the study's 6 M tokens. The unigram prior ``output_bias_init: prior`` starts from."""
        counts = np.zeros(self.vocab_size, dtype=np.int64)
        for part, rows in enumerate(self._rows.arrays()):
            self.check_unchanged(part)
            for start in range(0, len(rows), chunk_rows):
                counts += np.bincount(np.asarray(rows[start:start + chunk_rows]).reshape(-1),
                                      minlength=self.vocab_size)[:self.vocab_size]
        return counts

    def check_unchanged(self, part: int) -> None:
        """UserError when shard file ``part`` is not the file this split opened and verified."""
        path = self._rows.files[part]
        try:
            now = file_identity(path)
        except OSError as exc:
            now = exc
        if now == self._identity[part]:
            return
        if isinstance(now, OSError):
            what = f"is gone ({now.strerror})"
        elif now[2] != self._identity[part][2]:
            what = f"changed size from {self._identity[part][2]} to {now[2]} bytes"
        else:
            what = "was rewritten or replaced (its inode or modification time changed)"
        raise UserError(f"shard file {what} after training started; stopped before reading it (checkpoints are "
                        "kept)", path=path, fix="restore the shards (rerun the shards stage), then run the same "
                        "command again: it resumes from the last checkpoint")


def read_index(shard_dir) -> dict:
    """``index.json`` of a shards directory, checked field by field: an empty, garbled or foreign index is a
    UserError naming the file and the field, never a TypeError or KeyError deep in the reader."""
    index_path = Path(shard_dir) / "index.json"
    if not index_path.is_file():
        raise UserError("no shard index", path=index_path, fix="run the shards stage")
    index = read_json(index_path)  # empty or not JSON: a UserError naming the file

    def bad(field: str, what: str):
        return UserError(f"{what}; the index is damaged or not the shards stage's", path=index_path, field=field,
                         fix="rerun the shards stage")

    if not isinstance(index, dict):
        raise bad("(top level)", f"is a JSON {type(index).__name__}, not an object")
    if index.get("format") != FORMAT:
        raise UserError(f"unknown shard format {index.get('format')!r} (expected {FORMAT})", path=index_path,
                        fix="rerun the shards stage")
    for field in ("max_seq_len", "vocab_size"):
        if not _is_int(index.get(field)) or index[field] < 1:
            raise bad(field, f"{index.get(field)!r} is not a positive integer")
    if index.get("dtype") not in ("uint16", "uint32"):
        raise bad("dtype", f"{index.get('dtype')!r} is not uint16 or uint32")
    splits = index.get("splits")
    if not isinstance(splits, dict):
        raise bad("splits", "missing or not an object")
    for name, split in splits.items():
        shards = split.get("shards") if isinstance(split, dict) else None
        if not isinstance(shards, list):
            raise bad(f"splits.{name}.shards", "missing or not a list")
        for i, shard in enumerate(shards):
            where = f"splits.{name}.shards[{i}]"
            if not isinstance(shard, dict):
                raise bad(where, "not an object")
            file = shard.get("file")
            if not isinstance(file, str) or not file or Path(file).name != file:
                raise bad(f"{where}.file", f"{file!r} is not a file name in the shards directory")
            if not _is_int(shard.get("examples")) or shard["examples"] < 0:
                raise bad(f"{where}.examples", f"{shard.get('examples')!r} is not a count")
            if not isinstance(shard.get("sha256"), str):
                raise bad(f"{where}.sha256", "missing")
    return index


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def open_split(shard_dir, split: str = "train", verify: bool = True) -> ShardedExamples:
    """Open one split of a shards directory; with ``verify`` check every file's size and sha256."""
    index_path = Path(shard_dir) / "index.json"
    index = read_index(shard_dir)
    if split not in index["splits"]:
        raise UserError(f"no split {split!r} (have {', '.join(index['splits'])})", path=index_path)
    row_bytes = int(index["max_seq_len"]) * np.dtype(index["dtype"]).itemsize
    identities = {}
    for shard in index["splits"][split]["shards"]:
        path = Path(shard_dir) / shard["file"]
        if not path.is_file():
            raise UserError("shard file missing", path=path, fix="rerun the shards stage")
        identities[path] = before = file_identity(path)  # taken before the hash: a change during it is seen
        if before[2] != shard["examples"] * row_bytes:
            raise UserError(f"size mismatch: {before[2]} bytes, the index says {shard['examples'] * row_bytes}",
                            path=path, fix="rerun the shards stage")
        if verify and sha256_file(path) != shard["sha256"]:
            raise UserError("checksum mismatch with index.json (the file changed or is corrupt)", path=path,
                            fix="rerun the shards stage")
    return ShardedExamples(shard_dir, split, index, identities)


def tokenizer_file(tokenizer_dir) -> Path:
    """The file that defines the vocabulary: ``spm.model``, else (``vocab.tokenizer: wordpiece``) ``tokenizer.json``."""
    spm_model = Path(tokenizer_dir) / "spm.model"
    return spm_model if spm_model.is_file() else Path(tokenizer_dir) / "tokenizer.json"


def tokenizer_sha256(tokenizer_dir) -> str | None:
    """The digest the shards index records for its tokenizer: sha256 of :func:`tokenizer_file` (None without one)."""
    model = tokenizer_file(tokenizer_dir)
    return sha256_file(model) if model.is_file() else None


def check_tokenizer(expected: str | None, tokenizer_dir, made_with: str) -> None:
    """UserError when ``tokenizer_dir`` is not the tokenizer whose sha256 (``expected``, from a shards index or a
    pretraining summary) ``made_with`` names; nothing to check when either has no digest (older outputs)."""
    got = tokenizer_sha256(tokenizer_dir)
    if expected and got and got != expected:
        raise UserError(f"this is not the tokenizer {made_with} was made with ({tokenizer_file(tokenizer_dir).name} "
                        f"sha256 {got[:12]}..., expected {expected[:12]}...)", path=Path(tokenizer_dir),
                        fix="pass the vocab directory the shards stage used (<results>/vocab)")
