"""The Importance matrix and Recommend boxes: a computed matrix never replaces a file already at its
name; the Recommend box says before an advice that the selected model is already quantized; and both
buttons are off, saying why, while other work (here a perplexity run, on the real engine) holds the
engine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import QSettings, Qt
from pytestqt.qtbot import QtBot

from app.bench.history import HistoryStore
from app.model.gguf_info import inspect_model
from app.quality.eval_types import EvalSettings
from tests.signal_wait import start_and_wait_for
from ui.main_window import MainWindow
from widgets.imatrix_box import ImatrixBox
from widgets.quantization_panel import QuantizationPanel

WAIT_MS = 1_800_000  # generous: the machine may be shared and slow; each wait ends at its condition
USERS = b"a matrix the user keeps\n"


def test_a_computed_matrix_goes_to_a_free_name(qtbot: QtBot, tmp_path: Path) -> None:
    box = ImatrixBox()
    qtbot.addWidget(box)
    model = tmp_path / "Model.Q4_1.gguf"
    model.write_bytes(b"")  # the box only names files; nothing reads this one
    box.set_source(str(model))
    assert box.output_path() == str(tmp_path / "Model.Q4_1.imatrix.gguf")
    existing = tmp_path / "Model.Q4_1.imatrix.gguf"
    existing.write_bytes(USERS)
    with qtbot.waitSignal(box.compute_requested, timeout=WAIT_MS) as asked:
        box.request_compute()
    assert asked.args[0].output == str(tmp_path / "Model.Q4_1-2.imatrix.gguf")
    assert (
        "Model.Q4_1.imatrix.gguf exists and is kept: writing Model.Q4_1-2.imatrix.gguf" in box.status.text()
    )
    assert existing.read_bytes() == USERS


def test_the_recommend_box_says_the_source_is_already_quantized(qtbot: QtBot, demo_model: str) -> None:
    panel = QuantizationPanel()
    qtbot.addWidget(panel)
    note = panel.advice_box.source_note
    panel.set_source(inspect_model(demo_model))
    assert note.isVisibleTo(panel.advice_box)
    assert note.text().startswith("⚠ Source is already quantized (Q4_1):")
    assert "KLD is measured against the Q4_1, not the original" in note.text()
    panel.set_source(None)
    assert not note.isVisibleTo(panel.advice_box)


@pytest.fixture()
def window(qtbot: QtBot, tmp_path: Path) -> Iterator[MainWindow]:
    settings = QSettings(str(tmp_path / "llamascope.ini"), QSettings.Format.IniFormat)
    win = MainWindow(settings=settings, history=HistoryStore(str(tmp_path / "history.sqlite3")))
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: win.quantization_panel.source is not None, timeout=WAIT_MS)
    yield win
    win.close()


def test_compute_and_recommend_are_off_while_other_work_holds_the_engine(
    qtbot: QtBot, window: MainWindow, demo_model: str
) -> None:
    quant = window.quantization_panel
    compute, recommend = quant.imatrix_box.compute_button, quant.advice_box.recommend_button
    qtbot.waitUntil(lambda: compute.isEnabled() and recommend.isEnabled(), timeout=WAIT_MS)
    free_tip = recommend.toolTip()
    # Every chunk of the evaluation text: far longer than the checks below.
    start_and_wait_for(
        qtbot,
        window.quality.eval_progressed,
        lambda: window.quality.measure_base(demo_model, "default", EvalSettings(n_ctx=64, n_threads=1)),
        WAIT_MS,
    )
    qtbot.waitUntil(lambda: not compute.isEnabled() and not recommend.isEnabled(), timeout=WAIT_MS)
    for button in (compute, recommend):
        assert button.toolTip().startswith("The engine is busy "), button.toolTip()
    qtbot.mouseClick(compute, Qt.MouseButton.LeftButton)  # off: nothing is asked
    assert not window.advice.computing and not quant.imatrix_box.status.text().startswith("✗")
    with qtbot.waitSignal(window.quality.failed, timeout=WAIT_MS):
        window.quality.cancel_measure()
    qtbot.waitUntil(lambda: compute.isEnabled() and recommend.isEnabled(), timeout=WAIT_MS)
    assert recommend.toolTip() == free_tip and "written to" in compute.toolTip()
