"""GUI test fixtures: garbage collection confined to the GUI thread, as in the application."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from pytestqt.qtbot import QtBot

from ui.gc_guard import GuiThreadGarbageCollector


@pytest.fixture(autouse=True)
def gui_thread_gc(qtbot: QtBot) -> Iterator[None]:
    collector = GuiThreadGarbageCollector()
    yield
    collector.stop()
    gc.collect()  # widgets of this test die here, on the GUI thread
