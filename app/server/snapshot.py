"""One reading of a llama-server: its health, configuration, slots and metrics, as frozen data.

`ServerReader.read()` asks `/health` first; a server that cannot be reached (or refuses the key)
gives a snapshot with `status` and `error` set and nothing else. A reachable one is then asked
`/props` (once, and again after any failure: it may have restarted with another model), `/slots`
and `/metrics`. An endpoint the server was started without, or a malformed `/metrics`, is a note
in the snapshot and its figures are None; the rest is still shown.
"""

from __future__ import annotations

import enum
import os
import time
from dataclasses import dataclass, field
from typing import Any

from app.server.client import ServerClient, ServerError, ServerErrorKind
from app.server.metrics import MetricsError, ServerMetrics, parse_metrics


class ServerStatus(enum.Enum):
    OK = "ok"
    LOADING = "loading model"
    ERROR = "error"  # reachable, but /health reports a failure
    UNAUTHORIZED = "API key refused"
    UNREACHABLE = "unreachable"


@dataclass(frozen=True)
class SlotSnapshot:
    """One of the server's slots (parallel sequences); counts are None when idle or not reported."""

    id: int
    n_ctx_tokens: int | None
    is_processing: bool
    n_prompt_tokens: int | None
    n_decoded_tokens: int | None
    n_remain_tokens: int | None

    @property
    def context_used_tokens(self) -> int | None:
        if not self.is_processing or self.n_prompt_tokens is None:
            return None
        return self.n_prompt_tokens + (self.n_decoded_tokens or 0)

    @property
    def context_used_ratio(self) -> float | None:
        used = self.context_used_tokens
        if used is None or not self.n_ctx_tokens:
            return None
        return used / self.n_ctx_tokens


@dataclass(frozen=True)
class ServerSnapshot:
    url: str
    t_unix_s: float
    t_monotonic_s: float
    status: ServerStatus
    error: str | None = None  # why the server could not be read
    notes: tuple[str, ...] = ()  # endpoints that failed while the server answered
    health_latency_s: float | None = None
    model: str | None = None  # the model's alias or file name
    model_path: str | None = None
    build_info: str | None = None
    total_slots: int | None = None
    n_ctx_per_slot_tokens: int | None = None
    requests_processing: float | None = None
    requests_deferred: float | None = None
    # The server's own gauges: mean speed of the requests finished since its previous /metrics read.
    prompt_tokens_per_s: float | None = None
    gen_tokens_per_s: float | None = None
    prompt_tokens_total: float | None = None
    generated_tokens_total: float | None = None
    prompt_seconds_total: float | None = None
    generation_seconds_total: float | None = None
    kv_cache_tokens: float | None = None  # only older llama-server versions report these two
    kv_cache_usage_ratio: float | None = None
    slots: tuple[SlotSnapshot, ...] = ()
    metrics: ServerMetrics | None = None
    props: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    @property
    def up(self) -> bool:
        return self.status in (ServerStatus.OK, ServerStatus.LOADING)

    @property
    def busy_slots(self) -> int | None:
        return sum(1 for s in self.slots if s.is_processing) if self.slots else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _slots(data: Any) -> tuple[SlotSnapshot, ...]:
    if not isinstance(data, list):
        raise ServerError(ServerErrorKind.PROTOCOL, "/slots did not answer a list of slots")
    slots = []
    for index, item in enumerate(data):
        if not isinstance(item, dict):
            continue
        progress = item.get("next_token")
        if isinstance(progress, list):
            progress = progress[0] if progress and isinstance(progress[0], dict) else {}
        if not isinstance(progress, dict):
            progress = {}
        processing = bool(item.get("is_processing", False))
        slot_id = _int(item.get("id"))
        slots.append(
            SlotSnapshot(
                id=index if slot_id is None else slot_id,
                n_ctx_tokens=_int(item.get("n_ctx")),
                is_processing=processing,
                n_prompt_tokens=_int(item.get("n_prompt_tokens")) if processing else None,
                n_decoded_tokens=_int(progress.get("n_decoded")) if processing else None,
                n_remain_tokens=_int(progress.get("n_remain")) if processing else None,
            )
        )
    return tuple(slots)


