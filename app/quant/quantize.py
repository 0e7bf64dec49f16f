"""Quantize a GGUF with llama.cpp's quantizer, in a child process that can be stopped.

`plan_quantization` checks a request without touching the disk beyond reading the source's
header: source, type, options, output path, free space. It refuses what cannot work (with a
reason a user can act on) and lists what works but costs quality (requantizing).

`QuantizeJob` runs a plan: it creates a temporary file in the destination folder (proving the
folder is writable), starts a child process (app.quant.worker, through multiprocessing's fork
server; see `_process_context`) that writes into it, reads llama.cpp's per-tensor log lines,
which the child forwards over a pipe, as progress, and renames the temporary file into place
(os.replace, atomic on one filesystem) only after the child has succeeded and the written file
parses as GGUF. Cancel kills the child and deletes the temporary file. The source is opened
read-only by llama.cpp and is never the output.

Callbacks (`on_progress`, `on_log`) run on the job's supervisor thread ("llamascope-quantize");
a GUI must re-emit them as signals, not touch widgets from them.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import multiprocessing.context
import os
import re
import secrets
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

import gguf

try:
    import fcntl  # POSIX: advisory locks mark a temporary file as in use
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

from app.common.formatting import format_bytes
from app.model.file_format import ModelFileError, detect_format
from app.model.gguf_info import inspect_model
from app.model.model_info import ModelInfo
from app.quant import worker as quantize_worker
from app.quant.types import (
    QuantType,
    UnknownQuantTypeError,
    ftype_value,
    is_quantized_tensor_type,
    quant_type,
    supported_quant_types,
    tensor_type_id,
)
from app.quant.worker import MSG_RESULT, PRELOAD_MODULES

log = logging.getLogger(__name__)

# Room left on the disk beyond the estimate: mixes and fallback types make the real file differ
# from n_params x nominal bits per weight by a few per cent either way.
SPACE_MARGIN_FRACTION = 0.10
SPACE_MARGIN_BYTES = 64 * 1024 * 1024

REQUANTIZE_WARNING = (
    "The source is already quantized ({source_type}): quantizing it again loses quality twice, "
    "and the result is worse than {target} made from the original F16/BF16/F32 model. Use the "
    "original if you have it."
)
DEQUANTIZED_NOTE = (
    "This is a dequantized copy of a {source_type} model: its weights hold exactly the {source_type} "
    "values in {target}, so it is no more accurate than the {source_type} file. It is a base to quantize "
    "from and compare against, not the original model."
)
# Metadata key LlamaScope writes into a requantized file, naming the type it was made from.
KEY_QUANTIZED_FROM = "llamascope.quantized_from"

_TENSOR_LINE = re.compile(r"^\[\s*(\d+)/\s*(\d+)\]\s+(\S+)")
_FAIL_LINE = re.compile(r"failed to quantize:\s*(.*)")
# llama_model_quantize_impl's summary of the tensor data it wrote: "quant size = 98.87 MiB (6.17 BPW)"
_QUANT_SIZE_LINE = re.compile(r"quant size\s*=\s*([\d.]+) MiB")


class QuantizeError(Exception):
    """A quantization that cannot start or did not finish; the message is meant for the user."""


class QuantizeCancelled(QuantizeError):
    """The user stopped the quantization; nothing was written."""


@dataclass(frozen=True)
class QuantizeRequest:
    """What to quantize, to what, and llama-quantize's options."""

    source: str
    type_name: str  # a QuantType name, e.g. "Q4_K_M"
    output: str | None = None  # None: beside the source, named after the type (see default_output_path)
    allow_requantize: bool = False  # --allow-requantize
    pure: bool = False  # --pure: every tensor in the main type, no K-quant mix
    leave_output_tensor: bool = False  # --leave-output-tensor (quantize_output_tensor = False)
    output_tensor_type: str | None = None  # --output-tensor-type, a ggml tensor type name
    token_embedding_type: str | None = None  # --token-embedding-type
    n_threads: int | None = None  # None: llama.cpp uses every hardware thread
    overwrite: bool = False  # replace an existing output file (never the source)


