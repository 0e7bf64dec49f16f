"""The memory-bandwidth measurement (a threaded STREAM triad) and the roofline's arithmetic, against
values computed by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hardware_fakes import build_x86_tree, write

from app.model.gguf_info import inspect_model
from app.model.model_info import ModelInfo, SizeClass
from app.telemetry import bandwidth as bw
from app.telemetry.bandwidth import (
    BLOCK_ELEMENTS,
    MIB,
    Bandwidth,
    BandwidthError,
    Roofline,
    array_bytes_for,
    bytes_per_second,
    bytes_per_token,
    cached_bandwidth,
    last_level_cache_bytes,
    measure_bandwidth,
    roofline,
    roofline_bound_tokens_per_s,
    triad_bytes,
)


def _model(**kw: object) -> ModelInfo:
    fields: dict[str, object] = dict(
        path="/models/m.gguf",
        file_size_bytes=100_000_000,
        gguf_version=3,
        name="M",
        architecture="llama",
        n_params=100_000_000,
        size_class=SizeClass.SMALL,
        size_label="100M",
        file_type="Q8_0",
        tensor_types=(),
        tensor_data_bytes=100_000_000,
        bits_per_weight=8.5,
        context_length=4096,
        n_layer=30,
        n_embd=576,
        n_head=9,
        n_head_kv=3,
        n_embd_head_k=64,
        n_embd_head_v=64,
        vocab_size=49152,
        chat_template=None,
    )
    fields.update(kw)
    return ModelInfo(**fields)  # type: ignore[arg-type]


def _bandwidth(bytes_per_s: float, llc: int | None = None) -> Bandwidth:
    return Bandwidth(
        bytes_per_s=bytes_per_s,
        single_thread_bytes_per_s=bytes_per_s / 2,
        threads=8,
        array_bytes=128 * MIB,
        repetitions=5,
        measured_at="2026-01-01T00:00:00Z",
        last_level_cache_bytes=llc,
    )


# ---- arithmetic, by hand -------------------------------------------------------------------------


def test_bytes_moved_per_triad_element_and_gb_per_s() -> None:
    # STREAM counts the triad a = b + s·c as two 8-byte reads and one 8-byte write: 24 bytes.
    assert triad_bytes(1) == 24
    assert triad_bytes(2**20) == 25_165_824  # 1 Mi elements: 3 arrays × 8 MiB
    assert triad_bytes(1000, item_bytes=4) == 12_000  # float32 would be 12 bytes an element
    # 25,165,824 bytes in 1/16 s: 402,653,184 bytes/s (binary fractions: exact in floating point).
    assert bytes_per_second(25_165_824, 0.0625) == 402_653_184.0
    assert bytes_per_second(24_000_000_000, 2.0) / 1e9 == 12.0
    with pytest.raises(ValueError):
        bytes_per_second(1, 0.0)


def test_bytes_read_per_token_are_the_weights_and_the_kv_of_the_context() -> None:
    model = _model()
    # K and V rows per layer per token: n_head_kv 3 × head 64 = 192 elements each.
    # f16: (192 × 2 + 192 × 2) = 768 bytes × 30 layers × 1000 tokens = 23,040,000 bytes.
    assert bytes_per_token(model, 1000) == 100_000_000 + 23_040_000
    # q8_0 K (34 bytes per 32 elements: 192 → 204 bytes) and f16 V (384): 588 × 30 × 1000.
    assert bytes_per_token(model, 1000, "q8_0", "f16") == 100_000_000 + 17_640_000
    assert bytes_per_token(model, 0) == 100_000_000  # an empty context reads the weights only
    assert bytes_per_token(_model(n_head_kv=None), 1000) == 100_000_000  # KV size unknown: weights


def test_the_bound_is_bandwidth_over_bytes_per_token() -> None:
    # 24.608 GB/s ÷ 123,040,000 bytes per token = 200 tokens/s.
    assert roofline_bound_tokens_per_s(123_040_000, 24_608_000_000.0) == 200.0
    with pytest.raises(ValueError):
        roofline_bound_tokens_per_s(0, 1e9)
    r = roofline(_model(), 150.0, _bandwidth(24_608_000_000.0), context_tokens=1000)
    assert (r.bytes_per_token, r.bound_tokens_per_s) == (123_040_000, 200.0)
    assert r.share == 0.75 and not r.exceeds
    assert r.text == "75 % of the bandwidth limit" and r.why == ""


def test_a_speed_over_the_bound_is_never_shown_above_100_percent_and_says_why() -> None:
    over = Roofline(tokens_per_s=250.0, bound_tokens_per_s=200.0, bytes_per_token=123_040_000)
    assert over.exceeds and over.share == 1.25
    assert over.text == "over the bound: 250.0 t/s > 200.0 t/s"
    assert "%" not in over.text
    assert "CPU caches" in over.why
    # 123,040,000 bytes (117 MiB) fit in 256 MiB of last-level cache: that is the reason given.
    cached = Roofline(250.0, 200.0, 123_040_000, last_level_cache_bytes=256 * MIB)
    assert cached.why.startswith("the 117 MiB read per token fit in the CPU's last-level caches (256 MiB)")
    at_bound = Roofline(200.0, 200.0, 123_040_000)
    assert not at_bound.exceeds and at_bound.text == "100 % of the bandwidth limit"


def test_array_size_follows_streams_rule() -> None:
    assert array_bytes_for(None) == 128 * MIB  # the floor
    assert array_bytes_for(64 * MIB) == 256 * MIB  # four times the last-level caches
    # 4 × (40 MiB + 1 byte) = 167,772,164 bytes, rounded up to whole 512 KiB blocks: 321 blocks.
    assert array_bytes_for(40 * MIB + 1) == 321 * 524_288 == 168_296_448


def test_last_level_cache_counts_every_instance(tmp_path: Path) -> None:
    build_x86_tree(tmp_path, cpus=8)  # L3 12 MiB shared by CPUs 0-7: one instance
    assert last_level_cache_bytes(str(tmp_path)) == 12 * MIB
    write(tmp_path, "/sys/devices/system/cpu/cpu0/cache/index3/shared_cpu_list", "0-3")
    assert last_level_cache_bytes(str(tmp_path)) == 24 * MIB  # two sockets (or CCXs) of 4 CPUs
    assert last_level_cache_bytes(str(tmp_path / "nothing")) is None


def test_slices_are_whole_blocks_and_cover_the_arrays() -> None:
    n = 3 * BLOCK_ELEMENTS + 5
    parts = bw._slices(n, 2)
    assert parts == [slice(0, 2 * BLOCK_ELEMENTS), slice(2 * BLOCK_ELEMENTS, n)]
    assert bw._slices(BLOCK_ELEMENTS, 4) == [slice(0, BLOCK_ELEMENTS)]  # never an empty slice


# ---- the real measurement ------------------------------------------------------------------------


def test_a_small_real_measurement_on_one_and_two_threads() -> None:
    found = measure_bandwidth(2, threads=2, array_bytes=16 * MIB, llc_bytes=0)
    assert found.threads == 2 and found.array_bytes == 16 * MIB and found.repetitions == 2
    for value in (found.bytes_per_s, found.single_thread_bytes_per_s):
        assert math.isfinite(value) and value > 0
    assert found.kernel == "triad"
    method = found.method
    for words in ("STREAM triad a = b + 3·c", "16 MiB each", "24 bytes counted per element", "best of 2"):
        assert words in method
    assert "on 2 threads" in method and "on 1 thread" in method


def test_a_wrong_result_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    def copy_instead(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> None:
        np.copyto(a, b)  # a = b: not the triad

    monkeypatch.setattr(bw, "_triad", copy_instead)
    with pytest.raises(BandwidthError, match="computed 1.0"):
        measure_bandwidth(1, threads=2, array_bytes=4 * MIB, llc_bytes=0)


def test_a_failing_thread_ends_the_measurement_with_its_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> None:
        raise MemoryError("no room")

    monkeypatch.setattr(bw, "_triad", fail)
    with pytest.raises(BandwidthError, match="no room"):
        measure_bandwidth(3, threads=2, array_bytes=4 * MIB, llc_bytes=0)


def test_the_cache_keeps_a_measurement_and_ignores_the_old_single_thread_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "bandwidth.json"
    monkeypatch.setattr(bw, "_cache_path", lambda: str(path))
    path.write_text(
        json.dumps({"bytes_per_s": 15.1e9, "measured_at": "x", "method": "numpy copy of 256 MiB"}),
        encoding="utf-8",
    )
    assert cached_bandwidth(measure_if_missing=False) is None  # not the figure this version shows
    kept = _bandwidth(30e9, 32 * MIB)
    path.write_text(json.dumps(kept.to_json()), encoding="utf-8")
    assert cached_bandwidth(measure_if_missing=False) == kept


def test_the_demo_models_bound_from_its_header(demo_model: str) -> None:
    info = inspect_model(demo_model)
    assert info.n_layer and info.n_embd_k_gqa and info.n_embd_v_gqa
    per_token = info.tensor_data_bytes + info.n_layer * 100 * (info.n_embd_k_gqa + info.n_embd_v_gqa) * 2
    r = roofline(info, 10.0, _bandwidth(20e9), context_tokens=100)
    assert r.bytes_per_token == per_token
    assert r.bound_tokens_per_s == 20e9 / per_token
