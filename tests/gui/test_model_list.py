"""The Models list: entries are remembered until removed, removing never touches the file, titles
that collide show the file name, and a file that went away is listed as missing."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import QSettings, Qt
from pytestqt.qtbot import QtBot

from ui.inspector import ModelInspector
from widgets.model_config_panel import ORIGIN_QUANTIZED, ModelConfigPanel

WAIT_MS = 60_000


@pytest.fixture()
def settings(tmp_path: Path) -> QSettings:
    return QSettings(str(tmp_path / "llamascope.ini"), QSettings.Format.IniFormat)


@pytest.fixture()
def open_panel(qtbot: QtBot, settings: QSettings) -> Iterator[Callable[[], ModelConfigPanel]]:
    """A Model Config panel wired to a real inspector, as in the window; a new one per restart."""
    inspectors: list[ModelInspector] = []

    def make() -> ModelConfigPanel:
        panel = ModelConfigPanel(settings)
        qtbot.addWidget(panel)
        inspector = ModelInspector()
        inspectors.append(inspector)
        panel.inspection_requested.connect(inspector.request)
        inspector.inspected.connect(panel.on_model_inspected)
        inspector.missing.connect(panel.on_model_missing)
        panel.select_initial_model(None)
        return panel

    yield make
    for inspector in inspectors:
        inspector.shutdown()


def _text(panel: ModelConfigPanel, path: str) -> str:
    item = panel._find_item(os.path.abspath(path))
    assert item is not None, path
    return item.text()


def _link(demo_model: str, folder: Path, name: str) -> str:
    """Another file with the demo model's content (and so its title)."""
    path = folder / name
    os.symlink(demo_model, path)
    return str(path)


def test_colliding_titles_show_the_file_name(
    qtbot: QtBot, open_panel, demo_model: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    panel = open_panel()
    qtbot.waitUntil(lambda: demo_model in panel._infos, timeout=WAIT_MS)
    title = panel._infos[demo_model].display_name
    assert _text(panel, demo_model).splitlines()[0] == title  # alone: the title only
    other = _link(demo_model, tmp_path, "smol-q4_1-copy.gguf")
    panel.add_model(other)
    qtbot.waitUntil(lambda: other in panel._infos, timeout=WAIT_MS)
    assert _text(panel, other).splitlines()[0] == f"{title} — smol-q4_1-copy.gguf"
    assert _text(panel, demo_model).splitlines()[0] == f"{title} — {os.path.basename(demo_model)}"
    panel.remove_model(other)
    assert _text(panel, demo_model).splitlines()[0] == title


def test_added_entries_are_remembered_until_removed_and_the_file_stays(
    qtbot: QtBot, open_panel, demo_model: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    panel = open_panel()
    opened = _link(demo_model, tmp_path, "opened.gguf")
    quantized = _link(demo_model, tmp_path, "quantized.gguf")
    panel.add_model(opened)
    assert panel.selected_path() == opened
    panel.add_model(quantized, ORIGIN_QUANTIZED, select=False)
    assert panel.selected_path() == opened  # a quantization's output does not take the selection
    assert "quantized here" in _text(panel, quantized)
    panel.save_state()

    again = open_panel()  # a restart
    assert again.model_paths() == [demo_model, opened, quantized]
    assert again.selected_path() == opened
    assert "quantized here" in _text(again, quantized)

    # Remove with the button: off the list, not off the disk; the neighbour is selected.
    qtbot.mouseClick(again.remove_button, Qt.MouseButton.LeftButton)
    assert opened not in again.model_paths()
    assert os.path.exists(opened)
    assert again.selected_path() is not None and again.selected_path() != opened
    # Remove with the Delete key.
    again.model_list.setCurrentRow(again.model_paths().index(quantized))
    again.model_list.setFocus()
    qtbot.keyClick(again.model_list, Qt.Key.Key_Delete)
    assert quantized not in again.model_paths() and os.path.exists(quantized)

    third = open_panel()
    assert third.model_paths() == [demo_model]


def test_the_demo_model_is_built_in_and_cannot_be_removed(qtbot: QtBot, open_panel, demo_model: str) -> None:  # type: ignore[no-untyped-def]
    panel = open_panel()
    assert panel.selected_path() == demo_model
    assert not panel.remove_button.isEnabled()
    assert "always listed" in panel.remove_button.toolTip()
    assert panel.remove_model(demo_model) is False
    assert "built-in demo" in _text(panel, demo_model)
    assert panel.model_paths() == [demo_model]


def test_a_file_gone_since_the_last_start_is_listed_as_missing(
    qtbot: QtBot, open_panel, demo_model: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    panel = open_panel()
    gone = _link(demo_model, tmp_path, "gone.gguf")
    panel.add_model(gone)
    qtbot.waitUntil(lambda: gone in panel._infos, timeout=WAIT_MS)
    panel.save_state()
    os.remove(gone)

    again = open_panel()
    assert gone in again.model_paths()
    qtbot.waitUntil(lambda: again.is_missing(gone), timeout=WAIT_MS)
    qtbot.waitUntil(lambda: "missing" in _text(again, gone), timeout=WAIT_MS)
    assert not again.load_button.isEnabled()
    # Put back and selected again, it is read again and can be loaded.
    again.model_list.setCurrentRow(0)
    _link(demo_model, tmp_path, "gone.gguf")
    again.model_list.setCurrentRow(again.model_paths().index(gone))
    qtbot.waitUntil(lambda: gone in again._infos and not again.is_missing(gone), timeout=WAIT_MS)
    qtbot.waitUntil(lambda: again.load_button.isEnabled(), timeout=WAIT_MS)
    assert "missing" not in _text(again, gone)
