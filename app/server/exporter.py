"""LlamaScope's figures as a Prometheus endpoint (prometheus_client), for a fleet's Prometheus and Grafana.

What is served is what LlamaScope reads anyway: the telemetry sampler's latest snapshot, the
generations this LlamaScope ran (tokens, time, a TTFT histogram), and the llama-server instances it
watches. Names follow Prometheus' conventions: a `llamascope_` prefix, base units in the name
(`_seconds`, `_bytes`, `_watts`, `_hertz`, `_celsius`, `_ratio` for 0-1 shares), `_total` on
counters, `_info` for metadata. A figure the machine does not give (no GPU, no power sensor) is
left out rather than shown as 0. README.md lists every metric.

The latest readings are kept by reference (frozen snapshots) and turned into samples when
Prometheus scrapes, on the endpoint's own thread (`llamascope-prometheus`). The endpoint listens
on 127.0.0.1 unless another address is given.
"""

from __future__ import annotations

import errno
import importlib.metadata
import platform
import socket
import threading
from collections.abc import Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from app import __version__
from app.server.snapshot import ServerSnapshot
from app.telemetry.snapshot import Snapshot

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9464
# TTFT from tens of milliseconds (a small model, a short prompt) to half a minute (a long prompt on a CPU).
TTFT_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ExporterError(Exception):
    """The endpoint cannot be started; the message says why and what to do."""


def parse_listen_address(text: str) -> tuple[str, int]:
    """ "HOST:PORT", "PORT" (on 127.0.0.1) or "[IPv6]:PORT" into (host, port)."""
    raw = text.strip()
    host, colon, port_text = raw.rpartition(":")
    if not colon:
        host, port_text = DEFAULT_HOST, raw
    host = host.strip("[]") or DEFAULT_HOST
    try:
        port = int(port_text)
    except ValueError:
        raise ExporterError(
            f"--prometheus {text!r}: give HOST:PORT or PORT, e.g. 127.0.0.1:{DEFAULT_PORT}"
        ) from None
    if not 0 <= port <= 65535:
        raise ExporterError(f"--prometheus {text!r}: the port must be between 0 and 65535")
    return host, port


