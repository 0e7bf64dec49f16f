"""The Hardware panel, its live plots and the telemetry bridge, fed with fakes (no real sampling)."""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hardware_fakes import (
    CPU_DEVICE,
    LIBRARY_NOT_FOUND,
    FakeGpu,
    FakeNvmlModule,
    FakePsutil,
    build_x86_tree,
    fake_build,
    from_facts,
    gpu_device,
    metal_facts,
)
from PySide6.QtCore import QRect, QSettings, Qt
from PySide6.QtWidgets import QMainWindow, QSpinBox
from pytestqt.qtbot import QtBot

from app.model.model_info import ModelInfo, SizeClass
from app.telemetry.hardware import HardwareReport, detect_hardware
from app.telemetry.nvml import Nvml
from app.telemetry.sampler import Sampler
from app.telemetry.snapshot import DeviceVerdict, GpuSnapshot, Snapshot, ThrottleVerdict, gpu_verdict
from ui.telemetry_bridge import TelemetryBridge
from widgets.hardware_panel import THROTTLE_HOLD_S, HardwarePanel
from widgets.live_plot import LivePlot
from widgets.performance_panel import PerformancePanel

GIB = 1024**3
WAIT_MS = 120_000


def _report(tmp_path: Path, *, gpus: bool) -> HardwareReport:
    build_x86_tree(tmp_path, cpus=8)
    module = (
        FakeNvmlModule([FakeGpu("RTX 4090", total_gib=24, used_gib=2)])
        if gpus
        else FakeNvmlModule([], init_error=LIBRARY_NOT_FOUND)
    )
    build = fake_build(backends=("CUDA", "CPU"), gpu_offload=True) if gpus else fake_build()
    # What llama.cpp's device list holds: a CUDA build lists the GPU, a CPU build only the CPU.
    cuda = gpu_device(1, "CUDA0", "RTX 4090", backend="CUDA", total_gib=24, free_gib=22)
    devices = (CPU_DEVICE, cuda) if gpus else (CPU_DEVICE,)
    return detect_hardware(
        str(tmp_path),
        Nvml(module),
        build=build,
        devices=lambda: devices,
        ps=FakePsutil(cores=8),
        machine="x86_64",
    )


def _model() -> ModelInfo:
    return ModelInfo(
        path="/models/m.gguf",
        file_size_bytes=4 * GIB,
        gguf_version=3,
        name="M",
        architecture="llama",
        n_params=7_000_000_000,
        size_class=SizeClass.LARGE,
        size_label="7B",
        file_type="Q4_K_M",
        tensor_types=(),
        tensor_data_bytes=4 * GIB,
        bits_per_weight=4.8,
        context_length=4096,
        n_layer=32,
        n_embd=4096,
        n_head=32,
        n_head_kv=8,
        n_embd_head_k=128,
        n_embd_head_v=128,
        vocab_size=32000,
        chat_template=None,
    )


def _gpu(index: int = 0, *, mask: int | None = 0, power: float | None = 200.0) -> GpuSnapshot:
    return GpuSnapshot(
        index=index,
        name="RTX",
        utilization_percent=80.0,
        memory_used_bytes=3 * GIB,
        memory_total_bytes=24 * GIB,
        temperature_c=66.0,
        power_watts=power,
        power_limit_watts=450.0,
        sm_clock_mhz=2500.0,
        memory_clock_mhz=10000.0,
        fan_percent=None,
        throttle_reasons_mask=mask,
        throttle_reasons=(),
        energy_joules_total=None,
    )


