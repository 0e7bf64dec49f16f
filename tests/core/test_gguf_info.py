"""Tests for app.model.gguf_info: format detection and GGUF header inspection (no Qt)."""

from __future__ import annotations

import io
import os
import pickle
import random
import shutil
import struct
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import pytest

from app.model import file_format, gguf_info
from app.model.file_format import SUPPORTED_FORMATS, FileFormat, ModelFileError, detect_format
from app.model.gguf_info import inspect_model, read_metadata
from app.model.model_info import SizeClass

GiB = 1024**3
MiB = 1024**2


# --- helpers --------------------------------------------------------------------------------------


@dataclass
class ReadCounter:
    """Bytes actually pulled from disk through gguf_info's file seam."""

    n_bytes: int = 0
    n_opens: int = 0


class _CountingFileIO(io.FileIO):
    def __init__(self, path: str, counter: ReadCounter) -> None:
        super().__init__(path, "rb")
        self._counter = counter

    def readinto(self, buffer: bytearray | memoryview) -> int | None:  # type: ignore[override]
        n = super().readinto(buffer)
        self._counter.n_bytes += n or 0
        return n

    def read(self, size: int | None = -1) -> bytes | None:  # type: ignore[override]
        data = super().read(size)
        self._counter.n_bytes += len(data or b"")
        return data

    def readall(self) -> bytes:
        data = super().readall()
        self._counter.n_bytes += len(data)
        return data


@pytest.fixture
def read_counter(monkeypatch: pytest.MonkeyPatch) -> ReadCounter:
    """Route every file gguf_info opens through a FileIO that counts the bytes it reads."""
    counter = ReadCounter()

    def counting_open(path: str, buffering: int) -> io.RawIOBase | io.BufferedReader:
        counter.n_opens += 1
        raw = _CountingFileIO(path, counter)
        return raw if buffering == 0 else io.BufferedReader(raw, buffer_size=buffering)

    # Both modules that open model files: format detection and header parsing.
    monkeypatch.setattr(file_format, "open_binary", counting_open)
    monkeypatch.setattr(gguf_info, "open_binary", counting_open)
    return counter


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: Sequence[int]  # numpy order (outermost first), as GGUFWriter takes it
    qtype: gguf.GGMLQuantizationType = gguf.GGMLQuantizationType.F32

    @property
    def n_bytes(self) -> int:
        block_size, type_size = gguf.GGML_QUANT_SIZES[self.qtype]
        return int(np.prod(self.shape)) // block_size * type_size


def write_gguf_header(
    path: Path,
    tensors: Sequence[TensorSpec] = (),
    add_kv: Callable[[gguf.GGUFWriter], None] | None = None,
    *,
    alignment: int | None = None,
    endianess: gguf.GGUFEndian = gguf.GGUFEndian.LITTLE,
) -> int:
    """Write a GGUF header (KVs and tensor infos, no tensor data) with gguf's own writer; returns its size."""
    writer = gguf.GGUFWriter(path, "llama", endianess=endianess)
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    if add_kv is not None:
        add_kv(writer)
    for t in tensors:
        writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.n_bytes, raw_dtype=t.qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    return path.stat().st_size


def pad(n: int, alignment: int) -> int:
    return -(-n // alignment) * alignment


def complete_size(header_size: int, tensors: Sequence[TensorSpec], alignment: int = 32) -> int:
    """Smallest file size holding every tensor, laid out the way GGUFWriter assigns offsets."""
    offset = 0
    end = 0
    for t in tensors:
        end = offset + t.n_bytes
        offset += pad(t.n_bytes, alignment)
    return pad(header_size, alignment) + end


def small_model_kvs(writer: gguf.GGUFWriter) -> None:
    writer.add_name("Tiny Test")
    writer.add_context_length(2048)
    writer.add_block_count(2)
    writer.add_embedding_length(64)
    writer.add_head_count(4)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)


