"""Text helpers shared by the data stages: normalisation, sentence splitting, Gutenberg boilerplate."""

from __future__ import annotations

import itertools
import re
import unicodedata
from typing import Iterable, Iterator

_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ufeff]")  # Cc except \t and \n, plus stray BOMs
_TRAILING_SPACE = re.compile(r"[^\S\n]+$", re.MULTILINE)
SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"'”’)\]]))\s+(?=[\"'“‘(\[]?[A-Z0-9])")
_GUTENBERG_START = re.compile(r"[ \t]*\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG")  # matched per line
_GUTENBERG_END = re.compile(r"[ \t]*(\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG|End of (the )?Project Gutenberg)",
                            re.IGNORECASE)
GUTENBERG_HEADER_WINDOW = 100_000


def normalise_text(text: str, counts: dict | None = None) -> str:
    """NFC, LF line ends, no control characters (except tab/newline), no trailing spaces, stripped.
    With ``counts``, add what each rule changed (``removed_control_chars``, ...) to it."""
    nfc = unicodedata.normalize("NFC", text)
    if counts is not None and nfc != text:
        counts["nfc_changed_documents"] = counts.get("nfc_changed_documents", 0) + 1
    text = nfc.replace("\r\n", "\n").replace("\r", "\n")
    n = len(text)
    text = _CONTROL.sub("", text)
    m = len(text)
    text = _TRAILING_SPACE.sub("", text)
    if counts is not None:
        counts["removed_control_chars"] = counts.get("removed_control_chars", 0) + n - m
        counts["removed_trailing_space_chars"] = counts.get("removed_trailing_space_chars", 0) + m - len(text)
    return text.strip()


def split_sentences(text: str, long_line: int = 300) -> list[str]:
    """Non-empty lines of ``text``; lines longer than ``long_line`` characters are cut at sentence ends."""
    lines = [line for line in map(str.strip, text.split("\n")) if line]
    if not lines or max(map(len, lines)) <= long_line:
        return lines
    out = []
    for line in lines:
        if len(line) <= long_line:
            out.append(line)
        else:
            out.extend(s for s in (p.strip() for p in SENTENCE_END.split(line)) if s)
    return out


def gutenberg_body(lines: Iterable, counts: dict | None = None) -> Iterator:
    """The lines between a Project Gutenberg header and licence footer, streamed.

    The header runs up to the ``*** START OF ...`` line, looked for in the first
    GUTENBERG_HEADER_WINDOW characters (real headers are 1-20 KB); the footer starts at the first
    ``*** END OF ...`` or ``End of the Project Gutenberg ...`` line. Only the header window is ever
    held. Items that are not strings (a reader's too-long marker) pass through as body lines. With
    ``counts``, the characters removed are added when the lines run out."""
    lines = iter(lines)
    head: list = []
    size = head_removed = 0
    for line in lines:
        head.append(line)
        if not isinstance(line, str):
            break
        size += len(line) + 1
        if _GUTENBERG_START.match(line):
            head, head_removed = [], size
            break
        if size > GUTENBERG_HEADER_WINDOW:
            break
    footer = 0
    for line in itertools.chain(head, lines):
        if footer or (isinstance(line, str) and _GUTENBERG_END.match(line)):
            footer += len(line) + 1 if isinstance(line, str) else 0
        else:
            yield line
    if counts is not None:
        counts["gutenberg_documents"] = counts.get("gutenberg_documents", 0) + bool(head_removed or footer)
        counts["removed_gutenberg_header_chars"] = counts.get("removed_gutenberg_header_chars", 0) + head_removed
        counts["removed_gutenberg_footer_chars"] = counts.get("removed_gutenberg_footer_chars", 0) + footer


def strip_gutenberg(text: str, counts: dict | None = None) -> str:
    """``text`` without its Project Gutenberg header and licence footer (see :func:`gutenberg_body`)."""
    return "\n".join(gutenberg_body(text.split("\n"), counts))
