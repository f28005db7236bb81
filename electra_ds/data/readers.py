"""Reading local text files into documents: txt (whole file, lines or paragraphs), JSONL and parquet,
gzip- or zstd-compressed, streamed so that memory never depends on the size of a file.

Text files are decoded block by block (CRLF and lone CR become LF, a BOM is dropped); bytes that are
not UTF-8 fail, or are replaced or skipped per the source's ``on_decode_error``. Documents longer
than a bound (4 x ``max_chars``: normalisation never shrinks text to a quarter) are never held in
memory: :data:`TOO_LONG` stands in for them. Project Gutenberg headers and licences are stripped line
by line (:func:`electra_ds.data.text.gutenberg_body`). Document ids name the file and the unit:
``local:<dir>/<file>`` (whole file), ``:<line>`` (lines, 1-based), ``:p<n>`` (paragraphs), ``:<row>``
(JSONL lines and parquet rows).
"""

from __future__ import annotations

import codecs
import glob
import gzip
import io
import itertools
import json
import logging
import re
from pathlib import Path
from typing import Iterator

from electra_ds.common.errors import UserError
from electra_ds.data.text import gutenberg_body

log = logging.getLogger(__name__)

_BAD_BYTES = re.compile("[\udc80-\udcff]")  # bytes that are not UTF-8, kept by surrogateescape
JSONL_BYTES_PER_CHAR = 24  # a JSONL line over 24 x max_chars bytes is dropped unread (\uXXXX escapes: 6 B/char)


