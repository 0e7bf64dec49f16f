"""The window driven through its widgets, with the real demo model and real llama.cpp."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import QSettings, Qt
from PySide6.QtWidgets import QLabel, QSpinBox
from pytestqt.qtbot import QtBot

from app.common.formatting import format_bytes
from app.engine.types import RunStats, StopReason, TokenStream
from ui.main_window import MainWindow

WAIT_MS = 120_000  # generous for a shared machine; a hang still fails


@pytest.fixture()
def settings(tmp_path: Path) -> QSettings:
    return QSettings(str(tmp_path / "llamascope.ini"), QSettings.Format.IniFormat)


@pytest.fixture()
def window(qtbot: QtBot, settings: QSettings, demo_model: str) -> Iterator[MainWindow]:
    win = MainWindow(settings=settings)
    qtbot.addWidget(win)
    win.show()
    panel = win.model_panel
    qtbot.waitUntil(lambda: demo_model in panel._infos, timeout=WAIT_MS)
    yield win
    win.close()


def _set_spin(window: MainWindow, name: str, value: int) -> None:
    spin = window.model_panel.findChild(QSpinBox, f"field_{name}")
    assert spin is not None
    spin.setValue(value)


def _load(qtbot: QtBot, window: MainWindow) -> None:
    _set_spin(window, "n_ctx", 1024)
    with qtbot.waitSignal(window.bridge.load_finished, timeout=WAIT_MS):
        qtbot.mouseClick(window.model_panel.load_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.console.generate_button.isEnabled(), timeout=WAIT_MS)


def _generate(qtbot: QtBot, window: MainWindow, prompt: str) -> None:
    window.console.prompt_edit.setPlainText(prompt)
    qtbot.mouseClick(window.console.generate_button, Qt.MouseButton.LeftButton)


def test_four_panels_and_the_demo_model_selected(qtbot: QtBot, window: MainWindow, demo_model: str) -> None:
    titles = [panel.findChild(QLabel, "panelTitle").text() for panel in window.panels]
    assert titles == ["Model Config", "Hardware", "Quantization", "Performance"]
    panel = window.model_panel
    assert panel.selected_path() == demo_model
    assert panel._meta_labels["Architecture"].text() == "llama"
    assert panel._meta_labels["File type"].text() == "Q4_1"
    assert panel._meta_labels["Chat template"].text().endswith("present")
    assert "GGUF" in panel._meta_labels["Format"].text()
    assert panel.load_button.isEnabled()
    assert not window.console.generate_button.isEnabled()  # nothing loaded yet
    qtbot.waitUntil(lambda: "llama-cpp-python" in panel.platform_text(), timeout=WAIT_MS)
    assert "CPU" in panel.platform_text()


def test_memory_fit_updates_as_settings_change(qtbot: QtBot, window: MainWindow) -> None:
    panel = window.model_panel
    qtbot.waitUntil(lambda: panel.memory_verdict.text() == "Fits", timeout=WAIT_MS)
    _set_spin(window, "n_ctx", 2048)
    qtbot.waitUntil(lambda: "KV cache 45.0 MiB" in panel.memory_detail.text(), timeout=WAIT_MS)
    _set_spin(window, "n_ctx", 8192)
    qtbot.waitUntil(lambda: "KV cache 180 MiB" in panel.memory_detail.text(), timeout=WAIT_MS)


def test_load_generate_stop_and_unload_through_the_widgets(qtbot: QtBot, window: MainWindow) -> None:
    panel, console = window.model_panel, window.console
    assert window.engine_status.text() == "No model loaded"
    _load(qtbot, window)
    assert panel.load_status.text().startswith("✓ Loaded")
    info = panel._infos[panel.selected_path()]
    assert (
        window.engine_status.text()
        == f"Loaded: {info.display_name} · Q4_1 · {format_bytes(info.file_size_bytes)}"
    )
    assert panel._loaded_labels["Context"].text() == "1,024 tokens"
    assert "KV 22.5 MiB" in panel._loaded_labels["llama.cpp buffers"].text()

    # A short generation streams into the output and ends with the stats line.
    console.completion_radio.setChecked(True)
    with qtbot.waitSignal(window.bridge.generation_finished, timeout=WAIT_MS) as finished:
        _generate(qtbot, window, "The capital of France is")
    stats: RunStats = finished.args[0]
    assert stats.generated_tokens > 0
    qtbot.waitUntil(lambda: console.output_view.toPlainText() == stats.text, timeout=WAIT_MS)
    assert "t/s" in console.stats_label.text() and "TTFT" in console.stats_label.text()

    # Stop during a long generation keeps what was generated.
    _set_spin(window, "max_tokens", 900)
    streams: list[TokenStream] = []
    window.bridge.generation_started.connect(streams.append)
    with qtbot.waitSignal(window.bridge.generation_finished, timeout=WAIT_MS) as finished:
        _generate(qtbot, window, "Once upon a time, in a land far away,")
        qtbot.waitUntil(lambda: bool(streams) and len(streams[-1]) > 0, timeout=WAIT_MS)
        assert console.stop_button.isEnabled()
        assert not panel.load_form.isEnabled()  # no reload-needing edits while busy
        qtbot.mouseClick(console.stop_button, Qt.MouseButton.LeftButton)
    stats = finished.args[0]
    assert stats.stop_reason is StopReason.CANCELLED
    assert 0 < stats.generated_tokens < 900
    assert "cancelled" in console.stats_label.text()

    # Unload frees the model; Generate is disabled again.
    qtbot.waitUntil(panel.unload_button.isEnabled, timeout=WAIT_MS)  # the stopped generation has ended
    with qtbot.waitSignal(window.bridge.unloaded, timeout=WAIT_MS):
        qtbot.mouseClick(panel.unload_button, Qt.MouseButton.LeftButton)
    assert window.bridge.engine.loaded is None
    qtbot.waitUntil(lambda: not console.generate_button.isEnabled(), timeout=WAIT_MS)
    assert panel.load_status.text() == "Not loaded"
    assert window.engine_status.text() == "No model loaded"


def test_reload_needed_when_a_load_setting_changes(qtbot: QtBot, window: MainWindow) -> None:
    panel = window.model_panel
    _load(qtbot, window)
    assert not panel.reload_note.isVisible()
    _set_spin(window, "n_ctx", 2048)
    assert panel.reload_note.isVisible()
    assert "n_ctx" in panel.reload_note.text()
    assert panel.load_button.text() == "Reload"


def test_cancel_during_load(qtbot: QtBot, window: MainWindow) -> None:
    panel = window.model_panel
    with qtbot.waitSignal(window.bridge.load_cancelled, timeout=WAIT_MS):
        qtbot.mouseClick(panel.load_button, Qt.MouseButton.LeftButton)
        # The load has only been submitted: reading the header alone takes longer than this click.
        assert panel.cancel_button.isEnabled()
        qtbot.mouseClick(panel.cancel_button, Qt.MouseButton.LeftButton)
    assert window.bridge.engine.loaded is None
    assert "cancelled" in panel.load_status.text()
    assert not panel.unload_button.isEnabled()
    qtbot.waitUntil(lambda: panel.load_button.isEnabled(), timeout=WAIT_MS)
    # Nothing is left half-loaded: a new load works.
    with qtbot.waitSignal(window.bridge.load_finished, timeout=WAIT_MS):
        qtbot.mouseClick(panel.load_button, Qt.MouseButton.LeftButton)


def test_closing_the_window_during_generation_exits_cleanly(
    qtbot: QtBot, settings: QSettings, demo_model: str
) -> None:
    win = MainWindow(settings=settings)
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: demo_model in win.model_panel._infos, timeout=WAIT_MS)
    _load(qtbot, win)
    _set_spin(win, "max_tokens", 900)
    streams: list[TokenStream] = []
    win.bridge.generation_started.connect(streams.append)
    _generate(qtbot, win, "Once upon a time, in a land far away,")
    qtbot.waitUntil(lambda: bool(streams) and len(streams[-1]) > 0, timeout=WAIT_MS)
    assert win.bridge.engine.busy
    win.close()  # must cancel, join the worker and free the model without hanging
    assert win.bridge.engine.loaded is None
    assert not [t for t in threading.enumerate() if t.name.startswith("llamascope") and t.is_alive()]
    assert settings.value("window/rect") is not None


def test_bad_model_file_shows_a_message_and_cannot_be_loaded(
    qtbot: QtBot, window: MainWindow, tmp_path: Path
) -> None:
    bad = tmp_path / "random.gguf"
    bad.write_bytes(os.urandom(2048))
    panel = window.model_panel
    panel.add_model_file(str(bad))
    qtbot.waitUntil(lambda: str(bad) in panel._errors, timeout=WAIT_MS)
    assert panel.metadata_error.isVisible()
    assert "not a recognised model file" in panel.metadata_error.text().lower()
    assert not panel.load_button.isEnabled()
    assert panel._meta_labels["Architecture"].text() == "n/a"


def test_invalid_settings_are_named_and_refused(qtbot: QtBot, window: MainWindow) -> None:
    panel = window.model_panel
    _set_spin(window, "n_batch", 256)
    _set_spin(window, "n_ubatch", 512)
    qtbot.waitUntil(
        lambda: "n_ubatch (512) must not exceed n_batch (256)" in panel.problems_label.text(), timeout=WAIT_MS
    )
    qtbot.mouseClick(panel.load_button, Qt.MouseButton.LeftButton)
    assert "n_ubatch" in panel.load_status.text()
    assert window.bridge.engine.loaded is None


def test_empty_prompt_is_refused_with_a_message(qtbot: QtBot, window: MainWindow) -> None:
    _load(qtbot, window)
    with qtbot.waitSignal(window.bridge.operation_failed, timeout=WAIT_MS):
        _generate(qtbot, window, "")
    assert "empty" in window.console.stats_label.text()
    qtbot.waitUntil(lambda: window.console.generate_button.isEnabled(), timeout=WAIT_MS)


def test_tokenizer_view(qtbot: QtBot, window: MainWindow) -> None:
    _load(qtbot, window)
    console = window.console
    console.setCurrentIndex(1)
    console.tokenizer_input.setPlainText("Hello llamas")
    with qtbot.waitSignal(window.bridge.tokenized, timeout=WAIT_MS):
        qtbot.mouseClick(console.tokenize_button, Qt.MouseButton.LeftButton)
    rows = console.token_table.rowCount()
    assert rows >= 2
    assert console.token_count_label.text() == f"Tokens: {rows}"
    assert "".join(console.token_table.item(r, 2).text() for r in range(rows)) == "Hello llamas"


def test_settings_and_model_are_remembered(qtbot: QtBot, settings: QSettings, demo_model: str) -> None:
    first = MainWindow(settings=settings)
    qtbot.addWidget(first)
    qtbot.waitUntil(lambda: demo_model in first.model_panel._infos, timeout=WAIT_MS)
    _set_spin(first, "n_ctx", 3000)
    first.close()
    second = MainWindow(settings=settings)
    qtbot.addWidget(second)
    qtbot.waitUntil(lambda: demo_model in second.model_panel._infos, timeout=WAIT_MS)
    assert second.model_panel.load_settings().n_ctx == 3000
    assert second.model_panel.selected_path() == demo_model
    second.close()


def test_scrolling_over_the_settings_does_not_change_them(qtbot: QtBot, window: MainWindow) -> None:
    from PySide6.QtCore import QPoint, QPointF
    from PySide6.QtGui import QWheelEvent
    from PySide6.QtWidgets import QApplication

    spin = window.model_panel.findChild(QSpinBox, "field_n_batch")
    before = spin.value()
    centre = QPointF(spin.rect().center())
    event = QWheelEvent(
        centre,
        QPointF(spin.mapToGlobal(centre.toPoint())),
        QPoint(0, 0),
        QPoint(0, -120),
        Qt.MouseButton.NoButton,
        Qt.KeyboardModifier.NoModifier,
        Qt.ScrollPhase.NoScrollPhase,
        False,
    )
    QApplication.sendEvent(spin, event)
    assert spin.value() == before


def test_a_build_that_crashed_the_check_is_reported_before_any_load(
    qtbot: QtBot, window: MainWindow, demo_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    from app.llama import build_check
    from app.llama.build_check import CRASHED, BuildVerdict

    crashed = BuildVerdict(
        key="k",
        status=CRASHED,
        signal_text="illegal instruction (SIGILL)",
        log_tail=("ggml: AMX buffer",),
        message="This llama.cpp build crashed LlamaScope's build check on this CPU: illegal instruction.",
        rebuild_command='CMAKE_ARGS="-DGGML_AMX_INT8=OFF" python -m pip install llama-cpp-python',
    )
    qtbot.waitUntil(lambda: window.hardware_panel._report is not None, timeout=WAIT_MS)
    report = dataclasses.replace(window.hardware_panel._report, build_check=crashed)
    window.telemetry.hardware_detected.emit(report)
    box = window.build_warning
    assert box is not None and box.isVisible()
    assert "illegal instruction" in box.text() and "log" not in box.text().lower()
    assert box.detailedText() == "ggml: AMX buffer"
    assert "crashes on this CPU" in window.engine_status.text()
    window.telemetry.hardware_detected.emit(report)  # detection again: still one box
    assert window.build_warning is box
    box.close()
    # A load is refused with the same message, and nothing is loaded.
    monkeypatch.setattr(build_check, "_session_verdict", crashed)
    monkeypatch.delenv(build_check.SKIP_ENV, raising=False)
    with qtbot.waitSignal(window.bridge.operation_failed, timeout=WAIT_MS) as failed:
        window.model_panel.request_load()
    assert failed.args[0] == "load" and "illegal instruction" in failed.args[1]
    assert window.bridge.engine.loaded is None
