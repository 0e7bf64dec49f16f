"""Evaluation texts for perplexity: the default one that needs no download, or a user's file.

The default is the Python documentation that ships inside every Python installation:
`pydoc_data.topics` holds the language reference topics `help()` shows (about 465,000
characters, roughly 110,000 tokens for a 49k-token vocabulary). It is English technical prose
with code, always present, and needs no network. Its content changes between Python versions,
so a result records the text's SHA-256: two perplexities are comparable only on the same text.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

DEFAULT_TEXT_NAME = "default"


class EvalTextError(Exception):
    """The evaluation text cannot be used; the message says why."""


@dataclass(frozen=True)
class EvalText:
    """A text to measure perplexity on, with where it came from."""

    name: str  # "Python documentation (pydoc_data.topics, Python 3.11.7)" or the file name
    source: str  # DEFAULT_TEXT_NAME or the file path
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    @property
    def n_chars(self) -> int:
        return len(self.text)


def default_text() -> EvalText:
    """The topic texts of pydoc_data, joined in sorted key order with blank lines between them."""
    import platform

    try:
        from pydoc_data import topics as pydoc_topics
    except ImportError as exc:  # some distributions strip it; say so rather than fail obscurely
        raise EvalTextError(
            "This Python installation has no pydoc_data (the Python documentation topics), so the "
            "default evaluation text is not available; choose a text file instead."
        ) from exc
    topics: dict[str, str] = pydoc_topics.topics
    text = "\n\n".join(topics[key].strip("\n") for key in sorted(topics))
    return EvalText(
        name=f"Python documentation (pydoc_data.topics, Python {platform.python_version()})",
        source=DEFAULT_TEXT_NAME,
        text=text,
    )


def load_text(source: str) -> EvalText:
    """`source` is DEFAULT_TEXT_NAME ("default") or a path to a UTF-8 text file."""
    if source == DEFAULT_TEXT_NAME:
        return default_text()
    path = os.path.abspath(source)
    if not os.path.exists(path):
        raise EvalTextError(f"Evaluation text not found: {path}.")
    if os.path.isdir(path):
        raise EvalTextError(f"{path} is a folder; choose a text file.")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise EvalTextError(f"Cannot read {path}: {exc.strerror or exc}.") from None
    if b"\0" in raw[:65536]:
        raise EvalTextError(f"{os.path.basename(path)} is not a text file (it contains NUL bytes).")
    text = raw.decode("utf-8", errors="replace")
    if not text.strip():
        raise EvalTextError(f"The evaluation text {os.path.basename(path)} is empty.")
    return EvalText(name=os.path.basename(path), source=path, text=text)