SMALL_TENSORS = (
    TensorSpec("token_embd.weight", (100, 64), gguf.GGMLQuantizationType.Q8_0),
    TensorSpec("blk.0.attn_norm.weight", (64,)),
)


def make_model(
    path: Path,
    tensors: Sequence[TensorSpec] = SMALL_TENSORS,
    add_kv: Callable[[gguf.GGUFWriter], None] = small_model_kvs,
) -> Path:
    """A complete (sparse) GGUF: header written by GGUFWriter, data region left as a hole."""
    header = write_gguf_header(path, tensors, add_kv)
    os.truncate(path, complete_size(header, tensors))
    return path


def raw_gguf(
    *,
    version: int = 3,
    kvs: Sequence[tuple[str, int, bytes]] = (),
    tensors: Sequence[tuple[str, Sequence[int], int, int]] = (),
    n_tensors: int | None = None,
    n_kvs: int | None = None,
) -> bytes:
    """Hand-built GGUF bytes, for headers GGUFWriter refuses to write."""

    def s(text: str) -> bytes:
        data = text.encode()
        return struct.pack("<Q", len(data)) + data

    out = b"GGUF" + struct.pack("<IQQ", version, n_tensors or len(tensors), n_kvs or len(kvs))
    for key, vtype, payload in kvs:
        out += s(key) + struct.pack("<I", vtype) + payload
    for name, dims, ttype, offset in tensors:
        out += s(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, ttype, offset)
    return out


def expect_error(path: str | os.PathLike[str]) -> str:
    with pytest.raises(ModelFileError) as info:
        inspect_model(path)
    message = str(info.value)
    assert "Traceback" not in message
    assert message == info.value.message
    return message


# --- demo model ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(demo_model: str) -> Iterator[str]:
    yield demo_model  # fails, never skips, when the demo model is missing (tests/conftest.py)


def test_demo_model_path_points_at_the_gguf(demo: str) -> None:
    assert os.path.basename(demo) == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert os.path.isfile(demo)


def test_demo_model_header(demo: str) -> None:
    info = inspect_model(demo)
    assert info.path == demo
    assert info.file_size_bytes == os.path.getsize(demo)
    assert info.gguf_version == 3
    assert info.architecture == "llama"
    assert info.n_layer == 30
    assert info.context_length == 8192
    assert info.n_embd == 576
    assert (info.n_head, info.n_head_kv) == (9, 3)
    assert (info.n_embd_head_k, info.n_embd_head_v) == (64, 64)
    assert info.n_embd_k_gqa == 192
    assert info.vocab_size == 49152
    assert info.file_type == "Q4_1"
    assert info.size_label == "135M"
    assert info.has_chat_template and "<|im_start|>" in (info.chat_template or "")
    assert info.size_class is SizeClass.TINY
    assert 100e6 < info.n_params < 200e6
    assert 4 < info.bits_per_weight < 7
    counts = {s.type_name: s.n_tensors for s in info.tensor_types}
    assert counts == {"Q4_1": 210, "F32": 61, "Q8_0": 1}
    sizes = [s.n_bytes for s in info.tensor_types]
    assert sizes == sorted(sizes, reverse=True)
    assert sum(sizes) == info.tensor_data_bytes


def test_demo_model_agrees_with_gguf_reader(demo: str) -> None:
    # An independent parser (the gguf package's own, memory-mapped) must see the same tensors.
    reader = gguf.GGUFReader(demo)
    info = inspect_model(demo)
    assert info.n_params == sum(int(t.n_elements) for t in reader.tensors)
    assert info.tensor_data_bytes == sum(int(t.n_bytes) for t in reader.tensors)
    metadata = read_metadata(demo)
    assert list(metadata) == [f.name for f in reader.fields.values() if not f.name.startswith("GGUF.")]


def test_demo_model_is_fast_and_reads_only_the_header(demo: str, read_counter: ReadCounter) -> None:
    start = time.perf_counter()
    inspect_model(demo)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0
    # The header (tokenizer included) is under 2 MB of this 98 MB file.
    assert 1 * MiB < read_counter.n_bytes < 4 * MiB


