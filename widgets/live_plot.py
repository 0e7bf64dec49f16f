"""A live plot of named curves over a sliding time window, fed one sample at a time.

The pyqtgraph way (docs/architecture.md, "Live plots"): each curve is created once, samples go into numpy ring
buffers, and one QTimer (100 ms) calls `setData` only when new samples arrived since its last
tick — never a clear-and-replot per sample. Thin cosmetic pens, clip-to-view and peak
downsampling keep a 15-minute window cheap to draw.
"""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QEvent, QSize, Qt, QTimer
from PySide6.QtGui import (
    QColor,
    QFont,
    QFontMetrics,
    QHideEvent,
    QPainter,
    QPaintEvent,
    QPalette,
    QResizeEvent,
    QShowEvent,
)
from PySide6.QtWidgets import QGraphicsItem, QSizePolicy, QVBoxLayout, QWidget

from widgets.chart import EMPTY_SPEED_RANGE, install_chart_behaviour

PALETTE = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#7f7f7f",
    "#bcbd22",
)


def cache_axes(plot: pg.PlotItem) -> None:
    """Keep each axis as a cached pixmap. pyqtgraph replays an axis's drawing (ticks and text)
    on every repaint of the plot; cached, a repaint where only the curves moved blits the axes
    instead, about 5 times cheaper per repaint. pyqtgraph calls `update()` whenever an axis's
    range or labels change, which invalidates the cache, so the drawing is unchanged."""
    for name in ("left", "bottom", "right", "top"):
        plot.getAxis(name).setCacheMode(QGraphicsItem.CacheMode.DeviceCoordinateCache)


def _nice_step(x: float) -> float:
    """The smallest of 1, 2, 2.5 and 5 times a power of ten that is at least x (x > 0)."""
    power = 10 ** math.floor(math.log10(x))
    for m in (1, 2, 2.5, 5, 10):
        if m * power >= x:
            return m * power
    return 10 * power


def nice_range(lo: float, hi: float) -> tuple[float, float]:
    """A y range with round ends holding [lo, hi]: ticks land on round numbers."""
    if hi <= lo:
        half = abs(hi) * 0.5 or 0.5
        lo, hi = lo - half, hi + half
    step = _nice_step((hi - lo) / 4)
    digits = max(0, 2 - math.floor(math.log10(step)))  # 0.6, not 0.6000000000000001
    return round(math.floor(lo / step) * step, digits), round(math.ceil(hi / step) * step, digits)


def keeps_range(current: tuple[float, float], lo: float, hi: float) -> bool:
    """Whether a y range still suits data spanning [lo, hi]: it holds the data and the data fill
    at least a third of it. Changing the range only then keeps the axis (a cached picture) and
    the reader's eye still while values wobble."""
    a, b = current
    return a <= lo and hi <= b and (hi - lo) >= (b - a) / 3


