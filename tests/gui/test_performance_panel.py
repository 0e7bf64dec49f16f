"""Performance panel: live figures, the benchmark runner and the history, through the widgets."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import QItemSelectionModel, QSettings, Qt
from PySide6.QtWidgets import QGroupBox, QSpinBox
from pytestqt.qtbot import QtBot

from app.bench.history import HistoryStore
from app.tune.results import TrialRecord, TrialStatus, TuneProgress
from ui.main_window import MainWindow
from widgets.performance_panel import PerformancePanel
from widgets.table_fit import WHOLE_TEXT

WAIT_MS = 180_000


@pytest.fixture()
def window(qtbot: QtBot, tmp_path: Path, demo_model: str) -> Iterator[MainWindow]:
    settings = QSettings(str(tmp_path / "llamascope.ini"), QSettings.Format.IniFormat)
    win = MainWindow(settings=settings, history=HistoryStore(str(tmp_path / "history.sqlite3")))
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: demo_model in win.model_panel._infos, timeout=WAIT_MS)
    spin = win.model_panel.findChild(QSpinBox, "field_n_ctx")
    spin.setValue(512)
    win.model_panel.findChild(QSpinBox, "field_n_threads").setValue(1)
    yield win
    win.close()


def _small_benchmark(win: MainWindow, reps: int = 2) -> None:
    perf = win.performance_panel
    perf.bench_pp.setText("16")
    perf.bench_tg.setText("4")
    perf.bench_threads.setText("1")
    perf.bench_reps.setValue(reps)


def test_a_benchmark_runs_from_the_panel_and_is_kept(qtbot: QtBot, window: MainWindow) -> None:
    perf = window.performance_panel
    _small_benchmark(window)
    # What the bar says and where it stands after each progress report (the panel hears it first).
    seen: list[tuple[int, str]] = []
    window.bridge.benchmark_progressed.connect(
        lambda *_: seen.append((perf.bench_progress.value(), perf.bench_progress.format()))
    )
    with qtbot.waitSignal(window.bridge.benchmark_finished, timeout=WAIT_MS):
        qtbot.mouseClick(perf.bench_run, Qt.MouseButton.LeftButton)
        assert perf.bench_stop.isEnabled()
    steps = [(v, f) for v, f in seen if not f.startswith(("loading", "starting"))]
    assert steps == [
        (0, "pp16 · warm-up"),
        (1, "pp16 · repetition 1 of 2"),
        (2, "pp16 · repetition 2 of 2"),
        (3, "pp16 · 2 of 2 repetitions done"),
        (3, "tg4 · warm-up"),
        (4, "tg4 · repetition 1 of 2"),
        (5, "tg4 · repetition 2 of 2"),
        (6, "tg4 · 2 of 2 repetitions done"),
    ]
    assert perf.bench_table.rowCount() == 2
    assert [perf.bench_table.item(r, 0).text() for r in range(2)] == ["pp16", "tg4"]
    assert "±" in perf.bench_table.item(0, 2).text()
    # Each row says how far to trust it: its CV, and the verdict with every figure in the tooltip.
    headers = [perf.bench_table.horizontalHeaderItem(c).text() for c in range(perf.bench_table.columnCount())]
    assert headers[3] == "CV" and headers[-1] == "trust"
    for row in range(2):
        assert perf.bench_table.item(row, 3).text().endswith(" %")  # 2 repetitions: a CV
        verdict = perf.bench_table.item(row, 6)
        assert verdict.text() == "ok" or verdict.text().startswith("⚠ ")
        assert "steal:" in verdict.toolTip() and "other load:" in verdict.toolTip()
    assert perf.bench_status.text().startswith("Done: 2 result(s), stored as run")
    assert perf.bench_progress.value() == perf.bench_progress.maximum()
    assert perf.history_table.rowCount() == 1
    assert perf.history_table.item(0, 2).text() == "benchmark"
    assert perf.history_table.item(0, 3).text() == "finished"


def test_stop_keeps_the_finished_repetitions(qtbot: QtBot, window: MainWindow) -> None:
    perf = window.performance_panel
    _small_benchmark(window, reps=100)
    perf.bench_pp.setText("0")

    def stop_after_first_repetition(done: int, total: int, what: str) -> None:
        if "repetition 2 of" in what and perf.bench_stop.isEnabled():  # repetition 1 finished
            qtbot.mouseClick(perf.bench_stop, Qt.MouseButton.LeftButton)

    window.bridge.benchmark_progressed.connect(stop_after_first_repetition)
    with qtbot.waitSignal(window.bridge.benchmark_finished, timeout=WAIT_MS) as finished:
        qtbot.mouseClick(perf.bench_run, Qt.MouseButton.LeftButton)
    results, _run_ids = finished.args[0]
    assert len(results) == 1 and not results[0].complete
    assert len(results[0].samples_ns) < 100
    assert perf.bench_status.text().startswith("Stopped")
    assert perf.history_table.item(0, 3).text() == "cancelled"


def test_two_runs_compare_with_welch(qtbot: QtBot, window: MainWindow) -> None:
    perf = window.performance_panel
    _small_benchmark(window, reps=3)
    perf.bench_pp.setText("0")
    for _ in range(2):
        with qtbot.waitSignal(window.bridge.benchmark_finished, timeout=WAIT_MS):
            qtbot.mouseClick(perf.bench_run, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: perf.bench_run.isEnabled(), timeout=WAIT_MS)
    table = perf.history_table
    assert table.rowCount() == 2
    selection = table.selectionModel()
    for row in (0, 1):
        selection.select(
            table.model().index(row, 0),
            QItemSelectionModel.SelectionFlag.Select | QItemSelectionModel.SelectionFlag.Rows,
        )
    assert perf.compare_button.isEnabled()
    qtbot.mouseClick(perf.compare_button, Qt.MouseButton.LeftButton)
    assert perf.compare_table.rowCount() == 1
    assert perf.compare_table.item(0, 0).text() == "tg4"
    assert "%" in perf.compare_table.item(0, 4).text()
    assert "p =" in perf.compare_table.item(0, 5).text()
    # One run selected: it measured one configuration, so the message says to pick two runs.
    table.clearSelection()
    table.selectRow(0)
    assert perf.compare_button.isEnabled()
    qtbot.mouseClick(perf.compare_button, Qt.MouseButton.LeftButton)
    assert "select two runs" in perf.bench_status.text()


def test_sweeps_every_parameter_and_several_models(
    qtbot: QtBot, window: MainWindow, tmp_path: Path, demo_model: str
) -> None:
    perf = window.performance_panel
    second = tmp_path / "second copy.gguf"
    second.symlink_to(demo_model)
    _small_benchmark(window, reps=1)
    perf.bench_tg.setText("0")
    perf.bench_mmap.setText("0,1")
    perf.bench_ctv.setText("f16")
    perf.bench_ngl.setText("0")
    perf.set_extra_models([str(second), str(tmp_path / "gone.gguf")])
    assert perf.bench_models_label.text() == "selected model + 2 more"
    assert "second copy.gguf" in perf.bench_models_label.toolTip()
    perf.request_benchmark()
    assert "no such model file" in perf.bench_status.text()  # named before anything runs
    perf.set_extra_models([str(second)])
    plan = perf.build_plan()
    assert plan.models == (demo_model, str(second))
    assert dict(plan.sweep) == {
        "n_threads": (1,),
        "n_batch": (2048,),  # llama-bench's defaults, as `llamascope bench` has them
        "n_ubatch": (512,),
        "flash_attn": (-1,),
        "use_mmap": (False, True),
        "type_v": ("f16",),
        "n_gpu_layers": (0,),
    }
    with qtbot.waitSignal(window.bridge.benchmark_finished, timeout=WAIT_MS):
        perf.request_benchmark()
    configs = [perf.bench_table.item(r, 1).text() for r in range(perf.bench_table.rowCount())]
    assert len(configs) == 4  # 2 models x mmap 0/1 x pp16
    assert sum(c.startswith("second copy.gguf") for c in configs) == 2
    assert {c.split()[-1] for c in configs} == {"mmap=0", "mmap=1"}
    # One run per model; one selected compares its two configurations.
    qtbot.waitUntil(lambda: perf.history_table.rowCount() == 2, timeout=WAIT_MS)
    perf.history_table.selectRow(0)
    qtbot.mouseClick(perf.compare_button, Qt.MouseButton.LeftButton)
    assert perf.compare_table.rowCount() == 1
    config = perf.compare_table.item(0, 1).text()
    assert config.endswith("mmap=0 → t=1 b=2048 ub=512 fa=auto ctk=f16 ctv=f16 ngl=0 mmap=1")
    perf.bench_models_clear.click()
    assert perf.build_plan().models == (demo_model,)
    assert not perf.build_plan().warmup_until_steady
    perf.bench_steady.setChecked(True)
    assert perf.build_plan().warmup_until_steady


def test_bad_benchmark_input_is_named(qtbot: QtBot, window: MainWindow) -> None:
    perf = window.performance_panel
    perf.bench_pp.setText("abc")
    qtbot.mouseClick(perf.bench_run, Qt.MouseButton.LeftButton)
    assert perf.bench_status.text().startswith("✗")
    assert "abc" in perf.bench_status.text()
    assert perf.bench_table.rowCount() == 0


def test_live_figures_during_generation(qtbot: QtBot, window: MainWindow) -> None:
    perf, console = window.performance_panel, window.console
    with qtbot.waitSignal(window.bridge.load_finished, timeout=WAIT_MS):
        qtbot.mouseClick(window.model_panel.load_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: perf.eff_bandwidth.text().endswith("iB/s"), timeout=WAIT_MS)
    console.completion_radio.setChecked(True)
    console.prompt_edit.setPlainText("Once upon a time, in a land far away,")
    with qtbot.waitSignal(window.bridge.generation_finished, timeout=WAIT_MS) as finished:
        qtbot.mouseClick(console.generate_button, Qt.MouseButton.LeftButton)
    stats = finished.args[0]
    # The first token came with the TTFT and the prompt tokens (the live view shows them at once):
    # the very figures the generation's RunStats reports at the end.
    first = window.bridge.tokens.since(0)[0]
    assert first.index == 0 and first.ttft_s == stats.ttft_s and first.prompt_tokens == stats.prompt_tokens
    assert all(e.ttft_s is None and e.prompt_tokens is None for e in window.bridge.tokens.since(1))
    assert perf.tile_tokens.value.text() == str(stats.generated_tokens)
    assert perf.tile_speed.value.text() == f"{stats.gen_tokens_per_s:.1f} t/s"
    assert perf.tile_ttft.value.text().endswith(" ms")
    assert perf.speed_plot.latest("per token") is not None
    assert perf.eff_roofline.text().endswith("% of the bandwidth limit")
    # The generation was stored in the history too.
    qtbot.waitUntil(lambda: perf.history_table.rowCount() == 1, timeout=WAIT_MS)
    assert perf.history_table.item(0, 2).text() == "generation"


def test_live_view_draws_while_generating_or_only_at_the_end(
    qtbot: QtBot, window: MainWindow, tmp_path: Path
) -> None:
    perf, console, engine = window.performance_panel, window.console, window.bridge.engine
    with qtbot.waitSignal(window.bridge.load_finished, timeout=WAIT_MS):
        qtbot.mouseClick(window.model_panel.load_button, Qt.MouseButton.LeftButton)
    window.model_panel.findChild(QSpinBox, "field_max_tokens").setValue(400)
    window.model_panel.findChild(QSpinBox, "field_top_k").setValue(1)  # greedy: no early end of text
    console.completion_radio.setChecked(True)
    console.prompt_edit.setPlainText("Once upon a time, in a land far away,")

    def points() -> int:
        return len(perf.speed_plot.data("per token")[0])

    # Live: the plot and the tokens tile fill while the engine is still generating.
    assert perf.live_check.isChecked()
    seen_live: list[int] = []
    with qtbot.waitSignal(window.bridge.generation_finished, timeout=WAIT_MS) as finished:
        qtbot.mouseClick(console.generate_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: points() > 0 or not engine.busy, timeout=WAIT_MS)
        if engine.busy:
            seen_live.append(points())
    stats = finished.args[0]
    assert seen_live and 0 < seen_live[0] < stats.generated_tokens - 1
    assert points() == stats.generated_tokens - 1  # one rate per gap between tokens
    x, _ = perf.speed_plot.data("per token")
    assert 0 < x[-1] <= perf.speed_plot.x_range()[1]  # the whole run in view

    # Not live: nothing is drawn until the generation ends, then all of it.
    perf.live_check.setChecked(False)
    with qtbot.waitSignal(window.bridge.generation_finished, timeout=WAIT_MS) as finished:
        qtbot.mouseClick(console.generate_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: len(window.bridge.tokens) > 20 or not engine.busy, timeout=WAIT_MS)
        assert points() == 0 and perf.tile_tokens.value.text() == "0"
    assert points() == finished.args[0].generated_tokens - 1
    assert perf.tile_tokens.value.text() == str(finished.args[0].generated_tokens)

    # The choice is remembered.
    window.close()
    settings = QSettings(str(tmp_path / "llamascope.ini"), QSettings.Format.IniFormat)
    again = MainWindow(settings=settings, history=HistoryStore(str(tmp_path / "history.sqlite3")))
    qtbot.addWidget(again)
    assert not again.performance_panel.live_check.isChecked()
    again.close()


def test_no_column_cuts_its_boxes_off(qtbot: QtBot, window: MainWindow) -> None:
    """At the default size every box fits its column; squeezed, a column scrolls sideways rather
    than cutting off the right edge of its boxes."""
    panels = (window.model_panel, window.hardware_panel, window.quantization_panel, window.performance_panel)
    window.resize(1600, 950)
    qtbot.wait(50)
    for panel in panels:
        assert panel._scroll.horizontalScrollBar().maximum() == 0, type(panel).__name__
    window.resize(1100, 700)
    qtbot.wait(50)
    for panel in panels:
        content = panel._content
        assert content.width() >= content.minimumSizeHint().width(), type(panel).__name__


def test_import_llama_bench_output(qtbot: QtBot, window: MainWindow, tmp_path: Path) -> None:
    record = {
        "build_commit": "abc1234",
        "cpu_info": "Some CPU",
        "gpu_info": "",
        "backends": "CPU",
        "model_filename": "models/x.gguf",
        "model_type": "llama ?B Q4_1",
        "model_size": 1,
        "model_n_params": 1,
        "n_batch": 512,
        "n_ubatch": 512,
        "n_threads": 4,
        "type_k": "f16",
        "type_v": "f16",
        "n_gpu_layers": 0,
        "flash_attn": 0,
        "n_prompt": 512,
        "n_gen": 0,
        "n_depth": 0,
        "test_time": "2026-11-01T00:00:00Z",
        "avg_ns": 1000,
        "stddev_ns": 0,
        "avg_ts": 1.0,
        "stddev_ts": 0.0,
        "samples_ns": [1000000000],
        "samples_ts": [512.0],
    }
    path = tmp_path / "lb.json"
    path.write_text(json.dumps([record]))
    perf = window.performance_panel
    perf.import_llama_bench(str(path))
    assert "Imported 1 llama-bench result" in perf.bench_status.text()
    assert perf.history_table.item(0, 2).text() == "import"
    broken = tmp_path / "broken.json"
    broken.write_text("[{]")
    perf.import_llama_bench(str(broken))
    assert perf.bench_status.text().startswith("✗")


def test_auto_tune_stop_keeps_the_best_and_applies_it(qtbot: QtBot, window: MainWindow) -> None:
    tune = window.performance_panel.tune_box
    for label, check in tune.param_checks.items():
        check.setChecked(label == "Threads")
    tune.trials.setValue(50)
    trials: list[object] = []

    def stop_after_first_measured_trial(trial: object) -> None:
        if trial.state.measured:  # type: ignore[attr-defined]
            trials.append(trial)
            if len(trials) == 1:
                qtbot.mouseClick(tune.stop_button, Qt.MouseButton.LeftButton)

    window.bridge.tune_trial.connect(stop_after_first_measured_trial)
    with qtbot.waitSignal(window.bridge.tune_finished, timeout=WAIT_MS) as finished:
        qtbot.mouseClick(tune.run_button, Qt.MouseButton.LeftButton)
    result = finished.args[0]
    assert result.stop_reason.startswith("cancel") or "stop" in result.stop_reason.lower()
    assert len(result.measured_trials) < 50
    assert tune.table.rowCount() >= 1
    # Trials count from 1 in the table and the chart alike; fewer than asked says why.
    assert tune.table.item(0, 0).text() == "1" and tune.trial_points.getData()[0][0] == 1
    assert f"{len(result.measured_trials)} of 50 trials measured: stopped by the user" in tune.status.text()
    assert "Best" in tune.result_label.text() and "Recommendation" in tune.result_label.text()
    if result.best_trial is not None:
        assert tune.apply_button.isEnabled()
        qtbot.mouseClick(tune.apply_button, Qt.MouseButton.LeftButton)
        applied = window.model_panel.load_settings()
        assert applied.n_threads == result.best.n_threads


def test_the_tune_result_says_whether_the_gain_is_proven() -> None:
    from types import SimpleNamespace

    from widgets.tune_box import recommendation_text

    def text(gain: SimpleNamespace | None, proven: bool) -> str:
        return recommendation_text(SimpleNamespace(gain=gain, proven=proven))  # type: ignore[arg-type]

    assert text(None, False).startswith("not known")
    assert text(SimpleNamespace(significant=True, gain_percent=12.0), True).startswith("apply the best")
    assert text(SimpleNamespace(significant=True, gain_percent=-8.0), False).startswith("keep the default")
    assert "not proven" in text(SimpleNamespace(significant=False, gain_percent=3.0), False)


def _no_llamascope_threads() -> bool:
    import threading

    return not [t for t in threading.enumerate() if t.name.startswith("llamascope") and t.is_alive()]


@pytest.mark.parametrize("what", ["benchmark", "tune"])
def test_closing_the_window_mid_run_ends_it_at_once(qtbot: QtBot, window: MainWindow, what: str) -> None:
    import time

    import psutil

    perf = window.performance_panel
    started: list[object] = []
    if what == "benchmark":
        _small_benchmark(window, reps=1000)
        perf.bench_pp.setText("256")
        window.bridge.benchmark_progressed.connect(lambda *a: started.append(a))
        qtbot.mouseClick(perf.bench_run, Qt.MouseButton.LeftButton)
    else:
        tune = perf.tune_box
        tune.trials.setValue(500)
        window.bridge.tune_progressed.connect(started.append)
        qtbot.mouseClick(tune.run_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: len(started) >= 2, timeout=WAIT_MS)
    host_pid = window.bridge.engine.host_pid
    assert host_pid is not None and window.bridge.engine.busy
    t0 = time.monotonic()
    window.close()
    elapsed = time.monotonic() - t0
    assert not window.isVisible()
    assert elapsed < 2.0, f"closing took {elapsed:.2f} s"
    assert _no_llamascope_threads()
    assert not psutil.pid_exists(host_pid) or psutil.Process(host_pid).status() == psutil.STATUS_ZOMBIE


def test_a_host_killed_mid_benchmark_fails_the_run_with_a_message(qtbot: QtBot, window: MainWindow) -> None:
    import os
    import signal

    perf = window.performance_panel
    _small_benchmark(window, reps=1000)
    killed: list[int] = []

    def kill_once(done: int, total: int, what: str) -> None:
        pid = window.bridge.engine.host_pid
        if "repetition" in what and not killed and pid is not None:
            killed.append(pid)
            os.kill(pid, signal.SIGKILL)

    window.bridge.benchmark_progressed.connect(kill_once)
    with qtbot.waitSignal(window.bridge.operation_failed, timeout=WAIT_MS) as failed:
        qtbot.mouseClick(perf.bench_run, Qt.MouseButton.LeftButton)
    operation, message = failed.args
    assert operation == "benchmark"
    assert "while benchmarking" in message and "killed" in message
    qtbot.waitUntil(lambda: not window.bridge.engine.busy, timeout=WAIT_MS)
    # The app lives on and the next run works on a fresh host.
    _small_benchmark(window, reps=1)
    with qtbot.waitSignal(window.bridge.benchmark_finished, timeout=WAIT_MS):
        qtbot.mouseClick(perf.bench_run, Qt.MouseButton.LeftButton)
    assert window.bridge.engine.host_pid not in (None, killed[0])


# ---- fitting the column ----------------------------------------------------------------------------

LONG_MODEL = "models/a-rather-long-model-file-name-Q4_K_M-instruct-v2.gguf"


def _llama_bench_record(n_threads: int, ts: float) -> dict[str, object]:
    """A llama-bench JSON record of a pp512 test in a sweep (threads), with a long model file name."""
    return {
        "build_commit": "abc1234",
        "cpu_info": "Some CPU",
        "gpu_info": "",
        "backends": "CPU",
        "model_filename": LONG_MODEL,
        "model_type": "llama ?B Q4_1",
        "model_size": 1,
        "model_n_params": 1,
        "n_batch": 512,
        "n_ubatch": 512,
        "n_threads": n_threads,
        "type_k": "q8_0",
        "type_v": "q8_0",
        "n_gpu_layers": 0,
        "flash_attn": 1,
        "n_prompt": 512,
        "n_gen": 0,
        "n_depth": 0,
        "test_time": "2026-11-01T00:00:00Z",
        "avg_ns": 1_000_000_000,
        "stddev_ns": 0,
        "avg_ts": ts,
        "stddev_ts": 1.0,
        "samples_ns": [1_000_000_000, 1_010_000_000, 990_000_000],
        "samples_ts": [ts, ts - 1, ts + 1],
    }


def _assert_fits(qtbot: QtBot, perf: PerformancePanel, what: str) -> None:
    qtbot.wait(10)  # let the layouts settle
    width = perf.minimumSizeHint().width()
    assert width <= MAX_COLUMN_MIN_WIDTH, f"{what}: the panel asks for {width} px"
    for box in perf.findChildren(QGroupBox):
        assert box.minimumSizeHint().width() <= MAX_COLUMN_MIN_WIDTH, (what, box.title())
    for table in (perf.bench_table, perf.history_table, perf.compare_table, perf.tune_box.table):
        if table.isVisible() and table.rowCount():
            assert table.horizontalScrollBar().maximum() == 0, (what, table.objectName())


MAX_COLUMN_MIN_WIDTH = 420  # the window gives a column 340-460 px at 1366 pixels wide


def test_the_panel_never_asks_for_more_than_a_column(qtbot: QtBot, tmp_path: Path) -> None:
    perf = PerformancePanel(HistoryStore(str(tmp_path / "history.sqlite3")))
    qtbot.addWidget(perf)
    perf.resize(400, 900)
    perf.show()
    qtbot.waitExposed(perf)
    _assert_fits(qtbot, perf, "at the start")
    for name, records in (("a", [(4, 500.0), (2, 300.0)]), ("b", [(4, 510.0), (2, 290.0)])):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps([_llama_bench_record(t, ts) for t, ts in records]))
        perf.import_llama_bench(str(path))
    assert perf.history_table.rowCount() == 2
    # One run selected: its first test over time, under a title naming the long model file.
    perf.history_table.selectRow(0)
    assert perf.history_plot_title.text().startswith("pp512 on a-rather-long-model-file-name")
    _assert_fits(qtbot, perf, "one run plotted")
    # Both runs compared: the configurations are long text.
    perf.history_table.selectAll()
    qtbot.mouseClick(perf.compare_button, Qt.MouseButton.LeftButton)
    assert perf.compare_table.rowCount() == 2
    config = perf.compare_table.item(0, 1)
    assert "ctk=q8_0" in config.text() and config.toolTip().startswith(config.text())
    _assert_fits(qtbot, perf, "after comparing two runs")
    # The whole table in a window of its own, every column at full width.
    dialog = perf.compare_table_button.open_dialog()  # deletes itself when closed
    qtbot.waitExposed(dialog)
    whole = dialog.table
    assert whole.rowCount() == 2 and whole.item(0, 1).text() == config.text()
    verdict = perf.compare_table.item(0, 5)
    full = verdict.data(WHOLE_TEXT)
    assert full.startswith(verdict.text()) and full in verdict.toolTip() and whole.item(0, 5).text() == full
    header = whole.horizontalHeader()
    assert all(header.sectionSize(c) >= whole.sizeHintForColumn(c) for c in range(whole.columnCount()))
    screen = dialog.screen().availableGeometry().width()
    assert dialog.width() >= min(header.length(), int(0.9 * screen) - 1)  # as wide as it needs, or may
    dialog.close()
    # A tune starts: its status, the trials table with every setting.
    tune = perf.tune_box
    tune.tune_requested.connect(lambda request: None)  # nobody runs it here: the box shows what arrives
    qtbot.mouseClick(tune.run_button, Qt.MouseButton.LeftButton)
    tune.on_progress(TuneProgress("search", "trial 3 of 12", 3, 12, 42.0))
    settings = {"n_threads": 2, "n_threads_batch": 2, "n_batch": 512, "n_ubatch": 256, "flash_attn": True}
    for number in range(3):
        tune.on_trial(
            TrialRecord(number, "numeric", {**settings, "type_k": "q8_0"}, None, 123.4, TrialStatus.COMPLETE)
        )
    tune.on_trial(TrialRecord(3, "numeric", settings, None, 12.0, TrialStatus.PRUNED, "clearly worse"))
    header = tune.table.horizontalHeader()
    settings_width = header.sectionSize(1)
    assert settings_width >= header.fontMetrics().horizontalAdvance("settings") + 8  # not "etting"
    _assert_fits(qtbot, perf, "after a tune started")
    # An export's note shows right under the Export button, not far above it.
    perf.bench_status.setText(f"Exported to {tmp_path / ('a-long-folder-name' * 4) / 'llamascope-bench.md'}")
    layout = perf.bench_export.parentWidget().layout()
    assert layout.indexOf(perf.bench_status) == layout.indexOf(perf.bench_progress) - 1
    assert perf.bench_status.geometry().top() >= perf.bench_export.geometry().bottom()
    _assert_fits(qtbot, perf, "after an export")


def test_auto_tune_offers_what_its_trials_measure_and_what_this_build_can_change(qtbot: QtBot) -> None:
    from types import SimpleNamespace

    from app.tune.request import MIN_TRIALS
    from app.tune.space import DEFAULT_PP_TOKENS, DEFAULT_TG_TOKENS, Objective
    from widgets.tune_box import TuneBox

    tune = TuneBox()
    qtbot.addWidget(tune)
    labels = {tune.objective.itemData(i): tune.objective.itemText(i) for i in range(tune.objective.count())}
    # The label names the test each trial runs (app.tune.measure runs Objective.parse(spec)).
    assert labels["tg:32"] == f"Generation speed (tg{DEFAULT_TG_TOKENS})" == "Generation speed (tg32)"
    assert labels["pp:128"] == f"Prompt speed (pp{DEFAULT_PP_TOKENS})" == "Prompt speed (pp128)"
    assert labels["mix:512,128"] == "Chat turn: 512 prompt + 128 generated"
    for spec in labels:
        assert Objective.parse(spec).spec == spec  # what the request carries is what was labelled
    # One trial would measure only the current settings.
    assert tune.trials.minimum() == MIN_TRIALS == 2
    tune.trials.setValue(1)
    assert tune.request().n_trials == 2
    # GPU layers: off until the build is known, then only with GPU offload and a GPU in its device list.
    gpu = tune.param_checks["GPU layers"]
    assert not gpu.isChecked()
    cpu_only = SimpleNamespace(build=SimpleNamespace(gpu_offload=False), build_error=None, gpus=())
    tune.set_hardware(cpu_only)  # type: ignore[arg-type]
    assert not gpu.isChecked() and not gpu.isEnabled() and "CPU-only" in gpu.toolTip()
    assert "n_gpu_layers" not in tune.request().parameters
    with_gpu = SimpleNamespace(build=SimpleNamespace(gpu_offload=True), build_error=None, gpus=(object(),))
    tune.set_hardware(with_gpu)  # type: ignore[arg-type]
    assert gpu.isChecked() and gpu.isEnabled()
    assert "n_gpu_layers" in tune.request().parameters


def test_auto_tune_on_this_machine_ticks_gpu_layers_only_if_its_build_offloads(
    qtbot: QtBot, window: MainWindow
) -> None:
    perf = window.performance_panel
    qtbot.waitUntil(lambda: perf._hardware is not None, timeout=WAIT_MS)
    report = perf._hardware
    assert report is not None
    can_offload = report.build is not None and report.build.gpu_offload and bool(report.gpus)
    gpu = perf.tune_box.param_checks["GPU layers"]
    assert gpu.isChecked() == gpu.isEnabled() == can_offload
