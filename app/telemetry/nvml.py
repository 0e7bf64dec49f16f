"""The one choke point for NVIDIA's NVML: lazy initialisation, every call through `Nvml.query`.

No NVIDIA driver is a normal state (status "no NVIDIA driver"), as is a call a GPU does not
support: the answer is None ("n/a"), the failure is logged once, and a call that a device said
it does not support is not made again. A GPU that falls off the bus ("GPU is lost") answers None
to everything from then on, without another call into the driver.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable
from typing import Any

from app.telemetry.sysfs import LogOnce

log = logging.getLogger(__name__)

# NVML return codes (nvml.h), spelled out so tests can raise them from a fake module.
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15

# Asking again will not change these answers.
_PERMANENT = {NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_NO_PERMISSION, NVML_ERROR_FUNCTION_NOT_FOUND}
_NO_DRIVER = {NVML_ERROR_LIBRARY_NOT_FOUND, NVML_ERROR_DRIVER_NOT_LOADED}

NVML_TEMPERATURE_GPU = 0
NVML_CLOCK_SM = 1
NVML_CLOCK_MEM = 2


def _import_pynvml() -> Any:
    # LlamaScope depends on nvidia-ml-py, whose module is named pynvml. Where the old "pynvml"
    # distribution (a shim that warns on import) is installed too, its warning is for packagers,
    # not for LlamaScope's users.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import pynvml

    return pynvml


class Nvml:
    """NVML through one wrapper. `module` is pynvml or a fake with the same functions."""

    def __init__(self, module: Any | None = None, *, importer: Callable[[], Any] = _import_pynvml) -> None:
        self._module = module
        self._importer = importer
        self._lock = threading.RLock()
        self._initialised = False
        self._status = "not initialised"
        self._handles: list[tuple[int, Any]] = []
        self._unsupported: set[tuple[str, int | None]] = set()
        self._lost: set[int] = set()
        self._log_once = LogOnce(log)

    # ---- state -------------------------------------------------------------------------------
    def available(self) -> bool:
        """True when NVML initialised; the first call initialises it."""
        self._ensure()
        return self._status == "ok"

    @property
    def status(self) -> str:
        """ "ok", "no NVIDIA driver", "pynvml not installed", or the initialisation error."""
        self._ensure()
        return self._status

    def device_indices(self) -> list[int]:
        """Indices of the GPUs NVML enumerated at initialisation."""
        self._ensure()
        return [index for index, _ in self._handles]

    def is_lost(self, index: int) -> bool:
        with self._lock:
            return index in self._lost

    def _ensure(self) -> None:
        with self._lock:
            if self._initialised:
                return
            self._initialised = True
            try:
                if self._module is None:
                    self._module = self._importer()
            except ImportError as exc:
                self._status = "pynvml not installed"
                self._log_once("import", logging.INFO, "NVML not used: %s", exc)
                return
            try:
                self._module.nvmlInit()
            except Exception as exc:  # any NVML failure means "no NVIDIA GPU here"
                code = getattr(exc, "value", None)
                self._status = "no NVIDIA driver" if code in _NO_DRIVER else f"NVML failed: {exc}"
                level = logging.INFO if code in _NO_DRIVER else logging.WARNING
                self._log_once("init", level, "NVML not available: %s", exc)
                return
            self._status = "ok"
            count = self._call_raw("nvmlDeviceGetCount", None) or 0
            for index in range(int(count)):
                handle = self._call_raw("nvmlDeviceGetHandleByIndex", index, index)
                if handle is not None:
                    self._handles.append((index, handle))

    # ---- calls -------------------------------------------------------------------------------
    def query(self, function: str, *args: Any) -> Any | None:
        """`pynvml.<function>(*args)` for the system (no device), or None when it fails."""
        if not self.available():
            return None
        return self._call_raw(function, None, *args)

    def device_query(self, index: int, function: str, *args: Any) -> Any | None:
        """`pynvml.<function>(handle_of(index), *args)`, or None when it fails or is unsupported."""
        if not self.available():
            return None
        with self._lock:
            if index in self._lost or (function, index) in self._unsupported:
                return None
            handle = next((h for i, h in self._handles if i == index), None)
        if handle is None:
            return None
        return self._call_raw(function, index, handle, *args)

    def _call_raw(self, function: str, index: int | None, *args: Any) -> Any | None:
        where = "system" if index is None else f"GPU {index}"
        try:
            fn = getattr(self._module, function)
        except AttributeError:
            with self._lock:
                self._unsupported.add((function, index))
            self._log_once((function, "missing"), logging.DEBUG, "NVML: %s not in this pynvml", function)
            return None
        try:
            return fn(*args)
        except Exception as exc:  # the choke point: every NVML failure becomes None
            code = getattr(exc, "value", None)
            with self._lock:
                if code in _PERMANENT:
                    self._unsupported.add((function, index))
                elif code == NVML_ERROR_GPU_IS_LOST and index is not None:
                    self._lost.add(index)
            level = logging.DEBUG if code in _PERMANENT else logging.WARNING
            self._log_once(
                (function, index, code, type(exc).__name__),
                level,
                "NVML %s on %s failed: %s",
                function,
                where,
                exc,
            )
            return None

    def shutdown(self) -> None:
        with self._lock:
            if self._status == "ok" and self._module is not None:
                try:
                    self._module.nvmlShutdown()
                except Exception as exc:
                    log.debug("nvmlShutdown failed: %s", exc)
            self._initialised = False
            self._status = "not initialised"
            self._handles = []


_shared: Nvml | None = None
_shared_lock = threading.Lock()


def shared_nvml() -> Nvml:
    """The process's one `Nvml` (detection and the sampler share its state and its log)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Nvml()
        return _shared


def text(value: object) -> str | None:
    """NVML strings come back as bytes from older bindings and str from newer ones."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)
