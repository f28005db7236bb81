"""Text helpers shared by the data stages: normalisation, sentence splitting, Gutenberg boilerplate."""

from __future__ import annotations

import re
import unicodedata

_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ufeff]")  # Cc except \t and \n, plus stray BOMs
_TRAILING_SPACE = re.compile(r"[^\S\n]+$", re.MULTILINE)
SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"'”’)\]]))\s+(?=[\"'“‘(\[]?[A-Z0-9])")
_GUTENBERG_START = re.compile(r"^[ \t]*\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG.*$", re.MULTILINE)
_GUTENBERG_END = re.compile(r"^[ \t]*(\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG|End of (the )?Project Gutenberg)",
                            re.MULTILINE | re.IGNORECASE)


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


def strip_gutenberg(text: str, counts: dict | None = None) -> str:
    """Drop a Project Gutenberg header (up to ``*** START OF ...``) and licence footer (from ``End of the
    Project Gutenberg ...`` or ``*** END OF ...``). With ``counts``, add the characters removed."""
    start = _GUTENBERG_START.search(text)
    head = foot = 0
    if start:
        head = start.end()
        text = text[head:]
    end = _GUTENBERG_END.search(text)
    if end:
        foot = len(text) - end.start()
        text = text[:end.start()]
    if counts is not None:
        counts["gutenberg_documents"] = counts.get("gutenberg_documents", 0) + bool(head or foot)
        counts["removed_gutenberg_header_chars"] = counts.get("removed_gutenberg_header_chars", 0) + head
        counts["removed_gutenberg_footer_chars"] = counts.get("removed_gutenberg_footer_chars", 0) + foot
    return text
