"""The Performance panel's roofline and bandwidth lines, fed with a real generation of the demo model:
the share shows for CPU-only generation only, never above 100 %, and the tooltips say what was
measured."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from hardware_fakes import FakeNvmlModule, FakePsutil, build_x86_tree, fake_facts, from_facts, metal_facts
from pytestqt.qtbot import QtBot

from app.common.formatting import format_rate
from app.engine.client import Engine
from app.engine.types import GenerationRequest, LoadResult, RunStats
from app.llama.facts import LibraryFacts
from app.model.settings import LoadSettings, SamplingSettings
from app.telemetry.bandwidth import MIB, Bandwidth
from app.telemetry.hardware import HardwareReport, detect_hardware
from app.telemetry.nvml import Nvml
from widgets.performance_panel import PerformancePanel

TIMEOUT_S = 300


@pytest.fixture(scope="module")
def generated(demo_model: str) -> Iterator[tuple[LoadResult, RunStats]]:
    """One real load and generation of the demo model on the CPU, in the engine host."""
    engine = Engine()
    try:
        loaded = engine.load(demo_model, LoadSettings(n_ctx=512, n_gpu_layers=0)).result(timeout=TIMEOUT_S)
        request = GenerationRequest("Once upon a time,", SamplingSettings(max_tokens=16))
        stats = engine.generate(request).result(timeout=TIMEOUT_S)
    finally:
        engine.shutdown()
    assert stats.gen_tokens_per_s
    yield loaded, stats


def _bandwidth(bytes_per_s: float) -> Bandwidth:
    return Bandwidth(bytes_per_s, bytes_per_s / 3, 2, 128 * MIB, 5, "2026-01-01T00:00:00Z", 32 * MIB)


def _report(tmp_path: Path, facts: LibraryFacts) -> HardwareReport:
    build_x86_tree(tmp_path)
    return detect_hardware(
        str(tmp_path), Nvml(FakeNvmlModule([])), ps=FakePsutil(), machine="x86_64", **from_facts(facts)
    )


@pytest.fixture()
def panel(qtbot: QtBot) -> PerformancePanel:
    widget = PerformancePanel(None)
    qtbot.addWidget(widget)
    return widget


def test_cpu_only_generation_shows_its_share_of_the_bound(
    panel: PerformancePanel, generated: tuple[LoadResult, RunStats]
) -> None:
    loaded, stats = generated
    assert panel.eff_roofline.text() == "n/a"
    panel.set_loaded(loaded)
    panel.on_generation_finished(stats)
    assert panel.eff_roofline.text() == "n/a"  # no bandwidth yet
    # A bandwidth the demo model's speed stays well under: the share is tokens/s ÷ the bound.
    model = loaded.model
    assert model.n_layer and model.n_embd_k_gqa and model.n_embd_v_gqa and stats.gen_tokens_per_s
    per_token = (
        model.tensor_data_bytes
        + model.n_layer * stats.context_tokens * (model.n_embd_k_gqa + model.n_embd_v_gqa) * 2
    )  # f16 K and V
    bandwidth = 4 * per_token * stats.gen_tokens_per_s  # the bound: 4 × this run's speed
    panel.set_bandwidth(_bandwidth(bandwidth))
    assert panel.eff_roofline.text() == "25 % of the bandwidth limit"
    tooltip = panel.eff_roofline.toolTip()
    assert f"at most {4 * stats.gen_tokens_per_s:,.1f} t/s" in tooltip and "CPU only" in tooltip
    text = panel.eff_bandwidth.text()
    assert text == f"2 threads: {format_rate(bandwidth)} · 1 thread: {format_rate(bandwidth / 3)}"
    assert "STREAM triad" in panel.eff_bandwidth.toolTip() and "best of 5" in panel.eff_bandwidth.toolTip()


def test_over_the_bound_is_said_with_its_reason_not_as_a_percentage(
    panel: PerformancePanel, generated: tuple[LoadResult, RunStats]
) -> None:
    loaded, stats = generated
    panel.set_loaded(loaded)
    panel.on_generation_finished(stats)
    panel.set_bandwidth(_bandwidth(1e6))  # 1 MB/s: any real speed is over this bound
    assert panel.eff_roofline.text().startswith("over the bound: ")
    assert "%" not in panel.eff_roofline.text()
    assert "Why it is over the bound: " in panel.eff_roofline.toolTip()


def test_layers_on_a_gpu_hide_the_share(
    panel: PerformancePanel, generated: tuple[LoadResult, RunStats], tmp_path: Path
) -> None:
    loaded, stats = generated
    on_gpu = dataclasses.replace(loaded, settings=dataclasses.replace(loaded.settings, n_gpu_layers=-1))
    panel.set_bandwidth(_bandwidth(100e9))
    panel.set_loaded(on_gpu)
    panel.on_generation_finished(stats)
    assert panel.eff_roofline.text() == "n/a — GPU layers set and llama.cpp's GPUs not known yet"
    panel.set_hardware(_report(tmp_path, metal_facts()))
    assert panel.eff_roofline.text() == "n/a — layers run on a GPU; the bound is the CPU's memory bandwidth"
    # The same settings with no GPU in llama.cpp's device list: the layers stay on the CPU.
    panel.set_hardware(_report(tmp_path, fake_facts(metal_facts().devices[:1])))
    assert panel.eff_roofline.text().endswith("% of the bandwidth limit")
