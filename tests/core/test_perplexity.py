"""Perplexity and KL divergence: llama.cpp's formulas on known values, then the real demo model."""

from __future__ import annotations

import json
import math
import os
import pickle
import struct
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from test_quant_types import build_tiny_llama

from app.model.fingerprint import FINGERPRINT_SCHEME, model_fingerprint
from app.quality.eval_model import EvalModel
from app.quality.eval_text import EvalText, EvalTextError, default_text, load_text
from app.quality.eval_types import (
    ChunkProgress,
    EvalCancelled,
    EvalError,
    EvalSettings,
    IncompatibleBaseError,
    LogitsFileError,
    TextTooShortError,
)
from app.quality.kl_divergence import evaluate_against_base, evaluate_kl_divergence
from app.quality.logits_file import TRAILER_MAGIC, expected_logits_file_bytes, read_logits_info
from app.quality.metrics import (
    KldSums,
    dequantize_log_probs,
    kld_rows,
    log_prob_row_width,
    percentile,
    ppl_and_uncertainty,
    quantize_log_probs,
    token_nll,
)
from app.quality.perplexity import evaluate_perplexity, plan_perplexity
from app.quant.plan import QuantizeRequest
from app.quant.quantize import quantize

ROOT = Path(__file__).resolve().parents[2]
SMALL = EvalSettings(n_ctx=128, n_chunks=2, n_threads=2)


# ---- known values -------------------------------------------------------------------------------
def test_nll_and_ppl_on_hand_made_logits() -> None:
    # Row 0: uniform over 4 tokens -> p = 1/4. Row 1: logits ln(1), ln(3) -> p(token 1) = 3/4.
    logits = np.array([[0.0, 0.0, 0.0, 0.0], [0.0, math.log(3.0), -1e9, -1e9]], dtype=np.float32)
    nll = token_nll(logits, np.array([2, 1]))
    assert nll == pytest.approx([math.log(4.0), -math.log(0.75)], abs=1e-6)
    # llama-perplexity: PPL = exp(mean nll), uncertainty = PPL * sqrt((E[nll²] - E[nll]²) / (n - 1))
    values = [math.log(4.0), -math.log(0.75), 1.0, 2.0]
    ppl, unc = ppl_and_uncertainty(sum(values), sum(v * v for v in values), len(values))
    mean = sum(values) / 4
    var = sum(v * v for v in values) / 4 - mean**2
    assert ppl == pytest.approx(math.exp(mean))
    assert unc == pytest.approx(math.exp(mean) * math.sqrt(var / 3))


def test_nll_is_exact_for_large_vocabularies_and_logits() -> None:
    rng = np.random.default_rng(1)
    logits = (rng.standard_normal((40, 5000)) * 8 + 50).astype(np.float32)
    targets = rng.integers(0, 5000, 40)
    x = logits.astype(np.float64)
    reference = np.log(np.exp(x - x.max(1, keepdims=True)).sum(1)) + x.max(1) - x[np.arange(40), targets]
    assert token_nll(logits, targets) == pytest.approx(reference, rel=1e-6)


def test_kld_of_identical_distributions_is_zero() -> None:
    rng = np.random.default_rng(2)
    logits = (rng.standard_normal((20, 1000)) * 4).astype(np.float32)
    targets = rng.integers(0, 1000, 20)
    base = np.empty((20, log_prob_row_width(1000)), dtype=np.uint16)
    quantize_log_probs(logits, targets, base)
    sums = KldSums()
    kld, p_diff = kld_rows(logits, base, targets, sums)
    # Zero up to the format's resolution: the base's log-probabilities are stored in steps of at
    # most 16/65535 (llama.cpp's uint16 encoding), which leaves |KLD| around 1e-5.
    assert np.abs(kld).max() < 1e-4
    assert np.abs(p_diff).max() < 1e-3
    assert sums.n_same_top == 20 and sums.count == 20