def expand_paths(patterns: list[str], field: str) -> list[tuple[Path, str]]:
    """(file, id stem) for each file matched by each glob / path / directory, sorted per pattern.

    The id stem is the file's path below the pattern's fixed directory, prefixed by that directory's
    name (``gutenberg/11-0.txt``), so document ids do not change when the data moves elsewhere.
    A pattern that matches nothing is an error.
    """
    files = []
    for pattern in patterns:
        p = Path(pattern)
        if p.is_dir():
            base = p
            matches = sorted(str(f) for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
        else:
            fixed = [part for part in itertools.takewhile(lambda s: not glob.has_magic(s), p.parts)]
            base = Path(*fixed).parent if len(fixed) == len(p.parts) else Path(*fixed) if fixed else Path(".")
            matches = sorted(m for m in glob.glob(pattern, recursive=True) if Path(m).is_file())
        if not matches:
            raise UserError("no file matches this path or glob", path=pattern, field=field,
                            fix="correct the path (relative paths are taken from the working directory)")
        prefix = base.resolve().name
        files.extend((Path(m), f"{prefix}/{Path(m).relative_to(base).as_posix()}") for m in matches)
    return files


def format_of(path: Path, declared: str) -> str:
    if declared != "auto":
        return declared
    suffixes = [s.lower() for s in path.suffixes if s.lower() not in (".gz", ".zst")]
    last = suffixes[-1] if suffixes else ""
    return {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}.get(last, "txt")


def open_binary(path: Path):
    """A binary reader of ``path``, decompressing ``.gz`` (gzip) and ``.zst`` (zstandard) files.

    A compressed file that is truncated or not in its format at all is a :class:`UserError` naming the file
    (not an ``EOFError`` / ``BadGzipFile`` traceback, and never a silently shortened text: zstandard's own
    stream reader returns a truncated frame as end of file)."""
    path = Path(path)
    if path.name.endswith((".gz", ".zst")):
        return io.BufferedReader(_Decompressed(path), buffer_size=READ_BLOCK)
    return open(path, "rb")


class _Decompressed(io.RawIOBase):
    """gzip or zstandard decompression whose damage is reported as a UserError naming the file."""

    def __init__(self, path: Path):
        self.path, self.kind = path, "gzip" if path.name.endswith(".gz") else "zstd"
        self._raw = open(path, "rb")
        if self.kind == "gzip":

            self._gz = gzip.GzipFile(fileobj=self._raw, mode="rb")
        else:
            import zstandard

            self._zstd = zstandard.ZstdDecompressor()
            self._dobj, self._pending, self._frame_open = self._zstd.decompressobj(), b"", False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            data = self._gz.read(len(buffer)) if self.kind == "gzip" else self._zstd_read(len(buffer))
        except UserError:
            raise
        except Exception as exc:  # EOFError, gzip.BadGzipFile, zlib.error, zstandard.ZstdError
            raise self._damaged(exc) from None
        buffer[:len(data)] = data
        return len(data)

    def _zstd_read(self, size: int) -> bytes:
        while not self._pending:
            block = self._raw.read(READ_BLOCK)
            if not block:
                if self._frame_open:  # input ended inside a frame
                    raise self._damaged(EOFError("the file ends inside a zstandard frame"))
                return b""
            while block:
                self._pending += self._dobj.decompress(block)
                self._frame_open = not self._dobj.eof
                block = self._dobj.unused_data if self._dobj.eof else b""
                if self._dobj.eof:  # a file may hold several frames, one after another
                    self._dobj = self._zstd.decompressobj()
        data, self._pending = self._pending[:size], self._pending[size:]
        return data

    def _damaged(self, exc: Exception) -> UserError:
        check = "gzip -t" if self.kind == "gzip" else "zstd -t"
        return UserError(f"damaged or truncated {self.kind} file ({type(exc).__name__}: {exc})", path=self.path,
                         fix=f"download or compress it again (`{check} FILE` checks it), or remove it from the "
                             "source's paths")

    def close(self) -> None:
        if not self.closed:
            if self.kind == "gzip":
                self._gz.close()
            self._raw.close()
        super().close()


def _decode_error(path: Path, offset: int, where: str = "") -> UserError:
    gz = " (uncompressed)" if path.name.endswith((".gz", ".zst")) else ""
    return UserError(f"{where}not valid UTF-8 at byte offset {offset}{gz}", path=path,
                     fix="convert the file to UTF-8, or set `on_decode_error: replace` (or `skip`) in the "
                         "corpus config (command line: --on-decode-error replace)")


READ_BLOCK = 1 << 20
BINARY_PROBE = 8192
TOO_LONG = object()  # yielded instead of a text too long to be kept (it was never held in memory)


def _check_binary(path: Path, first: bytes, policy: str, stats: dict) -> bool:
    """True (and counted) if the file looks binary: a NUL byte in its first block. With the ``fail``
    policy that is a UserError."""
    if b"\x00" not in first[:BINARY_PROBE]:
        return False
    if policy == "fail":
        raise UserError("looks like a binary file (NUL bytes in its first 8 KiB), not text", path=path,
                        fix="remove it from the source's paths, or set `on_decode_error: skip` to skip such files")
    stats["binary_files"] += 1
    log.warning("%s: skipped, looks binary (NUL bytes)", path)
    return True


def _decoded_blocks(path: Path, policy: str, stats: dict) -> Iterator[str]:
    """The file's text in blocks, LF line ends (CRLF and lone CR converted across block boundaries), BOM
    dropped; bytes that are not UTF-8 kept as surrogates (``_BAD_BYTES``) unless the policy is ``fail``."""

    decoder = codecs.getincrementaldecoder("utf-8")(errors="strict" if policy == "fail" else "surrogateescape")
    consumed, carry, first = 0, "", True
    with open_binary(path) as f:
        while True:
            block = f.read(READ_BLOCK)
            try:
                piece = decoder.decode(block, final=not block)
            except UnicodeDecodeError as exc:
                raise _decode_error(path, max(0, consumed + exc.start)) from None
            consumed += len(block)
            if first:
                piece, first = piece.removeprefix("\ufeff"), False
            piece = carry + piece
            carry = ""
            if block and piece.endswith("\r"):
                piece, carry = piece[:-1], "\r"
            piece = piece.replace("\r\n", "\n").replace("\r", "\n")
            if piece:
                yield piece
            if not block:
                return


def _lines(blocks: Iterator[str], bound: int) -> Iterator:
    """Every line of the decoded text (blank ones too), or TOO_LONG for a line past ``bound`` characters
    (0: no bound), which is dropped as it streams in: one huge line never sits in memory."""
    parts: list[str] = []
    n, too_long = 0, False
    for piece in blocks:
        *complete, last = piece.split("\n")
        for line in complete:
            if too_long or (bound and n + len(line) > bound):
                yield TOO_LONG
            else:
                yield "".join(parts) + line if parts else line
            parts, n, too_long = [], 0, False
        if not too_long:
            parts.append(last)
            n += len(last)
            if bound and n > bound:
                parts, n, too_long = [], 0, True
    if too_long:
        yield TOO_LONG
    elif any(parts):
        yield "".join(parts)


def _units(lines: Iterator, documents: str, bound: int) -> Iterator[tuple[str, object]]:
    """(id suffix, text or TOO_LONG) per document: the whole file (``""``), each non-blank line
    (``:<number>``) or each blank-line-separated paragraph (``:p<number>``). At most ``bound``
    characters of a unit are held (0: no bound); past that the unit is TOO_LONG and its lines dropped."""
    if documents == "line":
        for number, line in enumerate(lines, start=1):
            if line is TOO_LONG or line.strip():
                yield f":{number}", line
        return
    held: list[str] = []
    n = count = 0
    too_long = False
    for line in lines:
        if documents == "paragraph" and line is not TOO_LONG and not line.strip():
            if held or too_long:
                count += 1
                yield f":p{count}", TOO_LONG if too_long else "\n".join(held)
            held, n, too_long = [], 0, False
        elif not too_long:
            if line is TOO_LONG or (bound and n + len(line) > bound):
                held, n, too_long = [], 0, True
            else:
                held.append(line)
                n += len(line) + 1
    if documents == "file":  # one document even when empty (counted as too short)
        yield "", TOO_LONG if too_long else "\n".join(held)
    elif held or too_long:
        yield f":p{count + 1}", TOO_LONG if too_long else "\n".join(held)


def iter_txt(path: Path, stem: str, documents: str, policy: str, stats: dict, gutenberg: bool = False,
             max_chars: int = 0):
    """(id, text) of a text file: the whole file, each line or each blank-line-separated paragraph.

    Streamed: a unit longer than 4 x ``max_chars`` characters is never held in memory (its text is
    :data:`TOO_LONG`), nor is the rest of the file. The text is None for a document skipped for bytes
    that are not UTF-8. A binary file (NUL bytes) is skipped and counted, or a UserError with the
    ``fail`` policy."""
    bound = 4 * max_chars if max_chars else 0  # normalisation never shrinks text to a quarter
    with open_binary(path) as f:
        if _check_binary(path, f.read(BINARY_PROBE), policy, stats):
            return
    lines = _lines(_decoded_blocks(path, policy, stats), bound)
    if gutenberg:
        lines = gutenberg_body(lines, stats)
    for suffix, unit in _units(lines, documents, bound):
        if unit is not TOO_LONG and _BAD_BYTES.search(unit):
            stats["decode_errors"] += 1
            unit = None if policy == "skip" else _BAD_BYTES.sub("\ufffd", unit)
        yield f"local:{stem}{suffix}", unit


def _jsonl_lines(f, limit: int) -> Iterator[tuple[int, int, object]]:
    """(line number, byte offset, raw line or TOO_LONG) of a binary file; a line over ``limit`` bytes
    (0: no limit) is skipped in blocks, never held."""
    offset = 0
    for lineno in itertools.count(1):
        raw = f.readline(limit + 1) if limit else f.readline()
        if not raw:
            return
        start = offset
        offset += len(raw)
        if limit and len(raw) > limit and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):
                raw = f.readline(READ_BLOCK)
                offset += len(raw)
            yield lineno, start, TOO_LONG
        else:
            yield lineno, start, raw


