"""Hardware panel: what the machine is, what LlamaScope recommends for it, and what it is doing now.

A view only: detection results (`HardwareReport`) and telemetry snapshots (`Snapshot`) arrive
through slots from `ui.telemetry_bridge`; the recommendations come from `app.telemetry.advice`.
Nothing here reads /proc, calls NVML or llama.cpp.
"""

from __future__ import annotations

from collections.abc import Iterable

from PySide6.QtCore import QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QPainter, QPaintEvent, QPalette
from PySide6.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from app.common.formatting import BINARY_UNITS_NOTE, NOT_AVAILABLE, fmt, fmt_bytes
from app.model.model_info import ModelInfo
from app.telemetry.advice import ALL_LAYERS, Recommendation, recommend
from app.telemetry.hardware import GpuInfo, HardwareReport, simd_text
from app.telemetry.snapshot import Snapshot, ThrottleVerdict
from widgets.live_plot import LivePlot, ReadoutLabel
from widgets.panel import Panel

GIB = 1024**3
WINDOWS_S = ((60, "1 min"), (300, "5 min"), (900, "15 min"))
THROTTLE_HOLD_S = 10.0  # a badge stays up this long after the last throttled tick
MAX_TEMPERATURE_CURVES = 8
_WARN = "#b26a00"
_BAD = "#c62828"


def _note(text: str = "") -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


def _mhz(value: float | None) -> str:
    return NOT_AVAILABLE if value is None else f"{value / 1000:.2f} GHz"


def clock_text(current_mhz: float | None, low_mhz: float | None, high_mhz: float | None) -> str:
    """The CPU clock as both boxes show it: the current clock and the range it may move in, e.g.
    "2.10 GHz (max n/a)", "3.20 GHz (0.40 GHz – 4.80 GHz)", "0.40 GHz – 4.80 GHz" before the first
    reading; "n/a" only when neither is known."""
    if high_mhz is None:
        limits = f"max {NOT_AVAILABLE}"
    else:
        limits = f"{_mhz(low_mhz)} – {_mhz(high_mhz)}" if low_mhz else f"max {_mhz(high_mhz)}"
    if current_mhz is None:
        return NOT_AVAILABLE if high_mhz is None else limits
    return f"{_mhz(current_mhz)} ({limits})"


