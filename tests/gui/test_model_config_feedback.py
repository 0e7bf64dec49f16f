"""What Model Config says back: Apply with a model loaded, the memory fit bar past 100 %, and
settings that would not fit never remembered as the next start's settings."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import QSettings, Qt
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import QSpinBox
from pytestqt.qtbot import QtBot

from app.model.memory import Verdict, estimate_memory
from app.model.settings import LoadSettings
from ui.main_window import MainWindow

WAIT_MS = 120_000


@pytest.fixture()
def settings(tmp_path: Path) -> QSettings:
    return QSettings(str(tmp_path / "llamascope.ini"), QSettings.Format.IniFormat)


def _open(qtbot: QtBot, settings: QSettings, demo_model: str) -> MainWindow:
    win = MainWindow(settings=settings)
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: demo_model in win.model_panel._infos, timeout=WAIT_MS)
    return win


@pytest.fixture()
def window(qtbot: QtBot, settings: QSettings, demo_model: str) -> Iterator[MainWindow]:
    win = _open(qtbot, settings, demo_model)
    yield win
    win.close()


def _spin(win: MainWindow, name: str) -> QSpinBox:
    spin = win.model_panel.findChild(QSpinBox, f"field_{name}")
    assert spin is not None
    return spin


def test_apply_with_a_model_loaded_says_a_reload_is_needed(qtbot: QtBot, window: MainWindow) -> None:
    panel, hw = window.model_panel, window.hardware_panel
    _spin(window, "n_ctx").setValue(1024)
    with qtbot.waitSignal(window.bridge.load_finished, timeout=WAIT_MS):
        qtbot.mouseClick(panel.load_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: hw.apply_button.isEnabled(), timeout=WAIT_MS)
    rec = hw.recommendation()
    assert rec is not None
    _spin(window, "n_batch").setValue(rec.n_batch * 2)
    qtbot.waitUntil(lambda: panel.reload_note.isVisible() and panel.load_button.isEnabled(), timeout=WAIT_MS)
    with qtbot.waitSignal(window.bridge.load_finished, timeout=WAIT_MS):
        qtbot.mouseClick(panel.load_button, Qt.MouseButton.LeftButton)  # loaded with the doubled batch
    qtbot.mouseClick(hw.apply_button, Qt.MouseButton.LeftButton)
    message = window.statusBar().currentMessage()
    assert message.startswith("Applied from Hardware advice: ")
    assert f"batch size {rec.n_batch:,}" in message and message.endswith("reload the model to use them.")
    assert panel.apply_note.text() == message and panel.apply_note.isVisible()
    assert panel.reload_note.isVisible() and "n_batch" in panel.reload_note.text()
    assert panel.preset_combo.currentData() == "custom"


def test_the_fit_bar_shows_the_true_share_in_the_verdicts_colour(qtbot: QtBot, window: MainWindow) -> None:
    panel = window.model_panel
    qtbot.waitUntil(lambda: panel.memory_verdict.text() == "Fits", timeout=WAIT_MS)
    normal = panel._memory_bar_palette.color(QPalette.ColorRole.Highlight)
    assert re.fullmatch(r"[\d,]+ % of available RAM", panel.memory_bar.format())
    assert panel.memory_bar.palette().color(QPalette.ColorRole.Highlight) == normal

    # The real estimate for a context of 1,048,576, against a machine with 1/1.8 of that free.
    info = panel._infos[panel.selected_path()]
    estimate = estimate_memory(info, LoadSettings(n_ctx=1_048_576))
    over = dataclasses.replace(
        estimate,
        available_ram_bytes=round(estimate.total_ram_bytes / 1.8),
        verdict=Verdict.WONT_FIT,
        ram_verdict=Verdict.WONT_FIT,
    )
    panel._show_estimate(over)
    assert panel.memory_bar.format() == "180 % of available RAM"
    assert panel.memory_bar.value() == 100
    assert panel.memory_bar.palette().color(QPalette.ColorRole.Highlight).name() == "#c62828"
    assert panel.memory_verdict.text() == "Will not fit"


def test_settings_that_do_not_fit_are_not_remembered(
    qtbot: QtBot, settings: QSettings, demo_model: str
) -> None:
    first = _open(qtbot, settings, demo_model)
    panel = first.model_panel
    _spin(first, "n_ctx").setValue(3000)
    qtbot.waitUntil(lambda: panel.memory_verdict.text() == "Fits", timeout=WAIT_MS)
    _spin(first, "n_batch").setValue(256)
    _spin(first, "n_ubatch").setValue(512)  # refused: larger than n_batch
    qtbot.waitUntil(lambda: "must not exceed" in panel.problems_label.text(), timeout=WAIT_MS)
    first.close()
    saved = json.loads(str(settings.value("settings/load")))
    assert saved["n_ctx"] == 3000 and saved["n_ubatch"] <= saved["n_batch"]

    second = _open(qtbot, settings, demo_model)
    assert second.model_panel.load_settings().n_ctx == 3000
    qtbot.waitUntil(lambda: second.model_panel.memory_verdict.text() == "Fits", timeout=WAIT_MS)
    second.close()