@dataclass(frozen=True)
class QuantizePlan:
    """A checked request: where it writes, what it needs, what to warn the user about."""

    request: QuantizeRequest
    source: ModelInfo
    qtype: QuantType
    output_path: str
    expected_bytes: int  # estimate: n_params x bits per weight of the target type
    free_bytes: int  # free space in the destination folder when checked
    source_quantized_type: str | None  # e.g. "Q4_1" when the source holds quantized tensors
    warnings: tuple[str, ...]

    @property
    def dequantized_copy(self) -> bool:
        """True when a quantized model is written in a float type: a copy, not the original."""
        return self.source_quantized_type is not None and self.qtype.is_float


@dataclass(frozen=True)
class QuantizeProgress:
    """llama.cpp finished writing tensor `tensor_index` (1-based) of `n_tensors`."""

    tensor_index: int
    n_tensors: int
    tensor_name: str
    elapsed_s: float

    @property
    def fraction(self) -> float:
        return self.tensor_index / self.n_tensors if self.n_tensors else 0.0


@dataclass(frozen=True)
class QuantizeResult:
    """A quantized file, renamed into place, with what it measures."""

    source_path: str
    output_path: str
    type_name: str
    source_bytes: int
    output_bytes: int
    bits_per_weight: float  # tensor data written x 8 / n_params, as llama.cpp reports it (2 decimals of MiB)
    n_tensors: int
    elapsed_s: float  # whole job: child start to rename
    quantize_s: float  # llama_model_quantize itself, as timed in the child
    source_quantized_type: str | None
    dequantized_copy: bool
    warnings: tuple[str, ...]
    log_tail: tuple[str, ...] = field(default=(), repr=False)

    @property
    def compression_ratio(self) -> float:
        """Source size / output size (2.0 = half the size)."""
        return self.source_bytes / self.output_bytes if self.output_bytes else 0.0

    @property
    def label(self) -> str:
        """How to name this file honestly in a list of variants."""
        if self.dequantized_copy:
            return f"{self.type_name} (dequantized copy of {self.source_quantized_type})"
        if self.source_quantized_type:
            return f"{self.type_name} (requantized from {self.source_quantized_type})"
        return self.type_name


def disk_free_bytes(path: str) -> int:
    """Free bytes on the filesystem holding `path` (a folder)."""
    return int(shutil.disk_usage(path).free)


def _strip_type_suffix(stem: str) -> str:
    """ "Model.Q4_1" or "model-q8_0" -> "Model" / "model"; other stems unchanged."""
    names = [t.name for t in supported_quant_types()] + ["Q3_K", "Q4_K", "Q5_K"]
    for name in sorted(names, key=len, reverse=True):
        for sep in (".", "-", "_"):
            suffix = f"{sep}{name}"
            if stem.upper().endswith(suffix.upper()):
                return stem[: -len(suffix)]
    return stem


def default_output_path(source: str, type_name: str, source_quantized_type: str | None = None) -> str:
    """Beside the source: "Model.Q4_1.gguf" -> "Model.Q4_K_M.gguf"; a float copy of a quantized
    model says what it came from: "Model.F16-from-Q4_1.gguf"."""
    path = Path(source)
    stem = _strip_type_suffix(path.stem)
    qtype = quant_type(type_name)
    tag = qtype.name
    if qtype.is_float and source_quantized_type:
        tag = f"{qtype.name}-from-{source_quantized_type}"
    return str(path.with_name(f"{stem}.{tag}.gguf"))


def f16_base_request(
    source: str, output: str | None = None, *, n_threads: int | None = None
) -> QuantizeRequest:
    """ "Make F16 base": an F16 copy of a quantized model to quantize other types from.

    It is a dequantized copy: it carries the quantized model's errors, so types made from it
    measure against that model, not against the original. The plan and result say so, the file
    name says "F16-from-<type>", and the file's metadata records `llamascope.quantized_from`.
    """
    return QuantizeRequest(source, "F16", output, allow_requantize=True, n_threads=n_threads)


