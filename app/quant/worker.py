"""The child process that runs llama.cpp's quantizer.

`llama_model_quantize` has no progress callback and no way to stop it, and it can abort the
whole process on a malformed file, so LlamaScope runs it in a process of its own that the parent
can kill (see app/quant/quantize.py). The child forwards llama.cpp's log, unchanged and as it is
written, and the parent reads its per-tensor lines
("[  12/ 272] blk.0.attn_q.weight - [...], type = f16, converting to q4_K .. size = ...") as
progress. The child writes only the file it is told to (a temporary name in the destination
folder); the parent renames it into place once the child has succeeded.

Two ways in:
- `child_main(params, conn)`: the multiprocessing target the job uses. Messages on `conn` are
  bytes: b"L" + a piece of llama.cpp's log, then b"R" + the JSON result.
- `python -m app.quant.worker`: the same for a shell (JSON parameters on stdin, llama.cpp's
  log on stderr, `LLAMASCOPE-RESULT {json}` on stdout), for debugging and scripting.
"""

from __future__ import annotations

import ctypes
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from app.llama import runtime as llama_runtime

RESULT_PREFIX = "LLAMASCOPE-RESULT "
MSG_LOG = b"L"
MSG_RESULT = b"R"
# What the multiprocessing fork server imports once, so each quantization starts in milliseconds
# instead of paying Python's and llama-cpp-python's start-up (~0.4 s) every time. "__main__" is
# multiprocessing's name for the program's main script: preloaded, the children need not import
# it again (multiprocessing would, for a script run by path).
PRELOAD_MODULES = ["__main__", "app.quant.worker", "llama_cpp"]

_log_callback_ref: Any = None  # must outlive every llama.cpp call


def _forward_llama_log(lc: Any, write: Callable[[bytes], None]) -> None:
    """Send llama.cpp's log to `write` as it comes, so the parent sees each tensor as it finishes."""
    global _log_callback_ref

    @lc.llama_log_callback  # type: ignore[misc]
    def on_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        try:
            write(text)
        except (OSError, ValueError):  # the parent is gone; it will kill us or we finish unheard
            pass

    _log_callback_ref = on_log
    lc.llama_log_set(on_log, ctypes.c_void_p(0))


def _kv_overrides(lc: Any, strings: dict[str, str]) -> Any:
    """A llama_model_kv_override array (string values), terminated by an empty key."""
    array = (lc.llama_model_kv_override * (len(strings) + 1))()
    for item, (key, value) in zip(array, strings.items(), strict=False):
        item.tag = lc.LLAMA_KV_OVERRIDE_TYPE_STR
        item.key = key.encode("utf-8")[:127]
        item.value.val_str = value.encode("utf-8")[:127]
    array[len(strings)].key = b""
    return array


def run(params: dict[str, Any], write_log: Callable[[bytes], None]) -> dict[str, Any]:
    """Quantize params["source"] to params["output"]; returns the result object for the parent.

    Keys: source, output, ftype (llama_ftype number), nthread, allow_requantize, pure,
    quantize_output_tensor, output_tensor_type / token_embedding_type (ggml_type number or None),
    kv_strings (metadata keys to write, {key: string value}), dry_run.
    """
    lc = llama_runtime.llama()
    _forward_llama_log(lc, write_log)
    q = lc.llama_model_quantize_default_params()
    q.ftype = int(params["ftype"])
    q.nthread = int(params.get("nthread") or 0)
    q.allow_requantize = bool(params.get("allow_requantize", False))
    q.pure = bool(params.get("pure", False))
    q.quantize_output_tensor = bool(params.get("quantize_output_tensor", True))
    q.dry_run = bool(params.get("dry_run", False))
    if params.get("output_tensor_type") is not None:
        q.output_tensor_type = int(params["output_tensor_type"])
    if params.get("token_embedding_type") is not None:
        q.token_embedding_type = int(params["token_embedding_type"])
    overrides = None
    if params.get("kv_strings"):
        overrides = _kv_overrides(lc, dict(params["kv_strings"]))
        q.kv_overrides = ctypes.cast(overrides, ctypes.POINTER(lc.llama_model_kv_override))
    t0 = time.perf_counter()
    rc = int(
        lc.llama_model_quantize(
            str(params["source"]).encode("utf-8"), str(params["output"]).encode("utf-8"), ctypes.byref(q)
        )
    )
    del overrides
    return {"rc": rc, "seconds": time.perf_counter() - t0}


def _safe_run(params: dict[str, Any], write_log: Callable[[bytes], None]) -> dict[str, Any]:
    try:
        return run(params, write_log)
    except Exception as exc:  # reported to the parent as a result, not a traceback
        return {"rc": -1, "error": f"{type(exc).__name__}: {exc}"}


class _LogBatcher:
    """Sends the log in pieces of whole lines at most every `interval_s`.

    llama.cpp writes a tensor's line in two or three calls; one message per call would wake the
    parent ~1,000 times for a small model, taking CPU from the quantizer on a busy machine.
    """

    def __init__(self, conn: Any, interval_s: float = 0.05) -> None:
        self._conn = conn
        self._interval_s = interval_s
        self._parts: list[bytes] = []
        self._last = 0.0

    def write(self, text: bytes) -> None:
        self._parts.append(text)
        if text.endswith(b"\n") and time.monotonic() - self._last >= self._interval_s:
            self.flush()

    def flush(self) -> None:
        if self._parts:
            self._conn.send_bytes(MSG_LOG + b"".join(self._parts))
            self._parts.clear()
        self._last = time.monotonic()


def child_main(params: dict[str, Any], conn: Any) -> None:
    """multiprocessing target: log pieces and the result go to the parent over `conn`."""
    batcher = _LogBatcher(conn)
    result = _safe_run(params, batcher.write)
    try:
        batcher.flush()
        conn.send_bytes(MSG_RESULT + json.dumps(result).encode("utf-8"))
    finally:
        conn.close()


def main() -> int:
    err = sys.stderr.buffer

    def write(text: bytes) -> None:
        err.write(text)
        err.flush()

    try:
        params = json.loads(sys.stdin.read())
    except json.JSONDecodeError as exc:
        result: dict[str, Any] = {"rc": -1, "error": f"bad parameters: {exc}"}
    else:
        result = _safe_run(params, write)
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0 if result.get("rc") == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
