"""The comparison in the Quantization panel's narrow column: the table fits, no header is broken,
every figure is still reachable (tooltips, "Show all columns…"), and no chart label is cut off."""

from __future__ import annotations

from PySide6.QtWidgets import QApplication
from pytestqt.qtbot import QtBot

from app.quality.compare import Comparison, ComparisonRow, quality_score
from widgets.quantization_panel import QuantizationPanel

PANEL_WIDTH = 340  # what the column gets on a 1366 px screen


def row(
    label: str, size_mib: float, kld: float | None, tg: float | None, base: bool = False
) -> ComparisonRow:
    return ComparisonRow(
        label=label,
        type_name=label.split(" ")[0],
        path=f"/models/demo.{label.split(' ')[0]}.gguf",
        is_base=base,
        file_bytes=int(size_mib * 2**20),
        bits_per_weight=16.0 if base else 8.5,
        compression=1.0 if base else 258.0 / size_mib,
        ppl=18.25,
        ppl_uncertainty=0.5,
        delta_ppl_percent=0.0 if base else 1.25,
        mean_kld=kld,
        kld_uncertainty=None,
        same_top_p_percent=None if kld is None else (100.0 if base else 93.5),
        pp_tokens_per_s=410.0,
        tg_tokens_per_s=tg,
        quality_score=quality_score(kld),
    )


COMPARISON = Comparison(
    base_label="F16",
    rows=(
        row("F16 (dequantized copy of Q4_1)", 258.0, 0.0, 31.0, base=True),
        row("Q8_0", 138.0, 0.0021, 52.0),
        row("Q5_0", 94.0, 0.0193, 60.0),
        row("Q4_0", 85.0, 0.0517, 64.0),
    ),
)


def test_the_table_fits_the_column_and_no_header_is_broken(qtbot: QtBot) -> None:
    panel = QuantizationPanel()
    qtbot.addWidget(panel)
    panel.resize(PANEL_WIDTH, 1400)
    panel.show()
    qtbot.waitExposed(panel)
    panel.on_comparison_changed(COMPARISON)
    QApplication.processEvents()

    table = panel.compare_table
    header = table.horizontalHeader()
    assert header.length() <= table.viewport().width()  # no sideways scrolling
    metrics = header.fontMetrics()
    for column in range(1, table.columnCount()):  # every figure's header whole, on one line
        title = table.horizontalHeaderItem(column).text()  # type: ignore[union-attr]
        assert header.sectionSize(column) >= metrics.horizontalAdvance(title), title
    # The base's score is its true value, and the figures left out are in each row's tooltip.
    assert table.item(0, 3).text() == "100.0"  # type: ignore[union-attr]
    tip = table.item(1, 0).toolTip()  # type: ignore[union-attr]
    for figure in ("Same top p %: 93.50", "pp t/s: 410.00", "ΔPPL %: +1.25", "Bits/weight: 8.50"):
        assert figure in tip


def test_show_all_columns_shows_the_whole_table(qtbot: QtBot) -> None:
    panel = QuantizationPanel()
    qtbot.addWidget(panel)
    panel.resize(PANEL_WIDTH, 1400)
    panel.show()
    panel.on_comparison_changed(COMPARISON)
    panel.all_columns_button.click()
    dialog = panel.all_columns_dialog
    assert dialog is not None and dialog.isVisible()
    qtbot.waitExposed(dialog)
    table = panel.all_columns_table
    assert table.columnCount() == len(Comparison.COLUMNS) and table.rowCount() == 4
    header = table.horizontalHeader()
    screen = dialog.screen().availableGeometry().width()
    if header.length() + 120 <= screen:  # the whole table, when the screen is wide enough for it
        assert header.length() <= table.viewport().width()
    else:  # else as wide as the screen allows, scrolling sideways
        assert table.width() >= screen - 120
    for column in range(table.columnCount()):
        title = table.horizontalHeaderItem(column).text()  # type: ignore[union-attr]
        assert header.sectionSize(column) >= header.fontMetrics().horizontalAdvance(title), title
    dialog.close()


def test_no_chart_label_runs_past_the_plot(qtbot: QtBot) -> None:
    panel = QuantizationPanel()
    qtbot.addWidget(panel)
    panel.resize(PANEL_WIDTH, 1400)
    panel.show()
    qtbot.waitExposed(panel)
    panel.on_comparison_changed(COMPARISON)
    QApplication.processEvents()
    panel.chart.grab()  # drawn once: a TextItem places itself against the view when it is painted
    view = panel.chart.getPlotItem().getViewBox()
    box = view.sceneBoundingRect()
    texts = [label.toPlainText() for label in panel._chart_labels]
    assert texts == ["F16 · 31 t/s", "Q8_0 · 52 t/s", "Q5_0 · 60 t/s", "Q4_0 · 64 t/s"]
    for label in panel._chart_labels:
        assert box.contains(label.sceneBoundingRect()), label.toPlainText()
