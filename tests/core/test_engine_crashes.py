"""A native crash of llama.cpp is an error, not an exit: crafted models that trip llama.cpp's
assertions, a host killed during a generation, the crash registry, and chat templates that fail.
All through the real engine host and the real demo model."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import crafted_copy, crafted_duplicate_token

from app.engine.client import Engine
from app.engine.crash_registry import CrashRegistry
from app.engine.types import EngineCrashedError, GenerationRequest, PromptError, StopReason, TokenEvent
from app.model.settings import LoadSettings, SamplingSettings

WAIT_S = 120
SMALL = dataclasses.replace(LoadSettings(), n_ctx=512)
GREEDY = dataclasses.replace(SamplingSettings(), temperature=0.0, max_tokens=16)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def registry(tmp_path: Path) -> CrashRegistry:
    return CrashRegistry(tmp_path / "crashed-models.json")


@pytest.fixture()
def engine(registry: CrashRegistry) -> Iterator[Engine]:
    eng = Engine(crashes=registry)
    yield eng
    eng.shutdown()


@pytest.mark.parametrize("crafted", ["block_count 0", "block_count 600", "duplicate token"])
def test_a_model_that_trips_an_assertion_fails_its_load_and_the_engine_lives_on(
    engine: Engine, registry: CrashRegistry, demo_model: str, tmp_path: Path, crafted: str
) -> None:
    if crafted == "duplicate token":
        bad = crafted_duplicate_token(demo_model, str(tmp_path))
    else:
        bad = crafted_copy(demo_model, str(tmp_path), "llama.block_count", int(crafted.split()[1]))
    exc = engine.load(bad, SMALL).exception(WAIT_S)
    assert isinstance(exc, EngineCrashedError)
    message = str(exc)
    # The operation, the file, the signal in words and what llama.cpp said last.
    assert "while loading" in message and bad in message
    assert "aborted by an assertion in llama.cpp" in message
    assert "GGML_ASSERT" in message
    assert engine.loaded is None
    # Remembered by content: the model list can mark it and the next load asks first.
    record = registry.lookup(bad)
    assert record is not None and "assertion" in record.signal_text
    assert registry.lookup(demo_model) is None
    # The next request starts a fresh host and works.
    engine.load(demo_model, SMALL).result(WAIT_S)
    stats = engine.generate(GenerationRequest("The capital of France is", GREEDY)).result(WAIT_S)
    assert stats.generated_tokens > 0


def test_a_host_killed_during_a_generation_is_reported_and_replaced(engine: Engine, demo_model: str) -> None:
    engine.load(demo_model, SMALL).result(WAIT_S)
    first_host = engine.host_pid
    assert first_host is not None and first_host != os.getpid()
    killed = threading.Event()

    def on_token(event: TokenEvent) -> None:
        if event.index == 2 and not killed.is_set():
            killed.set()
            os.kill(first_host, signal.SIGKILL)

    sampling = dataclasses.replace(GREEDY, max_tokens=400)
    exc = engine.generate(GenerationRequest("Once upon a time", sampling), on_token).exception(WAIT_S)
    assert isinstance(exc, EngineCrashedError)
    assert "while generating" in str(exc) and "killed — probably out of memory" in str(exc)
    assert engine.loaded is None  # the model died with its host
    engine.load(demo_model, SMALL).result(WAIT_S)
    assert engine.host_pid not in (None, first_host)
    assert engine.generate(GenerationRequest("Hello", GREEDY)).result(WAIT_S).generated_tokens > 0


def test_a_load_that_worked_clears_the_record(
    engine: Engine, registry: CrashRegistry, demo_model: str, tmp_path: Path
) -> None:
    copy = tmp_path / "repaired.gguf"
    copy.write_bytes(Path(demo_model).read_bytes())
    registry.record(str(copy), "aborted by an assertion in llama.cpp (SIGABRT)")
    assert registry.lookup(str(copy)) is not None
    engine.load(str(copy), SMALL).result(WAIT_S)
    assert registry.lookup(str(copy)) is None


def test_records_from_before_fingerprint_scheme_2_are_converted(
    registry: CrashRegistry, tmp_path: Path
) -> None:
    """A record keyed by the old fingerprint (size and first MiB) still marks its file when that
    file is unchanged where it crashed; one for a file gone or changed since is dropped."""
    import json

    from app.model.fingerprint import fingerprint_v1

    still, changed, gone = tmp_path / "still.gguf", tmp_path / "changed.gguf", tmp_path / "gone.gguf"
    for f in (still, changed, gone):
        f.write_bytes(f.name.encode() * 1000)
    old: dict[str, object] = {}
    for f in (still, changed, gone):
        key = str(fingerprint_v1(f))
        log_tail = ["GGML_ASSERT(...) failed"]
        old[key] = {
            "fingerprint": key,
            "path": str(f),
            "signal_text": "SIGABRT",
            "log_tail": log_tail,
            "when_s": 1.0,
        }
    registry.path.write_text(json.dumps(old), encoding="utf-8")
    changed.write_bytes(b"repaired" * 1000)
    gone.unlink()

    found = registry.lookup(str(still))
    assert (
        found is not None
        and found.signal_text == "SIGABRT"
        and found.log_tail == ("GGML_ASSERT(...) failed",)
    )
    assert registry.lookup(str(changed)) is None
    stored = json.loads(registry.path.read_text(encoding="utf-8"))
    assert list(stored) == [found.fingerprint] and stored[found.fingerprint]["fingerprint_scheme"] == 2
    registry.forget(str(still))
    assert registry.lookup(str(still)) is None


def test_stop_during_a_load_ends_it_within_half_a_second(engine: Engine, demo_model: str) -> None:
    import time

    stopped: list[float] = []

    def on_progress(_progress: object) -> None:
        if not stopped:
            stopped.append(time.monotonic())
            engine.cancel()

    exc = engine.load(
        demo_model, dataclasses.replace(SMALL, use_mmap=False), on_progress=on_progress
    ).exception(WAIT_S)
    elapsed = time.monotonic() - stopped[0]
    assert exc is not None and "cancelled" in str(exc).lower()
    assert engine.loaded is None
    assert elapsed < 0.5 + 0.5  # the target, plus a loaded machine's scheduling


def test_no_host_outlives_a_killed_llamascope(demo_model: str, tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import dataclasses
        from app.engine.client import Engine
        from app.model.settings import LoadSettings
        if __name__ == "__main__":
            e = Engine()
            e.load({demo_model!r}, dataclasses.replace(LoadSettings(), n_ctx=512)).result()
            print(e.host_pid, flush=True)
            import time
            while True:
                time.sleep(1)
    """)
    path = tmp_path / "client.py"
    path.write_text(script, encoding="utf-8")
    client = subprocess.Popen([sys.executable, str(path)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert client.stdout is not None
        host_pid = int(client.stdout.readline())
        host = psutil.Process(host_pid)
        client.kill()
        client.wait(timeout=10)
        host.wait(timeout=5)  # psutil.TimeoutExpired if the host lives on
    except psutil.NoSuchProcess:
        pass  # already gone
    finally:
        if client.poll() is None:
            client.kill()


# ---- chat templates that fail ---------------------------------------------------------------------

TEMPLATES = {
    "raise": (
        "{{ raise_exception('Conversation roles must alternate user/assistant') }}",
        "refused the conversation: Conversation roles must alternate",
    ),
    "sandbox": ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "sandbox"),
    "syntax": ("{% for m in messages %}{{ m.content }", "not valid Jinja"),
}


@pytest.fixture(scope="module")
def templated_models(demo_model: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("templates")
    out = {}
    for name, (template, _) in TEMPLATES.items():
        path = folder / f"{name}.gguf"
        subprocess.run(
            [
                str(Path(sys.executable).parent / "gguf-new-metadata"),
                "--force",
                "--chat-template",
                template,
                demo_model,
                str(path),
            ],
            check=True,
            capture_output=True,
        )
        out[name] = str(path)
    return out


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_a_broken_chat_template_is_a_message_and_completion_still_works(
    engine: Engine, templated_models: dict[str, str], name: str
) -> None:
    engine.load(templated_models[name], SMALL).result(WAIT_S)
    exc = engine.generate(GenerationRequest("Hello", GREEDY, chat=True)).exception(WAIT_S)
    assert isinstance(exc, PromptError), exc
    message = str(exc)
    assert "chat template" in message and TEMPLATES[name][1] in message
    assert "Traceback" not in message and "completion mode" in message.lower()
    stats = engine.generate(GenerationRequest("The capital of France is", GREEDY)).result(WAIT_S)
    assert stats.stop_reason in (StopReason.LENGTH, StopReason.EOS) and stats.generated_tokens > 0
