"""GUI test fixtures: garbage collection confined to the GUI thread, as in the application, and
checks that a test leaves no timer running and never calls llama.cpp on the GUI thread."""

from __future__ import annotations

import gc
import threading
import traceback
from collections.abc import Iterator

import pytest
import shiboken6
from PySide6.QtCore import QCoreApplication, QEvent, QTimer
from pytestqt.qtbot import QtBot

from app.llama import runtime as llama_runtime
from ui.gc_guard import GuiThreadGarbageCollector


@pytest.fixture(autouse=True)
def llama_cpp_never_on_the_gui_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every use of llama.cpp goes through llama_runtime.llama(); none may come from the GUI thread."""
    original = llama_runtime.llama
    offenders: list[str] = []

    def guarded():  # type: ignore[no-untyped-def]
        if threading.current_thread() is threading.main_thread():
            offenders.append("".join(traceback.format_stack(limit=6)))
        return original()

    monkeypatch.setattr(llama_runtime, "llama", guarded)
    yield
    assert not offenders, "llama.cpp called on the GUI thread:\n" + offenders[0]


@pytest.fixture(autouse=True)
def gui_thread_gc(qtbot: QtBot) -> Iterator[None]:
    collector = GuiThreadGarbageCollector()
    yield
    collector.stop()
    gc.collect()  # widgets of this test die here, on the GUI thread


def _active_timers() -> list[QTimer]:
    return [
        obj
        for obj in gc.get_objects()
        if isinstance(obj, QTimer) and shiboken6.isValid(obj) and obj.isActive()
    ]


def _describe(timer: QTimer) -> str:
    chain, obj = [], timer
    while obj is not None:
        chain.append(obj.objectName() or type(obj).__name__)
        obj = obj.parent()
    return " < ".join(chain) + f" ({timer.interval()} ms{', single shot' if timer.isSingleShot() else ''})"


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """After every fixture is torn down (qtbot has closed and deleted the test's widgets): a timer
    still running belongs to an object the test left alive, and would keep waking the GUI thread."""
    result = yield
    if QCoreApplication.instance() is None:
        return result
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete.value)
    leaked = [_describe(t) for t in _active_timers()]
    for timer in _active_timers():
        timer.stop()  # one test's leak must not fail the next ones
    if leaked:
        pytest.fail(f"{item.nodeid} left timers running: " + "; ".join(leaked), pytrace=False)
    return result
