"""Text for figures, shared by the CLI and the GUI so both say the same thing the same way."""

from __future__ import annotations

import dataclasses
import enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.engine.client import RunStats

NOT_AVAILABLE = "n/a"


def fmt(value: float | int | None, spec: str = "", unit: str = "") -> str:
    """`value` formatted with `spec` and `unit`, or "n/a" when it is not known."""
    return NOT_AVAILABLE if value is None else f"{value:{spec}}{unit}"


def fmt_bytes(n: int | None) -> str:
    """Bytes in binary units (KiB, MiB, GiB), or "n/a" when not known."""
    from app.model.memory import format_bytes

    return NOT_AVAILABLE if n is None else format_bytes(n)


def stats_line(stats: RunStats) -> str:
    """The one-line summary shown under a generation."""
    ttft_ms = None if stats.ttft_s is None else stats.ttft_s * 1000
    return (
        f"TTFT {fmt(ttft_ms, '.0f', ' ms')} · "
        f"prompt {fmt(stats.prompt_tokens_per_s, '.1f', ' t/s')} ({stats.prompt_tokens} tok) · "
        f"generation {fmt(stats.gen_tokens_per_s, '.1f', ' t/s')} ({stats.generated_tokens} tok) · "
        f"stop: {stats.stop_reason.value}"
    )


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
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return value