def _snap(
    t: float,
    *,
    temps: tuple[tuple[str, float], ...] = (),
    gpus: tuple[GpuSnapshot, ...] = (),
    cpu_power: float | None = None,
    cpu_verdict: ThrottleVerdict = ThrottleVerdict.NOT_AVAILABLE,
    cpu: float | None = 40.0,
) -> Snapshot:
    verdicts = (DeviceVerdict("CPU", cpu_verdict, "3 new thermal throttle events"),) + tuple(
        gpu_verdict(g.index, g.throttle_reasons_mask) for g in gpus
    )
    return Snapshot(
        t_monotonic_s=t,
        t_unix_s=t,
        interval_s=0.5,
        cpu_percent=cpu,
        cpu_per_core_percent=(30.0, 50.0, 95.0),
        cpu_freq_mhz=2900.0,
        cpu_freq_max_mhz=None,
        load_avg=(1.0, 0.5, 0.25),
        mem_total_bytes=16 * GIB,
        mem_used_bytes=6 * GIB,
        mem_available_bytes=10 * GIB,
        swap_used_bytes=0,
        process_rss_bytes=GIB // 2,
        process_cpu_percent=150.0,
        gpus=gpus,
        temperatures_c=temps,
        fans_rpm=(),
        cpu_package_power_watts=cpu_power,
        cpu_energy_joules_total=None,
        cpu_throttle_events_total=None,
        verdicts=verdicts,
    )


@pytest.fixture()
def panel(qtbot: QtBot) -> HardwarePanel:
    widget = HardwarePanel()
    qtbot.addWidget(widget)
    widget.show()
    return widget


# ---- detection and recommendations ------------------------------------------------------------


def test_cpu_only_machine(panel: HardwarePanel, tmp_path: Path) -> None:
    assert panel.cpu_labels["Model"].text() == "detecting…"
    assert not panel.apply_button.isEnabled()
    panel.on_hardware_detected(_report(tmp_path, gpus=False))
    assert "i7-1185G7" in panel.cpu_labels["Model"].text()
    assert panel.cpu_labels["Cores"].text() == "4 physical / 8 logical"
    assert panel.cpu_labels["Clock"].text() == "0.40 GHz – 4.80 GHz"
    assert "L3 12.0 MiB" in panel.cpu_labels["Cache"].text()
    assert panel.cpu_labels["SIMD (CPU)"].text().startswith("AVX-512")
    assert "backends CPU" in panel.cpu_labels["llama.cpp"].text()
    assert panel.gpu_label.text() == "None — CPU only (llama.cpp lists no GPU)"
    assert panel.advice_labels["n_threads"].text() == "4"
    assert panel.advice_labels["n_threads_batch"].text() == "8"
    assert panel.advice_labels["n_batch"].text() == "512 / 512"
    assert panel.advice_labels["n_gpu_layers"].text().startswith("0 — no GPU")
    assert panel.notes_label.isVisible()


def test_gpu_layers_follow_the_selected_model(panel: HardwarePanel, tmp_path: Path) -> None:
    panel.on_hardware_detected(_report(tmp_path, gpus=True))
    assert "RTX 4090" in panel.gpu_label.text() and "CUDA 12.4" in panel.gpu_label.text()
    assert panel.advice_labels["n_gpu_layers"].text() == "0 — select a model"
    panel.set_model(_model())
    assert panel.advice_labels["n_gpu_layers"].text().startswith("all — all 32 layers")
    assert panel.advice_labels["n_batch"].text() == "2048 / 512"
    panel.set_model(None)
    assert panel.advice_labels["n_gpu_layers"].text() == "0 — select a model"


def test_a_metal_gpu_from_llama_cpps_list_is_shown_and_advised(panel: HardwarePanel, tmp_path: Path) -> None:
    build_x86_tree(tmp_path, cpus=8)
    report = detect_hardware(
        str(tmp_path),
        Nvml(FakeNvmlModule([], init_error=LIBRARY_NOT_FOUND)),
        ps=FakePsutil(cores=8),
        machine="arm64",
        **from_facts(metal_facts()),
    )
    panel.on_hardware_detected(report)
    text = panel.gpu_label.text()
    assert "Apple M2 Max" in text and "MTL0" in text and "48.0 GiB shared memory (40.0 GiB free)" in text
    assert "CUDA" not in text and "power limit" not in text  # NVIDIA's details only for NVIDIA GPUs
    panel.set_model(_model())
    assert panel.advice_labels["n_gpu_layers"].text().startswith("all — all 32 layers")
    panel.on_snapshot(_snap(1.0))  # telemetry without NVIDIA GPUs: llama.cpp's figure stays
    assert panel.advice_labels["n_gpu_layers"].text().startswith("all — all 32 layers")