def iter_jsonl(path: Path, stem: str, text_field: str, policy: str, stats: dict, max_chars: int = 0):
    """(id, text) per JSON line; the id is ``local:<dir>/<file>:<line number>``. A line longer than
    JSONL_BYTES_PER_CHAR x ``max_chars`` bytes is TOO_LONG, unread."""
    with open_binary(path) as f:
        for lineno, start, raw in _jsonl_lines(f, JSONL_BYTES_PER_CHAR * max_chars):
            if raw is TOO_LONG:
                yield f"local:{stem}:{lineno}", TOO_LONG
                continue
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                stats["decode_errors"] += 1
                if policy == "fail":
                    raise _decode_error(path, start + exc.start, f"line {lineno}: ") from None
                if policy == "skip":
                    yield f"local:{stem}:{lineno}", None
                    continue
                line = raw.decode("utf-8", errors="replace")
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"not valid JSON ({exc.msg})", path=f"{path}:{lineno}",
                                fix="write one JSON object per line (JSONL)") from None
            text = record.get(text_field) if isinstance(record, dict) else None
            if not isinstance(text, str):
                what = "missing" if not isinstance(record, dict) or text_field not in record else "not a string"
                raise UserError(f"text field is {what}", path=f"{path}:{lineno}", field=text_field,
                                fix="set `text_field` of this source to the field that holds the text")
            yield f"local:{stem}:{lineno}", text


def iter_parquet(path: Path, stem: str, text_field: str):
    """(id, text) per parquet row; the id is ``local:<dir>/<file>:<row>`` (1-based)."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:
        raise UserError(f"cannot read as parquet ({exc})", path=path) from None
    if text_field not in pf.schema_arrow.names:
        raise UserError(f"no such column (columns: {', '.join(pf.schema_arrow.names)})", path=path,
                        field=text_field, fix="set `text_field` of this source to the text column")
    row = 0
    for batch in pf.iter_batches(columns=[text_field], batch_size=4096):
        for text in batch.column(0).to_pylist():
            row += 1
            yield f"local:{stem}:{row}", text or ""


def iter_local(source: dict, field: str, policy: str, stats: dict, max_chars: int = 0, files=None):
    fmt, documents = source.get("format", "auto"), source.get("documents", "file")
    text_field = source.get("text_field", "text")
    for path, stem in files or expand_paths(source["paths"], f"{field}.paths"):
        kind = format_of(path, fmt)
        if kind == "txt":
            yield from iter_txt(path, stem, documents, policy, stats, bool(source.get("strip_gutenberg")), max_chars)
        elif kind == "jsonl":
            yield from iter_jsonl(path, stem, text_field, policy, stats, max_chars)
        else:
            yield from iter_parquet(path, stem, text_field)
