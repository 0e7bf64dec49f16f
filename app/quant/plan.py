"""What a quantization will do, before it runs: the request, the output name and size, the disk
space it needs, and the warnings a user should read (requantizing, a dequantized base).

Everything here reads only the source's GGUF header; `plan_quantization` refuses impossible
requests (same file in and out, too little disk) with a message that says what to do.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gguf

from app.common.formatting import format_bytes
from app.model.file_format import ModelFileError, detect_format
from app.model.gguf_info import inspect_model
from app.model.model_info import ModelInfo
from app.quant.types import (
    QuantType,
    UnknownQuantTypeError,
    ftype_value,
    is_quantized_tensor_type,
    quant_type,
    supported_quant_types,
    tensor_type_id,
)

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


class QuantizeError(Exception):
    """A quantization that cannot start or did not finish; the message is meant for the user."""


class QuantizeCancelled(QuantizeError):
    """The user stopped the quantization; nothing was written."""


@dataclass(frozen=True)
class QuantizeRequest:
    """What to quantize, to what, and llama-quantize's options."""

    source: str
    type_name: str  # a QuantType name, e.g. "Q4_K_M"
    output: str | None = None  # None: named after the model and type (see default_output_path)
    allow_requantize: bool = False  # --allow-requantize
    pure: bool = False  # --pure: every tensor in the main type, no K-quant mix
    leave_output_tensor: bool = False  # --leave-output-tensor (quantize_output_tensor = False)
    output_tensor_type: str | None = None  # --output-tensor-type, a ggml tensor type name
    token_embedding_type: str | None = None  # --token-embedding-type
    n_threads: int | None = None  # None: llama.cpp uses every hardware thread
    overwrite: bool = False  # replace an existing output file (never the source)
    # --imatrix: an importance matrix file (GGUF or legacy .dat; app.quant.imatrix). With one, the
    # types that need it (IQ1/IQ2/IQ3_XXS mixes, Q2_K_S) can be made, and the quantizer uses it for
    # every type whose quantization routine takes weights (K-quants, i-quants, Q4_0 ... Q5_1).
    imatrix: str | None = None
    # --tensor-type: (regex, ggml tensor type name) pairs. llama.cpp tries them in order on each
    # quantized tensor's name (std::regex_search) and takes the first that matches; the mix's own
    # choice and `pure` are skipped for that tensor, the shape fallback still applies.
    tensor_types: tuple[tuple[str, str], ...] = ()
    # --dry-run: nothing is written; the result gives each tensor's type and size and the file's
    # size (QuantizeResult.dry_run). No disk space or existing output is checked.
    dry_run: bool = False
    # Extra string metadata written into the result ({key: value} pairs, each value at most 127
    # bytes: llama_model_kv_override's limit); the target-size quantizer records its choice here.
    metadata: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ImatrixSummary:
    """What a quantization records about the importance matrix it used (llama-quantize's
    quantize.imatrix.* keys), read from the file when the request is planned."""

    path: str  # as the request gave it: llama-quantize records the path as given
    datasets: tuple[str, ...]
    n_entries: int
    chunk_count: int
    is_legacy: bool


@dataclass(frozen=True)
class TensorSize:
    """One tensor in a dry run: its shape, its type in the source and the type and bytes it gets."""

    name: str
    shape: tuple[int, ...]  # ggml order: ne0 (a row's length) first
    source_type: str  # ggml type name as llama.cpp prints it, e.g. "f16"
    target_type: str  # e.g. "q4_K"; equal to source_type when the tensor is copied
    target_bytes: int  # n_rows x row size of target_type, without the file's 32-byte padding


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
    imatrix: ImatrixSummary | None = None

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
    imatrix: ImatrixSummary | None = None  # the matrix used, as recorded in the file's metadata
    tensor_types: tuple[tuple[str, str], ...] = ()  # the request's (regex, type) overrides
    # A dry run wrote nothing: output_path is where the file would go, output_bytes its predicted
    # size (see app.quant.quantize's dry-run notes), and `tensors` each tensor's type and size.
    dry_run: bool = False
    tensors: tuple[TensorSize, ...] = field(default=(), repr=False)

    @property
    def compression_ratio(self) -> float:
        """Source size / output size (2.0 = half the size; below 1 the output is larger)."""
        return self.source_bytes / self.output_bytes if self.output_bytes else 0.0

    @property
    def size_change(self) -> str:
        """The output's size against the source's, the right way round: "2.75× larger than the
        source", "2.3× smaller than the source"."""
        return size_change_text(self.source_bytes, self.output_bytes)

    @property
    def label(self) -> str:
        """How to name this file honestly in a list of variants."""
        if self.dequantized_copy:
            return f"{self.type_name} (dequantized copy of {self.source_quantized_type})"
        if self.source_quantized_type:
            return f"{self.type_name} (requantized from {self.source_quantized_type})"
        return self.type_name