def test_an_unreadable_device_list_shows_n_a_and_the_nvidia_gpu(panel: HardwarePanel, tmp_path: Path) -> None:
    report = dataclasses.replace(
        _report(tmp_path, gpus=False), devices=None, devices_error="llama.cpp's device list not readable: x"
    )
    panel.on_hardware_detected(report)
    assert panel.gpu_label.text() == "n/a — llama.cpp's device list not readable: x"
    nvidia = _report(tmp_path, gpus=True)
    unknown = dataclasses.replace(nvidia, gpus=(), unused_gpus=nvidia.gpus, devices=None)
    panel.on_hardware_detected(unknown)
    assert "RTX 4090</b> · found by NVIDIA's driver; whether llama.cpp can use it is not known" in (
        panel.gpu_label.text()
    )
    assert panel.advice_labels["n_gpu_layers"].text().startswith("0 — GPUs unknown")


def test_live_free_vram_comes_from_the_nvidia_gpu_on_the_same_slot(
    panel: HardwarePanel, tmp_path: Path
) -> None:
    panel.on_hardware_detected(_report(tmp_path, gpus=True))
    panel.set_model(_model())
    assert panel.advice_labels["n_gpu_layers"].text().startswith("all — ")
    full = dataclasses.replace(_gpu(0), memory_used_bytes=24 * GIB)  # NVML now: no VRAM free
    panel.on_snapshot(_snap(1.0, gpus=(full,)))
    assert panel.advice_labels["n_gpu_layers"].text().startswith("0 — 0 of 32 layers fit")


def test_apply_emits_the_recommended_load_values(qtbot: QtBot, panel: HardwarePanel, tmp_path: Path) -> None:
    panel.on_hardware_detected(_report(tmp_path, gpus=False))
    with qtbot.waitSignal(panel.apply_requested, timeout=WAIT_MS) as blocker:
        qtbot.mouseClick(panel.apply_button, Qt.MouseButton.LeftButton)
    assert blocker.args == [
        {"n_threads": 4, "n_threads_batch": 8, "n_batch": 512, "n_ubatch": 512, "n_gpu_layers": 0}
    ]


def test_detect_again_asks_and_a_failure_shows_n_a(
    qtbot: QtBot, panel: HardwarePanel, tmp_path: Path
) -> None:
    panel.on_hardware_detected(_report(tmp_path, gpus=False))
    with qtbot.waitSignal(panel.detection_requested, timeout=WAIT_MS):
        qtbot.mouseClick(panel.detect_button, Qt.MouseButton.LeftButton)
    assert not panel.detect_button.isEnabled()  # until the answer comes
    panel.on_detection_failed("RuntimeError: boom")
    assert panel.cpu_labels["Model"].text() == "n/a"
    assert "boom" in panel.notes_label.text()
    assert panel.detect_button.isEnabled()


# ---- monitoring -------------------------------------------------------------------------------


def test_snapshots_reach_the_plots_and_missing_sources_say_n_a(panel: HardwarePanel) -> None:
    for i in range(5):
        panel.on_snapshot(_snap(100.0 + 0.5 * i))
    panel.cpu_plot.flush()
    x, y = panel.cpu_plot.data("total")
    assert list(y) == [40.0] * 5
    assert list(x) == [-2.0, -1.5, -1.0, -0.5, 0.0]
    assert panel.cpu_plot.latest("LlamaScope") == pytest.approx(50.0)  # 150 % of a core / 3 cores
    assert panel.core_bars.values() == (30.0, 50.0, 95.0)
    panel.memory_plot.flush()
    assert panel.memory_plot.latest("system used") == pytest.approx(6.0)
    assert panel.memory_plot.latest("LlamaScope") == pytest.approx(0.5)
    assert "2.90 GHz (max n/a)" in panel.cpu_readout.text()
    assert not panel.temperature_plot.isVisible()
    assert panel.temperature_na.text() == "Temperature: n/a — no sensors"
    assert not panel.power_plot.isVisible() and "n/a" in panel.power_na.text()
    assert not panel.gpu_plot.isVisible()
    assert "CPU: n/a" in panel.throttle_status.text()
    assert not any(b.isVisible() for b in panel.throttle_badges.values())


