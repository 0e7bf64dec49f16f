"""The engine host's plumbing (app/engine/host.py), with a probe service instead of llama.cpp:
results, events, errors, a crash turned into an exception, cancel within the grace period, and
no host outliving its client, even after kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from app.engine.host import TEST_HOOKS_ENV, HostCancelled, HostClient, HostCrashed, HostError

SPEC = "host_probe:ProbeService"


@pytest.fixture()
def client(monkeypatch: pytest.MonkeyPatch) -> Iterator[HostClient]:
    monkeypatch.setenv(TEST_HOOKS_ENV, "1")
    c = HostClient(SPEC)
    yield c
    c.shutdown()


def test_calls_return_results_and_events_in_order(client: HostClient) -> None:
    events: list[tuple[str, object]] = []
    assert client.call("echo", {"a": [1, 2]}, events=3, on_event=lambda k, p: events.append((k, p))) == {
        "a": [1, 2]
    }
    assert events == [("step", 0), ("step", 1), ("step", 2)]
    pid = client.call("pid")
    assert pid != os.getpid() and client.pid == pid


def test_an_error_in_the_host_is_raised_here_with_its_class(client: HostClient) -> None:
    with pytest.raises(HostError, match="no such thing"):
        client.call("fail", "no such thing")
    assert client.call("echo", 5) == 5  # the host is still serving


@pytest.mark.parametrize(
    ("how", "words"),
    [("abort", "aborted by an assertion"), ("segv", "segmentation fault"), ("SIGILL", "illegal instruction")],
)
def test_a_native_crash_is_an_error_and_the_next_call_starts_a_fresh_host(
    client: HostClient, how: str, words: str
) -> None:
    first = client.call("pid")
    with pytest.raises(HostCrashed) as info:
        client.call("_test_crash", how)
    assert words in str(info.value) and "running a test crash" in str(info.value)
    assert "unaffected" in str(info.value)
    assert not psutil.pid_exists(first) or psutil.Process(first).status() == psutil.STATUS_ZOMBIE
    second = client.call("pid")
    assert second != first and client.starts == 2


def test_a_kill_from_outside_names_the_signal(client: HostClient) -> None:
    pid = client.call("pid")
    threading.Timer(0.2, lambda: os.kill(pid, signal.SIGKILL)).start()
    with pytest.raises(HostCrashed, match="killed — probably out of memory"):
        client.call("spin_until_cancelled", False)


def test_cancel_is_cooperative_first(client: HostClient) -> None:
    pid = client.call("pid")
    threading.Timer(0.2, client.cancel).start()
    assert client.call("spin_until_cancelled", True) > 0
    assert client.pid == pid  # the host stopped by itself and lives on
    client.clear_cancel()


def test_cancel_ends_a_host_that_does_not_listen_within_half_a_second(client: HostClient) -> None:
    client.call("pid")
    t0: list[float] = []

    def stop() -> None:
        t0.append(time.monotonic())
        client.cancel()

    threading.Timer(0.2, stop).start()
    with pytest.raises(HostCancelled):
        client.call("spin_until_cancelled", False)
    assert time.monotonic() - t0[0] < 0.5
    assert client.call("echo", "fresh") == "fresh"


def test_a_stop_that_comes_before_the_call_still_ends_it(client: HostClient) -> None:
    """A Stop between the request and the call (the engine's worker has not reached the host yet):
    a call that does not poll the flag is still ended after the grace period."""
    client.call("pid")
    client.cancel()  # no call runs yet: only the flag is set
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            client.call("spin_until_cancelled", False)
        except BaseException as exc:  # noqa: BLE001 (handed to the test thread)
            outcome.append(exc)

    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    worker.join(timeout=30)  # far beyond the grace period: a missed Stop spins for ever
    if worker.is_alive():
        client.cancel()  # end the spinning host, so the test fails instead of hanging
        worker.join(timeout=30)
        pytest.fail("a Stop given before the call started did not end the call")
    assert len(outcome) == 1 and isinstance(outcome[0], HostCancelled)
    client.clear_cancel()
    assert client.call("echo", "fresh") == "fresh"


def test_shutdown_leaves_no_process(client: HostClient) -> None:
    pid = client.call("pid")
    client.shutdown()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert client.pid is None


def test_no_host_outlives_a_client_killed_with_sigkill(tmp_path: Path) -> None:
    """A client process starts a host, then is killed -9: the host notices and exits."""
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from app.engine.host import HostClient
        c = HostClient({SPEC!r})
        print(c.call("pid"), flush=True)
        c.call("spin_until_cancelled", False)
    """)
    client = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert client.stdout is not None
        host_pid = int(client.stdout.readline())
        assert psutil.pid_exists(host_pid)
        client.kill()
        client.wait(timeout=10)
        host = psutil.Process(host_pid)
        host.wait(timeout=5)  # raises TimeoutExpired if the host lives on
    except psutil.NoSuchProcess:
        pass
    finally:
        if client.poll() is None:
            client.kill()
