"""The `llamascope` command line, run as a user runs it (a child process, real model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

WAIT_S = 300


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=WAIT_S, check=False
    )


def test_info_prints_the_header_without_loading(demo_model: str) -> None:
    result = _run("info", demo_model)
    assert result.returncode == 0, result.stderr
    assert "Architecture" in result.stdout and "llama" in result.stdout
    assert "Q4_1" in result.stdout
    assert "Tiny (< 1B)" in result.stdout


def test_info_json(demo_model: str) -> None:
    result = _run("info", demo_model, "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["architecture"] == "llama"
    assert info["n_layer"] == 30
    assert info["has_chat_template"] is True
    assert info["size_class"] == "tiny"
    assert {t["type_name"] for t in info["tensor_types"]} == {"Q4_1", "F32", "Q8_0"}


def test_info_without_a_model_uses_the_demo_model() -> None:
    result = _run("info", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["file_type"] == "Q4_1"


def test_info_on_a_file_that_needs_converting(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    header = b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0\0\0\0")
    result = _run("info", str(path))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "safetensors" in result.stderr.lower()
    assert "convert" in result.stderr.lower()


def test_generate_streams_text_and_prints_stats(demo_model: str) -> None:
    result = _run("generate", demo_model, "--prompt", "The capital of France is", "-n", "12", "--temp", "0")
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
    assert "generation" in result.stdout and "t/s" in result.stdout and "TTFT" in result.stdout


def test_generate_json(demo_model: str) -> None:
    result = _run(
        "generate", demo_model, "--prompt", "What is 2+2?", "--chat", "-n", "32", "--temp", "0", "--json"
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    stats = out["stats"]
    assert stats["chat"] is True
    assert stats["generated_tokens"] > 0
    assert stats["stop_reason"] in ("eos", "length")
    assert stats["gen_tokens_per_s"] > 0
    assert out["load_time_s"] > 0


def test_generate_refuses_bad_settings_naming_the_field(demo_model: str) -> None:
    result = _run("generate", demo_model, "--prompt", "hi", "--ctx", "0")
    assert result.returncode == 2
    assert "n_ctx" in result.stderr
    assert "Traceback" not in result.stderr


def test_generate_refuses_an_empty_prompt(demo_model: str) -> None:
    result = _run("generate", demo_model, "--prompt", "")
    assert result.returncode == 1
    assert "empty" in result.stderr


def test_missing_model(tmp_path: Path) -> None:
    result = _run("generate", os.fspath(tmp_path / "nope.gguf"), "--prompt", "hi")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "nope.gguf" in result.stderr


def test_bench_history_and_compare_from_the_command_line(demo_model: str, tmp_path: Path) -> None:
    env = dict(os.environ, XDG_DATA_HOME=str(tmp_path / "data"))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cli", *args],
            capture_output=True,
            text=True,
            timeout=WAIT_S,
            check=False,
            env=env,
        )

    bench = ["bench", demo_model, "-p", "16", "-n", "0", "-r", "2", "--no-telemetry", "-o", "json"]
    first = run(*bench, "-t", "1,2")
    assert first.returncode == 0, first.stderr
    records = json.loads(first.stdout)  # one JSON array, as llama-bench prints it
    shape = [(r["n_threads"], r["n_prompt"], len(r["samples_ts"])) for r in records]
    assert shape == [(1, 16, 2), (2, 16, 2)]
    second = run(*bench, "-t", "2")
    assert second.returncode == 0, second.stderr
    runs = json.loads(run("history", "--json").stdout)
    newest, oldest = runs[0]["id"], runs[1]["id"]
    within = run("compare", str(oldest), "--json")  # the two thread counts of the sweep run
    assert within.returncode == 0, within.stderr
    (row,) = json.loads(within.stdout)
    assert row["config"].startswith("t=1 ") and " → t=2 " in row["config"]
    across = run("compare", str(oldest), str(newest))
    assert across.returncode == 0, across.stderr
    assert "| pp16 |" in across.stdout and "Welch" in across.stdout
    single = run("compare", str(newest))
    assert single.returncode != 0 and "one configuration" in single.stderr