def test_a_missing_cpu_reading_is_a_gap_not_a_zero(panel: HardwarePanel) -> None:
    panel.on_snapshot(_snap(1.0, cpu=None))
    panel.on_snapshot(_snap(1.5, cpu=30.0))
    panel.cpu_plot.flush()
    _x, y = panel.cpu_plot.data("total")
    assert math.isnan(y[0]) and y[1] == 30.0


def test_temperatures_power_and_gpus_appear_when_measured(panel: HardwarePanel) -> None:
    temps = (("coretemp Package id 0", 70.0), ("nvme temp1", 40.0))
    panel.on_snapshot(_snap(1.0, temps=temps, gpus=(_gpu(),), cpu_power=35.0))
    assert panel.temperature_plot.isVisible() and not panel.temperature_na.isVisible()
    assert set(panel.temperature_plot.curve_names()) == {"coretemp Package id 0", "nvme temp1", "GPU 0"}
    assert panel.power_plot.isVisible() and set(panel.power_plot.curve_names()) == {"CPU package", "GPU 0"}
    assert panel.gpu_plot.isVisible() and panel.vram_plot.isVisible()
    assert "SM 2500 MHz" in panel.gpu_readout.text() and "fan n/a" in panel.gpu_readout.text()
    # The NVMe drive disappears and the RAPL counter stops answering: gaps, not made-up values.
    panel.on_snapshot(_snap(1.5, temps=temps[:1], gpus=(_gpu(power=None),), cpu_power=None))
    for plot in (panel.temperature_plot, panel.power_plot):
        plot.flush()
    assert math.isnan(panel.temperature_plot.data("nvme temp1")[1][-1])
    assert panel.temperature_plot.latest("nvme temp1") is None
    assert math.isnan(panel.power_plot.data("CPU package")[1][-1])
    assert panel.power_plot.latest("GPU 0") is None
    # The GPU vanishes altogether.
    panel.on_snapshot(_snap(2.0, temps=temps[:1]))
    panel.gpu_plot.flush()
    assert math.isnan(panel.gpu_plot.data("GPU 0")[1][-1])


def test_throttle_badges_show_while_throttling_and_fade(panel: HardwarePanel) -> None:
    panel.on_snapshot(_snap(10.0, gpus=(_gpu(mask=0),), cpu_verdict=ThrottleVerdict.NOT_THROTTLING))
    assert not any(b.isVisible() for b in panel.throttle_badges.values())
    panel.on_snapshot(_snap(10.5, gpus=(_gpu(mask=0x4),), cpu_verdict=ThrottleVerdict.THERMAL))
    cpu_badge, gpu_badge = panel.throttle_badges["CPU"], panel.throttle_badges["GPU 0"]
    assert cpu_badge.isVisible() and "thermal" in cpu_badge.text()
    assert gpu_badge.isVisible() and "power" in gpu_badge.text()
    assert "3 new thermal throttle events" in cpu_badge.toolTip()
    panel.on_snapshot(_snap(11.0, gpus=(_gpu(mask=0),), cpu_verdict=ThrottleVerdict.NOT_THROTTLING))
    assert cpu_badge.isVisible()  # held, so a short throttle is not missed
    panel.on_snapshot(
        _snap(10.5 + THROTTLE_HOLD_S + 1, gpus=(_gpu(mask=0),), cpu_verdict=ThrottleVerdict.NOT_THROTTLING)
    )
    assert not cpu_badge.isVisible() and not gpu_badge.isVisible()


