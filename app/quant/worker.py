"""The child process that runs llama.cpp's quantizer.

`llama_model_quantize` has no progress callback and no way to stop it, and it can abort the
whole process on a malformed file, so LlamaScope runs it in a process of its own that the parent
can kill (see app/quant/quantize.py). The child forwards llama.cpp's log, unchanged and as it is
written, and the parent reads its per-tensor lines
("[  12/ 272] blk.0.attn_q.weight - [...], type = f16, converting to q4_K .. size = ...") as
progress. The child writes only the file it is told to (a temporary name in the destination
folder); the parent renames it into place once the child has succeeded.

Two ways in:
- `child_main(params, conn, lifeline)`: the multiprocessing target the job uses. Messages on
  `conn` are bytes: b"L" + a piece of llama.cpp's log, then b"R" + the JSON result. The child
  dies with the process that started the job (see `_die_with_parent`).
- `python -m app.quant.worker`: the same for a shell (JSON parameters on stdin, llama.cpp's
  log on stderr, `LLAMASCOPE-RESULT {json}` on stdout), for debugging and scripting.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import threading
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
EXIT_ORPHANED = 70  # the child's exit status when the process that started its job went away
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

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


def _kv_overrides(lc: Any, strings: dict[str, str], ints: dict[str, int] | None = None) -> Any:
    """A llama_model_kv_override array (string and int64 values), terminated by an empty key."""
    ints = ints or {}
    array = (lc.llama_model_kv_override * (len(strings) + len(ints) + 1))()
    items = iter(array)
    for key, value in strings.items():
        item = next(items)
        item.tag = lc.LLAMA_KV_OVERRIDE_TYPE_STR
        item.key = key.encode("utf-8")[:127]
        item.value.val_str = value.encode("utf-8")[:127]
    for key, number in ints.items():
        item = next(items)
        item.tag = lc.LLAMA_KV_OVERRIDE_TYPE_INT
        item.key = key.encode("utf-8")[:127]
        item.value.val_i64 = int(number)
    array[len(strings) + len(ints)].key = b""
    return array


def _imatrix_array(lc: Any, path: str) -> tuple[Any, list[Any]]:
    """The file's matrix as a llama_model_imatrix_data array ending in a null name, which is how
    llama_model_quantize_impl finds its end (src/llama-quant.cpp); with the buffers it points
    into, which must outlive the call."""
    from app.quant.imatrix import quantizer_arrays, read_imatrix

    arrays = quantizer_arrays(read_imatrix(path))
    keep: list[Any] = []
    array = (lc.llama_model_imatrix_data * (len(arrays) + 1))()
    for item, (name, values) in zip(array, arrays.items(), strict=False):
        encoded = name.encode("utf-8")
        keep.extend((encoded, values))
        item.name = encoded
        item.data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        item.size = int(values.size)
    array[len(arrays)].name = None
    array[len(arrays)].size = 0
    return array, keep


def _tensor_type_array(lc: Any, overrides: list[Any]) -> tuple[Any, list[bytes]]:
    """[(regex, ggml_type number), ...] as a llama_model_tensor_override array ending in a null
    pattern (and GGML_TYPE_COUNT, as llama-quantize writes it)."""
    keep: list[bytes] = []
    array = (lc.llama_model_tensor_override * (len(overrides) + 1))()
    for item, (pattern, type_id) in zip(array, overrides, strict=False):
        encoded = str(pattern).encode("utf-8")
        keep.append(encoded)
        item.pattern = encoded
        item.type = int(type_id)
    array[len(overrides)].pattern = None
    array[len(overrides)].type = int(lc.GGML_TYPE_COUNT)
    return array, keep


def run(params: dict[str, Any], write_log: Callable[[bytes], None]) -> dict[str, Any]:
    """Quantize params["source"] to params["output"]; returns the result object for the parent.

    Keys: source, output, ftype (llama_ftype number), nthread, allow_requantize, pure,
    quantize_output_tensor, output_tensor_type / token_embedding_type (ggml_type number or None),
    kv_strings / kv_ints (metadata keys to write, {key: value}), dry_run, imatrix (the path of
    an importance matrix file, GGUF or .dat, loaded here), tensor_types ([[regex, ggml_type
    number], ...], llama-quantize's --tensor-type; the first pattern that matches a name wins).
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
    keep: list[Any] = []  # everything llama.cpp points into during the call
    if params.get("kv_strings") or params.get("kv_ints"):
        overrides = _kv_overrides(lc, dict(params.get("kv_strings") or {}), dict(params.get("kv_ints") or {}))
        keep.append(overrides)
        q.kv_overrides = ctypes.cast(overrides, ctypes.POINTER(lc.llama_model_kv_override))
    if params.get("imatrix"):
        matrix, buffers = _imatrix_array(lc, str(params["imatrix"]))
        keep.extend((matrix, buffers))
        q.imatrix = ctypes.cast(matrix, ctypes.POINTER(lc.llama_model_imatrix_data))
    if params.get("tensor_types"):
        types, patterns = _tensor_type_array(lc, list(params["tensor_types"]))
        keep.extend((types, patterns))
        q.tt_overrides = ctypes.cast(types, ctypes.POINTER(lc.llama_model_tensor_override))
    t0 = time.perf_counter()
    rc = int(
        lc.llama_model_quantize(
            str(params["source"]).encode("utf-8"), str(params["output"]).encode("utf-8"), ctypes.byref(q)
        )
    )
    del keep
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


def _watch_lifeline(lifeline: Any) -> None:
    try:
        lifeline.recv_bytes()  # nothing is ever sent: this returns only when the job's end closes
    except (EOFError, OSError):
        pass
    os._exit(EXIT_ORPHANED)  # no clean-up: the job is gone, and llama.cpp is mid-call


def _set_parent_death_signal() -> None:
    """Linux: the kernel kills this process when its parent dies (PR_SET_PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    except (OSError, AttributeError):
        pass  # the lifeline below still ends this process


def _leave_forkserver() -> None:
    """Close this child's copy of the fork server's "alive" pipe.

    The fork server exits when every holder of that pipe's write end is gone: the process that
    started it and, by default, every child it forked. Holding it here would keep the fork server
    alive for as long as llama.cpp runs, so the parent-death signal would never come; closed, the
    fork server ends with LlamaScope, and the kernel then kills this child.
    """
    try:
        from multiprocessing import forkserver

        # CPython's private names (3.8 to 3.13): if they change, the lifeline still works.
        server: Any = getattr(forkserver, "_forkserver")  # noqa: B009
        if server.get_inherited_fds() is None:  # not forked by a fork server (spawn)
            return
        fd = getattr(server, "_forkserver_alive_fd", None)
        if isinstance(fd, int):
            server._forkserver_alive_fd = None
            os.close(fd)
    except (ImportError, AttributeError, OSError):
        pass  # another Python's internals: the lifeline below still ends this process


def _die_with_parent(lifeline: Any) -> None:
    """End this process when the job's process dies, even by kill -9, so that llama.cpp does not
    go on writing tens of GB for nobody.

    Two ways, because either alone has a gap. On Linux the child's parent is the fork server, and
    PR_SET_PDEATHSIG kills the child when that exits, which it does once LlamaScope has gone (see
    `_leave_forkserver`): the kernel's doing, whatever the child's threads are busy with. On
    every platform a thread waits on the lifeline pipe, whose other end only the job holds; the
    OS closes it when the job's process dies. It also covers a parent that died before prctl.
    """
    _set_parent_death_signal()
    _leave_forkserver()
    if lifeline is not None:
        threading.Thread(
            target=_watch_lifeline, args=(lifeline,), name="llamascope-lifeline", daemon=True
        ).start()


def child_main(params: dict[str, Any], conn: Any, lifeline: Any = None) -> None:
    """multiprocessing target: log pieces and the result go to the parent over `conn`; the child
    ends by itself when `lifeline`'s other end closes (the job's process has gone)."""
    _die_with_parent(lifeline)
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