def test_kld_of_known_distributions() -> None:
    base_p, model_p = np.array([0.5, 0.5]), np.array([0.9, 0.1])
    base_logits = np.log(base_p).astype(np.float32)[None, :]
    model_logits = np.log(model_p).astype(np.float32)[None, :]
    base = np.empty((1, log_prob_row_width(2)), dtype=np.uint16)
    quantize_log_probs(base_logits, np.array([1]), base)
    sums = KldSums()
    kld, p_diff = kld_rows(model_logits, base, np.array([1]), sums)
    expected = float((base_p * np.log(base_p / model_p)).sum())
    assert kld[0] == pytest.approx(expected, abs=1e-4)
    assert p_diff[0] == pytest.approx(0.1 - 0.5, abs=1e-4)  # p_model(target) - p_base(target)
    assert sums.n_same_top == 1  # both put (the first) maximum on token 0


def test_compressed_log_probs_follow_llama_cpp() -> None:
    logits = np.array([[10.0, 9.0, -30.0, 0.0]], dtype=np.float32)
    out = np.empty((1, log_prob_row_width(4)), dtype=np.uint16)
    nll = quantize_log_probs(logits, np.array([1]), out)
    scale, min_log_prob = np.ascontiguousarray(out[:, :4]).view(np.float32)[0]
    lse = math.log(sum(math.exp(v - 10.0) for v in logits[0]))
    assert scale == pytest.approx(16.0 / 65535)  # min logit clamped to max - 16
    assert min_log_prob == pytest.approx(-16.0 - lse, abs=1e-5)
    assert out[0, 4 + 2] == 0  # below the floor
    assert out[0, 4 + 0] == 65535
    restored = dequantize_log_probs(out, 4)[0]
    exact = logits[0] - 10.0 - lse
    assert restored[[0, 1, 3]] == pytest.approx(exact[[0, 1, 3]], abs=float(scale))
    assert nll[0] == pytest.approx(10.0 + lse - 9.0, abs=1e-5)


def test_percentiles_are_llama_cpp_s() -> None:
    values = np.array([0.0, 1.0, 2.0, 3.0, 10.0])
    assert percentile(values, 0.0) == 0.0 and percentile(values, 1.0) == 10.0
    assert percentile(values, 0.9) == pytest.approx(3.0 + 0.6 * 7.0)  # rank 3.6, interpolated
    assert percentile(values, 0.5) == 2.0


def test_logits_file_size_formula() -> None:
    # "_logits_", n_ctx, n_vocab, n_chunk, n_ctx*n_chunk tokens, then per chunk 63 rows of
    # 2 float32 (as 4 uint16) + n_vocab uint16, padded to an even count
    assert expected_logits_file_bytes(49152, 128, 2) == 20 + 4 * 256 + 2 * 63 * (49152 + 4) * 2
    assert log_prob_row_width(5) == 10


# ---- texts --------------------------------------------------------------------------------------
def test_default_text_needs_no_download() -> None:
    text = default_text()
    assert len(text.text) > 100_000 and "pydoc_data" in text.name
    assert load_text("default").sha256 == text.sha256


def test_empty_or_missing_text_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(EvalTextError, match="empty"):
        load_text(str(empty))
    with pytest.raises(EvalTextError, match="not found"):
        load_text(str(tmp_path / "missing.txt"))
    binary = tmp_path / "blob.txt"
    binary.write_bytes(b"\0\1\2" * 100)
    with pytest.raises(EvalTextError, match="not a text file"):
        load_text(str(binary))


def test_too_short_and_empty_texts_are_refused(demo_model: str) -> None:
    short = EvalText("short", "short", "The quick brown fox jumps over the lazy dog. " * 5)
    with pytest.raises(TextTooShortError, match="needs at least 256 tokens"):
        evaluate_perplexity(demo_model, short, SMALL)
    with pytest.raises(TextTooShortError, match="empty"):
        evaluate_perplexity(demo_model, EvalText("empty", "empty", ""), SMALL)
    with pytest.raises(TextTooShortError):
        plan_perplexity(demo_model, short, SMALL)