def _source_quantized_type(info: ModelInfo) -> str | None:
    """The quantized tensor type holding most of the source's bytes, or None for a float model."""
    quantized = [t for t in info.tensor_types if is_quantized_tensor_type(t.type_name)]
    return quantized[0].type_name if quantized else None


def _bits_of_tensor_type(name: str) -> float:
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name.upper()]]
    return size * 8 / block


def _block_size(name: str) -> int:
    return int(gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name.upper()]][0])


# llama.cpp's tensor_type_fallback (src/llama-quant.cpp): the type used when a tensor's rows do not
# divide into the main type's blocks (e.g. 576 columns and 256-weight K-quant blocks).
_FALLBACK = {
    "IQ1_S": "IQ4_NL", "IQ1_M": "IQ4_NL", "IQ2_XXS": "IQ4_NL", "IQ2_XS": "IQ4_NL", "IQ2_S": "IQ4_NL",
    "IQ3_XXS": "IQ4_NL", "IQ3_S": "IQ4_NL", "IQ4_XS": "IQ4_NL", "Q2_0": "Q4_0", "Q2_K": "Q4_0",
    "Q3_K": "Q4_0", "TQ1_0": "Q4_0", "TQ2_0": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0",
}  # fmt: skip


def _tensor_bits(qtype: QuantType, n_cols: int) -> float:
    """Nominal bits per weight of one 2-D tensor with `n_cols` columns under `qtype`."""
    main = qtype.main_tensor_type
    try:
        main_bits = _bits_of_tensor_type(main)
        if n_cols % _block_size(main) == 0:
            return qtype.bits_per_weight
        fallback = _FALLBACK.get(main, main)
        if n_cols % _block_size(fallback) != 0:
            return 16.0
        # A mix's extra (its higher-type tensors) is kept in proportion.
        return _bits_of_tensor_type(fallback) * qtype.bits_per_weight / main_bits
    except KeyError:  # a type this gguf package does not know: take the nominal figure
        return qtype.bits_per_weight


def estimate_output_bytes(info: ModelInfo, request: QuantizeRequest, qtype: QuantType) -> int:
    """n_params x bits per weight of the target type, from what the header says about the source.

    Weights count at the type's nominal bits per weight, or at llama.cpp's fallback type when the
    model's embedding width does not divide into the type's blocks (most matrices have rows of
    n_embd: SmolLM2-135M's 576 and the 256-weight K-quant blocks, for example). The F32 tensors of
    a 16-bit or quantized model (norms) and the header (vocabulary, merges) are copied as they
    are; a token-embedding type counts at its own size. K-quant mixes count at their nominal
    (Llama-3.1-8B) figure, so this is an estimate: the disk check adds a margin.
    """
    metadata = max(0, info.file_size_bytes - info.tensor_data_bytes)
    all_f32 = {t.type_name for t in info.tensor_types} == {"F32"}
    kept = sum(t.n_bytes for t in info.tensor_types if t.type_name == "F32" and not all_f32)
    weights = sum(t.n_elements for t in info.tensor_types if all_f32 or t.type_name != "F32")
    total = float(metadata + kept)
    if request.token_embedding_type and info.vocab_size and info.n_embd:
        embedding = min(weights, info.vocab_size * info.n_embd)
        weights -= embedding
        total += embedding * _bits_of_tensor_type(request.token_embedding_type) / 8
    total += weights * _tensor_bits(qtype, info.n_embd or 0) / 8
    return int(total)