def test_time_window_choice_applies_to_every_plot(qtbot: QtBot, panel: HardwarePanel) -> None:
    with qtbot.waitSignal(panel.window_changed, timeout=WAIT_MS) as blocker:
        panel.window_combo.setCurrentIndex(panel.window_combo.findData(300))
    assert blocker.args == [300.0]
    assert {p.window_s for p in panel.plots} == {300.0}
    for i in range(400):
        panel.on_snapshot(_snap(float(i)))
    panel.cpu_plot.flush()
    x, _y = panel.cpu_plot.data("total")
    assert x[0] == -300.0 and len(x) == 301


def test_performance_tiles_show_what_the_sampler_measured(qtbot: QtBot) -> None:
    perf = PerformancePanel(history=None)
    qtbot.addWidget(perf)
    perf.on_sample(_snap(1.0))  # a CPU-only machine without sensors
    assert perf.tile_memory.value.text() == "512 MiB"
    assert perf.tile_cpu.value.text() == "40 %"
    assert [t.value.text() for t in (perf.tile_vram, perf.tile_power, perf.tile_temp)] == ["n/a"] * 3
    gpus = (
        dataclasses.replace(_gpu(0), process_memory_bytes=GIB),
        dataclasses.replace(_gpu(1), process_memory_bytes=GIB // 2),
    )
    perf.on_sample(_snap(1.5, gpus=gpus, cpu_power=35.0, temps=(("Package id 0", 71.0),)))
    assert perf.tile_vram.value.text() == "1.5 GiB"  # LlamaScope's share on both GPUs
    assert perf.tile_power.value.text() == "435.0 W"  # CPU package + both GPUs
    assert perf.tile_temp.value.text() == "71 °C"


# ---- LivePlot ---------------------------------------------------------------------------------


def test_live_plot_ring_buffer_wraps_and_draws_only_new_data(qtbot: QtBot) -> None:
    plot = LivePlot("Test", "u", window_s=1000.0, capacity=8)
    qtbot.addWidget(plot)
    plot.add_curve("a")
    assert not plot.flush()  # nothing new
    for i in range(20):
        plot.append("a", float(i), float(i * 10))
    assert plot.flush()
    assert not plot.flush()  # no new samples, no setData
    x, y = plot.data("a")
    assert list(y) == [float(v * 10) for v in range(12, 20)]
    assert list(x) == [float(v - 19) for v in range(12, 20)]
    plot.append("a", 5.0, 1.0)  # older than the newest: dropped
    plot.append("a", float("nan"), 1.0)
    assert plot.latest("a") == 190.0
    plot.append("b", 20.0, None)  # a new curve on the fly, starting with a gap
    plot.flush()
    assert plot.curve_names() == ["a", "b"] and plot.latest("b") is None
    assert "n/a" in plot.header.text()
    plot.clear()
    plot.flush()
    assert len(plot.data("a")[0]) == 0


def test_live_plot_window_slices_the_history(qtbot: QtBot) -> None:
    plot = LivePlot("Test", "u", window_s=10.0)
    qtbot.addWidget(plot)
    for i in range(100):
        plot.append("a", i * 0.5, 1.0)
    plot.flush()
    x, _ = plot.data("a")
    assert x[0] == -10.0 and x[-1] == 0.0
    plot.set_window(2.0)
    plot.flush()
    assert np.allclose(plot.data("a")[0], [-2.0, -1.5, -1.0, -0.5, 0.0])


def test_live_plot_refreshes_itself_while_shown(qtbot: QtBot) -> None:
    plot = LivePlot("Test", "u", window_s=10.0)
    qtbot.addWidget(plot)
    plot.show()
    plot.append("a", 1.0, 3.0)
    qtbot.waitUntil(lambda: len(plot.data("a")[0]) == 1, timeout=WAIT_MS)


# ---- bridge -----------------------------------------------------------------------------------


class FakeCollector:
    def __init__(self) -> None:
        self.t = 0.0

    def collect(self) -> Snapshot:
        self.t += 0.5
        return _snap(self.t)


@pytest.fixture()
def bridge(qtbot: QtBot, tmp_path: Path) -> Iterator[TelemetryBridge]:
    detected_on: list[str] = []
    report = _report(tmp_path, gpus=False)

    def detect() -> HardwareReport:
        detected_on.append(threading.current_thread().name)
        return report

    b = TelemetryBridge(Sampler(FakeCollector(), interval_s=0.1), detect=detect, interval_s=0.1)
    b.detected_on = detected_on  # type: ignore[attr-defined]
    yield b
    b.shutdown()


def test_bridge_forwards_snapshots_to_the_gui_thread(qtbot: QtBot, bridge: TelemetryBridge) -> None:
    received: list[tuple[Snapshot, bool]] = []
    bridge.snapshot_received.connect(
        lambda s: received.append((s, threading.current_thread() is threading.main_thread()))
    )
    with qtbot.waitSignal(bridge.interval_changed, timeout=WAIT_MS):
        bridge.start()
    qtbot.waitUntil(lambda: len(received) >= 2, timeout=WAIT_MS)
    assert all(on_gui for _s, on_gui in received)
    bridge.shutdown()
    assert not bridge.sampler.running


def test_bridge_detects_off_the_gui_thread(qtbot: QtBot, bridge: TelemetryBridge) -> None:
    with qtbot.waitSignal(bridge.hardware_detected, timeout=WAIT_MS) as blocker:
        bridge.request_detection()
    assert isinstance(blocker.args[0], HardwareReport)
    assert bridge.detected_on[0].startswith("llamascope-hardware")  # type: ignore[attr-defined]


def test_bridge_reports_a_failed_detection(qtbot: QtBot) -> None:
    def broken() -> HardwareReport:
        raise RuntimeError("proc is gone")

    b = TelemetryBridge(Sampler(FakeCollector()), detect=broken)
    try:
        with qtbot.waitSignal(b.detection_failed, timeout=WAIT_MS) as blocker:
            b.request_detection()
        assert "proc is gone" in blocker.args[0]
    finally:
        b.shutdown()


def test_sampling_slows_down_while_the_window_is_minimised(qtbot: QtBot, bridge: TelemetryBridge) -> None:
    window = QMainWindow()
    qtbot.addWidget(window)
    window.show()
    bridge.watch_window(window)
    bridge.start()
    assert bridge.sampler.interval_s == pytest.approx(0.1)
    window.setWindowState(Qt.WindowState.WindowMinimized)
    slow = TelemetryBridge.MINIMISED_INTERVAL_S
    qtbot.waitUntil(lambda: bridge.sampler.interval_s == slow, timeout=WAIT_MS)
    window.setWindowState(Qt.WindowState.WindowNoState)
    qtbot.waitUntil(lambda: bridge.sampler.interval_s == pytest.approx(0.1), timeout=WAIT_MS)
    assert bridge.sampler.running  # slower, never stopped


# ---- in the main window -----------------------------------------------------------------------


def test_main_window_samples_detects_applies_and_stops(qtbot: QtBot, tmp_path: Path, demo_model: str) -> None:
    from ui.main_window import MainWindow

    settings = QSettings(str(tmp_path / "llamascope.ini"), QSettings.Format.IniFormat)
    # A screen wide enough for four columns: the plots draw only while the Hardware panel is shown.
    win = MainWindow(settings=settings, available_geometry=QRect(0, 0, 1920, 1080))
    qtbot.addWidget(win)
    win.show()
    hw = win.hardware_panel
    assert hw.isVisible()
    assert win.sampler.running
    qtbot.waitUntil(lambda: hw.apply_button.isEnabled(), timeout=WAIT_MS)  # detection arrived
    qtbot.waitUntil(lambda: demo_model in win.model_panel._infos, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: hw._model is not None, timeout=WAIT_MS)  # the selected model reached the panel
    qtbot.waitUntil(lambda: len(hw.cpu_plot.data("total")[0]) >= 2, timeout=WAIT_MS)  # live data drawn
    rec = hw.recommendation()
    assert rec is not None
    batch = win.model_panel.findChild(QSpinBox, "field_n_batch")
    batch.setValue(64)
    qtbot.mouseClick(hw.apply_button, Qt.MouseButton.LeftButton)
    assert batch.value() == rec.n_batch
    assert win.model_panel.load_settings().n_threads == rec.n_threads
    assert win.model_panel.preset_combo.currentData() == "custom"
    win.close()
    assert not win.sampler.running
    assert not [
        t
        for t in threading.enumerate()
        if t.name.startswith(("llamascope-telemetry", "llamascope-hardware")) and t.is_alive()
    ]


def test_model_config_applies_only_known_fields(qtbot: QtBot, tmp_path: Path) -> None:
    from widgets.model_config_panel import ModelConfigPanel

    settings = QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat)
    panel = ModelConfigPanel(settings)
    qtbot.addWidget(panel)
    panel.apply_recommendations({"n_threads": 3, "n_ubatch": 128, "use_mlock": True, "bogus": 1})
    load = panel.load_settings()
    assert (load.n_threads, load.n_ubatch, load.use_mlock) == (3, 128, True)
    assert dataclasses.asdict(load)  # still a valid LoadSettings


