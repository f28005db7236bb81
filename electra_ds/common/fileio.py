"""Atomic outputs and the JSONL document format shared by the data stages.

Every output is written under a temporary name next to its final path and renamed only when
complete, so a failed or killed stage never leaves a file a downstream rule would consume.
Documents between stages are JSONL records with at least ``id`` and ``text``; ``.gz`` paths are
gzip-compressed.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import gzip
import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterable, Iterator

from electra_ds.common.errors import UserError
from electra_ds.common.userfiles import decode_error, parse_json_line

log = logging.getLogger(__name__)


@contextlib.contextmanager
def atomic_path(path, *, is_dir: bool = False, needed: int | None = None):
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds.

    A write that fails for want of space ends as one UserError naming ``path``, the space it needed (``needed``
    bytes where the writer knows it, else more than what was written) and what is free (electra_ds.common.diskspace).

    A temporary of the same output left by a run that was killed (SIGKILL, OOM, node failure: no cleanup ran)
    is removed first. One output is only ever written by one job at a time (Snakemake, and the results
    directory's lock against a second pipeline), so any such leftover is stale."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    refuse_link(path)
    remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    if is_dir:
        tmp.mkdir()
    try:
        yield tmp
        publish_modes(tmp)
        if is_dir and path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException as exc:
        from electra_ds.common.diskspace import full_disk_error, tree_bytes, write_failure

        written = tree_bytes(tmp) if write_failure(exc) else 0
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
        error = full_disk_error(exc, path, needed=needed, written=written)
        if error is not None:
            raise error from None
        raise


def current_umask() -> int:
    """The process's umask (read from /proc where it can be, so no other thread sees a changed one)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def publish_modes(path) -> None:
    """Give ``path`` (and, for a folder, everything in it) the mode the umask gives a new file or folder.

    Some writers create their file private whatever the umask (safetensors' ``save_file`` writes 0600, so an
    exported or fine-tuned ``model.safetensors`` was unreadable by the group while its ``config.json`` beside it
    was 0644): an output is published with the permissions any other file of the run gets. An executable file
    stays executable (as a new one would be: 0777 less the umask)."""
    path = Path(path)
    mask = current_umask()
    items = [path, *path.rglob("*")] if path.is_dir() and not path.is_symlink() else [path]
    for item in items:
        try:
            st = item.lstat()
        except OSError:
            continue
        if item.is_symlink():
            continue
        executable = item.is_dir() or st.st_mode & 0o111
        wanted = (0o777 if executable else 0o666) & ~mask
        if (st.st_mode & 0o777) != wanted:
            os.chmod(item, wanted)


def remove_stale_temporaries(path) -> int:
    """Delete leftovers ``.<name>.tmp-*`` of :func:`atomic_path` for ``path``; return how many were removed."""
    path = Path(path)
    removed = 0
    for stale in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        size = 0 if stale.is_symlink() else _size(stale)
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)  # a link itself, never what it points at
        log.warning("removed %s (%.1f MB), a temporary left by an interrupted run", stale, size / 1e6)
        removed += 1
    return removed


def _size(path: Path) -> int:
    try:
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
    except OSError:
        return 0


def link_error(path) -> UserError:
    """The error for an output path that is a symbolic link (planted, or left by someone): never written through."""
    try:
        target = f" (to {os.readlink(path)})"
    except OSError:
        target = ""
    return UserError(f"is a symbolic link{target}; refusing to write through it", path=path,
                     fix="remove the link and run again (to keep outputs on another disk, point the results or "
                         "output directory itself there)")


def refuse_link(path) -> Path:
    """``path``, unless it is a symbolic link: outputs a stage creates are never written through one (a link planted
    at ``train_log.jsonl`` would otherwise have the run overwrite whatever it points at). Only the final component
    is checked: the results or output directory itself, and its parents, may be links."""
    path = Path(path)
    if path.is_symlink():
        raise link_error(path)
    return path


def refuse_links(root, names: Iterable[str] = (), glob_pattern: str | None = None) -> None:
    """:func:`refuse_link` for each of ``names`` under ``root`` and each entry matching ``glob_pattern`` there."""
    root = Path(root)
    for name in names:
        refuse_link(root / name)
    if glob_pattern and root.is_dir() and not root.is_symlink():
        for entry in sorted(root.glob(glob_pattern)):
            refuse_link(entry)


def refuse_links_under(folder) -> None:
    """:func:`refuse_link` for ``folder`` and everything in it (not following links): for the folders of files that
    are written by others than the stages (Snakemake's job logs and benchmarks, a shell's ``> log``), checked
    before the workflow starts."""
    folder = Path(folder)
    refuse_link(folder)
    if not folder.is_dir():
        return
    for parent, dirs, files in os.walk(folder):
        for name in sorted(dirs + files):
            refuse_link(Path(parent) / name)


def open_nofollow(path, mode: str = "a"):
    """A text file opened for writing (``"w"``) or appending (``"a"``) with ``O_NOFOLLOW``: if ``path`` is a
    symbolic link, nothing is opened and the error is :func:`link_error` (checked by the kernel at the open
    itself, so a link planted after any earlier check is refused too)."""
    if mode not in ("w", "a"):
        raise ValueError(f"open_nofollow: mode {mode!r} (only 'w' or 'a')")
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_APPEND if mode == "a" else os.O_TRUNC)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise link_error(path) from None
        raise
    return os.fdopen(fd, mode, encoding="utf-8", newline="\n")


def open_text(path: Path, mode: str, compressed: bool | None = None):
    if compressed is None:
        compressed = str(path).endswith(".gz")
    if compressed:
        return gzip.open(path, mode + "t", encoding="utf-8", newline="\n")
    return open(path, mode, encoding="utf-8", newline="\n")


def write_jsonl(path, records: Iterable[dict]) -> int:
    """Atomically write records as JSONL; return how many were written."""
    path = Path(path)
    n = 0
    with atomic_path(path) as tmp, open_text(tmp, "w", compressed=str(path).endswith(".gz")) as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False))
            f.write("\n")
            n += 1
    return n


def read_jsonl(path) -> Iterator[dict]:
    """The records of a JSONL file; a line that is not UTF-8 or not JSON is a UserError naming file and line."""
    path = Path(path)
    try:
        with open_text(path, "r") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    yield parse_json_line(line, path, number)
    except UnicodeDecodeError as exc:
        raise decode_error(path, exc) from None


def write_json(path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def read_json(path):
    """A JSON file; bytes that are not UTF-8 or text that is not JSON (an empty file too) are a UserError naming
    the file, line and column. A missing file is the caller's (FileNotFoundError)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise decode_error(path, exc) from None
    except json.JSONDecodeError as exc:
        what = "is empty" if not exc.doc.strip() else f"is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        raise UserError(what, path=path, fix="rerun the stage that writes it") from None


def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