def plan_quantization(
    request: QuantizeRequest, *, free_bytes: Callable[[str], int] = disk_free_bytes
) -> QuantizePlan:
    """Check a request; raises QuantizeError saying what is wrong and what to do."""
    source = os.path.abspath(request.source)
    fmt = detect_format(source)
    if not fmt.loadable:
        raise QuantizeError(f"Cannot quantize {source}: {fmt.message}")
    try:
        info = inspect_model(source)
    except ModelFileError as exc:
        raise QuantizeError(str(exc)) from None

    try:
        qtype = quant_type(request.type_name)
        ftype_value(qtype)
        for option in (request.output_tensor_type, request.token_embedding_type):
            if option is not None:
                tensor_type_id(option)
    except UnknownQuantTypeError as exc:
        raise QuantizeError(str(exc)) from None
    if qtype.refusal_reason:
        raise QuantizeError(qtype.refusal_reason)
    if request.n_threads is not None and request.n_threads < 1:
        raise QuantizeError(f"Thread count must be 1 or more, not {request.n_threads}.")

    warnings: list[str] = []
    src_qtype = _source_quantized_type(info)
    if src_qtype is not None:
        if not request.allow_requantize:
            raise QuantizeError(
                f"The source is already quantized ({src_qtype}). llama.cpp refuses to quantize it again "
                "unless requantizing is allowed; allow it knowing that quality is lost, or start from the "
                "original F16/BF16/F32 model."
            )
        if qtype.is_float:
            warnings.append(DEQUANTIZED_NOTE.format(source_type=src_qtype, target=qtype.name))
        else:
            warnings.append(REQUANTIZE_WARNING.format(source_type=src_qtype, target=qtype.name))

    output = os.path.abspath(request.output or default_output_path(source, qtype.name, src_qtype))
    if not output.lower().endswith(".gguf"):
        warnings.append(f"The output name {os.path.basename(output)} does not end in .gguf.")
    if _same_file(source, output):
        raise QuantizeError(
            f"The output {output} is the source file; choose another name. The source is never overwritten."
        )
    dest_dir = os.path.dirname(output)
    if not os.path.exists(dest_dir):
        raise QuantizeError(f"The destination folder {dest_dir} does not exist.")
    if not os.path.isdir(dest_dir):
        raise QuantizeError(f"The destination {dest_dir} is not a folder.")
    if not os.access(dest_dir, os.W_OK | os.X_OK):
        raise QuantizeError(f"The destination folder {dest_dir} is not writable; choose another folder.")
    if os.path.isdir(output):
        raise QuantizeError(f"The output {output} is a folder; give a file name.")
    if os.path.exists(output) and not request.overwrite:
        raise QuantizeError(f"{output} already exists; choose another name or allow overwriting it.")

    expected = estimate_output_bytes(info, request, qtype)
    needed = int(expected * (1 + SPACE_MARGIN_FRACTION)) + SPACE_MARGIN_BYTES
    free = int(free_bytes(dest_dir))
    if free < needed:
        raise QuantizeError(
            f"Not enough disk space in {dest_dir}: the {qtype.name} file needs about "
            f"{format_bytes(expected)} "
            f"(plus {format_bytes(needed - expected)} margin) and {format_bytes(free)} is free."
        )
    return QuantizePlan(
        request=request,
        source=info,
        qtype=qtype,
        output_path=output,
        expected_bytes=expected,
        free_bytes=free,
        source_quantized_type=src_qtype,
        warnings=tuple(warnings),
    )


