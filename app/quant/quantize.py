"""Quantize a GGUF with llama.cpp's quantizer, in a child process that can be stopped.

A request is first checked by `plan_quantization` (app.quant.plan), which reads only the source's
header. `QuantizeJob` runs the plan: it creates a temporary file in the destination folder
(proving the folder is writable), starts a child process (app.quant.worker, through
multiprocessing's fork server; see `_process_context`) that writes into it, reads llama.cpp's per-
tensor log lines, which the child forwards over a pipe, as progress, and renames the temporary
file into place (os.replace, atomic on one filesystem) only after the child has succeeded and the
written file parses as GGUF. Cancel kills the child and deletes the temporary file. The source is
opened read-only by llama.cpp and is never the output.

A dry run (`QuantizeRequest.dry_run`) writes nothing: llama.cpp decides every tensor's type as it
would (mix, overrides, shape fallbacks) and logs, per tensor, its shape, its type in the source and
the type it would get; `llama_model_quantize` returns only 0, and the log's own sizes are rounded
to 0.01 MiB. So the job parses those lines and computes each tensor's bytes exactly
(rows x ggml row size of the new type) and the file's size as the source's header (everything
before the tensor data) plus every tensor's bytes padded to GGUF's 32-byte alignment. The header
the quantizer writes differs from the source's by the few KV pairs it sets (file type, the
quantization version, the imatrix keys): within a few hundred bytes, while the tensor data is
exact.

Callbacks (`on_progress`, `on_log`) run on the job's supervisor thread ("llamascope-quantize");
a GUI must re-emit them as signals, not touch widgets from them."""

from __future__ import annotations

import json
import logging
import multiprocessing
import multiprocessing.context
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from multiprocessing.connection import Connection

from app.common.formatting import format_bytes
from app.model.file_format import ModelFileError, detect_format
from app.model.gguf_info import inspect_model
from app.model.model_info import KEY_QUANTIZED_FROM
from app.quant import worker as quantize_worker
from app.quant.imatrix import (
    KEY_QUANTIZE_IMATRIX_DATASET,
    KEY_QUANTIZE_IMATRIX_FILE,
    KEY_QUANTIZE_IMATRIX_N_CHUNKS,
    KEY_QUANTIZE_IMATRIX_N_ENTRIES,
)
from app.quant.partials import (
    PartialEntry,
    PartialRegistry,
    partial_name,
    remove_stale_partials,
    still_named,
    try_lock,
)
from app.quant.plan import (
    QuantizeCancelled,
    QuantizeError,
    QuantizePlan,
    QuantizeProgress,
    QuantizeRequest,
    QuantizeResult,
    TensorSize,
    disk_free_bytes,
    plan_quantization,
    space_needed_bytes,
)
from app.quant.types import (
    ftype_value,
    tensor_type_id,
)
from app.quant.worker import MSG_RESULT, PRELOAD_MODULES

try:
    import fcntl  # POSIX: advisory locks mark a temporary file as in use
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["QuantizeJob", "quantize", "remove_stale_partials"]

log = logging.getLogger(__name__)

_TENSOR_LINE = re.compile(r"^\[\s*(\d+)/\s*(\d+)\]\s+(\S+)")

_FAIL_LINE = re.compile(r"failed to quantize:\s*(.*)")

# llama_model_quantize_impl's summary of the tensor data it wrote: "quant size = 98.87 MiB (6.17 BPW)"
_QUANT_SIZE_LINE = re.compile(r"quant size\s*=\s*([\d.]+) MiB")

# A dry run's tensor line: "[   1/ 272] token_embd.weight - [   576,  49152,      1,      1], type =    f16,
# size =    54.00 MiB ->    15.19 MiB (q5_0)"; a copied tensor has no "-> ... (type)".
_DRY_RUN_LINE = re.compile(
    r"^\[\s*\d+/\s*\d+\]\s+(\S+)\s+-\s+\[([\d,\s]+)\],\s+type\s+=\s+(\S+),\s+size\s+=\s+[\d.]+\s+MiB"
    r"(?:\s+->\s+[\d.]+\s+MiB\s+\((\S+)\))?"
)
_GGUF_ALIGNMENT = 32