class CoreBars(QWidget):
    """Per-core utilisation as a strip of thin bars: compact for 2 cores or 256."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._values: tuple[float, ...] = ()
        self.setMinimumHeight(22)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip("Utilisation of each logical core")

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt override)
        return QSize(200, 22)

    def set_values(self, values: Iterable[float]) -> None:
        self._values = tuple(values)
        self.setToolTip("Per-core utilisation: " + (", ".join(f"{v:.0f} %" for v in self._values) or "n/a"))
        self.update()

    def values(self) -> tuple[float, ...]:
        return self._values

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 (Qt override)
        painter = QPainter(self)
        rect = self.rect()
        painter.fillRect(rect, self.palette().base())
        n = len(self._values)
        if n:
            width = rect.width() / n
            slot_colour = self.palette().color(QPalette.ColorRole.Mid)
            slot_colour.setAlpha(60)
            for i, value in enumerate(self._values):
                # Each core's slot is drawn faintly, so idle cores read as "0 %", not as a blank strip.
                painter.fillRect(
                    QRectF(i * width + 0.5, 0, max(1.0, width - 1.0), rect.height()), slot_colour
                )
                height = rect.height() * max(0.0, min(100.0, value)) / 100.0
                colour = QColor(_BAD) if value > 90 else QColor("#1f77b4")
                bar = QRectF(i * width + 0.5, rect.height() - height, max(1.0, width - 1.0), height)
                painter.fillRect(bar, colour)
        painter.end()


class HardwarePanel(Panel):
    """The second column: detection, recommendations, live monitoring."""

    apply_requested = Signal(dict)  # {"n_threads": ..., "n_threads_batch": ..., "n_batch": ..., ...}
    detection_requested = Signal()
    window_changed = Signal(float)  # seconds of history shown

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Hardware", parent)
        self._report: HardwareReport | None = None
        self._model: ModelInfo | None = None
        self._recommendation: Recommendation | None = None
        self._nvml_free_vram: dict[int, int | None] | None = None  # NVML index -> free bytes, live
        self._last_throttle_t: dict[str, float] = {}
        self._gpu_indices: tuple[int, ...] = ()
        self._seen_snapshot = False
        self._clock_mhz: float | None = None  # the latest snapshot's current CPU clock
        self._clock_max_mhz: float | None = None  # and its maximum
        self._build_detection_box()
        self._build_optimization_box()
        self._build_monitoring_box()

    # ---- construction ------------------------------------------------------------------------
    def _build_detection_box(self) -> None:
        body = QWidget()
        layout = QVBoxLayout(body)
        layout.setContentsMargins(0, 0, 0, 0)
        self._cpu_form = QFormLayout()
        self.cpu_labels: dict[str, QLabel] = {}
        for key in ("Model", "Cores", "Clock", "Cache", "RAM", "SIMD (CPU)", "llama.cpp", "OS"):
            label = _note("detecting…")
            label.setObjectName(f"cpu_{key}")
            self.cpu_labels[key] = label
            self._cpu_form.addRow(key, label)
        for key in ("Cache", "RAM"):
            self.cpu_labels[key].setToolTip(BINARY_UNITS_NOTE)
        self.notes_label = _note()
        self.notes_label.setObjectName("hardwareNotes")
        self.notes_label.setStyleSheet(f"color: {_WARN}")
        self.notes_label.hide()
        self.gpu_label = _note("detecting…")
        self.gpu_label.setObjectName("gpuLabel")
        self.detect_button = QPushButton("Detect again")
        self.detect_button.setToolTip("Read the CPU, memory, GPUs and the llama.cpp build again")
        self.detect_button.clicked.connect(self._on_detect_clicked)
        cpu_title = QLabel("<b>CPU</b>")
        gpu_title = QLabel("<b>GPU</b>")
        layout.addWidget(cpu_title)
        layout.addLayout(self._cpu_form)
        layout.addWidget(self.notes_label)
        layout.addWidget(gpu_title)
        layout.addWidget(self.gpu_label)
        layout.addWidget(self.detect_button, 0, Qt.AlignmentFlag.AlignLeft)
        self.add_box("Hardware Detection", body)

    def _build_optimization_box(self) -> None:
        body = QWidget()
        layout = QVBoxLayout(body)
        layout.setContentsMargins(0, 0, 0, 0)
        form = QFormLayout()
        self.advice_labels: dict[str, QLabel] = {}
        for key, title in (
            ("simd", "SIMD (llama.cpp)"),
            ("n_threads", "Threads (generation)"),
            ("n_threads_batch", "Threads (prompt)"),
            ("n_batch", "Batch / micro-batch"),
            ("n_gpu_layers", "GPU layers"),
        ):
            label = _note(NOT_AVAILABLE)
            label.setObjectName(f"advice_{key}")
            self.advice_labels[key] = label
            form.addRow(title, label)
        self.apply_button = QPushButton("Apply to Model Config")
        self.apply_button.setObjectName("applyRecommendations")
        self.apply_button.setToolTip("Set these threads, batch sizes and GPU layers in Model Config")
        self.apply_button.setEnabled(False)
        self.apply_button.clicked.connect(self._on_apply_clicked)
        layout.addLayout(form)
        layout.addWidget(self.apply_button, 0, Qt.AlignmentFlag.AlignLeft)
        self.add_box("Optimization", body)

    def _build_monitoring_box(self) -> None:
        body = QWidget()
        layout = QVBoxLayout(body)
        layout.setContentsMargins(0, 0, 0, 0)
        top = QHBoxLayout()
        self.window_combo = QComboBox()
        self.window_combo.setObjectName("windowCombo")
        self.window_combo.setToolTip("How much history the plots show")
        for seconds, text in WINDOWS_S:
            self.window_combo.addItem(text, seconds)
        self.window_combo.currentIndexChanged.connect(self._on_window_changed)
        self.sampling_label = QLabel()
        top.addWidget(QLabel("Window"))
        top.addWidget(self.window_combo)
        top.addStretch(1)
        top.addWidget(self.sampling_label)
        layout.addLayout(top)

        self.throttle_status = _note("Throttling: waiting for the first reading…")
        self.throttle_status.setObjectName("throttleStatus")
        self.throttle_status.setToolTip(
            "CPU: thermal_throttle counters in sysfs (Intel), or a clock under 75 % of its maximum at "
            "over 80 % load. GPU: NVML's clock-event reasons (power cap, thermal, hardware slowdown)."
        )
        layout.addWidget(self.throttle_status)
        self._badges_row = QHBoxLayout()
        self.throttle_badges: dict[str, QLabel] = {}
        layout.addLayout(self._badges_row)

        window = self.window_s()
        self.cpu_plot = LivePlot("CPU", "%", window, y_range=(0, 100), value_format=".0f")
        self.cpu_plot.setObjectName("cpuPlot")
        self.cpu_plot.add_curve("total", width=1.5)
        self.cpu_plot.add_curve("LlamaScope")
        self.core_bars = CoreBars()
        self.cpu_readout = ReadoutLabel(NOT_AVAILABLE)
        self.cpu_readout.setObjectName("cpuReadout")
        self.memory_plot = LivePlot("Memory", "GiB", window, value_format=".2f")
        self.memory_plot.setObjectName("memoryPlot")
        for name in ("system used", "LlamaScope", "swap used"):
            self.memory_plot.add_curve(name)
        self.temperature_plot = LivePlot("Temperature", "°C", window, value_format=".0f")
        self.temperature_plot.setObjectName("temperaturePlot")
        self.temperature_plot.hide()
        self.temperature_na = _note("Temperature: waiting for the first reading…")
        self.temperature_na.setObjectName("temperatureNa")
        self.power_plot = LivePlot("Power", "W", window, value_format=".1f")
        self.power_plot.setObjectName("powerPlot")
        self.power_plot.hide()
        self.power_na = _note("Power: waiting for the first reading…")
        self.power_na.setObjectName("powerNa")
        self.power_na.setToolTip(
            "CPU package power comes from the RAPL energy counters, which recent "
            "kernels let only root read; GPU power from NVML."
        )
        self.gpu_plot = LivePlot("GPU", "%", window, y_range=(0, 100), value_format=".0f")
        self.gpu_plot.setObjectName("gpuPlot")
        self.gpu_plot.hide()
        self.vram_plot = LivePlot("VRAM", "GiB", window, value_format=".2f")
        self.vram_plot.setObjectName("vramPlot")
        self.vram_plot.hide()
        self.gpu_readout = ReadoutLabel()
        self.gpu_readout.setObjectName("gpuReadout")
        self.gpu_readout.hide()
        self.plots = (
            self.cpu_plot,
            self.memory_plot,
            self.temperature_plot,
            self.power_plot,
            self.gpu_plot,
            self.vram_plot,
        )
        for widget in (
            self.cpu_plot,
            self.core_bars,
            self.cpu_readout,
            self.memory_plot,
            self.temperature_plot,
            self.temperature_na,
            self.power_plot,
            self.power_na,
            self.gpu_plot,
            self.vram_plot,
            self.gpu_readout,
        ):
            layout.addWidget(widget)
        self.add_box("Monitoring", body)
        self.set_sampling_interval(None)

    # ---- public slots ------------------------------------------------------------------------
    def window_s(self) -> float:
        return float(self.window_combo.currentData())

    def set_sampling_interval(self, seconds: float | None) -> None:
        self.sampling_label.setText("sampling: n/a" if seconds is None else f"sampling every {seconds:g} s")

    def on_hardware_detected(self, report: HardwareReport) -> None:
        self._report = report
        self._show_report(report)
        self._refresh_recommendation()

    def on_detection_failed(self, message: str) -> None:
        for label in self.cpu_labels.values():
            label.setText(NOT_AVAILABLE)
        self.gpu_label.setText(NOT_AVAILABLE)
        self.notes_label.setText(f"Detection failed: {message}")
        self.notes_label.setStyleSheet(f"color: {_BAD}")
        self.notes_label.show()
        self.detect_button.setEnabled(True)

    def set_model(self, info: ModelInfo | None) -> None:
        """The model selected in Model Config (None when none is readable): GPU layers depend on it."""
        self._model = info
        self._refresh_recommendation()

    def recommendation(self) -> Recommendation | None:
        return self._recommendation

    def on_snapshot(self, snapshot: Snapshot) -> None:
        t = snapshot.t_monotonic_s
        self._seen_snapshot = True
        self.cpu_plot.append("total", t, snapshot.cpu_percent)
        self.cpu_plot.append("LlamaScope", t, _core_share(snapshot))
        self.core_bars.set_values(snapshot.cpu_per_core_percent)
        self._show_cpu_readout(snapshot)
        self.memory_plot.append("system used", t, _gib(snapshot.mem_used_bytes))
        self.memory_plot.append("LlamaScope", t, _gib(snapshot.process_rss_bytes))
        self.memory_plot.append("swap used", t, _gib(snapshot.swap_used_bytes))
        self._plot_temperatures(snapshot)
        self._plot_power(snapshot)
        self._plot_gpus(snapshot)
        self._show_throttling(snapshot)

    # ---- detection view ----------------------------------------------------------------------
    def _show_report(self, report: HardwareReport) -> None:
        cpu, mem = report.cpu, report.memory
        labels = self.cpu_labels
        labels["Model"].setText(
            " · ".join(p for p in (cpu.model_name, cpu.vendor, cpu.architecture) if p) or NOT_AVAILABLE
        )
        labels["Cores"].setText(f"{cpu.physical_cores} physical / {cpu.logical_cores} logical")
        self._show_clock()
        caches = []
        for c in cpu.caches:
            kind = {"Data": "d", "Instruction": "i"}.get(c.kind, "")
            instances = cpu.logical_cores // c.shared_by_cpus if c.shared_by_cpus else 1
            shared = f" ×{instances}" if instances > 1 else ""
            caches.append(f"L{c.level}{kind} {fmt_bytes(c.size_bytes)}{shared}")
        labels["Cache"].setText(" · ".join(caches) or NOT_AVAILABLE)
        swap = "no swap" if not mem.swap_total_bytes else f"swap {fmt_bytes(mem.swap_total_bytes)}"
        labels["RAM"].setText(
            f"{fmt_bytes(mem.total_bytes)} total, {fmt_bytes(mem.available_bytes)} available · {swap}"
        )
        labels["SIMD (CPU)"].setText(simd_text(cpu.features_cpu) if cpu.features_cpu else NOT_AVAILABLE)
        labels["SIMD (CPU)"].setToolTip(
            "Instruction sets the CPU reports that llama.cpp can use: "
            + (", ".join(cpu.features_cpu) or "n/a")
        )
        build = report.build
        if build is None:
            labels["llama.cpp"].setText(f"n/a — {report.build_error or 'not readable'}")
        else:
            labels["llama.cpp"].setText(
                f"llama-cpp-python {build.llama_cpp_python_version} · backends {', '.join(build.backends)} · "
                f"GPU offload {'✓' if build.gpu_offload else '✗'} · mmap {'✓' if build.mmap else '✗'} · "
                f"mlock {'✓' if build.mlock else '✗'}"
            )
            labels["llama.cpp"].setToolTip(build.system_info)
        os_info = report.os_info
        labels["OS"].setText(
            f"{os_info.system} {os_info.release} · {os_info.machine} · Python {os_info.python_version}"
        )
        self.notes_label.setStyleSheet(f"color: {_WARN}")
        self.notes_label.setText("<br>".join(f"• {n}" for n in report.notes))
        self.notes_label.setVisible(bool(report.notes))
        self.gpu_label.setText(gpu_html(report))
        self.gpu_label.setToolTip(
            "The GPUs in llama.cpp's own device list: the ones this build can put layers on "
            "(CUDA, ROCm, Metal, Vulkan, SYCL…). Power, clocks and PCIe come from NVIDIA's driver "
            "for NVIDIA GPUs. " + BINARY_UNITS_NOTE
        )
        self.detect_button.setEnabled(True)

    def _on_detect_clicked(self) -> None:
        self.detect_button.setEnabled(False)
        self.detection_requested.emit()

    # ---- recommendations ---------------------------------------------------------------------
    def _refresh_recommendation(self) -> None:
        if self._report is None:
            self._recommendation = None
            self.apply_button.setEnabled(False)
            return
        rec = recommend(self._report, self._model, free_vram_bytes=self._free_vram(self._report))
        self._recommendation = rec
        labels = self.advice_labels
        labels["simd"].setText(rec.simd_text)
        labels["n_threads"].setText(str(rec.n_threads))
        labels["n_threads_batch"].setText(str(rec.n_threads_batch))
        labels["n_batch"].setText(f"{rec.n_batch} / {rec.n_ubatch}")
        layers = "all" if rec.n_gpu_layers == ALL_LAYERS else str(rec.n_gpu_layers)
        labels["n_gpu_layers"].setText(f"{layers} — {rec.gpu_layers_text}" if rec.gpu_layers_text else layers)
        for key in ("n_threads", "n_threads_batch", "n_batch", "n_gpu_layers"):
            labels[key].setToolTip(rec.reason(key))
        self.apply_button.setEnabled(True)

    def _free_vram(self, report: HardwareReport) -> list[int | None] | None:
        """Free memory per GPU of the report: NVML's live reading for an NVIDIA GPU, the report's
        (llama.cpp's, at detection) for the others; None before the first telemetry sample."""
        live = self._nvml_free_vram
        if live is None:
            return None
        return [
            live.get(g.nvml_index) if g.nvml_index is not None else g.memory_free_bytes for g in report.gpus
        ]

    def _on_apply_clicked(self) -> None:
        if self._recommendation is not None:
            self.apply_requested.emit(self._recommendation.load_values())

    # ---- monitoring --------------------------------------------------------------------------
    def _on_window_changed(self, _index: int) -> None:
        seconds = self.window_s()
        for plot in self.plots:
            plot.set_window(seconds)
        self.window_changed.emit(seconds)

    def _clock_limits(self) -> tuple[float | None, float | None]:
        """The clock's range: the detection's reading (min and max, from the same reader the sampler
        uses), else the latest snapshot's maximum; None where it is not known."""
        cpu = self._report.cpu if self._report is not None else None
        low = cpu.min_freq_mhz if cpu is not None else None
        high = cpu.max_freq_mhz if cpu is not None and cpu.max_freq_mhz is not None else self._clock_max_mhz
        return low, high

    def _show_clock(self) -> None:
        """The Detection box's clock: the same figure, from the same readings, as the live readout."""
        if self._report is not None:
            _set_text(self.cpu_labels["Clock"], clock_text(self._clock_mhz, *self._clock_limits()))

    def _show_cpu_readout(self, s: Snapshot) -> None:
        load = " / ".join(f"{x:.2f}" for x in s.load_avg) if s.load_avg else NOT_AVAILABLE
        proc = fmt(s.process_cpu_percent, ".0f", " % of a core")
        self._clock_mhz, self._clock_max_mhz = s.cpu_freq_mhz, s.cpu_freq_max_mhz
        self.cpu_readout.set_text(
            f"clock {clock_text(self._clock_mhz, *self._clock_limits())} · "
            f"load {load} · LlamaScope {proc}, RSS {fmt_bytes(s.process_rss_bytes)}"
        )
        self._show_clock()

    def _plot_temperatures(self, s: Snapshot) -> None:
        readings = list(s.temperatures_c) + [
            (f"GPU {g.index}", g.temperature_c) for g in s.gpus if g.temperature_c is not None
        ]
        plot = self.temperature_plot
        for label, value in readings:
            if plot.has_curve(label) or len(plot.curve_names()) < MAX_TEMPERATURE_CURVES:
                plot.append(label, s.t_monotonic_s, value)
        seen = {label for label, _ in readings}
        for name in plot.curve_names():
            if name not in seen:
                plot.append(name, s.t_monotonic_s, None)  # a sensor that vanished: a gap, not a value
        if plot.curve_names():
            plot.show()
            self.temperature_na.hide()
        else:
            _set_text(self.temperature_na, "Temperature: n/a — no sensors")
            self.temperature_na.show()

    def _plot_power(self, s: Snapshot) -> None:
        plot = self.power_plot
        t = s.t_monotonic_s
        if s.cpu_package_power_watts is not None or plot.has_curve("CPU package"):
            plot.append("CPU package", t, s.cpu_package_power_watts)
        for g in s.gpus:
            if g.power_watts is not None or plot.has_curve(f"GPU {g.index}"):
                plot.append(f"GPU {g.index}", t, g.power_watts)
        if plot.curve_names():
            plot.show()
            self.power_na.hide()
        else:
            _set_text(
                self.power_na,
                "Power: n/a — no power readings (CPU package power needs readable "
                "RAPL counters; GPU power needs an NVIDIA driver)",
            )
            self.power_na.show()

    def _plot_gpus(self, s: Snapshot) -> None:
        t = s.t_monotonic_s
        indices = tuple(g.index for g in s.gpus)
        for g in s.gpus:
            self.gpu_plot.append(f"GPU {g.index}", t, g.utilization_percent)
            self.vram_plot.append(f"GPU {g.index}", t, _gib(g.memory_used_bytes))
        for name in self.gpu_plot.curve_names():
            if int(name.split()[-1]) not in indices:  # a GPU that vanished
                self.gpu_plot.append(name, t, None)
                self.vram_plot.append(name, t, None)
        has_gpus = bool(self.gpu_plot.curve_names())
        self.gpu_plot.setVisible(has_gpus)
        self.vram_plot.setVisible(has_gpus)
        self.gpu_readout.setVisible(has_gpus)
        if s.gpus:
            self.gpu_readout.set_text(
                "\n".join(
                    f"GPU {g.index}: {fmt(g.temperature_c, '.0f', ' °C')} · "
                    f"SM {fmt(g.sm_clock_mhz, '.0f', ' MHz')} · "
                    f"mem {fmt(g.memory_clock_mhz, '.0f', ' MHz')} · fan {fmt(g.fan_percent, '.0f', ' %')} · "
                    f"{fmt(g.power_watts, '.0f', ' W')} of {fmt(g.power_limit_watts, '.0f', ' W')}"
                    + (f" · clocks: {', '.join(g.throttle_reasons)}" if g.throttle_reasons else "")
                    for g in s.gpus
                )
            )
        # Free VRAM by NVML index, fresher than the report's; matched to llama.cpp's GPUs when advising.
        self._nvml_free_vram = {
            g.index: g.memory_total_bytes - g.memory_used_bytes
            if g.memory_total_bytes is not None and g.memory_used_bytes is not None
            else None
            for g in s.gpus
        }
        if indices != self._gpu_indices:
            self._gpu_indices = indices
            self._refresh_recommendation()

    def _show_throttling(self, s: Snapshot) -> None:
        t = s.t_monotonic_s
        parts = []
        for v in s.verdicts:
            if v.verdict.is_throttling:
                colour = _BAD
            else:
                colour = "gray" if v.verdict is ThrottleVerdict.NOT_AVAILABLE else ""
            style = f" style='color:{colour}'" if colour else ""
            parts.append(f"<span{style}>{v.device}: {v.verdict.value}</span>")
            badge = self.throttle_badges.get(v.device)
            if badge is None:
                badge = QLabel()
                badge.setObjectName(f"throttleBadge_{v.device.replace(' ', '')}")
                badge.setStyleSheet(f"background: {_BAD}; color: white; border-radius: 3px; padding: 1px 6px")
                badge.hide()
                self.throttle_badges[v.device] = badge
                self._badges_row.addWidget(badge)
            if v.verdict.is_throttling:
                self._last_throttle_t[v.device] = t
                _set_text(badge, f"⚠ {v.device} throttling: {v.verdict.value}")
                badge.setToolTip(v.detail)
            last = self._last_throttle_t.get(v.device)
            # Held for a while, so a throttle that comes and goes is seen rather than flickering.
            badge.setVisible(last is not None and 0 <= t - last <= THROTTLE_HOLD_S)
        # Set only on change: a label's new text makes the whole panel lay itself out again.
        _set_text(self.throttle_status, "Throttling: " + " · ".join(parts) if parts else "Throttling: n/a")
        tip = "<br>".join(f"{v.device}: {v.detail}" for v in s.verdicts)
        if tip != self.throttle_status.toolTip():
            self.throttle_status.setToolTip(tip)


def _set_text(label: QLabel, text: str) -> None:
    if label.text() != text:
        label.setText(text)


def _gib(n: int | None) -> float | None:
    return None if n is None else n / GIB


def _core_share(s: Snapshot) -> float | None:
    """LlamaScope's CPU use on the same 0-100 % scale as the total (share of all cores)."""
    if s.process_cpu_percent is None or not s.cpu_per_core_percent:
        return None
    return min(100.0, s.process_cpu_percent / len(s.cpu_per_core_percent))


def gpu_html(report: HardwareReport) -> str:
    """The Detection box's GPU lines: llama.cpp's GPUs, then NVIDIA GPUs it does not list."""
    if report.devices is None:
        lines = [f"n/a — {report.devices_error or 'llama.cpp could not be asked'}"]
        why = "found by NVIDIA's driver; whether llama.cpp can use it is not known"
    else:
        lines = [_gpu_line(g, report) for g in report.gpus]
        why = "not usable by this llama.cpp build (see the notes)"
    lines += [f"<b>{g.name or f'NVIDIA GPU {g.index}'}</b> · {why}" for g in report.unused_gpus]
    return "<br>".join(lines) or "None — CPU only (llama.cpp lists no GPU)"


def _gpu_line(g: GpuInfo, report: HardwareReport) -> str:
    memory = "shared memory" if g.kind == "IGPU" else "VRAM"
    parts = [
        f"<b>{g.name or f'GPU {g.index}'}</b>",
        f"llama.cpp device {g.device_name} ({g.backend or 'n/a'})",
    ]
    if g.memory_total_bytes is not None:
        parts.append(f"{fmt_bytes(g.memory_total_bytes)} {memory} ({fmt_bytes(g.memory_free_bytes)} free)")
    if g.nvml_index is None:
        return " · ".join(parts)  # what follows only NVIDIA's driver tells
    parts.append(
        f"driver {report.driver_version or NOT_AVAILABLE} · "
        f"CUDA {report.cuda_driver_version or NOT_AVAILABLE}"
    )
    parts.append(f"power limit {fmt(g.power_limit_watts, '.0f', ' W')}")
    parts.append(
        f"max clocks SM {fmt(g.max_sm_clock_mhz, '.0f', ' MHz')} / "
        f"mem {fmt(g.max_memory_clock_mhz, '.0f', ' MHz')}"
    )
    if g.pcie_generation is not None or g.pcie_width is not None:
        parts.append(
            f"PCIe {fmt(g.pcie_generation)} x{fmt(g.pcie_width)} (max {fmt(g.pcie_generation_max)} "
            f"x{fmt(g.pcie_width_max)})"
        )
    else:
        parts.append("PCIe n/a")
    return " · ".join(parts)
