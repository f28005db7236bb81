"""A full disk (or quota) reported as one line naming the path and the space it needed.

Writers report a full disk in different ways: Python and numpy raise ``OSError`` with errno ENOSPC (EDQUOT for a
quota), safetensors a ``SafetensorError`` whose text ends in "(os error 28)", and ``torch.save`` a ``RuntimeError``
of its zip writer ("unexpected pos 6188928 vs 6188824", "basic_ios::clear: iostream error") that names no cause.
:func:`write_failure` recognises them; :func:`full_disk_error` turns one into a :class:`UserError` that says what
was being written, how much it needed and how much is free there. :func:`electra_ds.common.fileio.atomic_path` uses it for
every output it publishes (the shards, an export, a fine-tuning job's folder, every JSON), and the pretraining
checkpoint save (electra_ds.pretraining.trainer) for its own protocol.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from electra_ds.common.errors import UserError

NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_NO_SPACE_TEXT = ("no space left on device", "disk quota exceeded", "os error 28)", "os error 122)")
# torch.save's zip writer (caffe2 PyTorchStreamWriter) reports a failed write without its errno
_TORCH_WRITE_FAILURE = ("unexpected pos", "basic_ios::clear", "iostream error", "PytorchStreamWriter failed",
                        "file write failed")


def write_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a write that failed for want of space (or, for torch's writer, a failed write at all)."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno in NO_SPACE_ERRNOS
    if not isinstance(exc, Exception) or isinstance(exc, UserError):
        return False
    text = str(exc)
    return any(m in text.lower() for m in _NO_SPACE_TEXT) or (
        isinstance(exc, RuntimeError) and any(m in text for m in _TORCH_WRITE_FAILURE))


def free_bytes(path) -> int | None:
    """Bytes free to this user on the file system of ``path`` (its nearest existing parent)."""
    for candidate in [Path(path), *Path(path).parents]:
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def tree_bytes(path) -> int:
    """Bytes in a file, or in every file under a folder (what a failed write got onto the disk)."""
    path = Path(path)
    try:
        if path.is_file():
            return path.stat().st_size
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())
    except OSError:
        return 0


def module_bytes(*modules) -> int:
    """What saving these torch modules' weights takes (parameters and buffers, at their dtypes), about."""
    return sum(t.numel() * t.element_size() for m in modules for t in [*m.parameters(), *m.buffers()])


def mb(n: int | float | None) -> str:
    if n is None:
        return "an unknown amount"
    return f"{n / 1e6:.1f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"


def full_disk_error(exc: BaseException, path, *, needed: int | None = None, written: int = 0,
                    what: str | None = None, kept: str = "nothing of it was kept", fix: str | None = None):
    """The UserError for a failed write of ``path`` (``what`` it is), or None when ``exc`` is not one.

    ``needed``: the bytes the output takes, where the writer can estimate them; otherwise the message gives what
    was written before the write failed, a lower bound. Call it after removing the partial output, so that the
    free space it reports is what a rerun finds."""
    if not write_failure(exc):
        return None
    path = Path(path)
    free = free_bytes(path)
    if needed is not None:
        need = f"it needs about {mb(needed)}"
    else:
        need = f"it needs more than the {mb(written)} written before the write failed"
    cause = "no space left on the device" if isinstance(exc, OSError) or "space" in str(exc).lower() or \
        (free is not None and (needed is None or free < needed)) else f"the write failed ({str(exc)[:120]})"
    where = _mount_point(path)
    return UserError(f"{cause} while writing {what or 'this output'}: {need}, {mb(free)} free on {where}; {kept}",
                     path=path, fix=fix or f"free space on {where} (or write to a larger file system) and run the "
                                           "same command again")


def _mount_point(path: Path) -> str:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return str(path)