def test_demo_metadata_view(demo: str) -> None:
    meta = read_metadata(demo)
    assert meta["general.architecture"] == "llama"
    assert meta["llama.block_count"] == 30
    assert meta["general.languages"] == ["en"]
    assert meta["tokenizer.ggml.tokens"] == "<array of 49152 str>"
    assert meta["tokenizer.ggml.token_type"] == "<array of 49152 int32>"
    assert meta["tokenizer.ggml.merges"] == "<array of 48900 str>"
    assert meta["llama.attention.layer_norm_rms_epsilon"] == 1e-05
    assert isinstance(meta["tokenizer.chat_template"], str)


# --- huge sparse file: header only ------------------------------------------------------------------


def test_10_gib_model_header_is_read_without_reading_tensors(
    tmp_path: Path, read_counter: ReadCounter
) -> None:
    big = TensorSpec("output.weight", (40960, 65536))  # 2.68e9 F32 = 10 GiB
    tensors = (big, TensorSpec("token_embd.weight", (1024, 4096), gguf.GGMLQuantizationType.Q4_0))
    path = tmp_path / "huge.gguf"
    header_size = write_gguf_header(path, tensors, small_model_kvs)
    os.truncate(path, complete_size(header_size, tensors))  # sparse: no data blocks are written
    assert path.stat().st_size > 10 * GiB

    info = inspect_model(path)

    assert info.n_params == 40960 * 65536 + 1024 * 4096
    assert info.tensor_data_bytes == 10 * GiB + 1024 * 4096 // 32 * 18
    assert info.size_class is SizeClass.SMALL  # 2.7B parameters stored as F32
    assert info.architecture == "llama"
    # The header must come through the counted seam; reading even a sliver of 10 GiB of tensor data
    # would blow far past the upper bound.
    assert header_size <= read_counter.n_bytes < 1 * MiB


def test_data_region_one_byte_short_is_truncated(tmp_path: Path) -> None:
    path = tmp_path / "short.gguf"
    header = write_gguf_header(path, SMALL_TENSORS, small_model_kvs)
    needed = complete_size(header, SMALL_TENSORS)
    os.truncate(path, needed)
    inspect_model(path)  # exactly complete is fine
    os.truncate(path, needed - 1)
    message = expect_error(path)
    assert "truncated" in message and "incomplete download" in message
    assert f"{needed:,}" in message and f"{needed - 1:,}" in message


# --- synthetic models: metadata and derived fields -----------------------------------------------------


def test_small_model_fields(tmp_path: Path) -> None:
    info = inspect_model(make_model(tmp_path / "tiny.gguf"))
    assert info.name == "Tiny Test"
    assert info.display_name == "Tiny Test"
    assert (info.context_length, info.n_layer, info.n_embd, info.n_head) == (2048, 2, 64, 4)
    assert info.n_head_kv == 4  # absent key defaults to head_count
    assert info.n_embd_head_k == info.n_embd_head_v == 16  # n_embd // n_head
    assert info.vocab_size is None and info.chat_template is None and info.size_label is None
    assert info.file_type == "Q8_0"
    assert [s.type_name for s in info.tensor_types] == ["Q8_0", "F32"]
    assert info.n_params == 100 * 64 + 64
    assert info.tensor_data_bytes == 100 * 64 // 32 * 34 + 64 * 4


