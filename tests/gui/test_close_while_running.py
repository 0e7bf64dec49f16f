"""Closing the window while long work runs: the work stops quietly and leaves nothing behind.

Each case starts one kind of work with the real demo model, waits until it has really started (its
first progress event), then closes the window through its real close path. After the close: no
traceback on any thread, no ERROR in the log, no failure message, no error dialog, no child process
(engine host, quantizer) still running, no temporary file in the output folder, the user's files as
they were.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QApplication, QMessageBox
from pytestqt.qtbot import QtBot

from app.bench.history import HistoryStore
from app.bench.runner import BenchPlan, BenchTest
from app.engine.imatrix_job import ImatrixRequest
from app.engine.types import GenerationRequest, TokenStream
from app.model.settings import LoadSettings
from app.quality.eval_types import EvalSettings
from app.quant.advisor import AdviceRequest
from app.quant.plan import QuantizeRequest
from app.tune.request import TuneRequest
from tests.signal_wait import start_and_wait_for
from ui.main_window import MainWindow

WAIT_MS = 600_000  # generous for a shared, loaded machine; each wait ends at its condition
SMALL = LoadSettings(n_ctx=512, n_threads=2, n_threads_batch=2)
EVAL = EvalSettings(n_ctx=128, n_chunks=40, n_threads=2)


def _children() -> dict[int, psutil.Process]:
    """This process's children, except multiprocessing's own long-lived helpers (the fork server the
    quantizer forks from, the resource tracker): they live as long as the test process by design."""
    out = {}
    for child in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(child.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if "forkserver" in cmdline or "resource_tracker" in cmdline:
            continue
        out[child.pid] = child
    return out


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


def _start_generation(win: MainWindow, qtbot: QtBot, model: str, out: Path) -> None:
    with qtbot.waitSignal(win.bridge.load_finished, timeout=WAIT_MS):
        win.bridge.request_load(model, SMALL)
    streams: list[TokenStream] = []
    win.bridge.generation_started.connect(streams.append)
    sampling = win.model_panel.sampling_settings()
    request = GenerationRequest("Tell me a long story about a lighthouse.", sampling, True, None)
    win.bridge.request_generation(win.console.chat_request(request, win.bridge.engine.loaded))
    qtbot.waitUntil(lambda: bool(streams) and len(streams[-1]) > 0, timeout=WAIT_MS)


def _start_benchmark(win: MainWindow, qtbot: QtBot, model: str, out: Path) -> None:
    plan = BenchPlan((model,), (BenchTest(n_prompt=256), BenchTest(n_gen=64)), base=SMALL, repetitions=5)
    start_and_wait_for(
        qtbot,
        win.bridge.benchmark_progressed,
        lambda: win.bridge.request_benchmark(plan, win.history, win.sampler),
        WAIT_MS,
    )


def _start_tune(win: MainWindow, qtbot: QtBot, model: str, out: Path) -> None:
    request = TuneRequest("tg:16", 6, None, ("n_threads", "flash_attn"))
    # A trial measured: the search runs.
    start_and_wait_for(
        qtbot, win.bridge.tune_trial, lambda: win.bridge.request_tune(model, SMALL, request), WAIT_MS
    )


def _start_quantize(win: MainWindow, qtbot: QtBot, model: str, out: Path) -> None:
    requests = [
        QuantizeRequest(model, t, str(out / f"demo-{t}.gguf"), allow_requantize=True, n_threads=1)
        for t in ("Q8_0", "Q5_0", "Q4_0")
    ]
    start_and_wait_for(
        qtbot, win.quality.quantize_progressed, lambda: win.quality.quantize_queue(requests), WAIT_MS
    )


def _start_perplexity(win: MainWindow, qtbot: QtBot, model: str, out: Path) -> None:
    start_and_wait_for(
        qtbot, win.quality.eval_progressed, lambda: win.quality.measure_base(model, "default", EVAL), WAIT_MS
    )


def _start_imatrix(win: MainWindow, qtbot: QtBot, model: str, out: Path) -> None:
    request = ImatrixRequest(model, None, str(out / "demo.imatrix.gguf"), n_ctx=128, n_chunks=40, n_threads=2)
    start_and_wait_for(
        qtbot, win.advice.imatrix_progressed, lambda: win.advice.compute_imatrix(request), WAIT_MS
    )


def _start_advice(win: MainWindow, qtbot: QtBot, model: str, out: Path) -> None:
    request = AdviceRequest(
        model,
        "default",
        types=("Q8_0", "Q4_0"),
        settings=EVAL,
        n_threads=2,
        allow_requantize=True,
        keep_folder=str(out),
    )
    start_and_wait_for(qtbot, win.advice.advice_progressed, lambda: win.advice.advise(request), WAIT_MS)


def _start_load(win: MainWindow, qtbot: QtBot, model: str, out: Path) -> None:
    start_and_wait_for(
        qtbot, win.bridge.load_progressed, lambda: win.bridge.request_load(model, SMALL), WAIT_MS
    )


STARTS: dict[str, Callable[[MainWindow, QtBot, str, Path], None]] = {
    "generation": _start_generation,
    "benchmark": _start_benchmark,
    "tune": _start_tune,
    "quantize": _start_quantize,
    "perplexity": _start_perplexity,
    "imatrix": _start_imatrix,
    "advice": _start_advice,
    "load": _start_load,
}


@pytest.fixture()
def thread_errors(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Exceptions that escaped any thread (what a user would see as a traceback)."""
    errors: list[str] = []
    previous = threading.excepthook

    def hook(args: Any) -> None:
        errors.append(
            f"{args.thread.name if args.thread else '?'}: {args.exc_type.__name__}: {args.exc_value}"
        )
        previous(args)

    monkeypatch.setattr(threading, "excepthook", hook)
    yield errors


