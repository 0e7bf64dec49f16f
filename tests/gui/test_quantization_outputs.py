"""Where the window puts quantized files, how it words their size, and its start-up sweep of what
a crashed quantization left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PySide6.QtCore import QSettings
from pytestqt.qtbot import QtBot

from app.model.gguf_info import inspect_model
from app.quant.partials import default_registry_folder
from app.quant.plan import QuantizeResult, f16_base_request, user_models_folder
from app.quant.quantize import quantize
from widgets.model_config_panel import ModelConfigPanel
from widgets.quantization_panel import QuantizationPanel


def test_the_panel_shows_where_outputs_go(qtbot: QtBot, demo_model: str, tmp_path: Path) -> None:
    panel = QuantizationPanel()
    qtbot.addWidget(panel)
    panel.set_source(inspect_model(demo_model))
    # The demo model sits in an installed package: outputs go to the user data folder, and the
    # output field says so before anything is written.
    assert panel.output_edit.placeholderText() == os.path.join(user_models_folder(), "MODEL.TYPE.gguf")
    assert "installed Python package" in panel.output_edit.toolTip()
    assert user_models_folder() in panel.output_edit.toolTip()

    beside = tmp_path / "model.gguf"
    os.symlink(demo_model, beside)
    panel.set_source(inspect_model(str(beside)))
    assert panel.output_edit.placeholderText() == os.path.join(str(tmp_path), "MODEL.TYPE.gguf")
    assert "because" not in panel.output_edit.toolTip()


def test_the_size_change_points_the_right_way(qtbot: QtBot) -> None:
    panel = QuantizationPanel()
    qtbot.addWidget(panel)
    result = QuantizeResult(
        source_path="/models/m.Q4_1.gguf",
        output_path="/models/m.F16.gguf",
        type_name="F16",
        source_bytes=98_000_000,
        output_bytes=269_500_000,
        bits_per_weight=16.0,
        n_tensors=272,
        elapsed_s=1.0,
        quantize_s=1.0,
        source_quantized_type="Q4_1",
        dequantized_copy=True,
        warnings=(),
    )
    panel.on_quantize_finished(result)
    assert "2.75× larger than the source" in panel.status.text()
    assert "smaller" not in panel.status.text()


def test_the_windows_start_sweeps_leftovers_in_the_background(tmp_path: Path) -> None:
    from ui.application import start_sweeping_leftovers

    # The owner: a process that has ended (a reused pid would have another start time).
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    leftover = tmp_path / ".model.Q4_0.gguf.12345678.partial"
    leftover.write_bytes(b"\0" * 4096)
    entry = default_registry_folder() / "dead-owner.json"
    entry.parent.mkdir(parents=True, exist_ok=True)
    entry.write_text(json.dumps({"partial": str(leftover), "pid": child.pid, "pid_started_s": 1.0}))

    thread = start_sweeping_leftovers()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert not leftover.exists() and not entry.exists()


@pytest.fixture(scope="module")
def f16_base(tmp_path_factory: pytest.TempPathFactory, demo_model: str) -> str:
    folder = tmp_path_factory.mktemp("base")
    return quantize(f16_base_request(demo_model, str(folder / "SmolLM2-135M-Instruct.F16.gguf"))).output_path


def test_the_model_list_says_where_a_dequantized_base_came_from(
    qtbot: QtBot, tmp_path: Path, f16_base: str
) -> None:
    # The file's name says only F16; the list and the details add what LlamaScope recorded in
    # its metadata when it made the copy.
    panel = ModelConfigPanel(QSettings(str(tmp_path / "llamascope.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(panel)
    panel.add_model_file(f16_base)
    panel.on_model_inspected(f16_base, inspect_model(f16_base), "")
    item = panel.model_list.currentItem()
    assert item is not None
    assert "F16 (dequantized from Q4_1)" in item.text()
    assert panel._meta_labels["File type"].text() == "F16 (dequantized from Q4_1)"
