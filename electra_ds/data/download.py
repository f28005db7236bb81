"""HTTP(S) downloads for the corpus stage: checksum required, resumable, atomic.

:func:`fetch` downloads ``url`` into a cache directory as ``<sha256[:12]>-<file name>``. Bytes arrive in
``<name>.part``; an interrupted download resumes from there with an HTTP ``Range`` request (starting
over if the server ignores it). Only when the whole file's sha256 matches is it renamed to its final
name, so a final name always holds verified bytes; a mismatch deletes the partial file and fails.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from electra_ds.common.errors import UserError
from electra_ds.common.fileio import refuse_link, sha256_file
from electra_ds.common.net import reach_error

log = logging.getLogger(__name__)

CHUNK = 1 << 20
TIMEOUT = 30


def cached_path(url: str, sha256: str, cache_dir) -> Path:
    name = Path(urlparse(url).path).name or "download"
    return Path(cache_dir) / f"{sha256.lower()[:12]}-{name}"


def unreachable_reason(url: str) -> str | None:
    """Why ``url``'s host cannot be reached now (offline variable, no connection to it or to its proxy), or None."""
    if os.environ.get("ELECTRA_DS_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "ELECTRA_DS_OFFLINE is set"
    return reach_error(url)


def check_url(url: str, sha256: str, cache_dir, field: str) -> None:
    """Fail at once (before any text is read) when the file is not cached and the host is unreachable."""
    if urlparse(url).scheme not in ("http", "https"):
        raise UserError(f"not an http(s) URL: {url!r}", field=f"{field}.url", fix="use an https:// URL")
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256.lower()):
        raise UserError("sha256 must be 64 hex digits", field=f"{field}.sha256",
                        fix="give the file's sha256 (e.g. `sha256sum FILE`)")
    if cached_path(url, sha256, cache_dir).is_file():
        return
    reason = unreachable_reason(url)
    if reason:
        raise UserError(f"{url} is unreachable (offline: {reason})", field=field,
                        fix="run online once to fill the download cache, or download the file and use a local "
                            "source (type: local, paths: [...])")


def fetch(url: str, sha256: str, cache_dir, field: str = "corpus.sources") -> Path:
    """The verified local copy of ``url`` (downloaded, resumed or reused from the cache)."""

    sha256 = sha256.lower()
    final = cached_path(url, sha256, cache_dir)
    if final.is_file():
        if sha256_file(final) == sha256:
            return final
        final.unlink()  # changed on disk since: download again
    final.parent.mkdir(parents=True, exist_ok=True)
    part = refuse_link(final.with_name(final.name + ".part"))  # appended to: never through a link
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "electra-ds", **({"Range": f"bytes={have}-"} if have else {})}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT) as resp:
            resume = have and resp.status == 206
            if have and not resume:
                log.info("%s: the server ignored the range request; downloading from the start", url)
            h = hashlib.sha256()
            if resume:
                with open(part, "rb") as f:
                    while block := f.read(CHUNK):
                        h.update(block)
            with open(part, "ab" if resume else "wb") as f:
                while block := resp.read(CHUNK):
                    f.write(block)
                    h.update(block)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to fetch: the partial file may be complete
            h = hashlib.sha256(part.read_bytes())
        else:
            raise UserError(f"download failed: HTTP {exc.code} {exc.reason}", path=url, field=field,
                            fix="check the URL") from None
    except (urllib.error.URLError, OSError) as exc:
        raise UserError(f"download failed ({getattr(exc, 'reason', exc)}); the partial file is kept and the next "
                        "run resumes it", path=url, field=field, fix="check the network and rerun") from None
    got = h.hexdigest()
    if got != sha256:
        part.unlink(missing_ok=True)
        raise UserError(f"checksum mismatch: expected sha256 {sha256}, got {got}", path=url,
                        field=f"{field}.sha256", fix="correct the sha256 in the config, or check the URL")
    os.replace(part, final)
    return final