def test_per_layer_head_count_kv_and_explicit_lengths(tmp_path: Path) -> None:
    def kvs(w: gguf.GGUFWriter) -> None:
        small_model_kvs(w)
        # Hybrid models store it per layer, 0 for non-attention layers; 80 layers is over the 64-item
        # cut-off of the metadata view but must still count here.
        w.add_head_count_kv([0, 2] * 39 + [8, 2])
        w.add_key_length(32)
        w.add_value_length(24)
        w.add_token_list([f"t{i}" for i in range(2000)])
        w.add_chat_template("{{ messages }}")

    info = inspect_model(make_model(tmp_path / "m.gguf", add_kv=kvs))
    assert info.n_head_kv == 8
    assert (info.n_embd_head_k, info.n_embd_head_v) == (32, 24)
    assert info.vocab_size == 2000  # from the token list when <arch>.vocab_size is absent
    assert info.chat_template == "{{ messages }}"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (gguf.LlamaFileType.MOSTLY_Q4_K_M, "Q4_K_M"),
        (gguf.LlamaFileType.ALL_F32, "F32"),
        (gguf.LlamaFileType.MOSTLY_F16, "F16"),
        (gguf.LlamaFileType.MOSTLY_Q4_K_M | gguf.LlamaFileType.GUESSED, "Q4_K_M (guessed)"),
        (999, "unknown (999)"),
    ],
)
def test_file_type_names(tmp_path: Path, value: int, expected: str) -> None:
    def kvs(w: gguf.GGUFWriter) -> None:
        w.add_uint32(gguf.Keys.General.FILE_TYPE, int(value))

    assert inspect_model(make_model(tmp_path / "ft.gguf", add_kv=kvs)).file_type == expected


def test_every_value_type_round_trips_through_read_metadata(tmp_path: Path) -> None:
    vt = gguf.GGUFValueType

    def kvs(w: gguf.GGUFWriter) -> None:
        w.add_uint8("t.u8", 250)
        w.add_int8("t.i8", -5)
        w.add_uint16("t.u16", 65000)
        w.add_int16("t.i16", -300)
        w.add_uint32("t.u32", 4_000_000_000)
        w.add_int32("t.i32", -7)
        w.add_float32("t.f32", 0.1)
        w.add_bool("t.bool", True)
        w.add_string("t.str", "héllo ✓")
        w.add_uint64("t.u64", 2**63 + 5)
        w.add_int64("t.i64", -(2**40))
        w.add_float64("t.f64", 2.5e-300)
        w.add_array("t.ints", [1, 2, 3])
        w.add_key_value("t.floats", [0.5, 1e-5], vt.ARRAY, sub_type=vt.FLOAT32)
        w.add_array("t.strs", ["a", "", "c"])
        w.add_array("t.nested", [[1, 2], [3]])
        w.add_array("t.bools", [True, False])
        w.add_array("t.long_strs", [str(i) for i in range(65)])
        w.add_key_value("t.long_i32", list(range(100)), vt.ARRAY, sub_type=vt.INT32)
        w.add_key_value("t.64_i32", list(range(64)), vt.ARRAY, sub_type=vt.INT32)
        w.add_key_value("t.long_u8", list(range(200)) * 10, vt.ARRAY, sub_type=vt.UINT8)
        w.add_array("t.after", ["still parsed"])

    meta = read_metadata(make_model(tmp_path / "kv.gguf", add_kv=kvs))
    assert meta["general.architecture"] == "llama"
    assert {k: v for k, v in meta.items() if k.startswith("t.")} == {
        "t.u8": 250,
        "t.i8": -5,
        "t.u16": 65000,
        "t.i16": -300,
        "t.u32": 4_000_000_000,
        "t.i32": -7,
        "t.f32": 0.1,
        "t.bool": True,
        "t.str": "héllo ✓",
        "t.u64": 2**63 + 5,
        "t.i64": -(2**40),
        "t.f64": 2.5e-300,
        "t.ints": [1, 2, 3],
        "t.floats": [0.5, 1e-05],
        "t.strs": ["a", "", "c"],
        "t.nested": [[1, 2], [3]],
        "t.bools": [True, False],
        "t.long_strs": "<array of 65 str>",
        "t.long_i32": "<array of 100 int32>",
        "t.64_i32": list(range(64)),
        "t.long_u8": "<array of 2000 uint8>",
        "t.after": ["still parsed"],
    }


