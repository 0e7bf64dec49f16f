"""Quantization through llama.cpp in a child process: the real demo model, real files.

The F16 base (a dequantized copy of the Q4_1 demo model) is made once per session; the types
quantized from it are Q4_0/Q8_0, the quickest llama.cpp writes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import gguf
import pytest

from app.model.gguf_info import _read_header, inspect_model, read_metadata
from app.model.model_info import KEY_QUANTIZED_FROM
from app.quant.plan import (
    QuantizeCancelled,
    QuantizeError,
    QuantizeProgress,
    QuantizeRequest,
    default_output_path,
    f16_base_request,
    output_folder_reason,
    plan_quantization,
    size_change_text,
    user_models_folder,
)
from app.quant.quantize import QuantizeJob, quantize

ROOT = Path(__file__).resolve().parents[2]
PLENTY = 1 << 50  # free bytes reported by a fake disk


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".partial"))


@pytest.fixture(scope="session")
def f16_base(tmp_path_factory: pytest.TempPathFactory, demo_model: str) -> str:
    """ "Make F16 base" on the demo model, once per session."""
    folder = tmp_path_factory.mktemp("base")
    result = quantize(f16_base_request(demo_model, str(folder / "SmolLM2-135M-Instruct.F16.gguf")))
    return result.output_path


def test_make_f16_base_is_labelled_as_a_dequantized_copy(f16_base: str, demo_model: str) -> None:
    info = inspect_model(f16_base)
    assert info.file_type == "F16"
    assert read_metadata(f16_base)[KEY_QUANTIZED_FROM] == "Q4_1"
    # The name says F16; the model list says where it came from.
    assert info.quantized_from == "Q4_1"
    assert info.file_type_label == "F16 (dequantized from Q4_1)"
    plan = plan_quantization(f16_base_request(demo_model, os.path.join(os.path.dirname(f16_base), "x.gguf")))
    assert plan.dequantized_copy
    assert any("dequantized copy" in w for w in plan.warnings)


def test_output_names_say_what_the_file_is(f16_base: str, tmp_path: Path) -> None:
    folder = os.path.dirname(f16_base)
    # Named after the model and the type, whatever the source was made from.
    assert default_output_path(f16_base, "q8_0") == os.path.join(folder, "SmolLM2-135M-Instruct.Q8_0.gguf")
    assert default_output_path(f16_base, "Q4_K_M").endswith(f"{os.sep}SmolLM2-135M-Instruct.Q4_K_M.gguf")
    # Names an earlier LlamaScope gave, and the one it made of them, lose their chain of types.
    for legacy in ("demo.F16-from-Q4_1.gguf", "demo.F16-from.Q8_0.gguf", "demo-f16.gguf"):
        assert default_output_path(str(tmp_path / legacy), "Q8_0") == str(tmp_path / "demo.Q8_0.gguf")
    assert default_output_path(str(tmp_path / "Llama-3-8B-Instruct-Q4_K_M.gguf"), "Q6_K") == str(
        tmp_path / "Llama-3-8B-Instruct.Q6_K.gguf"
    )


def test_outputs_of_a_packaged_model_go_to_the_user_folder(demo_model: str) -> None:
    # The demo model lives in an installed package (site-packages): a reinstall would delete
    # anything written beside it.
    assert "site-packages" in demo_model or "dist-packages" in demo_model
    reason = output_folder_reason(demo_model)
    assert reason is not None and "installed Python package" in reason
    expected = os.path.join(user_models_folder(), "SmolLM2-135M-Instruct.F16.gguf")
    assert default_output_path(demo_model, "F16") == expected
    assert user_models_folder().startswith(os.environ["XDG_DATA_HOME"])  # the tests' own user folder
    plan = plan_quantization(f16_base_request(demo_model))
    assert plan.output_path == expected
    assert os.path.isdir(user_models_folder())  # created for the plan
    assert not plan.output_path.startswith(os.path.dirname(demo_model) + os.sep)


def test_outputs_of_a_model_in_a_read_only_folder_go_to_the_user_folder(
    f16_base: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Root ignores permissions, so the folder's answer is given where the plan asks the OS.
    import app.quant.plan as plan_module

    folder = os.path.dirname(f16_base)
    real_access = os.access
    monkeypatch.setattr(
        plan_module.os, "access", lambda p, mode: False if str(p) == folder else real_access(p, mode)
    )
    assert output_folder_reason(f16_base) == f"the source's folder {folder} is not writable"
    assert default_output_path(f16_base, "Q8_0") == os.path.join(
        user_models_folder(), "SmolLM2-135M-Instruct.Q8_0.gguf"
    )


def test_size_ratios_point_the_right_way(f16_base: str, demo_model: str) -> None:
    assert size_change_text(100, 275) == "2.75× larger than the source"
    assert size_change_text(230, 100) == "2.3× smaller than the source"
    assert size_change_text(1000, 1002) == "the same size as the source"
    assert size_change_text(0, 10) == "n/a"
    # The F16 base is larger than the Q4_1 it was made from: "larger", never "0.36× smaller".
    ratio = os.path.getsize(f16_base) / os.path.getsize(demo_model)
    assert ratio > 2
    assert size_change_text(os.path.getsize(demo_model), os.path.getsize(f16_base)) == (
        f"{ratio:.3g}× larger than the source"
    )


def test_quantize_reports_progress_and_renames_into_place(f16_base: str, tmp_path: Path) -> None:
    source_hash = sha256(f16_base)
    events: list[QuantizeProgress] = []
    out = tmp_path / "demo.Q4_0.gguf"
    result = quantize(QuantizeRequest(f16_base, "Q4_0", str(out), n_threads=2), on_progress=events.append)

    assert result.output_path == str(out) and out.is_file()
    assert inspect_model(str(out)).file_type == "Q4_0"
    assert result.output_bytes == out.stat().st_size
    assert result.n_tensors == 272 and len(events) == 272
    assert [e.tensor_index for e in events] == list(range(1, 273))
    assert events[-1].fraction == 1.0 and events[-1].n_tensors == 272
    assert result.compression_ratio > 2.5
    assert result.size_change == f"{result.compression_ratio:.3g}× smaller than the source"
    assert result.label == "Q4_0" and not result.dequantized_copy
    assert leftovers(tmp_path) == []
    assert sha256(f16_base) == source_hash
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # like any new file, not mkstemp's 0600


def test_options_reach_llama_cpp(f16_base: str, tmp_path: Path) -> None:
    out = tmp_path / "pure.gguf"
    quantize(QuantizeRequest(f16_base, "Q4_0", str(out), pure=True, token_embedding_type="Q8_0"))
    types = {t.name: t.type_name for t in _read_header(str(out), with_tensors=True, keep_items=0).tensors}
    assert types["token_embd.weight"] == "Q8_0"
    matrices = {n: t for n, t in types.items() if n != "token_embd.weight" and not n.endswith("norm.weight")}
    assert set(matrices.values()) == {"Q4_0"}  # pure: no mix


def test_expected_size_is_close_to_the_real_one(f16_base: str, tmp_path: Path) -> None:
    out = tmp_path / "q8.gguf"
    plan = plan_quantization(QuantizeRequest(f16_base, "Q8_0", str(out)))
    result = quantize(QuantizeRequest(f16_base, "Q8_0", str(out)))
    assert abs(plan.expected_bytes - result.output_bytes) / result.output_bytes < 0.05


def test_cancel_stops_the_child_and_leaves_nothing(f16_base: str, tmp_path: Path) -> None:
    source_hash = sha256(f16_base)
    out = tmp_path / "cancelled.gguf"
    job: QuantizeJob

    def on_progress(p: QuantizeProgress) -> None:
        if p.tensor_index == 20:
            job.cancel()

    job = QuantizeJob(QuantizeRequest(f16_base, "Q8_0", str(out), n_threads=1), on_progress=on_progress)
    job.start()
    with pytest.raises(QuantizeCancelled):
        job.wait()
    assert not out.exists()
    assert leftovers(tmp_path) == []
    assert sha256(f16_base) == source_hash
    job.cancel()  # a second cancel after the end is harmless


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX advisory locks")
def test_a_killed_run_leaves_a_partial_that_the_next_run_sweeps(f16_base: str, tmp_path: Path) -> None:
    import fcntl
    import signal
    import time

    out = tmp_path / "demo.Q8_0.gguf"
    # LlamaScope killed mid-way (the CLI here): its hidden temporary file stays behind.
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli",
            "quantize",
            f16_base,
            "--type",
            "q8_0",
            "-o",
            str(out),
            "--threads",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # wait for the child to be writing
            if "quantizing [" in line:
                break
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    deadline = time.monotonic() + 60
    while not leftovers(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    (stale,) = leftovers(tmp_path)
    assert not out.exists()
    # A job still running in another LlamaScope holds its file's lock: that one is left alone,
    # and so is anything not named as LlamaScope names its temporary files.
    live = tmp_path / ".demo.Q8_0.gguf.00c0ffee.partial"
    live.write_bytes(b"being written")
    others = [tmp_path / ".demo.Q8_0.gguf.notmine.partial", tmp_path / ".other.gguf.0badc0de.partial"]
    for other in others:
        other.write_bytes(b"not ours to delete")
    fd = os.open(live, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        quantize(QuantizeRequest(f16_base, "Q8_0", str(out), n_threads=2))
    finally:
        os.close(fd)
    assert out.is_file()
    assert not (tmp_path / stale).exists()
    assert live.exists() and all(other.exists() for other in others)


def test_cancel_before_start(f16_base: str, tmp_path: Path) -> None:
    job = QuantizeJob(QuantizeRequest(f16_base, "Q8_0", str(tmp_path / "x.gguf")))
    job.cancel()
    with pytest.raises(QuantizeCancelled):
        job.start()
    assert list(tmp_path.iterdir()) == []


def test_source_missing_or_not_gguf(tmp_path: Path) -> None:
    with pytest.raises(QuantizeError, match="not found"):
        plan_quantization(QuantizeRequest(str(tmp_path / "missing.gguf"), "Q4_0"))
    text = tmp_path / "notes.gguf"
    text.write_text("this is not a model\n" * 10)
    with pytest.raises(QuantizeError, match="(?i)not a recognised model file"):
        plan_quantization(QuantizeRequest(str(text), "Q4_0"))


def test_imatrix_types_are_refused_with_the_reason(f16_base: str) -> None:
    with pytest.raises(QuantizeError, match="importance matrix"):
        plan_quantization(QuantizeRequest(f16_base, "IQ2_XXS"))


def test_unknown_type_and_bad_options(f16_base: str) -> None:
    with pytest.raises(QuantizeError, match="Unknown quantization type"):
        plan_quantization(QuantizeRequest(f16_base, "Q4_K_XL"))
    with pytest.raises(QuantizeError, match="Unknown tensor type"):
        plan_quantization(QuantizeRequest(f16_base, "Q4_0", output_tensor_type="Q9_9"))
    with pytest.raises(QuantizeError, match="Thread count"):
        plan_quantization(QuantizeRequest(f16_base, "Q4_0", n_threads=0))


def test_requantizing_needs_permission_and_warns(demo_model: str, tmp_path: Path) -> None:
    with pytest.raises(QuantizeError, match="already quantized \\(Q4_1\\)"):
        plan_quantization(QuantizeRequest(demo_model, "Q4_0", str(tmp_path / "r.gguf")))
    allowed = QuantizeRequest(demo_model, "Q4_0", str(tmp_path / "r.gguf"), allow_requantize=True)
    plan = plan_quantization(allowed)
    assert plan.source_quantized_type == "Q4_1" and not plan.dequantized_copy
    assert any("loses quality" in w for w in plan.warnings)


def test_the_source_is_never_the_output(f16_base: str, tmp_path: Path) -> None:
    with pytest.raises(QuantizeError, match="is the source file"):
        plan_quantization(QuantizeRequest(f16_base, "Q4_0", f16_base, overwrite=True))
    link = tmp_path / "link.gguf"
    link.symlink_to(f16_base)
    with pytest.raises(QuantizeError, match="is the source file"):
        plan_quantization(QuantizeRequest(f16_base, "Q4_0", str(link), overwrite=True))


def test_an_existing_output_needs_overwrite(f16_base: str, tmp_path: Path) -> None:
    existing = tmp_path / "exists.gguf"
    existing.write_bytes(b"keep me")
    with pytest.raises(QuantizeError, match="already exists"):
        plan_quantization(QuantizeRequest(f16_base, "Q4_0", str(existing)))
    assert existing.read_bytes() == b"keep me"


def test_destination_under_a_regular_file_is_refused(f16_base: str, tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(QuantizeError, match="does not exist|not a folder"):
        plan_quantization(QuantizeRequest(f16_base, "Q4_0", str(a_file / "out.gguf")))


def test_read_only_destination_is_refused(
    f16_base: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Root ignores chmod, so a read-only folder is simulated where the check asks the OS.
    import app.quant.quantize as quantize_module

    real_access = os.access

    def access(path: str, mode: int) -> bool:
        return False if str(path) == str(tmp_path) else real_access(path, mode)

    monkeypatch.setattr(quantize_module.os, "access", access)
    with pytest.raises(QuantizeError, match="not writable"):
        plan_quantization(QuantizeRequest(f16_base, "Q4_0", str(tmp_path / "out.gguf")))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_a_folder_where_files_cannot_be_created_is_refused_before_the_child_starts(f16_base: str) -> None:
    # os.access says yes for root in /proc, but nothing can be created there: the job must find
    # out by creating its temporary file, before starting llama.cpp.
    request = QuantizeRequest(f16_base, "Q4_0", "/proc/llamascope-test.gguf")
    job = QuantizeJob(request, free_bytes=lambda p: PLENTY)
    with pytest.raises(QuantizeError, match="Cannot write in /proc"):
        job.start()


def test_not_enough_disk_space(f16_base: str, tmp_path: Path) -> None:
    asked: list[str] = []

    def tiny_disk(path: str) -> int:
        asked.append(path)
        return 1000

    with pytest.raises(QuantizeError, match="Not enough disk space"):
        QuantizeJob(
            QuantizeRequest(f16_base, "Q4_0", str(tmp_path / "out.gguf")), free_bytes=tiny_disk
        ).start()
    assert asked == [str(tmp_path)]
    assert list(tmp_path.iterdir()) == []


def test_llama_cpp_failure_is_reported_and_cleaned_up(tmp_path: Path) -> None:
    import gguf
    import numpy as np

    bad = tmp_path / "unknown-arch.gguf"
    w = gguf.GGUFWriter(str(bad), "not_an_architecture")
    w.add_tensor("blk.0.weight", np.zeros((32, 32), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    out = tmp_path / "out.gguf"
    with pytest.raises(QuantizeError, match="llama.cpp could not quantize.*architecture"):
        quantize(QuantizeRequest(str(bad), "Q8_0", str(out)))
    assert not out.exists() and leftovers(tmp_path) == []


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_cli_quantize(f16_base: str, tmp_path: Path) -> None:
    out = tmp_path / "cli.Q4_0.gguf"
    result = _cli("quantize", f16_base, "--type", "q4_0", "-o", str(out), "--threads", "2")
    assert result.returncode == 0, result.stderr
    assert out.is_file() and inspect_model(str(out)).file_type == "Q4_0"
    assert "quantizing [ 272/272]" in result.stderr  # progress went to stderr
    assert "Wrote" in result.stdout and "bits/weight" in result.stdout
    assert "× smaller than the source" in result.stdout  # Q4_0 from F16


def test_cli_quantize_refusals(demo_model: str, tmp_path: Path) -> None:
    result = _cli("quantize", demo_model, "--type", "IQ2_XS", "-o", str(tmp_path / "x.gguf"))
    assert result.returncode == 1 and "importance matrix" in result.stderr
    assert "Traceback" not in result.stderr
    result = _cli("quantize", demo_model, "--type", "Q4_0", "-o", str(tmp_path / "x.gguf"))
    assert result.returncode == 1 and "already quantized" in result.stderr
    result = _cli("quantize", "--list-types")
    assert result.returncode == 0 and "Q4_K_M" in result.stdout and "needed" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_the_worker_runs_from_a_shell(f16_base: str) -> None:
    """`python -m app.quant.worker`: JSON in, llama.cpp's log on stderr, result line on stdout."""
    import json

    params = {"source": f16_base, "output": "/nonexistent/unused.gguf", "ftype": 7, "dry_run": True}
    result = subprocess.run(
        [sys.executable, "-m", "app.quant.worker"],
        input=json.dumps(params),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "[ 272/ 272]" in result.stderr
    assert json.loads(result.stdout.split("LLAMASCOPE-RESULT ", 1)[1])["rc"] == 0


def test_a_dry_run_writes_nothing_and_predicts_the_size_the_real_run_writes(
    f16_base: str, tmp_path: Path
) -> None:
    out = tmp_path / "dry.Q4_0.gguf"
    dry = quantize(QuantizeRequest(f16_base, "Q4_0", str(out), dry_run=True))
    assert dry.dry_run and not out.exists() and leftovers(tmp_path) == []
    assert len(dry.tensors) == 272
    by_name = {t.name: t for t in dry.tensors}
    q = by_name["blk.0.attn_q.weight"]
    assert (q.shape[:2], q.source_type, q.target_type) == ((576, 576), "f16", "q4_0")
    assert q.target_bytes == 576 * 576 // 32 * 18  # Q4_0: 18 bytes per 32 weights
    norm = by_name["blk.0.attn_norm.weight"]
    assert norm.source_type == norm.target_type == "f32" and norm.target_bytes == 576 * 4
    real = quantize(QuantizeRequest(f16_base, "Q4_0", str(out)))
    assert not real.dry_run
    # Tensor data exactly; the header is the source's, and the quantizer rewrites a few keys.
    assert abs(real.output_bytes - dry.output_bytes) < 1024
    assert abs(real.bits_per_weight - dry.bits_per_weight) < 0.01


def test_tensor_type_overrides_reach_the_quantizer(f16_base: str, tmp_path: Path) -> None:
    out = tmp_path / "mixed.gguf"
    result = quantize(
        QuantizeRequest(
            f16_base, "Q4_0", str(out), tensor_types=((r"attn_v\.weight$", "q8_0"), ("ffn_down", "Q5_0"))
        )
    )
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(out)).tensors}
    assert types["blk.3.attn_v.weight"] == "Q8_0"
    assert types["blk.3.ffn_down.weight"] == "Q5_0"
    assert types["blk.3.attn_q.weight"] == "Q4_0"
    assert result.tensor_types == ((r"attn_v\.weight$", "q8_0"), ("ffn_down", "Q5_0"))
    with pytest.raises(QuantizeError, match="not a valid regular expression"):
        plan_quantization(QuantizeRequest(f16_base, "Q4_0", str(out), tensor_types=(("attn_(", "Q8_0"),)))
    with pytest.raises(QuantizeError, match="Unknown tensor type"):
        plan_quantization(QuantizeRequest(f16_base, "Q4_0", str(out), tensor_types=(("attn", "Q9_9"),)))
    # An i-quant tensor without a matrix: llama.cpp names the tensor, the message names the cure.
    with pytest.raises(QuantizeError, match="llamascope imatrix"):
        quantize(
            QuantizeRequest(
                f16_base, "Q4_0", str(tmp_path / "iq.gguf"), tensor_types=(("ffn_down", "IQ2_XS"),)
            )
        )
    assert leftovers(tmp_path) == []


