"""Shared by the benchmark scripts: the real documents they measure on, and a timer.

Documents are 500-word passages of the Project Gutenberg books in ../shared/data/corpus/gutenberg
(headers and licences stripped), or the built-in demo corpus when that folder is absent.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def gutenberg_dir() -> Path | None:
    for candidate in (os.environ.get("ELECTRA_DS_SHARED_DATA"), REPO.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "corpus" / "gutenberg").is_dir():
            return Path(candidate) / "corpus" / "gutenberg"
    return None


def documents(words_per_doc: int = 500) -> tuple[list[dict], str]:
    """(documents, description): real passages with ids, in a fixed order."""
    from electra_ds.data.text import normalise_text, strip_gutenberg

    root = gutenberg_dir()
    docs = []
    if root is None:
        from electra_ds.data.sources import iter_demo

        docs = [{"id": i, "text": normalise_text(t)} for i, t in iter_demo() if len(t) >= 200]
        return docs, f"demo corpus ({len(docs)} documents)"
    for book in sorted(root.glob("*.txt")):
        text = normalise_text(strip_gutenberg(book.read_text(encoding="utf-8-sig")))
        lines, count, part = [], 0, 0
        for line in text.split("\n"):
            lines.append(line)
            count += len(line.split())
            if count >= words_per_doc:
                docs.append({"id": f"{book.name}:{part}", "text": "\n".join(lines).strip()})
                lines, count, part = [], 0, part + 1
        if count:
            docs.append({"id": f"{book.name}:{part}", "text": "\n".join(lines).strip()})
    docs = [d for d in docs if d["text"]]
    mb = sum(len(d["text"].encode()) for d in docs) / 1e6
    return docs, f"{len(docs)} passages of {root.name} ({mb:.1f} MB)"


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