def test_custom_alignment_is_honoured(tmp_path: Path) -> None:
    path = tmp_path / "aligned.gguf"
    header = write_gguf_header(path, SMALL_TENSORS, small_model_kvs, alignment=4096)
    needed = complete_size(header, SMALL_TENSORS, 4096)
    os.truncate(path, needed)
    assert inspect_model(path).n_params == 100 * 64 + 64
    os.truncate(path, needed - 1)
    assert "truncated" in expect_error(path)


def test_model_without_tensors(tmp_path: Path) -> None:
    # llama.cpp ships vocab-only GGUFs like this.
    path = tmp_path / "vocab.gguf"
    write_gguf_header(path, (), small_model_kvs)
    info = inspect_model(path)
    assert info.n_params == 0 and info.bits_per_weight == 0.0 and info.tensor_types == ()


# --- bad input ------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.gguf"
    message = expect_error(path)
    assert "not found" in message and str(path) in message
    assert detect_format(path) == FileFormat("missing", None, False, detect_format(path).message)


def test_directory(tmp_path: Path) -> None:
    assert "folder" in expect_error(tmp_path)
    (tmp_path / "inside.gguf").write_bytes(b"")
    fmt = detect_format(tmp_path)
    assert fmt.kind == "directory" and not fmt.loadable
    assert "inside.gguf" in fmt.message


def test_hugging_face_folder_gets_conversion_hint(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert "convert_hf_to_gguf.py" in detect_format(tmp_path).message


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.gguf"
    path.write_bytes(b"")
    message = expect_error(path)
    assert "empty" in message and "0 bytes" in message


def test_demo_cut_inside_header(demo: str, tmp_path: Path) -> None:
    path = tmp_path / "cut.gguf"
    with open(demo, "rb") as src:
        path.write_bytes(src.read(1 * MiB))  # the header is ~1.8 MB
    message = expect_error(path)
    assert "truncated" in message and "header ends early" in message
    assert f"{MiB:,}" in message


def test_demo_cut_inside_tensor_data(demo: str, tmp_path: Path) -> None:
    path = tmp_path / "partial.gguf"
    with open(demo, "rb") as src, open(path, "wb") as dst:
        shutil.copyfileobj(src, dst)
    os.truncate(path, 50 * MiB)
    message = expect_error(path)
    assert "truncated" in message and "incomplete download" in message
    assert f"{os.path.getsize(demo):,}" in message and f"{50 * MiB:,}" in message
    # The header is intact, so the metadata view still works on an incomplete download.
    assert read_metadata(path)["general.architecture"] == "llama"


def test_random_bytes_named_gguf(tmp_path: Path) -> None:
    path = tmp_path / "noise.gguf"
    path.write_bytes(b"\x13\x37" + random.Random(0).randbytes(4096))
    assert detect_format(path).kind == "unknown"
    assert "Not a recognised model file" in expect_error(path)


@pytest.mark.parametrize("seed", range(20))
def test_random_bytes_after_gguf_magic_fail_fast(tmp_path: Path, seed: int) -> None:
    path = tmp_path / "noise.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<I", 3) + random.Random(seed).randbytes(64 * 1024))
    start = time.perf_counter()
    message = expect_error(path)
    assert time.perf_counter() - start < 0.5
    assert "truncated" in message or "not a valid GGUF" in message


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        (raw_gguf(n_tensors=10**7), "10,000,000 tensors"),
        (raw_gguf(n_kvs=10**6), "1,000,000 metadata keys"),
        (raw_gguf(kvs=[("k", 8, struct.pack("<Q", 10**9))]), "1,000,000,000-byte string"),
        (raw_gguf(kvs=[("k", 42, b"")]), "unknown metadata value type 42"),
        (raw_gguf(kvs=[("k", 4, b"\0" * 4), ("k", 4, b"\0" * 4)]), "'k' appears twice"),
        (raw_gguf(tensors=[("t", [1] * 9, 0, 0)]), "9 dimensions"),
        (raw_gguf(tensors=[("t", [32], 0, 0), ("t", [32], 0, 128)]), "'t' appears twice"),
        (raw_gguf(tensors=[("t", [33], 2, 0)]), "not a multiple of the Q4_0 block"),
        (raw_gguf(tensors=[("t", [8], 0, 3)]), "not a multiple of 32"),
        (raw_gguf(kvs=[("general.alignment", 4, struct.pack("<I", 48))]), "not a power of two"),
    ],
)
def test_corrupt_gguf_headers(tmp_path: Path, header: bytes, fragment: str) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(header + b"\0" * 4096)
    message = expect_error(path)
    assert "not a valid GGUF file" in message and fragment in message


