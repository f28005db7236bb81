"""Reading files a user can hand us (or damage): every decode or parse error becomes one UserError naming the
file, and the line where there is one, instead of a traceback (issue 24 item 12).

Used by :mod:`electra_ds.common.fileio` (JSON, JSONL), the GLUE/probe TSV reader, the stages' JSONL readers, and the
tokenizer loaders (:func:`load_hf_tokenizer`)."""

from __future__ import annotations

import json
from pathlib import Path

from electra_ds.common.errors import UserError

UTF8_FIX = "convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8)"


def parse_json_line(line: str, path, number: int):
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise UserError(f"line {number} is not valid JSON ({exc.msg} at column {exc.colno})", path=path,
                        fix="a file with one JSON record per line, as the stage that writes it makes") from None


def decode_error(path, exc: UnicodeDecodeError, encoding: str = "UTF-8") -> "UserError":
    """A UserError naming the file, and the line and byte offset of the first byte that is not ``encoding``
    (found again in the raw bytes: a decoder error knows only its position in one buffer)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            offset = 0
            for number, raw in enumerate(f, 1):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as bad:
                    return UserError(f"line {number} (byte {offset + bad.start}) is not {encoding} text: byte "
                                     f"0x{raw[bad.start]:02x}", path=path,
                                     fix=UTF8_FIX)
                offset += len(raw)
    except OSError:
        pass
    return UserError(f"is not {encoding} text ({exc.reason})", path=path,
                     fix=UTF8_FIX)


def load_hf_tokenizer(folder, *, field: str | None = None, fix: str = "pass the vocab stage's (or an export's) "
                      "folder, or rerun the stage that wrote it"):
    """``AutoTokenizer.from_pretrained(folder)``; a missing, empty or garbled tokenizer file is a UserError naming
    the folder (the tokenizers library's parse errors are plain ``Exception``s, json's are ValueErrors)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - OSError, JSONDecodeError, the Rust parser's Exception, ...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"cannot load the tokenizer ({type(exc).__name__}: {first})", path=folder, field=field,
                        fix=fix) from None
