"""Read GGUF headers without touching tensor data: the metadata, and the `ModelInfo` shown and used
for estimates (what a file is comes first, from app.model.file_format).

The GGUF header is parsed here with ``struct`` over a buffered file: ``gguf.GGUFReader`` memory-maps the
whole file and builds numpy views of every tensor, which is slow for multi-GB models and useless for a
header view. The ``gguf`` package is used only for its constants (type names and block sizes)."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Any, BinaryIO

import gguf
import numpy as np

from app.common.formatting import format_bytes
from app.model.file_format import (
    GGUF_MAGIC,
    LE_U32,
    LE_U64,
    SUPPORTED_GGUF_VERSIONS,
    FileFormat,
    ModelFileError,
    detect_format,
    open_binary,
)
from app.model.model_info import KEY_QUANTIZED_FROM, ModelInfo, SizeClass, TensorTypeStat

DEFAULT_ALIGNMENT = 32

# Sanity limits: far above any real model, low enough that random bytes fail fast instead of
# driving allocations or loops from a garbage count.
_MAX_TENSORS = 1_000_000
_MAX_KVS = 100_000
_MAX_STRING = 100_000_000
_MAX_DIMS = 8
_MAX_ARRAY_DEPTH = 8

# Longer metadata arrays (vocabularies, merges) are skipped and kept as their length only. Per-layer
# arrays (head counts, feed-forward sizes) must survive for inspect_model; read_metadata shows less.
_KEEP_ARRAY_ITEMS = 1024
_METADATA_LIST_ITEMS = 64
_BUFFER_SIZE = 256 * 1024
_VT = gguf.GGUFValueType

# value type -> (struct code, size, display name) for fixed-size types
_FIXED_TYPES: dict[int, tuple[str, int, str]] = {
    _VT.UINT8: ("B", 1, "uint8"),
    _VT.INT8: ("b", 1, "int8"),
    _VT.UINT16: ("H", 2, "uint16"),
    _VT.INT16: ("h", 2, "int16"),
    _VT.UINT32: ("I", 4, "uint32"),
    _VT.INT32: ("i", 4, "int32"),
    _VT.FLOAT32: ("f", 4, "float32"),
    _VT.BOOL: ("?", 1, "bool"),
    _VT.UINT64: ("Q", 8, "uint64"),
    _VT.INT64: ("q", 8, "int64"),
    _VT.FLOAT64: ("d", 8, "float64"),
}


@dataclass(frozen=True)
class _SkippedArray:
    """A metadata array whose contents were skipped; only its element type and length are known."""

    element_type: str
    count: int

    def __str__(self) -> str:
        return f"<array of {self.count} {self.element_type}>"


@dataclass(frozen=True)
class _TensorInfo:
    name: str
    dims: tuple[int, ...]
    type_name: str
    n_elements: int
    n_bytes: int
    offset: int


@dataclass(frozen=True)
class _Header:
    version: int
    file_size: int
    kvs: dict[str, object]
    tensors: tuple[_TensorInfo, ...]


class _HeaderReader:
    """Little-endian reads over a buffered file that turn running out of bytes into ModelFileError."""

    def __init__(self, f: BinaryIO, file_size: int, path: str, keep_items: int) -> None:
        self._f = f
        self.pos = 0
        self.file_size = file_size
        self.path = path
        self.name = os.path.basename(path)
        self.keep_items = keep_items
        # Where the parser is (a metadata key or tensor info by number), for the messages.
        self.context = ""
        # The counts the header declared, named when a counted section does not parse: a corrupt count
        # makes the parser read one section's bytes as the other's.
        self.counts = ""

    def require(self, n: int) -> None:
        # Checked before reading so a garbage length never turns into a huge allocation.
        if self.pos + n > self.file_size:
            raise self.truncated(self.pos + n, self.file_size)

    def read(self, n: int) -> bytes:
        self.require(n)
        data = self._f.read(n)
        if len(data) != n:  # the file shrank after stat()
            raise self.truncated(self.pos + n, self.pos + len(data))
        self.pos += n
        return data

    def skip(self, n: int) -> None:
        self.require(n)
        self._f.seek(n, os.SEEK_CUR)
        self.pos += n

    def u32(self) -> int:
        return int(LE_U32.unpack(self.read(4))[0])

    def u64(self) -> int:
        return int(LE_U64.unpack(self.read(8))[0])

    def string_length(self) -> int:
        n = self.u64()
        if n > _MAX_STRING:
            raise self.corrupt(f"it declares a {n:,}-byte string at byte {self.pos - 8:,}")
        return n

    def string(self) -> str:
        return self.read(self.string_length()).decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        self.skip(self.string_length())

    def truncated(self, needed: int, available: int) -> ModelFileError:
        where = f" while reading {self.context}" if self.context else ""
        return ModelFileError(
            f"'{self.name}' is truncated: the header ends early{where} (it needs at least {needed:,} "
            f"bytes but the file has {available:,}). It is probably an incomplete download or a partial "
            "copy: download or copy it again.",
            path=self.path,
        )

    def corrupt(self, what: str) -> ModelFileError:
        where = f" (in {self.context})" if self.context else ""
        counts = f" {self.counts}" if self.counts and self.context else ""
        return ModelFileError(
            f"'{self.name}' is not a valid GGUF file: its header is corrupt: {what}{where}.{counts} The "
            "file is corrupt or not really a GGUF model: download it again.",
            path=self.path,
        )


def _f32(x: float) -> float:
    # The shortest float32 repr reads as written (1e-05, not 9.999999747378752e-06).
    return float(str(np.float32(x)))


def _read_value(r: _HeaderReader, vtype: int, depth: int) -> object:
    fixed = _FIXED_TYPES.get(vtype)
    if fixed is not None:
        code, size, _ = fixed
        value = struct.unpack("<" + code, r.read(size))[0]
        return _f32(value) if vtype == _VT.FLOAT32 else value
    if vtype == _VT.STRING:
        return r.string()
    if vtype == _VT.ARRAY:
        return _read_array(r, depth + 1)
    raise r.corrupt(f"unknown metadata value type {vtype} at byte {r.pos - 4:,}")


def _read_array(r: _HeaderReader, depth: int) -> list[Any] | _SkippedArray:
    if depth > _MAX_ARRAY_DEPTH:
        raise r.corrupt(f"metadata arrays nested more than {_MAX_ARRAY_DEPTH} deep")
    etype = r.u32()
    count = r.u64()
    fixed = _FIXED_TYPES.get(etype)
    if fixed is not None:
        code, size, type_name = fixed
        if count > r.keep_items:
            r.skip(count * size)
            return _SkippedArray(type_name, count)
        values = list(struct.unpack(f"<{count}{code}", r.read(count * size)))
        return [_f32(v) for v in values] if etype == _VT.FLOAT32 else values
    if etype == _VT.STRING:
        r.require(count * 8)  # every element has at least its length prefix: bounds the loop
        if count > r.keep_items:
            for _ in range(count):
                r.skip_string()
            return _SkippedArray("str", count)
        return [r.string() for _ in range(count)]
    if etype == _VT.ARRAY:
        r.require(count * 12)  # each nested array has a type and a count
        items = [_read_array(r, depth + 1) for _ in range(count)]
        return _SkippedArray("array", count) if count > r.keep_items else items
    raise r.corrupt(f"unknown metadata array element type {etype} at byte {r.pos - 12:,}")


# ggml numbers its types from 0 and has used about 40 of them; a raw value far past that is not a type
# from a newer llama.cpp but bytes of something else read as one (a corrupt count in the header).
_MAX_PLAUSIBLE_GGML_TYPE = 1024


def _ggml_type(r: _HeaderReader, tensor: str, raw: int) -> tuple[str, int, int]:
    try:
        qtype = gguf.GGMLQuantizationType(raw)
        block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    except (ValueError, KeyError):
        if raw > _MAX_PLAUSIBLE_GGML_TYPE:
            raise r.corrupt(
                f"tensor '{tensor}' has ggml type {raw:,}, which no version of ggml has"
            ) from None
        raise ModelFileError(
            f"'{r.name}': tensor '{tensor}' uses ggml type {raw}, which this version does not know. It is "
            "either a type removed from llama.cpp (re-download or re-quantize the model) or one newer than "
            "this tool (update LlamaScope and the gguf package).",
            path=r.path,
        ) from None
    return qtype.name, block_size, type_size


@dataclass(frozen=True)
class _RawTensor:
    """A tensor info as read, before its type is looked up."""

    name: str
    dims: tuple[int, ...]
    raw_type: int
    offset: int
    start: int  # byte where its info starts, for messages


def _read_header(path: str, *, with_tensors: bool, keep_items: int) -> _Header:
    fmt = detect_format(path)
    if not fmt.loadable:
        raise ModelFileError(_format_error(path, fmt), path=path)
    try:
        file_size = os.stat(path).st_size
        with open_binary(path, _BUFFER_SIZE) as f:
            return _parse(_HeaderReader(f, file_size, path, keep_items), with_tensors)
    except OSError as exc:
        raise ModelFileError(
            f"'{os.path.basename(path)}' could not be read: {exc.strerror or exc}.", path=path
        ) from None


def _format_error(path: str, fmt: FileFormat) -> str:
    if fmt.kind == "missing":
        return f"Model file not found: {path}. It may have been moved, renamed or deleted."
    return f"'{os.path.basename(path) or path}' cannot be loaded. {fmt.message}"


def _parse(r: _HeaderReader, with_tensors: bool) -> _Header:
    if r.read(4) != GGUF_MAGIC:
        raise r.corrupt("it does not start with the GGUF magic number")
    version = r.u32()
    if version not in SUPPORTED_GGUF_VERSIONS:
        raise r.corrupt(f"unsupported GGUF version {version}")
    tensor_count = r.u64()
    kv_count = r.u64()
    if tensor_count > _MAX_TENSORS:
        raise r.corrupt(f"its header declares {tensor_count:,} tensors (the limit is {_MAX_TENSORS:,})")
    if kv_count > _MAX_KVS:
        raise r.corrupt(f"its header declares {kv_count:,} metadata keys (the limit is {_MAX_KVS:,})")

    r.counts = (
        f"The header declares {kv_count:,} metadata keys and {tensor_count:,} tensors; if the file is "
        "otherwise complete, one of these counts is wrong."
    )
    kvs: dict[str, object] = {}
    for index in range(kv_count):
        r.context = f"metadata key {index + 1:,} of {kv_count:,}, which starts at byte {r.pos:,}"
        key = r.string()
        value = _read_value(r, r.u32(), 0)
        if key in kvs:
            raise r.corrupt(f"the metadata key '{key}' appears twice")
        kvs[key] = value
    r.context = ""
    if not with_tensors:
        return _Header(version, r.file_size, kvs, ())

    # The tensor infos are read whole before any type is looked up: when a count is corrupt, what is
    # read as a tensor is some other bytes, and the structure fails or the type is garbage. Either is
    # the header's fault, not a ggml type this version lacks.
    raw_tensors: list[_RawTensor] = []
    seen: set[str] = set()
    for index in range(tensor_count):
        start = r.pos
        r.context = f"tensor info {index + 1:,} of {tensor_count:,}, which starts at byte {start:,}"
        name = r.string()
        n_dims = r.u32()
        if n_dims > _MAX_DIMS:
            raise r.corrupt(f"tensor '{name}' declares {n_dims} dimensions (the limit is {_MAX_DIMS})")
        dims = struct.unpack(f"<{n_dims}Q", r.read(8 * n_dims))
        raw_type = r.u32()
        offset = r.u64()
        if name in seen:
            raise r.corrupt(f"the tensor name '{name}' appears twice")
        seen.add(name)
        raw_tensors.append(_RawTensor(name, tuple(dims), raw_type, offset, start))
    header_end = r.pos
    r.context = ""

    raw_alignment = kvs.get("general.alignment", DEFAULT_ALIGNMENT)
    alignment = raw_alignment if type(raw_alignment) is int else 0  # bools and arrays are invalid too
    if alignment <= 0 or alignment & (alignment - 1):
        raise r.corrupt(f"general.alignment is {raw_alignment!r}, not a power of two")

    tensors: list[_TensorInfo] = []
    for index, raw in enumerate(raw_tensors):
        r.context = f"tensor info {index + 1:,} of {tensor_count:,}, which starts at byte {raw.start:,}"
        name, dims = raw.name, raw.dims
        if raw.offset % alignment:
            raise r.corrupt(f"tensor '{name}' starts at offset {raw.offset}, not a multiple of {alignment}")
        type_name, block_size, type_size = _ggml_type(r, name, raw.raw_type)
        n_elements = 1
        for d in dims:
            n_elements *= d
        if n_elements >= 2**63:
            raise r.corrupt(f"tensor '{name}' has an impossible shape {list(dims)}")
        if dims and dims[0] % block_size:
            raise r.corrupt(
                f"tensor '{name}' row length {dims[0]} is not a multiple of the {type_name} block"
            )
        n_bytes = n_elements // block_size * type_size
        tensors.append(_TensorInfo(name, tuple(dims), type_name, n_elements, n_bytes, raw.offset))
    r.context = ""

    data_start = -(-header_end // alignment) * alignment
    data_end = max((t.offset + t.n_bytes for t in tensors), default=0)
    expected = data_start + data_end if tensors else header_end
    if expected > r.file_size:
        share = r.file_size / expected * 100
        raise ModelFileError(
            f"'{r.name}' is truncated: its header describes {format_bytes(data_end)} of tensor data, so the "
            f"file should be at least {expected:,} bytes, but it is only {r.file_size:,} bytes "
            f"({share:.0f}% present). This is usually an incomplete download: download it again.",
            path=r.path,
        )
    return _Header(version, r.file_size, kvs, tuple(tensors))


def read_metadata(path: str | os.PathLike[str]) -> dict[str, object]:
    """All GGUF metadata in file order; arrays of more than 64 items become a summary string."""
    # Only the KV section is read, so the metadata of an incomplete download can still be shown.
    header = _read_header(os.fspath(path), with_tensors=False, keep_items=_METADATA_LIST_ITEMS)
    return {key: _display_value(value) for key, value in header.kvs.items()}


def _display_value(value: object) -> object:
    if isinstance(value, _SkippedArray):
        return str(value)
    if isinstance(value, list):
        return [_display_value(v) for v in value]
    return value


def inspect_model(path: str | os.PathLike[str]) -> ModelInfo:
    """Read what a GGUF header says about a model, without reading tensor data; raises ModelFileError."""
    p = os.fspath(path)
    header = _read_header(p, with_tensors=True, keep_items=_KEEP_ARRAY_ITEMS)
    kvs = header.kvs

    arch = _as_str(kvs.get("general.architecture"))

    def arch_int(suffix: str) -> int | None:
        return _as_int(kvs.get(f"{arch}.{suffix}")) if arch else None

    n_embd = arch_int("embedding_length")
    n_head = arch_int("attention.head_count")
    n_head_kv = arch_int("attention.head_count_kv")
    if n_head_kv is None:
        n_head_kv = n_head
    head_dim = n_embd // n_head if n_embd and n_head else None
    n_embd_head_k = arch_int("attention.key_length")
    n_embd_head_v = arch_int("attention.value_length")
    vocab_size = arch_int("vocab_size")
    if vocab_size is None:
        tokens = kvs.get("tokenizer.ggml.tokens")
        if isinstance(tokens, _SkippedArray):
            vocab_size = tokens.count
        elif isinstance(tokens, list):
            vocab_size = len(tokens)

    stats: dict[str, list[int]] = {}
    for t in header.tensors:
        row = stats.setdefault(t.type_name, [0, 0, 0])
        row[0] += 1
        row[1] += t.n_elements
        row[2] += t.n_bytes
    tensor_types = tuple(
        sorted(
            (TensorTypeStat(name, n, elements, n_bytes) for name, (n, elements, n_bytes) in stats.items()),
            key=lambda s: (-s.n_bytes, s.type_name),
        )
    )
    n_params = sum(t.n_elements for t in header.tensors)
    data_bytes = sum(t.n_bytes for t in header.tensors)
    template = kvs.get("tokenizer.chat_template")

    return ModelInfo(
        path=p,
        file_size_bytes=header.file_size,
        gguf_version=header.version,
        name=_as_str(kvs.get("general.name")),
        architecture=arch,
        n_params=n_params,
        size_class=SizeClass.from_n_params(n_params),
        size_label=_as_str(kvs.get("general.size_label")),
        file_type=_file_type_name(kvs.get("general.file_type")),
        tensor_types=tensor_types,
        tensor_data_bytes=data_bytes,
        bits_per_weight=data_bytes * 8 / n_params if n_params else 0.0,
        context_length=arch_int("context_length"),
        n_layer=arch_int("block_count"),
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        n_embd_head_k=n_embd_head_k if n_embd_head_k is not None else head_dim,
        n_embd_head_v=n_embd_head_v if n_embd_head_v is not None else head_dim,
        vocab_size=vocab_size,
        chat_template=template if isinstance(template, str) and template else None,
        quantized_from=_as_str(kvs.get(KEY_QUANTIZED_FROM)),
    )


def _as_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, list):
        # Some architectures store per-layer values (e.g. head_count_kv); the largest one sizes buffers.
        ints = [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
        return max(ints) if ints else None
    return None


def _file_type_name(value: object) -> str | None:
    if not isinstance(value, int) or isinstance(value, bool):
        return None
    guessed = bool(value & gguf.LlamaFileType.GUESSED)
    base = value & ~int(gguf.LlamaFileType.GUESSED)
    try:
        name = gguf.LlamaFileType(base).name
    except ValueError:
        return f"unknown ({value})"
    for prefix in ("MOSTLY_", "ALL_"):
        name = name.removeprefix(prefix)
    return f"{name} (guessed)" if guessed else name
