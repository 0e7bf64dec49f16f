"""The Performance panel's Servers box, driven through its widgets against a real llama-server."""

from __future__ import annotations

import re
import socket
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from PySide6.QtCore import QSettings, Qt
from pytestqt.qtbot import QtBot

from app.bench.history import HistoryStore
from tests.llama_server import HOST, RunningServer, free_port, llama_server
from ui.main_window import MainWindow
from widgets.servers_box import ServersBox

WAIT_MS = 120_000  # generous for a shared machine; a hang still fails

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(demo_model: str) -> Iterator[RunningServer]:
    with llama_server(demo_model, "--metrics", "--slots", "-np", "4", "-c", "2048", "-t", "1") as running:
        yield running


@pytest.fixture()
def window(qtbot: QtBot, tmp_path: Path) -> Iterator[MainWindow]:
    settings = QSettings(str(tmp_path / "llamascope.ini"), QSettings.Format.IniFormat)
    win = MainWindow(settings=settings, history=HistoryStore(str(tmp_path / "history.sqlite3")))
    qtbot.addWidget(win)
    win.show()
    yield win
    win.close()


def _cell(box: ServersBox, row: int, column: int) -> str:
    item = box.table.item(row, column)
    return item.text() if item is not None else ""


def _add(qtbot: QtBot, box: ServersBox, url: str) -> None:
    box.url_edit.setText(url)
    qtbot.mouseClick(box.add_button, Qt.MouseButton.LeftButton)


def _scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=30) as response:
        text = response.read().decode()
    return {
        f"{s.name}{sorted(s.labels.items())}": float(s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_watch_benchmark_and_export_through_the_box(
    qtbot: QtBot, window: MainWindow, server: RunningServer
) -> None:
    box = window.performance_panel.servers_box
    _add(qtbot, box, "ftp://example.invalid")
    assert "only http:// and https://" in box.message.text() and box.table.rowCount() == 0

    _add(qtbot, box, server.url)
    dead = f"http://{HOST}:{free_port()}"
    _add(qtbot, box, dead)
    assert box.table.rowCount() == 2
    qtbot.waitUntil(lambda: _cell(box, 0, 1) == "ok", timeout=WAIT_MS)
    assert _cell(box, 0, 2) == "SmolLM2-135M-Instruct.Q4_1.gguf" and _cell(box, 0, 3) == "0 / 4"
    qtbot.waitUntil(lambda: _cell(box, 1, 1) == "unreachable", timeout=WAIT_MS)
    tooltip = box.table.item(1, 1).toolTip()  # type: ignore[union-attr]
    assert "refused the connection" in tooltip

    box.prometheus_address.setText(f"{HOST}:0")
    box.prometheus_check.setChecked(True)
    assert box.prometheus_status.text().startswith(f"Serving http://{HOST}:")
    metrics_url = box.prometheus_status.text().removeprefix("Serving ")
    values = _scrape(metrics_url)
    assert values[f"llamascope_server_up[('server', '{server.url}')]"] == 1.0
    assert values[f"llamascope_server_up[('server', '{dead}')]"] == 0.0

    box.table.selectRow(0)
    box.concurrency_edit.setText("1,2")
    box.requests_spin.setValue(2)
    box.prompt_spin.setValue(16)
    box.gen_spin.setValue(4)
    qtbot.mouseClick(box.bench_button, Qt.MouseButton.LeftButton)
    assert not box.bench_button.isEnabled() and box.bench_stop.isEnabled()
    qtbot.waitUntil(lambda: box.bench_button.isEnabled(), timeout=WAIT_MS)
    assert box.bench_status.text().startswith("Finished: 2 levels. Stored as run ")
    assert box.levels_table.rowCount() == 2
    assert [box.levels_table.item(r, 0).text() for r in range(2)] == ["1", "2"]  # type: ignore[union-attr]
    assert window.history is not None
    runs = window.history.runs(kind="server-bench")
    assert len(runs) == 1 and runs[0].n_results == 2 and runs[0].status == "finished"

    box.prometheus_check.setChecked(False)
    assert box.prometheus_status.text() == "" and box.prometheus_address.isEnabled()
    qtbot.waitUntil(
        lambda: not any(t.name == "llamascope-prometheus" for t in threading.enumerate()), timeout=WAIT_MS
    )

    box.table.selectRow(1)
    qtbot.mouseClick(box.remove_button, Qt.MouseButton.LeftButton)
    assert box.table.rowCount() == 1 and _cell(box, 0, 0) == server.url


def test_a_taken_port_and_a_dead_server_during_a_benchmark_are_messages(
    qtbot: QtBot, window: MainWindow, demo_model: str
) -> None:
    box = window.performance_panel.servers_box
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind((HOST, 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        box.prometheus_address.setText(f"{HOST}:{port}")
        box.prometheus_check.setChecked(True)
        assert f"{HOST}:{port} is already in use" in box.prometheus_status.text()
        assert not box.prometheus_check.isChecked()

    with llama_server(demo_model, "--metrics", "--slots", "-np", "2", "-c", "1024", "-t", "1") as doomed:
        _add(qtbot, box, doomed.url)
        qtbot.waitUntil(lambda: _cell(box, 0, 1) == "ok", timeout=WAIT_MS)
        box.concurrency_edit.setText("1,2")
        box.requests_spin.setValue(2)
        box.prompt_spin.setValue(16)
        box.gen_spin.setValue(160)  # level 2 is still running when the server is killed
        qtbot.mouseClick(box.bench_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: box.levels_table.rowCount() == 1, timeout=WAIT_MS)  # the first level is done
        doomed.kill()
        qtbot.waitUntil(lambda: box.bench_button.isEnabled(), timeout=WAIT_MS)
    status = box.bench_status.text()
    # Killed between levels or in the middle of one: both are the same failure, said either way.
    assert re.search(r"the server stopped answering (at|before) concurrency 2", status), status
    assert "The 1 finished level is kept. Stored as run " in status
    qtbot.waitUntil(lambda: _cell(box, 0, 1) == "unreachable", timeout=WAIT_MS)
    assert window.isVisible()  # the window keeps running
