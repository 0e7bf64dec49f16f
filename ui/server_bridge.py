"""Runs the Servers box's work off the GUI thread and brings the answers back as signals.

- Watching: an `app.server.poller.ServerPoller` (one thread per server, at most once a second);
  each `ServerSnapshot` is re-emitted as `snapshot_received`.
- Benchmarking: `app.server.bench.run_server_bench` on its own thread (`llamascope-serverbench`),
  each level stored in the run history as it finishes; Stop sets the cancel flag.
- Prometheus: an `app.server.exporter.PrometheusExporter`, fed by the telemetry sampler, the pollers
  and the engine's finished generations. Starting it only binds a socket; stopping it (which waits
  for its serving loop) runs on a short thread, so the GUI thread never waits.

Every failure becomes a message signal: a bad URL, an unreachable server, a wrong key, a port in
use, a server that dies during a benchmark (its finished levels are kept).
"""

from __future__ import annotations

import threading
from typing import Any

from PySide6.QtCore import QObject, Signal

from app.bench.history import HistoryError, HistoryStore
from app.server.bench import LevelResult, ServerBenchPlan, run_server_bench
from app.server.client import ServerClient, ServerError
from app.server.exporter import ExporterError, PrometheusExporter, parse_listen_address
from app.server.poller import ServerPoller, ServerTarget
from app.server.record import ServerRunRecorder, level_summary
from app.server.snapshot import ServerSnapshot
from app.telemetry.sampler import Sampler


class ServerBridge(QObject):
    snapshot_received = Signal(object)  # ServerSnapshot
    server_added = Signal(str, str)  # url, api key
    error = Signal(str)
    prometheus_state = Signal(str, str)  # url ("" when not serving), message
    bench_progress = Signal(int, int, str)
    bench_level = Signal(object)  # level_summary dict
    bench_finished = Signal(str)  # what happened, for the status line

    def __init__(
        self, sampler: Sampler | None, history: HistoryStore | None, parent: QObject | None = None
    ) -> None:
        super().__init__(parent)
        self.poller = ServerPoller()
        self.poller.add_listener(self._on_snapshot)
        self.exporter = PrometheusExporter()
        self._sampler = sampler
        self._history = history
        self._bench_thread: threading.Thread | None = None
        self._cancel = threading.Event()
        if sampler is not None:
            sampler.add_listener(self.exporter.update_telemetry)

    def _on_snapshot(self, snapshot: ServerSnapshot) -> None:  # a polling thread
        self.exporter.update_server(snapshot)
        self.snapshot_received.emit(snapshot)

    # ---- watching ----------------------------------------------------------------------------
    def add_server(self, url: str, api_key: str) -> None:
        try:
            normalized = self.poller.add(ServerTarget(url, api_key or None))
        except ServerError as exc:
            self.error.emit(str(exc))
            return
        self.server_added.emit(normalized, api_key)

    def remove_server(self, url: str) -> None:
        self.poller.remove(url, wait=False)
        self.exporter.remove_server(url)

    # ---- Prometheus --------------------------------------------------------------------------
    def set_prometheus(self, on: bool, address: str) -> None:
        if not on:
            if self.exporter.running:
                threading.Thread(
                    target=self.exporter.stop, name="llamascope-prometheus-stop", daemon=True
                ).start()
            self.prometheus_state.emit("", "")
            return
        try:
            url = self.exporter.start(*parse_listen_address(address))
        except ExporterError as exc:
            self.prometheus_state.emit("", str(exc))
            return
        self.prometheus_state.emit(url, "")

    def observe_generation(self, stats: Any) -> None:
        """A finished generation (app.engine.types.RunStats) into the exported counters."""
        self.exporter.observe_generation(
            prompt_tokens=stats.prompt_tokens,
            generated_tokens=stats.generated_tokens,
            ttft_s=stats.ttft_s,
            total_s=stats.total_s,
            stop_reason=stats.stop_reason.value,
        )

    # ---- benchmarking ------------------------------------------------------------------------
    @property
    def bench_running(self) -> bool:
        return self._bench_thread is not None and self._bench_thread.is_alive()

    def start_bench(self, url: str, api_key: str, plan: ServerBenchPlan) -> None:
        if self.bench_running:
            self.bench_finished.emit("A server benchmark is already running: stop it first")
            return
        self._cancel = threading.Event()
        self._bench_thread = threading.Thread(
            target=self._bench,
            args=(url, api_key, plan, self._cancel),
            name="llamascope-serverbench",
            daemon=True,
        )
        self._bench_thread.start()

    def stop_bench(self) -> None:
        self._cancel.set()

    def _bench(self, url: str, api_key: str, plan: ServerBenchPlan, cancel: threading.Event) -> None:
        recorder: ServerRunRecorder | None = None
        levels = 0
        try:
            client = ServerClient(url, api_key or None, timeout_s=min(plan.timeout_s, 30.0))
            props = client.get_json("/props")

            def on_level(level: LevelResult) -> None:
                nonlocal recorder, levels
                levels += 1
                if self._history is not None:
                    if recorder is None:
                        recorder = ServerRunRecorder(self._history, client.url, plan, props)
                    recorder.add_level(level)
                self.bench_level.emit(level_summary(level, plan))

            result = run_server_bench(
                client, plan, cancel=cancel, on_level=on_level, on_progress=self.bench_progress.emit
            )
        except (ServerError, HistoryError) as exc:
            if recorder is not None:
                recorder.finish(None)
            self.bench_finished.emit(f"Server benchmark failed: {exc}")
            return
        try:
            if recorder is not None:
                recorder.finish(result)
        except HistoryError as exc:
            self.bench_finished.emit(f"The results could not be stored: {exc}")
            return
        stored = f" Stored as run {recorder.run_id}." if recorder is not None else ""
        if result.stopped:
            kept = "1 finished level is kept" if levels == 1 else f"{levels} finished levels are kept"
            self.bench_finished.emit(f"{result.stopped}. The {kept}.{stored}")
        elif result.cancelled:
            self.bench_finished.emit(
                f"Stopped after {levels} finished level{'' if levels == 1 else 's'}.{stored}"
            )
        else:
            self.bench_finished.emit(f"Finished: {levels} level{'' if levels == 1 else 's'}.{stored}")

    def shutdown(self) -> None:
        """At close: stop watching, benchmarking and serving (each ends within its timeout)."""
        self._cancel.set()
        if self._sampler is not None:
            self._sampler.remove_listener(self.exporter.update_telemetry)
        self.poller.stop(wait=False)
        if self.exporter.running:
            self.exporter.stop()


def connect_servers_box(bridge: ServerBridge, box: Any, engine: Any) -> None:
    """Wire the Servers box (widgets/servers_box.py) to the bridge, and the engine bridge's finished
    generations to the Prometheus counters."""
    box.add_requested.connect(bridge.add_server)
    box.remove_requested.connect(bridge.remove_server)
    box.prometheus_requested.connect(bridge.set_prometheus)
    box.bench_requested.connect(bridge.start_bench)
    box.bench_stop_requested.connect(bridge.stop_bench)
    bridge.server_added.connect(box.on_server_added)
    bridge.error.connect(box.on_error)
    bridge.snapshot_received.connect(box.on_snapshot)
    bridge.prometheus_state.connect(box.on_prometheus_state)
    bridge.bench_progress.connect(box.on_bench_progress)
    bridge.bench_level.connect(box.on_bench_level)
    bridge.bench_finished.connect(box.on_bench_finished)
    engine.generation_finished.connect(bridge.observe_generation)