def test_both_boxes_show_the_same_clock_and_n_a_only_when_unknown(
    panel: HardwarePanel, tmp_path: Path
) -> None:
    """A VM: no clock limits in sysfs, but a current clock. Detection and the live readout agree."""
    report = _report(tmp_path, gpus=False)
    vm = dataclasses.replace(
        report, cpu=dataclasses.replace(report.cpu, min_freq_mhz=None, max_freq_mhz=None)
    )
    panel.on_hardware_detected(vm)
    assert panel.cpu_labels["Clock"].text() == "n/a"  # nothing read yet: truly unknown
    panel.on_snapshot(_snap(1.0))  # 2900 MHz now, no maximum
    assert panel.cpu_labels["Clock"].text() == "2.90 GHz (max n/a)"
    assert "clock 2.90 GHz (max n/a) ·" in panel.cpu_readout.text()

    # A machine with limits: the same range in both boxes, and the current clock.
    panel.on_hardware_detected(report)
    panel.on_snapshot(_snap(1.5))
    assert panel.cpu_labels["Clock"].text() == "2.90 GHz (0.40 GHz – 4.80 GHz)"
    assert "clock 2.90 GHz (0.40 GHz – 4.80 GHz) ·" in panel.cpu_readout.text()


def test_apply_says_what_changed_and_sets_custom_only_on_a_change(qtbot: QtBot, tmp_path: Path) -> None:
    from widgets.model_config_panel import ModelConfigPanel

    panel = ModelConfigPanel(QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(panel)
    assert panel.preset_combo.currentData() == "auto"
    current = panel.load_settings()
    with qtbot.waitSignal(panel.settings_applied) as applied:
        message = panel.apply_recommendations(
            {"n_threads": current.n_threads, "n_batch": current.n_batch}, "Hardware advice"
        )
    assert applied.args == [message]
    assert message.startswith("Applied from Hardware advice: nothing changed")
    assert panel.preset_combo.currentData() == "auto"  # nothing changed: the preset still holds
    assert panel.apply_note.text() == message

    message = panel.apply_recommendations({"n_threads": 3, "n_batch": 384}, "Auto-Tune")
    assert (
        message == "Applied from Auto-Tune: threads (generation) 3, batch size 384 — used at the next Load."
    )
    assert panel.preset_combo.currentData() == "custom"
    assert (panel.load_settings().n_threads, panel.load_settings().n_batch) == (3, 384)
