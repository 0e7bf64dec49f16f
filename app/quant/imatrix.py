"""Importance matrices: llama.cpp's two file formats, and what the quantizer takes from them.

An importance matrix holds, for each weight matrix the model multiplies by (blk.N.attn_q.weight,
...), the sum over calibration tokens of the squared input activation of each column (`in_sum2`)
and how many activation rows went into the sum (`counts`, one per expert: 1 for a dense tensor).
llama.cpp's quantizer weighs each column's rounding error by in_sum2 / count, so the columns the
model leans on most are kept most exactly.

Formats, as the vendored llama.cpp (0.3.36) writes and reads them:

- **GGUF** (tools/imatrix/imatrix.cpp, `save_imatrix`; read by common/imatrix-loader.cpp): KV
  pairs `general.type` = "imatrix", `imatrix.datasets` (array of strings: the calibration files),
  `imatrix.chunk_count` and `imatrix.chunk_size` (u32); for each matrix, in name order, two F32
  tensors `<name>.in_sum2` of shape [ne0, n_mat] (the raw sums) and `<name>.counts` of shape
  [1, n_mat]. A dimension of 1 at the end is not written (ggml_n_dims), so a dense tensor's sums
  are 1-D [ne0] and its counts [1].
- **legacy .dat** (`save_imatrix_legacy`, `common_imatrix_load_legacy`): int32 n_entries; per
  entry int32 name length, the name's bytes, int32 ncall, int32 nval, nval float32 values; then,
  optionally, int32 chunk count, int32 dataset-name length and the name. Each value is
  (sum / count) x ncall, where ncall = ceil(max count / chunk size): the number of chunks.

`quantizer_arrays` turns either into what `llama_model_quantize` takes, exactly as llama-quantize
does (tools/quantize/quantize.cpp, `load_imatrix`): GGUF sums divided by their row-block's count
(1.0 where the count is 0), legacy values divided by ncall (or as they are when ncall is 0).
"""

from __future__ import annotations

import os
import struct
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

GGUF_MAGIC = b"GGUF"
KEY_GENERAL_TYPE = "general.type"
KEY_DATASETS = "imatrix.datasets"
KEY_CHUNK_COUNT = "imatrix.chunk_count"
KEY_CHUNK_SIZE = "imatrix.chunk_size"
SUFFIX_SUMS = ".in_sum2"
SUFFIX_COUNTS = ".counts"

# What llama-quantize records in a quantized file about the matrix it used (quantize.cpp).
KEY_QUANTIZE_IMATRIX_FILE = "quantize.imatrix.file"
KEY_QUANTIZE_IMATRIX_DATASET = "quantize.imatrix.dataset"
KEY_QUANTIZE_IMATRIX_N_ENTRIES = "quantize.imatrix.entries_count"
KEY_QUANTIZE_IMATRIX_N_CHUNKS = "quantize.imatrix.chunks_count"

_GGUF_ALIGNMENT = 32  # GGUF_DEFAULT_ALIGNMENT: imatrix.cpp writes no general.alignment
_GGUF_UINT32 = 4
_GGUF_STRING = 8
_GGUF_ARRAY = 9
_GGML_F32 = 0


class ImatrixFileError(Exception):
    """A file that is not an importance matrix LlamaScope can read; the message says why."""


@dataclass(frozen=True)
class ImatrixEntry:
    """One weight matrix's statistics: `sums` is float32 [n_mat, ne0], `counts` int64 [n_mat].

    For a legacy .dat file, `sums` holds the stored (sum / count) x ncall values and `counts` is
    [ncall]: the format keeps no more than that.
    """

    sums: np.ndarray = field(repr=False)
    counts: np.ndarray = field(repr=False)

    @property
    def n_values(self) -> int:
        return int(self.sums.size)


@dataclass(frozen=True)
class ImatrixData:
    """A whole importance matrix, as read from a file or computed."""

    entries: Mapping[str, ImatrixEntry] = field(repr=False)
    datasets: tuple[str, ...] = ()
    chunk_count: int = 0
    chunk_size: int = 0  # tokens per chunk (the context size it was computed with); 0 for .dat
    is_legacy: bool = False
    has_metadata: bool = True  # a GGUF file with the datasets, chunk count and chunk size keys

    @property
    def n_entries(self) -> int:
        return len(self.entries)


# ---- reading ---------------------------------------------------------------------------------


