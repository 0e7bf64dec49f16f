"""The identity of a model file by its content, cheap enough to compute for every file in a list.

`model_fingerprint` hashes the file's size, its first MiB (the GGUF header and metadata) and its
last MiB (tensor data). The tail is what tells apart two quantizations whose metadata and size
are the same but whose weights are not (a requantization with another imatrix, a repaired copy);
the whole file is not hashed because models are gigabytes. A renamed or copied file keeps its
fingerprint; a changed one gets a new one. 16 hex digits (64 bits) are ample against accidental
collisions among one user's files; nothing relies on it against a crafted collision.

The history database, the crash registry and the logits files keep fingerprints, and the tuner
names its studies by one. Values written by earlier versions were computed otherwise:
`fingerprint_v1` (size and first MiB, the scheme before this one) exists only so a store can
recognise its old values and convert them; nothing new is stored with it. `FINGERPRINT_SCHEME`
is stored beside a fingerprint kept in a file, so a reader can tell which scheme computed it.
"""

from __future__ import annotations

import hashlib
import os

FINGERPRINT_SCHEME = 2
_MIB = 1 << 20
_HEX_DIGITS = 16


def model_fingerprint(path: str | os.PathLike[str]) -> str | None:
    """SHA-256 of the size, the first MiB and the last MiB; None when the file cannot be read.

    A file of 2 MiB or less is hashed whole: the tail starts where the head ends.
    """
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            h.update(size.to_bytes(8, "little"))
            head = f.read(_MIB)
            h.update(head)
            if size > len(head):
                f.seek(max(len(head), size - _MIB))
                h.update(f.read(_MIB))
    except OSError:
        return None
    return h.hexdigest()[:_HEX_DIGITS]


def fingerprint_v1(path: str | os.PathLike[str]) -> str | None:
    """The scheme before FINGERPRINT_SCHEME 2 (size and first MiB), to recognise stored old values only."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(_MIB)
    except OSError:
        return None
    return hashlib.sha256(size.to_bytes(8, "little") + head).hexdigest()[:_HEX_DIGITS]


__all__ = ["FINGERPRINT_SCHEME", "fingerprint_v1", "model_fingerprint"]
