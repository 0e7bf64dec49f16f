"""The Performance panel's Servers box: watched llama-server instances, their load benchmark, and the
Prometheus toggle.

A view only: it asks for work through signals (ui/server_bridge.py does it off the GUI thread) and
shows what comes back. Each watched server is a table row (state, model, slots, requests, the
server's t/s, KV cache, each busy slot's progress) and a curve in two live plots; figures a
server does not give show "n/a", and a server that fails shows why in its row.
"""

from __future__ import annotations

import time
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.common.formatting import NOT_AVAILABLE, fmt
from app.server.bench import ServerBenchError, ServerBenchPlan, parse_concurrency
from app.server.snapshot import ServerSnapshot
from widgets.live_plot import LivePlot

SERVER_COLUMNS = ("server", "state", "model", "slots busy", "requests / deferred", "prompt t/s", "gen t/s",
                  "KV cache", "busy slots: decoded, context")  # fmt: skip
LEVEL_COLUMNS = ("concurrency", "errors", "TTFT p50 ms", "TTFT p95 ms", "TTFT p99 ms", "ITL ms",
                 "t/s per request", "aggregate t/s", "verdict")  # fmt: skip


def _item(text: str, tooltip: str = "") -> QTableWidgetItem:
    item = QTableWidgetItem(text)
    if tooltip:
        item.setToolTip(tooltip)
    return item


def _ms(seconds: float | None) -> str:
    return fmt(None if seconds is None else seconds * 1000.0, ".1f")


def server_cells(s: ServerSnapshot) -> list[str]:
    """The row of one snapshot, as the table shows it."""
    if s.error is not None or s.status.value != "ok":
        return [s.url, s.status.value, s.model or NOT_AVAILABLE, *([NOT_AVAILABLE] * 6)]
    busy = s.busy_slots
    slots = (
        NOT_AVAILABLE
        if busy is None
        else f"{busy} / {s.total_slots if s.total_slots is not None else len(s.slots)}"
    )
    kv = fmt(s.kv_cache_tokens, ".0f") if s.kv_cache_usage_ratio is None else f"{s.kv_cache_usage_ratio:.0%}"
    progress = ", ".join(
        f"#{slot.id}: {fmt(slot.n_decoded_tokens)} tok, {fmt(slot.context_used_ratio, '.0%')}"
        for slot in s.slots
        if slot.is_processing
    )
    return [
        s.url,
        "ok" + (" (notes)" if s.notes else ""),
        s.model or NOT_AVAILABLE,
        slots,
        f"{fmt(s.requests_processing, '.0f')} / {fmt(s.requests_deferred, '.0f')}",
        fmt(s.prompt_tokens_per_s, ".1f"),
        fmt(s.gen_tokens_per_s, ".1f"),
        kv,
        progress or ("idle" if busy == 0 else NOT_AVAILABLE),
    ]


