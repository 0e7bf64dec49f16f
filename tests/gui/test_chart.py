"""The shared chart behaviour (widgets/chart.py): the wheel scrolls the panel unless the chart was
clicked or Ctrl is held, a zoom holds until Reset zoom or a double-click, speeds never go below 0,
counted axes tick on whole numbers."""

from __future__ import annotations

import pyqtgraph as pg
import pytest
from PySide6.QtCore import QEvent, QPoint, QPointF, Qt
from PySide6.QtGui import QMouseEvent, QWheelEvent
from PySide6.QtWidgets import QApplication, QLabel, QScrollArea, QVBoxLayout, QWidget
from pytestqt.qtbot import QtBot

from widgets.chart import ChartBehaviour, IntegerAxis, install_chart_behaviour
from widgets.live_plot import LivePlot


def _in_scroll_area(qtbot: QtBot, chart: QWidget) -> QScrollArea:
    """The chart between tall labels in a short scroll area, as in a panel."""
    content = QWidget()
    layout = QVBoxLayout(content)
    top, bottom = QLabel("above"), QLabel("below")
    top.setMinimumHeight(400)
    bottom.setMinimumHeight(400)
    layout.addWidget(top)
    layout.addWidget(chart)
    layout.addWidget(bottom)
    scroll = QScrollArea()
    scroll.setWidgetResizable(True)
    scroll.setWidget(content)
    scroll.resize(300, 300)
    qtbot.addWidget(scroll)
    scroll.show()
    qtbot.waitExposed(scroll)
    scroll.verticalScrollBar().setValue(300)  # the chart in view, room to scroll either way
    return scroll


def _wheel(plot: pg.PlotWidget, *, ctrl: bool = False, up: bool = True) -> None:
    viewport = plot.viewport()
    pos = QPointF(viewport.width() / 2, viewport.height() / 2)
    event = QWheelEvent(
        pos,
        QPointF(viewport.mapToGlobal(pos.toPoint())),
        QPoint(0, 0),
        QPoint(0, 120 if up else -120),
        Qt.MouseButton.NoButton,
        Qt.KeyboardModifier.ControlModifier if ctrl else Qt.KeyboardModifier.NoModifier,
        Qt.ScrollPhase.NoScrollPhase,
        False,
    )
    QApplication.sendEvent(viewport, event)


def _mouse(plot: pg.PlotWidget, kind: QMouseEvent.Type) -> None:
    """A press or double-click in the chart's middle, sent where the chart's filter sees it."""
    pos = QPointF(plot.viewport().rect().center())
    event = QMouseEvent(
        kind,
        pos,
        QPointF(plot.viewport().mapToGlobal(pos.toPoint())),
        Qt.MouseButton.LeftButton,
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.NoModifier,
    )
    QApplication.sendEvent(plot.viewport(), event)


def _view(plot: pg.PlotWidget) -> list[list[float]]:
    return [[float(a), float(b)] for a, b in plot.getPlotItem().getViewBox().viewRange()]


def _chart(qtbot: QtBot) -> tuple[pg.PlotWidget, ChartBehaviour, QScrollArea]:
    plot = pg.PlotWidget(background=None)
    plot.setMinimumHeight(150)
    chart = install_chart_behaviour(plot, non_negative_y=True, integer_x=True)
    plot.plot([0, 1, 2, 3], [10.0, 12.0, 11.0, 13.0])
    scroll = _in_scroll_area(qtbot, plot)
    qtbot.waitUntil(lambda: _view(plot)[1][1] >= 13.0)  # auto-range fitted the data
    return plot, chart, scroll


def test_the_wheel_scrolls_the_panel_not_the_chart(qtbot: QtBot) -> None:
    plot, chart, scroll = _chart(qtbot)
    before = _view(plot)
    bar = scroll.verticalScrollBar()
    _wheel(plot, up=False)
    assert bar.value() > 300  # the panel scrolled down
    assert _view(plot) == before
    assert not chart.zoomed and chart.reset_button.isHidden()


