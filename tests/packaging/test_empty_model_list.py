"""With no demo model (a bundle built without it) and nothing remembered, the Models box says how
to add a model instead of showing an empty list."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import QSettings
from pytestqt.qtbot import QtBot

from widgets import model_config_panel
from widgets.model_config_panel import ModelConfigPanel


def test_an_empty_list_shows_how_to_add_a_model(
    qtbot: QtBot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, demo_model: str
) -> None:
    monkeypatch.setattr(model_config_panel, "demo_model_path", lambda: None)
    panel = ModelConfigPanel(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(panel)
    panel.select_initial_model(None)
    assert panel.model_list.count() == 0
    assert not panel.empty_list_hint.isHidden()
    assert "Open file" in panel.empty_list_hint.text() and ".gguf" in panel.empty_list_hint.text()

    panel.add_model_file(demo_model)
    assert panel.model_list.count() == 1
    assert panel.empty_list_hint.isHidden()


def test_the_hint_stays_hidden_when_the_demo_model_is_there(qtbot: QtBot, tmp_path: Path) -> None:
    panel = ModelConfigPanel(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(panel)
    panel.select_initial_model(None)
    assert panel.model_list.count() >= 1
    assert panel.empty_list_hint.isHidden()
