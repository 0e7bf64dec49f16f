"""A small service for testing the engine host's plumbing without llama.cpp.

Used by tests/core/test_engine_host.py.
"""

from __future__ import annotations

import os
from typing import Any

from app.engine.host import HostContext, HostError


class ProbeService:
    def __init__(self, context: HostContext) -> None:
        self.context = context

    def pid(self) -> int:
        return os.getpid()

    def echo(self, value: Any, events: int = 0) -> Any:
        for i in range(events):
            self.context.emit("step", i)
        return value

    def fail(self, message: str) -> None:
        raise HostError(message)

    def spin_until_cancelled(self, cooperative: bool) -> int:
        """Busy work that checks the cancel flag (as llama.cpp's abort callback does), or not."""
        n = 0
        while True:
            n += 1
            if cooperative and self.context.cancel.is_set():
                return n
            if not cooperative:
                sum(range(1000))  # a native call that never looks at the flag
