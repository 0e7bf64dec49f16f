"""The Quantization panel's Importance matrix and Recommend boxes through the window, with the real
engine and the demo model: a matrix computed with its progress and written to the user's models
folder, a cancelled one leaving no file, a matrix making IQ2_XS selectable and passed to the
quantizer, an advice on two candidates (a plain refusal under an impossible memory limit, then a
pick from the history) and bad inputs answered with a message."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import QSettings, Qt
from pytestqt.qtbot import QtBot

from app.bench.history import HistoryStore
from app.model.gguf_info import read_metadata
from app.quant.plan import f16_base_request, user_models_folder
from app.quant.quantize import quantize
from tests.signal_wait import start_and_wait_for
from ui.main_window import MainWindow
from widgets.quantization_panel import QuantizationPanel

WAIT_MS = 1_800_000  # generous: the machine may be shared and slow; each wait ends at its condition


@pytest.fixture(scope="module")
def f16_base(tmp_path_factory: pytest.TempPathFactory, demo_model: str) -> str:
    folder = tmp_path_factory.mktemp("base")
    request = f16_base_request(demo_model, str(folder / "SmolLM2-135M-Instruct.F16.gguf"), n_threads=2)
    return quantize(request).output_path


@pytest.fixture()
def window(qtbot: QtBot, tmp_path: Path) -> Iterator[MainWindow]:
    settings = QSettings(str(tmp_path / "llamascope.ini"), QSettings.Format.IniFormat)
    win = MainWindow(settings=settings, history=HistoryStore(str(tmp_path / "history.sqlite3")))
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: win.quantization_panel.source is not None, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: win.quantization_panel.type_table.rowCount() > 0, timeout=WAIT_MS)
    yield win
    win.close()


def type_row(quant: QuantizationPanel, name: str) -> int:
    return next(
        r
        for r in range(quant.type_table.rowCount())
        if quant.type_table.item(r, 0).data(Qt.ItemDataRole.UserRole) == name  # type: ignore[union-attr]
    )


def test_panel_fits_its_column() -> None:
    panel = QuantizationPanel()
    try:
        assert panel.minimumSizeHint().width() <= 420
    finally:
        panel.deleteLater()


def test_matrix_computed_with_progress_enables_iq2_xs_and_reaches_the_quantizer(
    qtbot: QtBot, window: MainWindow, demo_model: str
) -> None:
    quant = window.quantization_panel
    box = quant.imatrix_box
    row = type_row(quant, "IQ2_XS")
    item = quant.type_table.item(row, 0)
    assert item is not None
    # Without a matrix IQ2_XS is refused, and its tooltip says why.
    assert not item.flags() & Qt.ItemFlag.ItemIsEnabled
    assert "importance matrix" in item.toolTip()
    assert box.text_edit.text() == "calibration" and "shipped calibration text" in box.text_note.text()
    box.ctx_spin.setValue(128)
    box.chunks_spin.setValue(2)
    formats: list[str] = []
    window.advice.imatrix_progressed.connect(lambda _p: formats.append(box.progress.format()))
    with qtbot.waitSignal(window.advice.imatrix_finished, timeout=WAIT_MS) as finished:
        qtbot.mouseClick(box.compute_button, Qt.MouseButton.LeftButton)
        assert box.cancel_button.isEnabled() and not box.compute_button.isEnabled()
    result = finished.args[0]
    assert formats[0].startswith("chunk 1 of 2 · PPL ") and formats[-1].startswith("chunk 2 of 2 · PPL ")
    # Written beside the model in the user's models folder, never in the demo model's package folder.
    assert os.path.dirname(result.path) == user_models_folder()
    assert os.path.dirname(result.path) != os.path.dirname(demo_model)
    assert os.path.isfile(result.path) and result.path.endswith(".imatrix.gguf")
    assert box.status.text().startswith("✓") and result.path in box.status.text()
    assert box.progress.format() == "done"
    assert box.matrix_edit.text() == result.path and box.use_check.isChecked()
    assert box.matrix == result.path
    # With the matrix IQ2_XS can be ticked, and the queue passes the matrix to the quantizer.
    assert item.flags() & Qt.ItemFlag.ItemIsEnabled and item.flags() & Qt.ItemFlag.ItemIsUserCheckable
    assert quant.advice_box.imatrix_check.isEnabled() and quant.advice_box.imatrix_check.isChecked()
    quant.requantize_check.setChecked(True)  # the demo model is Q4_1
    quant.threads_spin.setValue(2)
    quant.set_checked_types(["IQ2_XS"])
    assert quant.checked_types() == ["IQ2_XS"]
    with qtbot.waitSignal(window.quality.quantize_finished, timeout=WAIT_MS) as done:
        qtbot.mouseClick(quant.quantize_button, Qt.MouseButton.LeftButton)
    made = done.args[0]
    assert made.type_name == "IQ2_XS" and os.path.isfile(made.output_path)
    meta = read_metadata(made.output_path)
    assert meta.get("quantize.imatrix.file") == result.path
    # Untick Use: IQ2_XS is refused again (and unticked).
    box.use_check.setChecked(False)
    assert box.matrix is None and not item.flags() & Qt.ItemFlag.ItemIsEnabled
    assert quant.checked_types() == []


def test_cancel_mid_way_leaves_no_file_and_bad_inputs_get_a_message(
    qtbot: QtBot, window: MainWindow, tmp_path: Path
) -> None:
    box = window.quantization_panel.imatrix_box
    output = box.output_path()
    assert output is not None
    if os.path.exists(output):
        os.remove(output)
    folder = os.path.dirname(output)
    before = set(os.listdir(folder)) if os.path.isdir(folder) else set()
    box.ctx_spin.setValue(128)
    box.chunks_spin.setValue(0)  # the whole text: about 100 chunks, far longer than pressing Cancel
    start_and_wait_for(
        qtbot,
        window.advice.imatrix_progressed,
        lambda: qtbot.mouseClick(box.compute_button, Qt.MouseButton.LeftButton),
        WAIT_MS,
    )
    with qtbot.waitSignal(window.advice.imatrix_failed, timeout=WAIT_MS) as failed:
        qtbot.mouseClick(box.cancel_button, Qt.MouseButton.LeftButton)
    assert "cancel" in failed.args[0].lower()
    qtbot.waitUntil(lambda: box.compute_button.isEnabled(), timeout=WAIT_MS)
    assert box.progress.format() == "stopped" and box.status.text().startswith("✗")
    assert not os.path.exists(output)
    assert (set(os.listdir(folder)) if os.path.isdir(folder) else set()) == before

    # A calibration text that is not there: a message, nothing started.
    box.text_edit.setText(str(tmp_path / "missing.txt"))
    qtbot.mouseClick(box.compute_button, Qt.MouseButton.LeftButton)
    assert box.status.text().startswith("✗ Calibration text not found")
    assert box.compute_button.isEnabled() and not window.advice.computing
    # A text too short for the chunk size: the engine's refusal, as a message.
    short = tmp_path / "short.txt"
    short.write_text("Too short to calibrate on.\n", encoding="utf-8")
    box.text_edit.setText(str(short))
    with qtbot.waitSignal(window.advice.imatrix_failed, timeout=WAIT_MS) as failed:
        qtbot.mouseClick(box.compute_button, Qt.MouseButton.LeftButton)
    assert "Traceback" not in failed.args[0] and box.status.text().startswith("✗ ")
    assert "token" in failed.args[0].lower()
    # A matrix file that is not there: said, and not used.
    box.matrix_edit.setText(str(tmp_path / "none.imatrix.gguf"))
    box.use_check.setChecked(True)
    assert box.matrix is None and box.status.text().startswith("✗ No importance matrix at")


def test_recommend_refuses_plainly_then_picks_from_the_history(
    qtbot: QtBot, window: MainWindow, tmp_path: Path, f16_base: str
) -> None:
    quant = window.quantization_panel
    advice = quant.advice_box
    window.model_panel.add_model_file(f16_base)
    qtbot.waitUntil(lambda: quant.source == f16_base, timeout=WAIT_MS)

    # A bad input: an evaluation text that is not there is a message, not a traceback.
    advice.text_edit.setText(str(tmp_path / "missing.txt"))
    with qtbot.waitSignal(window.advice.advice_failed, timeout=WAIT_MS) as failed:
        qtbot.mouseClick(advice.recommend_button, Qt.MouseButton.LeftButton)
    assert "missing.txt" in failed.args[0] and "Traceback" not in failed.args[0]
    qtbot.waitUntil(lambda: advice.recommend_button.isEnabled(), timeout=WAIT_MS)
    assert advice.status.text().startswith("✗ ")

    # Two candidates, a short evaluation, an impossible memory limit: a plain refusal.
    advice.text_edit.setText("default")
    advice.types_edit.setText("Q8_0, Q4_0")
    advice.chunks_spin.setValue(2)
    advice.memory_spin.setValue(1)  # 1 MiB: nothing fits
    with qtbot.waitSignal(window.advice.advice_finished, timeout=WAIT_MS) as finished:
        qtbot.mouseClick(advice.recommend_button, Qt.MouseButton.LeftButton)
        assert advice.cancel_button.isEnabled() and not advice.recommend_button.isEnabled()
    first = finished.args[0]
    assert first.pick is None and first.measured == 2
    assert advice.verdict.text().startswith("Nothing meets the constraints: the memory limit excluded")
    assert advice.table.rowCount() == 2 and advice.chart.isVisible()
    assert not advice.add_button.isEnabled()

    # No limit: the same candidates come from the history, and the pick is said in words.
    advice.memory_spin.setValue(0)
    with qtbot.waitSignal(window.advice.advice_finished, timeout=WAIT_MS) as finished:
        qtbot.mouseClick(advice.recommend_button, Qt.MouseButton.LeftButton)
    second = finished.args[0]
    assert second.reused == 2 and second.measured == 0
    assert second.pick is not None and second.pick.figures.type_name == "Q8_0"  # the lower KLD
    assert advice.verdict.text().startswith("Pick: Q8_0: ") and "KLD " in advice.verdict.text()
    marks = {advice.table.item(r, 1).text(): advice.table.item(r, 0).text() for r in range(2)}  # type: ignore[union-attr]
    assert marks["Q8_0"] == "→"
    assert second.kept_path is not None and os.path.isfile(second.kept_path)
    assert os.path.dirname(second.kept_path) == os.path.dirname(f16_base)  # beside the source
    assert advice.add_button.isEnabled()
    qtbot.mouseClick(advice.add_button, Qt.MouseButton.LeftButton)
    model_list = window.model_panel.model_list
    listed = [model_list.item(r).data(Qt.ItemDataRole.UserRole) for r in range(model_list.count())]
    assert second.kept_path in listed and quant.source == f16_base
    advice.show_table()
    assert advice.full_table.rowCount() == 2 and advice.full_table.columnCount() == 11
    advice.table_dialog.close()  # type: ignore[union-attr]
