"""Ordered parallel map over batches on worker processes, with a bounded read-ahead.

Used by the data stages (dedup signatures, shards packing): results come back in input order, so the
output does not depend on the number of workers, and at most ``2 * workers`` batches are in flight,
so memory stays bounded however large the input is.
"""

from __future__ import annotations

import collections
import multiprocessing as mp
from typing import Callable, Iterable, Iterator


def ordered_map(func: Callable, batches: Iterable[tuple], workers: int, initializer: Callable | None = None,
                initargs: tuple = ()) -> Iterator:
    """``func(*args)`` for each ``args`` in ``batches``, in order. With ``workers`` <= 1 everything runs
    in this process (``initializer`` too); otherwise on a pool of forkserver (else spawn) processes, which
    do not inherit this process's threads or open resources (unlike fork, they are safe beside MLflow's
    or a BLAS library's threads). ``func`` must be a module-level function."""
    if workers <= 1:
        if initializer is not None:
            initializer(*initargs)
        for args in batches:
            yield func(*args)
        return
    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    ctx = mp.get_context(method)
    if method == "forkserver":  # the server imports func's module once; each worker forks from it ready
        ctx.set_forkserver_preload([func.__module__])
    with ctx.Pool(workers, initializer=initializer, initargs=initargs) as pool:
        pending: collections.deque = collections.deque()
        for args in batches:
            pending.append(pool.apply_async(func, args))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def batched(items: Iterable, max_items: int, max_chars: int, chars: Callable = len) -> Iterator[list]:
    """``items`` in lists of at most ``max_items``, cut early once ``chars(item)`` adds up to ``max_chars``:
    batches of similar work whatever the document lengths (the input of :func:`ordered_map`)."""
    batch, total = [], 0
    for item in items:
        batch.append(item)
        total += chars(item)
        if len(batch) >= max_items or total >= max_chars:
            yield batch
            batch, total = [], 0
    if batch:
        yield batch
