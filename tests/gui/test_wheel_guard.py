"""The mouse wheel over a spin box or combo box the user has not clicked scrolls the panel and leaves
the value alone; once the editor has focus, the wheel changes it (widgets/wheel_guard.py)."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QPoint, QPointF, QRect, QSettings, Qt
from PySide6.QtGui import QWheelEvent
from PySide6.QtWidgets import QApplication, QComboBox, QScrollArea, QSpinBox, QVBoxLayout, QWidget
from pytestqt.qtbot import QtBot

from app.bench.history import HistoryStore
from ui.main_window import MainWindow
from widgets.wheel_guard import install_wheel_guard


def _wheel(widget: QWidget, steps: int) -> None:
    """One notch down per step, at the widget's centre, as the window system delivers it."""
    centre = QPointF(widget.rect().center())
    event = QWheelEvent(
        centre,
        QPointF(widget.mapToGlobal(centre.toPoint())),
        QPoint(0, 0),
        QPoint(0, -120 * steps),
        Qt.MouseButton.NoButton,
        Qt.KeyboardModifier.NoModifier,
        Qt.ScrollPhase.NoScrollPhase,
        False,
    )
    QApplication.sendEvent(widget, event)


def _panel(qtbot: QtBot) -> tuple[QScrollArea, QSpinBox, QComboBox]:
    install_wheel_guard()
    area = QScrollArea()
    content = QWidget()
    layout = QVBoxLayout(content)
    spin = QSpinBox()
    spin.setRange(0, 100000)
    spin.setValue(4096)
    combo = QComboBox()
    combo.addItems(["f16", "q8_0", "q4_0"])
    layout.addWidget(spin)
    layout.addWidget(combo)
    layout.addSpacing(3000)  # far taller than the view: the panel scrolls
    area.setWidget(content)
    area.setWidgetResizable(True)
    area.resize(300, 200)
    qtbot.addWidget(area)
    area.show()
    qtbot.waitExposed(area)
    return area, spin, combo


def test_the_wheel_over_an_unfocused_spin_box_scrolls_the_panel(qtbot: QtBot) -> None:
    area, spin, combo = _panel(qtbot)
    assert spin.focusPolicy() == Qt.FocusPolicy.StrongFocus  # hovering gives no focus
    assert combo.focusPolicy() == Qt.FocusPolicy.StrongFocus
    bar = area.verticalScrollBar()
    assert bar.value() == 0 and bar.maximum() > 0
    _wheel(spin, 1)
    assert spin.value() == 4096 and not spin.hasFocus()
    assert bar.value() > 0  # the panel scrolled instead
    scrolled = bar.value()
    bar.setValue(0)
    _wheel(combo, 1)
    assert combo.currentIndex() == 0 and bar.value() == scrolled


def test_the_wheel_over_a_focused_spin_box_changes_it(qtbot: QtBot) -> None:
    area, spin, combo = _panel(qtbot)
    area.activateWindow()
    spin.setFocus(Qt.FocusReason.MouseFocusReason)
    qtbot.waitUntil(spin.hasFocus)
    bar = area.verticalScrollBar()
    _wheel(spin, 1)
    assert spin.value() == 4095  # one notch down
    assert bar.value() == 0
    combo.setFocus(Qt.FocusReason.MouseFocusReason)
    qtbot.waitUntil(combo.hasFocus)
    _wheel(combo, 1)
    assert combo.currentIndex() == 1


def test_in_the_window_the_quantization_panel_scrolls_past_its_spin_boxes(
    qtbot: QtBot, tmp_path: Path
) -> None:
    settings = QSettings(str(tmp_path / "llamascope.ini"), QSettings.Format.IniFormat)
    win = MainWindow(
        settings=settings,
        history=HistoryStore(str(tmp_path / "history.sqlite3")),
        available_geometry=QRect(0, 0, 1366, 768),
    )
    qtbot.addWidget(win)
    win.show()
    qtbot.waitExposed(win)
    try:
        spin = win.quantization_panel.advice_box.ctx_spin
        area = spin.parentWidget()
        while area is not None and not isinstance(area, QScrollArea):
            area = area.parentWidget()
        assert area is not None
        bar = area.verticalScrollBar()
        qtbot.waitUntil(lambda: bar.maximum() > 0)  # the panel is taller than its column at 768 px
        bar.setValue(0)
        before = spin.value()
        _wheel(spin, 1)
        assert spin.value() == before and bar.value() > 0
    finally:
        win.close()