def size_change_text(source_bytes: int, output_bytes: int) -> str:
    """ "2.75× larger than the source" / "2.3× smaller than the source" / "the source's size"."""
    if source_bytes <= 0 or output_bytes <= 0:
        return "n/a"
    ratio = output_bytes / source_bytes
    if ratio >= 1:
        factor, word = ratio, "larger"
    else:
        factor, word = 1 / ratio, "smaller"
    if f"{factor:.3g}" == "1":  # within half a per cent: no factor to speak of
        return "the same size as the source"
    return f"{factor:.3g}× {word} than the source"


def space_needed_bytes(expected_bytes: int) -> int:
    """The free space a quantization needs: its estimated size plus the margin."""
    return int(expected_bytes * (1 + SPACE_MARGIN_FRACTION)) + SPACE_MARGIN_BYTES


def disk_free_bytes(path: str) -> int:
    """Free bytes on the filesystem holding `path` (a folder)."""
    return int(shutil.disk_usage(path).free)


def _strip_type_suffix(stem: str) -> str:
    """ "Model.Q4_1", "model-q8_0", "Model.F16-from-Q4_1" -> "Model" / "model"; other stems unchanged.

    Suffixes are stripped until none is left, so a file made from a file LlamaScope named gets the
    model's name back, not a chain of types; the "-from-<type>" names of older LlamaScopes too.
    """
    names = [t.name for t in supported_quant_types()] + ["Q3_K", "Q4_K", "Q5_K"]
    # Longest first: "-from-Q4_1" before "-Q4_1". "…F16-from" is what an older LlamaScope made of
    # "Model.F16-from-Q4_1" when quantizing it ("Model.F16-from.Q8_0.gguf").
    suffixes = sorted(
        {
            s
            for name in names
            for sep in (".", "-", "_")
            for s in (f"{sep}{name}", f"-from-{name}", f"{sep}{name}-from")
        },
        key=len,
        reverse=True,
    )
    while True:
        for suffix in suffixes:
            if len(stem) > len(suffix) and stem.upper().endswith(suffix.upper()):
                stem = stem[: -len(suffix)]
                break
        else:
            return stem


USER_MODELS_FOLDER_NAME = "models"


def user_models_folder() -> str:
    """<user data dir>/LlamaScope/models: where outputs go when the source's folder will not do."""
    import platformdirs

    return os.path.join(platformdirs.user_data_dir("LlamaScope", appauthor=False), USER_MODELS_FOLDER_NAME)


def _inside_installed_package(folder: str) -> bool:
    """Whether `folder` lies in a Python environment's package folders, where a reinstall or an
    uninstall deletes what is not the package's (the demo model lives in one)."""
    parts = {part.lower() for part in Path(os.path.realpath(folder)).parts}
    return bool(parts & {"site-packages", "dist-packages"})


def output_folder_reason(source: str) -> str | None:
    """Why outputs of `source` do not go beside it, in words that follow "because"; None when they do."""
    folder = os.path.dirname(os.path.abspath(source))
    if _inside_installed_package(folder):
        return (
            f"the source's folder {folder} belongs to an installed Python package, "
            "and reinstalling the package would delete anything written there"
        )
    # os.access also answers for root on a read-only mount (EROFS); the job's real write test
    # (creating its temporary file) still decides for a chosen folder.
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"the source's folder {folder} is not writable"
    return None


def default_output_folder(source: str) -> str:
    """The source's folder, unless it is not writable or lies inside an installed package: then
    LlamaScope's user data folder (`user_models_folder`)."""
    if output_folder_reason(source) is None:
        return os.path.dirname(os.path.abspath(source))
    return user_models_folder()


def default_output_path(source: str, type_name: str) -> str:
    """The model's name and the type, in `default_output_folder`: "Model.Q4_1.gguf" and
    "Model.F16.gguf" (a copy of it) both give "Model.Q4_K_M.gguf" for Q4_K_M.

    The name says what the file is. Where it came from (a dequantized copy of Q4_1, say) is in its
    metadata (`KEY_QUANTIZED_FROM`), which the model list shows.
    """
    stem = _strip_type_suffix(Path(source).stem) or Path(source).stem
    return os.path.join(default_output_folder(source), f"{stem}.{quant_type(type_name).name}.gguf")