def test_ctrl_wheel_zooms_and_reset_restores(qtbot: QtBot) -> None:
    plot, chart, scroll = _chart(qtbot)
    before = _view(plot)
    _wheel(plot, ctrl=True)
    zoomed = _view(plot)
    assert zoomed != before
    assert zoomed[0][1] - zoomed[0][0] < before[0][1] - before[0][0]  # narrower: zoomed in
    assert scroll.verticalScrollBar().value() == 300
    assert chart.zoomed and chart.reset_button.isVisible()
    # New data while zoomed leaves the user's view alone ...
    plot.getPlotItem().listDataItems()[0].setData([0, 1, 2, 3, 4, 5], [10.0, 12.0, 11.0, 13.0, 30.0, 31.0])
    assert _view(plot) == zoomed
    # ... Reset zoom fits the data again and follows it.
    qtbot.mouseClick(chart.reset_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: _view(plot)[1][1] >= 31.0 and _view(plot)[0][1] >= 5.0)
    assert not chart.zoomed and chart.reset_button.isHidden()


def test_a_clicked_chart_takes_the_wheel_until_the_pointer_leaves(qtbot: QtBot) -> None:
    plot, chart, scroll = _chart(qtbot)
    before = _view(plot)
    _mouse(plot, QMouseEvent.Type.MouseButtonPress)
    _wheel(plot)
    assert _view(plot) != before and chart.zoomed
    assert scroll.verticalScrollBar().value() == 300
    # A double-click is the reset too.
    _mouse(plot, QMouseEvent.Type.MouseButtonDblClick)
    assert not chart.zoomed
    qtbot.waitUntil(lambda: _view(plot)[1][0] >= 0 and _view(plot)[1][1] >= 13.0)
    # Once the pointer left the chart (and it lost the focus), the wheel is the panel's again.
    QApplication.sendEvent(plot.viewport(), QEvent(QEvent.Type.Leave))
    plot.clearFocus()
    settled = _view(plot)
    _wheel(plot, up=False)
    assert _view(plot) == settled
    assert scroll.verticalScrollBar().value() > 300


def test_an_empty_speed_chart_shows_no_negative_speed(qtbot: QtBot) -> None:
    plot = pg.PlotWidget(background=None)
    install_chart_behaviour(plot, non_negative_y=True)
    plot.plot([], [])
    scroll = _in_scroll_area(qtbot, plot)
    y0, y1 = _view(plot)[1]
    assert y0 >= 0 and y1 > y0
    # Not even by a zoom out or a drag.
    _wheel(plot, ctrl=True, up=False)
    _wheel(plot, ctrl=True, up=False)
    assert _view(plot)[1][0] >= 0
    assert scroll.verticalScrollBar().value() == 300


@pytest.mark.parametrize("since_start", [False, True])
def test_live_plots_keep_the_behaviour(qtbot: QtBot, since_start: bool) -> None:
    plot = LivePlot("Generation speed", "t/s", window_s=5, non_negative=True, since_start=since_start)
    scroll = _in_scroll_area(qtbot, plot)
    assert plot.y_range()[0] >= 0 and plot.y_range()[1] > 0  # empty: 0..1, not -0.5..0.5
    t0 = 0.0 if since_start else 100.0
    for i in range(20):
        plot.append("per token", t0 + i * 0.2, 50.0 + i)
    plot.flush()
    fitted = (plot.x_range(), plot.y_range())
    _wheel(plot.plot_widget, up=False)
    assert (plot.x_range(), plot.y_range()) == fitted and scroll.verticalScrollBar().value() > 300
    _wheel(plot.plot_widget, ctrl=True)
    zoomed = (plot.x_range(), plot.y_range())
    assert zoomed != fitted and plot.chart.zoomed
    plot.append("per token", t0 + 30.0, 500.0)  # far out: would move the view if it followed
    plot.flush()
    assert (plot.x_range(), plot.y_range()) == zoomed
    plot.chart.reset()
    assert plot.y_range()[1] >= 500.0 and plot.y_range()[0] >= 0
    if since_start:
        assert plot.x_range()[1] >= 30.0


def test_counted_axes_tick_on_whole_numbers(qtbot: QtBot) -> None:
    axis = IntegerAxis("bottom")
    for lo, hi in ((0.0, 1.0), (0.0, 2.5), (-0.3, 4.2), (0.0, 130.0)):
        levels = axis.tickValues(lo, hi, 300)
        values = [v for _spacing, vs in levels for v in vs]
        assert values and all(float(v).is_integer() for v in values), (lo, hi, levels)
