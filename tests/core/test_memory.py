"""Memory estimate: exact KV cache sizes, weight/KV placement with GPU layers, verdicts, formatting."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from app.model import memory as memory_module
from app.model.fields import CACHE_TYPES
from app.model.memory import (
    InsufficientMemoryError,
    MemoryEstimate,
    Verdict,
    available_ram_for,
    bytes_per_element,
    check_fits,
    check_memory,
    estimate_memory,
    forget_loaded_model,
    format_bytes,
    kv_cache_bytes,
    note_loaded_model,
    padded_n_ctx,
    verdict_for,
)
from app.model.model_info import ModelInfo, SizeClass
from app.model.settings import LoadSettings

GIB = 1024**3
MIB = 1024**2

# Chosen so the weight split is exact: the output matrix (vocab x n_embd at 8 bits per weight) is
# 49152 x 576 = 28,311,552 bytes, and the 30 layers hold 3,000,000 bytes each.
OUTPUT_BYTES = 49152 * 576
LAYER_BYTES = 3_000_000
SMOLLM2_KV_F16_4096 = 94_371_840  # llama.cpp logs "KV self size = 90.00 MiB" for this


def make_model(**overrides: Any) -> ModelInfo:
    """A SmolLM2-135M-shaped ModelInfo (30 layers, 3 KV heads of 64, vocab 49152)."""
    fields: dict[str, Any] = dict(
        path="/models/SmolLM2-135M-Instruct.gguf",
        file_size_bytes=OUTPUT_BYTES + 30 * LAYER_BYTES + 4_000_000,
        gguf_version=3,
        name="SmolLM2 135M Instruct",
        architecture="llama",
        n_params=134_515_008,
        size_label="135M",
        file_type="Q8_0",
        tensor_types=(),
        tensor_data_bytes=OUTPUT_BYTES + 30 * LAYER_BYTES,
        bits_per_weight=8.0,
        context_length=8192,
        n_layer=30,
        n_embd=576,
        n_head=9,
        n_head_kv=3,
        n_embd_head_k=64,
        n_embd_head_v=64,
        vocab_size=49152,
        chat_template=None,
    )
    fields.update(overrides)
    fields.setdefault("size_class", SizeClass.from_n_params(fields["n_params"]))
    return ModelInfo(**fields)


def settings(**changes: Any) -> LoadSettings:
    return LoadSettings(**{"n_threads": 4, "n_threads_batch": 4, **changes})


def estimate(model: ModelInfo | None = None, **changes: Any) -> MemoryEstimate:
    available_ram = changes.pop("available_ram_bytes", 64 * GIB)
    available_vram = changes.pop("available_vram_bytes", None)
    return estimate_memory(
        model or make_model(),
        settings(**changes),
        available_ram_bytes=available_ram,
        available_vram_bytes=available_vram,
    )


# ---------------------------------------------------------------- KV cache


def test_smollm2_kv_cache_matches_llama_cpp_exactly() -> None:
    model = make_model()
    assert model.n_embd_k_gqa == 192 and model.n_embd_v_gqa == 192
    assert kv_cache_bytes(model, settings(n_ctx=4096)) == 30 * 4096 * (192 + 192) * 2 == SMOLLM2_KV_F16_4096
    assert format_bytes(SMOLLM2_KV_F16_4096) == "90.0 MiB"
    est = estimate(n_ctx=4096)
    assert est.kv_cache_ram_bytes == SMOLLM2_KV_F16_4096
    assert est.kv_cache_vram_bytes == 0


def test_q8_0_cache_is_smaller_by_34_over_64() -> None:
    q8 = kv_cache_bytes(make_model(), settings(n_ctx=4096, type_k="q8_0", type_v="q8_0", flash_attn=True))
    assert q8 == SMOLLM2_KV_F16_4096 * 34 // 64 == 50_135_040


def test_mixed_cache_types() -> None:
    mixed = kv_cache_bytes(make_model(), settings(n_ctx=4096, type_k="q8_0"))
    # K at 34/32 bytes per element plus V at 2 bytes per element
    assert mixed == 30 * 4096 * 192 * (34 + 2 * 32) // 32 == 72_253_440


@pytest.mark.parametrize(
    ("cache_type", "expected"),
    [
        ("f32", 4.0),
        ("f16", 2.0),
        ("bf16", 2.0),
        ("q8_0", 34 / 32),
        ("q4_0", 18 / 32),
        ("q4_1", 20 / 32),
        ("q5_0", 22 / 32),
        ("q5_1", 24 / 32),
        ("iq4_nl", 18 / 32),
    ],
)
def test_bytes_per_element(cache_type: str, expected: float) -> None:
    assert bytes_per_element(cache_type) == expected


def test_every_cache_type_has_a_layout() -> None:
    for cache_type in CACHE_TYPES:
        assert bytes_per_element(cache_type) > 0


def test_kv_cache_scales_with_context_and_pads_like_llama_cpp() -> None:
    model = make_model()
    assert kv_cache_bytes(model, settings(n_ctx=8192)) == 2 * SMOLLM2_KV_F16_4096
    assert padded_n_ctx(4000) == 4096 and padded_n_ctx(4096) == 4096 and padded_n_ctx(1) == 256
    assert kv_cache_bytes(model, settings(n_ctx=4000)) == SMOLLM2_KV_F16_4096


def test_unknown_attention_shape_counts_no_kv_and_says_so() -> None:
    est = estimate(make_model(n_head_kv=None))
    assert est.kv_cache_ram_bytes == 0
    assert any("KV cache unknown" in note for note in est.notes)


# ---------------------------------------------------------------- CPU-only totals


def test_cpu_only_everything_in_ram() -> None:
    est = estimate(n_ctx=4096)
    assert est.weights_ram_bytes == make_model().tensor_data_bytes
    assert (est.weights_vram_bytes, est.kv_cache_vram_bytes, est.compute_vram_bytes) == (0, 0, 0)
    assert est.total_ram_bytes == est.weights_ram_bytes + est.kv_cache_ram_bytes + est.compute_ram_bytes
    assert est.total_vram_bytes == 0
    assert est.vram_verdict is None and not est.uses_vram
    assert est.verdict is Verdict.FITS


def test_compute_estimate_is_logits_or_attention_plus_activations() -> None:
    est = estimate(n_ctx=4096, n_batch=512, n_ubatch=512)
    logits = 512 * 49152 * 4
    attention = 512 * 4096 * 9 * 4
    activations = 512 * 576 * 8 * 4
    assert est.compute_ram_bytes == max(logits, attention) + activations
    # on the order of what llama.cpp logs for SmolLM2-135M at n_ctx 4096 (~100 MiB)
    assert 80 * MIB < est.compute_ram_bytes < 130 * MIB


def test_compute_grows_with_ubatch_and_shrinks_with_flash_attention() -> None:
    big_ctx = {"n_ctx": 32768}
    plain = estimate(**big_ctx).compute_ram_bytes
    assert estimate(**big_ctx, flash_attn=True).compute_ram_bytes < plain
    assert estimate(**big_ctx, n_batch=128, n_ubatch=128).compute_ram_bytes < plain


def test_default_available_ram_comes_from_psutil(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory_module, "_available_ram_bytes", lambda: 123 * GIB)
    est = estimate_memory(make_model(), settings())
    assert est.available_ram_bytes == 123 * GIB


def test_real_psutil_reading_is_positive() -> None:
    pytest.importorskip("psutil")
    assert estimate_memory(make_model(), settings()).available_ram_bytes > 0


# ---------------------------------------------------------------- verdicts


def test_verdict_thresholds() -> None:
    assert verdict_for(80, 100) is Verdict.FITS  # exactly 80% still fits
    assert verdict_for(81, 100) is Verdict.TIGHT
    assert verdict_for(100, 100) is Verdict.TIGHT  # exactly all of it is tight, not refused
    assert verdict_for(101, 100) is Verdict.WONT_FIT


def test_verdict_labels() -> None:
    assert [v.label for v in Verdict] == ["fits", "tight", "will not fit"]


def test_estimate_verdict_against_given_available_ram() -> None:
    total = estimate().total_ram_bytes
    assert estimate(available_ram_bytes=total * 2).verdict is Verdict.FITS
    assert estimate(available_ram_bytes=int(total / 0.8)).verdict is Verdict.FITS
    assert estimate(available_ram_bytes=total).verdict is Verdict.TIGHT
    assert estimate(available_ram_bytes=total - 1).verdict is Verdict.WONT_FIT


def test_check_fits_refuses_wont_fit_unless_overridden() -> None:
    est = estimate(available_ram_bytes=100 * MIB)
    assert est.verdict is Verdict.WONT_FIT
    with pytest.raises(InsufficientMemoryError) as info:
        check_fits(est, override=False)
    assert info.value.estimate is est
    message = str(info.value)
    assert "override to load anyway" in message
    assert format_bytes(est.total_ram_bytes) in message and "100 MiB available" in message
    check_fits(est, override=True)  # no exception


def test_check_fits_accepts_fits_and_tight() -> None:
    check_fits(estimate(), override=False)
    tight = estimate(available_ram_bytes=estimate().total_ram_bytes)
    assert tight.verdict is Verdict.TIGHT
    check_fits(tight, override=False)


# ---------------------------------------------------------------- GPU split


def test_partial_offload_splits_weights_and_kv_per_layer() -> None:
    est = estimate(n_gpu_layers=10, available_vram_bytes=8 * GIB)
    assert est.n_gpu_layers_effective == 10 and not est.output_on_gpu
    assert est.weights_vram_bytes == 10 * LAYER_BYTES
    assert est.weights_ram_bytes == 20 * LAYER_BYTES + OUTPUT_BYTES
    assert est.kv_cache_vram_bytes == SMOLLM2_KV_F16_4096 // 3
    assert est.kv_cache_ram_bytes == SMOLLM2_KV_F16_4096 * 2 // 3
    assert est.compute_vram_bytes > 0 and est.compute_ram_bytes > 0
    assert est.vram_verdict is Verdict.FITS


def test_all_repeating_layers_keep_the_output_layer_on_the_cpu() -> None:
    est = estimate(n_gpu_layers=30, available_vram_bytes=8 * GIB)
    assert est.weights_vram_bytes == 30 * LAYER_BYTES
    assert est.weights_ram_bytes == OUTPUT_BYTES
    assert est.kv_cache_ram_bytes == 0
    assert not est.output_on_gpu


@pytest.mark.parametrize("n_gpu_layers", [-1, 31, 99])
def test_full_offload_puts_the_output_layer_on_the_gpu(n_gpu_layers: int) -> None:
    est = estimate(n_gpu_layers=n_gpu_layers, available_vram_bytes=8 * GIB)
    assert est.output_on_gpu and est.n_gpu_layers_effective == 30
    assert est.weights_vram_bytes == make_model().tensor_data_bytes
    assert est.weights_ram_bytes == 0
    assert est.kv_cache_vram_bytes == SMOLLM2_KV_F16_4096
    assert est.compute_ram_bytes == 0


def test_offload_kqv_off_keeps_kv_in_ram() -> None:
    est = estimate(n_gpu_layers=-1, offload_kqv=False, available_vram_bytes=8 * GIB)
    assert est.kv_cache_vram_bytes == 0
    assert est.kv_cache_ram_bytes == SMOLLM2_KV_F16_4096


def test_unknown_vram_with_offload_is_tight_with_a_note() -> None:
    est = estimate(n_gpu_layers=-1, available_vram_bytes=None)
    assert est.vram_verdict is Verdict.TIGHT and est.verdict is Verdict.TIGHT
    assert any("VRAM unknown" in note for note in est.notes)
    assert "VRAM unknown" in est.summary()


def test_too_little_vram_wont_fit() -> None:
    est = estimate(n_gpu_layers=-1, available_vram_bytes=50 * MIB)
    assert est.ram_verdict is Verdict.FITS
    assert est.vram_verdict is Verdict.WONT_FIT and est.verdict is Verdict.WONT_FIT
    with pytest.raises(InsufficientMemoryError):
        check_fits(est, override=False)


def test_unknown_layer_count_keeps_weights_in_ram() -> None:
    est = estimate(make_model(n_layer=None), n_gpu_layers=-1)
    assert est.weights_vram_bytes == 0
    assert any("layer count unknown" in note for note in est.notes)


# ---------------------------------------------------------------- formatting


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (90 * MIB, "90.0 MiB"),
        (180 * MIB, "180 MiB"),
        (512 * MIB, "512 MiB"),
        (int(1.9 * GIB), "1.9 GiB"),
        (3 * 1024 * GIB, "3.0 TiB"),
        (-2 * MIB, "-2.0 MiB"),
    ],
)
def test_format_bytes(n: int, text: str) -> None:
    assert format_bytes(n) == text


def test_summary_names_every_part_and_the_verdict() -> None:
    est = dataclasses.replace(
        estimate(),
        weights_ram_bytes=int(1.2 * GIB),
        kv_cache_ram_bytes=512 * MIB,
        compute_ram_bytes=180 * MIB,
        total_ram_bytes=int(1.9 * GIB),
        available_ram_bytes=int(3.1 * GIB),
    )
    assert est.summary() == (
        "needs 1.9 GiB (weights 1.2 GiB + KV cache 512 MiB + compute 180 MiB) of 3.1 GiB available: fits"
    )


def test_summary_with_offload_reports_ram_and_vram() -> None:
    text = estimate(n_gpu_layers=10, available_vram_bytes=8 * GIB).summary()
    assert text.startswith("RAM needs ")
    assert "; VRAM needs " in text and "of 8.0 GiB available: fits" in text


# ---------------------------------------------------------------- the one check


@pytest.mark.parametrize(
    ("changes", "available_ram", "part"),
    [
        # a million cells of f16 KV cache: 21.5 GiB, above the compute buffer with flash attention
        ({"n_ctx": 1_048_576, "flash_attn": True}, 4 * GIB, "the KV cache is the largest part"),
        # without flash attention one layer's scores (n_ubatch x n_ctx x 9 heads f32: 36 GiB) dominate
        (
            {"n_ctx": 1_048_576, "n_batch": 1024, "n_ubatch": 1024},
            4 * GIB,
            "the compute buffer is the largest part",
        ),
        ({"n_ctx": 256}, 50 * MIB, "the weights are the largest part"),
    ],
)
def test_a_refusal_gives_the_numbers_and_names_the_largest_part(
    changes: dict[str, Any], available_ram: int, part: str
) -> None:
    est = estimate(available_ram_bytes=available_ram, **changes)
    with pytest.raises(InsufficientMemoryError) as info:
        check_fits(est, override=False, purpose="benchmark pp512")
    message = str(info.value)
    assert message.startswith("Not enough memory to benchmark pp512: needs ")
    assert f"needs {format_bytes(est.total_ram_bytes)} (weights " in message
    assert f"of {format_bytes(available_ram)} available: will not fit" in message
    assert part in message and message.endswith("override to load anyway")
    assert info.value.purpose == "benchmark pp512" and info.value.estimate is est


def test_a_vram_refusal_names_the_largest_part_in_vram() -> None:
    est = estimate(n_gpu_layers=-1, available_vram_bytes=50 * MIB)
    with pytest.raises(InsufficientMemoryError) as info:
        check_fits(est, override=False)
    assert "VRAM needs" in str(info.value)
    assert "the weights are the largest part" in str(info.value) and "fewer GPU layers" in str(info.value)


def test_check_memory_estimates_refuses_and_can_be_overridden() -> None:
    model = make_model()
    fits = check_memory(model, settings(n_ctx=512), available_ram_bytes=8 * GIB)
    assert fits.verdict is Verdict.FITS and fits.available_ram_bytes == 8 * GIB
    huge = settings(n_ctx=1_048_576)
    with pytest.raises(InsufficientMemoryError, match="Not enough memory to tune: needs"):
        check_memory(model, huge, purpose="tune", available_ram_bytes=8 * GIB)
    overridden = check_memory(model, huge, override=True, available_ram_bytes=8 * GIB)
    assert overridden.verdict is Verdict.WONT_FIT  # the estimate is still returned, with its verdict


def test_mapped_weights_of_a_loaded_model_are_taken_off_the_available_ram(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """psutil counts a mapped model's pages as available; the check must not (see app.model.memory)."""
    monkeypatch.setattr(memory_module, "_available_ram_bytes", lambda: 8 * GIB)
    loaded, other = str(tmp_path / "loaded.gguf"), str(tmp_path / "other.gguf")
    est = estimate()
    owner, replacing_owner = object(), object()
    assert available_ram_for(other) == 8 * GIB
    note_loaded_model(owner, loaded, settings(), est)
    try:
        assert available_ram_for(other) == 8 * GIB - est.weights_ram_bytes
        assert available_ram_for(loaded) == 8 * GIB  # the same file shares the mapped pages
        assert available_ram_for(other, replacing=owner) == 8 * GIB  # freed before the new load
        # Weights read without mmap, or locked, are ordinary allocations: already not available.
        note_loaded_model(replacing_owner, other, settings(use_mmap=False), est)
        note_loaded_model(owner, loaded, settings(use_mlock=True), est)
        assert available_ram_for(str(tmp_path / "third.gguf")) == 8 * GIB
        note_loaded_model(owner, loaded, settings(), est)
        small = dataclasses.replace(make_model(), path=other)
        refused = estimate(available_ram_bytes=8 * GIB - est.weights_ram_bytes)
        assert check_memory(small, settings()).available_ram_bytes == refused.available_ram_bytes
    finally:
        forget_loaded_model(owner)
        forget_loaded_model(replacing_owner)
    assert available_ram_for(other) == 8 * GIB
