"""t/s against KV-cache depth: the results of a depth sweep (`-d 0,512,1024,...`) as one curve per
test shape and configuration.

The habits of widgets/live_plot.py: each series' curve and error bars are created once, when its
first result arrives, and every later result only calls `setData` on them; thin cosmetic pens,
cached axes. Results arrive seconds apart, one at a time, so each one redraws at once: there is
nothing to coalesce, and so no timer. The plot shows itself only when the results span at least
two depths; a benchmark at one depth has nothing to draw here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from app.bench.batched import depth_series, depths_of
from app.bench.runner import BenchResult
from widgets.chart import install_chart_behaviour
from widgets.live_plot import PALETTE, cache_axes


class DepthPlot(QWidget):
    """Mean t/s (± standard deviation as error bars) against depth, one curve per series."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("depthPlot")
        self.caption = QLabel("t/s against KV-cache depth")
        self.plot_widget = pg.PlotWidget(background=None)
        self.plot_widget.setMinimumHeight(140)
        self.plot_widget.setLabel("left", "t/s")
        self.plot_widget.setLabel("bottom", "depth (tokens in the KV cache before the test)")
        self.plot_widget.showGrid(x=True, y=True, alpha=0.3)
        self.legend = self.plot_widget.addLegend(offset=(-5, 5))
        cache_axes(self.plot_widget.getPlotItem())
        # The wheel scrolls the panel unless the plot was clicked or Ctrl is held; t/s never below 0.
        self.chart = install_chart_behaviour(self.plot_widget, non_negative_y=True)
        self.setToolTip(
            "Each test at every depth of the sweep (-d): the KV cache is filled with that many tokens, "
            "untimed, before the test runs. Points are the mean t/s over the repetitions, bars ± one "
            "standard deviation."
        )
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.caption)
        layout.addWidget(self.plot_widget)
        self._results: list[BenchResult] = []
        self._curves: dict[str, pg.PlotDataItem] = {}
        self._bars: dict[str, pg.ErrorBarItem] = {}
        self.setVisible(False)

    # ---- data ----------------------------------------------------------------------------------
    def clear(self) -> None:
        """Forget the results and their series (a new benchmark has series of its own)."""
        self._results = []
        for label, curve in self._curves.items():
            self.legend.removeItem(curve)
            self.plot_widget.removeItem(curve)
            self.plot_widget.removeItem(self._bars[label])
        self._curves.clear()
        self._bars.clear()
        self.setVisible(False)

    def add_result(self, result: BenchResult) -> None:
        self._results.append(result)
        self._redraw()

    def set_results(self, results: Sequence[BenchResult]) -> None:
        self.clear()
        self._results = list(results)
        self._redraw()

    def series_data(self) -> dict[str, tuple[list[float], list[float]]]:
        """What each curve shows: its depths and mean t/s (for tests and the report)."""
        out = {}
        for label, curve in self._curves.items():
            x, y = curve.getData()
            out[label] = (
                [] if x is None else [float(v) for v in x],
                [] if y is None else [float(v) for v in y],
            )
        return out

    # ---- drawing -------------------------------------------------------------------------------
    def _redraw(self) -> None:
        for series in depth_series(self._results):
            x = np.array([p.depth for p in series.points], dtype=float)
            y = np.array([p.avg_ts for p in series.points], dtype=float)
            sd = np.array([p.stddev_ts for p in series.points], dtype=float)
            curve = self._curves.get(series.label) or self._new_series(series.label)
            curve.setData(x, y)
            self._bars[series.label].setData(x=x, y=y, height=2 * sd)
        self.setVisible(len(depths_of(self._results)) >= 2)

    def _new_series(self, label: str) -> pg.PlotDataItem:
        colour = PALETTE[len(self._curves) % len(PALETTE)]
        curve = self.plot_widget.plot(
            [], [], pen=pg.mkPen(colour, width=1), symbol="o", symbolSize=6, symbolBrush=colour, name=label
        )
        bars = pg.ErrorBarItem(x=np.zeros(0), y=np.zeros(0), height=np.zeros(0), beam=0, pen=pg.mkPen(colour))
        self.plot_widget.addItem(bars)
        self._curves[label] = curve
        self._bars[label] = bars
        return curve


__all__ = ["DepthPlot"]
