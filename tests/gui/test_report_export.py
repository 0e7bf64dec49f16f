"""The Performance panel's Export writes the HTML report (app.bench.report) of the chosen runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFileDialog
from pytestqt.qtbot import QtBot

from app.bench.history import HistoryStore
from app.bench.runner import BenchResult
from widgets.performance_panel import REPORT_FILTER, PerformancePanel


def _result(n_threads: int, samples_ns: tuple[int, ...]) -> BenchResult:
    return BenchResult(
        model_filename="/m/<b>model</b>.gguf",
        model_type="llama 135M Q4_1",
        model_size=96_576_768,
        model_n_params=134_515_008,
        n_batch=512,
        n_ubatch=512,
        n_threads=n_threads,
        type_k="f16",
        type_v="f16",
        n_gpu_layers=0,
        flash_attn=False,
        use_mmap=True,
        n_prompt=64,
        n_gen=0,
        n_depth=0,
        test_time="2026-01-01T00:00:00Z",
        samples_ns=samples_ns,
        cpu_info="Test CPU",
        gpu_info="",
        backends="CPU",
        build="0.3.36",
    )


def _choose(monkeypatch: pytest.MonkeyPatch, path: Path, seen: list[str]) -> None:
    """The save dialog answers `path` with the HTML choice, and keeps the choices it offered."""

    def dialog(parent: object, caption: str, name: str, filters: str) -> tuple[str, str]:
        seen.append(filters)
        return str(path), REPORT_FILTER

    monkeypatch.setattr(QFileDialog, "getSaveFileName", dialog)


def test_export_writes_the_report_of_the_runs_selected_in_history(
    qtbot: QtBot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = HistoryStore(str(tmp_path / "history.sqlite3"))
    ids = []
    for threads, samples in (
        (1, (400_000_000, 410_000_000, 395_000_000)),
        (2, (200_000_000, 205_000_000, 199_000_000)),
    ):
        run = store.start_run("benchmark", "/m/<b>model</b>.gguf", {"repetitions": 3})
        store.add_result(run, _result(threads, samples))
        store.finish_run(run)
        ids.append(run)
    panel = PerformancePanel(store)
    qtbot.addWidget(panel)
    panel.refresh_history()
    panel.history_table.selectAll()
    target = tmp_path / "report.html"
    offered: list[str] = []
    _choose(monkeypatch, target, offered)
    qtbot.mouseClick(panel.bench_export, Qt.MouseButton.LeftButton)
    assert REPORT_FILTER in offered[0].split(";;")
    page = target.read_text(encoding="utf-8")
    assert page.count('class="bar"') == 2 * 2  # a bar per result, by test and by configuration (t=1, t=2)
    assert "significant (p =" in page  # the second run is twice as fast, three repetitions a side
    assert "&lt;b&gt;model&lt;/b&gt;.gguf" in page and "<b>model" not in page
    assert panel.bench_status.text() == f"Report of run {ids[0]}, {ids[1]} written to {target}"


def test_without_runs_the_export_says_what_to_do(
    qtbot: QtBot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    panel = PerformancePanel(HistoryStore(str(tmp_path / "history.sqlite3")))
    qtbot.addWidget(panel)
    offered: list[str] = []
    _choose(monkeypatch, tmp_path / "report.html", offered)
    qtbot.mouseClick(panel.bench_export, Qt.MouseButton.LeftButton)
    assert not offered  # no dialog: there is nothing to export
    assert "select runs in History" in panel.bench_status.text()
    panel.export_report(str(tmp_path / "report.html"))
    assert "Select runs in History, or run a benchmark first" in panel.bench_status.text()
    assert not (tmp_path / "report.html").exists()
