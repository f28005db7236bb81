"""Document-level splits shared by the shards and probes stages.

A document's split depends only on its id and the seed, never on its position in a file, so the
train/valid/held-out split is stable across reruns and a document is never cut between splits.
Held-out documents are kept out of pretraining and used to derive the offline probe tasks.
"""

from __future__ import annotations

import hashlib


def document_split(doc_id: str, *, valid_fraction: float, heldout_fraction: float = 0.0, seed: int = 0) -> str:
    """Return "heldout", "valid" or "train" for a document id."""
    digest = hashlib.blake2b(f"{seed}:{doc_id}".encode("utf-8"), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2**64
    if u < heldout_fraction:
        return "heldout"
    if u < heldout_fraction + valid_fraction:
        return "valid"
    return "train"