def model_name(props: dict[str, Any]) -> str | None:
    """The name a person knows the model by: the alias if it is not just the path, else the file name."""
    alias, path = props.get("model_alias"), props.get("model_path")
    if isinstance(alias, str) and alias and alias != path:
        return alias
    return os.path.basename(path) if isinstance(path, str) and path else None


class ServerReader:
    """Reads one server; keeps its /props between reads. Not thread-safe: one reader per thread."""

    def __init__(self, client: ServerClient) -> None:
        self.client = client
        self._props: dict[str, Any] | None = None

    def read(self) -> ServerSnapshot:
        now_unix, now_mono = time.time(), time.monotonic()
        base: dict[str, Any] = {"url": self.client.url, "t_unix_s": now_unix, "t_monotonic_s": now_mono}
        try:
            reply = self.client.request("GET", "/health")
        except ServerError as exc:
            self._props = None
            return ServerSnapshot(status=ServerStatus.UNREACHABLE, error=str(exc), **base)
        base["health_latency_s"] = reply.elapsed_s
        if reply.status == 503:
            self._props = None
            return ServerSnapshot(status=ServerStatus.LOADING, **base)
        try:
            self.client.check(reply, "GET", "/health")
        except ServerError as exc:
            self._props = None
            status = (
                ServerStatus.UNAUTHORIZED if exc.kind is ServerErrorKind.UNAUTHORIZED else ServerStatus.ERROR
            )
            return ServerSnapshot(status=status, error=str(exc), **base)

        notes: list[str] = []
        if self._props is None:
            try:
                props = self.client.get_json("/props")
                self._props = props if isinstance(props, dict) else None
                if self._props is None:
                    notes.append("/props did not answer a JSON object")
            except ServerError as exc:
                if exc.kind is ServerErrorKind.UNAUTHORIZED:
                    return ServerSnapshot(status=ServerStatus.UNAUTHORIZED, error=str(exc), **base)
                if exc.kind.server_gone:
                    return ServerSnapshot(status=ServerStatus.UNREACHABLE, error=str(exc), **base)
                notes.append(str(exc))
        props = self._props or {}
        settings = props.get("default_generation_settings")
        n_ctx = _int(settings.get("n_ctx")) if isinstance(settings, dict) else None
        fields: dict[str, Any] = {
            "model": model_name(props),
            "model_path": props.get("model_path") if isinstance(props.get("model_path"), str) else None,
            "build_info": props.get("build_info") if isinstance(props.get("build_info"), str) else None,
            "total_slots": _int(props.get("total_slots")),
            "n_ctx_per_slot_tokens": n_ctx,
            "props": self._props,
        }
        try:
            fields["slots"] = _slots(self.client.get_json("/slots"))
        except ServerError as exc:
            if exc.kind.server_gone:
                return ServerSnapshot(status=ServerStatus.UNREACHABLE, error=str(exc), **base)
            notes.append(str(exc))
        try:
            metrics = parse_metrics(self.client.get_text("/metrics"))
        except MetricsError as exc:
            notes.append(f"{self.client.address.host_port}: {exc}")
        except ServerError as exc:
            if exc.kind.server_gone:
                return ServerSnapshot(status=ServerStatus.UNREACHABLE, error=str(exc), **base)
            notes.append(str(exc))
        else:
            fields.update(
                metrics=metrics,
                requests_processing=metrics.get("requests_processing"),
                requests_deferred=metrics.get("requests_deferred"),
                prompt_tokens_per_s=metrics.get("prompt_tokens_seconds"),
                gen_tokens_per_s=metrics.get("predicted_tokens_seconds"),
                prompt_tokens_total=metrics.get("prompt_tokens_total"),
                generated_tokens_total=metrics.get("tokens_predicted_total"),
                prompt_seconds_total=metrics.get("prompt_seconds_total"),
                generation_seconds_total=metrics.get("tokens_predicted_seconds_total"),
                kv_cache_tokens=metrics.get("kv_cache_tokens"),
                kv_cache_usage_ratio=metrics.get("kv_cache_usage_ratio"),
            )
        return ServerSnapshot(status=ServerStatus.OK, notes=tuple(notes), **base, **fields)
