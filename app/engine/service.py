"""The engine host's side: an `EngineCore` whose callbacks become events on the pipe.

`HostClient("app.engine.service:EngineService")` starts it in the host process (app.engine.host).
"""

from __future__ import annotations

import ctypes
import importlib
import sys
from typing import Any

from app.engine.core import EngineCore
from app.engine.host import HostContext
from app.engine.types import (
    EngineError,
    GenerationRequest,
    LoadProgress,
    LoadResult,
    RunStats,
    TokenEvent,
    TokenPiece,
)
from app.model.settings import LoadSettings


def _return_free_memory() -> None:
    """Hand freed heap memory back to the OS (glibc keeps it for reuse otherwise).

    llama.cpp frees the model and its buffers on unload, but glibc's malloc keeps freed blocks
    below its mmap threshold, which it raises each time a large block is freed; without this the
    host kept about 40 MB after the first unloads of the demo model.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # musl and others have no malloc_trim
        pass


class EngineService:
    """The engine host's side (app.engine.host): an EngineCore whose callbacks become events.

    Load progress goes out when it moved by a per cent; tokens go out in batches, the first at
    once (so the time to the first token shows) and then at most every TOKEN_BATCH_S, so the
    client is never woken per token.
    """

    TOKEN_BATCH_S = 0.05

    def __init__(self, context: HostContext) -> None:
        self._cancel = context.cancel
        self._core = EngineCore(context.cancel)
        self._emit = context.emit

    def load(self, path: str, settings: LoadSettings, override_memory: bool) -> LoadResult:
        last = [-1.0]

        def on_progress(progress: LoadProgress) -> None:
            if progress.fraction - last[0] >= 0.01 or progress.fraction >= 1.0:
                last[0] = progress.fraction
                self._emit("load_progress", progress)

        return self._core.load(path, settings, override_memory=override_memory, on_progress=on_progress)

    def unload(self) -> None:
        self._core.unload()
        _return_free_memory()

    def is_loaded(self) -> bool:
        return self._core.loaded is not None

    def run_job(self, job: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run `job` ("module:function", one of LlamaScope's own) here in the host: a benchmark,
        an evaluation, a tuning session. It is called as `function(*args, cancel=..., emit=...,
        **kwargs)`: `cancel` is the host's cancel flag, `emit(kind, payload)` sends an event."""
        module_name, _, function_name = job.partition(":")
        if not module_name.startswith("app."):
            raise EngineError(f"not a LlamaScope job: {job}")
        function = getattr(importlib.import_module(module_name), function_name)
        return function(*args, cancel=self._cancel, emit=self._emit, **kwargs)

    def tokenize(self, text: str, add_bos: bool, special: bool) -> list[TokenPiece]:
        return self._core.tokenize(text, add_bos=add_bos, special=special)

    def detokenize(self, token_ids: list[int], special: bool) -> str:
        return self._core.detokenize(token_ids, special=special)

    def clear_kv_cache(self) -> None:
        self._core.clear_kv_cache()

    def generate(self, request: GenerationRequest, t_start_ns: int | None = None) -> RunStats:
        batch: list[TokenEvent] = []
        sent_ns = [0]

        def on_token(event: TokenEvent) -> None:
            batch.append(event)
            if event.index == 0 or event.t_ns - sent_ns[0] >= self.TOKEN_BATCH_S * 1e9:
                self._emit("tokens", batch.copy())
                batch.clear()
                sent_ns[0] = event.t_ns

        stats = self._core.generate(request, on_token, t_start_ns=t_start_ns)
        if batch:
            self._emit("tokens", batch)
        return stats

    def close(self) -> None:
        self._core.close()
