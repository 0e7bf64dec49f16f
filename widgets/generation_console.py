"""The generation console: a multi-turn chat or a completion, streaming output, stats, tokenizer view."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import (
    QColor,
    QFont,
    QKeySequence,
    QShortcut,
    QTextBlockFormat,
    QTextCharFormat,
    QTextCursor,
)
from PySide6.QtWidgets import (
    QButtonGroup,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QRadioButton,
    QSplitter,
    QStackedWidget,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QTextBrowser,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.engine.types import (
    GenerationRequest,
    LoadResult,
    RunStats,
    StopReason,
    TokenEvent,
    TokenPiece,
    TokenStream,
    stats_line,
)
from app.llama.chat import ChatFileError, ChatTurn, Conversation
from widgets.token_reader import TokenReader

NO_MODEL_MESSAGE = "Load a model first. No model is loaded: load one in Model Config."
CHAT_FILE_FILTER = "LlamaScope conversation (*.json);;All files (*)"
# Turns are told apart by a coloured name and a tinted background, light enough for black text.
USER_COLOR, USER_BACKGROUND = "#1565c0", "#e8f0fe"
ASSISTANT_COLOR, ASSISTANT_BACKGROUND = "#2e7d32", "#f1f3f1"
STATS_COLOR = "#666666"


class GenerationConsole(QTabWidget):
    """Tab 1 generates text with the loaded model; tab 2 shows how the model tokenizes text."""

    generation_requested = Signal(str, bool, str)  # prompt, chat mode, system prompt
    stop_requested = Signal()
    tokenize_requested = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._model_ready = False
        self._busy = False
        self._generating = False
        self._taken = ""  # why another panel's work holds the engine; "" when it does not
        self._turns: list[ChatTurn] = []  # the finished turns of the chat
        self._pending: str | None = None  # the message being answered now (chat mode)
        self._reply = ""  # its reply so far
        self._reply_cursor: QTextCursor | None = None  # where streamed reply text goes in the view
        self._model_file = ""  # what the conversation file records: the model and settings last used
        self._settings: dict[str, Any] = {}
        # Appending (and re-laying out) the text per token would keep the GUI thread busy competing
        # with llama.cpp's threads for the CPU; new text is read and shown 20 times a second.
        self.token_reader = TokenReader(50, self._append_tokens, self)
        self.addTab(self._build_generate_tab(), "Generate")
        self.addTab(self._build_tokenizer_tab(), "Tokenizer")
        self._on_mode_changed(True)  # shows the chat's widgets and sets which buttons are on

    # ---- construction ------------------------------------------------------------------------
    def _build_generate_tab(self) -> QWidget:
        tab = QWidget()
        self.prompt_edit = QPlainTextEdit()
        self.prompt_edit.setObjectName("promptEdit")
        self.prompt_edit.setPlaceholderText("Type a message — Ctrl+Enter sends, Esc stops")
        self.chat_radio = QRadioButton("Chat")
        self.chat_radio.setToolTip(
            "A conversation: each message and reply stays in the model's memory, rendered with the "
            "model's own chat template (from its GGUF metadata); only new tokens are evaluated"
        )
        self.completion_radio = QRadioButton("Completion")
        self.completion_radio.setToolTip("Send the prompt as raw text; the model continues it")
        self.chat_radio.setChecked(True)
        mode_group = QButtonGroup(self)
        mode_group.addButton(self.chat_radio)
        mode_group.addButton(self.completion_radio)
        self.chat_radio.toggled.connect(self._on_mode_changed)

        # The system prompt: a multi-line box that folds away, so the message box keeps its height.
        self.system_toggle = QToolButton()
        self.system_toggle.setObjectName("systemToggle")
        self.system_toggle.setCheckable(True)
        self.system_toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.system_toggle.setArrowType(Qt.ArrowType.RightArrow)
        self.system_toggle.setAutoRaise(True)
        self.system_toggle.toggled.connect(self._on_system_toggled)
        self.system_edit = QPlainTextEdit()
        self.system_edit.setObjectName("systemEdit")
        self.system_edit.setPlaceholderText(
            "System prompt (optional): instructions the model reads before the conversation, "
            "e.g. “Answer in one sentence.” Empty: the template's default."
        )
        self.system_edit.setTabChangesFocus(True)
        self.system_edit.setMaximumHeight(self.fontMetrics().lineSpacing() * 4 + 10)
        self.system_edit.setVisible(False)
        self.system_edit.textChanged.connect(self._update_system_toggle)

        self.generate_button = QPushButton("Send")
        self.generate_button.setObjectName("generateButton")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop generating; text so far is kept (Esc)")
        self.clear_button = QPushButton("Clear")
        self.clear_button.setToolTip("Clear the output")
        self.new_chat_button = QPushButton("New chat")
        self.new_chat_button.setObjectName("newChatButton")
        self.new_chat_button.setToolTip("Start an empty conversation (the system prompt stays)")
        self.open_button = QPushButton("Open…")
        self.open_button.setToolTip("Open a conversation saved as JSON")
        self.save_button = QPushButton("Save…")
        self.save_button.setToolTip(
            "Save the conversation as JSON: system prompt, turns, model file, settings"
        )
        self.generate_button.clicked.connect(self._on_generate_clicked)
        self.stop_button.clicked.connect(self.stop_requested)
        self.clear_button.clicked.connect(self._on_clear_clicked)
        self.new_chat_button.clicked.connect(self.new_chat)
        self.open_button.clicked.connect(self._open_dialog)
        self.save_button.clicked.connect(self._save_dialog)
        QShortcut(QKeySequence("Ctrl+Return"), self, self._on_generate_clicked)
        QShortcut(QKeySequence("Ctrl+Enter"), self, self._on_generate_clicked)
        QShortcut(QKeySequence(Qt.Key.Key_Escape), self, self._on_escape)

        self.chat_view = QTextBrowser()
        self.chat_view.setObjectName("chatView")
        self.chat_view.setOpenLinks(False)
        self.chat_view.setPlaceholderText(
            "The conversation shows here: your messages and the model's replies."
        )
        self.output_view = QPlainTextEdit()
        self.output_view.setObjectName("outputView")
        self.output_view.setReadOnly(True)
        self.output_view.setPlaceholderText("The model's output streams here.")
        self.view_stack = QStackedWidget()
        self.view_stack.addWidget(self.chat_view)
        self.view_stack.addWidget(self.output_view)
        self.stats_label = QLabel("No generation yet.")
        self.stats_label.setObjectName("statsLabel")
        self.stats_label.setWordWrap(True)
        self.stats_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.stats_label.setToolTip(
            "Interactive statistics, wall clock, sampling included: TTFT = request to first token; "
            "prompt t/s = prompt tokens ÷ TTFT; generation t/s = tokens after the first ÷ their time. "
            "In a chat, “new” prompt tokens were evaluated, “reused” ones came from the KV cache."
        )

        mode_row = QHBoxLayout()
        mode_row.addWidget(self.chat_radio)
        mode_row.addWidget(self.completion_radio)
        mode_row.addSpacing(8)
        mode_row.addWidget(self.system_toggle)
        mode_row.addStretch(1)
        buttons = QHBoxLayout()
        for button in (self.generate_button, self.stop_button, self.clear_button):
            buttons.addWidget(button)
        buttons.addStretch(1)
        for button in (self.new_chat_button, self.open_button, self.save_button):
            buttons.addWidget(button)

        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.setSpacing(3)
        left_layout.addLayout(mode_row)
        left_layout.addWidget(self.system_edit)
        left_layout.addWidget(self.prompt_edit, 1)
        left_layout.addLayout(buttons)
        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        right_layout.setSpacing(3)
        right_layout.addWidget(self.view_stack, 1)
        right_layout.addWidget(self.stats_label)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(left)
        split.addWidget(right)
        split.setStretchFactor(0, 2)
        split.setStretchFactor(1, 3)
        split.setSizes([400, 600])  # the conversation gets the larger share (scaled to the width)
        layout = QVBoxLayout(tab)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(split)
        self._update_system_toggle()
        return tab

    def _build_tokenizer_tab(self) -> QWidget:
        tab = QWidget()
        self.tokenizer_input = QPlainTextEdit()
        self.tokenizer_input.setPlaceholderText("Paste text to see how the loaded model tokenizes it")
        self.tokenize_button = QPushButton("Tokenize")
        self.tokenize_button.setObjectName("tokenizeButton")
        self.tokenize_button.clicked.connect(self._on_tokenize_clicked)
        self.token_count_label = QLabel("Tokens: n/a")
        self.token_table = QTableWidget(0, 3)
        self.token_table.setHorizontalHeaderLabels(["#", "Token id", "Text"])
        self.token_table.verticalHeader().setVisible(False)
        self.token_table.horizontalHeader().setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        self.token_table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        mono = QFont("monospace")
        mono.setStyleHint(QFont.StyleHint.Monospace)
        self.token_table.setFont(mono)
        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addWidget(self.tokenizer_input)
        row = QHBoxLayout()
        row.addWidget(self.tokenize_button)
        row.addWidget(self.token_count_label, 1)
        left_layout.addLayout(row)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(left)
        split.addWidget(self.token_table)
        layout = QVBoxLayout(tab)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(split)
        return tab

    # ---- state from outside ------------------------------------------------------------------
    def set_model_ready(self, ready: bool) -> None:
        self._model_ready = ready
        if ready and self.stats_label.text() == NO_MODEL_MESSAGE:
            self._show_status("Model loaded: ready.")  # the hint is answered; do not leave it in red
        self._update_enabled()

    def set_busy(self, busy: bool) -> None:
        """This console's side of the engine (load, generate, benchmark…) runs or ended."""
        self._busy = busy
        if not busy:
            self._generating = False
        self._update_enabled()

    def set_engine_taken(self, reason: str) -> None:
        """Another panel's work holds the engine (`reason` says which), or not ("")."""
        self._taken = reason
        self._update_enabled()

    def _why_not(self) -> str:
        """Why a message cannot be sent now: the first thing in the way; "" when it can."""
        if self._taken:
            return self._taken
        if not self._model_ready:
            return NO_MODEL_MESSAGE
        if self._generating:
            return "Generating: Stop (Esc) ends it."
        if self._busy:
            return "The engine is busy with a load, a benchmark or a tuning: wait for it, or stop it there."
        return ""

    def _update_enabled(self) -> None:
        why = self._why_not()
        self.generate_button.setEnabled(not why)
        self.tokenize_button.setEnabled(not why)
        self.stop_button.setEnabled(self._generating)
        # The conversation is not swapped under a reply that is still streaming.
        for widget in (self.new_chat_button, self.open_button, self.chat_radio, self.completion_radio):
            widget.setEnabled(not self._generating)
        self.save_button.setEnabled(not self._generating and bool(self._turns))
        # A disabled button says why.
        chat = self.chat_radio.isChecked()
        self.generate_button.setToolTip(
            why
            or ("Send the message with the loaded model (Ctrl+Enter)" if chat else "Generate (Ctrl+Enter)")
        )
        self.tokenize_button.setToolTip(
            why or "Tokenize with the loaded model's vocabulary (special tokens parsed)"
        )

    # ---- the conversation --------------------------------------------------------------------
    def conversation(self) -> Conversation:
        """The chat as it stands (finished turns only), with the model and settings last used."""
        return Conversation(
            self.system_edit.toPlainText(), tuple(self._turns), self._model_file, dict(self._settings)
        )

    def chat_request(self, request: GenerationRequest, loaded: LoadResult | None) -> GenerationRequest:
        """The request for the message just sent: in chat mode with the earlier turns, keeping the
        KV cache between turns. Notes the model file and settings for the conversation file."""
        if loaded is not None:
            self._model_file = os.path.basename(loaded.model.path)
            self._settings = {"load": loaded.settings.to_dict(), "sampling": request.sampling.to_dict()}
        if not request.chat:
            return request
        history = tuple(ChatTurn(t.role, t.content) for t in self._turns)
        return dataclasses.replace(request, history=history, reuse_cache=True)

    def new_chat(self) -> None:
        if self._generating:
            return
        self._turns = []
        self._model_file = ""
        self._settings = {}
        self._render_chat()
        self._show_status("New chat.")
        self._update_enabled()

    def save_conversation(self, path: str) -> bool:
        """Write the conversation to `path`; a failure is said in the status line. Returns success."""
        try:
            self.conversation().save(path)
        except ChatFileError as exc:
            self._show_status(f"Not saved to {os.path.basename(path)}: {exc}.", error=True)
            return False
        self._show_status(f"Saved {len(self._turns)} turns to {os.path.basename(path)}.")
        return True

    def load_conversation(self, path: str) -> bool:
        """Replace the conversation by the one in `path`. A file that is not one leaves the current
        conversation as it was and says why. Returns success."""
        if self._generating:
            return False
        try:
            conv = Conversation.load(path)
        except ChatFileError as exc:
            self._show_status(
                f"Could not open {os.path.basename(path)}: {exc}. The current conversation is unchanged.",
                error=True,
            )
            return False
        self._turns = list(conv.turns)
        self._model_file, self._settings = conv.model_file, dict(conv.settings)
        self.system_edit.setPlainText(conv.system_prompt)
        self.chat_radio.setChecked(True)
        self._render_chat()
        made_by = f" (saved with {conv.model_file})" if conv.model_file else ""
        self._show_status(
            f"Opened {os.path.basename(path)}: {len(conv.turns)} turns{made_by}. "
            "The next message continues it with the loaded model."
        )
        self._update_enabled()
        return True

    def _open_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open conversation", "", CHAT_FILE_FILTER)
        if path:
            self.load_conversation(path)

    def _save_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save conversation", "chat.json", CHAT_FILE_FILTER)
        if path:
            self.save_conversation(path)

    def _render_chat(self) -> None:
        """Draw every finished turn, then the message being answered and the reply so far."""
        view = self.chat_view
        view.clear()
        cursor = QTextCursor(view.document())
        first = True
        for turn in self._turns:
            self._insert_turn(cursor, turn.role, turn.content, turn.stats, first)
            first = False
        if self._pending is not None:
            self._insert_turn(cursor, "user", self._pending, "", first)
            self._insert_turn(cursor, "assistant", self._reply, "", False)
            self._reply_cursor = cursor  # streamed text goes on at the end of the reply
        else:
            self._reply_cursor = None
        view.moveCursor(QTextCursor.MoveOperation.End)
        view.ensureCursorVisible()

    def _insert_turn(self, cursor: QTextCursor, role: str, content: str, stats: str, first: bool) -> None:
        user = role == "user"
        head = QTextBlockFormat()
        head.setTopMargin(0 if first else 8)
        head_chars = QTextCharFormat()
        head_chars.setFontWeight(QFont.Weight.Bold)
        head_chars.setForeground(QColor(USER_COLOR if user else ASSISTANT_COLOR))
        if not first:
            cursor.insertBlock(head, head_chars)
        else:
            cursor.setBlockFormat(head)
            cursor.setCharFormat(head_chars)
        cursor.insertText("You" if user else "Assistant", head_chars)
        body = QTextBlockFormat()
        body.setBackground(QColor(USER_BACKGROUND if user else ASSISTANT_BACKGROUND))
        body.setLeftMargin(6)
        body_chars = QTextCharFormat()
        cursor.insertBlock(body, body_chars)
        cursor.insertText(content, body_chars)
        if stats:
            small = QTextCharFormat()
            small.setForeground(QColor(STATS_COLOR))
            small.setFontPointSize(max(6.0, self.font().pointSizeF() - 1))
            cursor.insertBlock(QTextBlockFormat(), small)
            cursor.insertText(stats, small)

    def _show_status(self, text: str, *, error: bool = False) -> None:
        self.stats_label.setText(text)
        self.stats_label.setStyleSheet("color: #c62828" if error else "")

    # ---- slots -------------------------------------------------------------------------------
    def _on_mode_changed(self, _checked: bool) -> None:
        chat = self.chat_radio.isChecked()
        self.view_stack.setCurrentWidget(self.chat_view if chat else self.output_view)
        self.generate_button.setText("Send" if chat else "Generate")
        self.prompt_edit.setPlaceholderText(
            "Type a message — Ctrl+Enter sends, Esc stops"
            if chat
            else "Type a prompt — the model continues it; Ctrl+Enter generates, Esc stops"
        )
        self.system_toggle.setEnabled(chat)
        self.system_edit.setVisible(chat and self.system_toggle.isChecked())
        self.clear_button.setVisible(not chat)
        for button in (self.new_chat_button, self.open_button, self.save_button):
            button.setVisible(chat)
        self._update_enabled()

    def _on_system_toggled(self, shown: bool) -> None:
        self.system_edit.setVisible(shown and self.chat_radio.isChecked())
        self._update_system_toggle()
        if shown:
            self.system_edit.setFocus()

    def _update_system_toggle(self) -> None:
        shown = self.system_toggle.isChecked()
        self.system_toggle.setArrowType(Qt.ArrowType.DownArrow if shown else Qt.ArrowType.RightArrow)
        text = self.system_edit.toPlainText().strip()
        if shown or not text:
            self.system_toggle.setText("System prompt")
        else:  # folded: say what it holds, as much as fits
            first_line = text.splitlines()[0]
            self.system_toggle.setText(f"System prompt: {first_line[:60]}{'…' if len(text) > 60 else ''}")
        self.system_toggle.setToolTip(text or "No system prompt: the chat template's default applies")

    def _on_generate_clicked(self) -> None:
        why = self._why_not()
        if why:
            if not self._generating:  # Ctrl+Enter on a button that is off: say why, visibly
                self._show_status(why, error=True)
            return
        self._generating = True
        chat = self.chat_radio.isChecked()
        prompt = self.prompt_edit.toPlainText()
        if chat:
            self._pending, self._reply = prompt, ""
            self.prompt_edit.clear()
            self._render_chat()
        else:
            self.output_view.clear()
        self._show_status("Generating…")
        self._update_enabled()
        self.generation_requested.emit(prompt, chat, self.system_edit.toPlainText().strip() if chat else "")

    def _on_escape(self) -> None:
        if self._generating:
            self.stop_requested.emit()

    def _on_clear_clicked(self) -> None:
        self.output_view.clear()

    def _on_tokenize_clicked(self) -> None:
        if self.tokenize_button.isEnabled():
            self.tokenize_requested.emit(self.tokenizer_input.toPlainText())

    def on_generation_started(self, stream: TokenStream) -> None:
        self.token_reader.start(stream)

    def _append_tokens(self, events: list[TokenEvent]) -> None:
        text = "".join(event.text for event in events)
        if not text:
            return
        if self._pending is not None and self._reply_cursor is not None:
            self._reply += text
            bar = self.chat_view.verticalScrollBar()
            at_bottom = bar.value() >= bar.maximum() - 4
            self._reply_cursor.insertText(text)
            if at_bottom:  # follow the reply, unless the user scrolled up to read
                bar.setValue(bar.maximum())
            return
        cursor = self.output_view.textCursor()
        cursor.movePosition(QTextCursor.MoveOperation.End)
        cursor.insertText(text)
        self.output_view.setTextCursor(cursor)

    def on_generation_finished(self, stats: RunStats) -> None:
        self.token_reader.finish()
        self._generating = False
        line = stats_line(stats)
        if self._pending is not None:
            if stats.text:
                # A stopped or cut reply is kept as the turn: it is what the model's memory holds.
                self._turns += [ChatTurn("user", self._pending), ChatTurn("assistant", stats.text, line)]
            else:  # nothing came: the message goes back to the box rather than into the chat
                self._restore_prompt(self._pending)
            self._pending = None
            self._render_chat()
        # stats_line carries llama.cpp's error when the run ended in one; the text so far stays.
        self._show_status(line, error=stats.stop_reason is StopReason.ERROR)
        self._update_enabled()

    def on_generation_failed(self, message: str) -> None:
        self.token_reader.finish()
        self._generating = False
        if self._pending is not None:
            self._restore_prompt(self._pending)  # the message is not lost: it is back in the box
            self._pending = None
            self._render_chat()
        self._show_status(f"Not generated: {message}", error=True)
        self._update_enabled()

    def _restore_prompt(self, text: str) -> None:
        if not self.prompt_edit.toPlainText().strip():
            self.prompt_edit.setPlainText(text)
        elif text.strip():
            self.prompt_edit.setPlainText(text + "\n" + self.prompt_edit.toPlainText())

    def on_tokenized(self, pieces: list[TokenPiece]) -> None:
        self.token_table.setRowCount(len(pieces))
        for row, piece in enumerate(pieces):
            for col, value in enumerate((str(row), str(piece.token_id), repr(piece.text)[1:-1])):
                self.token_table.setItem(row, col, QTableWidgetItem(value))
        self.token_count_label.setText(f"Tokens: {len(pieces)}")
