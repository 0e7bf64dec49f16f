"""What a model file is, judged from its first bytes: GGUF, a legacy GGML format, safetensors,
PyTorch, a folder, or nothing LlamaScope knows, with what to do about each.

It reads a few bytes and never loads weights, so it is safe on any file a user drops in.
"""

from __future__ import annotations

import os
import stat
import struct
import zipfile
from dataclasses import dataclass
from typing import BinaryIO

GGUF_MAGIC = b"GGUF"
SUPPORTED_GGUF_VERSIONS = (2, 3)
LE_U32 = struct.Struct("<I")
LE_U64 = struct.Struct("<Q")

# Legacy llama.cpp magics, stored as little-endian uint32 at offset 0.
_LEGACY_MAGICS: dict[int, str] = {0x67676D6C: "ggml", 0x67676D66: "ggmf", 0x67676A74: "ggjt"}
_MAX_SAFETENSORS_HEADER = 100_000_000
_HEAD_BYTES = 16  # enough for every magic number detect_format knows
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


def open_binary(path: str, buffering: int) -> BinaryIO:
    """Open a file for reading: the only place this module opens files (tests wrap it to count reads)."""
    return open(path, "rb", buffering=buffering)


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
        with open_binary(p, 0) as f:
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
        legacy = _LEGACY_MAGICS.get(LE_U32.unpack_from(head)[0])
        if legacy is not None:
            return _legacy_format(legacy, head)
    if len(head) >= 9:
        header_len = LE_U64.unpack_from(head)[0]
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
    version = LE_U32.unpack_from(head, 4)[0]
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
    version = LE_U32.unpack_from(head, 4)[0] if len(head) >= 8 else None
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
