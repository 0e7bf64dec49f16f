"""The console's chat: three turns through the widgets with the real demo model in the real engine
host, the prompt cleared on send, "Load a model first", saving and opening a conversation file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import QSettings, Qt
from PySide6.QtWidgets import QDoubleSpinBox, QSpinBox
from pytestqt.qtbot import QtBot

from app.bench.history import HistoryStore
from app.engine.types import GenerationRequest, RunStats, StopReason, TokenStream
from app.llama.chat import ChatTurn
from app.model.settings import SamplingSettings
from ui.main_window import MainWindow
from widgets.generation_console import GenerationConsole

WAIT_MS = 300_000  # generous for a shared machine; a hang still fails
SYSTEM = "You are a helpful assistant. Answer in one short sentence."
MESSAGES = (
    "What is the capital of France?",
    "What language do people speak there?",
    "Name a famous museum there.",
)


@pytest.fixture()
def window(qtbot: QtBot, tmp_path: Path, demo_model: str) -> Iterator[MainWindow]:
    settings = QSettings(str(tmp_path / "llamascope.ini"), QSettings.Format.IniFormat)
    win = MainWindow(settings=settings, history=HistoryStore(str(tmp_path / "history.sqlite3")))
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: demo_model in win.model_panel._infos, timeout=WAIT_MS)
    yield win
    win.close()


def _field(
    window: MainWindow, name: str, kind: type[QSpinBox] | type[QDoubleSpinBox]
) -> QSpinBox | QDoubleSpinBox:
    editor = window.model_panel.findChild(kind, f"field_{name}")
    assert editor is not None
    return editor


def _load(qtbot: QtBot, window: MainWindow) -> None:
    _field(window, "n_ctx", QSpinBox).setValue(1024)
    with qtbot.waitSignal(window.bridge.load_finished, timeout=WAIT_MS):
        qtbot.mouseClick(window.model_panel.load_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.console.generate_button.isEnabled(), timeout=WAIT_MS)


def _send(qtbot: QtBot, window: MainWindow, message: str) -> RunStats:
    console = window.console
    console.prompt_edit.setPlainText(message)
    with qtbot.waitSignal(window.bridge.generation_finished, timeout=WAIT_MS) as finished:
        qtbot.mouseClick(console.generate_button, Qt.MouseButton.LeftButton)
        assert console.prompt_edit.toPlainText() == ""  # cleared as soon as it is sent
        assert message in console.chat_view.toPlainText()  # the message shows while the reply streams
    stats: RunStats = finished.args[0]
    return stats


def test_three_turns_reuse_the_cache_and_save_and_open_the_conversation(
    qtbot: QtBot, window: MainWindow, tmp_path: Path, demo_model: str
) -> None:
    console = window.console
    _load(qtbot, window)
    _field(window, "max_tokens", QSpinBox).setValue(40)
    _field(window, "temperature", QDoubleSpinBox).setValue(0.0)
    assert console.chat_radio.isChecked()
    console.system_toggle.setChecked(True)
    assert console.system_edit.isVisible()
    console.system_edit.setPlainText(SYSTEM)

    replies: list[RunStats] = []
    for n, message in enumerate(MESSAGES, 1):
        stats = _send(qtbot, window, message)
        assert stats.stop_reason in (StopReason.EOS, StopReason.LENGTH) and stats.text
        replies.append(stats)
        assert stats.prompt_tokens_reused is not None
        if n > 1:
            # The earlier turns were in the request, and the engine host kept them in its KV cache.
            assert stats.prompt_tokens_reused > replies[0].prompt_tokens - 2
            assert stats.prompt_tokens < stats.prompt_tokens_reused
            assert f"{stats.prompt_tokens} new tokens ({stats.prompt_tokens_reused} reused)" in (
                console.stats_label.text()
            )
        turns = console.conversation().turns
        assert [t.role for t in turns] == ["user", "assistant"] * n
        assert turns[-1].content == stats.text and "reused" in turns[-1].stats
        view = console.chat_view.toPlainText()
        assert view.count("You") >= n and view.count("Assistant") >= n and stats.text.strip() in view

    # The third reply is what the model answers when it evaluates the whole conversation afresh.
    history = tuple(ChatTurn(t.role, t.content) for t in console.conversation().turns[:4])
    fresh = window.bridge.engine.generate(
        GenerationRequest(
            MESSAGES[2], SamplingSettings(temperature=0.0, max_tokens=40), True, SYSTEM, history
        )
    ).result(WAIT_MS / 1000)
    assert fresh.text == replies[2].text and fresh.prompt_tokens > replies[2].prompt_tokens
    qtbot.waitUntil(lambda: console.generate_button.isEnabled(), timeout=WAIT_MS)

    # Stop in the middle of a reply: what came is kept as the turn, and the chat goes on from it.
    _field(window, "max_tokens", QSpinBox).setValue(400)
    streams: list[TokenStream] = []
    window.bridge.generation_started.connect(streams.append)
    console.prompt_edit.setPlainText("Tell me a long story about a dragon.")
    with qtbot.waitSignal(window.bridge.generation_finished, timeout=WAIT_MS) as finished:
        qtbot.mouseClick(console.generate_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: bool(streams) and len(streams[-1]) >= 2, timeout=WAIT_MS)
        assert not console.completion_radio.isEnabled() and not console.new_chat_button.isEnabled()
        qtbot.mouseClick(console.stop_button, Qt.MouseButton.LeftButton)
    stopped: RunStats = finished.args[0]
    assert stopped.stop_reason is StopReason.CANCELLED and stopped.text
    turns = console.conversation().turns
    assert len(turns) == 8 and turns[-1].content == stopped.text and "stop: cancelled" in turns[-1].stats
    _field(window, "max_tokens", QSpinBox).setValue(40)

    # Save, start a new chat, open it again: the same turns and system prompt.
    saved = console.conversation()
    path = str(tmp_path / "chat.json")
    assert console.save_conversation(path)
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    assert data["format"] == "llamascope-chat" and data["version"] == 1
    assert data["model_file"] == Path(demo_model).name
    assert data["settings"]["sampling"]["max_tokens"] == 400 and data["settings"]["load"]["n_ctx"] == 1024
    assert data["system_prompt"] == SYSTEM and len(data["turns"]) == 8
    qtbot.mouseClick(console.new_chat_button, Qt.MouseButton.LeftButton)
    assert console.conversation().turns == () and MESSAGES[0] not in console.chat_view.toPlainText()
    assert console.load_conversation(path)
    assert console.conversation() == saved
    assert MESSAGES[2] in console.chat_view.toPlainText()
    assert "Opened chat.json: 8 turns" in console.stats_label.text()

    # The opened chat goes on. New chat and Open do not touch the engine, and this is the
    # conversation the cache still holds (the stopped reply included): it is reused.
    stats = _send(qtbot, window, "Thank you!")
    assert len(console.conversation().turns) == 10 and stats.text
    assert stats.prompt_tokens_reused is not None and stats.prompt_tokens_reused > stats.prompt_tokens


def test_sending_without_a_model_says_load_a_model_first(qtbot: QtBot, window: MainWindow) -> None:
    console = window.console
    console.activateWindow()
    console.prompt_edit.setFocus()
    console.prompt_edit.setPlainText("Hello?")
    assert not console.generate_button.isEnabled()
    qtbot.keyClick(console.prompt_edit, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    assert "Load a model first" in console.stats_label.text()
    assert console.stats_label.isVisible() and "c62828" in console.stats_label.styleSheet()
    assert console.prompt_edit.toPlainText() == "Hello?"  # nothing of the user's is lost
    assert console.conversation().turns == ()
    console.set_model_ready(True)  # a load answers the hint: it does not stay up in red
    assert "Load a model first" not in console.stats_label.text() and console.stats_label.styleSheet() == ""


def test_a_bad_conversation_file_gives_a_message_and_keeps_the_chat(qtbot: QtBot, tmp_path: Path) -> None:
    console = GenerationConsole()
    qtbot.addWidget(console)
    good = tmp_path / "good.json"
    good.write_text(
        json.dumps(
            {
                "format": "llamascope-chat",
                "version": 1,
                "system_prompt": "Be brief.",
                "turns": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
            }
        ),
        encoding="utf-8",
    )
    assert console.load_conversation(str(good))
    before = console.conversation()
    assert [t.content for t in before.turns] == ["Hi", "Hello!"] and before.system_prompt == "Be brief."
    for name, text, says in (
        ("broken.json", '{"format": "llamascope-chat", "version": 1, "turns": [', "not valid JSON"),
        ("other.json", '{"messages": [{"role": "user", "content": "hi"}]}', "not a LlamaScope conversation"),
        ("newer.json", '{"format": "llamascope-chat", "version": 7, "turns": []}', "newer LlamaScope"),
    ):
        (tmp_path / name).write_text(text, encoding="utf-8")
        assert not console.load_conversation(str(tmp_path / name))
        assert (
            f"Could not open {name}: it" in console.stats_label.text() and says in console.stats_label.text()
        )
        assert "c62828" in console.stats_label.styleSheet()
        assert console.conversation() == before  # the chat on screen is untouched
    assert not console.load_conversation(str(tmp_path / "missing.json"))
    assert "could not be read" in console.stats_label.text()
    # A folder that cannot be written to: a message, and the chat stays.
    assert not console.save_conversation(str(tmp_path / "no-such-folder" / "chat.json"))
    assert "Not saved to chat.json" in console.stats_label.text()
    assert console.conversation() == before


def test_completion_mode_keeps_its_output_view(qtbot: QtBot) -> None:
    console = GenerationConsole()
    qtbot.addWidget(console)
    console.show()
    console.completion_radio.setChecked(True)
    assert console.view_stack.currentWidget() is console.output_view
    assert console.generate_button.text() == "Generate" and not console.new_chat_button.isVisible()
    assert not console.system_toggle.isEnabled()
    console.chat_radio.setChecked(True)
    assert console.view_stack.currentWidget() is console.chat_view
    assert console.generate_button.text() == "Send" and console.new_chat_button.isVisible()
