"""The generation console: prompt, chat/completion toggle, streaming output, stats, tokenizer view."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFont, QKeySequence, QShortcut, QTextCursor
from PySide6.QtWidgets import (
    QButtonGroup,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QRadioButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app.engine.types import RunStats, StopReason, TokenEvent, TokenPiece, TokenStream, stats_line
from widgets.token_reader import TokenReader


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
        # Appending (and re-laying out) the text per token would keep the GUI thread busy competing
        # with llama.cpp's threads for the CPU; new text is read and shown 20 times a second.
        self.token_reader = TokenReader(50, self._append_tokens, self)
        self.addTab(self._build_generate_tab(), "Generate")
        self.addTab(self._build_tokenizer_tab(), "Tokenizer")
        self._update_enabled()

    # ---- construction ------------------------------------------------------------------------
    def _build_generate_tab(self) -> QWidget:
        tab = QWidget()
        self.prompt_edit = QPlainTextEdit()
        self.prompt_edit.setObjectName("promptEdit")
        self.prompt_edit.setPlaceholderText("Type a prompt — Ctrl+Enter generates, Esc stops")
        self.system_edit = QLineEdit()
        self.system_edit.setPlaceholderText("System prompt (chat mode, optional)")
        self.chat_radio = QRadioButton("Chat")
        self.chat_radio.setToolTip(
            "Wrap the prompt in the model's own chat template (from its GGUF metadata)"
        )
        self.completion_radio = QRadioButton("Completion")
        self.completion_radio.setToolTip("Send the prompt as raw text; the model continues it")
        self.chat_radio.setChecked(True)
        mode_group = QButtonGroup(self)
        mode_group.addButton(self.chat_radio)
        mode_group.addButton(self.completion_radio)
        self.chat_radio.toggled.connect(self.system_edit.setEnabled)

        self.generate_button = QPushButton("Generate")
        self.generate_button.setObjectName("generateButton")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop generating; text so far is kept (Esc)")
        self.clear_button = QPushButton("Clear")
        self.clear_button.setToolTip("Clear the output")
        self.generate_button.clicked.connect(self._on_generate_clicked)
        self.stop_button.clicked.connect(self.stop_requested)
        self.clear_button.clicked.connect(self._on_clear_clicked)
        QShortcut(QKeySequence("Ctrl+Return"), self, self._on_generate_clicked)
        QShortcut(QKeySequence("Ctrl+Enter"), self, self._on_generate_clicked)
        QShortcut(QKeySequence(Qt.Key.Key_Escape), self, self._on_escape)

        self.output_view = QPlainTextEdit()
        self.output_view.setObjectName("outputView")
        self.output_view.setReadOnly(True)
        self.output_view.setPlaceholderText("The model's output streams here.")
        self.stats_label = QLabel("No generation yet.")
        self.stats_label.setObjectName("statsLabel")
        self.stats_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.stats_label.setToolTip(
            "Interactive statistics, wall clock, sampling included: TTFT = request to first token; "
            "prompt t/s = prompt tokens ÷ TTFT; generation t/s = tokens after the first ÷ their time"
        )

        controls = QHBoxLayout()
        controls.addWidget(self.chat_radio)
        controls.addWidget(self.completion_radio)
        controls.addWidget(self.system_edit, 1)
        controls.addWidget(self.generate_button)
        controls.addWidget(self.stop_button)
        controls.addWidget(self.clear_button)

        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addWidget(self.prompt_edit)
        left_layout.addLayout(controls)
        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        right_layout.addWidget(self.output_view)
        right_layout.addWidget(self.stats_label)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(left)
        split.addWidget(right)
        split.setStretchFactor(1, 2)
        layout = QVBoxLayout(tab)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(split)
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

    def _update_enabled(self) -> None:
        can_start = self._model_ready and not self._busy and not self._taken
        self.generate_button.setEnabled(can_start)
        self.tokenize_button.setEnabled(can_start)
        self.stop_button.setEnabled(self._generating)
        # A disabled button says why: the first thing in the way.
        if self._taken:
            why = self._taken
        elif not self._model_ready:
            why = "No model is loaded: load one in Model Config first."
        elif self._generating:
            why = "Generating: Stop (Esc) ends it."
        elif self._busy:
            why = "The engine is busy with a load, a benchmark or a tuning: wait for it, or stop it there."
        else:
            why = ""
        self.generate_button.setToolTip(why or "Generate with the loaded model (Ctrl+Enter)")
        self.tokenize_button.setToolTip(
            why or "Tokenize with the loaded model's vocabulary (special tokens parsed)"
        )

    # ---- slots -------------------------------------------------------------------------------
    def _on_generate_clicked(self) -> None:
        if not self.generate_button.isEnabled():
            return
        self._generating = True
        self.output_view.clear()
        self.stats_label.setText("Generating…")
        self.stats_label.setStyleSheet("")
        self._update_enabled()
        self.generation_requested.emit(
            self.prompt_edit.toPlainText(), self.chat_radio.isChecked(), self.system_edit.text()
        )

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
        cursor = self.output_view.textCursor()
        cursor.movePosition(QTextCursor.MoveOperation.End)
        cursor.insertText(text)
        self.output_view.setTextCursor(cursor)

    def on_generation_finished(self, stats: RunStats) -> None:
        self.token_reader.finish()
        self._generating = False
        # stats_line carries llama.cpp's error when the run ended in one; the text so far stays.
        self.stats_label.setText(stats_line(stats))
        self.stats_label.setStyleSheet("color: #c62828" if stats.stop_reason is StopReason.ERROR else "")
        self._update_enabled()

    def on_generation_failed(self, message: str) -> None:
        self.token_reader.finish()
        self._generating = False
        self.stats_label.setText(f"Not generated: {message}")
        self.stats_label.setStyleSheet("color: #c62828")
        self._update_enabled()

    def on_tokenized(self, pieces: list[TokenPiece]) -> None:
        self.token_table.setRowCount(len(pieces))
        for row, piece in enumerate(pieces):
            for col, value in enumerate((str(row), str(piece.token_id), repr(piece.text)[1:-1])):
                self.token_table.setItem(row, col, QTableWidgetItem(value))
        self.token_count_label.setText(f"Tokens: {len(pieces)}")
