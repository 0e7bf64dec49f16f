"""How every chart in the window treats the mouse: one behaviour, installed on each pyqtgraph plot.

Charts sit in scrolling panels. A chart that took every wheel event would zoom while the user only
meant to scroll past it (the history chart once zoomed itself to 0…−75 t/s that way, with no way back
in sight). So:

* the wheel scrolls the panel, unless the chart was clicked (the user is working with it) or Ctrl is
  held; then it zooms, as pyqtgraph does;
* a zoom or a drag is the user's view: new data no longer moves it. A "Reset zoom" button appears in
  the chart's corner and a double-click does the same: the chart fits its data again and follows new
  data as before;
* a speed axis never goes below 0 (an empty chart shows 0…1, not −0.5…0.5);
* a trial, step or run axis has ticks on whole numbers only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import pyqtgraph as pg
from PySide6.QtCore import QEvent, QObject, Qt
from PySide6.QtGui import QMouseEvent, QWheelEvent
from PySide6.QtWidgets import QToolButton

from widgets.wheel_guard import scroll_enclosing_area

EMPTY_SPEED_RANGE = (0.0, 1.0)


class IntegerAxis(pg.AxisItem):
    """An axis of counted things (trials, runs, steps): ticks only on whole numbers."""

    def tickValues(self, minVal: float, maxVal: float, size: float) -> list[tuple[float, list[float]]]:  # noqa: N802,N803 (pyqtgraph override)
        levels = [
            (spacing, [v for v in values if float(v).is_integer()])
            for spacing, values in super().tickValues(minVal, maxVal, size)
            if spacing >= 1
        ]
        if not levels and math.isfinite(minVal) and math.isfinite(maxVal):
            first, last = math.ceil(minVal), math.floor(maxVal)
            if last - first <= 50:  # a narrow view (a zoom) still gets its whole numbers
                levels = [(1.0, [float(v) for v in range(first, last + 1)])]
        return levels


def use_integer_axis(plot: pg.PlotWidget | pg.PlotItem, name: str = "bottom") -> None:
    """Replace the `name` axis with an IntegerAxis, keeping its label."""
    item = plot.getPlotItem() if isinstance(plot, pg.PlotWidget) else plot
    old = item.getAxis(name)
    axis = IntegerAxis(name)
    item.setAxisItems({name: axis})
    label = old.labelText
    if label:
        axis.setLabel(label, units=old.labelUnits or None)


class ChartBehaviour(QObject):
    """The shared mouse behaviour of one pyqtgraph PlotWidget (see the module's doc).

    `on_reset` puts the chart's own view back (a live plot has its own ranges); without it the chart
    uses pyqtgraph's auto-range, which follows new data until the user zooms. `zoomed` says whether
    the user's view holds; a chart that sets its own ranges asks it before moving the view.
    """

    def __init__(
        self,
        plot_widget: pg.PlotWidget,
        *,
        on_reset: Callable[[], None] | None = None,
        non_negative_y: bool = False,
    ) -> None:
        super().__init__(plot_widget)
        self.plot_widget = plot_widget
        self._on_reset = on_reset
        self._non_negative_y = non_negative_y
        self._engaged = False  # clicked since the pointer came in: the wheel is the chart's
        self.zoomed = False
        item = plot_widget.getPlotItem()
        item.hideButtons()  # pyqtgraph's "A" shows only on hover; the reset button below is always seen
        item.setMenuEnabled(False)
        view = item.getViewBox()
        view.setMouseEnabled(x=True, y=True)
        if non_negative_y:
            view.setLimits(yMin=0.0)
            (_x, (y0, y1)) = view.viewRange()
            if y0 < 0:
                view.setYRange(*EMPTY_SPEED_RANGE, padding=0)
        view.sigRangeChangedManually.connect(self._on_user_range)
        plot_widget.setFocusPolicy(Qt.FocusPolicy.ClickFocus)

        self.reset_button = QToolButton(plot_widget)
        self.reset_button.setObjectName("resetZoom")
        self.reset_button.setText("Reset zoom")
        self.reset_button.setToolTip("Fit the chart to its data again and follow new data (or double-click)")
        self.reset_button.setCursor(Qt.CursorShape.PointingHandCursor)
        self.reset_button.clicked.connect(self.reset)
        self.reset_button.hide()

        plot_widget.viewport().installEventFilter(self)
        plot_widget.installEventFilter(self)

    # ---- state -----------------------------------------------------------------------------------
    def _on_user_range(self, *_args: Any) -> None:
        self.zoomed = True
        self._place_button()
        self.reset_button.show()
        self.reset_button.raise_()

    def reset(self) -> None:
        """Back to the chart's own view: fit the data and follow new data again."""
        self.zoomed = False
        self.reset_button.hide()
        if self._on_reset is not None:
            self._on_reset()
            return
        view = self.plot_widget.getPlotItem().getViewBox()
        view.enableAutoRange()
        if self._non_negative_y and not _has_data(self.plot_widget):
            view.setYRange(*EMPTY_SPEED_RANGE, padding=0)

    def _place_button(self) -> None:
        hint = self.reset_button.sizeHint()
        self.reset_button.resize(hint)
        self.reset_button.move(max(0, self.plot_widget.width() - hint.width() - 4), 4)

    # ---- events ------------------------------------------------------------------------------------
    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt override)
        kind = event.type()
        if watched is self.plot_widget:
            if kind == QEvent.Type.Resize and self.reset_button.isVisible():
                self._place_button()
            elif kind == QEvent.Type.FocusOut:
                self._engaged = False
            return False
        if kind == QEvent.Type.Wheel:
            assert isinstance(event, QWheelEvent)
            if self.wheel_zooms(event):
                return False  # pyqtgraph zooms
            scroll_enclosing_area(self.plot_widget, event)
            return True
        if kind == QEvent.Type.MouseButtonPress:
            self._engaged = True
        elif kind == QEvent.Type.Leave:
            self._engaged = False
        elif kind == QEvent.Type.MouseButtonDblClick:
            assert isinstance(event, QMouseEvent)
            if event.button() == Qt.MouseButton.LeftButton:
                self.reset()
                return True
        return False

    def wheel_zooms(self, event: QWheelEvent) -> bool:
        """Whether this wheel event is the chart's: it was clicked, has focus, or Ctrl is held."""
        ctrl = bool(event.modifiers() & Qt.KeyboardModifier.ControlModifier)
        return ctrl or self._engaged or self.plot_widget.hasFocus()


