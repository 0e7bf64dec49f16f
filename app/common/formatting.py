"""Text for figures, shared by the CLI and the GUI so both say the same thing the same way."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

NOT_AVAILABLE = "n/a"


def fmt(value: float | int | None, spec: str = "", unit: str = "") -> str:
    """`value` formatted with `spec` and `unit`, or "n/a" when it is not known."""
    return NOT_AVAILABLE if value is None else f"{value:{spec}}{unit}"


def format_bytes(n: float) -> str:
    """Binary units, e.g. "512 B", "1.5 KiB", "90.0 MiB", "512 MiB", "1.9 GiB"."""
    sign = "-" if n < 0 else ""
    value = float(abs(n))
    if value < 1024:
        return f"{sign}{int(value)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024
        if value < 1024 or unit == "PiB":
            break
    # Three significant digits are plenty for a memory budget; decimals only below 100.
    text = f"{value:.0f}" if value >= 100 else f"{value:.1f}"
    return f"{sign}{text} {unit}"


def format_rate(bytes_per_s: float) -> str:
    """A transfer rate in the same binary units, e.g. "23.4 GiB/s"."""
    return f"{format_bytes(bytes_per_s)}/s"


# Sizes of memory and files are binary everywhere in LlamaScope (the GUI and the CLI alike); the
# tooltips of size fields say so.
BINARY_UNITS_NOTE = "Binary units: 1 KiB = 1,024 bytes, 1 MiB = 1,048,576 bytes, 1 GiB = 1,073,741,824 bytes."


def fmt_bytes(n: int | None) -> str:
    """Bytes in binary units (KiB, MiB, GiB), or "n/a" when not known."""
    return NOT_AVAILABLE if n is None else format_bytes(n)


def jsonable(value: Any) -> Any:
    """Dataclasses, enums and containers as plain JSON values (the CLI's --json output)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
        # Derived figures a reader of the JSON expects next to the stored ones.
        for name in ("has_chat_template", "n_embd_k_gqa", "n_embd_v_gqa"):
            if hasattr(type(value), name):
                out[name] = getattr(value, name)
        return out
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (frozenset, set)):
        return sorted(jsonable(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return value
