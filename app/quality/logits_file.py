"""Base-logits files: llama.cpp's format for KL divergence, with LlamaScope's checks appended.

The format is llama-perplexity's (--kl-divergence-base writes it, --kl-divergence reads it), so
files are interchangeable: "_logits_", n_ctx, n_vocab and n_chunk, the tokens (int32), then for
each chunk's scored positions a row of two float32 and n_vocab uint16 values (see
app.quality.metrics.quantize_log_probs). LlamaScope appends a trailer that llama.cpp never reads:
JSON with the base model's name and fingerprint, a hash of its vocabulary, a hash of the tokens
and a CRC per chunk, then its length and "LSTRAIL1". A file from another vocabulary, another text
or a damaged disk is refused instead of producing numbers; a llama.cpp file (no trailer) is
accepted with the checks its content allows.

The trailer's model fingerprint is app.model.fingerprint's, stored with its scheme. Files written
before scheme 2 carry a value computed otherwise (a full SHA-256 of the size, first and last MiB)
that no current fingerprint can equal: they read as "fingerprint unknown" (None), like a
llama.cpp file, and are otherwise as usable as before.

A file is written under a temporary name and renamed into place when complete, so a cancelled or
failed evaluation leaves no half-written file behind.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import shutil
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.common.formatting import format_bytes
from app.model.fingerprint import FINGERPRINT_SCHEME, model_fingerprint
from app.quality.eval_types import EvalError, LogitsFileError
from app.quality.metrics import log_prob_row_width

LOGITS_MAGIC = b"_logits_"
TRAILER_MAGIC = b"LSTRAIL1"
TRAILER_FORMAT = "llamascope-logits-trailer"


def tokens_sha256(tokens: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(tokens, dtype="<i4").tobytes()).hexdigest()


def expected_logits_file_bytes(n_vocab: int, n_ctx: int, n_chunks: int) -> int:
    """Size of a llama.cpp-format base-logits file (the LlamaScope trailer adds a few KiB)."""
    first = n_ctx // 2
    per_chunk = (n_ctx - 1 - first) * log_prob_row_width(n_vocab) * 2
    return 8 + 4 + 4 + 4 + 4 * n_ctx * n_chunks + n_chunks * per_chunk


@dataclass(frozen=True)
class LogitsFileInfo:
    """A base-logits file's header, checked against its size (and its trailer, when present)."""

    path: str
    n_ctx: int
    n_vocab: int
    n_chunks: int
    file_bytes: int
    has_trailer: bool  # written by LlamaScope (else: llama-perplexity --kl-divergence-base)
    base_model: str | None
    # app.model.fingerprint of the base model; None for a llama.cpp file and for one written before
    # fingerprint scheme 2, whose value was computed otherwise and could never match a current one.
    model_fingerprint: str | None
    vocab_sha256: str | None
    tokens_sha256: str | None
    text_name: str | None
    text_sha256: str | None
    chunk_crc32: tuple[int, ...]


def _data_offset(n_ctx: int, n_chunks: int) -> int:
    return 20 + 4 * n_ctx * n_chunks


