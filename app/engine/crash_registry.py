"""Models that crashed llama.cpp while loading, remembered by fingerprint.

A GGUF that passes LlamaScope's header check can still trip a GGML_ASSERT inside llama.cpp's
loader (a zero block count, a duplicated vocabulary entry). The engine host turns that into an
error; this registry keeps it, so the model list can mark the file and the next load asks first.
The fingerprint (app.bench.history.model_fingerprint: size and first MiB, where the metadata lives)
follows the file's content, not its name: a repaired copy is a new file, a renamed one is not.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from app.bench.history import model_fingerprint
from app.common.json_store import read_json_dict, write_json_atomic

log = logging.getLogger(__name__)

FILE_NAME = "crashed-models.json"


@dataclass(frozen=True)
class CrashRecord:
    """One model that crashed llama.cpp at load."""

    fingerprint: str
    path: str  # where it was when it crashed
    signal_text: str  # "aborted by an assertion in llama.cpp (SIGABRT)"
    log_tail: tuple[str, ...]
    when_s: float  # epoch seconds

    def summary(self) -> str:
        return f"It crashed llama.cpp when it was last loaded: {self.signal_text}."


def default_path() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("LlamaScope", appauthor=False)) / FILE_NAME


class CrashRegistry:
    """A small JSON file of CrashRecords keyed by fingerprint; safe to use from several threads."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_path()
        self._lock = threading.Lock()

    def _read(self) -> dict[str, Any]:
        return read_json_dict(self.path)

    def _write(self, entries: dict[str, Any]) -> None:
        write_json_atomic(self.path, entries)  # a record is a courtesy: failing to keep it fails nothing

    def record(self, model_path: str, signal_text: str, log_tail: tuple[str, ...] = ()) -> CrashRecord | None:
        fingerprint = model_fingerprint(model_path)
        if fingerprint is None:
            return None
        entry = CrashRecord(
            fingerprint, os.path.abspath(model_path), signal_text, tuple(log_tail), time.time()
        )
        with self._lock:
            entries = self._read()
            entries[fingerprint] = {**asdict(entry), "log_tail": list(entry.log_tail)}
            self._write(entries)
        return entry

    def lookup(self, model_path: str) -> CrashRecord | None:
        """The crash this file's content caused, if any (reads the file's first MiB)."""
        fingerprint = model_fingerprint(model_path)
        if fingerprint is None:
            return None
        with self._lock:
            raw = self._read().get(fingerprint)
        if not isinstance(raw, dict):
            return None
        try:
            return CrashRecord(
                fingerprint=fingerprint,
                path=str(raw["path"]),
                signal_text=str(raw["signal_text"]),
                log_tail=tuple(str(x) for x in raw.get("log_tail") or ()),  # type: ignore[union-attr]
                when_s=float(raw["when_s"]),  # type: ignore[arg-type]
            )
        except (KeyError, TypeError, ValueError):
            return None

    def forget(self, model_path: str) -> None:
        """Drop the record (the model loaded fine after all)."""
        fingerprint = model_fingerprint(model_path)
        if fingerprint is None:
            return
        with self._lock:
            entries = self._read()
            if entries.pop(fingerprint, None) is not None:
                self._write(entries)
