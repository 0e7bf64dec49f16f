"""The Performance panel's LocalScore box: a real (quick, capped) run of the demo model through the
bridge and the engine host, shown with its parts and kept in the history; the plan the box builds."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import QSettings
from pytestqt.qtbot import QtBot

from app.bench.history import HistoryStore
from app.bench.localscore import DEFAULT_REPETITIONS, ScorePlan
from ui.main_window import MainWindow

WAIT_MS = 300_000  # generous for a shared machine; a hang still fails


@pytest.fixture()
def window(qtbot: QtBot, tmp_path: Path, demo_model: str) -> Iterator[MainWindow]:
    settings = QSettings(str(tmp_path / "llamascope.ini"), QSettings.Format.IniFormat)
    win = MainWindow(settings=settings, history=HistoryStore(str(tmp_path / "history.sqlite3")))
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: demo_model in win.model_panel._infos, timeout=WAIT_MS)
    yield win
    win.close()


def test_the_box_builds_localscores_plan_on_the_selected_model(window: MainWindow, demo_model: str) -> None:
    box = window.performance_panel.score_box
    threads = window.model_panel.load_settings().n_threads
    plan = box.build_plan()
    assert (plan.model, plan.repetitions, plan.quick, plan.n_threads) == (
        demo_model,
        DEFAULT_REPETITIONS,
        False,
        threads,
    )
    box.quick.setChecked(True)
    assert box.build_plan().repetitions == 1 and box.build_plan().quick


def test_a_real_capped_score_is_shown_with_its_parts_and_stored(
    qtbot: QtBot, window: MainWindow, demo_model: str
) -> None:
    box = window.performance_panel.score_box
    plan = ScorePlan.quick_plan(demo_model, max_ctx=32, n_threads=1)  # seconds, not minutes
    with qtbot.waitSignal(window.bridge.score_finished, timeout=WAIT_MS) as finished:
        window.bridge.request_localscore(plan, window.history, window.sampler)
        qtbot.waitUntil(lambda: not box.run_button.isEnabled(), timeout=WAIT_MS)  # busy while it runs
        assert not window.performance_panel.bench_run.isEnabled()
    run, run_id = finished.args[0]
    qtbot.waitUntil(lambda: box.status.text().startswith("Done"), timeout=WAIT_MS)
    assert box.table.rowCount() == 9
    assert all("(capped)" in box.table.item(row, 0).text() for row in range(9))
    assert box.score_label.text().startswith("capped score, not comparable")
    assert not re.search(r"LocalScore \d", box.score_label.text())
    summary = run.summary
    assert summary is not None
    parts = box.parts_label.text()
    assert f"prompt {summary.avg_prompt_tps:.2f} t/s" in parts
    assert f"generation {summary.avg_gen_tps:.2f} t/s" in parts
    assert f"TTFT {summary.avg_ttft_ms:.2f} ms" in parts
    assert f"= {summary.score:.4f}" in box.parts_label.toolTip()
    assert run_id is not None and window.history.score_run(run_id) == run
    qtbot.waitUntil(lambda: box.run_button.isEnabled(), timeout=WAIT_MS)
