"""The quantization queue through the window's widgets: several types from one F16 base, each with
its own progress row; the source stays selected; the outputs join the model list and are still
there after a restart; a measurement shows its progress and stops with its own Cancel."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import QSettings, Qt
from PySide6.QtWidgets import QProgressBar, QTableWidgetItem
from pytestqt.qtbot import QtBot

from app.bench.history import HistoryStore
from app.quant.plan import f16_base_request
from app.quant.quantize import quantize
from tests.signal_wait import start_and_wait_for
from ui.main_window import MainWindow
from widgets.quantization_panel import QuantizationPanel

WAIT_MS = 900_000  # a 2-core machine shared with other work can be very slow
TYPES = ("Q8_0", "Q4_0", "Q5_0")  # fast to make from F16


@pytest.fixture(scope="module")
def f16_base(tmp_path_factory: pytest.TempPathFactory, demo_model: str) -> str:
    folder = tmp_path_factory.mktemp("base")
    request = f16_base_request(demo_model, str(folder / "SmolLM2-135M-Instruct.F16.gguf"), n_threads=2)
    return quantize(request).output_path


def open_window(qtbot: QtBot, tmp_path: Path) -> MainWindow:
    settings = QSettings(str(tmp_path / "llamascope.ini"), QSettings.Format.IniFormat)
    win = MainWindow(settings=settings, history=HistoryStore(str(tmp_path / "history.sqlite3")))
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: win.quantization_panel.source is not None, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: win.quantization_panel.type_table.rowCount() > 0, timeout=WAIT_MS)
    return win


@pytest.fixture()
def window(qtbot: QtBot, tmp_path: Path) -> Iterator[MainWindow]:
    win = open_window(qtbot, tmp_path)
    yield win
    win.close()


def listed(win: MainWindow) -> list[str]:
    model_list = win.model_panel.model_list
    return [model_list.item(r).data(Qt.ItemDataRole.UserRole) for r in range(model_list.count())]


def row_state(panel: QuantizationPanel, row: int) -> str:
    item = panel.queue_table.item(row, 2)
    return item.text() if isinstance(item, QTableWidgetItem) else ""


def row_bar(panel: QuantizationPanel, row: int) -> QProgressBar:
    bar = panel.queue_table.cellWidget(row, 1)
    assert isinstance(bar, QProgressBar)
    return bar


def test_three_types_from_one_f16_base_run_in_turn_and_stay_in_the_list(
    qtbot: QtBot, window: MainWindow, tmp_path: Path, f16_base: str
) -> None:
    quant = window.quantization_panel
    window.model_panel.add_model_file(f16_base)
    qtbot.waitUntil(lambda: quant.source == f16_base, timeout=WAIT_MS)
    quant.set_checked_types(TYPES)
    assert set(quant.checked_types()) == set(TYPES)
    assert quant.quantize_button.text() == "Quantize 3 types"
    quant.threads_spin.setValue(2)

    # What each row showed whenever a tensor was written: (row states, the running row's bar).
    seen: list[tuple[tuple[str, ...], int, int]] = []

    def on_progress(_progress: object) -> None:
        running = next(r for r in range(3) if row_state(quant, r) == "running")
        bar = row_bar(quant, running)
        seen.append((tuple(row_state(quant, r) for r in range(3)), bar.value(), bar.maximum()))

    window.quality.quantize_progressed.connect(on_progress)
    qtbot.mouseClick(quant.quantize_button, Qt.MouseButton.LeftButton)
    assert quant.queue_table.isVisible() and quant.queue_table.rowCount() == 3
    assert [quant.queue_table.item(r, 0).text() for r in range(3)] == [  # type: ignore[union-attr]
        t for t in quant.checked_types()
    ]
    assert quant.cancel_button.isEnabled() and not quant.quantize_button.isEnabled()
    qtbot.waitUntil(lambda: not quant.cancel_button.isEnabled(), timeout=WAIT_MS)

    # Each item ran after the one before: while the first ran, the others waited, and so on.
    order = [quant.queue_table.item(r, 0).text() for r in range(3)]  # type: ignore[union-attr]
    assert ("running", "queued", "queued") in [s for s, _, _ in seen]
    assert ("done", "running", "queued") in [tuple(x.split(" ")[0] for x in s) for s, _, _ in seen]
    assert ("done", "done", "running") in [tuple(x.split(" ")[0] for x in s) for s, _, _ in seen]
    assert all(0 < value <= maximum for _, value, maximum in seen)
    for row in range(3):
        assert row_state(quant, row).startswith("done · "), row_state(quant, row)
        bar = row_bar(quant, row)
        assert bar.value() == bar.maximum() > 0
    outputs = [os.path.join(os.path.dirname(f16_base), f"SmolLM2-135M-Instruct.{t}.gguf") for t in order]
    assert all(os.path.exists(p) for p in outputs)
    assert quant.status.text().startswith("✓ 3 of 3 done")

    # The source stays the source: the next type from the same base is not refused as requantizing.
    assert quant.source == f16_base and window.model_panel.selected_path() == f16_base
    assert set(outputs) <= set(listed(window))

    # After a restart (a new window on the same settings) the outputs are still listed.
    window.close()
    again = open_window(qtbot, tmp_path)
    try:
        assert set(outputs) <= set(listed(again))
    finally:
        again.close()


def test_a_failed_item_lets_the_next_run_and_cancel_stops_the_rest(
    qtbot: QtBot, window: MainWindow, tmp_path: Path, demo_model: str
) -> None:
    quant = window.quantization_panel
    assert quant.source == demo_model  # Q4_1: quantizing it again needs "Allow requantize"
    quant.set_checked_types(["Q8_0", "Q4_0"])
    with qtbot.waitSignal(
        window.quality.queue_changed,
        timeout=WAIT_MS,
        check_params_cb=lambda items: all(i.state.value == "failed" for i in items),
    ):
        qtbot.mouseClick(quant.quantize_button, Qt.MouseButton.LeftButton)
    # Both were tried (the first failing did not stop the second), and the message says where the
    # option is.
    assert [row_state(quant, r) for r in range(2)] == ["failed", "failed"]
    assert "already quantized" in quant.status.text()
    assert "Allow requantize" in quant.status.text() and "Advanced" in quant.status.text()
    assert quant.requantize_check.text() == "Allow requantize"

    # Cancel during the first of two: it and the one waiting are cancelled, no file is left.
    quant.requantize_check.setChecked(True)
    quant.output_edit.setText("")
    quant.set_checked_types(["Q8_0", "Q4_0"])
    out_folder = os.path.dirname(quant.output_edit.placeholderText())
    before = set(os.listdir(out_folder)) if os.path.isdir(out_folder) else set()
    with qtbot.waitSignal(window.quality.failed, timeout=WAIT_MS) as failed:
        qtbot.mouseClick(quant.quantize_button, Qt.MouseButton.LeftButton)
        assert quant.cancel_button.isEnabled()
        qtbot.mouseClick(quant.cancel_button, Qt.MouseButton.LeftButton)
    assert failed.args[0] == "quantize" and "cancel" in failed.args[1].lower()
    qtbot.waitUntil(lambda: quant.quantize_button.isEnabled(), timeout=WAIT_MS)
    assert [row_state(quant, r) for r in range(2)] == ["cancelled", "cancelled"]
    after = set(os.listdir(out_folder)) if os.path.isdir(out_folder) else set()
    assert after == before


def test_measuring_shows_its_progress_and_has_its_own_cancel(
    qtbot: QtBot, window: MainWindow, demo_model: str
) -> None:
    quant = window.quantization_panel
    quant.ctx_spin.setValue(128)
    quant.chunks_spin.setValue(0)  # the whole text: far longer than it takes to press Cancel
    assert not quant.measure_cancel_button.isEnabled()
    start_and_wait_for(
        qtbot,
        window.quality.eval_progressed,
        lambda: qtbot.mouseClick(quant.measure_button, Qt.MouseButton.LeftButton),
        WAIT_MS,
    )
    qtbot.waitUntil(lambda: "chunk 1/" in quant.measure_progress.format(), timeout=WAIT_MS)
    assert quant.measure_progress.format().startswith("perplexity chunk 1/")
    assert quant.measure_progress.value() >= 1 and quant.measure_progress.maximum() > 1
    # Its own Cancel, beside the bar; the Methods box's Cancel is for quantizing and stays off.
    assert quant.measure_cancel_button.isEnabled() and not quant.cancel_button.isEnabled()
    with qtbot.waitSignal(window.quality.failed, timeout=WAIT_MS) as failed:
        qtbot.mouseClick(quant.measure_cancel_button, Qt.MouseButton.LeftButton)
    assert failed.args[0] == "ppl" and "cancel" in failed.args[1].lower()
    qtbot.waitUntil(lambda: quant.measure_button.isEnabled(), timeout=WAIT_MS)
    assert quant.measure_progress.format() == "stopped"
    assert not quant.measure_cancel_button.isEnabled()
    assert quant.quality_status.text().startswith("✗")