def test_bad_settings() -> None:
    with pytest.raises(EvalError, match="even number"):
        EvalSettings(n_ctx=127).validate()
    with pytest.raises(EvalError, match="chunk limit"):
        EvalSettings(n_chunks=0).validate()


# ---- the real model -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base_logits(tmp_path_factory: pytest.TempPathFactory, demo_model: str) -> tuple[str, object]:
    """The demo model's own log-probabilities on 2 chunks of 128 tokens, and its PPL result."""
    path = str(tmp_path_factory.mktemp("logits") / "demo.logits")
    result = evaluate_perplexity(demo_model, default_text(), SMALL, save_logits=path)
    return path, result


@pytest.fixture(scope="module")
def q8_model(tmp_path_factory: pytest.TempPathFactory, demo_model: str) -> str:
    """A second variant of the demo model (Q8_0, requantized from Q4_1): close, not identical."""
    out = tmp_path_factory.mktemp("q8") / "demo.Q8_0.gguf"
    return quantize(QuantizeRequest(demo_model, "Q8_0", str(out), allow_requantize=True)).output_path


# A fixed text shipped with the tests: the first 24,000 characters of Python 3.11.7's
# documentation topics (pydoc_data.topics in sorted key order, cut at a blank line), under the
# PSF licence beside it in resources/eval.
CROSS_CHECK_TEXT = Path(__file__).resolve().parents[2] / "resources" / "eval" / "python-docs-excerpt.txt"


def test_perplexity_matches_llama_perplexity(demo_model: str) -> None:
    """Reference: llama.cpp's own llama-perplexity, built by `make llama-tools` from the llama.cpp
    vendored in llama-cpp-python 0.3.36 (the library the tests run), on the demo model:
    `llama-perplexity -m SmolLM2-135M-Instruct.Q4_1.gguf -f resources/eval/python-docs-excerpt.txt
    -c 256 -b 256 --chunks 8 -t 2` printed
    [1]16.5946,[2]15.5657,[3]11.8729,[4]12.1033,[5]13.2941,[6]12.5400,[7]13.3076,[8]14.2053
    and "Final estimate: PPL = 14.2053 +/- 1.23314"."""
    text = load_text(str(CROSS_CHECK_TEXT))
    assert (
        text.sha256 == "b78f52341e0d4dcddb7e0c4599be2ba1d62e408ce6fd58d2086dff8d2347146d"
    )  # the text the reference was measured on
    seen: list[ChunkProgress] = []
    settings = EvalSettings(n_ctx=256, n_chunks=8, n_threads=2)
    r = evaluate_perplexity(demo_model, text, settings, on_progress=seen.append)
    reference = [16.5946, 15.5657, 11.8729, 12.1033, 13.2941, 12.5400, 13.3076, 14.2053]
    assert r.running_ppl == pytest.approx(reference, rel=2e-3)
    assert r.ppl == pytest.approx(14.2053, rel=2e-3)
    assert r.ppl_uncertainty == pytest.approx(1.23314, rel=5e-3)
    assert [p.chunk for p in seen] == list(range(1, 9)) and seen[-1].ppl == r.ppl
    assert r.n_scored == 8 * 127 and r.n_chunks == 8 and not r.add_bos


