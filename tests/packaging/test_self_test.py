"""`llamascope --self-test` in the source checkout: the check the bundle runs, run from source."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 300


def _self_test(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", "--self-test", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
        env={**os.environ, "QT_QPA_PLATFORM": "offscreen"},
    )


@pytest.mark.slow
def test_self_test_passes_and_reports_in_json(demo_model: str) -> None:
    result = _self_test()
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["failed"] is None
    assert report["frozen"] is False
    assert report["model"] == os.path.abspath(demo_model)
    assert report["window_shown"] is True
    assert report["startup_s"] > 0
    assert report["version"] and report["qt"] and report["llama_cpp_python"]
    assert "CPU" in report["backends"]
    assert 1 <= report["generated_tokens"] <= 8
    assert report["tokens_per_s"] is None or report["tokens_per_s"] > 0
    assert report["telemetry"]["samples"] == 2
    assert report["telemetry"]["mem_total_bytes"] > 0
    assert set(report["steps_s"]) == {"window", "runtime", "build_check", "engine", "telemetry"}
    assert report["build_check"]["status"] == "ok", report["build_check"]
    assert report["cpu_variant"] is None  # the venv's build has one CPU backend, not per-CPU variants
    assert "self-test passed" in result.stderr


def test_self_test_names_what_failed(tmp_path: Path) -> None:
    missing = tmp_path / "no such model.gguf"
    result = _self_test(str(missing))
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert report["failed"] == "model"
    assert "not found" in report["error"]
    assert "self-test failed at step model" in result.stderr


def test_self_test_reports_a_model_that_does_not_load(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 60)
    result = _self_test(str(broken))
    assert result.returncode == 1, result.stdout
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert report["failed"] == "engine"
    assert report["window_shown"] is True  # the steps before the failing one still ran
    assert report["error"]