class _QuietHandler(WSGIRequestHandler):
    """No line on stderr per scrape."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        pass


def _gauge(
    name: str, doc: str, value: float | None, labels: dict[str, str] | None = None
) -> Iterator[Metric]:
    if value is None:
        return
    family = GaugeMetricFamily(name, doc, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), float(value))
    yield family


def _counter(name: str, doc: str, value: float | None) -> Iterator[Metric]:
    if value is None:
        return
    yield CounterMetricFamily(name, doc, value=float(value))


class _Labelled:
    """A gauge or counter family with one sample per label set; yielded only when it has samples."""

    def __init__(self, name: str, doc: str, labels: list[str], counter: bool = False) -> None:
        cls = CounterMetricFamily if counter else GaugeMetricFamily
        self.family: Any = cls(name, doc, labels=labels)
        self.n = 0

    def add(self, values: list[str], value: float | None) -> None:
        if value is not None:
            self.family.add_metric(values, float(value))
            self.n += 1

    def __iter__(self) -> Iterator[Metric]:
        if self.n:
            yield self.family


class _LiveCollector(Collector):
    def __init__(self, exporter: PrometheusExporter) -> None:
        self.exporter = exporter

    def collect(self) -> Iterator[Metric]:
        info = InfoMetricFamily("llamascope_build", "LlamaScope and the llama.cpp bindings it runs")
        info.add_metric([], self.exporter.build_labels)
        yield info
        snapshot = self.exporter.telemetry
        if snapshot is not None:
            yield from _telemetry(snapshot)
        yield from _servers(self.exporter.servers())


def _ratio(percent: float | None) -> float | None:
    return None if percent is None else percent / 100.0


def _hertz(mhz: float | None) -> float | None:
    return None if mhz is None else mhz * 1e6


def _telemetry(s: Snapshot) -> Iterator[Metric]:
    yield from _gauge("llamascope_telemetry_timestamp_seconds", "When the latest sample was read", s.t_unix_s)
    yield from _gauge(
        "llamascope_cpu_utilization_ratio", "CPU use over all cores (0-1)", _ratio(s.cpu_percent)
    )
    cores = _Labelled("llamascope_cpu_core_utilization_ratio", "CPU use per logical core (0-1)", ["core"])
    for i, value in enumerate(s.cpu_per_core_percent):
        cores.add([str(i)], _ratio(value))
    yield from cores
    yield from _gauge("llamascope_cpu_frequency_hertz", "Mean current CPU clock", _hertz(s.cpu_freq_mhz))
    yield from _gauge("llamascope_cpu_frequency_max_hertz", "Maximum CPU clock", _hertz(s.cpu_freq_max_mhz))
    yield from _gauge("llamascope_load1", "Load average over 1 minute", s.load_avg[0] if s.load_avg else None)
    yield from _gauge("llamascope_memory_total_bytes", "Physical memory", s.mem_total_bytes)
    yield from _gauge("llamascope_memory_used_bytes", "Memory in use (total - available)", s.mem_used_bytes)
    yield from _gauge("llamascope_memory_available_bytes", "Memory available", s.mem_available_bytes)
    yield from _gauge("llamascope_swap_used_bytes", "Swap in use", s.swap_used_bytes)
    yield from _gauge(
        "llamascope_process_resident_memory_bytes", "LlamaScope's resident memory", s.process_rss_bytes
    )
    yield from _gauge(
        "llamascope_process_cpu_utilization_ratio",
        "LlamaScope's CPU use, in cores (may exceed 1)",
        _ratio(s.process_cpu_percent),
    )
    yield from _gauge(
        "llamascope_cpu_package_power_watts", "CPU package power (RAPL)", s.cpu_package_power_watts
    )
    yield from _counter(
        "llamascope_cpu_energy_joules",
        "CPU package energy since LlamaScope started (RAPL)",
        s.cpu_energy_joules_total,
    )
    yield from _counter(
        "llamascope_cpu_throttle_events",
        "CPU thermal and power-limit throttle events since LlamaScope started",
        s.cpu_throttle_events_total,
    )
    temps = _Labelled("llamascope_temperature_celsius", "Temperature sensors", ["sensor"])
    for label, value in s.temperatures_c:
        temps.add([label], value)
    yield from temps
    fans = _Labelled("llamascope_fan_speed_rpm", "Fan speeds", ["fan"])
    for label, value in s.fans_rpm:
        fans.add([label], value)
    yield from fans
    throttling = _Labelled("llamascope_throttling", "1 while a device throttles, else 0", ["device"])
    for v in s.verdicts:
        if v.verdict.value != "n/a":
            throttling.add([v.device], 1.0 if v.verdict.is_throttling else 0.0)
    yield from throttling
    yield from _gpus(s)


def _gpus(s: Snapshot) -> Iterator[Metric]:
    if not s.gpus:
        return
    info = InfoMetricFamily("llamascope_gpu", "Each GPU's name", labels=["gpu"])
    families = {
        "utilization": _Labelled("llamascope_gpu_utilization_ratio", "GPU busy share (0-1)", ["gpu"]),
        "mem_used": _Labelled("llamascope_gpu_memory_used_bytes", "GPU memory in use", ["gpu"]),
        "mem_total": _Labelled("llamascope_gpu_memory_total_bytes", "GPU memory", ["gpu"]),
        "temp": _Labelled("llamascope_gpu_temperature_celsius", "GPU temperature", ["gpu"]),
        "power": _Labelled("llamascope_gpu_power_watts", "GPU power draw", ["gpu"]),
        "limit": _Labelled("llamascope_gpu_power_limit_watts", "GPU power limit", ["gpu"]),
        "sm": _Labelled("llamascope_gpu_sm_clock_hertz", "GPU SM clock", ["gpu"]),
        "memclk": _Labelled("llamascope_gpu_memory_clock_hertz", "GPU memory clock", ["gpu"]),
        "fan": _Labelled("llamascope_gpu_fan_speed_ratio", "GPU fan speed (0-1)", ["gpu"]),
        "energy": _Labelled(
            "llamascope_gpu_energy_joules", "GPU energy since its driver loaded", ["gpu"], counter=True
        ),
    }
    for g in s.gpus:
        label = [str(g.index)]
        info.add_metric(label, {"name": g.name or "n/a"})
        families["utilization"].add(label, _ratio(g.utilization_percent))
        families["mem_used"].add(label, g.memory_used_bytes)
        families["mem_total"].add(label, g.memory_total_bytes)
        families["temp"].add(label, g.temperature_c)
        families["power"].add(label, g.power_watts)
        families["limit"].add(label, g.power_limit_watts)
        families["sm"].add(label, _hertz(g.sm_clock_mhz))
        families["memclk"].add(label, _hertz(g.memory_clock_mhz))
        families["fan"].add(label, _ratio(g.fan_percent))
        families["energy"].add(label, g.energy_joules_total)
    yield info
    for family in families.values():
        yield from family


def _servers(servers: list[ServerSnapshot]) -> Iterator[Metric]:
    if not servers:
        return
    up = _Labelled("llamascope_server_up", "1 when the llama-server answers /health, else 0", ["server"])
    info = InfoMetricFamily(
        "llamascope_server", "The model and build a watched llama-server reports", labels=["server"]
    )
    gauges = {
        "requests_processing": _Labelled(
            "llamascope_server_requests_processing", "Requests the server is processing", ["server"]
        ),
        "requests_deferred": _Labelled(
            "llamascope_server_requests_deferred", "Requests waiting for a free slot", ["server"]
        ),
        "total_slots": _Labelled(
            "llamascope_server_slots", "The server's slots (parallel sequences)", ["server"]
        ),
        "busy_slots": _Labelled("llamascope_server_slots_busy", "Slots processing a request", ["server"]),
        "kv_cache_tokens": _Labelled(
            "llamascope_server_kv_cache_tokens", "Tokens in the KV cache (older servers only)", ["server"]
        ),
        "health_latency_s": _Labelled(
            "llamascope_server_health_latency_seconds", "Round trip of the latest /health request", ["server"]
        ),
    }
    counters = {
        "prompt_tokens_total": _Labelled(
            "llamascope_server_prompt_tokens", "Prompt tokens the server processed", ["server"], counter=True
        ),
        "generated_tokens_total": _Labelled(
            "llamascope_server_generated_tokens", "Tokens the server generated", ["server"], counter=True
        ),
        "prompt_seconds_total": _Labelled(
            "llamascope_server_prompt_seconds", "Time the server spent on prompts", ["server"], counter=True
        ),
        "generation_seconds_total": _Labelled(
            "llamascope_server_generation_seconds",
            "Time the server spent generating",
            ["server"],
            counter=True,
        ),
    }
    decoded = _Labelled(
        "llamascope_server_slot_decoded_tokens", "Tokens decoded so far by a busy slot", ["server", "slot"]
    )
    context = _Labelled(
        "llamascope_server_slot_context_used_ratio",
        "Share of a busy slot's context in use",
        ["server", "slot"],
    )
    for s in servers:
        up.add([s.url], 1.0 if s.up else 0.0)
        if s.model is not None or s.build_info is not None:
            info.add_metric([s.url], {"model": s.model or "n/a", "build": s.build_info or "n/a"})
        for key, family in gauges.items():
            value = s.busy_slots if key == "busy_slots" else getattr(s, key)
            family.add([s.url], value)
        for key, family in counters.items():
            family.add([s.url], getattr(s, key))
        for slot in s.slots:
            decoded.add([s.url, str(slot.id)], slot.n_decoded_tokens)
            context.add([s.url, str(slot.id)], slot.context_used_ratio)
    yield from up
    if info.samples:
        yield info
    for family in (*gauges.values(), *counters.values(), decoded, context):
        yield from family


class PrometheusExporter:
    """The endpoint and what it serves. Thread-safe: updates may come from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._telemetry: Snapshot | None = None
        self._servers: dict[str, ServerSnapshot] = {}
        self._httpd: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        try:
            bindings = importlib.metadata.version("llama-cpp-python")
        except importlib.metadata.PackageNotFoundError:
            bindings = "n/a"
        self.build_labels = {
            "version": __version__,
            "llama_cpp_python": bindings,
            "python": platform.python_version(),
        }
        self.registry = CollectorRegistry()
        self.registry.register(_LiveCollector(self))
        self._generations = Counter(
            "llamascope_generations", "Generations LlamaScope ran", ["stop_reason"], registry=self.registry
        )
        self._prompt_tokens = Counter(
            "llamascope_prompt_tokens", "Prompt tokens of LlamaScope's generations", registry=self.registry
        )
        self._generated_tokens = Counter(
            "llamascope_generated_tokens", "Tokens LlamaScope's generations produced", registry=self.registry
        )
        self._generation_seconds = Counter(
            "llamascope_generation_seconds", "Wall time of LlamaScope's generations", registry=self.registry
        )
        self._ttft = Histogram(
            "llamascope_ttft_seconds",
            "Time to first token of LlamaScope's generations",
            buckets=TTFT_BUCKETS_S,
            registry=self.registry,
        )

    # ---- what is served ---------------------------------------------------------------------------
    @property
    def telemetry(self) -> Snapshot | None:
        return self._telemetry

    def update_telemetry(self, snapshot: Snapshot) -> None:
        self._telemetry = snapshot  # a frozen snapshot: replacing the reference is the whole update

    def update_server(self, snapshot: ServerSnapshot) -> None:
        with self._lock:
            self._servers[snapshot.url] = snapshot

    def remove_server(self, url: str) -> None:
        with self._lock:
            self._servers.pop(url, None)

    def servers(self) -> list[ServerSnapshot]:
        with self._lock:
            return list(self._servers.values())

    def observe_generation(
        self,
        *,
        prompt_tokens: int,
        generated_tokens: int,
        ttft_s: float | None,
        total_s: float,
        stop_reason: str,
    ) -> None:
        """Count one finished generation (the figures of app.engine.types.RunStats)."""
        self._generations.labels(stop_reason=stop_reason).inc()
        self._prompt_tokens.inc(max(0, prompt_tokens))
        self._generated_tokens.inc(max(0, generated_tokens))
        self._generation_seconds.inc(max(0.0, total_s))
        if ttft_s is not None and ttft_s >= 0:
            self._ttft.observe(ttft_s)

    # ---- the endpoint -----------------------------------------------------------------------------
    @property
    def url(self) -> str | None:
        httpd = self._httpd
        if httpd is None:
            return None
        host, port = httpd.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else str(host)
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/metrics"

    @property
    def running(self) -> bool:
        return self._httpd is not None

    def start(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> str:
        """Listen on host:port (port 0: any free port); returns the metrics URL."""
        if self._httpd is not None:
            raise ExporterError(f"the Prometheus endpoint is already running at {self.url}")

        class _Server(ThreadingWSGIServer):
            pass

        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except socket.gaierror as exc:
            raise ExporterError(f"cannot listen on {host!r}: {exc.strerror or exc}") from None
        _Server.address_family = infos[0][0]
        address = str(infos[0][4][0])
        try:
            httpd = make_server(
                address, port, make_wsgi_app(self.registry), _Server, handler_class=_QuietHandler
            )
        except OSError as exc:
            where = f"{host}:{port}"
            if exc.errno == errno.EADDRINUSE:
                raise ExporterError(
                    f"{where} is already in use (another exporter, or another LlamaScope): "
                    f"choose another port, e.g. --prometheus {host}:{port + 1}"
                ) from None
            if exc.errno == errno.EACCES:
                raise ExporterError(f"no permission to listen on {where}: use a port above 1023") from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise ExporterError(
                    f"{host} is not an address of this machine: use 127.0.0.1 or 0.0.0.0"
                ) from None
            raise ExporterError(f"cannot listen on {where}: {exc.strerror or exc}") from None
        self._httpd = httpd
        # A short poll: stop() waits for serve_forever to notice, at most this long.
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="llamascope-prometheus",
            daemon=True,
        )
        self._thread.start()
        return self.url or ""

    def stop(self) -> None:
        httpd, thread = self._httpd, self._thread
        self._httpd = self._thread = None
        if httpd is not None:
            httpd.shutdown()  # returns once serve_forever has ended (within its poll interval)
            httpd.server_close()
        if thread is not None:
            thread.join(timeout=5.0)
