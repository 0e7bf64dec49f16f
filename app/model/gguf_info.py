"""Identify model files and read GGUF headers without touching tensor data.

The GGUF header is parsed here with ``struct`` over a buffered file: ``gguf.GGUFReader`` memory-maps the
whole file and builds numpy views of every tensor, which is slow for multi-GB models and useless for a
header view. The ``gguf`` package is used only for its constants (type names and block sizes).
"""

from __future__ import annotations

import os
import stat
import struct
import zipfile
from dataclasses import dataclass
from typing import Any, BinaryIO

import gguf
import numpy as np

from app.model.model_info import ModelInfo, SizeClass, TensorTypeStat

__all__ = [
    "SUPPORTED_FORMATS",
    "FileFormat",
    "ModelFileError",
    "detect_format",
    "inspect_model",
    "read_metadata",
]

GGUF_MAGIC = b"GGUF"
SUPPORTED_GGUF_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32

# Legacy llama.cpp magics, stored as little-endian uint32 at offset 0.
_LEGACY_MAGICS: dict[int, str] = {0x67676D6C: "ggml", 0x67676D66: "ggmf", 0x67676A74: "ggjt"}

# Sanity limits: far above any real model, low enough that random bytes fail fast instead of
# driving allocations or loops from a garbage count.
_MAX_TENSORS = 1_000_000
_MAX_KVS = 100_000
_MAX_STRING = 100_000_000
_MAX_DIMS = 8
_MAX_ARRAY_DEPTH = 8
_MAX_SAFETENSORS_HEADER = 100_000_000

# Longer metadata arrays (vocabularies, merges) are skipped and kept as their length only. Per-layer
# arrays (head counts, feed-forward sizes) must survive for inspect_model; read_metadata shows less.
_KEEP_ARRAY_ITEMS = 1024
_METADATA_LIST_ITEMS = 64
_HEAD_BYTES = 16  # enough for every magic number detect_format knows
_BUFFER_SIZE = 256 * 1024

_CONVERT_HF = "convert it with llama.cpp's convert_hf_to_gguf.py, or download a GGUF build of the model."
_CONVERT_LEGACY = (
    "Current llama.cpp reads GGUF only: convert it with llama.cpp's convert_llama_ggml_to_gguf.py, "
    "or download a GGUF build of the model."
)