def _same_file(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


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
        self.plan: QuantizePlan | None = None

    @property
    def future(self) -> Future[QuantizeResult]:
        """Completes with the QuantizeResult, or QuantizeError / QuantizeCancelled."""
        return self._future

    def start(self) -> QuantizePlan:
        """Check the request, create the temporary file and start the child; raises QuantizeError."""
        with self._lock:
            if self._thread is not None:
                raise QuantizeError("This job has already been started.")
            if self._cancelled.is_set():
                raise QuantizeCancelled("Quantization cancelled before it started.")
            plan = plan_quantization(self.request, free_bytes=self._free_bytes)
            self.plan = plan
            self._temp_path = self._create_temp_file(plan.output_path)
            params = {
                "source": plan.source.path,
                "output": self._temp_path,
                "ftype": ftype_value(plan.qtype),
                "nthread": self.request.n_threads or 0,
                "allow_requantize": self.request.allow_requantize,
                "pure": self.request.pure,
                "quantize_output_tensor": not self.request.leave_output_tensor,
                "output_tensor_type": _optional_type_id(self.request.output_tensor_type),
                "token_embedding_type": _optional_type_id(self.request.token_embedding_type),
                "kv_strings": (
                    {KEY_QUANTIZED_FROM: plan.source_quantized_type} if plan.source_quantized_type else {}
                ),
            }
            t0 = time.perf_counter()
            ctx = _process_context()
            reader, writer = ctx.Pipe(duplex=False)
            try:
                self._proc = ctx.Process(  # type: ignore[attr-defined]
                    target=quantize_worker.child_main,
                    args=(params, writer),
                    name="llamascope-quantizer",
                    daemon=True,  # killed if LlamaScope exits while it runs
                )
                self._proc.start()
            except Exception as exc:
                reader.close()
                self._remove_temp()
                raise QuantizeError(f"Could not start the quantizer process: {exc}") from exc
            finally:
                writer.close()  # the child holds its own end; EOF here means the child has gone
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
        folder, name = os.path.split(output_path)
        for _attempt in range(100):
            temp = os.path.join(folder, f".{name}.{secrets.token_hex(4)}.partial")
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
            if _try_lock(fd) and _still_named(fd, temp):
                if fcntl is None:  # Windows: an open handle would block the final rename
                    os.close(fd)
                else:
                    self._temp_fd = fd
                return temp
            os.close(fd)
        raise QuantizeError(f"Cannot create a temporary file in {folder}.")

    def _release_temp(self) -> None:
        fd, self._temp_fd = self._temp_fd, None
        if fd is not None:
            os.close(fd)

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
        self._release_temp()
        if self._temp_path is not None:
            try:
                os.remove(self._temp_path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("could not remove %s: %s", self._temp_path, exc)

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
            self._finish(plan, t0, proc.exitcode, result, failure, n_tensors, quant_mib, tuple(tail))
        except BaseException as exc:  # whatever happens, the caller must get an answer
            self._kill()
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
                self._remove_temp()
                reason = failure or result.get("error") or _last_error(tail)
                if not reason:
                    reason = (
                        f"the quantizer process crashed (signal {-exitcode})"
                        if exitcode is not None and exitcode < 0
                        else f"the quantizer exited with code {exitcode}"
                    )
                self._future.set_exception(
                    QuantizeError(f"llama.cpp could not quantize {plan.source.path}: {reason}")
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
                )
            )


def remove_stale_partials(output_path: str) -> list[str]:
    """Delete the temporary files that quantizations into `output_path` left behind when
    LlamaScope itself was killed mid-way; returns their paths.

    Only LlamaScope's own names (".NAME.<8 hex digits>.partial" beside the output) are touched,
    and only when no running job holds the file's lock (POSIX); on Windows a file that another
    process has open cannot be deleted, which is lock enough.
    """
    folder, name = os.path.split(output_path)
    prefix, suffix = f".{name}.", ".partial"
    try:
        entries = os.listdir(folder or ".")
    except OSError:
        return []
    removed = []
    for entry in entries:
        tag = entry[len(prefix) : -len(suffix)]
        if not (entry.startswith(prefix) and entry.endswith(suffix) and _is_hex8(tag)):
            continue
        path = os.path.join(folder, entry)
        if fcntl is None:  # Windows: deleting fails while the writing process has the file open
            try:
                os.remove(path)
                removed.append(path)
            except OSError:
                pass
            continue
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            continue
        try:
            if _try_lock(fd):
                os.remove(path)
                removed.append(path)
        except OSError:
            pass  # not ours to delete: leave it
        finally:
            os.close(fd)
    return removed


def _is_hex8(text: str) -> bool:
    return len(text) == 8 and all(c in "0123456789abcdef" for c in text)


def _try_lock(fd: int) -> bool:
    """An exclusive advisory lock on an open file, without waiting (always True without fcntl)."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _still_named(fd: int, path: str) -> bool:
    """Whether `path` still names the file open as `fd`."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except OSError:
        return False


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
