"""A real llama-server for the tests: the demo model on 127.0.0.1, on a free port of its own.

`make test` builds the program first (`make llama-tools`); without it the tests that need it skip
and say how to build it. The server is started, waited for until /health answers 200 (or until it
exits: its log is then in the failure), and stopped (terminated, killed if it does not go).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from app.llama.tools import find_tool

HOST = "127.0.0.1"
# Loading the 98 MB demo model takes about a second; this is only the bound of a wait that ends as
# soon as the server answers, so a slow shared machine does not fail the tests.
START_TIMEOUT_S = 300.0


@dataclass
class RunningServer:
    process: subprocess.Popen[bytes]
    port: int
    log_path: str

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()[-4000:]

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


def free_port() -> int:
    """A port nothing listens on now (the kernel's choice for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def server_binary() -> str:
    path = find_tool("llama-server")
    if path is None:
        pytest.skip("llama-server is not built: run `make llama-tools` (`make test` builds it first)")
    return str(path)


def _health(port: int) -> int | None:
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


def _start(model: str, args: tuple[str, ...], folder: str) -> RunningServer:
    port = free_port()
    log_path = os.path.join(folder, f"llama-server-{port}.log")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [server_binary(), "-m", model, "--host", HOST, "--port", str(port), "--no-webui", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = RunningServer(process, port, log_path)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return server  # the caller reads why from the log (a port taken meanwhile: tries again)
        if _health(port) == 200:
            return server
        time.sleep(0.1)  # polling a condition (the server's readiness), with a deadline
    server.kill()
    raise AssertionError(f"llama-server did not become ready in {START_TIMEOUT_S:g} s:\n{server.log()}")


@contextlib.contextmanager
def llama_server(model: str, *args: str) -> Iterator[RunningServer]:
    """llama-server with the model and `args`, ready; stopped afterwards."""
    with tempfile.TemporaryDirectory(prefix="llamascope-server-") as folder:
        for _attempt in range(3):
            server = _start(model, args, folder)
            if server.process.poll() is None:
                break
            if "bind" not in server.log().lower():  # another test took the port meanwhile: retry
                raise AssertionError(f"llama-server exited with {server.process.returncode}:\n{server.log()}")
        else:
            raise AssertionError(f"llama-server could not bind a port:\n{server.log()}")
        try:
            yield server
        finally:
            if server.process.poll() is None:
                server.process.terminate()
                try:
                    server.process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    server.kill()
