"""Quantization panel through its widgets: quantize, cancel, measure a base and a variant, compare."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import QSettings, Qt
from PySide6.QtWidgets import QProgressBar, QTableWidget, QTableWidgetItem
from pytestqt.qtbot import QtBot

from app.bench.history import HistoryStore
from ui.main_window import MainWindow

WAIT_MS = 900_000  # a 2-core machine shared with other work can be very slow


@pytest.fixture()
def window(qtbot: QtBot, tmp_path: Path, demo_model: str) -> Iterator[MainWindow]:
    settings = QSettings(str(tmp_path / "llamascope.ini"), QSettings.Format.IniFormat)
    win = MainWindow(settings=settings, history=HistoryStore(str(tmp_path / "history.sqlite3")))
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: win.quantization_panel.source == demo_model, timeout=WAIT_MS)
    yield win
    win.close()


def _item(table: QTableWidget, row: int, column: int) -> QTableWidgetItem:
    item = table.item(row, column)
    assert item is not None, (row, column)
    return item


def _select_type(win: MainWindow, name: str) -> None:
    table = win.quantization_panel.type_table
    for row in range(table.rowCount()):
        if _item(table, row, 0).text() == name:
            table.selectRow(row)
            return
    raise AssertionError(f"{name} not listed")


def test_types_needing_an_imatrix_are_listed_but_disabled(window: MainWindow) -> None:
    table = window.quantization_panel.type_table
    names = {_item(table, r, 0).text(): _item(table, r, 0) for r in range(table.rowCount())}
    assert {"Q4_K_M", "Q8_0", "F16"} <= set(names)
    iq = [item for name, item in names.items() if name.startswith("IQ1") or name.startswith("IQ2_XXS")]
    assert iq and all(not (item.flags() & Qt.ItemFlag.ItemIsEnabled) for item in iq)
    assert "imatrix" in iq[0].toolTip().lower() or "importance" in iq[0].toolTip().lower()


def test_quantize_then_measure_base_and_variant(
    qtbot: QtBot, window: MainWindow, tmp_path: Path, demo_model: str
) -> None:
    quant = window.quantization_panel
    out = tmp_path / "demo-Q4_0.gguf"
    _select_type(window, "Q4_0")
    quant.requantize_check.setChecked(True)
    quant.output_edit.setText(str(out))
    with qtbot.waitSignal(window.quality.quantize_finished, timeout=WAIT_MS) as finished:
        qtbot.mouseClick(quant.quantize_button, Qt.MouseButton.LeftButton)
    result = finished.args[0]
    assert out.exists() and result.output_path == str(out)
    assert quant.status.text().startswith("✓")
    bar = quant.queue_table.cellWidget(0, 1)
    assert isinstance(bar, QProgressBar) and bar.value() == bar.maximum() > 0
    # The new file is listed; the source stays selected.
    assert str(out) in window.model_panel.model_paths()
    assert window.model_panel.selected_path() == demo_model and quant.source == demo_model
    assert [p for p in os.listdir(tmp_path) if p.startswith("demo-Q4_0") and p != out.name] == []

    # The demo model as base: perplexity with saved log-probabilities, then its speed.
    quant.ctx_spin.setValue(128)
    quant.chunks_spin.setValue(2)
    with qtbot.waitSignal(
        window.quality.eval_finished, timeout=WAIT_MS, check_params_cb=lambda kind, _r: kind == "speed"
    ):
        qtbot.mouseClick(quant.base_button, Qt.MouseButton.LeftButton)
    assert "log-probabilities saved" in quant.base_label.text()
    workflow = window.quality.workflow
    assert workflow.base == os.path.abspath(demo_model) and not workflow.running
    assert workflow.base_logits is not None and os.path.exists(workflow.base_logits)
    assert quant.quality_status.text() == f"✓ measured {os.path.basename(demo_model)}"
    # The variant against the base: KL divergence, then speed.
    window.model_panel.add_model_file(str(out))
    qtbot.waitUntil(lambda: quant.source == str(out), timeout=WAIT_MS)
    with qtbot.waitSignal(
        window.quality.eval_finished, timeout=WAIT_MS, check_params_cb=lambda kind, _r: kind == "speed"
    ):
        qtbot.mouseClick(quant.measure_button, Qt.MouseButton.LeftButton)
    assert "mean KLD" in quant.quality_result.text()
    table = quant.compare_table
    assert table.rowCount() == 2
    headers = [table.model().headerData(c, Qt.Orientation.Horizontal) for c in range(table.columnCount())]
    assert headers == ["Variant", "Size", "KLD", "Score", "tg t/s"]
    kld_col, score_col = headers.index("KLD"), headers.index("Score")
    assert _item(table, 1, kld_col).text() != "n/a"
    assert 0 < float(_item(table, 1, score_col).text()) <= 100
    # The base against itself: KLD 0, so a score of 100 by the score's definition.
    assert float(_item(table, 0, kld_col).text()) == 0.0
    assert _item(table, 0, score_col).text() == "100.0"
    assert "Same top p %: 100.00" in _item(table, 0, 0).toolTip()
    assert len(quant.scatter.data) >= 1
    # The table shows the workflow's comparison: the base first, then the variant against it.
    assert workflow.comparison is not None
    assert [row.path for row in workflow.comparison.rows] == [os.path.abspath(demo_model), str(out)]
    assert not workflow.running


def test_cancel_during_quantization_leaves_no_file(
    qtbot: QtBot, window: MainWindow, tmp_path: Path, demo_model: str
) -> None:
    quant = window.quantization_panel
    source_bytes = Path(demo_model).read_bytes()[:4096]
    out = tmp_path / "cancelled-Q8_0.gguf"
    _select_type(window, "Q8_0")
    quant.requantize_check.setChecked(True)
    quant.output_edit.setText(str(out))
    with qtbot.waitSignal(window.quality.failed, timeout=WAIT_MS) as failed:
        qtbot.mouseClick(quant.quantize_button, Qt.MouseButton.LeftButton)
        assert quant.cancel_button.isEnabled()
        qtbot.mouseClick(quant.cancel_button, Qt.MouseButton.LeftButton)
    assert failed.args[0] == "quantize"
    assert "cancel" in failed.args[1].lower()
    assert not out.exists()
    assert os.listdir(tmp_path) == [n for n in os.listdir(tmp_path) if not n.startswith("cancelled")]
    assert Path(demo_model).read_bytes()[:4096] == source_bytes
    qtbot.waitUntil(lambda: quant.quantize_button.isEnabled(), timeout=WAIT_MS)


def test_too_short_text_is_explained(qtbot: QtBot, window: MainWindow, tmp_path: Path) -> None:
    quant = window.quantization_panel
    short = tmp_path / "short.txt"
    short.write_text("Just a few words.")
    quant.text_edit.setText(str(short))
    with qtbot.waitSignal(window.quality.failed, timeout=WAIT_MS):
        qtbot.mouseClick(quant.measure_button, Qt.MouseButton.LeftButton)
    assert quant.quality_status.text().startswith("✗")
    assert "short" in quant.quality_status.text().lower() or "tokens" in quant.quality_status.text()