class ServersBox(QWidget):
    """Watch servers, benchmark one, serve to Prometheus. Emits requests; the bridge answers."""

    add_requested = Signal(str, str)  # url, api key ("" for none)
    remove_requested = Signal(str)  # url
    prometheus_requested = Signal(bool, str)  # on/off, "HOST:PORT"
    bench_requested = Signal(str, str, object)  # url, api key, ServerBenchPlan
    bench_stop_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._rows: dict[str, int] = {}
        self._keys: dict[str, str] = {}
        self._t0 = time.monotonic()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)

        add_row = QHBoxLayout()
        self.url_edit = QLineEdit()
        self.url_edit.setPlaceholderText("http://127.0.0.1:8080")
        self.url_edit.setToolTip(
            "A llama-server's address; start it with --metrics and --slots to see everything"
        )
        self.key_edit = QLineEdit()
        self.key_edit.setPlaceholderText("API key (optional)")
        self.key_edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.add_button = QPushButton("Add")
        self.remove_button = QPushButton("Remove")
        self.add_button.clicked.connect(self._on_add)
        self.url_edit.returnPressed.connect(self._on_add)
        self.remove_button.clicked.connect(self._on_remove)
        add_row.addWidget(self.url_edit, 2)
        add_row.addWidget(self.key_edit, 1)
        add_row.addWidget(self.add_button)
        add_row.addWidget(self.remove_button)
        layout.addLayout(add_row)
        self.message = QLabel("")
        self.message.setWordWrap(True)
        layout.addWidget(self.message)

        self.table = QTableWidget(0, len(SERVER_COLUMNS))
        self.table.setHorizontalHeaderLabels(list(SERVER_COLUMNS))
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        self.table.setMaximumHeight(120)
        layout.addWidget(self.table)
        self.requests_plot = LivePlot(
            "Server requests processing", "requests", 120.0, value_format=".0f", height=80
        )
        self.speed_plot = LivePlot("Server generation speed", "t/s", 120.0, value_format=".1f", height=80)
        layout.addWidget(self.requests_plot)
        layout.addWidget(self.speed_plot)

        # Two inputs a row: the Performance column is narrow, and nothing in it may cut a box off.
        bench = QGridLayout()
        self.concurrency_edit = QLineEdit("1,2,4")
        self.concurrency_edit.setToolTip("Concurrency levels, comma-separated")
        self.requests_spin = self._spin(1, 100_000, 8, "requests per level")
        self.prompt_spin = self._spin(1, 1_000_000, 128, "prompt tokens per request")
        self.gen_spin = self._spin(1, 100_000, 64, "tokens generated per request")
        self.bench_button = QPushButton("Benchmark server")
        self.bench_button.setToolTip(
            "Streaming requests at each concurrency level against the selected server"
        )
        self.bench_stop = QPushButton("Stop")
        self.bench_stop.setEnabled(False)
        self.bench_button.clicked.connect(self._on_bench)
        self.bench_stop.clicked.connect(self.bench_stop_requested.emit)
        inputs = (
            ("concurrency", self.concurrency_edit),
            ("requests", self.requests_spin),
            ("prompt tokens", self.prompt_spin),
            ("generated", self.gen_spin),
        )
        for index, (label, widget) in enumerate(inputs):
            bench.addWidget(QLabel(label), index // 2, (index % 2) * 2)
            bench.addWidget(widget, index // 2, (index % 2) * 2 + 1)
        bench.addWidget(self.bench_button, 2, 0, 1, 2)
        bench.addWidget(self.bench_stop, 2, 2, 1, 2)
        layout.addLayout(bench)
        self.bench_status = QLabel("")
        self.bench_status.setWordWrap(True)
        layout.addWidget(self.bench_status)
        self.levels_table = QTableWidget(0, len(LEVEL_COLUMNS))
        self.levels_table.setHorizontalHeaderLabels(list(LEVEL_COLUMNS))
        self.levels_table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.levels_table.setMaximumHeight(140)
        layout.addWidget(self.levels_table)

        prometheus = QHBoxLayout()
        self.prometheus_check = QCheckBox("Serve to Prometheus at")
        self.prometheus_check.setToolTip(
            "LlamaScope's telemetry, generations and watched servers at /metrics"
        )
        self.prometheus_address = QLineEdit("127.0.0.1:9464")
        self.prometheus_check.toggled.connect(self._on_prometheus_toggled)
        prometheus.addWidget(self.prometheus_check)
        prometheus.addWidget(self.prometheus_address, 1)
        layout.addLayout(prometheus)
        self.prometheus_status = QLabel("")
        self.prometheus_status.setWordWrap(True)
        layout.addWidget(self.prometheus_status)

    @staticmethod
    def _spin(low: int, high: int, value: int, tooltip: str) -> QSpinBox:
        spin = QSpinBox()
        spin.setRange(low, high)
        spin.setValue(value)
        spin.setToolTip(tooltip)
        return spin

    # ---- requests ----------------------------------------------------------------------------
    def _on_add(self) -> None:
        url = self.url_edit.text().strip()
        if not url:
            self.message.setText("Type a server's address first, e.g. http://127.0.0.1:8080")
            return
        self.add_requested.emit(url, self.key_edit.text())

    def selected_url(self) -> str | None:
        rows = sorted({index.row() for index in self.table.selectedIndexes()})
        if rows:
            item = self.table.item(rows[0], 0)
            return item.text() if item is not None else None
        return next(iter(self._rows), None) if len(self._rows) == 1 else None

    def _on_remove(self) -> None:
        url = self.selected_url()
        if url is None:
            self.message.setText("Select the server to remove")
            return
        row = self._rows.pop(url)
        self.table.removeRow(row)
        self._rows = {u: (r - 1 if r > row else r) for u, r in self._rows.items()}
        self._keys.pop(url, None)
        self.remove_requested.emit(url)

    def _on_bench(self) -> None:
        url = self.selected_url()
        if url is None:
            self.bench_status.setText("Add a server (and select it when there are several) to benchmark it")
            return
        try:
            plan = ServerBenchPlan(
                concurrency=parse_concurrency(self.concurrency_edit.text()),
                requests=self.requests_spin.value(),
                prompt_tokens=self.prompt_spin.value(),
                gen_tokens=self.gen_spin.value(),
            )
        except ServerBenchError as exc:
            self.bench_status.setText(str(exc))
            return
        self.levels_table.setRowCount(0)
        self.set_bench_running(True)
        self.bench_status.setText(f"Benchmarking {url}…")
        self.bench_requested.emit(url, self._keys.get(url, ""), plan)

    def _on_prometheus_toggled(self, on: bool) -> None:
        self.prometheus_address.setEnabled(not on)
        self.prometheus_requested.emit(on, self.prometheus_address.text())

    # ---- answers -----------------------------------------------------------------------------
    def on_server_added(self, url: str, api_key: str) -> None:
        self.message.setText("")
        self._keys[url] = api_key
        if url not in self._rows:
            self._rows[url] = self.table.rowCount()
            self.table.insertRow(self.table.rowCount())
            self.table.setItem(self._rows[url], 0, _item(url))
            self.table.setItem(self._rows[url], 1, _item("connecting…"))
            for plot in (self.requests_plot, self.speed_plot):
                plot.add_curve(url)
        self.url_edit.clear()

    def on_error(self, message: str) -> None:
        self.message.setText(message)

    def on_snapshot(self, snapshot: ServerSnapshot) -> None:
        row = self._rows.get(snapshot.url)
        if row is None:
            return  # removed meanwhile
        tooltip = snapshot.error or "\n".join(snapshot.notes)
        for column, text in enumerate(server_cells(snapshot)):
            self.table.setItem(row, column, _item(text, tooltip))
        self.requests_plot.append(snapshot.url, snapshot.t_monotonic_s, snapshot.requests_processing)
        self.speed_plot.append(snapshot.url, snapshot.t_monotonic_s, snapshot.gen_tokens_per_s)

    def set_bench_running(self, running: bool) -> None:
        self.bench_button.setEnabled(not running)
        self.bench_stop.setEnabled(running)

    def on_bench_progress(self, done: int, total: int, what: str) -> None:
        self.bench_status.setText(f"{done} of {total} requests · {what}")

    def on_bench_level(self, row: dict[str, Any]) -> None:
        """One finished level (app.server.record.level_summary's dict)."""
        sd = row.get("request_tokens_per_s_stdev")
        per_request = fmt(row.get("request_tokens_per_s_mean"), ".2f") + (
            f" ± {sd:.2f}" if sd is not None else ""
        )
        cells = [
            str(row["concurrency"]),
            str(row["errors"]),
            _ms(row.get("ttft_p50_s")),
            _ms(row.get("ttft_p95_s")),
            _ms(row.get("ttft_p99_s")),
            _ms(row.get("inter_token_mean_s")),
            per_request,
            fmt(row.get("aggregate_tokens_per_s"), ".2f"),
            str(row["verdict"]),
        ]
        index = self.levels_table.rowCount()
        self.levels_table.insertRow(index)
        for column, text in enumerate(cells):
            self.levels_table.setItem(index, column, _item(text, str(row.get("verdict_detail", ""))))

    def on_bench_finished(self, message: str) -> None:
        self.set_bench_running(False)
        self.bench_status.setText(message)

    def on_prometheus_state(self, url: str, message: str) -> None:
        """The endpoint's state: its URL when serving, else "" and why (or "" when switched off)."""
        if url:
            self.prometheus_status.setText(f"Serving {url}")
            return
        self.prometheus_status.setText(message)
        if self.prometheus_check.isChecked():
            self.prometheus_check.blockSignals(True)
            self.prometheus_check.setChecked(False)
            self.prometheus_check.blockSignals(False)
            self.prometheus_address.setEnabled(True)
