"""Performance panel: live speed, efficiency, thermal state, the benchmark runner and the run history."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.bench.export import export, load_llama_bench
from app.bench.history import HistoryError, HistoryStore
from app.bench.report import (
    ReportError,
    build_from_info,
    machine_from_hardware,
    report_runs,
    this_machine,
)
from app.bench.runner import (
    DEFAULT_FLASH_ATTN,
    DEFAULT_N_BATCH,
    DEFAULT_N_UBATCH,
    SWEEPABLE,
    BenchError,
    BenchPlan,
    BenchResult,
    build_tests,
    flash_attn_text,
    parse_flash_attn,
    parse_values,
)
from app.bench.trust import STEADY_RULE, assess
from app.common.formatting import fmt, fmt_bytes, format_bytes, format_rate
from app.engine.types import LoadResult, RunStats, TokenEvent, TokenStream
from app.model.settings import LoadSettings
from app.telemetry.bandwidth import Bandwidth, roofline
from app.telemetry.energy import summarize
from app.telemetry.hardware import HardwareReport, hardware_fingerprint
from app.telemetry.snapshot import DeviceVerdict, Snapshot, ThrottleVerdict
from widgets.chart import install_chart_behaviour
from widgets.depth_plot import DepthPlot
from widgets.live_plot import LivePlot, ValueLabel
from widgets.panel import Panel
from widgets.pg_table import PgTable
from widgets.score_box import ScoreBox
from widgets.servers_box import ServersBox
from widgets.table_fit import WHOLE_TEXT, ElidedLabel, cell, fit_columns, open_table_button, stacked
from widgets.token_reader import TokenReader
from widgets.tune_box import TuneBox

LIVE_REFRESH_MS = 500  # how often the live view reads new tokens and redraws

ROOFLINE_TOOLTIP = (
    "Generation speed as a share of the memory-bandwidth bound, for generation on the CPU only: "
    "each token reads all weights and the K/V of every context token, so memory can feed at most "
    "bandwidth ÷ bytes per token tokens/s. Not shown when layers run on a GPU."
)

PlanSource = Callable[[], tuple[str | None, LoadSettings]]  # (selected model, Model Config's load settings)


class StatTile(QWidget):
    """A caption over a large value; shows "n/a" until a measured value arrives."""

    def __init__(self, caption: str, tooltip: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.caption = QLabel(caption)
        self.value = ValueLabel("n/a", reserve="9999.9 t/s")  # painted: a new value costs no relayout
        self.value.setObjectName(f"tile_{caption.replace(' ', '_').lower()}")
        font = self.value.font()
        font.setPointSizeF(font.pointSizeF() * 1.3)
        font.setBold(True)
        self.value.setFont(font)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.setSpacing(0)
        layout.addWidget(self.caption)
        layout.addWidget(self.value)
        if tooltip:
            self.setToolTip(tooltip)

    def set(self, text: str) -> None:
        self.value.setText(text)


def _table(headers: Sequence[str], elastic: Sequence[int]) -> QTableWidget:
    """A read-only table that fits its box: the `elastic` (long text) columns share what the figures
    leave and wrap (widgets/table_fit.py)."""
    table = QTableWidget(0, len(headers))
    table.setHorizontalHeaderLabels(list(headers))
    table.verticalHeader().setVisible(False)
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    fit_columns(table, elastic)
    table.setMinimumHeight(120)
    return table


def _fill_row(table: QTableWidget, row: int, values: Sequence[str], tooltip: str = "") -> None:
    for col, value in enumerate(values):
        table.setItem(row, col, cell(value, tooltip))  # the tooltip starts with the whole text


_BENCH_RUN_TIP = "Benchmark the selected model (Ctrl+B); nothing else runs meanwhile"
# The Export dialog's choice that writes `llamascope report`'s HTML file (app.bench.report).
REPORT_FILTER = "HTML report of the runs selected in History, or else of this benchmark (*.html)"


class PerformancePanel(Panel):
    """The fourth column. Requests work through signals; the main window connects them."""

    benchmark_requested = Signal(object)  # BenchPlan
    stop_requested = Signal()

    def __init__(self, history: HistoryStore | None, parent: QWidget | None = None) -> None:
        super().__init__("Performance", parent)
        self._history = history
        self._plan_source: PlanSource | None = None
        self._loaded: LoadResult | None = None
        self._bandwidth: Bandwidth | None = None
        self._hardware: HardwareReport | None = None  # whether llama.cpp has a GPU to put layers on
        self._last_stats: RunStats | None = None
        self._last_token_ns: int | None = None
        self._t0_ns: int | None = None
        self._smoothed: float | None = None
        self._run_samples: list[Snapshot] = []  # telemetry snapshots during the current generation
        self._generating = False
        self._busy = False
        self._taken = ""  # why another panel's work holds the engine; "" when it does not
        # Twice a second: each redraw takes the GUI thread ~3 ms of Python, which on 2 cores stalls
        # llama.cpp; 4 times a second cost ~2-3 % generation speed, twice ~0 (plot_overhead.py).
        self.token_reader = TokenReader(LIVE_REFRESH_MS, self._on_tokens, self)
        self._bench_results: list[BenchResult] = []
        self._bench_run_ids: list[int] = []  # the history runs of the last finished benchmark
        self._bench_swept: tuple[str, ...] = ()
        self._bench_several_models = False
        self._extra_models: list[str] = []  # benchmarked after the model selected in Model Config
        self._build_realtime_box()
        self._build_efficiency_box()
        self._build_thermal_box()
        self._build_benchmark_box()
        self._build_history_box()
        self.score_box = ScoreBox()  # LocalScore; ui/engine_bridge.py runs it
        self.add_box("LocalScore", self.score_box)
        self.tune_box = TuneBox()
        self.add_box("Optimization: Auto-Tune", self.tune_box)
        self.servers_box = ServersBox()  # ui/server_bridge.py does its work
        self.add_box("Servers: llama-server", self.servers_box)
        self.refresh_history()

    # ---- construction ------------------------------------------------------------------------
    def _build_realtime_box(self) -> None:
        body = QWidget()
        layout = QVBoxLayout(body)
        layout.setContentsMargins(0, 0, 0, 0)
        # Redrawn twice a second while generating (see token_reader above).
        self.speed_plot = LivePlot(
            "Generation speed",
            "t/s",
            window_s=5,
            refresh_ms=LIVE_REFRESH_MS,
            since_start=True,
            non_negative=True,
            reserve="9999.9",
        )
        self.speed_plot.plot_widget.setLabel("bottom", "s since the first token")
        self.speed_plot.add_curve("per token")
        self.speed_plot.add_curve("smoothed")
        self.speed_plot.setMinimumHeight(140)
        self.speed_plot.setToolTip(
            "Per-token rate (1 ÷ time since the previous token) and its moving average, over the "
            "running or last generation"
        )
        grid = QGridLayout()
        self.tile_speed = StatTile(
            "Speed", "Generation tokens/s of the running or last generation (wall clock)"
        )
        self.tile_ttft = StatTile("TTFT", "Time to first token: request to first token sampled")
        self.tile_prompt = StatTile("Prompt", "Prompt tokens ÷ time to first token")
        self.tile_tokens = StatTile("Tokens", "Tokens generated so far")
        self.tile_memory = StatTile("Memory", "LlamaScope's resident memory (RSS), with the model it loaded")
        self.tile_vram = StatTile(
            "VRAM",
            "LlamaScope's memory on the GPU(s), as the NVIDIA driver lists it per process; n/a "
            "without an NVIDIA GPU or when the driver does not report it",
        )
        self.tile_cpu = StatTile("CPU", "Whole-machine CPU utilisation")
        self.tile_power = StatTile(
            "Power", "CPU package (RAPL) + GPU (NVML) power; n/a when the machine exposes neither"
        )
        self.tile_temp = StatTile("Temp", "Hottest sensor (CPU or GPU); n/a without readable sensors")
        for i, tile in enumerate(
            (
                self.tile_speed,
                self.tile_ttft,
                self.tile_prompt,
                self.tile_tokens,
                self.tile_cpu,
                self.tile_power,
                self.tile_memory,
                self.tile_vram,
                self.tile_temp,
            )
        ):
            grid.addWidget(tile, i // 3, i % 3)
        self.live_check = QCheckBox("Live while generating")
        self.live_check.setObjectName("liveView")
        self.live_check.setChecked(True)
        self.live_check.setToolTip(
            "Draw the speed plot and tiles twice a second while tokens arrive. Off, they are "
            "drawn once the generation ends: on a machine with few cores the GUI's drawing takes "
            "a little CPU from llama.cpp."
        )
        self.live_check.toggled.connect(self._on_live_toggled)
        layout.addWidget(self.speed_plot)
        layout.addLayout(grid)
        layout.addWidget(self.live_check)
        self.add_box("Real-time", body)

    def _build_efficiency_box(self) -> None:
        body = QWidget()
        form = QFormLayout(body)
        form.setContentsMargins(0, 0, 0, 0)
        self.eff_cpu = QLabel("n/a")
        self.eff_memory = QLabel("n/a")
        self.eff_joules = QLabel("n/a")
        self.eff_joules.setToolTip(
            "Energy per generated token from RAPL or NVML power readings; "
            "n/a when the machine exposes no power source"
        )
        self.eff_roofline = QLabel("n/a")
        self.eff_roofline.setObjectName("rooflineLabel")
        self.eff_roofline.setToolTip(ROOFLINE_TOOLTIP)
        self.eff_bandwidth = QLabel("n/a")
        # Two figures on one line would set the column's minimum width: they wrap instead.
        self.eff_bandwidth.setWordWrap(True)
        self.eff_bandwidth.setObjectName("bandwidthLabel")
        self.eff_bandwidth.setToolTip("Not measured yet.")
        form.addRow("CPU during run", self.eff_cpu)
        form.addRow("Memory", self.eff_memory)
        form.addRow("Energy", self.eff_joules)
        form.addRow("Roofline", self.eff_roofline)
        form.addRow("Bandwidth", self.eff_bandwidth)
        self.add_box("Efficiency", body)

    def _build_thermal_box(self) -> None:
        body = QWidget()
        form = QFormLayout(body)
        form.setContentsMargins(0, 0, 0, 0)
        self.thermal_temp = QLabel("n/a")
        self.thermal_status = QLabel("n/a")
        self.thermal_status.setObjectName("throttleStatus")
        self.thermal_fan = QLabel("n/a")
        form.addRow("Temperature", self.thermal_temp)
        form.addRow("Throttling", self.thermal_status)
        form.addRow("Fan", self.thermal_fan)
        self.add_box("Thermal", body)

    def _build_benchmark_box(self) -> None:
        body = QWidget()
        layout = QVBoxLayout(body)
        layout.setContentsMargins(0, 0, 0, 0)
        form = QFormLayout()
        self.bench_pp = QLineEdit("512")
        self.bench_tg = QLineEdit("128")
        self.bench_pg = QLineEdit("")
        self.bench_depth = QLineEdit("0")
        self.bench_threads = QLineEdit("")
        # llama-bench's defaults, as `llamascope bench` has them: the same test in either place.
        self.bench_batch = QLineEdit(str(DEFAULT_N_BATCH))
        self.bench_ubatch = QLineEdit(str(DEFAULT_N_UBATCH))
        self.bench_fa = QLineEdit(flash_attn_text(DEFAULT_FLASH_ATTN))
        self.bench_ctk = QLineEdit("")
        self.bench_ctv = QLineEdit("")
        self.bench_ngl = QLineEdit("")
        self.bench_mmap = QLineEdit("")
        self.bench_reps = QSpinBox()
        self.bench_reps.setRange(1, 100)
        self.bench_reps.setValue(5)
        list_tip = "Comma list or range: 1,2,4 · 1-8 · 1-8+2 · 1-64*2 (as llama-bench takes them)"
        for label, edit, tip in (
            ("Prompt (pp)", self.bench_pp, "Prompt sizes; 0 or empty = no pp test. " + list_tip),
            ("Generate (tg)", self.bench_tg, "Generation sizes; 0 or empty = no tg test. " + list_tip),
            ("pp+tg (pg)", self.bench_pg, "Combined tests as PP,TG pairs separated by ';' (e.g. 512,128)"),
            (
                "Depth (d)",
                self.bench_depth,
                "Run each test after filling the KV cache with d tokens. " + list_tip,
            ),
            ("Threads", self.bench_threads, "Empty = Model Config's value. " + list_tip),
            (
                "n_batch",
                self.bench_batch,
                f"{DEFAULT_N_BATCH} is llama-bench's default; empty = Model Config's value. " + list_tip,
            ),
            (
                "n_ubatch",
                self.bench_ubatch,
                f"{DEFAULT_N_UBATCH} is llama-bench's default; empty = Model Config's value. " + list_tip,
            ),
            (
                "Flash attn",
                self.bench_fa,
                "0, 1, auto or a list (0,1,auto); auto, llama-bench's default, lets llama.cpp turn it on "
                "where the backend has it; empty = Model Config's value",
            ),
            ("K cache", self.bench_ctk, "e.g. f16,q8_0; empty = Model Config's value"),
            (
                "V cache",
                self.bench_ctv,
                "e.g. f16,q8_0 (a quantized V cache needs flash attention); empty = Model Config's value",
            ),
            ("GPU layers", self.bench_ngl, "e.g. 0,99; empty = Model Config's value. " + list_tip),
            ("mmap", self.bench_mmap, "0, 1 or 0,1; empty = Model Config's value"),
        ):
            edit.setToolTip(tip)
            form.addRow(label, edit)
        self.bench_reps.setToolTip("Timed repetitions per test (after one warm-up); mean ± stdev over them")
        form.addRow("Repetitions", self.bench_reps)
        self.bench_steady = QCheckBox("Warm up until steady")
        self.bench_steady.setObjectName("benchSteady")
        self.bench_steady.setToolTip(
            f"Instead of one warm-up run, full repetitions until the last {STEADY_RULE.window} agree "
            f"within {STEADY_RULE.tolerance_percent:g} % of their median (at most {STEADY_RULE.max_runs} "
            f"runs or {STEADY_RULE.max_seconds:.0f} s a test; one that does not settle is flagged). "
            "As `llamascope bench --warmup-until-steady`."
        )
        form.addRow("", self.bench_steady)
        models_row = QHBoxLayout()
        self.bench_models_label = QLabel("selected model")
        self.bench_models_add = QToolButton()  # compact: push buttons would widen the column
        self.bench_models_add.setText("Add…")
        self.bench_models_add.setToolTip(
            "Benchmark more GGUF files with the same tests and settings, one after another"
        )
        self.bench_models_add.clicked.connect(self._on_add_models_clicked)
        self.bench_models_clear = QToolButton()
        self.bench_models_clear.setText("Clear")
        self.bench_models_clear.setToolTip("Benchmark only the model selected in Model Config")
        self.bench_models_clear.clicked.connect(lambda: self.set_extra_models([]))
        self.bench_models_clear.setEnabled(False)
        models_row.addWidget(self.bench_models_label, 1)
        models_row.addWidget(self.bench_models_add)
        models_row.addWidget(self.bench_models_clear)
        form.addRow("Models", models_row)
        layout.addLayout(form)
        buttons = QGridLayout()
        self.bench_run = QPushButton("Run benchmark")
        self.bench_run.setObjectName("benchRun")
        self.bench_run.setToolTip(_BENCH_RUN_TIP)
        self.bench_run.clicked.connect(self.request_benchmark)
        self.bench_stop = QPushButton("Stop")
        self.bench_stop.setToolTip("Stop after the current repetition; finished results are kept")
        self.bench_stop.setEnabled(False)
        self.bench_stop.clicked.connect(self.stop_requested)
        self.bench_export = QPushButton("Export…")
        self.bench_export.setToolTip(
            "Save these results as markdown, CSV, JSON, JSONL or llama-bench's SQL (its fields)"
        )
        self.bench_export.clicked.connect(self._on_export_clicked)
        self.bench_import = QPushButton("Import llama-bench…")
        self.bench_import.setToolTip(
            "Add llama-bench -o json/jsonl output to the history, beside LlamaScope's runs"
        )
        self.bench_import.clicked.connect(self._on_import_clicked)
        for i, b in enumerate((self.bench_run, self.bench_stop, self.bench_export, self.bench_import)):
            buttons.addWidget(b, i // 2, i % 2)  # two by two: one row would widen the whole column
        layout.addLayout(buttons)
        self.bench_progress = QProgressBar()
        self.bench_progress.setRange(0, 1)
        self.bench_progress.setValue(0)
        self.bench_status = QLabel("")
        self.bench_status.setWordWrap(True)
        self.bench_table = _table(
            ["test", "config", "t/s", "CV", "CPU %", "J/token", "trust"], elastic=(1, 6)
        )
        self.bench_table.setToolTip(
            "trust: ⚠ when the repetitions disagree (CV over 5 %), a VM's host took the CPU (steal "
            "over 2 %), other processes used over 10 % of all CPU time, or the hardware throttled; "
            "hover a row for its figures and why"
        )
        self.bench_table.setObjectName("benchTable")
        # CPU % and J/token would squeeze the config and trust columns to nothing in a narrow column:
        # they are in each row's tooltip and in the table that "Open table…" shows whole.
        for col in (4, 5):
            self.bench_table.setColumnHidden(col, True)
        # Right under the buttons: "Exported to …" and every other answer show where the user looks.
        layout.addWidget(self.bench_status)
        layout.addWidget(self.bench_progress)
        layout.addWidget(self.bench_table)
        self.bench_table_button = open_table_button(self.bench_table, "Benchmark results")
        layout.addWidget(self.bench_table_button, 0, Qt.AlignmentFlag.AlignRight)
        self.pg_table = PgTable()  # pg tests as llama-batched-bench reports them; shown when there are some
        self.depth_plot = DepthPlot()  # t/s against depth; shown when the results span two depths
        layout.addWidget(self.pg_table)
        self.pg_table_button = open_table_button(self.pg_table, "pp+tg tests (batched-bench figures)")
        self.pg_table_button.setVisible(False)
        self.pg_table.visibility_changed.connect(self.pg_table_button.setVisible)
        layout.addWidget(self.pg_table_button, 0, Qt.AlignmentFlag.AlignRight)
        layout.addWidget(self.depth_plot)
        self.add_box("Benchmarks", body)

    def _build_history_box(self) -> None:
        body = QWidget()
        layout = QVBoxLayout(body)
        layout.setContentsMargins(0, 0, 0, 0)
        filters = QHBoxLayout()
        self.history_filter = QLineEdit()
        self.history_filter.setPlaceholderText("filter by model")
        self.history_filter.textChanged.connect(self.refresh_history)
        self.history_this_machine = QCheckBox("this machine")
        self.history_this_machine.setToolTip("Only runs measured on this machine (same CPU, cores, RAM, OS)")
        self.history_this_machine.toggled.connect(self.refresh_history)
        filters.addWidget(self.history_filter, 1)
        filters.addWidget(self.history_this_machine)
        self.history_table = _table(["run", "when", "kind", "status", "model", "results"], elastic=(4,))
        self.history_table.setObjectName("historyTable")
        self.history_table.setColumnHidden(5, True)  # the result count: in "Open table…" and the tooltip
        self.history_table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.history_table.itemSelectionChanged.connect(self._on_history_selection)
        buttons = QHBoxLayout()
        self.compare_button = QPushButton("Compare")
        self.compare_button.setToolTip(
            "Select two benchmark runs, or one sweep run to compare its configurations: change "
            "in % with Welch's t-test over the repetitions"
        )
        self.compare_button.setEnabled(False)
        self.compare_button.clicked.connect(self.compare_selected)
        self.compare_table = _table(
            ["test", "config", "A t/s", "B t/s", "change", "significance"], elastic=(1, 5)
        )
        self.compare_table.setObjectName("compareTable")
        self.compare_table_button = open_table_button(self.compare_table, "Comparison of runs")
        buttons.addWidget(self.compare_button)
        buttons.addStretch(1)
        buttons.addWidget(self.compare_table_button)
        self.history_plot = pg.PlotWidget(background=None)
        self.history_plot.setMinimumHeight(120)
        self.history_plot.setMaximumHeight(220)  # pyqtgraph's size hint would take a screen's height
        self.history_plot.setLabel("left", "t/s")
        self.history_plot.setLabel("bottom", "run (oldest → newest)")
        self.history_plot.showGrid(x=True, y=True, alpha=0.3)
        self.history_curve = self.history_plot.plot([], [], pen=pg.mkPen(width=1), symbol="o", symbolSize=5)
        # The wheel scrolls the panel unless the chart was clicked or Ctrl is held (it once zoomed to
        # 0…−75 t/s while the user scrolled); runs are counted, t/s never below 0.
        self.history_chart = install_chart_behaviour(self.history_plot, non_negative_y=True, integer_x=True)
        # One line that never widens the column: a long model file name is elided, whole in the tooltip.
        self.history_plot_title = ElidedLabel("Select a run to plot its first test over time.")
        layout.addLayout(filters)
        layout.addWidget(self.history_table)
        layout.addLayout(buttons)
        layout.addWidget(self.compare_table)
        layout.addWidget(self.history_plot_title)
        layout.addWidget(self.history_plot)
        self.add_box("History", body)

    # ---- wiring from the main window ---------------------------------------------------------
    def set_plan_source(self, source: PlanSource) -> None:
        self._plan_source = source
        self.score_box.set_plan_source(source)

    def set_loaded(self, result: LoadResult | None) -> None:
        self._loaded = result
        self._update_roofline()

    def set_bandwidth(self, bandwidth: Bandwidth | None) -> None:
        self._bandwidth = bandwidth
        if bandwidth is None:
            self.eff_bandwidth.setText("n/a — not measured")
            self.eff_bandwidth.setToolTip("The memory bandwidth could not be measured (see the log).")
        else:
            self.eff_bandwidth.setText(
                f"{bandwidth.threads} threads: {format_rate(bandwidth.bytes_per_s)} · "
                f"1 thread: {format_rate(bandwidth.single_thread_bytes_per_s)}"
            )
            self.eff_bandwidth.setToolTip(bandwidth.method)
        self._update_roofline()

    def set_hardware(self, report: HardwareReport) -> None:
        """The detected hardware: whether llama.cpp lists a GPU that GPU layers would run on."""
        self._hardware = report
        self.tune_box.set_hardware(report)  # GPU layers only where this build can offload
        self._update_roofline()

    def set_busy(self, busy: bool) -> None:
        """This window's own engine work (a load, a generation, a benchmark, a tuning) runs or ended."""
        self._busy = busy
        self._update_run_buttons()

    def set_engine_taken(self, reason: str) -> None:
        """Another panel's work holds the engine (`reason` says which), or not ("")."""
        self._taken = reason
        self._update_run_buttons()

    def _update_run_buttons(self) -> None:
        busy = self._busy or bool(self._taken)
        self.bench_run.setEnabled(not busy)
        self.bench_run.setToolTip(self._taken or _BENCH_RUN_TIP)
        self.tune_box.set_busy(busy, self._taken)
        self.score_box.set_busy(busy, self._taken)

    # ---- live generation ---------------------------------------------------------------------
    def on_generation_started(self, stream: TokenStream) -> None:
        self._generating = True
        self._t0_ns = None
        self._last_token_ns = None
        self._smoothed = None
        self._run_samples.clear()
        self.speed_plot.clear()
        self.speed_plot.flush()  # the last run's curve goes now, not at the first redraw
        self.tile_tokens.set("0")
        for tile in (self.tile_ttft, self.tile_prompt, self.tile_speed):
            tile.set("n/a")  # the last run's figures are not this one's
        # Tokens are read twice a second, not handed over one by one: at 100+ tokens/s every
        # wake-up of the GUI thread is CPU taken from llama.cpp's threads on a small machine.
        self.token_reader.start(stream, ticking=self.live_check.isChecked())

    def set_live_view(self, live: bool) -> None:
        """Draw the plot and tiles while generating (True) or only once it has finished."""
        self.live_check.setChecked(live)

    def _on_live_toggled(self, live: bool) -> None:
        self.token_reader.set_ticking(live)

    def _on_tokens(self, events: list[TokenEvent]) -> None:
        if self._t0_ns is None:
            self._t0_ns = events[0].t_ns
        first = events[0]
        if first.index == 0 and first.ttft_s is not None:
            # Known at the first token (the engine sends it at once): no need to wait for the end.
            self.tile_ttft.set(fmt(first.ttft_s * 1000, ".0f", " ms"))
            rate = first.prompt_tokens / first.ttft_s if first.prompt_tokens and first.ttft_s > 0 else None
            self.tile_prompt.set(fmt(rate, ".0f", " t/s"))
        times: list[float] = []
        rates: list[float] = []
        smoothed: list[float] = []
        for event in events:
            t_ns = event.t_ns
            if self._last_token_ns is not None and t_ns > self._last_token_ns:
                rate = 1e9 / (t_ns - self._last_token_ns)
                self._smoothed = rate if self._smoothed is None else 0.85 * self._smoothed + 0.15 * rate
                times.append((t_ns - self._t0_ns) / 1e9)
                rates.append(rate)
                smoothed.append(self._smoothed)
            self._last_token_ns = t_ns
        if times:
            t = np.array(times)
            self.speed_plot.extend("per token", t, np.array(rates))
            self.speed_plot.extend("smoothed", t, np.array(smoothed))
            self.speed_plot.flush()  # with the tiles, not up to a refresh period later
            self.tile_speed.set(f"{self._smoothed:.1f} t/s")
        # Painted labels: a new value costs a small repaint, not a relayout of the panel.
        self.tile_tokens.set(str(events[-1].index + 1))

    def on_generation_finished(self, stats: RunStats) -> None:
        self.token_reader.finish()  # the last tokens' rates belong on the plot too
        self._generating = False
        self._last_stats = stats
        self.tile_speed.set(fmt(stats.gen_tokens_per_s, ".1f", " t/s"))
        self.tile_ttft.set(fmt(None if stats.ttft_s is None else stats.ttft_s * 1000, ".0f", " ms"))
        self.tile_prompt.set(fmt(stats.prompt_tokens_per_s, ".0f", " t/s"))
        self.tile_tokens.set(str(stats.generated_tokens))
        self._summarise_run(stats)
        self._update_roofline()
        self.refresh_history()

    def on_generation_failed(self) -> None:
        self.token_reader.finish()
        self._generating = False

    def on_sample(self, snapshot: Snapshot) -> None:
        """A telemetry snapshot from the sampler (arrives on the GUI thread through the bridge)."""
        if self._generating:
            self._run_samples.append(snapshot)
        self.tile_memory.set(fmt_bytes(snapshot.process_rss_bytes))
        vram = [g.process_memory_bytes for g in snapshot.gpus if g.process_memory_bytes is not None]
        self.tile_vram.set(fmt_bytes(sum(vram)) if vram else "n/a")
        self.tile_cpu.set(fmt(snapshot.cpu_percent, ".0f", " %"))
        self.tile_power.set(fmt(snapshot.total_power_watts, ".1f", " W"))
        self.tile_temp.set(fmt(snapshot.max_temperature_c, ".0f", " °C"))
        if snapshot.mem_used_bytes is not None and snapshot.mem_total_bytes:
            self.eff_memory.setText(
                f"{100 * snapshot.mem_used_bytes / snapshot.mem_total_bytes:.0f} % of RAM in use"
            )
        temp = snapshot.max_temperature_c
        self.thermal_temp.setText(f"{temp:.0f} °C" if temp is not None else "n/a — no sensors")
        fans = [v for _, v in snapshot.fans_rpm if v is not None]
        self.thermal_fan.setText(f"{max(fans):.0f} rpm" if fans else "n/a")
        self.thermal_status.setText(_throttle_text(snapshot.verdicts))

    def _summarise_run(self, stats: RunStats) -> None:
        if not self._run_samples:
            self.eff_cpu.setText("n/a")
            self.eff_joules.setText("n/a")
            return
        summary = summarize(self._run_samples)
        self.eff_cpu.setText(fmt(summary.mean_cpu_percent, ".0f", " %"))
        if summary.energy_joules is not None and stats.generated_tokens:
            self.eff_joules.setText(f"{summary.energy_joules / stats.generated_tokens:.3f} J/token")
        else:
            self.eff_joules.setText("n/a — no power source")

    def _update_roofline(self) -> None:
        stats, loaded, bw = self._last_stats, self._loaded, self._bandwidth
        self.eff_roofline.setToolTip(ROOFLINE_TOOLTIP)
        if bw is None or stats is None or loaded is None or not stats.gen_tokens_per_s:
            self.eff_roofline.setText("n/a")
            return
        gpu = self._layers_on_gpu(loaded.settings)
        if gpu:
            self.eff_roofline.setText(f"n/a — {gpu}")
            return
        result = roofline(
            loaded.model,
            stats.gen_tokens_per_s,
            bw,
            context_tokens=stats.context_tokens,
            type_k=loaded.settings.type_k,
            type_v=loaded.settings.type_v,
        )
        self.eff_roofline.setText(result.text)
        details = (
            f"{format_bytes(result.bytes_per_token)} read per token at {format_rate(bw.bytes_per_s)} "
            f"({bw.threads} threads): at most {result.bound_tokens_per_s:,.1f} t/s; "
            f"this run {result.tokens_per_s:,.1f} t/s."
        )
        why = f"\n\nWhy it is over the bound: {result.why}." if result.exceeds else ""
        self.eff_roofline.setToolTip(f"{ROOFLINE_TOOLTIP}\n\n{details}{why}")

    def _layers_on_gpu(self, settings: LoadSettings) -> str:
        """Why the CPU's bandwidth does not bound this generation ("" when it does: CPU only)."""
        if settings.n_gpu_layers == 0:
            return ""
        report = self._hardware
        if report is None or report.devices is None:
            return "GPU layers set and llama.cpp's GPUs not known yet"
        if not report.gpus:
            return ""  # no GPU in llama.cpp's device list: the layers stay on the CPU
        return "layers run on a GPU; the bound is the CPU's memory bandwidth"

    # ---- benchmarks --------------------------------------------------------------------------
    def build_plan(self) -> BenchPlan:
        """The plan the form describes, on the selected model with Model Config's settings as the base."""
        if self._plan_source is None:
            raise BenchError("no model source connected")
        model, base = self._plan_source()
        if not model:
            raise BenchError("select a model in Model Config first")

        def values(edit: QLineEdit, kind: type | str = int) -> tuple[Any, ...]:
            text = edit.text().strip()
            if not text:
                return ()
            return parse_flash_attn(text) if kind == "flash_attn" else parse_values(text, kind)  # type: ignore[arg-type]

        pg_pairs = []
        for item in filter(None, (p.strip() for p in self.bench_pg.text().split(";"))):
            pair = parse_values(item)
            if len(pair) != 2:
                raise BenchError(f"pp+tg takes pairs like 512,128 (got {item!r})")
            pg_pairs.append((pair[0], pair[1]))
        tests = build_tests(
            values(self.bench_pp) or (0,),
            values(self.bench_tg) or (0,),
            pg_pairs,
            values(self.bench_depth) or (0,),
        )
        sweep = []
        for field, edit, kind in (
            ("n_threads", self.bench_threads, int),
            ("n_batch", self.bench_batch, int),
            ("n_ubatch", self.bench_ubatch, int),
            ("flash_attn", self.bench_fa, "flash_attn"),
            ("type_k", self.bench_ctk, str),
            ("type_v", self.bench_ctv, str),
            ("n_gpu_layers", self.bench_ngl, int),
            ("use_mmap", self.bench_mmap, bool),
        ):
            chosen = values(edit, kind)
            if chosen:
                sweep.append((field, chosen))
        models = (model, *(m for m in self._extra_models if m != model))
        missing = [m for m in models if not os.path.isfile(m)]
        if missing:
            raise BenchError(f"no such model file: {missing[0]}")
        plan = BenchPlan(
            models=models,
            tests=tests,
            base=base,
            sweep=tuple(sweep),
            repetitions=self.bench_reps.value(),
            warmup_until_steady=self.bench_steady.isChecked(),
        )
        for _model, load, _test in plan.instances():
            load.validate()
        return plan

    def set_extra_models(self, paths: Sequence[str]) -> None:
        """Models benchmarked after the selected one (llama-bench's several -m)."""
        self._extra_models = list(dict.fromkeys(paths))
        n = len(self._extra_models)
        self.bench_models_label.setText("selected model" + (f" + {n} more" if n else ""))
        self.bench_models_label.setToolTip(
            "The model selected in Model Config" + "".join(f"\n+ {p}" for p in self._extra_models)
        )
        self.bench_models_clear.setEnabled(bool(self._extra_models))

    def _on_add_models_clicked(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(
            self, "More models to benchmark", "", "GGUF models (*.gguf);;All files (*)"
        )
        if paths:
            self.set_extra_models([*self._extra_models, *paths])

    def request_benchmark(self) -> None:
        if not self.bench_run.isEnabled():
            return
        try:
            plan = self.build_plan()
        except (BenchError, ValueError) as exc:
            self.bench_status.setText(f"✗ {exc}")
            return
        self._bench_results = []
        self._bench_run_ids = []
        self._bench_swept = plan.swept_fields
        self._bench_several_models = len(plan.models) > 1
        self.bench_table.setRowCount(0)
        self.pg_table.clear_results()
        self.depth_plot.clear()
        self.bench_progress.setRange(0, 1)
        self.bench_progress.setValue(0)
        self.bench_progress.setFormat("starting…")
        self.bench_status.setText(f"Starting {len(plan.instances())} test(s)…")
        self.bench_stop.setEnabled(True)
        self.benchmark_requested.emit(plan)

    def on_benchmark_progressed(self, done: int, total: int, what: str) -> None:
        """The runner's progress: `done` of `total` steps (warm-ups and repetitions) finished, `what`
        runs now ("pp512 · repetition 3 of 5 · test 1 of 2 — model, settings")."""
        self.bench_progress.setRange(0, max(total, 1))
        self.bench_progress.setValue(done)
        # The bar names the repetition running; the line under it adds the model and settings.
        short = what.split(" — ")[0].split(" · test ")[0].replace("%", "%%")
        self.bench_progress.setFormat(short)
        self.bench_status.setText(what)

    def on_benchmark_result(self, result: BenchResult) -> None:
        self._bench_results.append(result)
        self.pg_table.add_result(result)
        self.depth_plot.add_result(result)
        row = self.bench_table.rowCount()
        self.bench_table.setRowCount(row + 1)
        config = " ".join(
            f"{SWEEPABLE[f][1]}={_setting_text(f, getattr(result, f))}"
            for f in (self._bench_swept or ("n_threads",))
        )
        if self._bench_several_models:
            config = f"{os.path.basename(result.model_filename)} {config}"
        trust = assess(result)
        verdict = trust.cell
        if not result.complete:
            verdict = f"stopped after {len(result.samples_ns)} rep. · {verdict}"
        _fill_row(
            self.bench_table,
            row,
            [
                result.test.name,
                config,
                stacked(f"{result.avg_ts:.2f} ± {result.stddev_ts:.2f}"),
                fmt(result.cv_percent, ".1f", " %"),
                fmt(result.mean_cpu_percent, ".0f"),
                fmt(result.joules_per_token, ".3f"),
                verdict,
            ],
            tooltip=f"{len(result.samples_ns)} repetitions: "
            + ", ".join(f"{t:.1f}" for t in result.samples_ts)
            + f" t/s\nCPU {fmt(result.mean_cpu_percent, '.0f', ' %')} · "
            + f"{fmt(result.joules_per_token, '.3f', ' J/token')}\n\n"
            + trust.text,
        )

    def on_benchmark_finished(self, outcome: Any) -> None:
        results, run_ids = outcome
        self._bench_run_ids = sorted(run_ids.values())
        self.bench_stop.setEnabled(False)
        self.bench_progress.setFormat("%p%")
        stopped = any(not r.complete for r in results)
        self.bench_status.setText(
            f"{'Stopped' if stopped else 'Done'}: {len(results)} result(s)"
            + (f", stored as run {', '.join(map(str, run_ids.values()))}" if run_ids else "")
        )
        self.refresh_history()

    def on_benchmark_failed(self, message: str) -> None:
        self.bench_stop.setEnabled(False)
        self.bench_progress.setFormat("%p%")
        self.bench_status.setText(f"✗ {message}")

    def _on_export_clicked(self) -> None:
        if not self._bench_results and not self._selected_run_ids():
            self.bench_status.setText(
                "Run a benchmark or select runs in History first: there is nothing to export."
            )
            return
        path, chosen = QFileDialog.getSaveFileName(
            self,
            "Export results",
            "llamascope-bench.md",
            "Markdown (*.md);;CSV (*.csv);;JSON (*.json);;JSONL (*.jsonl);;llama-bench SQL (*.sql)"
            f";;{REPORT_FILTER}",
        )
        if path and (chosen == REPORT_FILTER or path.lower().endswith((".html", ".htm"))):
            self.export_report(path)
            return
        if path and not self._bench_results:
            self.bench_status.setText(
                "This format holds this benchmark's results: run one, or choose HTML report."
            )
            return
        if path:
            try:
                export(self._bench_results, path, swept=self._bench_swept)
            except (OSError, BenchError) as exc:
                QMessageBox.warning(self, "Not exported", str(exc))
                return
            self.bench_status.setText(f"Exported to {path}")

    def export_report(self, path: str) -> None:
        """Write the HTML report (app.bench.report) of the runs selected in History, or else of the
        last benchmark's runs; from the hardware detection already made, so nothing slow runs here."""
        ids = sorted(self._selected_run_ids()) or self._bench_run_ids
        if self._history is None:
            self.bench_status.setText("✗ the history database is not available")
            return
        if not ids:
            self.bench_status.setText(
                "Select runs in History, or run a benchmark first: a report shows stored runs."
            )
            return
        hardware = self._hardware
        machine = machine_from_hardware(hardware) if hardware is not None else this_machine()
        build = build_from_info(hardware.build) if hardware is not None and hardware.build else None
        why = "the hardware detection has not finished" if hardware is None else hardware.build_error or ""
        try:
            report_runs(self._history, ids, path, machine=machine, build=build, build_error=why)
        except (HistoryError, ReportError) as exc:
            self.bench_status.setText(f"✗ report not written: {exc}")
            return
        except OSError as exc:
            self.bench_status.setText(f"✗ report not written: cannot write {path}: {exc.strerror or exc}")
            return
        self.bench_status.setText(f"Report of run {', '.join(map(str, ids))} written to {path}")

    def _on_import_clicked(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Import llama-bench output", "", "JSON (*.json *.jsonl)")
        if path:
            self.import_llama_bench(path)

    def import_llama_bench(self, path: str) -> None:
        if self._history is None:
            self.bench_status.setText("✗ the history database is not available")
            return
        try:
            results = load_llama_bench(path)
            run_id = self._history.import_results(results, label=f"llama-bench: {os.path.basename(path)}")
        except (OSError, BenchError, HistoryError) as exc:
            self.bench_status.setText(f"✗ {path}: {exc}")
            return
        self.bench_status.setText(f"Imported {len(results)} llama-bench result(s) as run {run_id}")
        self.refresh_history()

    # ---- history -----------------------------------------------------------------------------
    def refresh_history(self) -> None:
        if self._history is None:
            self.history_table.setRowCount(0)
            return
        try:
            runs = self._history.runs(
                model=self.history_filter.text().strip() or None,
                hardware=hardware_fingerprint() if self.history_this_machine.isChecked() else None,
            )
        except HistoryError as exc:
            self.bench_status.setText(f"✗ {exc}")
            return
        self.history_table.setRowCount(len(runs))
        for row, run in enumerate(runs):
            status = "interrupted" if run.status == "running" and run.kind != "generation" else run.status
            _fill_row(
                self.history_table,
                row,
                [
                    str(run.id),
                    run.created_at.replace("T", "\n").rstrip("Z"),  # date over time: half the width
                    run.kind,
                    status,
                    os.path.basename(run.model_path),
                    str(run.n_results),
                ],
                tooltip=f"{run.model_path}\n{run.n_results} result(s)",
            )

    def _selected_run_ids(self) -> list[int]:
        rows = sorted({i.row() for i in self.history_table.selectedIndexes()})
        items = (self.history_table.item(r, 0) for r in rows)
        return [int(item.text()) for item in items if item is not None]

    def _on_history_selection(self) -> None:
        ids = self._selected_run_ids()
        self.compare_button.setEnabled(len(ids) in (1, 2))
        if len(ids) == 1 and self._history is not None:
            self._plot_history_of(ids[0])

    def _plot_history_of(self, run_id: int) -> None:
        assert self._history is not None
        try:
            results = self._history.results(run_id)
            if not results:
                return
            test = results[0].test.name
            model = os.path.basename(results[0].model_filename)
            points = self._history.metric_over_time(test, model=model)
        except HistoryError as exc:
            self.bench_status.setText(f"✗ {exc}")
            return
        self.history_plot_title.setText(f"{test} on {model}: mean t/s of every stored run")
        self.history_curve.setData(list(range(len(points))), [v for _, v, _ in points])

    def compare_selected(self) -> None:
        ids = self._selected_run_ids()
        if len(ids) not in (1, 2) or self._history is None:
            return
        a, b = sorted(ids) if len(ids) == 2 else (ids[0], None)
        try:
            rows = self._history.compare(a, b)
        except HistoryError as exc:
            self.compare_table.setRowCount(0)
            self.bench_status.setText(f"✗ {exc}")
            return
        self.compare_table.setRowCount(len(rows))
        for i, r in enumerate(rows):
            _fill_row(
                self.compare_table,
                i,
                [
                    r.test,
                    r.config,
                    stacked(f"{r.a.avg_ts:.2f} ± {r.a.stddev_ts:.2f}"),
                    stacked(f"{r.b.avg_ts:.2f} ± {r.b.stddev_ts:.2f}"),
                    f"{r.comparison.diff_percent:+.1f} %",
                    _short_verdict(r.comparison.verdict()),
                ],
                tooltip=(f"run {a} (A) against run {b} (B)" if b is not None else f"within run {a}")
                + f"\n\n{r.comparison.verdict()}\n\nA: {assess(r.a).cell}\nB: {assess(r.b).cell}",
            )
            verdict = self.compare_table.item(i, 5)
            if verdict is not None:
                verdict.setData(WHOLE_TEXT, r.comparison.verdict())  # "Open table…" shows it whole


def _setting_text(field: str, value: Any) -> str:
    """A swept setting's value as the config column shows it (fa=auto, mmap=1, t=2)."""
    if field == "flash_attn":
        return flash_attn_text(value)
    return str(int(value) if isinstance(value, bool) else value)


def _short_verdict(verdict: str) -> str:
    """The verdict's head for a narrow column: "not judged", "significant (p = 0.01)"; the whole
    reason (why not judged, how many repetitions it would take) is in the tooltip."""
    return verdict.split(":")[0].split(" (needs")[0]


def _throttle_text(verdicts: Sequence[DeviceVerdict]) -> str:
    """Words for the sampler's per-device throttle verdicts."""
    known = [v for v in verdicts if v.verdict is not ThrottleVerdict.NOT_AVAILABLE]
    if not known:
        return "n/a — no throttle counters"
    throttling = [f"{v.device}: {v.verdict.value} ({v.detail})" for v in verdicts if v.verdict.is_throttling]
    return "⚠ " + "; ".join(throttling) if throttling else "✓ not throttling"


__all__ = ["PerformancePanel", "StatTile"]
