"""Waiting for a signal that worker threads emit again and again (progress), without pytest-qt's
waitSignal.

waitSignal connects a bound method of its blocker. A progress signal emitted from a worker thread
reaches the GUI thread as queued calls; the ones still queued when the blocker is done (it
disconnects, but posted calls stay posted) run after the blocker has been collected, and PySide then
calls into a freed object: the test process died with a segmentation fault in a full run. A plain
function holding a list is kept alive by the connection itself, so a late call is harmless.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pytestqt.qtbot import QtBot


def start_and_wait_for(
    qtbot: QtBot,
    signal: Any,
    start: Callable[[], object],
    timeout_ms: int,
    until: Callable[[tuple], bool] = lambda _args: True,
) -> list[tuple]:
    """Connect a recorder to `signal`, call `start`, and wait until an emission whose arguments satisfy
    `until` (by default: any emission). Returns every emission's arguments seen so far (the list keeps
    growing)."""
    seen: list[tuple] = []
    signal.connect(lambda *args: seen.append(args))
    start()
    qtbot.waitUntil(lambda: any(until(args) for args in seen), timeout=timeout_ms)
    return seen
