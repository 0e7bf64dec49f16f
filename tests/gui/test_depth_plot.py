"""The Performance panel's depth plot and pg table, fed by a real depth sweep on the demo model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import QSettings, Qt
from PySide6.QtWidgets import QSpinBox
from pytestqt.qtbot import QtBot

from app.bench.batched import result_pg_figures
from app.bench.history import HistoryStore
from ui.main_window import MainWindow
from widgets.depth_plot import DepthPlot
from widgets.table_fit import stacked

WAIT_MS = 180_000


@pytest.fixture()
def window(qtbot: QtBot, tmp_path: Path, demo_model: str) -> Iterator[MainWindow]:
    settings = QSettings(str(tmp_path / "llamascope.ini"), QSettings.Format.IniFormat)
    win = MainWindow(settings=settings, history=HistoryStore(str(tmp_path / "history.sqlite3")))
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: demo_model in win.model_panel._infos, timeout=WAIT_MS)
    win.model_panel.findChild(QSpinBox, "field_n_ctx").setValue(512)
    win.model_panel.findChild(QSpinBox, "field_n_threads").setValue(1)
    yield win
    win.close()


def test_a_depth_sweep_is_plotted_and_its_pg_tests_tabulated(qtbot: QtBot, window: MainWindow) -> None:
    perf = window.performance_panel
    assert perf.depth_plot.isHidden() and perf.pg_table.isHidden()  # nothing to show yet
    perf.bench_pp.setText("0")
    perf.bench_tg.setText("4")
    perf.bench_pg.setText("16,4")
    perf.bench_depth.setText("0,32")
    perf.bench_threads.setText("1")
    perf.bench_reps.setValue(2)
    with qtbot.waitSignal(window.bridge.benchmark_finished, timeout=WAIT_MS) as finished:
        qtbot.mouseClick(perf.bench_run, Qt.MouseButton.LeftButton)
    results, _run_ids = finished.args[0]
    by_name = {r.test.name: r for r in results}
    assert set(by_name) == {"tg4", "pp16+tg4", "tg4 @ d32", "pp16+tg4 @ d32"}

    # One curve per test shape, its points the mean t/s at each depth.
    assert not perf.depth_plot.isHidden()
    assert perf.depth_plot.series_data() == {
        "tg4": (
            [0.0, 32.0],
            [pytest.approx(by_name["tg4"].avg_ts), pytest.approx(by_name["tg4 @ d32"].avg_ts)],
        ),
        "pp16+tg4": (
            [0.0, 32.0],
            [pytest.approx(by_name["pp16+tg4"].avg_ts), pytest.approx(by_name["pp16+tg4 @ d32"].avg_ts)],
        ),
    }

    # The pg tests as batched-bench reports them: TTFT is T_PP in ms.
    assert not perf.pg_table.isHidden()
    assert perf.pg_table.rowCount() == 2
    first = result_pg_figures(by_name["pp16+tg4"])
    assert first is not None
    assert perf.pg_table.item(0, 0).text() == "pp16+tg4"
    assert perf.pg_table.item(0, 1).text() == stacked(first.ttft_ms.text(".1f"))
    assert perf.pg_table.item(0, 4).text() == stacked(first.s_tg_ts.text(".2f"))

    # The same results given at once draw the same curves; cleared, the plot hides.
    plot = DepthPlot()
    qtbot.addWidget(plot)
    plot.set_results(results)
    assert plot.series_data() == perf.depth_plot.series_data()
    plot.clear()
    assert plot.series_data() == {} and plot.isHidden()
    plot.set_results([r for r in results if r.n_depth == 0])  # one depth: nothing to plot against
    assert plot.isHidden()