SUPPORTED_FORMATS: tuple[tuple[str, bool, str], ...] = (
    ("GGUF (.gguf, v2 and v3)", True, "The llama.cpp format: loaded directly."),
    (
        "GGML / GGMF / GGJT (legacy .bin)",
        False,
        "Pre-August-2023 llama.cpp formats: convert with convert_llama_ggml_to_gguf.py.",
    ),
    ("Safetensors (.safetensors)", False, "Hugging Face weights: convert with convert_hf_to_gguf.py."),
    ("PyTorch (.bin / .pt / .pth)", False, "PyTorch checkpoints: convert with convert_hf_to_gguf.py."),
)

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
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class ModelFileError(Exception):
    """A model file that cannot be used; the message says what the file is and what to do about it."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path


@dataclass(frozen=True)
class FileFormat:
    """What a file is, judged from its first bytes."""

    kind: str  # gguf, ggml, ggmf, ggjt, safetensors, pytorch-zip, pytorch-pickle, directory, missing, ...
    version: int | None
    loadable: bool  # True only for GGUF v2 and v3
    message: str


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


def _open_binary(path: str, buffering: int) -> BinaryIO:
    """Open a file for reading: the only place this module opens files (tests wrap it to count reads)."""
    return open(path, "rb", buffering=buffering)


def _human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1000:
            return f"{n} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


# --- format detection -------------------------------------------------------------------------------


def detect_format(path: str | os.PathLike[str]) -> FileFormat:
    """Identify a file from its magic number; reads a few bytes (zips: their directory), never raises."""
    p = os.fspath(path)
    try:
        st = os.stat(p)
    except (FileNotFoundError, NotADirectoryError):
        return FileFormat(
            "missing", None, False, "File not found: it may have been moved, renamed or deleted."
        )
    except OSError as exc:
        return FileFormat("unknown", None, False, f"The file cannot be accessed: {exc.strerror or exc}.")
    if stat.S_ISDIR(st.st_mode):
        return _directory_format(p)
    if not stat.S_ISREG(st.st_mode):
        # Opening a FIFO or device could block forever, so don't.
        return FileFormat("unknown", None, False, "Not a regular file (a device, pipe or socket).")
    if st.st_size == 0:
        return FileFormat(
            "empty",
            None,
            False,
            "The file is empty (0 bytes): probably a failed download. Download it again.",
        )
    try:
        with _open_binary(p, 0) as f:
            head = f.read(_HEAD_BYTES)
            return _classify(head, st.st_size, f)
    except OSError as exc:
        return FileFormat("unknown", None, False, f"The file cannot be read: {exc.strerror or exc}.")


def _directory_format(path: str) -> FileFormat:
    try:
        names = sorted(os.listdir(path))
    except OSError:
        names = []
    ggufs = [n for n in names if n.lower().endswith(".gguf")]
    if ggufs:
        shown = ", ".join(ggufs[:3]) + (", …" if len(ggufs) > 3 else "")
        hint = f"It contains {len(ggufs)} .gguf file(s) ({shown}): choose one of them."
    elif "config.json" in names and any(n.endswith((".safetensors", ".bin")) for n in names):
        hint = "It looks like a Hugging Face model folder: " + _CONVERT_HF
    else:
        hint = "Choose a .gguf model file instead."
    return FileFormat("directory", None, False, f"This is a folder, not a model file. {hint}")


def _classify(head: bytes, size: int, f: BinaryIO) -> FileFormat:
    if head[:4] == GGUF_MAGIC:
        return _gguf_format(head)
    if len(head) >= 4:
        legacy = _LEGACY_MAGICS.get(_U32.unpack_from(head)[0])
        if legacy is not None:
            return _legacy_format(legacy, head)
    if len(head) >= 9:
        header_len = _U64.unpack_from(head)[0]
        if 2 <= header_len <= _MAX_SAFETENSORS_HEADER and head[8:9] == b"{" and 8 + header_len <= size:
            return FileFormat(
                "safetensors", None, False, "Safetensors weights (Hugging Face format). " + _needs_hf()
            )
    if head[:4] == b"PK\x03\x04":
        return _zip_format(f)
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return FileFormat(
            "pytorch-pickle",
            None,
            False,
            f"Legacy PyTorch checkpoint (pickle protocol {head[1]}, e.g. a .bin/.pt/.pth file). "
            + _needs_hf(),
        )
    return FileFormat(
        "unknown",
        None,
        False,
        "Not a recognised model file: its first bytes match neither GGUF nor any known model format. "
        "Choose a .gguf file; if this one should be a model, it is corrupt: download it again.",
    )


def _needs_hf() -> str:
    return "llama.cpp reads GGUF only: " + _CONVERT_HF


def _gguf_format(head: bytes) -> FileFormat:
    if len(head) < 8:
        return FileFormat(
            "gguf",
            None,
            False,
            "GGUF file cut off inside its first 8 bytes: it is truncated. Download it again.",
        )
    version = _U32.unpack_from(head, 4)[0]
    if version in SUPPORTED_GGUF_VERSIONS:
        return FileFormat("gguf", version, True, f"GGUF v{version} — supported")
    if version == 1:
        return FileFormat(
            "gguf",
            1,
            False,
            "GGUF v1 file (the August 2023 first draft of GGUF). Current llama.cpp reads GGUF v2 and v3 "
            "only: download a newer GGUF build of the model or convert it again from the original weights.",
        )
    swapped = struct.unpack_from(">I", head, 4)[0]
    if swapped in (1, 2, 3):
        return FileFormat(
            "gguf",
            swapped,
            False,
            f"Big-endian GGUF v{swapped} file (made for IBM s390x and similar machines). This computer needs "
            "a little-endian file: convert it with gguf-convert-endian from the gguf Python package.",
        )
    if version > SUPPORTED_GGUF_VERSIONS[-1]:
        return FileFormat(
            "gguf",
            version,
            False,
            f"GGUF v{version} is newer than the versions this tool understands (v2, v3): "
            "update LlamaScope and llama.cpp, or use a GGUF v3 build of the model.",
        )
    return FileFormat("gguf", version, False, "GGUF file with an invalid version (0): the file is corrupt.")


def _legacy_format(kind: str, head: bytes) -> FileFormat:
    if kind == "ggml":
        # The original format had no version field.
        return FileFormat(
            "ggml",
            None,
            False,
            "Legacy GGML file (unversioned, early-2023 llama.cpp format). " + _CONVERT_LEGACY,
        )
    version = _U32.unpack_from(head, 4)[0] if len(head) >= 8 else None
    label = f"{kind.upper()} v{version}" if version is not None else kind.upper()
    return FileFormat(
        kind, version, False, f"Legacy {label} file (pre-August-2023 llama.cpp format). " + _CONVERT_LEGACY
    )


def _zip_format(f: BinaryIO) -> FileFormat:
    names: list[str] = []
    try:
        # zipfile reads only the central directory at the end of the file, not the members.
        with zipfile.ZipFile(f) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):
        pass
    if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        return FileFormat(
            "pytorch-zip",
            None,
            False,
            "PyTorch checkpoint (zip archive, e.g. a .bin/.pt/.pth file). " + _needs_hf(),
        )
    ggufs = [n for n in names if n.lower().endswith(".gguf")]
    if ggufs:
        return FileFormat(
            "pytorch-zip",
            None,
            False,
            f"ZIP archive containing {ggufs[0]}: extract it and open the .gguf file.",
        )
    return FileFormat(
        "pytorch-zip",
        None,
        False,
        "ZIP archive, possibly a PyTorch checkpoint. llama.cpp reads GGUF only: if it holds a .gguf file, "
        "extract it; if it is a PyTorch checkpoint, " + _CONVERT_HF,
    )


# --- GGUF header parsing ----------------------------------------------------------------------------


class _HeaderReader:
    """Little-endian reads over a buffered file that turn running out of bytes into ModelFileError."""

    def __init__(self, f: BinaryIO, file_size: int, path: str, keep_items: int) -> None:
        self._f = f
        self.pos = 0
        self.file_size = file_size
        self.path = path
        self.name = os.path.basename(path)
        self.keep_items = keep_items

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
        return int(_U32.unpack(self.read(4))[0])

    def u64(self) -> int:
        return int(_U64.unpack(self.read(8))[0])

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
        return ModelFileError(
            f"'{self.name}' is truncated: the header ends early (it needs at least {needed:,} bytes but "
            f"the file has {available:,}). It is probably an incomplete download or a partial copy: "
            "download or copy it again.",
            path=self.path,
        )

    def corrupt(self, what: str) -> ModelFileError:
        return ModelFileError(
            f"'{self.name}' is not a valid GGUF file: {what}. The file is corrupt or not really a GGUF "
            "model: download it again.",
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


def _ggml_type(r: _HeaderReader, tensor: str, raw: int) -> tuple[str, int, int]:
    try:
        qtype = gguf.GGMLQuantizationType(raw)
        block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    except (ValueError, KeyError):
        raise ModelFileError(
            f"'{r.name}': tensor '{tensor}' uses ggml type {raw}, which this version does not know. It is "
            "either a type removed from llama.cpp (re-download or re-quantize the model) or one newer than "
            "this tool (update LlamaScope and the gguf package).",
            path=r.path,
        ) from None
    return qtype.name, block_size, type_size


def _read_header(path: str, *, with_tensors: bool, keep_items: int) -> _Header:
    fmt = detect_format(path)
    if not fmt.loadable:
        raise ModelFileError(_format_error(path, fmt), path=path)
    try:
        file_size = os.stat(path).st_size
        with _open_binary(path, _BUFFER_SIZE) as f:
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

    kvs: dict[str, object] = {}
    for _ in range(kv_count):
        key = r.string()
        value = _read_value(r, r.u32(), 0)
        if key in kvs:
            raise r.corrupt(f"the metadata key '{key}' appears twice")
        kvs[key] = value
    if not with_tensors:
        return _Header(version, r.file_size, kvs, ())

    tensors: list[_TensorInfo] = []
    seen: set[str] = set()
    for _ in range(tensor_count):
        name = r.string()
        n_dims = r.u32()
        if n_dims > _MAX_DIMS:
            raise r.corrupt(f"tensor '{name}' declares {n_dims} dimensions (the limit is {_MAX_DIMS})")
        dims = struct.unpack(f"<{n_dims}Q", r.read(8 * n_dims))
        type_name, block_size, type_size = _ggml_type(r, name, r.u32())
        offset = r.u64()
        if name in seen:
            raise r.corrupt(f"the tensor name '{name}' appears twice")
        seen.add(name)
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
        tensors.append(_TensorInfo(name, tuple(dims), type_name, n_elements, n_bytes, offset))

    raw_alignment = kvs.get("general.alignment", DEFAULT_ALIGNMENT)
    alignment = raw_alignment if type(raw_alignment) is int else 0  # bools and arrays are invalid too
    if alignment <= 0 or alignment & (alignment - 1):
        raise r.corrupt(f"general.alignment is {raw_alignment!r}, not a power of two")
    data_start = -(-r.pos // alignment) * alignment
    data_end = 0
    for t in tensors:
        if t.offset % alignment:
            raise r.corrupt(f"tensor '{t.name}' starts at offset {t.offset}, not a multiple of {alignment}")
        data_end = max(data_end, t.offset + t.n_bytes)
    expected = data_start + data_end if tensors else r.pos
    if expected > r.file_size:
        share = r.file_size / expected * 100
        raise ModelFileError(
            f"'{r.name}' is truncated: its header describes {_human_bytes(data_end)} of tensor data, so the "
            f"file should be at least {expected:,} bytes, but it is only {r.file_size:,} bytes "
            f"({share:.0f}% present). This is usually an incomplete download: download it again.",
            path=r.path,
        )
    return _Header(version, r.file_size, kvs, tuple(tensors))


# --- public API -------------------------------------------------------------------------------------


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
