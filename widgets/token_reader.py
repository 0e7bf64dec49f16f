"""Hands a widget the new tokens of a running generation a few times a second."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QObject, QTimer

from app.engine.types import TokenEvent, TokenStream


class TokenReader(QObject):
    """Polls a `TokenStream` every `interval_ms` while started and passes new events on in batches.

    The GUI thread does work for tokens only as often as the reader ticks, however fast the model
    generates. `finish()` stops the ticks and passes on whatever is left, so a widget that calls it
    when the generation ends has seen every token.
    """

    def __init__(
        self, interval_ms: int, consume: Callable[[list[TokenEvent]], None], parent: QObject | None = None
    ) -> None:
        super().__init__(parent)
        self._consume = consume
        self._stream: TokenStream | None = None
        self._read = 0
        self._timer = QTimer(self)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self.poll)

    def start(self, stream: TokenStream, *, ticking: bool = True) -> None:
        """Read `stream` from its first token; without `ticking`, only when `finish` is called."""
        self._stream = stream
        self._read = 0
        if ticking:
            self._timer.start()
        else:
            self._timer.stop()

    def set_ticking(self, ticking: bool) -> None:
        """Start or stop the ticks of a running read (tokens keep collecting in the stream)."""
        if self._stream is None:
            return
        if ticking:
            self._timer.start()
        else:
            self._timer.stop()

    def poll(self) -> None:
        if self._stream is None:
            return
        events = self._stream.since(self._read)
        if events:
            self._read += len(events)
            self._consume(events)

    def finish(self) -> None:
        self._timer.stop()
        self.poll()
        self._stream = None

    def is_active(self) -> bool:
        return self._timer.isActive()
