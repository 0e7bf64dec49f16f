"""One engine, several askers: what runs and for whom, a cancel that stops only its owner's work,
and a refusal that says what holds the engine. With the real demo model in the real engine host."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator

import pytest

from app.engine.client import Engine, EngineActivity
from app.engine.types import EngineBusyError, GenerationRequest, OperationCancelled, StopReason, TokenEvent
from app.model.settings import LoadSettings, SamplingSettings

WAIT_S = 120
SMALL = dataclasses.replace(LoadSettings(), n_ctx=1024)
LONG = dataclasses.replace(SamplingSettings(), temperature=0.0, max_tokens=600)


@pytest.fixture()
def engine(demo_model: str) -> Iterator[Engine]:
    eng = Engine()
    eng.load(demo_model, SMALL).result(WAIT_S)
    yield eng
    eng.shutdown()


def test_a_cancel_stops_only_its_owners_work(engine: Engine) -> None:
    seen: list[EngineActivity | None] = []
    engine.add_activity_listener(lambda: seen.append(engine.activity))
    first_token = threading.Event()

    def on_token(event: TokenEvent) -> None:
        first_token.set()

    future = engine.generate(
        GenerationRequest("Once upon a time,", LONG), on_token, owner="console", label="generating text"
    )
    assert engine.activity == EngineActivity("console", "generating text")
    assert first_token.wait(WAIT_S)
    # Another asker's Stop, and a refused request, leave the generation running.
    assert engine.cancel("quality") is False
    with pytest.raises(EngineBusyError, match="busy generating text"):
        engine.run_exclusive(lambda cancel: None, owner="quality", label="measuring")
    assert not future.done()
    # Its owner's Stop ends it.
    assert engine.cancel("console") is True
    stats = future.result(WAIT_S)
    assert stats.stop_reason is StopReason.CANCELLED and stats.generated_tokens > 0
    assert engine.activity is None and engine.cancel("console") is False
    assert seen[0] == EngineActivity("console", "generating text") and seen[-1] is None


def test_a_cancelled_reload_leaves_the_engine_saying_nothing_is_loaded(
    engine: Engine, demo_model: str
) -> None:
    assert engine.loaded is not None
    future = engine.load(demo_model, dataclasses.replace(SMALL, n_ctx=2048), owner="panel")
    assert engine.cancel("panel")
    assert isinstance(future.exception(WAIT_S), OperationCancelled)
    # The host freed the old model before it saw the cancel: the engine says so, the host agrees.
    assert engine.loaded is None
    assert "No model is loaded" in str(engine.tokenize("x").exception(WAIT_S))
