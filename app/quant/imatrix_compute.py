"""Computing an importance matrix the way llama.cpp's llama-imatrix does, through the eval callback.

tools/imatrix/imatrix.cpp (the vendored llama.cpp, 0.3.36), which this follows:

- The text is read, one trailing newline dropped (common/arg.cpp's -f), and tokenized once with
  the vocabulary's special tokens (`common_tokenize(ctx, text, true, parse_special=false)`).
  A text shorter than 2 x n_ctx tokens is refused, as llama-imatrix refuses it.
- It is cut into n_tokens // n_ctx chunks of n_ctx tokens (`--chunks` caps the number). Each chunk
  is decoded from an empty KV cache with its first token replaced by BOS when the vocabulary adds
  one, and with logits asked for every token (llama-imatrix does, so that the last layer computes
  every row: without them llama.cpp drops the rows no output needs before the last FFN).
- llama.cpp calls the scheduler's eval callback (`cb_eval` in the context parameters) for each
  graph node, first asking (ask = true) whether the callback wants the node's data, then, if it
  said yes, once the node is computed. llama-imatrix wants MUL_MAT_ID nodes always, and MUL_MAT
  nodes whose weight (src0) is named "blk.*" (and "output.weight" with --process-output), whose
  activations (src1) are F32 and hold at least 16 rows (single tokens are ignored).
- For each such node it adds, per column j of the weight, the square of every activation row's
  x[j] (`in_sum2`, float32 accumulation), and adds the number of rows to the matrix's count
  (`ggml_nrows(src1) / n_mat`; for MUL_MAT_ID, per expert, the rows routed to it). Every token of
  every chunk counts: "only the second half of each chunk" applies to the perplexity it prints,
  not to the matrix. So `counts` = n_chunks x n_ctx for a dense model's matrices.
- The GGUF file stores these raw sums and counts; `imatrix.chunk_count` is the number of chunks,
  `imatrix.chunk_size` n_ctx, `imatrix.datasets` the text's name (app.quant.imatrix).

LlamaScope decodes one chunk per llama_decode, as llama-imatrix does with `-b` equal to `-c`
(its default batch of 2048 packs 2048 / n_ctx chunks into one decode as separate sequences; the
sums are then equal up to float rounding). It sums each node's squares in float64 with numpy and
keeps the totals in float64, so its sums are at least as exact as llama-imatrix's float32 ones.
The perplexity of the second halves is computed on the way, as llama-imatrix prints it.

The ggml_tensor layout below is ggml.h's (GGML_MAX_DIMS 4, GGML_MAX_SRC 10, GGML_MAX_NAME 64,
GGML_MAX_OP_PARAMS 64); node names come from ggml_op_name, so no op enum value is hard-coded.
Runs in the engine host (app.engine.jobs PROGRESS_JOBS): a crash in llama.cpp is a message there,
and the cancel flag is polled between chunks and inside a decode (the abort callback).
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.common.resources import resource_path
from app.llama import runtime as llama_runtime
from app.llama.build_check import require_working_build
from app.llama.driver import CancelFlag, DriverCancelled, DriverError, LlamaModel
from app.model.file_format import ModelFileError
from app.model.gguf_info import inspect_model
from app.model.memory import check_memory
from app.model.settings import LoadSettings, count_logical_cores, count_physical_cores
from app.quality.eval_text import EvalText, EvalTextError, load_text
from app.quality.eval_types import ChunkProgress, EvalCancelled, EvalError, TextTooShortError
from app.quality.metrics import ppl_and_uncertainty, token_nll
from app.quant.imatrix import ImatrixData, ImatrixEntry, write_imatrix

log = logging.getLogger(__name__)

PHASE = "importance matrix"
MIN_ROWS = 16  # llama-imatrix ignores matrix products of fewer activation rows
CALIBRATION_TEXT_NAME = "stdlib-docstrings.txt"
DEFAULT_CALIBRATION = "calibration"  # the --text value that names the shipped calibration text

GGML_MAX_DIMS = 4
GGML_MAX_SRC = 10
GGML_MAX_NAME = 64
GGML_MAX_OP_PARAMS = 64


class GgmlTensor(ctypes.Structure):
    """struct ggml_tensor (ggml/include/ggml.h)."""


GgmlTensor._fields_ = [
    ("type", ctypes.c_int),
    ("buffer", ctypes.c_void_p),
    ("ne", ctypes.c_int64 * GGML_MAX_DIMS),
    ("nb", ctypes.c_size_t * GGML_MAX_DIMS),
    ("op", ctypes.c_int),
    ("op_params", ctypes.c_int32 * (GGML_MAX_OP_PARAMS // 4)),
    ("flags", ctypes.c_int32),
    ("src", ctypes.POINTER(GgmlTensor) * GGML_MAX_SRC),
    ("view_src", ctypes.POINTER(GgmlTensor)),
    ("view_offs", ctypes.c_size_t),
    ("data", ctypes.c_void_p),
    ("name", ctypes.c_char * GGML_MAX_NAME),
    ("extra", ctypes.c_void_p),
    ("padding", ctypes.c_char * 8),
]

_GGML_TYPE_F32 = 0
_GGML_TYPE_I32 = 26


@dataclass(frozen=True)
class ImatrixResult:
    """A computed importance matrix, written to `path`."""

    path: str
    model_path: str
    text_name: str
    text_sha256: str
    n_ctx: int
    n_chunks: int
    n_tokens_text: int
    n_entries: int
    ppl: float  # of the chunks' second halves, as llama-imatrix prints it
    ppl_uncertainty: float | None
    tokens_per_s: float
    elapsed_s: float


def default_calibration_text() -> EvalText:
    """The shipped calibration text (resources/calibration, see its README): Python standard
    library docstrings, distinct from every evaluation text LlamaScope ships or defaults to."""
    path = resource_path("calibration", CALIBRATION_TEXT_NAME)
    try:
        text = load_text(path)
    except EvalTextError as exc:
        raise EvalError(f"The shipped calibration text is missing from this installation: {exc}") from None
    return EvalText(name=CALIBRATION_TEXT_NAME, source=path, text=text.text)


def calibration_text(source: str | None) -> EvalText:
    """None or "calibration": the shipped text; else a UTF-8 text file (app.quality.eval_text)."""
    if source is None or source == DEFAULT_CALIBRATION:
        return default_calibration_text()
    try:
        return load_text(source)
    except EvalTextError as exc:
        raise EvalError(str(exc).replace("Evaluation text", "Calibration text")) from None


# ---- ggml access ----------------------------------------------------------------------------------
class _Ggml:
    """The few ggml functions the callback needs, from the ggml libllama itself uses."""

    def __init__(self) -> None:
        lib = _ggml_base_library()
        self.op_name = lib.ggml_op_name
        self.op_name.restype = ctypes.c_char_p
        self.op_name.argtypes = [ctypes.c_int]
        self.is_host = lib.ggml_backend_buffer_is_host
        self.is_host.restype = ctypes.c_bool
        self.is_host.argtypes = [ctypes.c_void_p]
        self.tensor_get = lib.ggml_backend_tensor_get
        self.tensor_get.restype = None
        self.tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
        self._names: dict[int, str] = {}

    def op(self, op: int) -> str:
        name = self._names.get(op)
        if name is None:
            raw = self.op_name(op)
            name = self._names[op] = raw.decode("ascii", errors="replace") if raw else ""
        return name


def _ggml_base_library() -> ctypes.CDLL:
    """libggml-base as already loaded by libllama (a second copy would be another ggml)."""
    lib_dir = llama_runtime.llama_lib_dir()
    rtld_noload = getattr(os, "RTLD_NOLOAD", None)
    if rtld_noload is not None and sys.platform.startswith("linux"):
        for soname in sorted((p.name for p in lib_dir.glob("libggml-base.so*")), key=len, reverse=True):
            try:
                return ctypes.CDLL(soname, mode=rtld_noload)
            except OSError:
                continue
    for pattern in ("libggml-base.so*", "libggml-base*.dylib", "ggml-base*.dll"):
        for path in sorted(lib_dir.glob(pattern)):
            try:
                return ctypes.CDLL(str(path))
            except OSError:
                continue
    raise EvalError(f"Cannot find llama.cpp's ggml library in {lib_dir}.")


def _strided(base: int, shape: tuple[int, ...], strides: tuple[int, ...], dtype: Any) -> np.ndarray:
    """A numpy view of ggml memory at `base` (strides in bytes, as ggml's nb)."""
    itemsize = np.dtype(dtype).itemsize
    span = sum((n - 1) * s for n, s in zip(shape, strides, strict=True)) + itemsize
    raw = np.ctypeslib.as_array((ctypes.c_uint8 * span).from_address(base))
    return np.lib.stride_tricks.as_strided(raw.view(dtype), shape=shape, strides=strides, writeable=False)


def _weight_name(raw: bytes) -> str:
    """filter_tensor_name: "CUDA0#blk.0.attn_k.weight#0" -> "blk.0.attn_k.weight"."""
    name = raw.decode("utf-8", errors="replace")
    if "#" in name:
        name = name.split("#", 2)[1]
    return name


class _Collector:
    """IMatrixCollector::collect_imatrix, in numpy; the sums in float64."""

    def __init__(self, ggml: _Ggml, *, process_output: bool) -> None:
        self._ggml = ggml
        self._process_output = process_output
        self.sums: dict[str, np.ndarray] = {}  # [n_mat, ne0] float64
        self.counts: dict[str, np.ndarray] = {}  # [n_mat] int64
        self.error: BaseException | None = None

    def _wanted(self, t: GgmlTensor, op: str) -> bool:
        if op == "MUL_MAT_ID":
            return True
        if op != "MUL_MAT":
            return False
        src0, src1 = t.src[0], t.src[1]
        if not src0 or not src1:
            return False
        if src1.contents.ne[1] < MIN_ROWS or src1.contents.type != _GGML_TYPE_F32:
            return False
        name = _weight_name(src0.contents.name)
        return name.startswith("blk.") or (self._process_output and name == "output.weight")

    def callback(self, t_ptr: int | None, ask: bool, _user_data: Any) -> bool:
        try:
            if not t_ptr:
                return False
            t = GgmlTensor.from_address(t_ptr)
            op = self._ggml.op(t.op)
            if ask:
                return self._wanted(t, op)
            if op == "MUL_MAT_ID":
                self._collect_mul_mat_id(t)
            elif op == "MUL_MAT":
                self._collect_mul_mat(t)
            return True
        except BaseException as exc:  # an exception must not cross into llama.cpp: stop it instead
            if self.error is None:
                self.error = exc
            return False  # "not interested" / stops the graph's evaluation

    def _activations(self, src1: GgmlTensor) -> tuple[np.ndarray, Any]:
        """src1 as [ne3, ne2, ne1, ne0] float32; the copy kept alive when it is not in host memory."""
        ne = tuple(int(n) for n in src1.ne)
        nb = tuple(int(n) for n in src1.nb)
        if nb[0] != 4:
            raise EvalError("llama.cpp handed an activation tensor whose rows are not contiguous.")
        shape = (ne[3], ne[2], ne[1], ne[0])
        strides = (nb[3], nb[2], nb[1], nb[0])
        if src1.buffer and not self._ggml.is_host(src1.buffer):
            span = sum((n - 1) * s for n, s in zip(shape, strides, strict=True)) + 4
            copy = (ctypes.c_uint8 * span)()
            self._ggml.tensor_get(ctypes.addressof(src1), copy, 0, span)
            return _strided(ctypes.addressof(copy), shape, strides, np.float32), copy
        return _strided(int(src1.data), shape, strides, np.float32), None

    def _collect_mul_mat(self, t: GgmlTensor) -> None:
        src0, src1 = t.src[0].contents, t.src[1].contents
        name = _weight_name(src0.name)
        n_mat = int(src0.ne[2]) * int(src0.ne[3])
        x, _keep = self._activations(src1)
        ne0 = x.shape[3]
        sums = self.sums.get(name)
        if sums is None:
            sums = self.sums[name] = np.zeros((n_mat, ne0), dtype=np.float64)
            self.counts[name] = np.zeros(1, dtype=np.int64)
        elif sums.shape != (n_mat, ne0):
            raise EvalError(f"Inconsistent activation size for {name}: {sums.shape} and {(n_mat, ne0)}.")
        s03, s02 = int(src0.ne[3]), int(src0.ne[2])
        for i3 in range(x.shape[0]):
            for i2 in range(x.shape[1]):
                rows = x[i3, i2].astype(np.float64)
                sums[(i3 % s03) * s02 + (i2 % s02)] += np.einsum("ij,ij->j", rows, rows)
        if not np.all(np.isfinite(sums)):
            raise EvalError(f"The activations of {name} hold values that are not finite.")
        n_rows = x.shape[0] * x.shape[1] * x.shape[2]
        self.counts[name] += n_rows // n_mat

    def _collect_mul_mat_id(self, t: GgmlTensor) -> None:
        # ids -> [n_expert_used, n_tokens] int32 (not contiguous); src1 -> [ne0, n_expert_used or 1, n_tokens]
        src0, src1, ids = t.src[0].contents, t.src[1].contents, t.src[2].contents
        name = _weight_name(src0.name)
        n_as = int(src0.ne[2])
        if ids.type != _GGML_TYPE_I32:
            raise EvalError(f"Unexpected expert-id type for {name}.")
        x4, _keep = self._activations(src1)
        if x4.shape[0] != 1:
            raise EvalError(f"{name}: activations with more than 3 dimensions.")
        x = x4[0]  # [n_tokens, ne11, ne0]
        n_ids, n_tokens = int(ids.ne[0]), int(ids.ne[1])
        if n_tokens != x.shape[0]:
            raise EvalError(f"{name}: {n_tokens} routed tokens for {x.shape[0]} activation rows.")
        id_shape, id_strides = (n_tokens, n_ids), (int(ids.nb[1]), int(ids.nb[0]))
        if ids.buffer and not self._ggml.is_host(ids.buffer):
            span = (n_tokens - 1) * id_strides[0] + (n_ids - 1) * id_strides[1] + 4
            copy = (ctypes.c_uint8 * span)()
            self._ggml.tensor_get(ctypes.addressof(ids), copy, 0, span)
            experts = np.array(_strided(ctypes.addressof(copy), id_shape, id_strides, np.int32))
        else:
            experts = np.array(_strided(int(ids.data), id_shape, id_strides, np.int32))
        ne0 = x.shape[2]
        sums = self.sums.get(name)
        if sums is None:
            sums = self.sums[name] = np.zeros((n_as, ne0), dtype=np.float64)
            self.counts[name] = np.zeros(n_as, dtype=np.int64)
        counts = self.counts[name]
        if experts.size and (experts.min() < 0 or experts.max() >= n_as):
            raise EvalError(f"{name}: an expert id outside 0..{n_as - 1}.")
        for idx in range(n_ids):
            rows = x[:, idx % x.shape[1], :].astype(np.float64)
            np.add.at(sums, experts[:, idx], rows * rows)
            counts += np.bincount(experts[:, idx], minlength=n_as)
        if not np.all(np.isfinite(sums)):
            raise EvalError(f"The activations of {name} hold values that are not finite.")

    def data(self, *, n_chunks: int, n_ctx: int, dataset: str) -> ImatrixData:
        entries = {
            name: ImatrixEntry(sums=self.sums[name].astype(np.float32), counts=self.counts[name].copy())
            for name in sorted(self.sums)
        }
        return ImatrixData(
            entries=entries, datasets=(dataset,), chunk_count=n_chunks, chunk_size=n_ctx, has_metadata=True
        )


# ---- the computation ------------------------------------------------------------------------------
def _text_for_tokenizing(text: str) -> str:
    # llama-imatrix reads the file with -f, which drops one trailing newline.
    return text[:-1] if text.endswith("\n") else text


def compute_imatrix(
    model_path: str,
    text: EvalText,
    output: str,
    *,
    n_ctx: int = 512,
    n_chunks: int | None = None,
    n_threads: int | None = None,
    n_gpu_layers: int = 0,
    process_output: bool = False,
    cancel: CancelFlag | None = None,
    on_progress: Callable[[ChunkProgress], None] | None = None,
    override_memory: bool = False,
) -> ImatrixResult:
    """Compute `model_path`'s importance matrix on `text` and write it to `output` (llama.cpp's
    imatrix GGUF). Nothing is written when it fails or is cancelled (EvalCancelled)."""
    if n_ctx < MIN_ROWS:
        raise EvalError(f"The chunk size must be at least {MIN_ROWS} tokens, not {n_ctx}.")
    if n_chunks is not None and n_chunks < 1:
        raise EvalError(f"The number of chunks must be 1 or more, not {n_chunks}.")
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        raise EvalError(f"The folder {folder} for the importance matrix does not exist.")
    cancel = cancel or threading.Event()
    t0 = time.perf_counter()
    try:
        info = inspect_model(model_path)
    except ModelFileError as exc:
        raise EvalError(str(exc)) from None
    check_memory(
        info,
        LoadSettings(n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=min(512, n_ctx), n_gpu_layers=n_gpu_layers),
        override=override_memory,
        purpose=f"compute an importance matrix of {os.path.basename(model_path)} with a context of {n_ctx}",
    )
    require_working_build(EvalError)
    lc = llama_runtime.llama()
    ggml = _Ggml()
    collector = _Collector(ggml, process_output=process_output)
    try:
        model = LlamaModel(
            os.path.abspath(model_path), n_gpu_layers=n_gpu_layers, progress=lambda _f: not cancel.is_set()
        )
    except DriverCancelled:
        raise EvalCancelled("Cancelled while loading the model.") from None
    except DriverError as exc:
        raise EvalError(str(exc)) from None
    ctx: Any = None
    batch: Any = None
    try:
        tokens = np.array(
            model.tokenize(_text_for_tokenizing(text.text), add_special=True, parse_special=False),
            dtype=np.int32,
        )
        if len(tokens) < 2 * n_ctx:
            raise TextTooShortError(
                f"The calibration text '{text.name}' is only {len(tokens)} tokens; an importance matrix "
                f"with chunks of {n_ctx} needs at least {2 * n_ctx} (2 x the chunk size, as llama-imatrix "
                "requires). Use a longer text or smaller chunks (-c)."
            )
        available = len(tokens) // n_ctx
        chunks = min(available, n_chunks or available)
        eval_cb = lc.ggml_backend_sched_eval_callback(collector.callback)
        abort_cb = lc.ggml_abort_callback(lambda _data: cancel.is_set() or collector.error is not None)
        params = lc.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_ctx
        params.n_ubatch = min(512, n_ctx)
        params.n_seq_max = 1
        params.n_threads = n_threads or count_physical_cores()
        params.n_threads_batch = n_threads or count_logical_cores()
        params.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_AUTO  # llama-imatrix's default
        params.cb_eval = eval_cb
        params.cb_eval_user_data = None
        mark = llama_runtime.log_mark()
        ctx = lc.llama_init_from_model(model.handle, params)
        if not ctx:
            reason = "; ".join(llama_runtime.log_since(mark)[-3:]) or "it logged no reason"
            raise EvalError(f"llama.cpp could not create a context of {n_ctx} tokens: {reason}")
        lc.llama_set_abort_callback(ctx, abort_cb, None)
        batch = lc.llama_batch_init(n_ctx, 0, 1)
        b_token = np.ctypeslib.as_array(batch.token, shape=(n_ctx,))
        b_pos = np.ctypeslib.as_array(batch.pos, shape=(n_ctx,))
        np.ctypeslib.as_array(batch.n_seq_id, shape=(n_ctx,))[:] = 1
        np.ctypeslib.as_array(batch.logits, shape=(n_ctx,))[:] = 1  # every row, as llama-imatrix asks
        for i in range(n_ctx):
            batch.seq_id[i][0] = 0
        b_pos[:] = np.arange(n_ctx, dtype=np.int32)
        n_vocab = model.n_vocab
        first = n_ctx // 2
        memory = lc.llama_get_memory(ctx)
        nll_sum = nll2_sum = 0.0
        count = 0
        t_eval = time.perf_counter()
        for i in range(chunks):
            if cancel.is_set():
                raise EvalCancelled("Importance matrix cancelled; nothing was written.")
            chunk = tokens[i * n_ctx : (i + 1) * n_ctx].copy()
            if model.add_bos:
                chunk[0] = model.bos
            lc.llama_memory_clear(memory, True)
            b_token[:] = chunk
            batch.n_tokens = n_ctx
            rc = int(lc.llama_decode(ctx, batch))
            if collector.error is not None:
                error = collector.error
                raise (
                    error
                    if isinstance(error, EvalError)
                    else EvalError(f"Collecting activations failed: {error}")
                )
            if rc != 0:
                if rc == 2 or cancel.is_set():
                    raise EvalCancelled("Importance matrix cancelled; nothing was written.")
                raise EvalError(f"llama.cpp failed to evaluate chunk {i + 1} (llama_decode returned {rc}).")
            logits = np.ctypeslib.as_array(lc.llama_get_logits(ctx), shape=(n_ctx, n_vocab))
            nll = token_nll(logits[first : n_ctx - 1], tokens[i * n_ctx + first + 1 : (i + 1) * n_ctx])
            nll_sum += float(nll.sum())
            nll2_sum += float((nll * nll).sum())
            count += len(nll)
            ppl, unc = ppl_and_uncertainty(nll_sum, nll2_sum, count)
            elapsed = time.perf_counter() - t_eval
            if on_progress is not None:
                try:
                    on_progress(
                        ChunkProgress(
                            PHASE,
                            i + 1,
                            chunks,
                            ppl,
                            unc,
                            None,
                            None,
                            (i + 1) * n_ctx / elapsed if elapsed > 0 else 0.0,
                            time.perf_counter() - t0,
                            os.path.abspath(model_path),
                        )
                    )
                except Exception:  # a listener's bug must not end a long computation
                    log.exception("importance matrix progress listener failed")
        eval_s = time.perf_counter() - t_eval
        if not collector.sums:
            raise EvalError("llama.cpp computed no matrix products this importance matrix could use.")
        if cancel.is_set():
            raise EvalCancelled("Importance matrix cancelled; nothing was written.")
        data = collector.data(n_chunks=chunks, n_ctx=n_ctx, dataset=text.name)
        try:
            write_imatrix(data, output)
        except OSError as exc:
            raise EvalError(f"Cannot write the importance matrix {output}: {exc.strerror or exc}.") from None
        ppl, unc = ppl_and_uncertainty(nll_sum, nll2_sum, count)
        return ImatrixResult(
            path=os.path.abspath(output),
            model_path=os.path.abspath(model_path),
            text_name=text.name,
            text_sha256=text.sha256,
            n_ctx=n_ctx,
            n_chunks=chunks,
            n_tokens_text=len(tokens),
            n_entries=data.n_entries,
            ppl=ppl if math.isfinite(ppl) else float("nan"),
            ppl_uncertainty=unc,
            tokens_per_s=chunks * n_ctx / eval_s if eval_s > 0 else 0.0,
            elapsed_s=time.perf_counter() - t0,
        )
    finally:
        if batch is not None:
            lc.llama_batch_free(batch)
        if ctx is not None:
            lc.llama_free(ctx)
        model.close()


__all__ = [
    "CALIBRATION_TEXT_NAME",
    "DEFAULT_CALIBRATION",
    "ImatrixResult",
    "calibration_text",
    "compute_imatrix",
    "default_calibration_text",
]