def test_unknown_tensor_type(tmp_path: Path) -> None:
    path = tmp_path / "newtype.gguf"
    path.write_bytes(raw_gguf(tensors=[("blk.0.w", [256], 4, 0)]) + b"\0" * 4096)  # 4 was Q4_2, removed
    message = expect_error(path)
    assert "blk.0.w" in message and "ggml type 4" in message


def test_tensor_type_no_ggml_has_is_a_corrupt_header(tmp_path: Path) -> None:
    path = tmp_path / "garbage-type.gguf"
    path.write_bytes(raw_gguf(tensors=[("blk.0.w", [256], 1_952_411_255, 0)]) + b"\0" * 4096)
    message = expect_error(path)
    assert "header is corrupt" in message and "1,952,411,255" in message and "tensor info 1 of 1" in message
    assert "update LlamaScope" not in message


@pytest.mark.parametrize("change", [-1, -5, -33, +1, +100])
def test_a_corrupt_key_count_is_named_not_blamed_on_a_ggml_type(
    demo: str, tmp_path: Path, change: int
) -> None:
    # Too few keys: the parser reads the last keys as tensor infos; too many: the first tensor infos
    # as keys. Either way the header is corrupt, and the message says where and which counts it read.
    path = tmp_path / "kv-count.gguf"
    shutil.copyfile(demo, path)
    with open(path, "r+b") as f:
        f.seek(16)
        n_kv = struct.unpack("<Q", f.read(8))[0]
        f.seek(16)
        f.write(struct.pack("<Q", n_kv + change))
    message = expect_error(path)
    assert "header is corrupt" in message, message
    assert f"declares {n_kv + change:,} metadata keys and 272 tensors" in message
    assert "(in tensor info " in message or "(in metadata key " in message
    assert "update LlamaScope" not in message and "does not know" not in message


def test_gguf_v1_is_too_old(tmp_path: Path) -> None:
    path = tmp_path / "old.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<III", 1, 0, 0))
    fmt = detect_format(path)
    assert (fmt.kind, fmt.version, fmt.loadable) == ("gguf", 1, False)
    assert "GGUF v1" in expect_error(path)


def test_gguf_from_the_future(tmp_path: Path) -> None:
    path = tmp_path / "new.gguf"
    path.write_bytes(raw_gguf(version=4))
    fmt = detect_format(path)
    assert (fmt.kind, fmt.version, fmt.loadable) == ("gguf", 4, False)
    assert "newer" in expect_error(path)


def test_big_endian_gguf(tmp_path: Path) -> None:
    path = tmp_path / "be.gguf"
    write_gguf_header(path, (), small_model_kvs, endianess=gguf.GGUFEndian.BIG)
    fmt = detect_format(path)
    assert (fmt.kind, fmt.version, fmt.loadable) == ("gguf", 3, False)
    assert "gguf-convert-endian" in expect_error(path)


def legacy(magic: int, version: int | None) -> bytes:
    version_field = struct.pack("<I", version) if version is not None else b""
    return struct.pack("<I", magic) + version_field + b"\0" * 64


def safetensors_bytes() -> bytes:
    return struct.pack("<Q", 7) + b'{"a":1}'


