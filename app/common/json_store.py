"""Small JSON files of LlamaScope's own (caches and records in the user folders): read forgivingly,
written atomically. A damaged or unreadable file reads as empty; a write that fails is logged and
costs only what the file would have saved (a check run again, a record not kept)."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def read_json_dict(path: Path) -> dict[str, Any]:
    """The file's top-level object, or {} when it is missing, damaged or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json_atomic(path: Path, data: dict[str, Any]) -> bool:
    """Write `data` to a temporary file beside `path`, then rename it into place. False on failure."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            "w", dir=path.parent, delete=False, suffix=".tmp", encoding="utf-8"
        ) as f:
            json.dump(data, f, indent=1)
        os.replace(f.name, path)
    except OSError as exc:
        log.warning("could not write %s: %s", path, exc)
        return False
    return True
