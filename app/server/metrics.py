"""llama-server's `/metrics` (Prometheus text format) read with prometheus_client's own parser.

llama-server names its metrics `llamacpp:<name>`: counters such as `llamacpp:prompt_tokens_total`
and `llamacpp:tokens_predicted_total`, gauges such as `llamacpp:requests_processing`. Which ones
exist depends on the server's version (older ones also had `llamacpp:kv_cache_tokens` and
`llamacpp:kv_cache_usage_ratio`), so every figure read from here may be absent and is then None.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

PREFIX = "llamacpp:"


class MetricsError(Exception):
    """The text is not Prometheus text, or not llama-server's; the message says which."""


@dataclass(frozen=True)
class ServerMetrics:
    """The unlabelled samples of one scrape, by their full name ("llamacpp:requests_processing")."""

    values: tuple[tuple[str, float], ...]

    def get(self, short_name: str) -> float | None:
        """A sample by its name without the prefix ("requests_processing"); None when absent."""
        name = PREFIX + short_name
        for key, value in self.values:
            if key == name:
                return value
        return None


def parse_metrics(text: str) -> ServerMetrics:
    """Parse llama-server's /metrics. Malformed text, or text without a single llamacpp: sample
    (another exporter at that address), raises MetricsError."""
    values: list[tuple[str, float]] = []
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.labels:
                    continue  # llama-server's own metrics carry no labels; others are not ours
                value = float(sample.value)
                if not math.isfinite(value):
                    continue  # NaN and infinities are not figures to show
                values.append((sample.name, value))
    except (ValueError, TypeError, IndexError) as exc:
        raise MetricsError(f"/metrics is not valid Prometheus text ({exc})") from None
    if not any(name.startswith(PREFIX) for name, _ in values):
        found = ", ".join(sorted({name for name, _ in values})[:3])
        raise MetricsError(
            "/metrics has no llama-server (llamacpp:) metrics"
            + (f" (it has {found}…): is this address a llama-server?" if found else ": it is empty")
        )
    return ServerMetrics(tuple(values))