class _Ring:
    """Times and values in a ring buffer written twice (at i and i + capacity), so the newest
    `n` samples are always one contiguous slice: no copy, no concatenation per refresh."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._t = np.zeros(2 * capacity)
        self._v = np.full(2 * capacity, np.nan)
        self._head = 0
        self.n = 0

    def append(self, t: float, v: float) -> None:
        i = self._head
        self._t[i] = self._t[i + self.capacity] = t
        self._v[i] = self._v[i + self.capacity] = v
        self._head = (i + 1) % self.capacity
        self.n = min(self.n + 1, self.capacity)

    def extend(self, t: np.ndarray, v: np.ndarray) -> None:
        """Append many samples at once (the last `capacity` of them are kept)."""
        t, v = t[-self.capacity :], v[-self.capacity :]
        n = len(t)
        idx = (self._head + np.arange(n)) % self.capacity
        self._t[idx] = self._t[idx + self.capacity] = t
        self._v[idx] = self._v[idx + self.capacity] = v
        self._head = (self._head + n) % self.capacity
        self.n = min(self.n + n, self.capacity)

    def view(self) -> tuple[np.ndarray, np.ndarray]:
        start = (self._head - self.n) % self.capacity
        return self._t[start : start + self.n], self._v[start : start + self.n]

    def last_t(self) -> float | None:
        return float(self._t[(self._head - 1) % self.capacity]) if self.n else None

    def clear(self) -> None:
        self._head = 0
        self.n = 0


Segment = tuple[str, QColor | None, bool]  # (text, swatch colour or None, bold)
_BREAK: Segment = ("\n", None, False)


class ReadoutLabel(QWidget):
    """Text that changes every tick, painted directly: a QLabel would ask the whole panel to lay
    itself out again on every setText (that cost as much CPU as the plots). It wraps between
    segments and asks for a new layout only when its number of lines changes.
    """

    def __init__(self, text: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._segments: list[Segment] = []
        self._reserved: list[Segment] = []  # the widest each segment is expected to get (see set_reserved)
        self._lines = 1
        self._fonts: tuple[tuple[QFont, QFontMetrics], tuple[QFont, QFontMetrics]] | None = None
        sp = self.sizePolicy()
        sp.setHeightForWidth(True)
        sp.setHorizontalPolicy(QSizePolicy.Policy.Preferred)
        sp.setVerticalPolicy(QSizePolicy.Policy.Fixed)
        self.setSizePolicy(sp)
        if text:
            self.set_text(text)

    # ---- content -----------------------------------------------------------------------------
    def set_text(self, text: str) -> None:
        """Plain text; it may wrap after each " · " and always breaks at a newline."""
        segments: list[Segment] = []
        for i, line in enumerate(text.split("\n")):
            if i:
                segments.append(_BREAK)
            parts = line.split(" · ")
            segments += [(part + " ·", None, False) for part in parts[:-1]]
            segments.append((parts[-1], None, False))
        self.set_segments(segments)

    def set_segments(self, segments: list[Segment]) -> None:
        """Segments wrap as units: (text, colour of a ■ swatch before it or None, bold).

        The number of lines only grows while the width stays the same: a value that wobbles
        between wrapping and not wrapping would otherwise resize everything below it every tick.
        """
        if segments == self._segments:
            return
        self._segments = list(segments)
        lines = self._count_lines(self.width() if self.width() > 0 else 10_000)
        if lines > self._lines:
            self._lines = lines
            self.updateGeometry()
        self.update()

    def set_reserved(self, segments: list[Segment]) -> None:
        """The widest text each segment is expected to show (same order and length as the segments):
        each segment then keeps at least that width, so a value that arrives or grows moves nothing
        and never makes the label wrap anew."""
        if segments == self._reserved:
            return
        self._reserved = list(segments)
        self._lines = self._count_lines(self.width() if self.width() > 0 else 10_000)
        self.updateGeometry()
        self.update()

    def text(self) -> str:
        return " ".join(t for t, _c, _b in self._segments if (t, _c, _b) != _BREAK)

    # ---- geometry ----------------------------------------------------------------------------
    def _font(self, bold: bool) -> tuple[QFont, QFontMetrics]:
        """The normal or the bold font and its metrics, made once per font change."""
        if self._fonts is None:
            normal, bold_font = QFont(self.font()), QFont(self.font())
            bold_font.setBold(True)
            self._fonts = ((normal, QFontMetrics(normal)), (bold_font, QFontMetrics(bold_font)))
        return self._fonts[bold]

    def _metrics(self, bold: bool) -> QFontMetrics:
        return self._font(bold)[1]

    def _segment_width(self, segment: Segment) -> int:
        text, colour, bold = segment
        metrics = self._metrics(bold)
        swatch = metrics.height() if colour is not None else 0
        return swatch + metrics.horizontalAdvance(text)

    def _flow(self, width: int) -> list[list[tuple[int, Segment]]]:
        gap = self._metrics(False).horizontalAdvance("  ")
        lines: list[list[tuple[int, Segment]]] = [[]]
        x = 0
        reserved = self._reserved if len(self._reserved) == len(self._segments) else []
        for i, segment in enumerate(self._segments):
            if segment == _BREAK:
                lines.append([])
                x = 0
                continue
            w = self._segment_width(segment)
            if reserved:
                w = max(w, self._segment_width(reserved[i]))
            if lines[-1] and x + w > width:
                lines.append([])
                x = 0
            lines[-1].append((x, segment))
            x += w + gap
        return lines

    def _count_lines(self, width: int) -> int:
        return max(1, len(self._flow(width)))

    def hasHeightForWidth(self) -> bool:  # noqa: N802 (Qt override)
        return True

    def heightForWidth(self, width: int) -> int:  # noqa: N802 (Qt override)
        lines = self._count_lines(width)
        if width == self.width():
            lines = max(lines, self._lines)  # as set_segments keeps it
        return lines * self.fontMetrics().lineSpacing() + 2

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt override)
        return QSize(200, self._lines * self.fontMetrics().lineSpacing() + 2)

    def minimumSizeHint(self) -> QSize:  # noqa: N802 (Qt override)
        return QSize(50, self.fontMetrics().lineSpacing() + 2)

    def changeEvent(self, event: QEvent) -> None:  # noqa: N802 (Qt override)
        super().changeEvent(event)
        if event.type() == QEvent.Type.FontChange:
            self._fonts = None
            self._lines = self._count_lines(self.width() if self.width() > 0 else 10_000)
            self.updateGeometry()

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802 (Qt override)
        super().resizeEvent(event)
        if event.size().width() == event.oldSize().width():
            return
        lines = self._count_lines(event.size().width())
        if lines != self._lines:
            self._lines = lines
            self.updateGeometry()

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 (Qt override)
        painter = QPainter(self)
        line_height = self.fontMetrics().lineSpacing()
        ascent = self.fontMetrics().ascent()
        painter.setPen(self.palette().color(QPalette.ColorRole.WindowText))
        for row, line in enumerate(self._flow(self.width())):
            y = row * line_height + 1
            for x, (text, colour, bold) in line:
                font, metrics = self._font(bold)
                painter.setFont(font)
                if colour is not None:
                    size = metrics.height() // 2
                    painter.fillRect(x + 1, y + (line_height - size) // 2, size, size, colour)
                    x += metrics.height()
                painter.drawText(x, y + ascent, text)
        painter.end()


class ValueLabel(QWidget):
    """One line of plain text that changes often (a live figure), painted directly.

    A QLabel asks its whole panel to lay itself out again on every new text. This asks only when
    a text is wider than any it showed before, so a changing number costs one small repaint and
    the layout around it does not jitter. `reserve` is a sample of the widest expected text.
    """

    def __init__(self, text: str = "", parent: QWidget | None = None, *, reserve: str = "") -> None:
        super().__init__(parent)
        self._text = text
        self._reserve = reserve
        self._hint_width = self._measure()
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)

    def text(self) -> str:
        return self._text

    def setText(self, text: str) -> None:  # noqa: N802 (the QLabel name, so either fits)
        if text == self._text:
            return
        self._text = text
        width = self._measure()
        if width > self._hint_width:
            self._hint_width = width
            self.updateGeometry()
        self.update()

    def _measure(self) -> int:
        metrics = self.fontMetrics()
        return max(metrics.horizontalAdvance(self._text), metrics.horizontalAdvance(self._reserve)) + 2

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt override)
        return QSize(self._hint_width, self.fontMetrics().height() + 2)

    def minimumSizeHint(self) -> QSize:  # noqa: N802 (Qt override)
        return self.sizeHint()

    def changeEvent(self, event: QEvent) -> None:  # noqa: N802 (Qt override)
        super().changeEvent(event)
        if event.type() == QEvent.Type.FontChange:
            self._hint_width = self._measure()
            self.updateGeometry()

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 (Qt override)
        painter = QPainter(self)
        painter.setPen(self.palette().color(QPalette.ColorRole.WindowText))
        text = self.fontMetrics().elidedText(self._text, Qt.TextElideMode.ElideRight, self.width())
        painter.drawText(self.rect(), int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter), text)
        painter.end()


class _Curve:
    def __init__(self, name: str, item: pg.PlotDataItem, capacity: int, colour: QColor) -> None:
        self.name = name
        self.item = item
        self.colour = colour
        self.ring = _Ring(capacity)
        self.latest: float | None = None


class LivePlot(QWidget):
    """A titled plot with a readout of each curve's latest value; x is seconds before now.

    `append(name, t, value)` takes a monotonic time in seconds and a value (None = not measured,
    drawn as a gap). The plot refreshes at most every REFRESH_MS while visible.

    With `since_start`, x is instead the time itself (seconds since something began, e.g. a
    generation) and the x range grows in round steps from `window_s` to hold every sample, so a
    run of any length fills the plot.
    """

    REFRESH_MS = 100

    def __init__(
        self,
        title: str,
        unit: str,
        window_s: float = 60.0,
        *,
        capacity: int = 9000,  # 15 minutes at 10 samples per second
        y_range: tuple[float, float] | None = None,
        non_negative: bool = False,
        value_format: str = ".1f",
        reserve: str = "",
        height: int = 110,
        refresh_ms: int | None = None,
        since_start: bool = False,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self._since_start = since_start
        self._x_max = window_s
        self.title = title
        self.unit = unit
        self._window_s = float(window_s)
        self._capacity = capacity
        self._value_format = value_format
        # A sample of the widest value ("9999.9"): each curve's readout keeps that room from the start,
        # so the header neither wraps anew nor shifts the panel when values arrive.
        self._reserve = reserve
        self._curves: dict[str, _Curve] = {}
        self._dirty = False

        self.header = ReadoutLabel()
        self.header.setObjectName("livePlotHeader")
        self.plot_widget = pg.PlotWidget(background=None)
        self.plot_widget.setMinimumHeight(height)
        self.plot_widget.setMaximumHeight(int(height * 1.6))
        item = self.plot_widget.getPlotItem()
        item.setClipToView(True)
        item.setDownsampling(auto=True, mode="peak")
        cache_axes(item)
        item.showGrid(x=False, y=True, alpha=0.25)
        item.getAxis("left").setWidth(42)
        item.getAxis("left").enableAutoSIPrefix(False)  # 0.3 GiB, not "300" under "GiB (x0.001)"
        item.setLabel("left", units=None, text=unit)
        # The y range is set here, not by pyqtgraph's auto-range: that repaints the plot a second
        # time after each new sample (the range is worked out during the first paint) and changes
        # the axis on every wobble of the data. Here it moves in round steps, only when needed.
        self._auto_y = y_range is None
        self._fixed_y = y_range
        self._non_negative = non_negative
        self._y_range: tuple[float, float] | None = None
        item.enableAutoRange(axis="y", enable=False)
        item.enableAutoRange(axis="x", enable=False)
        if y_range is not None:
            item.setYRange(*y_range, padding=0.05)
        elif non_negative:
            item.setYRange(*EMPTY_SPEED_RANGE, padding=0)  # not pyqtgraph's empty -0.5..0.5
        self._apply_x_range()
        # The wheel scrolls the panel unless the plot was clicked or Ctrl is held; a zoom holds until
        # Reset zoom (or a double-click) gives the view back to flush().
        self.chart = install_chart_behaviour(
            self.plot_widget, on_reset=self._reset_view, non_negative_y=non_negative
        )

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.header)
        layout.addWidget(self.plot_widget)

        # Single-shot, started by the first new sample after a redraw: an idle plot wakes nobody.
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(refresh_ms or self.REFRESH_MS)
        self._timer.timeout.connect(self.flush)
        self._update_header()

    # ---- feeding -----------------------------------------------------------------------------
    def add_curve(self, name: str, color: str | None = None, *, width: float = 1.0) -> None:
        """Add a curve (once; adding an existing name does nothing)."""
        if name in self._curves:
            return
        color = color or PALETTE[len(self._curves) % len(PALETTE)]
        pen = pg.mkPen(color, width=width)
        pen.setCosmetic(True)
        item = self.plot_widget.getPlotItem().plot(name=name, pen=pen, connect="finite", antialias=False)
        self._curves[name] = _Curve(name, item, self._capacity, QColor(color))
        self._update_header()

    def has_curve(self, name: str) -> bool:
        return name in self._curves

    def curve_names(self) -> list[str]:
        return list(self._curves)

    def append(self, name: str, t: float, value: float | None) -> None:
        """Add a sample to curve `name` (created if new); a time before the curve's last is dropped."""
        if name not in self._curves:
            self.add_curve(name)
        curve = self._curves[name]
        last = curve.ring.last_t()
        if not math.isfinite(t) or (last is not None and t < last):
            return
        v = float(value) if value is not None and math.isfinite(value) else math.nan
        curve.ring.append(t, v)
        curve.latest = None if math.isnan(v) else v
        self._mark_dirty()

    def extend(self, name: str, t: np.ndarray, values: np.ndarray) -> None:
        """Add many samples to curve `name` at once: times ascending, NaN = not measured.
        Samples before the curve's last time are dropped, as `append` drops them."""
        if name not in self._curves:
            self.add_curve(name)
        curve = self._curves[name]
        t = np.asarray(t, dtype=float)
        v = np.asarray(values, dtype=float)
        last = curve.ring.last_t()
        keep = np.isfinite(t)
        if last is not None:
            keep &= t >= last
        t, v = t[keep], v[keep]
        if not len(t):
            return
        curve.ring.extend(t, v)
        curve.latest = None if math.isnan(v[-1]) else float(v[-1])
        self._mark_dirty()

    def _mark_dirty(self) -> None:
        self._dirty = True
        if not self._timer.isActive() and self.isVisible():
            self._timer.start()

    def set_window(self, window_s: float) -> None:
        self._window_s = float(window_s)
        self._apply_x_range()
        self._mark_dirty()

    @property
    def window_s(self) -> float:
        return self._window_s

    def clear(self) -> None:
        for curve in self._curves.values():
            curve.ring.clear()
            curve.latest = None
        if self.chart.zoomed:
            self.chart.reset()  # new data from nothing: the old zoom means nothing for it
        if self._since_start:
            self._apply_x_range()
        self._mark_dirty()

    def latest(self, name: str) -> float | None:
        curve = self._curves.get(name)
        return curve.latest if curve else None

    def data(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """The samples the curve shows now (x in seconds before the newest sample), as drawn."""
        x, y = self._curves[name].item.getOriginalDataset()
        if x is None or y is None:
            return np.array([]), np.array([])
        return np.asarray(x), np.asarray(y)

    # ---- drawing -----------------------------------------------------------------------------
    def flush(self) -> bool:
        """Hand new samples to pyqtgraph; True if anything was redrawn."""
        if not self._dirty:
            return False
        window = self.window()
        if window is not None and window.isMinimized():
            return False  # keep the samples; draw them when the window is restored
        self._dirty = False
        lasts = [last for c in self._curves.values() if (last := c.ring.last_t()) is not None]
        now = max(lasts) if lasts else 0.0
        lo, hi = math.inf, -math.inf
        follow = not self.chart.zoomed  # a view the user zoomed to stays put
        if self._since_start and now > self._x_max:
            self._x_max = _nice_step(now)  # grows in round steps: the axis is redrawn rarely
            if follow:
                self.plot_widget.getPlotItem().setXRange(0, self._x_max, padding=0)
        for curve in self._curves.values():
            t, v = curve.ring.view()
            first = 0 if self._since_start else int(np.searchsorted(t, now - self._window_s, side="left"))
            shown = v[first:]
            if self._auto_y and np.isfinite(shown).any():
                lo, hi = min(lo, float(np.nanmin(shown))), max(hi, float(np.nanmax(shown)))
            curve.item.setData(t[first:] if self._since_start else t[first:] - now, shown, connect="finite")
        if follow and lo <= hi and (self._y_range is None or not keeps_range(self._y_range, lo, hi)):
            pad = 0.05 * (hi - lo)  # a little room, so the extremes do not run along the frame
            self._y_range = nice_range(max(0.0, lo - pad) if lo >= 0 else lo - pad, hi + pad)
            if self._non_negative:
                self._y_range = (max(0.0, self._y_range[0]), max(self._y_range[1], 1e-9))
            self.plot_widget.getPlotItem().setYRange(*self._y_range, padding=0)
        self._update_header()
        return True

    def _reset_view(self) -> None:
        """Reset zoom: the window's own x range and a y range fitted to the data, as before the zoom."""
        item = self.plot_widget.getPlotItem()
        self._y_range = None
        if self._fixed_y is not None:
            item.setYRange(*self._fixed_y, padding=0.05)
        elif self._non_negative:
            item.setYRange(*EMPTY_SPEED_RANGE, padding=0)
        if self._since_start:
            lasts = [last for c in self._curves.values() if (last := c.ring.last_t()) is not None]
            self._x_max = max(self._window_s, _nice_step(max(lasts)) if lasts and max(lasts) > 0 else 0.0)
            item.setXRange(0, self._x_max, padding=0)
        else:
            item.setXRange(-self._window_s, 0, padding=0)
        self._dirty = True
        self.flush()

    def y_range(self) -> tuple[float, float]:
        """The y range shown now."""
        (_x0, _x1), (y0, y1) = self.plot_widget.getPlotItem().viewRange()
        return float(y0), float(y1)

    def _apply_x_range(self) -> None:
        if self._since_start:
            self._x_max = self._window_s
            self.plot_widget.getPlotItem().setXRange(0, self._x_max, padding=0)
        else:
            self.plot_widget.getPlotItem().setXRange(-self._window_s, 0, padding=0)

    def x_range(self) -> tuple[float, float]:
        """The x range shown now."""
        (x0, x1), _y = self.plot_widget.getPlotItem().viewRange()
        return float(x0), float(x1)

    def _update_header(self) -> None:
        segments: list[Segment] = [(self.title, None, True)]
        reserved: list[Segment] = [(self.title, None, True)]
        for curve in self._curves.values():
            value = "n/a" if curve.latest is None else f"{curve.latest:{self._value_format}} {self.unit}"
            segments.append((f"{curve.name} {value}", curve.colour, False))
            reserved.append((f"{curve.name} {self._reserve} {self.unit}", curve.colour, False))
        if self._reserve:
            self.header.set_reserved(reserved)  # first: the segments below then fit the room it keeps
        self.header.set_segments(segments)

    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 (Qt override)
        super().showEvent(event)
        self.flush()  # samples that arrived while hidden

    def hideEvent(self, event: QHideEvent) -> None:  # noqa: N802 (Qt override)
        self._timer.stop()
        super().hideEvent(event)
