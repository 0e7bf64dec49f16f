"""Importance matrices: computed in the engine host and checked against llama.cpp's own llama-imatrix,
read in both of llama.cpp's formats, and handed to the quantizer.

The reference is llama-imatrix built by `make llama-tools` from the llama.cpp vendored in the installed
llama-cpp-python (`make test` builds it first; without it those tests skip and say how to build it),
run on the same F16 base (a dequantized copy of the demo model), the same text, chunks of 128 tokens
and `-b 128` (one chunk per decode, as LlamaScope decodes).

Tolerance: the counts must be equal, and each sum within a relative 1e-4 of llama-imatrix's.
llama-imatrix adds the squares one row at a time in float32; LlamaScope sums in float64 and stores
float32. A float32 running sum of n positive terms is off by at most about n x 2^-24 relative
(256 rows per matrix and chunk here: 1.5e-5 per chunk), so 1e-4 holds whatever the summation order
while catching any real difference (a row missed or counted twice is 1/256 = 4e-3 at least). The
largest difference measured was 1.3e-6.
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import gguf
import numpy as np
import pytest
from conftest import crafted_copy  # at collection, while `conftest` is still tests/conftest.py

from app.engine.client import Engine
from app.engine.imatrix_job import ImatrixJob, ImatrixRequest
from app.llama.tools import find_tool
from app.quality.eval_types import ChunkProgress, EvalCancelled, EvalError, TextTooShortError
from app.quant.imatrix import (
    KEY_QUANTIZE_IMATRIX_DATASET,
    KEY_QUANTIZE_IMATRIX_FILE,
    KEY_QUANTIZE_IMATRIX_N_CHUNKS,
    KEY_QUANTIZE_IMATRIX_N_ENTRIES,
    ImatrixFileError,
    gguf_bytes,
    quantizer_arrays,
    read_imatrix,
)
from app.quant.imatrix_compute import CALIBRATION_TEXT_NAME, calibration_text, compute_imatrix
from app.quant.plan import QuantizeError, QuantizeRequest, f16_base_request, plan_quantization
from app.quant.quantize import quantize

ROOT = Path(__file__).resolve().parents[2]
CALIBRATION = ROOT / "resources" / "calibration" / CALIBRATION_TEXT_NAME
N_CTX = 128
N_CHUNKS = 2
RTOL = 1e-4  # see the module docstring


def _partials(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".partial"))


@pytest.fixture(scope="module")
def f16_base(tmp_path_factory: pytest.TempPathFactory, demo_model: str) -> str:
    folder = tmp_path_factory.mktemp("imatrix-base")
    return quantize(f16_base_request(demo_model, str(folder / "SmolLM2-135M-Instruct.F16.gguf"))).output_path


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    eng = Engine()
    yield eng
    eng.shutdown()


@pytest.fixture(scope="module")
def ours(
    f16_base: str, engine: Engine, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, list[ChunkProgress]]:
    """LlamaScope's matrix, computed in the engine host as the GUI and the CLI compute it."""
    out = tmp_path_factory.mktemp("ours") / "ours.imatrix.gguf"
    seen: list[ChunkProgress] = []
    job = ImatrixJob(
        engine,
        ImatrixRequest(f16_base, str(CALIBRATION), str(out), n_ctx=N_CTX, n_chunks=N_CHUNKS, n_threads=2),
        on_progress=seen.append,
    )
    result = job.start().result()
    assert result.path == str(out) and out.exists()
    assert (result.n_ctx, result.n_chunks, result.text_name) == (N_CTX, N_CHUNKS, CALIBRATION_TEXT_NAME)
    return str(out), seen


