"""Rows of several memory-mapped 2-D arrays indexed as one, without concatenating them.

Shared by the shard reader (token rows over ``<split>-NNNNN.bin`` files) and dedup (MinHash signature rows
over the parts' signature files): a gather looks up each index's file once, per file, with numpy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


class StackedRows:
    """``rows[indices]`` over raw row-major files of ``width`` columns of ``file_dtype`` (memory-mapped lazily)
    as if they were one array; rows come back as ``dtype``. Pickles without its memory maps (DataLoader
    workers get a copy that maps the files again)."""

    def __init__(self, files: Sequence, lengths: Sequence[int], width: int, file_dtype, dtype=None):
        self.files, self.lengths = [Path(f) for f in files], [int(n) for n in lengths]
        self.starts = np.cumsum([0, *self.lengths])
        self.width, self.file_dtype = int(width), np.dtype(file_dtype)
        self.dtype = np.dtype(dtype or file_dtype)
        self._arrays = None

    def arrays(self) -> list:
        if self._arrays is None:
            self._arrays = [np.memmap(f, dtype=self.file_dtype, mode="r", shape=(n, self.width))
                            for f, n in zip(self.files, self.lengths)]
        return self._arrays

    def __getstate__(self):
        return {**self.__dict__, "_arrays": None}

    def __len__(self) -> int:
        return int(self.starts[-1])

    def parts(self, indices) -> list[int]:
        """The files (their positions in ``files``) that hold the rows at ``indices``."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        idx = np.where(idx < 0, idx + len(self), idx)
        idx = idx[(idx >= 0) & (idx < len(self))]  # out of range: gather's IndexError
        return np.unique(np.searchsorted(self.starts, idx, side="right") - 1).tolist()

    def gather(self, indices) -> np.ndarray:
        """The rows at ``indices`` (negative ones count from the end), as ``dtype``."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        idx = np.where(idx < 0, idx + len(self), idx)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"indices out of range for {len(self)} rows")
        out = np.empty((idx.size, self.width), dtype=self.dtype)
        part = np.searchsorted(self.starts, idx, side="right") - 1
        arrays = self.arrays()
        for p in np.unique(part):
            where = part == p
            out[where] = arrays[p][idx[where] - self.starts[p]]
        return out

    __getitem__ = gather  # rows[indices], like one 2-D array
