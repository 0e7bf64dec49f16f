"""One LlamaScope at a time: a second instance refuses to start instead of sharing the settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PySide6.QtCore import QLockFile, QSysInfo

from ui import application

ROOT = Path(__file__).resolve().parents[2]


def test_a_held_lock_refuses_a_second_holder(tmp_path: Path) -> None:
    path = str(tmp_path / "instance.lock")
    first = application.acquire_instance_lock(path)
    assert first is not None and first.isLocked()
    assert application.acquire_instance_lock(path) is None
    first.unlock()
    again = application.acquire_instance_lock(path)
    assert again is not None and again.isLocked()
    again.unlock()


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "instance.lock"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    # QLockFile's format: pid, application name, host name.
    path.write_text(f"{dead.stdout.strip()}\nLlamaScope\n{QSysInfo.machineHostName()}\n")
    lock = application.acquire_instance_lock(str(path))
    assert lock is not None and lock.isLocked()
    lock.unlock()


@pytest.mark.skipif(sys.platform != "linux", reason="the user folders are redirected with XDG variables")
def test_a_second_app_exits_without_touching_settings(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "QT_QPA_PLATFORM": "offscreen",
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
    }
    lock_path = tmp_path / "data" / "LlamaScope" / "instance.lock"
    lock_path.parent.mkdir(parents=True)
    held = QLockFile(str(lock_path))  # stands for the running first instance
    assert held.tryLock(0)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "cli"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
    finally:
        held.unlock()
    assert result.returncode == application.EXIT_ALREADY_RUNNING, result.stderr
    assert "already running" in result.stderr
    assert not (tmp_path / "config").exists()  # QSettings was never written
    assert not (tmp_path / "data" / "LlamaScope" / "history.sqlite3").exists()
