"""The shard format and its reader, apart from the packer that writes it (:mod:`electra_ds.shards`).

A shards directory holds ``<split>-00000.bin`` ... raw row-major ``(examples, max_seq_len)`` arrays of token
ids (uint16, or uint32 for vocabularies over 65535), right-padded with [PAD], and ``index.json``: the format
name, ``max_seq_len``, ``dtype``, ``vocab_size`` and per split its shards' files, example counts and sha256s.
:func:`open_split` checks and memory-maps one split; :func:`token_type_ids` derives segment ids from [SEP].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from electra_ds import PAD_ID, SEP_ID
from electra_ds.errors import UserError
from electra_ds.fileio import read_json, sha256_file
from electra_ds.rows import StackedRows

FORMAT = "electra-ds-shards-v1"
SPLITS = ("train", "valid")


def token_type_ids(input_ids: np.ndarray, sep_id: int = SEP_ID, pad_id: int = PAD_ID) -> np.ndarray:
    """Segment ids: 0 up to and including the first [SEP], 1 after it; padding gets 0. 1D or 2D."""
    ids = np.asarray(input_ids)
    is_sep = ids == sep_id
    after_first_sep = (np.cumsum(is_sep, axis=-1) - is_sep) > 0
    return (after_first_sep & (ids != pad_id)).astype(np.int64)



class ShardedExamples:
    """Random access over all shard files of one split (memory-mapped); rows come back as int64."""

    def __init__(self, shard_dir, split: str, index: dict):
        self.path, self.split = Path(shard_dir), split  # path: the shards directory
        self.max_seq_len = int(index["max_seq_len"])
        self.dtype = np.dtype(index["dtype"])
        self.vocab_size = int(index["vocab_size"])
        shards = [s for s in index["splits"][split]["shards"] if s["examples"] > 0]
        self._rows = StackedRows([self.path / s["file"] for s in shards], [s["examples"] for s in shards],
                                 self.max_seq_len, self.dtype, np.int64)

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i: int) -> np.ndarray:
        if not -len(self) <= int(i) < len(self):
            raise IndexError(f"example {i} out of range for {len(self)} examples")
        return self._rows.gather([i])[0]

    def batch(self, indices) -> np.ndarray:
        return self._rows.gather(indices)


def open_split(shard_dir, split: str = "train", verify: bool = True) -> ShardedExamples:
    """Open one split of a shards directory; with ``verify`` check every file's size and sha256."""
    index_path = Path(shard_dir) / "index.json"
    if not index_path.is_file():
        raise UserError("no shard index", path=index_path, fix="run the shards stage")
    index = read_json(index_path)
    if index.get("format") != FORMAT:
        raise UserError(f"unknown shard format {index.get('format')!r} (expected {FORMAT})", path=index_path,
                        fix="rerun the shards stage")
    if split not in index["splits"]:
        raise UserError(f"no split {split!r} (have {', '.join(index['splits'])})", path=index_path)
    row_bytes = int(index["max_seq_len"]) * np.dtype(index["dtype"]).itemsize
    for shard in index["splits"][split]["shards"] if verify else ():
        path = Path(shard_dir) / shard["file"]
        if not path.is_file():
            raise UserError("shard file missing", path=path, fix="rerun the shards stage")
        size, expected = path.stat().st_size, shard["examples"] * row_bytes
        if size != expected:
            raise UserError(f"size mismatch: {size} bytes, the index says {expected}", path=path,
                            fix="rerun the shards stage")
        if sha256_file(path) != shard["sha256"]:
            raise UserError("checksum mismatch with index.json (the file changed or is corrupt)", path=path,
                            fix="rerun the shards stage")
    return ShardedExamples(shard_dir, split, index)