def test_only_the_second_half_of_each_chunk_is_scored(demo_model: str) -> None:
    """An independent computation: every logit of the chunk, float64 log-softmax, positions 64…126."""
    text = default_text()
    r = evaluate_perplexity(demo_model, text, SMALL)
    with EvalModel(demo_model, n_ctx=128, n_threads=2) as m:
        tokens = m.tokenize(text.text)
        nll = []
        for i in range(2):
            chunk = tokens[i * 128 : (i + 1) * 128]
            m.clear()
            logits = m.decode(chunk, 0, np.ones(128, dtype=np.int8)).astype(np.float64)
            lp = logits - logits.max(1, keepdims=True)
            lp -= np.log(np.exp(lp).sum(1, keepdims=True))
            nll += [-lp[k, chunk[k + 1]] for k in range(64, 127)]
    assert r.ppl == pytest.approx(math.exp(np.mean(nll)), rel=1e-4)
    assert r.chunk_ppl[0] == pytest.approx(math.exp(np.mean(nll[:63])), rel=1e-4)
    # equal tokens per chunk: the total is the geometric mean of the chunks
    assert r.ppl == pytest.approx(math.sqrt(r.chunk_ppl[0] * r.chunk_ppl[1]), rel=1e-9)


def test_bos_is_added_and_replaces_each_chunk_s_first_token(tmp_path: Path) -> None:
    """With a tokenizer that adds BOS, llama-perplexity tokenizes with BOS and evaluates every chunk
    with its first token replaced by BOS; the scored positions are unchanged."""
    model = build_tiny_llama(str(tmp_path), add_bos=True)
    text = default_text()
    r = evaluate_perplexity(model, text, SMALL)
    assert r.add_bos
    with EvalModel(model, n_ctx=128, n_threads=2) as m:
        tokens = m.tokenize(text.text)
        assert tokens[0] == m.bos_id and tokens[1] != m.bos_id
        nll = []
        for i in range(2):
            chunk = tokens[i * 128 : (i + 1) * 128].copy()
            chunk[0] = m.bos_id
            m.clear()
            logits = m.decode(chunk, 0, np.ones(128, dtype=np.int8)).astype(np.float64)
            lp = logits - logits.max(1, keepdims=True)
            lp -= np.log(np.exp(lp).sum(1, keepdims=True))
            nll += [-lp[k, chunk[k + 1]] for k in range(64, 127)]
    assert r.ppl == pytest.approx(math.exp(np.mean(nll)), rel=1e-4)


def test_plan_says_how_big_the_logits_file_is(demo_model: str) -> None:
    plan = plan_perplexity(demo_model, default_text(), SMALL)
    assert plan.n_chunks == 2 and plan.n_chunks_available > 800 and plan.n_vocab == 49152
    assert plan.logits_file_bytes == expected_logits_file_bytes(49152, 128, 2)


def test_saved_logits_are_llama_cpp_s_format(base_logits: tuple[str, object]) -> None:
    path, result = base_logits
    raw = Path(path).read_bytes()
    assert raw[:8] == b"_logits_"
    assert struct.unpack("<Iii", raw[8:20]) == (128, 49152, 2)
    core = expected_logits_file_bytes(49152, 128, 2)
    assert len(raw) > core  # plus LlamaScope's trailer, which llama.cpp never reads
    info = read_logits_info(path)
    assert info.has_trailer and info.n_chunks == 2 and info.vocab_sha256 and len(info.chunk_crc32) == 2
    assert result.logits_file == path  # type: ignore[attr-defined]
    assert not [p for p in os.listdir(os.path.dirname(path)) if p.endswith(".partial")]


def test_settings_progress_and_results_are_plain_data(base_logits: tuple[str, object]) -> None:
    """What goes in and comes out of an evaluation pickles, so it can run in a worker process."""
    _path, result = base_logits
    progress = ChunkProgress("perplexity", 1, 2, 9.5, 0.5, None, None, 1000.0, 0.1, "/m/model.gguf")
    for value in (SMALL, default_text(), progress, result):
        assert pickle.loads(pickle.dumps(value)) == value