def read_imatrix(path: str) -> ImatrixData:
    """Read a GGUF or legacy .dat importance matrix (decided by the file's first bytes, as
    llama.cpp does: whatever does not parse as GGUF is tried as .dat). Raises ImatrixFileError."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except FileNotFoundError:
        raise ImatrixFileError(f"The importance matrix {path} does not exist.") from None
    except IsADirectoryError:
        raise ImatrixFileError(f"{path} is a folder, not an importance matrix file.") from None
    except OSError as exc:
        raise ImatrixFileError(f"Cannot read the importance matrix {path}: {exc.strerror or exc}.") from None
    if magic == GGUF_MAGIC:
        return _read_gguf(path)
    return _read_legacy(path)


def _read_gguf(path: str) -> ImatrixData:
    import gguf

    try:
        reader = gguf.GGUFReader(path, "r")
    except Exception as exc:  # the gguf package raises ValueError, struct.error, IndexError, ...
        raise ImatrixFileError(f"{path} is a damaged GGUF file: {exc}") from None
    fields = reader.fields
    gtype = _field_str(fields.get(KEY_GENERAL_TYPE))
    if gtype is not None and gtype != "imatrix":
        raise ImatrixFileError(
            f"{path} is a GGUF file of type {gtype!r}, not an importance matrix (general.type 'imatrix'). "
            "Compute one with `llamascope imatrix MODEL --text FILE -o FILE.gguf`."
        )
    datasets_field = fields.get(KEY_DATASETS)
    datasets: tuple[str, ...] = ()
    if datasets_field is not None:
        try:
            datasets = tuple(
                bytes(datasets_field.parts[i]).decode("utf-8", errors="replace") for i in datasets_field.data
            )
        except (IndexError, TypeError):
            datasets = ()
    chunk_count = _field_int(fields.get(KEY_CHUNK_COUNT))
    chunk_size = _field_int(fields.get(KEY_CHUNK_SIZE))
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    for tensor in reader.tensors:
        name = tensor.name
        if tensor.tensor_type != gguf.GGMLQuantizationType.F32:
            if name.endswith((SUFFIX_SUMS, SUFFIX_COUNTS)):
                raise ImatrixFileError(f"{path}: {name} is not F32; sums and counts must be F32.")
            continue
        values = np.array(tensor.data, dtype=np.float32).reshape(-1)
        if name.endswith(SUFFIX_SUMS):
            sums[name[: -len(SUFFIX_SUMS)]] = values
        elif name.endswith(SUFFIX_COUNTS):
            counts[name[: -len(SUFFIX_COUNTS)]] = values
    if not sums and not counts:
        raise ImatrixFileError(f"{path} holds no importance matrix entries.")
    entries: dict[str, ImatrixEntry] = {}
    for name in sorted(set(sums) | set(counts)):
        if name not in sums or name not in counts:
            raise ImatrixFileError(f"{path}: mismatched sums and counts for {name}.")
        n_mat = counts[name].size
        if n_mat < 1 or sums[name].size % n_mat:
            raise ImatrixFileError(f"{path}: {name} has {sums[name].size} sums for {n_mat} counts.")
        entries[name] = ImatrixEntry(
            sums=sums[name].reshape(n_mat, -1),
            counts=np.rint(counts[name]).astype(np.int64),  # std::lround, as the loader does
        )
    return ImatrixData(
        entries=entries,
        datasets=datasets,
        chunk_count=chunk_count or 0,
        chunk_size=chunk_size or 0,
        is_legacy=False,
        has_metadata=datasets_field is not None and chunk_count is not None and chunk_size is not None,
    )


def _field_str(f: object) -> str | None:
    if f is None:
        return None
    try:
        return bytes(f.parts[f.data[0]]).decode("utf-8", errors="replace")  # type: ignore[attr-defined]
    except (IndexError, TypeError, AttributeError):
        return None


def _field_int(f: object) -> int | None:
    if f is None:
        return None
    try:
        return int(f.parts[f.data[0]][0])  # type: ignore[attr-defined]
    except (IndexError, TypeError, ValueError, AttributeError):
        return None


def _read_legacy(path: str) -> ImatrixData:
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError as exc:
        raise ImatrixFileError(f"Cannot read the importance matrix {path}: {exc.strerror or exc}.") from None
    not_one = (
        f"{path} is neither a GGUF importance matrix nor llama.cpp's legacy .dat format"
        " (compute one with `llamascope imatrix`)"
    )
    pos = 0

    def take(fmt: str) -> tuple[int, ...]:
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(blob):
            raise ImatrixFileError(f"{not_one}: it ends early.")
        values = struct.unpack_from(fmt, blob, pos)
        pos += size
        return values

    (n_entries,) = take("<i")
    if n_entries < 1:
        raise ImatrixFileError(f"{not_one}: it holds no entries.")
    if n_entries > len(blob) // 12:  # each entry takes at least 12 bytes: not a .dat at all
        raise ImatrixFileError(f"{not_one}.")
    entries: dict[str, ImatrixEntry] = {}
    for _ in range(n_entries):
        (length,) = take("<i")
        if length < 0 or pos + length > len(blob):
            raise ImatrixFileError(f"{not_one}: an entry's name is cut off.")
        name = blob[pos : pos + length].decode("utf-8", errors="replace")
        pos += length
        ncall, nval = take("<ii")
        if nval < 1 or pos + 4 * nval > len(blob):
            raise ImatrixFileError(f"{not_one}: the values of {name} are cut off.")
        values = np.frombuffer(blob, dtype="<f4", count=nval, offset=pos).astype(np.float32)
        pos += 4 * nval
        entries[name] = ImatrixEntry(sums=values.reshape(1, -1), counts=np.array([ncall], dtype=np.int64))
    chunk_count = 0
    datasets: tuple[str, ...] = ()
    if pos + 4 <= len(blob):  # optional trailer: chunk count, then the dataset's name
        (chunk_count,) = struct.unpack_from("<i", blob, pos)
        pos += 4
        if pos + 4 <= len(blob):
            (length,) = struct.unpack_from("<i", blob, pos)
            pos += 4
            if 0 < length <= len(blob) - pos:
                datasets = (blob[pos : pos + length].decode("utf-8", errors="replace"),)
    return ImatrixData(
        entries=entries,
        datasets=datasets,
        chunk_count=chunk_count,
        chunk_size=0,
        is_legacy=True,
        has_metadata=False,
    )


# ---- what the quantizer takes ----------------------------------------------------------------


def quantizer_arrays(data: ImatrixData) -> dict[str, np.ndarray]:
    """Per-tensor float32 arrays for llama_model_quantize, as llama-quantize's load_imatrix makes
    them: GGUF sums / count per row block (1.0 where a block's count is 0: an expert no token
    reached), legacy values / ncall."""
    out: dict[str, np.ndarray] = {}
    for name, entry in data.entries.items():
        sums = entry.sums.astype(np.float32)
        if data.is_legacy:
            ncall = int(entry.counts[0]) if entry.counts.size else 0
            values = sums / np.float32(ncall) if ncall > 0 else sums.copy()
        else:
            counts = entry.counts.astype(np.float32).reshape(-1, 1)
            with np.errstate(divide="ignore", invalid="ignore"):
                values = np.where(counts > 0, sums / np.where(counts > 0, counts, 1), np.float32(1.0))
        out[name] = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    return out


def check_for_quantizer(data: ImatrixData, path: str) -> None:
    """Refuse what llama-quantize refuses: a GGUF matrix without its metadata keys, non-finite values."""
    if not data.is_legacy and not data.has_metadata:
        raise ImatrixFileError(
            f"{path} lacks the importance matrix metadata (imatrix.datasets, imatrix.chunk_count, "
            "imatrix.chunk_size) that llama-quantize requires."
        )
    for name, values in quantizer_arrays(data).items():
        if not np.all(np.isfinite(values)):
            raise ImatrixFileError(f"{path}: the entry {name} holds a value that is not finite.")


# ---- writing ---------------------------------------------------------------------------------


def _gguf_string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def gguf_bytes(data: ImatrixData) -> bytes:
    """The GGUF file imatrix.cpp's save_imatrix writes for `data` (same keys, order and layout)."""
    kv = [
        _gguf_string(KEY_GENERAL_TYPE) + struct.pack("<I", _GGUF_STRING) + _gguf_string("imatrix"),
        _gguf_string(KEY_DATASETS)
        + struct.pack("<IIQ", _GGUF_ARRAY, _GGUF_STRING, len(data.datasets))
        + b"".join(_gguf_string(d) for d in data.datasets),
        _gguf_string(KEY_CHUNK_COUNT) + struct.pack("<II", _GGUF_UINT32, data.chunk_count),
        _gguf_string(KEY_CHUNK_SIZE) + struct.pack("<II", _GGUF_UINT32, data.chunk_size),
    ]
    infos: list[bytes] = []
    blobs: list[bytes] = []
    offset = 0
    for name in sorted(data.entries):
        entry = data.entries[name]
        n_mat = int(entry.counts.size)
        if entry.sums.size == 0 or n_mat == 0:
            continue
        ne0 = int(entry.sums.size) // n_mat
        for suffix, shape, values in (
            (SUFFIX_SUMS, (ne0, n_mat), entry.sums.astype("<f4").reshape(-1)),
            (SUFFIX_COUNTS, (1, n_mat), entry.counts.astype("<f4").reshape(-1)),
        ):
            dims = list(shape)
            while len(dims) > 1 and dims[-1] == 1:  # ggml_n_dims: trailing 1s are not written
                dims.pop()
            infos.append(
                _gguf_string(name + suffix)
                + struct.pack("<I", len(dims))
                + struct.pack(f"<{len(dims)}Q", *dims)
                + struct.pack("<IQ", _GGML_F32, offset)
            )
            raw = values.tobytes()
            padded = raw + b"\0" * (-len(raw) % _GGUF_ALIGNMENT)
            blobs.append(padded)
            offset += len(padded)
    header = GGUF_MAGIC + struct.pack("<IQQ", 3, len(infos), len(kv)) + b"".join(kv) + b"".join(infos)
    header += b"\0" * (-len(header) % _GGUF_ALIGNMENT)
    return header + b"".join(blobs)


def write_imatrix(data: ImatrixData, path: str) -> None:
    """Write `data` as llama.cpp's imatrix GGUF; a temporary file beside `path` is renamed into
    place when complete, so a failed or cancelled write leaves nothing. Raises OSError."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, temp = tempfile.mkstemp(prefix=".imatrix-", suffix=".partial", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(gguf_bytes(data))
        os.chmod(temp, 0o644)  # mkstemp makes it 0o600; a matrix is no secret
        os.replace(temp, path)
    except BaseException:
        try:
            os.remove(temp)
        except OSError:
            pass
        raise