ViewRange = tuple[float, float, float, float]  # x0, x1, y0, y1


def labelled_points_range(xs: Sequence[float], ys: Sequence[float]) -> ViewRange:
    """The view of a scatter whose points carry text labels: room around the points for the labels."""
    x_pad = max((max(xs) - min(xs)) * 0.12, max(xs) * 0.05, 1.0)
    y_pad = max((max(ys) - min(ys)) * 0.15, 1e-4)
    return (min(xs) - x_pad, max(xs) + x_pad, min(ys) - y_pad, max(ys) + y_pad)


def set_view(plot_widget: pg.PlotWidget, view: ViewRange | None) -> None:
    """Show exactly `view` (None: leave the view as it is)."""
    if view is not None:
        x0, x1, y0, y1 = view
        plot_widget.setXRange(x0, x1, padding=0)
        plot_widget.setYRange(y0, y1, padding=0)


def _has_data(plot_widget: pg.PlotWidget) -> bool:
    for item in plot_widget.getPlotItem().listDataItems():
        x, _y = item.getData()
        if x is not None and len(x):
            return True
    return False


def install_chart_behaviour(
    plot_widget: pg.PlotWidget,
    *,
    on_reset: Callable[[], None] | None = None,
    non_negative_y: bool = False,
    integer_x: bool = False,
) -> ChartBehaviour:
    """Give `plot_widget` the shared chart behaviour. `non_negative_y` for speeds (t/s never below 0),
    `integer_x` for an axis of trials, runs or steps."""
    if integer_x:
        use_integer_axis(plot_widget, "bottom")
    return ChartBehaviour(plot_widget, on_reset=on_reset, non_negative_y=non_negative_y)


__all__ = [
    "ChartBehaviour",
    "IntegerAxis",
    "ViewRange",
    "install_chart_behaviour",
    "labelled_points_range",
    "set_view",
    "use_integer_axis",
]
