"""The window on a 1366x768 and a 1920x1080 screen: it fits, its panels fit their slots, nothing
scrolls sideways, and the layout switches between four columns and two tab stacks as it is resized."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import QRect, QSettings, QSize
from PySide6.QtWidgets import QSpinBox
from pytestqt.qtbot import QtBot

from ui.main_window import FOUR_COLUMNS_MIN_WIDTH, USABLE_MIN_SIZE, LayoutMode, MainWindow
from widgets.panel import Panel

WAIT_MS = 60_000
SMALL = QRect(0, 0, 1366, 768)
LARGE = QRect(0, 0, 1920, 1080)


@pytest.fixture()
def settings(tmp_path: Path) -> QSettings:
    return QSettings(str(tmp_path / "llamascope.ini"), QSettings.Format.IniFormat)


@pytest.fixture()
def open_window(qtbot: QtBot, settings: QSettings) -> Iterator[Callable[[QRect], MainWindow]]:
    windows: list[MainWindow] = []

    def make(screen: QRect) -> MainWindow:
        win = MainWindow(settings=settings, available_geometry=screen)
        qtbot.addWidget(win)
        win.show()
        qtbot.waitExposed(win)
        # Once shown, the window fits with its frame (the window manager's, here the offscreen one's).
        qtbot.waitUntil(lambda: screen.contains(win.frameGeometry()), timeout=WAIT_MS)
        windows.append(win)
        return win

    yield make
    for win in windows:
        if win.isVisible():
            win.close()


def _visible_panels(win: MainWindow) -> list[Panel]:
    return [p for p in win.panels if p.isVisible()]


def _assert_panels_fit(qtbot: QtBot, win: MainWindow) -> None:
    """Every shown panel is at least as wide as its boxes need and shows no sideways scroll bar."""
    for panel in _visible_panels(win):
        qtbot.waitUntil(lambda p=panel: p.width() >= p.minimumSizeHint().width(), timeout=WAIT_MS)
        scroll = panel.scroll_area()
        content = scroll.widget()
        assert scroll.viewport().width() >= content.minimumSizeHint().width(), panel.title
        assert not scroll.horizontalScrollBar().isVisible(), panel.title
        assert content.width() <= scroll.viewport().width(), panel.title


def _assert_fits(win: MainWindow, screen: QRect) -> None:
    assert screen.contains(win.frameGeometry()), (win.frameGeometry(), screen)
    hint = win.minimumSizeHint()
    assert hint.width() <= screen.width() and hint.height() <= screen.height(), hint


def _every_tab(win: MainWindow) -> Iterator[None]:
    """Show each panel of the two tab stacks in turn (two at a time)."""
    for index in (0, 1):
        win.left_tabs.setCurrentIndex(index)
        win.right_tabs.setCurrentIndex(index)
        yield


def test_a_first_start_on_1366x768_fits_in_two_tab_stacks(qtbot: QtBot, open_window) -> None:  # type: ignore[no-untyped-def]
    win = open_window(SMALL)
    _assert_fits(win, SMALL)
    assert win.layout_mode() is LayoutMode.TABS
    assert win.width() < FOUR_COLUMNS_MIN_WIDTH
    assert win.console.isVisible() and win.statusBar().isVisible()
    assert win.console.geometry().bottom() < win.height()
    for _ in _every_tab(win):
        assert len(_visible_panels(win)) == 2
        _assert_panels_fit(qtbot, win)


def test_a_first_start_on_1920x1080_shows_four_columns(qtbot: QtBot, open_window) -> None:  # type: ignore[no-untyped-def]
    win = open_window(LARGE)
    _assert_fits(win, LARGE)
    assert win.layout_mode() is LayoutMode.COLUMNS
    assert [win.panels_splitter.widget(i) for i in range(4)] == list(win.panels)
    assert len(_visible_panels(win)) == 4
    _assert_panels_fit(qtbot, win)


def test_the_layout_switches_at_the_threshold_and_keeps_each_panel(qtbot: QtBot, open_window) -> None:  # type: ignore[no-untyped-def]
    win = open_window(LARGE)
    panels = list(win.panels)
    spin = win.model_panel.findChild(QSpinBox, "field_n_batch")
    spin.setValue(333)
    win.resize(FOUR_COLUMNS_MIN_WIDTH - 1, 900)
    qtbot.waitUntil(lambda: win.width() == FOUR_COLUMNS_MIN_WIDTH - 1, timeout=WAIT_MS)
    assert win.layout_mode() is LayoutMode.TABS
    assert win.left_tabs.count() == 2 and win.right_tabs.count() == 2
    assert [win.left_tabs.widget(0), win.left_tabs.widget(1)] == panels[:2]
    for _ in _every_tab(win):
        _assert_panels_fit(qtbot, win)
    win.right_tabs.setCurrentIndex(1)  # Performance

    # Exactly at the threshold: four columns, and each still fits its column.
    win.resize(FOUR_COLUMNS_MIN_WIDTH, 900)
    qtbot.waitUntil(lambda: win.width() == FOUR_COLUMNS_MIN_WIDTH, timeout=WAIT_MS)
    assert win.layout_mode() is LayoutMode.COLUMNS
    assert win.left_tabs.count() == 0
    assert [win.panels_splitter.widget(i) for i in range(4)] == panels
    _assert_panels_fit(qtbot, win)
    assert win.model_panel.findChild(QSpinBox, "field_n_batch") is spin and spin.value() == 333

    # Back to tabs: the tab the user had open is open again.
    win.resize(1300, 700)
    qtbot.waitUntil(lambda: win.layout_mode() is LayoutMode.TABS, timeout=WAIT_MS)
    assert win.right_tabs.currentWidget() is win.performance_panel


def test_a_layout_saved_on_a_big_screen_comes_back_fitting_a_small_one(
    qtbot: QtBot, open_window, settings: QSettings
) -> None:  # type: ignore[no-untyped-def]
    big = open_window(LARGE)
    big.resize(1900, 1050)
    qtbot.waitUntil(lambda: big.width() == 1900, timeout=WAIT_MS)
    big.close()
    small = open_window(SMALL)
    _assert_fits(small, SMALL)
    # Not squeezed into an odd small window: as on a first start, as large as the screen allows.
    assert small.width() >= USABLE_MIN_SIZE.width() and small.height() >= USABLE_MIN_SIZE.height()
    assert small.frameGeometry().size() == QSize(1366, 768)
    assert small.layout_mode() is LayoutMode.TABS
    small.close()

    # A geometry saved on this same screen comes back as it was, if it fits.
    again = open_window(SMALL)
    again.resize(1100, 700)
    again.move(50, 40)
    qtbot.waitUntil(lambda: again.width() == 1100, timeout=WAIT_MS)
    again.close()
    last = open_window(SMALL)
    assert last.size() == QSize(1100, 700)
    _assert_fits(last, SMALL)


def test_a_saved_geometry_larger_than_the_screen_is_clamped(
    qtbot: QtBot, open_window, settings: QSettings
) -> None:  # type: ignore[no-untyped-def]
    # As if the window had been stretched beyond this screen's edges.
    settings.setValue("window/rect", "400,300,1600,950")
    settings.setValue("window/screenSize", "1366x768")
    win = open_window(SMALL)
    _assert_fits(win, SMALL)
    assert win.layout_mode() is LayoutMode.TABS
    assert win.frameGeometry().size() == QSize(1366, 768)


def test_a_damaged_saved_geometry_starts_as_a_first_run(
    qtbot: QtBot, open_window, settings: QSettings
) -> None:  # type: ignore[no-untyped-def]
    settings.setValue("window/rect", "not,a,rect")
    settings.setValue("window/screenSize", "1920x1080")
    win = open_window(LARGE)
    _assert_fits(win, LARGE)
    assert win.layout_mode() is LayoutMode.COLUMNS
