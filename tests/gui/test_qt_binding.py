"""Guards against a Qt binding that corrupts reference counts when signals are emitted."""

from __future__ import annotations

import sys
import threading

from PySide6.QtCore import QObject, Signal
from pytestqt.qtbot import QtBot


class _Emitter(QObject):
    fired = Signal(object)


def test_emitting_signals_keeps_reference_counts(qtbot: QtBot) -> None:
    # PySide6 6.12.0 decrements True's reference count on every emit; before Python 3.12 made True
    # immortal, that aborts the interpreter once the count reaches zero. The count of a plain
    # object would show the same fault on any Python.
    emitter = _Emitter()
    received: list[object] = []
    emitter.fired.connect(received.append)
    payload = object()
    true_before, payload_before = sys.getrefcount(True), sys.getrefcount(payload)

    def emit_from_a_worker() -> None:
        for _ in range(200):
            emitter.fired.emit(payload)

    worker = threading.Thread(target=emit_from_a_worker, name="emitter")
    worker.start()
    worker.join()
    for _ in range(200):
        emitter.fired.emit(payload)
    qtbot.waitUntil(lambda: len(received) == 400)
    received.clear()
    assert sys.getrefcount(True) >= true_before - 10
    assert sys.getrefcount(payload) == payload_before