@pytest.fixture(scope="module")
def reference(f16_base: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """llama-imatrix's own output on the same input, in GGUF and (converted by llama-imatrix
    itself, from that GGUF) in the legacy .dat format; and the perplexity it printed."""
    binary = find_tool("llama-imatrix")
    if binary is None:
        pytest.skip("llama-imatrix is not built: run `make llama-tools` (`make test` builds it first)")
    folder = tmp_path_factory.mktemp("reference")
    ref = folder / "ref.imatrix.gguf"
    run = subprocess.run(
        [str(binary), "-m", f16_base, "-f", str(CALIBRATION), "-c", str(N_CTX), "-b", str(N_CTX),
         "--chunks", str(N_CHUNKS), "-t", "2", "-o", str(ref)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    dat = folder / "ref.imatrix.dat"
    convert = subprocess.run(
        [str(binary), "-m", f16_base, "--in-file", str(ref), "-c", str(N_CTX), "-b", str(N_CTX),
         "--output-format", "dat", "-o", str(dat)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert convert.returncode == 0, convert.stderr[-3000:]
    ppl = re.search(r"Final estimate: PPL = ([\d.]+)", run.stdout + run.stderr)
    assert ppl is not None, run.stderr[-3000:]
    return {"gguf": str(ref), "dat": str(dat), "ppl": ppl.group(1)}


def test_the_matrix_matches_llama_imatrix(
    ours: tuple[str, list[ChunkProgress]], reference: dict[str, str]
) -> None:
    path, seen = ours
    mine, theirs = read_imatrix(path), read_imatrix(reference["gguf"])
    assert set(mine.entries) == set(theirs.entries)
    assert len(mine.entries) == 30 * 7  # q, k, v, o, gate, up, down in each of SmolLM2's 30 blocks
    assert (mine.chunk_count, mine.chunk_size) == (theirs.chunk_count, theirs.chunk_size) == (N_CHUNKS, N_CTX)
    assert mine.datasets == (CALIBRATION_TEXT_NAME,)
    assert theirs.datasets[0].endswith(CALIBRATION_TEXT_NAME)
    for name, entry in mine.entries.items():
        ref = theirs.entries[name]
        # Every token of every chunk counts, not only the second half the perplexity scores.
        assert entry.counts.tolist() == ref.counts.tolist() == [N_CHUNKS * N_CTX], name
        assert entry.sums.shape == ref.sums.shape, name
        np.testing.assert_allclose(entry.sums, ref.sums, rtol=RTOL, atol=0, err_msg=name)
    # Progress: chunk i of n, as it went; the perplexity llama-imatrix printed on the way.
    assert [(p.phase, p.chunk, p.n_chunks) for p in seen] == [
        ("importance matrix", i, N_CHUNKS) for i in range(1, N_CHUNKS + 1)
    ]
    assert seen[-1].ppl == pytest.approx(float(reference["ppl"]), rel=1e-3)


def test_llama_imatrix_s_gguf_is_read_and_written_back_byte_for_byte(reference: dict[str, str]) -> None:
    data = read_imatrix(reference["gguf"])
    assert not data.is_legacy and data.has_metadata
    assert Path(reference["gguf"]).read_bytes() == gguf_bytes(data)


def test_both_of_llama_imatrix_s_formats_give_the_quantizer_the_same_arrays(
    reference: dict[str, str],
) -> None:
    from_gguf = quantizer_arrays(read_imatrix(reference["gguf"]))
    legacy = read_imatrix(reference["dat"])
    assert legacy.is_legacy and legacy.chunk_count == N_CHUNKS
    from_dat = quantizer_arrays(legacy)
    assert set(from_dat) == set(from_gguf)
    for name, values in from_gguf.items():
        # .dat stores (sum / count) x ncall; divided by ncall again: float32 rounding twice.
        np.testing.assert_allclose(from_dat[name], values, rtol=1e-6, err_msg=name)
    # What llama-quantize does with a GGUF matrix: each sum over its count.
    gguf_data = read_imatrix(reference["gguf"])
    entry = gguf_data.entries["blk.0.attn_q.weight"]
    np.testing.assert_allclose(
        from_gguf["blk.0.attn_q.weight"], entry.sums.reshape(-1) / entry.counts[0], rtol=1e-7
    )


def _dat(entries: list[tuple[str, int, list[float]]], trailer: tuple[int, str] | None) -> bytes:
    """The legacy layout (common/imatrix-loader.cpp): int32 n_entries; per entry int32 name length,
    name, int32 ncall, int32 nval, nval float32; then optionally int32 chunks, int32 length, dataset."""
    out = struct.pack("<i", len(entries))
    for name, ncall, values in entries:
        raw = name.encode()
        out += struct.pack("<i", len(raw)) + raw + struct.pack("<ii", ncall, len(values))
        out += struct.pack(f"<{len(values)}f", *values)
    if trailer is not None:
        chunks, dataset = trailer
        out += struct.pack("<ii", chunks, len(dataset.encode())) + dataset.encode()
    return out


def test_a_handwritten_dat_file_is_read_as_llama_quantize_reads_it(tmp_path: Path) -> None:
    path = tmp_path / "m.dat"
    path.write_bytes(
        _dat(
            [("blk.0.ffn_down.weight", 4, [8.0, 2.0, 0.5]), ("blk.1.attn_q.weight", 0, [3.0])],
            (4, "wiki.txt"),
        )
    )
    data = read_imatrix(str(path))
    assert data.is_legacy and data.chunk_count == 4 and data.datasets == ("wiki.txt",)
    arrays = quantizer_arrays(data)
    assert arrays["blk.0.ffn_down.weight"].tolist() == [2.0, 0.5, 0.125]  # divided by ncall
    assert arrays["blk.1.attn_q.weight"].tolist() == [3.0]  # ncall 0: taken as it is
    # The trailer is optional.
    path.write_bytes(_dat([("a.weight", 2, [1.0, 2.0])], None))
    bare = read_imatrix(str(path))
    assert (
        bare.chunk_count == 0
        and bare.datasets == ()
        and quantizer_arrays(bare)["a.weight"].tolist() == [0.5, 1.0]
    )


def test_files_that_are_not_importance_matrices_are_messages(tmp_path: Path, demo_model: str) -> None:
    cut = tmp_path / "cut.dat"
    cut.write_bytes(_dat([("blk.0.ffn_down.weight", 4, [8.0, 2.0, 0.5])], None)[:-3])
    with pytest.raises(ImatrixFileError, match="ends early|cut off"):
        read_imatrix(str(cut))
    text = tmp_path / "notes.txt"
    text.write_text("just some notes, not a matrix\n" * 20)
    with pytest.raises(ImatrixFileError, match="neither a GGUF importance matrix nor"):
        read_imatrix(str(text))
    with pytest.raises(ImatrixFileError, match="not an importance matrix|no importance matrix entries"):
        read_imatrix(demo_model)  # a model is a GGUF, but not a matrix
    with pytest.raises(ImatrixFileError, match="does not exist"):
        read_imatrix(str(tmp_path / "missing.gguf"))
    with pytest.raises(QuantizeError, match="neither a GGUF importance matrix"):
        plan_quantization(
            QuantizeRequest(
                demo_model, "Q4_0", str(tmp_path / "o.gguf"), allow_requantize=True, imatrix=str(text)
            )
        )


def test_the_i_quants_and_q2_k_s_need_the_matrix_and_take_it(
    f16_base: str, ours: tuple[str, list[ChunkProgress]], tmp_path: Path
) -> None:
    matrix, _ = ours
    for type_name in ("IQ3_XXS", "IQ2_XS", "Q2_K_S"):
        with pytest.raises(QuantizeError, match="llamascope imatrix"):
            plan_quantization(QuantizeRequest(f16_base, type_name, str(tmp_path / f"{type_name}.gguf")))
        result = quantize(
            QuantizeRequest(f16_base, type_name, str(tmp_path / f"{type_name}.gguf"), imatrix=matrix)
        )
        assert result.imatrix is not None and result.imatrix.n_entries == 210
        reader = gguf.GGUFReader(result.output_path)
        types = {t.name: t.tensor_type.name for t in reader.tensors}
        # ffn_down's rows (1536) divide into 256-weight blocks; the 576-wide tensors fall back.
        expected = {"IQ3_XXS": {"IQ3_XXS", "IQ4_NL"}, "IQ2_XS": {"IQ2_XS"}, "Q2_K_S": {"Q2_K", "Q4_K"}}[
            type_name
        ]
        assert expected & set(types.values()), (type_name, sorted(set(types.values())))
        meta = {k: f for k, f in reader.fields.items() if k.startswith("quantize.imatrix")}
        assert bytes(meta[KEY_QUANTIZE_IMATRIX_FILE].parts[-1]).decode() == matrix
        assert bytes(meta[KEY_QUANTIZE_IMATRIX_DATASET].parts[-1]).decode() == CALIBRATION_TEXT_NAME
        assert int(meta[KEY_QUANTIZE_IMATRIX_N_ENTRIES].parts[-1][0]) == 210
        assert int(meta[KEY_QUANTIZE_IMATRIX_N_CHUNKS].parts[-1][0]) == N_CHUNKS
    assert _partials(tmp_path) == []


def test_cancel_stops_the_computation_and_writes_nothing(
    f16_base: str, engine: Engine, tmp_path: Path
) -> None:
    out = tmp_path / "cancelled.imatrix.gguf"
    first = threading.Event()
    job = ImatrixJob(
        engine,
        ImatrixRequest(f16_base, str(CALIBRATION), str(out), n_ctx=N_CTX, n_chunks=40, n_threads=2),
        on_progress=lambda _p: first.set(),
    )
    future = job.start()
    assert first.wait(timeout=600), "no chunk finished"
    assert job.cancel()
    with pytest.raises(EvalCancelled):
        future.result()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_crash_in_llama_cpp_is_a_message_and_the_next_job_runs(
    demo_model: str, f16_base: str, tmp_path: Path
) -> None:
    bad = crafted_copy(demo_model, str(tmp_path), "llama.block_count", 600)  # trips a GGML_ASSERT at load
    out = tmp_path / "m.gguf"
    engine = Engine()  # its own: the crash replaces the host, whose threads end with this engine
    try:
        job = ImatrixJob(engine, ImatrixRequest(bad, None, str(out), n_ctx=N_CTX, n_chunks=1))
        with pytest.raises(EvalError, match="aborted by an assertion in llama.cpp"):
            job.start().result()
        assert not out.exists() and _partials(tmp_path) == []
        again = ImatrixJob(
            engine, ImatrixRequest(f16_base, None, str(out), n_ctx=N_CTX, n_chunks=1, n_threads=2)
        )
        assert again.start().result().n_chunks == 1 and out.exists()
    finally:
        engine.shutdown()


def test_bad_requests_are_messages(f16_base: str, tmp_path: Path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("A few words only.\n")
    with pytest.raises(TextTooShortError, match="needs at least 256"):
        compute_imatrix(f16_base, calibration_text(str(short)), str(tmp_path / "m.gguf"), n_ctx=N_CTX)
    with pytest.raises(EvalError, match="at least 16 tokens"):
        compute_imatrix(f16_base, calibration_text(None), str(tmp_path / "m.gguf"), n_ctx=8)
    with pytest.raises(EvalError, match="does not exist"):
        compute_imatrix(f16_base, calibration_text(None), str(tmp_path / "no" / "m.gguf"), n_ctx=N_CTX)
    with pytest.raises(EvalError, match="Calibration text not found"):
        calibration_text(str(tmp_path / "missing.txt"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["short.txt"]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, check=False)


def test_the_command_line_refuses_bad_input_before_loading(f16_base: str, tmp_path: Path) -> None:
    existing = tmp_path / "there.gguf"
    existing.write_bytes(b"x")
    cases = [
        (
            ["imatrix", str(tmp_path / "missing.gguf"), "-o", str(tmp_path / "a.gguf")],
            "not found|does not exist",
        ),
        (["imatrix", f16_base, "-c", "8", "-o", str(tmp_path / "a.gguf")], "from 16 tokens"),
        (["imatrix", f16_base, "--chunks", "0", "-o", str(tmp_path / "a.gguf")], "1 or more"),
        (["imatrix", f16_base, "--text", str(tmp_path), "-o", str(tmp_path / "a.gguf")], "folder"),
        (["imatrix", f16_base, "-o", str(existing)], "already exists"),
        (["imatrix", f16_base, "-o", str(tmp_path / "no" / "a.gguf")], "does not exist"),
        (
            ["quantize", f16_base, "--type", "IQ2_XS", "--imatrix", str(tmp_path / "none.gguf")],
            "does not exist",
        ),
        (["quantize", f16_base, "--type", "Q4_0", "--tensor-type", "attn_v"], "PATTERN=TYPE"),
    ]
    for args, message in cases:
        result = _cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert re.search(message, result.stderr), (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["there.gguf"]
    result = _cli("quantize", f16_base, "--type", "IQ2_XS", "-o", str(tmp_path / "x.gguf"))
    assert result.returncode == 1 and "llamascope imatrix" in result.stderr


def test_the_default_calibration_text_ships_apart_from_the_evaluation_texts() -> None:
    text = calibration_text(None)
    assert text.name == CALIBRATION_TEXT_NAME and 20_000 <= len(text.text) <= 60_000
    evaluation = (ROOT / "resources" / "eval" / "python-docs-excerpt.txt").read_text(encoding="utf-8")
    long_lines = [line.strip() for line in text.text.splitlines() if len(line.strip()) > 60]
    assert long_lines and not [line for line in long_lines if line in evaluation]
    assert (ROOT / "resources" / "calibration" / "LICENSE-python.txt").exists()
    assert os.path.getsize(ROOT / "resources" / "calibration" / "README.md") > 0