@pytest.mark.parametrize("kind", list(STARTS))
def test_closing_the_window_while_work_runs_leaves_nothing_behind(
    kind: str,
    qtbot: QtBot,
    tmp_path: Path,
    demo_model: str,
    caplog: pytest.LogCaptureFixture,
    thread_errors: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("the user's own file")
    before_children = set(_children())
    # This process's temporary folders in a folder of the test's own: other processes (another test
    # run on a shared machine) may make llamascope-advise-* folders in the system's at the same time.
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    model_before = os.stat(demo_model)
    settings = QSettings(str(tmp_path / "llamascope.ini"), QSettings.Format.IniFormat)
    win = MainWindow(settings=settings, history=HistoryStore(str(tmp_path / "history.sqlite3")))
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: demo_model in win.model_panel._infos, timeout=WAIT_MS)
    failures: list[tuple[str, ...]] = []
    win.bridge.operation_failed.connect(lambda op, msg: failures.append((op, msg)))
    win.quality.failed.connect(lambda op, msg: failures.append((op, msg)))
    win.advice.imatrix_failed.connect(lambda msg: failures.append(("imatrix", msg)))
    win.advice.advice_failed.connect(lambda msg: failures.append(("advice", msg)))
    caplog.set_level(logging.WARNING)
    out_before = _snapshot(out)

    STARTS[kind](win, qtbot, demo_model, out)
    assert set(_children()) - before_children  # the engine host (and a quantizer) run: the check below bites
    if kind == "quantize":
        assert _snapshot(out) != out_before  # the quantizer's temporary file is there while it runs
    win.close()
    for _ in range(5):  # deliver whatever the workers queued for the GUI thread while it closed
        QApplication.processEvents()

    assert not thread_errors
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert not failures
    dialogs = [w for w in QApplication.topLevelWidgets() if isinstance(w, QMessageBox) and w.isVisible()]
    assert not dialogs
    # The engine host and any quantizer child have ended (a killed child may need a moment to be reaped).
    left = [p for pid, p in _children().items() if pid not in before_children]
    _gone, alive = psutil.wait_procs(left, timeout=30)
    assert not alive, [p.cmdline() for p in alive]
    # Nothing half-written in the output folder, the user's own file as it was, the model untouched.
    assert _snapshot(out) == out_before
    assert os.stat(demo_model).st_mtime_ns == model_before.st_mtime_ns
    assert os.stat(demo_model).st_size == model_before.st_size
    stray = [n for n in os.listdir(temp) if n.startswith("llamascope-advise")]
    assert not stray