def test_requested_metadata_is_written_into_the_output(f16_base: str, tmp_path: Path) -> None:
    out = tmp_path / "meta.gguf"
    quantize(QuantizeRequest(f16_base, "Q4_0", str(out), metadata=(("llamascope.target.size", "90 MB"),)))
    field = gguf.GGUFReader(str(out)).fields["llamascope.target.size"]
    assert bytes(field.parts[-1]).decode() == "90 MB"
    with pytest.raises(QuantizeError, match="1 to 127 bytes"):
        plan_quantization(QuantizeRequest(f16_base, "Q4_0", str(out), metadata=(("k", "v" * 200),)))


def test_the_bindings_quantize_parameters_match_the_vendored_header() -> None:
    """llama.h (0.3.36): the worker fills these by name, and llama.cpp reads them by offset, so a
    stale binding would pass the matrix where llama.cpp looks for the overrides."""
    import ctypes

    import llama_cpp

    header_order = [
        ("nthread", ctypes.c_int32), ("ftype", ctypes.c_int), ("output_tensor_type", ctypes.c_int),
        ("token_embedding_type", ctypes.c_int), ("allow_requantize", ctypes.c_bool),
        ("quantize_output_tensor", ctypes.c_bool), ("only_copy", ctypes.c_bool), ("pure", ctypes.c_bool),
        ("keep_split", ctypes.c_bool), ("dry_run", ctypes.c_bool),
        ("imatrix", ctypes.POINTER(llama_cpp.llama_model_imatrix_data)),
        ("kv_overrides", ctypes.POINTER(llama_cpp.llama_model_kv_override)),
        ("tt_overrides", ctypes.POINTER(llama_cpp.llama_model_tensor_override)),
        ("prune_layers", ctypes.POINTER(ctypes.c_int32)), ("max_buf_size", ctypes.c_size_t),
    ]  # fmt: skip
    assert list(llama_cpp.llama_model_quantize_params._fields_) == header_order
    assert [f[0] for f in llama_cpp.llama_model_imatrix_data._fields_] == ["name", "data", "size"]
    assert [f[0] for f in llama_cpp.llama_model_tensor_override._fields_] == ["pattern", "type"]
