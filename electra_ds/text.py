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


def normalise_text(text: str) -> str:
    """NFC, LF line ends, no control characters (except tab/newline), no trailing spaces, stripped."""
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = _TRAILING_SPACE.sub("", text)
    return text.strip()


def split_sentences(text: str, long_line: int = 300) -> list[str]:
    """Non-empty lines of ``text``; lines longer than ``long_line`` characters are cut at sentence ends."""
    out = []
    for line in text.split("\n"):
        line = line.strip()
        if not line:
            continue
        if len(line) <= long_line:
            out.append(line)
        else:
            out.extend(s for s in (p.strip() for p in SENTENCE_END.split(line)) if s)
    return out


def strip_gutenberg(text: str) -> str:
    """Drop a Project Gutenberg header (up to ``*** START OF ...``) and licence footer (from ``End of the
    Project Gutenberg ...`` or ``*** END OF ...``)."""
    start = _GUTENBERG_START.search(text)
    if start:
        text = text[start.end():]
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[:end.start()]
    return text
