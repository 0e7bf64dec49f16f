"""Reads GGUF headers and llama.cpp build facts off the GUI thread: no file I/O or llama.cpp in a slot."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor

from PySide6.QtCore import QObject, Signal

from app.engine.crash_registry import CrashRegistry
from app.llama.runtime import platform_line
from app.model.file_format import ModelFileError
from app.model.gguf_info import inspect_model
from app.quant.types import supported_quant_types
from app.telemetry.bandwidth import cached_bandwidth

log = logging.getLogger(__name__)


class ModelInspector(QObject):
    """`request(path)` reads the header in a worker; `inspected(path, ModelInfo | None, error)` reports it."""

    inspected = Signal(str, object, str)
    missing = Signal(str)  # the path names no file (moved, deleted, an unplugged drive); before `inspected`
    crash_record_read = Signal(str, object)  # path, CrashRecord | None: did it crash llama.cpp at load?
    platform_read = Signal(str)
    quant_types_read = Signal(object)  # tuple[QuantType, ...] this llama.cpp build supports
    bandwidth_measured = Signal(
        object
    )  # app.telemetry.bandwidth.Bandwidth, or None if it could not be measured

    def __init__(self, parent: QObject | None = None, crashes: CrashRegistry | None = None) -> None:
        super().__init__(parent)
        self._crashes = crashes or CrashRegistry()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llamascope-inspector")

    def request(self, path: str) -> None:
        self._executor.submit(self._inspect, path)

    def _inspect(self, path: str) -> None:
        if not os.path.exists(path):  # a link to a file that is gone counts as missing
            self.missing.emit(path)
        try:
            info, error = inspect_model(path), ""
        except ModelFileError as exc:
            info, error = None, str(exc)
        except OSError as exc:  # e.g. permission denied, a file vanishing mid-read
            info, error = None, f"{path} could not be read: {exc.strerror or exc}"
        self.inspected.emit(path, info, error)
        self.crash_record_read.emit(path, self._crashes.lookup(path) if info is not None else None)

    def request_platform(self) -> None:
        """Read the llama.cpp build facts (a call into llama.cpp, so not on the GUI thread)."""
        self._executor.submit(lambda: self.platform_read.emit(platform_line()))

    def request_quant_types(self) -> None:
        self._executor.submit(lambda: self.quant_types_read.emit(supported_quant_types()))

    def request_bandwidth(self) -> None:
        """This machine's memory bandwidth: from the cache, else measured once (about a second)."""
        self._executor.submit(self._bandwidth)

    def _bandwidth(self) -> None:
        try:
            result = cached_bandwidth()
        except (OSError, MemoryError, ValueError) as exc:
            log.warning("memory bandwidth not measured: %s", exc)
            result = None
        self.bandwidth_measured.emit(result)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