def read_logits_info(path: str) -> LogitsFileInfo:
    """Read and check a logits file's header and trailer; raises LogitsFileError."""
    name = os.path.basename(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(20)
            if len(head) < 20 or head[:8] != LOGITS_MAGIC:
                raise LogitsFileError(f"{name} is not a logits file (it does not start with '_logits_').")
            n_ctx, n_vocab, n_chunks = struct.unpack("<Iii", head[8:20])
            if not (8 <= n_ctx <= 1 << 22) or not (1 <= n_vocab <= 1 << 24) or not (1 <= n_chunks <= 1 << 24):
                raise LogitsFileError(
                    f"{name} is corrupt: implausible header "
                    f"(n_ctx {n_ctx}, n_vocab {n_vocab}, chunks {n_chunks})."
                )
            core = expected_logits_file_bytes(n_vocab, n_ctx, n_chunks)
            trailer: dict[str, Any] = {}
            if size < core:
                raise LogitsFileError(
                    f"{name} is truncated: {format_bytes(size)} of the {format_bytes(core)} its header "
                    "announces. "
                    "It was probably not written to the end; compute it again."
                )
            if size > core:
                if size < core + 16:
                    raise LogitsFileError(f"{name} is corrupt: unexpected bytes after the data.")
                f.seek(size - 16)
                length_raw, magic = f.read(8), f.read(8)
                (length,) = struct.unpack("<Q", length_raw)
                if magic != TRAILER_MAGIC or core + length + 16 != size:
                    raise LogitsFileError(f"{name} is corrupt: unexpected bytes after the data.")
                f.seek(core)
                try:
                    trailer = json.loads(f.read(length).decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError):
                    raise LogitsFileError(
                        f"{name} is corrupt: its LlamaScope trailer is unreadable."
                    ) from None
                if trailer.get("format") != TRAILER_FORMAT or len(trailer.get("chunk_crc32", [])) != n_chunks:
                    raise LogitsFileError(
                        f"{name} is corrupt: its LlamaScope trailer does not match the data."
                    )
    except OSError as exc:
        raise LogitsFileError(f"Cannot read {path}: {exc.strerror or exc}.") from None
    return LogitsFileInfo(
        path=os.path.abspath(path),
        n_ctx=n_ctx,
        n_vocab=n_vocab,
        n_chunks=n_chunks,
        file_bytes=size,
        has_trailer=bool(trailer),
        base_model=trailer.get("model_name") or trailer.get("model_path"),
        model_fingerprint=(
            trailer.get("model_fingerprint")
            if trailer.get("model_fingerprint_scheme") == FINGERPRINT_SCHEME
            else None
        ),
        vocab_sha256=trailer.get("vocab_sha256"),
        tokens_sha256=trailer.get("tokens_sha256"),
        text_name=trailer.get("text_name"),
        text_sha256=trailer.get("text_sha256"),
        chunk_crc32=tuple(int(c) for c in trailer.get("chunk_crc32", ())),
    )


class LogitsReader:
    def __init__(self, info: LogitsFileInfo) -> None:
        self.info = info
        self._f = open(info.path, "rb")
        self._row = log_prob_row_width(info.n_vocab)
        self._per_chunk = info.n_ctx - 1 - info.n_ctx // 2

    def tokens(self) -> np.ndarray:
        count = self.info.n_ctx * self.info.n_chunks
        self._f.seek(20)
        raw = self._f.read(4 * count)
        tokens = np.frombuffer(raw, dtype="<i4").astype(np.int32)
        if self.info.tokens_sha256 and tokens_sha256(tokens) != self.info.tokens_sha256:
            raise LogitsFileError(
                f"{os.path.basename(self.info.path)} is corrupt: its tokens do not match their hash."
            )
        if tokens.min() < 0 or tokens.max() >= self.info.n_vocab:
            raise LogitsFileError(
                f"{os.path.basename(self.info.path)} is corrupt: it holds token ids outside its vocabulary."
            )
        return tokens

    def chunk(self, index: int) -> np.ndarray:
        nbytes = self._per_chunk * self._row * 2
        self._f.seek(_data_offset(self.info.n_ctx, self.info.n_chunks) + index * nbytes)
        raw = self._f.read(nbytes)
        name = os.path.basename(self.info.path)
        if len(raw) != nbytes:
            raise LogitsFileError(f"{name} is truncated at chunk {index + 1}.")
        if self.info.chunk_crc32 and zlib.crc32(raw) != self.info.chunk_crc32[index]:
            raise LogitsFileError(f"{name} is corrupt: chunk {index + 1} fails its checksum.")
        data = np.frombuffer(raw, dtype="<u2").reshape(self._per_chunk, self._row)
        header = np.ascontiguousarray(data[:, :4]).view(np.float32)
        if not np.isfinite(header).all() or (header[:, 0] < 0).any() or (header[:, 1] > 1e-3).any():
            raise LogitsFileError(f"{name} is corrupt: chunk {index + 1} holds impossible values.")
        return data

    def close(self) -> None:
        self._f.close()


class LogitsWriter:
    """Writes a llama.cpp-format logits file to a temporary name; finish() renames it into place."""

    def __init__(self, path: str, n_ctx: int, n_vocab: int, n_chunks: int, tokens: np.ndarray) -> None:
        self.path = os.path.abspath(path)
        folder, name = os.path.split(self.path)
        self._temp = os.path.join(folder, f".{name}.{secrets.token_hex(4)}.partial")
        try:
            self._f = open(self._temp, "xb")
        except OSError as exc:
            raise EvalError(f"Cannot write the logits file in {folder}: {exc.strerror or exc}.") from None
        self._crcs: list[int] = []
        self._f.write(LOGITS_MAGIC + struct.pack("<Iii", n_ctx, n_vocab, n_chunks))
        self._f.write(np.ascontiguousarray(tokens[: n_ctx * n_chunks], dtype="<i4").tobytes())

    def add_chunk(self, rows: np.ndarray) -> None:
        raw = np.ascontiguousarray(rows, dtype="<u2").tobytes()
        self._crcs.append(zlib.crc32(raw))
        self._f.write(raw)

    def finish(self, model_path: str, meta: dict[str, Any]) -> None:
        """Append the trailer (`meta`, the base model's fingerprint, the chunks' CRCs) and rename."""
        trailer = json.dumps(
            {
                **meta,
                "model_path": model_path,
                "model_fingerprint": model_fingerprint(model_path),
                "model_fingerprint_scheme": FINGERPRINT_SCHEME,
                "format": TRAILER_FORMAT,
                "chunk_crc32": self._crcs,
            }
        ).encode("utf-8")
        self._f.write(trailer + struct.pack("<Q", len(trailer)) + TRAILER_MAGIC)
        self._f.close()
        os.replace(self._temp, self.path)

    def abort(self) -> None:
        self._f.close()
        try:
            os.remove(self._temp)
        except OSError:
            pass


def check_space_for_logits(
    path: str, n_bytes: int, *, free_bytes: Callable[[str], int] | None = None
) -> None:
    """Refuse a logits file that cannot be written where asked: a missing or read-only folder
    first (a read-only mount reports no free space, which is not the problem to name), then a disk
    without room for it."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise EvalError(f"The folder for the logits file, {folder}, does not exist.")
    problem = _write_problem(folder)
    if problem is not None:
        raise EvalError(f"Cannot write the logits file in {folder}: {problem} Choose another folder.")
    free = (free_bytes or (lambda p: shutil.disk_usage(p).free))(folder)
    if free < n_bytes + (16 << 20):
        raise EvalError(
            f"Not enough disk space for the logits file: it needs {format_bytes(n_bytes)} and "
            f"{format_bytes(free)} is free in {folder}."
        )


def _write_problem(folder: str) -> str | None:
    """Why no file can be created in `folder`, in words; None when one can.

    Creating one is the real test: os.access says yes to root on a folder without write
    permission, and /proc-like folders accept nothing whatever the permissions say.
    """
    probe = os.path.join(folder, f".llamascope-write-test.{secrets.token_hex(4)}")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        if exc.errno == errno.EROFS:
            return "the folder is on a read-only file system."
        if exc.errno in (errno.EACCES, errno.EPERM):
            return "the folder is read-only for you (permission denied)."
        if exc.errno == errno.ENOENT:  # the folder exists: it is one that takes no new files (/proc)
            return "no files can be created in this folder."
        return f"{exc.strerror or exc}."
    os.close(fd)
    try:
        os.remove(probe)
    except OSError:
        pass
    return None


__all__ = [
    "LOGITS_MAGIC",
    "LogitsFileInfo",
    "LogitsReader",
    "LogitsWriter",
    "check_space_for_logits",
    "expected_logits_file_bytes",
    "read_logits_info",
    "tokens_sha256",
]
