"""Models that crashed llama.cpp while loading, remembered by fingerprint.

A GGUF that passes LlamaScope's header check can still trip a GGML_ASSERT inside llama.cpp's
loader (a zero block count, a duplicated vocabulary entry). The engine host turns that into an
error; this registry keeps it, so the model list can mark the file and the next load asks first.
The fingerprint (app.model.fingerprint: size, first and last MiB) follows the file's content, not
its name: a repaired copy is a new file, a renamed one is not.

Records written before fingerprint scheme 2 are keyed by the older fingerprint (size and first
MiB) and carry no scheme. They are converted the first time the registry is read: a record whose
file is still where it crashed, unchanged, is keyed by that file's new fingerprint; one whose
file is gone or changed could never be looked up again and is dropped.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from app.common.json_store import read_json_dict, write_json_atomic
from app.model.fingerprint import FINGERPRINT_SCHEME, fingerprint_v1, model_fingerprint

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
        entries = read_json_dict(self.path)
        if all(isinstance(raw, dict) and "fingerprint_scheme" in raw for raw in entries.values()):
            return entries
        converted = _convert_old_records(entries)
        self._write(converted)
        return converted

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
            entries[fingerprint] = {
                **asdict(entry),
                "log_tail": list(entry.log_tail),
                "fingerprint_scheme": FINGERPRINT_SCHEME,
            }
            self._write(entries)
        return entry

    def lookup(self, model_path: str) -> CrashRecord | None:
        """The crash this file's content caused, if any (reads the file's first and last MiB)."""
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


def _convert_old_records(entries: dict[str, Any]) -> dict[str, Any]:
    """Records keyed by the fingerprint before scheme 2, re-keyed by the current one where the file
    they name is still the file that crashed; the others dropped (see the module docstring)."""
    converted: dict[str, Any] = {}
    for key, raw in entries.items():
        if not isinstance(raw, dict):
            continue
        if "fingerprint_scheme" in raw:
            converted[key] = raw
            continue
        path = raw.get("path")
        if not isinstance(path, str) or fingerprint_v1(path) != key:
            log.info("dropping a crash record for %s: the file is gone or has changed", path)
            continue
        fingerprint = model_fingerprint(path)
        if fingerprint is not None:
            converted[fingerprint] = {
                **raw,
                "fingerprint": fingerprint,
                "fingerprint_scheme": FINGERPRINT_SCHEME,
            }
    return converted