def pytorch_zip_bytes(member: str = "archive/data.pkl") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr(member, pickle.dumps({"weight": [1.0]}, protocol=2))
        zf.writestr("archive/data/0", b"\0" * 16)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("content", "kind", "version", "advice"),
    [
        (legacy(0x67676A74, 3), "ggjt", 3, "convert_llama_ggml_to_gguf.py"),
        (legacy(0x67676D66, 1), "ggmf", 1, "convert_llama_ggml_to_gguf.py"),
        (legacy(0x67676D6C, None), "ggml", None, "convert_llama_ggml_to_gguf.py"),
        (safetensors_bytes(), "safetensors", None, "convert_hf_to_gguf.py"),
        (pytorch_zip_bytes(), "pytorch-zip", None, "convert_hf_to_gguf.py"),
        (pickle.dumps({"weight": [1.0]}, protocol=2), "pytorch-pickle", None, "convert_hf_to_gguf.py"),
        (pickle.dumps({"weight": [1.0]}, protocol=4), "pytorch-pickle", None, "convert_hf_to_gguf.py"),
    ],
)
def test_other_formats_are_detected_and_rejected_with_advice(
    tmp_path: Path, content: bytes, kind: str, version: int | None, advice: str
) -> None:
    path = tmp_path / "model.gguf"  # the name must not matter
    path.write_bytes(content)
    fmt = detect_format(path)
    assert (fmt.kind, fmt.version, fmt.loadable) == (kind, version, False)
    assert advice in fmt.message
    message = expect_error(path)
    assert advice in message and "model.gguf" in message


def test_ggjt_message_names_the_legacy_format() -> None:
    fmt = file_format._classify(legacy(0x67676A74, 3)[:16], 72, io.BytesIO())
    assert fmt.message.startswith("Legacy GGJT v3 file (pre-August-2023 llama.cpp format).")


def test_zip_without_pickle_and_zip_with_gguf(tmp_path: Path) -> None:
    plain = tmp_path / "plain.zip"
    plain.write_bytes(pytorch_zip_bytes("notes/readme.txt"))
    assert detect_format(plain).kind == "pytorch-zip"
    assert "ZIP archive" in detect_format(plain).message
    packed = tmp_path / "packed.zip"
    packed.write_bytes(pytorch_zip_bytes("SmolLM2.gguf"))
    assert "extract" in detect_format(packed).message and "SmolLM2.gguf" in detect_format(packed).message


def test_damaged_zip_is_still_called_a_zip(tmp_path: Path) -> None:
    path = tmp_path / "broken.bin"
    path.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    assert detect_format(path).kind == "pytorch-zip"


def test_safetensors_needs_a_sane_header_length(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    assert detect_format(path).kind == "unknown"


def test_detect_format_gguf_versions(tmp_path: Path) -> None:
    for version in (2, 3):
        path = tmp_path / f"v{version}.gguf"
        path.write_bytes(raw_gguf(version=version))
        assert detect_format(path) == FileFormat("gguf", version, True, f"GGUF v{version} — supported")
    stub = tmp_path / "stub.gguf"
    stub.write_bytes(b"GGUF\x03")
    fmt = detect_format(stub)
    assert fmt.kind == "gguf" and not fmt.loadable and "truncated" in fmt.message


def test_detect_format_reads_only_the_first_bytes(tmp_path: Path, read_counter: ReadCounter) -> None:
    path = make_model(tmp_path / "m.gguf")
    assert detect_format(path).loadable
    assert 0 < read_counter.n_bytes <= 64


def test_detect_format_accepts_str_and_pathlike(tmp_path: Path) -> None:
    path = make_model(tmp_path / "m.gguf")
    assert detect_format(str(path)) == detect_format(path)
    assert inspect_model(str(path)).path == str(path)


def test_supported_formats_table() -> None:
    assert [supported for _, supported, _ in SUPPORTED_FORMATS] == [True, False, False, False]
    names = " ".join(name for name, _, _ in SUPPORTED_FORMATS)
    for word in ("GGUF", "GGML", "GGJT", "Safetensors", "PyTorch"):
        assert word in names
