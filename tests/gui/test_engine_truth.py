"""The window says what is so: the loaded state is the engine's after a failed or cancelled load and
after the engine host ends; a generation's error is shown; a moved base gets a message; each panel's
Stop stops only its own work, and a button the engine cannot serve now is off and says why.

All through the widgets, the real demo model and real llama.cpp in the real engine host.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
from gguf import GGUFWriter
from PySide6.QtCore import QSettings, Qt
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QSpinBox
from pytestqt.qtbot import QtBot

from app.bench.history import HistoryStore
from app.engine.host import TEST_HOOKS_ENV, HostCrashed
from app.engine.types import NoModelLoadedError, RunStats, StopReason, TokenStream, stats_line
from app.model.fields import MAX_N_CTX
from app.model.gguf_info import inspect_model
from app.model.memory import estimate_memory
from tests.signal_wait import start_and_wait_for
from ui.main_window import MainWindow
from widgets.generation_console import GenerationConsole

WAIT_MS = 300_000  # generous for a shared machine; a hang still fails


@pytest.fixture()
def window(
    qtbot: QtBot, tmp_path: Path, demo_model: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[MainWindow]:
    # Before the window starts the engine host, which inherits it: the host then accepts `_test_crash`.
    monkeypatch.setenv(TEST_HOOKS_ENV, "1")
    settings = QSettings(str(tmp_path / "llamascope.ini"), QSettings.Format.IniFormat)
    win = MainWindow(settings=settings, history=HistoryStore(str(tmp_path / "history.sqlite3")))
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: demo_model in win.model_panel._infos, timeout=WAIT_MS)
    yield win
    win.close()


def _set_spin(window: MainWindow, name: str, value: int) -> None:
    spin = window.model_panel.findChild(QSpinBox, f"field_{name}")
    assert spin is not None
    spin.setValue(value)


def _select(qtbot: QtBot, window: MainWindow, path: str) -> None:
    window.model_panel.add_model_file(path)
    qtbot.waitUntil(
        lambda: path in window.model_panel._infos or path in window.model_panel._errors, timeout=WAIT_MS
    )


def _load(qtbot: QtBot, window: MainWindow, n_ctx: int = 512) -> None:
    _set_spin(window, "n_ctx", n_ctx)
    with qtbot.waitSignal(window.bridge.load_finished, timeout=WAIT_MS):
        qtbot.mouseClick(window.model_panel.load_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.console.generate_button.isEnabled(), timeout=WAIT_MS)
    assert window.engine_status.text().startswith("Loaded")


def _assert_shows_nothing_loaded(qtbot: QtBot, window: MainWindow) -> None:
    """The window, the engine and the engine host all agree: no model."""
    panel, console = window.model_panel, window.console
    assert window.bridge.engine.loaded is None
    qtbot.waitUntil(lambda: window.engine_status.text() == "No model loaded", timeout=WAIT_MS)
    assert not console.generate_button.isEnabled()
    assert "No model is loaded" in console.generate_button.toolTip()
    assert not panel.unload_button.isEnabled()
    assert not panel.load_status.text().startswith("✓")
    assert panel.loaded_model_name() == "n/a"
    # The host itself holds none: a request that needs a model is refused by it.
    exc = window.bridge.engine.tokenize("llamas").exception(WAIT_MS / 1000)
    assert isinstance(exc, NoModelLoadedError)
    # That request was nobody's in the window: the panels saw the engine taken, then free again.
    qtbot.waitUntil(lambda: "busy" not in panel.load_button.toolTip(), timeout=WAIT_MS)


def _generate(qtbot: QtBot, window: MainWindow, prompt: str, max_tokens: int = 64) -> None:
    _set_spin(window, "max_tokens", max_tokens)
    window.console.completion_radio.setChecked(True)
    window.console.prompt_edit.setPlainText(prompt)
    qtbot.mouseClick(window.console.generate_button, Qt.MouseButton.LeftButton)


def _alien_gguf(folder: Path) -> str:
    """A well-formed GGUF of an architecture llama.cpp does not know: its header reads fine, so the
    window lets it be loaded, and llama.cpp refuses it only after the old model was freed."""
    path = folder / "alien.gguf"
    writer = GGUFWriter(str(path), "alienformer")
    writer.add_block_count(1)
    writer.add_context_length(128)
    writer.add_embedding_length(8)
    writer.add_head_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((16, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


# ---- 1. the loaded state is the engine's ---------------------------------------------------------


def test_a_file_llama_cpp_refuses_after_the_old_model_was_freed_leaves_nothing_loaded(
    qtbot: QtBot, window: MainWindow, tmp_path: Path, demo_model: str
) -> None:
    _load(qtbot, window)
    alien = _alien_gguf(tmp_path)
    _select(qtbot, window, alien)
    assert window.model_panel.load_button.isEnabled()  # its header is fine
    unloaded: list[bool] = []
    window.bridge.unloaded.connect(lambda: unloaded.append(True))
    with qtbot.waitSignal(window.bridge.operation_failed, timeout=WAIT_MS) as failed:
        qtbot.mouseClick(window.model_panel.load_button, Qt.MouseButton.LeftButton)
    assert failed.args[0] == "load" and "alienformer" in failed.args[1]
    assert unloaded == [True]  # said before the failure, once
    _assert_shows_nothing_loaded(qtbot, window)
    status = window.model_panel.load_status.text()
    assert "alienformer" in status and "freed first, so no model is loaded" in status
    # Loading a good model again works, and so does generating.
    _select(qtbot, window, demo_model)
    _load(qtbot, window)
    with qtbot.waitSignal(window.bridge.generation_finished, timeout=WAIT_MS) as finished:
        _generate(qtbot, window, "The capital of France is", max_tokens=8)
    assert finished.args[0].generated_tokens > 0


def test_a_reload_refused_before_freeing_keeps_the_model_and_says_so(
    qtbot: QtBot, window: MainWindow, tmp_path: Path, demo_model: str
) -> None:
    copy = tmp_path / "copy.gguf"
    shutil.copyfile(demo_model, copy)
    _select(qtbot, window, str(copy))
    _load(qtbot, window)
    # The file goes away; the loaded model (mapped) stays in memory. A reload with other settings
    # is refused when the file is read, before the old model is freed.
    os.rename(copy, tmp_path / "moved.gguf")
    _set_spin(window, "n_ctx", 1024)
    assert window.model_panel.load_button.text() == "Reload"
    with qtbot.waitSignal(window.bridge.operation_failed, timeout=WAIT_MS) as failed:
        qtbot.mouseClick(window.model_panel.load_button, Qt.MouseButton.LeftButton)
    assert "not found" in failed.args[1]
    assert window.bridge.engine.loaded is not None
    assert window.engine_status.text().startswith("Loaded")
    assert "is still loaded" in window.model_panel.load_status.text()
    qtbot.waitUntil(lambda: window.console.generate_button.isEnabled(), timeout=WAIT_MS)
    with qtbot.waitSignal(window.bridge.generation_finished, timeout=WAIT_MS) as finished:
        _generate(qtbot, window, "The capital of France is", max_tokens=8)
    assert finished.args[0].generated_tokens > 0


def test_a_cancelled_reload_leaves_nothing_loaded(qtbot: QtBot, window: MainWindow) -> None:
    panel = window.model_panel
    _load(qtbot, window)
    _set_spin(window, "n_ctx", 1024)
    with qtbot.waitSignal(window.bridge.load_cancelled, timeout=WAIT_MS):
        qtbot.mouseClick(panel.load_button, Qt.MouseButton.LeftButton)
        # Only submitted so far: reading the header alone takes longer than this click.
        assert panel.cancel_button.isEnabled()
        qtbot.mouseClick(panel.cancel_button, Qt.MouseButton.LeftButton)
    _assert_shows_nothing_loaded(qtbot, window)
    assert panel.load_status.text() == (
        "Loading cancelled; the model loaded before was freed first, so no model is loaded."
    )
    _load(qtbot, window)


def _kv_needs_more_than_this_machine_has(demo_model: str, settings: object) -> str | None:
    """Why the test below cannot run here, or None. With the default heuristic overcommit (0) or
    strict accounting (2), Linux refuses an allocation larger than RAM + swap at once; with
    "always" (1) it would be granted and llama.cpp would clear it page by page."""
    try:
        overcommit = Path("/proc/sys/vm/overcommit_memory").read_text().strip()
    except OSError:
        return "not Linux: how an impossible allocation fails is not known"
    if overcommit == "1":
        return "vm.overcommit_memory is 1: a huge KV cache would be granted and touched"
    estimate = estimate_memory(inspect_model(demo_model), settings)  # type: ignore[arg-type]
    memory = psutil.virtual_memory().total + psutil.swap_memory().total
    if estimate.kv_cache_ram_bytes <= memory:
        return "this machine has more memory than the largest KV cache the settings allow"
    return None


def test_a_reload_with_settings_llama_cpp_cannot_allocate_leaves_nothing_loaded(
    qtbot: QtBot, window: MainWindow, demo_model: str
) -> None:
    panel = window.model_panel
    _load(qtbot, window)
    huge = {"n_ctx": MAX_N_CTX, "type_k": "f32", "type_v": "f32"}
    reason = _kv_needs_more_than_this_machine_has(
        demo_model, dataclasses.replace(panel.load_settings(), **huge)
    )
    if reason is not None:
        pytest.skip(reason)
    panel.apply_recommendations(huge)
    panel.override_check.setChecked(True)  # past the memory check: llama.cpp's allocation fails
    with qtbot.waitSignal(window.bridge.operation_failed, timeout=WAIT_MS) as failed:
        qtbot.mouseClick(panel.load_button, Qt.MouseButton.LeftButton)
    assert "could not create a context" in failed.args[1]
    _assert_shows_nothing_loaded(qtbot, window)
    assert "freed first, so no model is loaded" in panel.load_status.text()


@pytest.mark.parametrize("how", ["abort", "SIGKILL"])
def test_an_engine_host_that_ends_while_idle_is_shown_at_once(
    qtbot: QtBot, window: MainWindow, how: str
) -> None:
    _load(qtbot, window)
    engine = window.bridge.engine
    first_host = engine.host_pid
    assert first_host is not None
    with qtbot.waitSignal(window.bridge.model_lost, timeout=WAIT_MS) as lost:
        if how == "abort":
            # A native abort inside the host (the test hook runs C's abort()), asked outside any
            # request of the window's: nobody is waiting for an answer.
            with pytest.raises(HostCrashed):
                engine._host.call("_test_crash", "abort")
        else:
            os.kill(first_host, signal.SIGKILL)  # as the kernel's out-of-memory killer does
    words = "aborted by an assertion" if how == "abort" else "killed"
    assert "ended while idle" in lost.args[0] and words in lost.args[0]
    assert window.model_panel.load_status.text().startswith("✗ The engine process ended")
    _assert_shows_nothing_loaded(qtbot, window)
    # A fresh host serves the next load.
    _load(qtbot, window)
    assert engine.host_pid not in (None, first_host)
    with qtbot.waitSignal(window.bridge.generation_finished, timeout=WAIT_MS) as finished:
        _generate(qtbot, window, "The capital of France is", max_tokens=8)
    assert finished.args[0].generated_tokens > 0


def test_an_engine_host_that_dies_during_a_generation_fails_it_and_shows_nothing_loaded(
    qtbot: QtBot, window: MainWindow
) -> None:
    _load(qtbot, window)
    engine = window.bridge.engine
    streams: list[TokenStream] = []
    window.bridge.generation_started.connect(streams.append)
    lost: list[str] = []
    window.bridge.model_lost.connect(lost.append)
    with qtbot.waitSignal(window.bridge.operation_failed, timeout=WAIT_MS) as failed:
        _generate(qtbot, window, "Once upon a time, in a land far away,", max_tokens=900)
        qtbot.waitUntil(lambda: bool(streams) and len(streams[-1]) > 0, timeout=WAIT_MS)
        pid = engine.host_pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
    assert failed.args[0] == "generate" and "crashed while generating" in failed.args[1]
    assert window.console.stats_label.text().startswith("Not generated: llama.cpp crashed")
    _assert_shows_nothing_loaded(qtbot, window)
    assert lost == []  # the failed request said it; no second message


# ---- 2. a generation's error is shown ------------------------------------------------------------


def test_a_generation_that_ends_in_an_error_shows_the_error(qtbot: QtBot) -> None:
    # llama.cpp gives no input that makes llama_decode fail halfway through a generation of the demo
    # model, so the RunStats the engine returns then (stop reason ERROR, llama.cpp's message) is built.
    stats = RunStats(
        chat=False,
        prompt_tokens=6,
        generated_tokens=3,
        ttft_s=0.05,
        prompt_tokens_per_s=120.0,
        gen_tokens_per_s=40.0,
        total_s=0.2,
        stop_reason=StopReason.ERROR,
        text=" Paris, the",
        context_tokens=9,
        error="llama.cpp failed to evaluate the tokens (llama_decode returned -3).",
    )
    assert stats_line(stats).endswith(
        "stop: error — llama.cpp failed to evaluate the tokens (llama_decode returned -3)."
    )
    console = GenerationConsole()
    qtbot.addWidget(console)
    console.on_generation_finished(stats)
    assert "llama_decode returned -3" in console.stats_label.text()
    assert "c62828" in console.stats_label.styleSheet()  # in red, like every failure
    ok = dataclasses.replace(stats, stop_reason=StopReason.EOS, error=None)
    console.on_generation_finished(ok)
    assert console.stats_label.text().endswith("stop: eos") and console.stats_label.styleSheet() == ""


# ---- 3. a moved base gets a message --------------------------------------------------------------


def _measure_then_stop_before_speed(qtbot: QtBot, window: MainWindow, button: object, kind: str) -> object:
    """Click `button`, wait for its `kind` result, and cancel the speed measurement that follows
    (its figures are not what these tests look at)."""
    quant = window.quantization_panel
    with qtbot.waitSignal(
        window.quality.eval_finished, timeout=WAIT_MS, check_params_cb=lambda k, _r: k == kind
    ) as finished:
        qtbot.mouseClick(button, Qt.MouseButton.LeftButton)  # type: ignore[arg-type]
    start_and_wait_for(
        qtbot,
        window.quality.busy_changed,
        lambda: qtbot.mouseClick(quant.measure_cancel_button, Qt.MouseButton.LeftButton),
        WAIT_MS,
        until=lambda args: not args[0],
    )
    return finished.args[1]


def test_measuring_a_base_that_has_moved_gives_a_message(
    qtbot: QtBot, window: MainWindow, tmp_path: Path, demo_model: str
) -> None:
    quant = window.quantization_panel
    base = tmp_path / "base.gguf"
    shutil.copyfile(demo_model, base)
    _select(qtbot, window, str(base))
    qtbot.waitUntil(lambda: quant.source == str(base), timeout=WAIT_MS)
    quant.ctx_spin.setValue(128)
    quant.chunks_spin.setValue(2)
    _measure_then_stop_before_speed(qtbot, window, quant.base_button, "ppl")
    assert window.quality.workflow.base == str(base)

    os.rename(base, tmp_path / "moved-away.gguf")
    # Measuring the base's old path: a message at once, nothing left "Measuring…".
    with qtbot.waitSignal(window.quality.failed, timeout=WAIT_MS) as failed:
        qtbot.mouseClick(quant.measure_button, Qt.MouseButton.LeftButton)
    assert "moved" in failed.args[1]
    assert quant.quality_status.text().startswith("✗ Model file not found")
    assert not window.quality.workflow.running
    assert quant.measure_button.isEnabled()
    qtbot.mouseClick(quant.base_button, Qt.MouseButton.LeftButton)  # the same for "Set as base"
    assert quant.quality_status.text().startswith("✗ Model file not found")

    # Another file is still measured against the moved base's saved log-probabilities, and the
    # panel says that the base has moved.
    _select(qtbot, window, demo_model)
    qtbot.waitUntil(lambda: quant.source == demo_model, timeout=WAIT_MS)
    result = _measure_then_stop_before_speed(qtbot, window, quant.measure_button, "kld")
    assert result.kld_mean >= 0  # type: ignore[attr-defined]
    assert "base.gguf has moved or been deleted" in quant.base_label.text()
    assert "log-probabilities saved then" in quant.base_label.text()

    # Without the saved log-probabilities either, the measurement is perplexity only, and says so.
    logits = window.quality.workflow.base_logits
    assert logits is not None
    os.remove(logits)
    _measure_then_stop_before_speed(qtbot, window, quant.measure_button, "ppl")
    assert "log-probabilities are gone" in quant.base_label.text()


# ---- 4. each bridge its own cancel; busy shared --------------------------------------------------


def _model_menu_stop(window: MainWindow) -> QAction:
    action = next(a for a in window.findChildren(QAction) if a.text() == "&Cancel / Stop")
    return action


def test_the_windows_stop_does_not_stop_a_perplexity_run_and_its_buttons_say_why(
    qtbot: QtBot, window: MainWindow
) -> None:
    _load(qtbot, window)
    quant, console, perf, panel = (
        window.quantization_panel,
        window.console,
        window.performance_panel,
        window.model_panel,
    )
    quant.ctx_spin.setValue(128)
    quant.chunks_spin.setValue(8)
    with qtbot.waitSignal(
        window.quality.eval_finished, timeout=WAIT_MS, check_params_cb=lambda k, _r: k == "ppl"
    ) as done:
        start_and_wait_for(
            qtbot,
            window.quality.eval_progressed,
            lambda: qtbot.mouseClick(quant.measure_button, Qt.MouseButton.LeftButton),
            WAIT_MS,
        )
        activity = window.bridge.engine.activity
        assert activity is not None and activity.owner == window.quality.OWNER
        # Every button that needs the engine is off and says why.
        for button in (
            console.generate_button,
            console.tokenize_button,
            perf.bench_run,
            perf.tune_box.run_button,
            panel.load_button,
            panel.unload_button,
        ):
            assert not button.isEnabled(), button.text()
            assert "busy measuring the perplexity of" in button.toolTip(), button.text()
            assert "(Quantization)" in button.toolTip()
        # The window's Stop (Model ▸ Cancel / Stop, as the console's and Performance's Stop) is
        # for the window's own requests.
        _model_menu_stop(window).trigger()
        assert not window.bridge.engine.cancel(window.bridge.OWNER)
    result = done.args[1]
    assert result.n_chunks == 8  # all of it: nothing stopped it
    # Its speed measurement follows; the measurement's own Cancel in the Quantization panel stops it.
    with qtbot.waitSignal(window.quality.failed, timeout=WAIT_MS) as failed:
        qtbot.waitUntil(lambda: quant.measure_cancel_button.isEnabled(), timeout=WAIT_MS)
        qtbot.mouseClick(quant.measure_cancel_button, Qt.MouseButton.LeftButton)
    assert failed.args[0] == "speed"
    qtbot.waitUntil(lambda: console.generate_button.isEnabled(), timeout=WAIT_MS)
    assert perf.bench_run.isEnabled() and panel.load_button.isEnabled()
    assert "busy" not in console.generate_button.toolTip()
    assert "busy" not in perf.bench_run.toolTip()


def test_quantizations_cancel_does_not_stop_a_chat_and_measuring_waits_for_it(
    qtbot: QtBot, window: MainWindow, tmp_path: Path
) -> None:
    _load(qtbot, window)
    quant = window.quantization_panel
    table = quant.type_table
    row = next(r for r in range(table.rowCount()) if table.item(r, 0).text() == "Q8_0")  # type: ignore[union-attr]
    table.selectRow(row)
    quant.requantize_check.setChecked(True)
    quant.output_edit.setText(str(tmp_path / "cancelled.Q8_0.gguf"))
    streams: list[TokenStream] = []
    window.bridge.generation_started.connect(streams.append)
    with qtbot.waitSignal(window.bridge.generation_finished, timeout=WAIT_MS) as generated:
        _generate(qtbot, window, "Once upon a time, in a land far away,", max_tokens=900)
        qtbot.waitUntil(lambda: bool(streams) and len(streams[-1]) > 0, timeout=WAIT_MS)
        # While the console generates, measuring (which needs the engine) is off and says why;
        # quantizing runs in a process of its own and is not.
        for button in (quant.measure_button, quant.base_button):
            assert not button.isEnabled()
            assert "busy generating text (console)" in button.toolTip()
        assert quant.quantize_button.isEnabled()
        with qtbot.waitSignal(window.quality.failed, timeout=WAIT_MS) as failed:
            qtbot.mouseClick(quant.quantize_button, Qt.MouseButton.LeftButton)
            qtbot.waitUntil(lambda: quant.cancel_button.isEnabled(), timeout=WAIT_MS)
            activity = window.bridge.engine.activity
            assert activity is not None and activity.owner == window.bridge.OWNER  # still generating
            qtbot.mouseClick(quant.cancel_button, Qt.MouseButton.LeftButton)
        assert failed.args[0] == "quantize" and "cancel" in failed.args[1].lower()
        assert not (tmp_path / "cancelled.Q8_0.gguf").exists()
        # The chat goes on: tokens keep coming after that Cancel (an engine cancel would have
        # stopped it at the next token). Then the console's own Stop ends it.
        so_far = len(streams[-1])
        qtbot.waitUntil(lambda: len(streams[-1]) >= so_far + 3, timeout=WAIT_MS)
        assert window.console.stop_button.isEnabled()
        qtbot.mouseClick(window.console.stop_button, Qt.MouseButton.LeftButton)
    stats: RunStats = generated.args[0]
    assert stats.stop_reason is StopReason.CANCELLED and stats.generated_tokens >= so_far + 3
    qtbot.waitUntil(lambda: quant.measure_button.isEnabled(), timeout=WAIT_MS)
    assert "busy" not in quant.measure_button.toolTip()