MISSING_IMATRIX_HINT = (
    " That tensor type needs an importance matrix: compute one with `llamascope imatrix MODEL -o "
    "MODEL.imatrix.gguf` and pass it with --imatrix."
)


def _process_context() -> multiprocessing.context.BaseContext:
    """multiprocessing's fork server where the platform has one (Linux, macOS), else spawn.

    A spawned child pays Python's and llama-cpp-python's start-up (~0.4 s) for every job; the
    fork server imports them once and forks each child from that single-threaded process, so a
    job starts in milliseconds and still runs in a fresh process of its own. (Forking the GUI
    process itself would copy its threads' locks: not safe.)
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD_MODULES)
        return ctx
    return multiprocessing.get_context("spawn")


class QuantizeJob:
    """One quantization in a child process: start, watch progress, cancel, wait for the result."""

    def __init__(
        self,
        request: QuantizeRequest,
        *,
        on_progress: Callable[[QuantizeProgress], None] | None = None,
        on_log: Callable[[str], None] | None = None,
        free_bytes: Callable[[str], int] = disk_free_bytes,
        registry: PartialRegistry | None = None,
    ) -> None:
        self.request = request
        self._on_progress = on_progress
        self._on_log = on_log
        self._free_bytes = free_bytes
        self._future: Future[QuantizeResult] = Future()
        self._lock = threading.Lock()
        self._cancelled = threading.Event()
        self._proc: multiprocessing.process.BaseProcess | None = None
        self._thread: threading.Thread | None = None
        self._temp_path: str | None = None
        self._temp_fd: int | None = None  # open and locked while the job may write the temporary file
        self._registry = registry or PartialRegistry()
        self._registered: PartialEntry | None = None  # the temporary file's entry in the registry
        self._lifeline: Connection | None = None  # the child exits when this closes (our death)
        self.plan: QuantizePlan | None = None

    @property
    def future(self) -> Future[QuantizeResult]:
        """Completes with the QuantizeResult, or QuantizeError / QuantizeCancelled."""
        return self._future

    @property
    def child_pid(self) -> int | None:
        """The quantizer child's process id once started (for diagnostics and tests)."""
        proc = self._proc
        return None if proc is None else proc.pid

    def start(self) -> QuantizePlan:
        """Check the request, create the temporary file and start the child; raises QuantizeError."""
        with self._lock:
            if self._thread is not None:
                raise QuantizeError("This job has already been started.")
            if self._cancelled.is_set():
                raise QuantizeCancelled("Quantization cancelled before it started.")
            plan = plan_quantization(self.request, free_bytes=self._free_bytes)
            self.plan = plan
            # A dry run opens no output; os.devnull is what it would harmlessly write to if it did.
            self._temp_path = None if self.request.dry_run else self._create_temp_file(plan.output_path)
            kv_strings = (
                {KEY_QUANTIZED_FROM: plan.source_quantized_type} if plan.source_quantized_type else {}
            )
            kv_strings.update(dict(self.request.metadata))
            kv_ints: dict[str, int] = {}
            if plan.imatrix is not None:  # what llama-quantize records about the matrix
                kv_strings[KEY_QUANTIZE_IMATRIX_FILE] = plan.imatrix.path
                if plan.imatrix.datasets:
                    kv_strings[KEY_QUANTIZE_IMATRIX_DATASET] = plan.imatrix.datasets[0]
                kv_ints[KEY_QUANTIZE_IMATRIX_N_ENTRIES] = plan.imatrix.n_entries
                if plan.imatrix.chunk_count > 0:
                    kv_ints[KEY_QUANTIZE_IMATRIX_N_CHUNKS] = plan.imatrix.chunk_count
            params = {
                "source": plan.source.path,
                "output": self._temp_path if self._temp_path is not None else os.devnull,
                "dry_run": self.request.dry_run,
                "imatrix": os.path.abspath(self.request.imatrix) if self.request.imatrix else None,
                "tensor_types": [[p, tensor_type_id(t)] for p, t in self.request.tensor_types],
                "kv_ints": kv_ints,
                "ftype": ftype_value(plan.qtype),
                "nthread": self.request.n_threads or 0,
                "allow_requantize": self.request.allow_requantize,
                "pure": self.request.pure,
                "quantize_output_tensor": not self.request.leave_output_tensor,
                "output_tensor_type": _optional_type_id(self.request.output_tensor_type),
                "token_embedding_type": _optional_type_id(self.request.token_embedding_type),
                "kv_strings": kv_strings,
            }
            t0 = time.perf_counter()
            ctx = _process_context()
            reader, writer = ctx.Pipe(duplex=False)
            # Nothing is ever sent on the lifeline: the child waits for EOF, which comes when
            # this end closes, at the job's end or when this process dies however it dies.
            lifeline_r, self._lifeline = ctx.Pipe(duplex=False)
            try:
                self._proc = ctx.Process(  # type: ignore[attr-defined]
                    target=quantize_worker.child_main,
                    args=(params, writer, lifeline_r),
                    name="llamascope-quantizer",
                    daemon=True,  # killed if LlamaScope exits while it runs
                )
                self._proc.start()
            except Exception as exc:
                reader.close()
                self._close_lifeline()
                self._remove_temp()
                raise QuantizeError(f"Could not start the quantizer process: {exc}") from exc
            finally:
                writer.close()  # the child holds its own end; EOF here means the child has gone
                lifeline_r.close()
            self._thread = threading.Thread(
                target=self._supervise, args=(plan, reader, t0), name="llamascope-quantize", daemon=True
            )
            self._thread.start()
            return plan

    def cancel(self) -> None:
        """Stop the child (if running) and discard its output. Safe to call at any time."""
        with self._lock:
            if self._future.done():
                return
            self._cancelled.set()
            self._kill()

    def wait(self, timeout: float | None = None) -> QuantizeResult:
        """Block until the job ends; returns the result or raises QuantizeError / QuantizeCancelled."""
        try:
            return self._future.result(timeout)
        finally:
            if self._future.done() and self._thread is not None:
                self._thread.join()

    def run(self) -> QuantizeResult:
        """start() then wait(): the blocking form the CLI uses."""
        self.start()
        return self.wait()

    # ---- internals ---------------------------------------------------------------------------
    def _create_temp_file(self, output_path: str) -> str:
        # Creating the file is the real writability test: os.access says yes to root on a
        # read-only mount, and a path under a regular file fails only here. Mode 0o666 (less the
        # umask) gives the finished file the permissions any new file would get.
        for stale in remove_stale_partials(output_path):
            log.info("removed %s, left by a quantization that did not finish", stale)
        folder = os.path.dirname(output_path)
        for _attempt in range(100):
            temp = partial_name(output_path)
            try:
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                continue
            except OSError as exc:
                raise QuantizeError(
                    f"Cannot write in {folder}: {exc.strerror or exc}. Choose another destination folder."
                ) from None
            # Held until the file is renamed or removed: it marks the file as in use, so another
            # LlamaScope's sweep of stale files leaves it alone. If a sweep removed it before the
            # lock was taken, the name now points elsewhere (or nowhere): try another name.
            if try_lock(fd) and still_named(fd, temp):
                if fcntl is None:  # Windows: an open handle would block the final rename
                    os.close(fd)
                else:
                    self._temp_fd = fd
                # Recorded so that LlamaScope's next start deletes it if this process dies first.
                self._registered = self._registry.register(temp)
                return temp
            os.close(fd)
        raise QuantizeError(f"Cannot create a temporary file in {folder}.")

    def _release_temp(self) -> None:
        fd, self._temp_fd = self._temp_fd, None
        if fd is not None:
            os.close(fd)
        entry, self._registered = self._registered, None
        self._registry.unregister(entry)

    def _close_lifeline(self) -> None:
        lifeline, self._lifeline = self._lifeline, None
        if lifeline is not None:
            lifeline.close()

    def _kill(self) -> None:
        # No is_alive() here: it would read the exit status the supervisor thread waits for.
        # kill() only signals, and does nothing once the status is known.
        proc = self._proc
        if proc is not None:
            try:
                proc.kill()  # llama.cpp cannot be interrupted cleanly; nothing it holds needs saving
            except (OSError, ValueError, AttributeError):  # not started, or already gone
                pass

    def _remove_temp(self) -> None:
        # Removed while still locked (POSIX allows it; on Windows the handle is already closed),
        # so no other LlamaScope's sweep sees it unlocked in between.
        if self._temp_path is not None:
            try:
                os.remove(self._temp_path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("could not remove %s: %s", self._temp_path, exc)
        self._release_temp()

    def _temp_bytes(self) -> int:
        try:
            return os.path.getsize(self._temp_path) if self._temp_path is not None else 0
        except OSError:
            return 0

    def _free_now(self, folder: str) -> int | None:
        try:
            return int(self._free_bytes(folder))
        except OSError:
            return None

    def _emit_progress(self, progress: QuantizeProgress) -> None:
        if self._on_progress is None:
            return
        try:
            self._on_progress(progress)
        except Exception:  # a listener's bug must not leave the child orphaned
            log.exception("quantize progress listener failed")

    def _supervise(self, plan: QuantizePlan, reader: Connection, t0: float) -> None:
        proc = self._proc
        assert proc is not None
        tail: deque[str] = deque(maxlen=200)
        n_tensors = 0
        failure: str | None = None
        result: dict[str, object] = {}
        quant_mib: float | None = None
        dry_tensors: list[TensorSize] = []
        pending = b""
        try:
            while True:
                try:
                    message = reader.recv_bytes()
                except (EOFError, OSError):
                    break  # the child has exited (or was killed)
                kind, body = message[:1], message[1:]
                if kind == MSG_RESULT:
                    result = _parse_result(body)
                    continue
                pending += body
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    line = raw.decode("utf-8", errors="replace").rstrip("\r")
                    tail.append(line)
                    if self._on_log is not None:
                        try:
                            self._on_log(line)
                        except Exception:
                            log.exception("quantize log listener failed")
                    m = _TENSOR_LINE.match(line)
                    if m:
                        n_tensors = int(m.group(2))
                        d = _DRY_RUN_LINE.match(line) if self.request.dry_run else None
                        if d is not None:
                            dry_tensors.append(_tensor_size(d))
                        self._emit_progress(
                            QuantizeProgress(int(m.group(1)), n_tensors, m.group(3), time.perf_counter() - t0)
                        )
                        continue
                    q = _QUANT_SIZE_LINE.search(line)
                    if q:
                        quant_mib = float(q.group(1))
                    f = _FAIL_LINE.search(line)
                    if f:
                        failure = f.group(1).strip()
            reader.close()
            proc.join()
            self._close_lifeline()
            if self.request.dry_run:
                self._finish_dry_run(
                    plan, t0, proc.exitcode, result, failure, tuple(dry_tensors), tuple(tail)
                )
            else:
                self._finish(plan, t0, proc.exitcode, result, failure, n_tensors, quant_mib, tuple(tail))
        except BaseException as exc:  # whatever happens, the caller must get an answer
            self._kill()
            self._close_lifeline()
            self._remove_temp()
            if not self._future.done():
                self._future.set_exception(QuantizeError(f"The quantization failed: {exc}"))

    def _finish(
        self,
        plan: QuantizePlan,
        t0: float,
        exitcode: int | None,
        result: dict[str, object],
        failure: str | None,
        n_tensors: int,
        quant_mib: float | None,
        tail: tuple[str, ...],
    ) -> None:
        with self._lock:
            if self._cancelled.is_set():
                self._remove_temp()
                self._future.set_exception(QuantizeCancelled("Quantization cancelled; no file was written."))
                return
            if exitcode != 0 or result.get("rc") != 0:
                folder = os.path.dirname(plan.output_path)
                written = self._temp_bytes()
                free_at_failure = self._free_now(folder)
                self._remove_temp()
                reason = failure or result.get("error") or _last_error(tail)
                if reason and (
                    "Missing importance matrix" in str(reason) or "requires an imatrix" in str(reason)
                ):
                    reason = f"{reason}.{MISSING_IMATRIX_HINT}"
                if not reason:
                    reason = (
                        f"the quantizer process crashed (signal {-exitcode})"
                        if exitcode is not None and exitcode < 0
                        else f"the quantizer exited with code {exitcode}"
                    )
                self._future.set_exception(
                    QuantizeError(
                        _write_failure_message(
                            plan, str(reason), written, free_at_failure, self._free_now(folder)
                        )
                        or f"llama.cpp could not quantize {plan.source.path}: {reason}"
                    )
                )
                return
            assert self._temp_path is not None
            # llama.cpp writes the GGUF header last (over a zeroed placeholder), so a file that
            # starts as GGUF was written to the end; anything else is never installed.
            if not detect_format(self._temp_path).loadable:
                self._remove_temp()
                self._future.set_exception(
                    QuantizeError("The quantizer wrote an incomplete file; nothing was installed.")
                )
                return
            if quant_mib is not None and plan.source.n_params:
                bits_per_weight = quant_mib * 1024 * 1024 * 8 / plan.source.n_params
            else:  # another llama.cpp wording: read the written header instead
                try:
                    bits_per_weight = inspect_model(self._temp_path).bits_per_weight
                except ModelFileError as exc:
                    self._remove_temp()
                    self._future.set_exception(
                        QuantizeError(f"The quantizer wrote an unreadable file: {exc}")
                    )
                    return
            try:
                os.replace(self._temp_path, plan.output_path)
            except OSError as exc:
                self._remove_temp()
                self._future.set_exception(QuantizeError(f"Could not move the result into place: {exc}"))
                return
            self._release_temp()
            self._temp_path = None
            self._future.set_result(
                QuantizeResult(
                    source_path=plan.source.path,
                    output_path=plan.output_path,
                    type_name=plan.qtype.name,
                    source_bytes=plan.source.file_size_bytes,
                    output_bytes=os.path.getsize(plan.output_path),
                    bits_per_weight=bits_per_weight,
                    n_tensors=n_tensors,
                    elapsed_s=time.perf_counter() - t0,
                    quantize_s=float(result.get("seconds", 0.0)),  # type: ignore[arg-type]
                    source_quantized_type=plan.source_quantized_type,
                    dequantized_copy=plan.dequantized_copy,
                    warnings=plan.warnings,
                    log_tail=tail,
                    imatrix=plan.imatrix,
                    tensor_types=self.request.tensor_types,
                )
            )

    def _finish_dry_run(
        self,
        plan: QuantizePlan,
        t0: float,
        exitcode: int | None,
        result: dict[str, object],
        failure: str | None,
        tensors: tuple[TensorSize, ...],
        tail: tuple[str, ...],
    ) -> None:
        with self._lock:
            if self._cancelled.is_set():
                self._future.set_exception(QuantizeCancelled("Dry run cancelled."))
                return
            if exitcode != 0 or result.get("rc") != 0:
                reason = failure or result.get("error") or _last_error(tail) or f"exit code {exitcode}"
                self._future.set_exception(
                    QuantizeError(
                        f"llama.cpp could not size {plan.qtype.name} for {plan.source.path}: {reason}"
                    )
                )
                return
            n_source = sum(t.n_tensors for t in plan.source.tensor_types)
            if not tensors or len(tensors) != n_source:
                self._future.set_exception(
                    QuantizeError(
                        f"The dry run listed {len(tensors)} tensors of {n_source}: this llama.cpp "
                        "words its log differently, so the size is unknown."
                    )
                )
                return
            source_data = sum(_padded(_tensor_bytes(t.source_type, t.shape)) for t in tensors)
            header = max(0, plan.source.file_size_bytes - source_data)
            data = sum(t.target_bytes for t in tensors)
            file_bytes = header + sum(_padded(t.target_bytes) for t in tensors)
            self._future.set_result(
                QuantizeResult(
                    source_path=plan.source.path,
                    output_path=plan.output_path,
                    type_name=plan.qtype.name,
                    source_bytes=plan.source.file_size_bytes,
                    output_bytes=file_bytes,
                    bits_per_weight=data * 8 / plan.source.n_params if plan.source.n_params else 0.0,
                    n_tensors=len(tensors),
                    elapsed_s=time.perf_counter() - t0,
                    quantize_s=float(result.get("seconds", 0.0)),  # type: ignore[arg-type]
                    source_quantized_type=plan.source_quantized_type,
                    dequantized_copy=plan.dequantized_copy,
                    warnings=plan.warnings,
                    log_tail=tail,
                    imatrix=plan.imatrix,
                    tensor_types=self.request.tensor_types,
                    dry_run=True,
                    tensors=tensors,
                )
            )


def _padded(n_bytes: int) -> int:
    return n_bytes + (-n_bytes % _GGUF_ALIGNMENT)


def _tensor_bytes(type_name: str, shape: tuple[int, ...]) -> int:
    """n_rows x ggml_row_size(type, ne0), as llama.cpp computes a dry run's size."""
    import gguf

    block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name.upper()]]
    n_rows = 1
    for n in shape[1:]:
        n_rows *= n
    return n_rows * (shape[0] // block) * type_size


def _tensor_size(match: re.Match[str]) -> TensorSize:
    shape = tuple(int(n) for n in match.group(2).split(","))
    source_type = match.group(3)
    target_type = match.group(4) or source_type
    return TensorSize(
        name=match.group(1),
        shape=shape,
        source_type=source_type,
        target_type=target_type,
        target_bytes=_tensor_bytes(target_type, shape),
    )


def _write_failure_message(
    plan: QuantizePlan, reason: str, written: int, free_at_failure: int | None, free_after: int | None
) -> str | None:
    """What to tell the user when writing the output failed, in words of the cause; None when the
    failure was not about writing.

    llama.cpp reports any failed write as "basic_ios::clear: iostream error" (its std::ofstream
    throws), which names no cause. A disk that has less room left than the rest of the file needs
    is full; then the free space after the partial file was deleted is what a new attempt has.
    """
    folder = os.path.dirname(plan.output_path)
    needed = space_needed_bytes(plan.expected_bytes)
    if free_at_failure is not None and free_at_failure < max(needed - written, 0):
        free = free_after if free_after is not None else free_at_failure
        return (
            f"The disk filled up while writing {os.path.basename(plan.output_path)}: the quantization "
            f"stopped after {format_bytes(written)}. {folder} has {format_bytes(free)} free, and the "
            f"{plan.qtype.name} file needs about {format_bytes(plan.expected_bytes)} "
            f"(with margin, {format_bytes(needed)}). Nothing was installed and the partial file was "
            "deleted; free some space or choose another destination folder."
        )
    if "iostream error" in reason or "basic_ios" in reason:
        free_text = format_bytes(free_after) if free_after is not None else "n/a"
        return (
            f"Writing {os.path.basename(plan.output_path)} in {folder} failed after {format_bytes(written)} "
            f"(llama.cpp: {reason}). The disk is not full ({free_text} free), so the folder's file system "
            "may not take a file this large (FAT32 stops at 4 GiB), or the disk went away. Nothing was "
            "installed; choose another destination folder."
        )
    return None


def _optional_type_id(name: str | None) -> int | None:
    return None if name is None else tensor_type_id(name)


def _parse_result(body: bytes) -> dict[str, object]:
    try:
        value = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def _last_error(lines: tuple[str, ...]) -> str | None:
    for line in reversed(lines):
        if "error" in line.lower() and line.strip():
            return line.strip()
    return None


def quantize(
    request: QuantizeRequest,
    *,
    on_progress: Callable[[QuantizeProgress], None] | None = None,
    free_bytes: Callable[[str], int] = disk_free_bytes,
) -> QuantizeResult:
    """Quantize and wait: the blocking convenience for scripts and the CLI."""
    return QuantizeJob(request, on_progress=on_progress, free_bytes=free_bytes).run()