def f16_base_request(
    source: str, output: str | None = None, *, n_threads: int | None = None
) -> QuantizeRequest:
    """ "Make F16 base": an F16 copy of a quantized model to quantize other types from.

    It is a dequantized copy: it carries the quantized model's errors, so types made from it
    measure against that model, not against the original. The plan and result say so, and the
    file's metadata records `llamascope.quantized_from`, which the model list shows.
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
    _checked_tensor_types(request.tensor_types)
    for key, value in request.metadata:
        if not key or len(key.encode("utf-8")) > 127 or len(value.encode("utf-8")) > 127:
            raise QuantizeError(
                f"Metadata {key!r}: keys and values must be 1 to 127 bytes (llama.cpp's override fields)."
            )
    matrix = _imatrix_summary(request.imatrix) if request.imatrix is not None else None
    warnings: list[str] = []
    if matrix is None:
        if request.dry_run:
            # llama.cpp sizes these without a matrix and only warns: the advisor asks sizes first.
            if qtype.needs_imatrix:
                warnings.append(
                    f"Without an importance matrix {qtype.name} could not be carried out; the dry run only "
                    "gives its size."
                )
        elif qtype.refusal_reason:
            raise QuantizeError(qtype.refusal_reason)
        # An override to an IQ1/IQ2/IQ3_XXS type without a matrix is left to llama.cpp: it allows
        # them for output.weight and token_embd.weight and refuses the rest by name, which the job
        # turns into a message (see app.quant.quantize, MISSING_IMATRIX_HINT).
    if request.n_threads is not None and request.n_threads < 1:
        raise QuantizeError(f"Thread count must be 1 or more, not {request.n_threads}.")

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

    if request.output is None:
        output = default_output_path(source, qtype.name)
        if os.path.dirname(output) == user_models_folder() and not request.dry_run:
            try:  # LlamaScope's own folder: created on first use
                os.makedirs(os.path.dirname(output), exist_ok=True)
            except OSError as exc:
                raise QuantizeError(
                    f"Cannot create {os.path.dirname(output)} for the output: {exc.strerror or exc}. "
                    "Choose an output file."
                ) from None
    else:
        output = os.path.abspath(request.output)
    if not output.lower().endswith(".gguf"):
        warnings.append(f"The output name {os.path.basename(output)} does not end in .gguf.")
    if _same_file(source, output):
        raise QuantizeError(
            f"The output {output} is the source file; choose another name. The source is never overwritten."
        )
    dest_dir = os.path.dirname(output)
    expected = estimate_output_bytes(info, request, qtype)
    if request.dry_run:  # nothing is written: where and whether it could be is not asked
        return QuantizePlan(
            request=request,
            source=info,
            qtype=qtype,
            output_path=output,
            expected_bytes=expected,
            free_bytes=_free_or_zero(free_bytes, dest_dir),
            source_quantized_type=src_qtype,
            warnings=tuple(warnings),
            imatrix=matrix,
        )
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

    needed = space_needed_bytes(expected)
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
        imatrix=matrix,
    )


def _free_or_zero(free_bytes: Callable[[str], int], folder: str) -> int:
    try:
        return int(free_bytes(folder))
    except OSError:
        return 0


def _checked_tensor_types(pairs: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """The overrides with canonical type names; QuantizeError for a bad pattern or type.

    llama.cpp compiles the patterns as ECMAScript regexes (std::regex); Python's re is close
    enough to catch the mistakes people make (an unbalanced bracket, a stray quantifier)."""
    checked: list[tuple[str, str]] = []
    for pattern, type_name in pairs:
        if not pattern:
            raise QuantizeError("A tensor-type override needs a tensor name pattern, e.g. attn_v=Q8_0.")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise QuantizeError(
                f"The tensor name pattern {pattern!r} is not a valid regular expression: {exc}."
            ) from None
        try:
            tensor_type_id(type_name)
        except UnknownQuantTypeError as exc:
            raise QuantizeError(str(exc)) from None
        checked.append((pattern, type_name.strip().upper()))
    return tuple(checked)


def _imatrix_summary(path: str) -> ImatrixSummary:
    """Read the matrix once here, so a bad file is a message before the quantizer starts."""
    from app.quant.imatrix import ImatrixFileError, check_for_quantizer, read_imatrix

    try:
        data = read_imatrix(path)
        check_for_quantizer(data, path)
    except ImatrixFileError as exc:
        raise QuantizeError(str(exc)) from None
    return ImatrixSummary(
        path=path,
        datasets=data.datasets,
        n_entries=data.n_entries,
        chunk_count=data.chunk_count,
        is_legacy=data.is_legacy,
    )


def _same_file(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
