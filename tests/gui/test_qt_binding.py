"""Guards against a Qt binding that corrupts reference counts when signals are emitted."""

from __future__ import annotations

import gc
import sys
import threading

from PySide6.QtCore import QObject, Signal
from pytestqt.qtbot import QtBot


class _Emitter(QObject):
    fired = Signal(object)


def test_emitting_signals_keeps_reference_counts(qtbot: QtBot) -> None:
    # PySide6 6.12.0 drops a reference to True on every emit(); before Python 3.12 made True
    # immortal, the interpreter aborts ("bool_dealloc") once the count reaches zero.
    emitter = _Emitter()
    received: list[object] = []
    emitter.fired.connect(received.append)
    payload = object()
    gc.collect()
    # Direct emits on this thread run no event loop, so nothing else frees objects meanwhile.
    true_before, payload_before = sys.getrefcount(True), sys.getrefcount(payload)
    for _ in range(1000):
        emitter.fired.emit(payload)
    true_after = sys.getrefcount(True)
    assert true_after > true_before - 100, f"True lost {true_before - true_after} references in 1000 emits"
    received.clear()
    assert sys.getrefcount(payload) == payload_before

    # Emits from a worker thread are queued to this one; the payload must come back intact.
    def emit_from_a_worker() -> None:
        for _ in range(200):
            emitter.fired.emit(payload)

    worker = threading.Thread(target=emit_from_a_worker, name="emitter")
    worker.start()
    worker.join()
    qtbot.waitUntil(lambda: len(received) == 200)
    received.clear()
    assert sys.getrefcount(payload) == payload_before