def test_kld_against_its_own_logits_is_zero(demo_model: str, base_logits: tuple[str, object]) -> None:
    path, base = base_logits
    r = evaluate_kl_divergence(demo_model, path, SMALL)
    assert abs(r.kld_mean) < 1e-4 and r.kld_max < 1e-3  # zero up to the uint16 resolution
    assert r.same_top_p == 1.0
    assert r.ppl == pytest.approx(base.ppl, rel=1e-6)  # type: ignore[attr-defined]
    assert r.ppl_base == pytest.approx(base.ppl, rel=1e-3)  # type: ignore[attr-defined]
    assert abs(r.ln_ppl_ratio) < 1e-3


def test_kld_of_another_variant(q8_model: str, base_logits: tuple[str, object]) -> None:
    path, _base = base_logits
    seen: list[ChunkProgress] = []
    r = evaluate_kl_divergence(q8_model, path, SMALL, text=default_text(), on_progress=seen.append)
    assert 1e-4 < r.kld_mean < 0.1
    assert r.kld_uncertainty is not None and r.kld_uncertainty > 0
    ordered = [
        r.kld_min,
        r.kld_p0_1,
        r.kld_p1,
        r.kld_p5,
        r.kld_p10,
        r.kld_median,
        r.kld_p90,
        r.kld_p95,
        r.kld_p99,
        r.kld_p99_9,
        r.kld_max,
    ]
    assert ordered == sorted(ordered)
    assert 0.5 < r.same_top_p <= 1.0 and r.delta_p_rms > 0
    assert r.n_scored == 126 and len(r.running_kld) == 2
    assert r.delta_ppl_percent == pytest.approx(100 * (r.ppl / r.ppl_base - 1))
    assert [p.phase for p in seen] == ["kl divergence"] * 2 and seen[-1].mean_kld == pytest.approx(r.kld_mean)


