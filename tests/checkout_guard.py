"""Tests never write into the checkout: the paths that appear under the repository during a test session.

``conftest.py`` takes a :func:`snapshot` when the session starts and another when it ends; :func:`new_paths` is
what appeared in between (files and folders, untracked or git-ignored alike, so a store that .gitignore hides,
such as ``mlflow.db``, counts too), outside the caches tools keep there. Comparing two snapshots, not asking git,
leaves alone the files a developer had already created before the session.
"""

from __future__ import annotations

import os
from pathlib import Path

# Folders whose contents are the tools' own caches, written by running anything: not outputs of a test.
CACHES = {".git", ".venv", "__pycache__", ".pytest_cache", ".snakemake"}


def snapshot(root: Path) -> set[str]:
    """Every file and folder under ``root`` (relative, folders with a trailing /), outside :data:`CACHES`
    and ``*.egg-info``."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in CACHES and not d.endswith(".egg-info")]
        rel = Path(dirpath).relative_to(root)
        found.update(f"{rel / d}/" for d in dirnames)
        found.update(str(rel / f) for f in filenames)
    return found


def new_paths(before: set[str], after: set[str]) -> list[str]:
    """The top-most new paths: a new folder is reported once, not with every file in it."""
    added = sorted(after - before)
    return [p for p in added if not any(p != q and q.endswith("/") and p.startswith(q) for q in added)]
