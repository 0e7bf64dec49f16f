"""GUI test fixtures: garbage collection confined to the GUI thread, as in the application."""

from __future__ import annotations

import gc
import threading
import traceback
from collections.abc import Iterator

import pytest
from pytestqt.qtbot import QtBot

from app import llama_runtime
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