def test_a_base_and_its_variants_in_one_job(
    demo_model: str, q8_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the base's temporary logits go
    phases: list[tuple[str, str]] = []
    both = evaluate_against_base(
        demo_model,
        [q8_model, demo_model],
        default_text(),
        SMALL,
        on_progress=lambda p: phases.append((p.phase, os.path.basename(p.model_path))),
    )
    assert both.base.n_chunks == 2 and len(both.variants) == 2
    assert both.variants[0].kld_mean > 1e-4 and abs(both.variants[1].kld_mean) < 1e-4
    assert both.variants[0].ppl_base == pytest.approx(both.variants[1].ppl_base)
    assert [p for p, _ in phases] == ["base logits"] * 2 + ["kl divergence"] * 4
    assert phases[2][1] == os.path.basename(q8_model)
    assert list(tmp_path.iterdir()) == []  # the temporary logits file is gone

    cancel = threading.Event()
    with pytest.raises(EvalCancelled):
        evaluate_against_base(
            demo_model, [q8_model], default_text(), SMALL, cancel=cancel, on_progress=lambda p: cancel.set()
        )
    assert list(tmp_path.iterdir()) == []


def test_kld_base_from_another_vocabulary_is_refused(
    tmp_path_factory: pytest.TempPathFactory, base_logits: tuple[str, object]
) -> None:
    path, _ = base_logits
    folder = str(tmp_path_factory.mktemp("tiny"))
    bigger = build_tiny_llama(folder, extra_tokens=8)
    with pytest.raises(IncompatibleBaseError, match="49152 tokens.*49160"):
        evaluate_kl_divergence(bigger, path, SMALL)
    shuffled = build_tiny_llama(folder, swap_tokens=True)
    with pytest.raises(IncompatibleBaseError, match="different vocabulary"):
        evaluate_kl_divergence(shuffled, path, SMALL)


def test_logits_from_another_text_are_refused(demo_model: str, base_logits: tuple[str, object]) -> None:
    path, _ = base_logits
    other = EvalText("other", "other", default_text().text[5000:])
    with pytest.raises(IncompatibleBaseError, match="other tokens"):
        evaluate_kl_divergence(demo_model, path, SMALL, text=other)


def test_corrupt_logits_files_are_refused(
    demo_model: str, base_logits: tuple[str, object], tmp_path: Path
) -> None:
    path, _ = base_logits
    raw = Path(path).read_bytes()
    core = expected_logits_file_bytes(49152, 128, 2)

    truncated = tmp_path / "truncated.logits"
    truncated.write_bytes(raw[: core - 1000])
    with pytest.raises(LogitsFileError, match="truncated"):
        evaluate_kl_divergence(demo_model, str(truncated), SMALL)

    flipped = bytearray(raw)
    flipped[core - 5000] ^= 0xFF  # inside chunk 2's log-probabilities
    damaged = tmp_path / "damaged.logits"
    damaged.write_bytes(bytes(flipped))
    with pytest.raises(LogitsFileError, match="chunk 2 fails its checksum"):
        evaluate_kl_divergence(demo_model, str(damaged), SMALL)

    garbage = tmp_path / "garbage.logits"
    garbage.write_bytes(os.urandom(5000))
    with pytest.raises(LogitsFileError, match="not a logits file"):
        evaluate_kl_divergence(demo_model, str(garbage), SMALL)

    # A llama.cpp-written file has no trailer (no checksums); impossible values are still caught.
    no_trailer = bytearray(raw[:core])
    first_row = 20 + 4 * 256
    no_trailer[first_row : first_row + 4] = struct.pack("<f", float("nan"))
    llama_cpp_style = tmp_path / "llama-cpp.logits"
    llama_cpp_style.write_bytes(bytes(no_trailer))
    assert not read_logits_info(str(llama_cpp_style)).has_trailer
    with pytest.raises(LogitsFileError, match="impossible values"):
        evaluate_kl_divergence(demo_model, str(llama_cpp_style), SMALL)

    bad_trailer = tmp_path / "bad-trailer.logits"
    bad_trailer.write_bytes(raw + b"junk")
    with pytest.raises(LogitsFileError, match="unexpected bytes"):
        read_logits_info(str(bad_trailer))


def test_a_llama_cpp_file_without_trailer_is_accepted(
    demo_model: str, base_logits: tuple[str, object], tmp_path: Path
) -> None:
    path, _ = base_logits
    core = expected_logits_file_bytes(49152, 128, 2)
    plain = tmp_path / "plain.logits"
    plain.write_bytes(Path(path).read_bytes()[:core])
    r = evaluate_kl_divergence(demo_model, str(plain), SMALL)
    assert abs(r.kld_mean) < 1e-4 and r.base_model.startswith("unknown")


def test_the_logits_file_names_its_base_by_the_current_fingerprint(
    demo_model: str, base_logits: tuple[str, object], tmp_path: Path
) -> None:
    """A file written before fingerprint scheme 2 carries a value computed otherwise under the same
    key: it reads as "unknown", not as a fingerprint that matches nothing, and works as before."""
    import hashlib

    path, _ = base_logits
    info = read_logits_info(path)
    assert info.model_fingerprint is not None and info.model_fingerprint == model_fingerprint(demo_model)

    raw = Path(path).read_bytes()
    core = expected_logits_file_bytes(49152, 128, 2)
    trailer = json.loads(raw[core:-16])
    assert trailer["model_fingerprint_scheme"] == FINGERPRINT_SCHEME
    old = {k: v for k, v in trailer.items() if k != "model_fingerprint_scheme"}
    size = os.path.getsize(demo_model)  # how earlier versions computed it: size, first and last MiB
    with open(demo_model, "rb") as f:
        head = f.read(1 << 20)
        f.seek(-(1 << 20), os.SEEK_END)
        tail = f.read(1 << 20)
    old["model_fingerprint"] = hashlib.sha256(str(size).encode() + head + tail).hexdigest()
    blob = json.dumps(old).encode()
    older = tmp_path / "older.logits"
    older.write_bytes(raw[:core] + blob + struct.pack("<Q", len(blob)) + TRAILER_MAGIC)
    old_info = read_logits_info(str(older))
    assert old_info.has_trailer and old_info.model_fingerprint is None
    assert old_info.vocab_sha256 == info.vocab_sha256 and old_info.chunk_crc32 == info.chunk_crc32
    assert abs(evaluate_kl_divergence(demo_model, str(older), SMALL).kld_mean) < 1e-4


def test_cancel_between_chunks_leaves_no_logits_file(demo_model: str, tmp_path: Path) -> None:
    import hashlib

    model_hash = hashlib.sha256(Path(demo_model).read_bytes()).hexdigest()
    out = tmp_path / "cancelled.logits"
    cancel = threading.Event()
    seen: list[int] = []

    def on_progress(p: ChunkProgress) -> None:
        seen.append(p.chunk)
        cancel.set()  # as Stop does, from another thread, after the first chunk

    with pytest.raises(EvalCancelled):
        evaluate_perplexity(
            demo_model,
            default_text(),
            EvalSettings(n_ctx=128, n_chunks=3, n_threads=2),
            save_logits=str(out),
            cancel=cancel,
            on_progress=on_progress,
        )
    assert seen == [1]
    assert list(tmp_path.iterdir()) == []
    assert hashlib.sha256(Path(demo_model).read_bytes()).hexdigest() == model_hash


def test_cancel_inside_a_decode_uses_the_abort_callback(demo_model: str) -> None:
    cancel = threading.Event()
    with EvalModel(demo_model, n_ctx=128, n_threads=2, cancel=cancel) as m:
        tokens = m.tokenize(default_text().text)[:128]
        m.decode(tokens, 0, None)  # works while not cancelled
        cancel.set()
        m.clear()
        with pytest.raises(EvalCancelled):
            m.decode(tokens, 0, None)


def test_cancel_while_loading(demo_model: str) -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(EvalCancelled):
        evaluate_perplexity(demo_model, default_text(), SMALL, cancel=cancel)


def test_no_space_for_the_logits_file(demo_model: str, tmp_path: Path) -> None:
    with pytest.raises(EvalError, match="Not enough disk space"):
        evaluate_perplexity(
            demo_model,
            default_text(),
            SMALL,
            save_logits=str(tmp_path / "x.logits"),
            free_bytes=lambda p: 1000,
        )
    assert list(tmp_path.iterdir()) == []


def test_model_file_errors(tmp_path: Path) -> None:
    with pytest.raises(EvalError, match="not found"):
        evaluate_perplexity(str(tmp_path / "missing.gguf"), default_text(), SMALL)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_cli_eval_json(demo_model: str, base_logits: tuple[str, object]) -> None:
    path, _ = base_logits
    result = _cli(
        "eval",
        demo_model,
        "--ppl",
        "default",
        "--ctx",
        "128",
        "--chunks",
        "2",
        "--threads",
        "2",
        "--json",
        "--mc",
        str(ROOT / "resources/eval/mmlu_sample.csv"),
        "--format",
        "mmlu",
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["perplexity"]["n_chunks"] == 2 and out["perplexity"]["ppl"] > 1
    assert out["multiple_choice"]["n_items"] == 5
    result = _cli("eval", demo_model, "--kld-logits", path, "--threads", "2")
    assert result.returncode == 0, result.stderr
    assert "Mean KLD" in result.stdout and "Same top p" in result.stdout and "100.000" in result.stdout


def test_cli_eval_refusals(demo_model: str, tmp_path: Path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("Too short to measure anything.")
    result = _cli("eval", demo_model, "--ppl", str(short))
    assert result.returncode == 1 and "needs at least 1024 tokens" in result.stderr
    assert "Traceback" not in result.stderr
    result = _cli("eval", demo_model)
    assert result.returncode == 2
    tiny = build_tiny_llama(str(tmp_path), extra_tokens=8)
    result = _cli("eval", demo_model, "--ppl", "default", "--ctx", "128", "--chunks", "1", "--kld-base", tiny)
    assert result.returncode == 1 and "do not share a vocabulary" in result.stderr
