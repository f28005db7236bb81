"""Split one JSONL document file into N contiguous parts of (nearly) equal line counts.

The scatter step of the split dedup DAG: each part is signed by its own job (``electra-ds dedup
--sign-only``), possibly on another node, and one gather job clusters them all (``--signatures``).
Lines are copied unchanged and in order, so the gathered result equals a single dedup job's.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from electra_ds.common.errors import UserError
from electra_ds.common.fileio import atomic_path


def add_arguments(p) -> None:
    p.add_argument("--input", required=True, help="documents JSONL to split")
    p.add_argument("--outputs", required=True, nargs="+", help="one path per part, in order")


def split_lines(path: Path, outputs: list[Path]) -> list[int]:
    """Copy the non-empty lines of ``path`` into ``outputs`` in contiguous runs; return lines per part."""
    with open(path, "rb") as f:
        total = sum(1 for line in f if line.strip())
    if total == 0:
        raise UserError("has no documents to split", path=path, fix="check the corpus stage's output")
    n = len(outputs)
    sizes = [total // n + (1 if i < total % n else 0) for i in range(n)]
    with contextlib.ExitStack() as stack, open(path, "rb") as f:
        tmps = [stack.enter_context(atomic_path(out)) for out in outputs]
        handles = [stack.enter_context(open(tmp, "wb")) for tmp in tmps]
        part, written = 0, 0
        for line in f:
            if not line.strip():
                continue
            while written == sizes[part]:
                part, written = part + 1, 0
            handles[part].write(line if line.endswith(b"\n") else line + b"\n")
            written += 1
    return sizes


def run(args, tracker) -> None:
    sizes = split_lines(Path(args.input), [Path(p) for p in args.outputs])
    tracker.log_params({"parts": len(sizes)})
    tracker.log_metrics({"documents": sum(sizes), "smallest_part": min(sizes), "largest_part": max(sizes)})
