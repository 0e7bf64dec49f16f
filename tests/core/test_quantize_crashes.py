"""A quantization whose LlamaScope dies, a disk that fills, a folder that takes no files.

Real processes and real files: the CLI is killed with SIGKILL while llama.cpp writes; the disk
that fills is a small tmpfs (mounting one needs root; elsewhere those tests skip); the
read-only folder is a tmpfs mounted read-only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from app.quality.eval_types import EvalError
from app.quality.logits_file import check_space_for_logits
from app.quant.partials import PartialRegistry, default_registry_folder, sweep_leftover_partials
from app.quant.plan import QuantizeError, QuantizeProgress, QuantizeRequest, f16_base_request
from app.quant.quantize import QuantizeJob, quantize

ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL, flock and tmpfs are POSIX's")


@pytest.fixture(scope="module")
def f16_base(tmp_path_factory: pytest.TempPathFactory, demo_model: str) -> str:
    folder = tmp_path_factory.mktemp("base")
    return quantize(f16_base_request(demo_model, str(folder / "SmolLM2-135M-Instruct.F16.gguf"))).output_path


def partials(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.endswith(".partial"))


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def ended(process: psutil.Process) -> bool:
    """Gone, or a zombie: it runs no more (its new parent may be slow to reap it)."""
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def start_cli_quantize(source: str, out: Path) -> subprocess.Popen[bytes]:
    # IQ4_XS on one thread: ~20 s for the demo model here, so the kill lands mid-way on any machine.
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli",
            "quantize",
            source,
            "--type",
            "IQ4_XS",
            "-o",
            str(out),
            "--threads",
            "1",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def kill_while_writing(
    proc: subprocess.Popen[bytes], folder: Path
) -> tuple[Path, list[psutil.Process], list[psutil.Process]]:
    """SIGKILL the CLI once its hidden file exists and grows; returns the file, the CLI's helper
    processes (fork server, quantizer, resource tracker) and among them the quantizer (forked by
    the fork server, not by the CLI), as they were before the kill."""
    try:

        def growing() -> bool:
            assert proc.poll() is None, "the CLI ended before it could be killed mid-way"
            found = partials(folder)
            return bool(found) and found[0].stat().st_size > 0

        wait_for(growing, 300, "the quantizer to start writing")
        (partial,) = partials(folder)
        first = partial.stat().st_size
        wait_for(lambda: partial.stat().st_size > first, 300, "the partial file to grow")
        helpers = psutil.Process(proc.pid).children(recursive=True)
        quantizers = [p for p in helpers if p.ppid() != proc.pid]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    return partial, helpers, quantizers


def test_killing_the_cli_ends_its_quantizer_and_the_partial_stops_growing(
    f16_base: str, tmp_path: Path
) -> None:
    proc = start_cli_quantize(f16_base, tmp_path / "killed.IQ4_XS.gguf")
    partial, helpers, quantizers = kill_while_writing(proc, tmp_path)
    assert quantizers, [p.cmdline() for p in helpers]

    t0 = time.monotonic()
    wait_for(lambda: all(ended(p) for p in helpers), 2.0, "the CLI's quantizer and fork server to end")
    assert time.monotonic() - t0 <= 2.0
    # Nothing writes it any more: its size holds still.
    size = partial.stat().st_size
    time.sleep(0.5)
    assert partial.stat().st_size == size
    assert not (tmp_path / "killed.IQ4_XS.gguf").exists()


def test_a_dead_runs_leftover_is_swept_on_the_next_start(f16_base: str, tmp_path: Path) -> None:
    import fcntl

    first, elsewhere = tmp_path / "first", tmp_path / "elsewhere"
    first.mkdir()
    elsewhere.mkdir()
    proc = start_cli_quantize(f16_base, first / "killed.IQ4_XS.gguf")
    leftover, helpers, _quantizers = kill_while_writing(proc, first)
    wait_for(lambda: all(ended(p) for p in helpers), 2.0, "the CLI's helpers to end")
    entries = {e.partial: e for e in PartialRegistry().entries()}
    assert str(leftover) in entries and entries[str(leftover)].pid == proc.pid

    # Another LlamaScope (this test process) is writing its own file: it must survive the sweep.
    live = first / ".live.gguf.0badc0de.partial"
    live.write_bytes(b"being written")
    live_entry = PartialRegistry().register(str(live))
    assert live_entry is not None
    # A record naming a file that is not a temporary file of ours (damaged or edited): never deleted.
    precious = first / "precious.gguf"
    precious.write_bytes(b"the user's")
    bogus = default_registry_folder() / "bogus.json"
    bogus.write_text(json.dumps({"partial": str(precious), "pid": proc.pid, "pid_started_s": 1.0}))
    fd = os.open(live, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        # The next start of the CLI's quantize command, to another folder and name entirely.
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "cli",
                "quantize",
                f16_base,
                "--type",
                "Q8_0",
                "-o",
                str(elsewhere / "x.gguf"),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        os.close(fd)
        PartialRegistry().unregister(live_entry)
    assert result.returncode == 0, result.stderr
    assert not leftover.exists()
    assert f"removed {leftover}" in result.stderr
    assert live.exists() and precious.read_bytes() == b"the user's"
    remaining = {e.partial for e in PartialRegistry().entries()}
    assert str(leftover) not in remaining and str(precious) not in remaining


def test_an_entry_of_a_live_process_is_never_swept(tmp_path: Path) -> None:
    registry = PartialRegistry(tmp_path / "registry")
    mine = tmp_path / ".model.Q4_0.gguf.abcdef01.partial"
    mine.write_bytes(b"x")
    entry = registry.register(str(mine))
    assert entry is not None
    assert sweep_leftover_partials(registry) == []  # this process is alive, lock or no lock
    assert mine.exists()
    registry.unregister(entry)
    assert registry.entries() == []


# ---- a disk that fills, a folder that takes no files ---------------------------------------------
@contextmanager
def tmpfs(folder: Path, size_bytes: int, *, read_only: bool = False) -> Iterator[Path]:
    folder.mkdir()
    options = f"size={size_bytes}" + (",ro" if read_only else "")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True, timeout=60)


def test_a_disk_that_fills_during_quantization_says_disk_full(f16_base: str, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", 256 * MiB) as disk:
        out = disk / "demo.Q8_0.gguf"
        job: QuantizeJob

        def fill_the_disk(progress: QuantizeProgress) -> None:
            # Something else fills the disk after the plan's check: the quantizer is paused while
            # a file takes all but 1 MiB, so the rest of the output cannot fit, however fast it runs.
            if progress.tensor_index != 1:
                return
            pid = job.child_pid
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)
            try:
                with open(disk / "filler", "wb") as f:
                    block = b"\1" * MiB
                    while os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize > 2 * MiB:
                        f.write(block)
                        f.flush()
            finally:
                os.kill(pid, signal.SIGCONT)

        job = QuantizeJob(QuantizeRequest(f16_base, "Q8_0", str(out), n_threads=1), on_progress=fill_the_disk)
        plan = job.start()
        with pytest.raises(QuantizeError) as failure:
            job.wait()
        message = str(failure.value)
        assert "disk filled up" in message, message
        assert "iostream" not in message
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        from app.common.formatting import format_bytes

        assert f"{format_bytes(free)} free" in message
        assert f"needs about {format_bytes(plan.expected_bytes)}" in message
        assert not out.exists() and partials(disk) == []


def test_logits_into_a_read_only_folder_say_read_only(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", 64 * MiB, read_only=True) as folder:
        with pytest.raises(EvalError, match="read-only") as refused:
            check_space_for_logits(str(folder / "base.kld"), 10 * MiB)
        assert "disk space" not in str(refused.value)
    with pytest.raises(EvalError, match="no files can be created"):
        check_space_for_logits("/proc/llamascope-test.kld", 10 * MiB)
