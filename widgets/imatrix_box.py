"""The Quantization panel's "Importance matrix" box: compute one on a calibration text, or choose one.

It asks (`compute_requested`, an ImatrixRequest; `cancel_requested`) and shows what ui.advice_bridge
reports. The matrix in use (`matrix_changed`: a path, or None) is what the quantize queue passes to
the quantizer and what makes the i-quants and Q2_K_S selectable.
"""

from __future__ import annotations

import os

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from app.engine.imatrix_job import ImatrixRequest
from app.quality.eval_types import ChunkProgress
from app.quant.advisor import free_path
from app.quant.imatrix_compute import DEFAULT_CALIBRATION, ImatrixResult
from app.quant.plan import default_output_folder, output_folder_reason
from widgets.job_row import add_job_row, show_done, show_starting, show_stopped

_TEXT_TIP = (
    f"The text the matrix is computed on. “{DEFAULT_CALIBRATION}” is the calibration text LlamaScope "
    "ships: Python 3.11 standard-library docstrings (PSF licence, about 13,000 tokens), distinct from "
    "every evaluation text, so a matrix never flatters the text that judges it. Or choose a UTF-8 text "
    "file of your own."
)
_CTX_TIP = (
    "Chunk size in tokens (llama-imatrix's -c): the text is cut into chunks of this many tokens and "
    "each is decoded on its own. The text needs at least twice this many tokens."
)
_CHUNKS_TIP = (
    "How many chunks to use (llama-imatrix's --chunks); 'all' = the whole text. More chunks: a matrix "
    "that represents the text better, and a longer computation."
)
_USE_TIP = (
    "Quantize with this matrix: llama.cpp weighs each weight's rounding by it (K-quants, i-quants, "
    "Q4_0…Q5_1), and the i-quants and Q2_K_S become available"
)


class ImatrixBox(QWidget):
    compute_requested = Signal(object)  # ImatrixRequest
    cancel_requested = Signal()
    matrix_changed = Signal(object)  # str | None: the matrix the quantizer is to use

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._source: str | None = None
        self._busy = False
        self._taken = ""
        self._matrix: str | None = None
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        form = QFormLayout()
        self.text_edit = QLineEdit(DEFAULT_CALIBRATION)
        self.text_edit.setObjectName("imatrixText")
        self.text_edit.setToolTip(_TEXT_TIP)
        browse_text = QPushButton("Browse…")
        browse_text.setToolTip("Choose a calibration text file of your own")
        browse_text.clicked.connect(self._on_browse_text)
        text_row = QHBoxLayout()
        text_row.addWidget(self.text_edit, 1)
        text_row.addWidget(browse_text)
        self.ctx_spin = QSpinBox()
        self.ctx_spin.setRange(16, 32768)
        self.ctx_spin.setSingleStep(64)
        self.ctx_spin.setValue(512)
        self.ctx_spin.setToolTip(_CTX_TIP)
        self.chunks_spin = QSpinBox()
        self.chunks_spin.setRange(0, 100000)
        self.chunks_spin.setValue(0)
        self.chunks_spin.setSpecialValueText("all")
        self.chunks_spin.setToolTip(_CHUNKS_TIP)
        sizes = QHBoxLayout()
        sizes.addWidget(self.ctx_spin, 1)
        sizes.addWidget(QLabel("Chunks"))
        sizes.addWidget(self.chunks_spin, 1)
        # Under the field, not a row of its own: a wrapped label in a form row leaves a tall gap.
        self.text_note = QLabel("")
        self.text_note.setEnabled(False)
        text_col = QVBoxLayout()
        text_col.setSpacing(0)
        text_col.addLayout(text_row)
        text_col.addWidget(self.text_note)
        form.addRow("Calibration", text_col)
        form.addRow("Context", sizes)
        layout.addLayout(form)
        self.compute_button = QPushButton("Compute")
        self.compute_button.setObjectName("imatrixComputeButton")
        self.compute_button.setToolTip(
            "Compute an importance matrix for the selected model on the calibration text "
            "(in the engine host, as llama-imatrix does)"
        )
        self.compute_button.clicked.connect(self.request_compute)
        job = add_job_row(
            layout,
            self.compute_button,
            prefix="imatrix",
            cancel_tip="Stop the computation; no file is written",
        )
        self.progress, self.cancel_button, self.status = job.progress, job.cancel_button, job.status
        self.cancel_button.clicked.connect(self.cancel_requested)
        self.status.setVisible(False)  # shown with its first message: an empty line would leave a gap
        self.matrix_edit = QLineEdit()
        self.matrix_edit.setObjectName("imatrixPath")
        self.matrix_edit.setPlaceholderText("no matrix: compute one, or Browse… for a .gguf / .dat")
        self.matrix_edit.setToolTip("The importance matrix file (llama.cpp's GGUF or legacy .dat format)")
        self.matrix_edit.editingFinished.connect(self._emit_matrix)
        browse_matrix = QPushButton("Browse…")
        browse_matrix.setToolTip("Use an existing importance matrix (.gguf or legacy .dat)")
        browse_matrix.clicked.connect(self._on_browse_matrix)
        self.use_check = QCheckBox("Use")
        self.use_check.setObjectName("imatrixUse")
        self.use_check.setToolTip(_USE_TIP)
        self.use_check.toggled.connect(self._emit_matrix)
        matrix_row = QHBoxLayout()
        matrix_row.addWidget(self.use_check)
        matrix_row.addWidget(self.matrix_edit, 1)
        matrix_row.addWidget(browse_matrix)
        layout.addLayout(matrix_row)
        self.text_edit.textChanged.connect(self._show_text_note)
        self._show_text_note()
        self._update_buttons()

    # ---- state from outside ------------------------------------------------------------------
    def set_source(self, path: str | None) -> None:
        self._source = path
        self._update_buttons()

    def set_busy(self, busy: bool) -> None:
        self._busy = busy
        self._update_buttons()

    def set_engine_taken(self, reason: str) -> None:
        """Other work holds the engine (`reason` says which), or not (""): the button is off and
        says why, rather than pressed into the engine's "busy" refusal."""
        self._taken = reason
        self._update_buttons()

    @property
    def matrix(self) -> str | None:
        return self._matrix

    def natural_output_path(self) -> str | None:
        """MODEL.imatrix.gguf beside the model, or in the user's models folder when the model's
        folder is not writable or belongs to an installed package (the demo model's)."""
        if self._source is None:
            return None
        stem = os.path.splitext(os.path.basename(self._source))[0]
        return os.path.join(default_output_folder(self._source), f"{stem}.imatrix.gguf")

    def output_path(self) -> str | None:
        """Where a computed matrix goes: the natural name, or the first free MODEL-2.imatrix.gguf,
        MODEL-3… when a file is there already (never replaced: it may be a matrix the user keeps)."""
        natural = self.natural_output_path()
        return free_path(natural) if natural is not None else None

    def _update_buttons(self) -> None:
        self.compute_button.setEnabled(self._source is not None and not self._busy and not self._taken)
        self.cancel_button.setEnabled(self._busy)
        out = self.output_path()
        if self._taken and not self._busy:
            self.compute_button.setToolTip(self._taken)
        elif out is not None:
            reason = output_folder_reason(self._source or "")
            self.compute_button.setToolTip(
                f"Compute an importance matrix for the selected model on the calibration text (in the "
                f"engine host, as llama-imatrix does); it is written to {out}"
                + (f", because {reason}" if reason else "")
            )

    def _say(self, text: str) -> None:
        self.status.setText(text)
        self.status.setVisible(bool(text))

    def _show_text_note(self) -> None:
        text = self.text_edit.text().strip()
        self.text_note.setText(
            "the shipped calibration text (stdlib docstrings)" if text in ("", DEFAULT_CALIBRATION) else ""
        )
        self.text_note.setVisible(bool(self.text_note.text()))

    # ---- requests ----------------------------------------------------------------------------
    def request_compute(self) -> None:
        output = self.output_path()
        if self._source is None or output is None:
            self._say("✗ Select a model in Model Config first.")
            return
        text = self.text_edit.text().strip() or DEFAULT_CALIBRATION
        if text != DEFAULT_CALIBRATION and not os.path.isfile(text):
            self._say(f"✗ Calibration text not found: {text}. Choose a text file or use “calibration”.")
            return
        chunks = self.chunks_spin.value()
        request = ImatrixRequest(
            model_path=self._source,
            text_source=text,
            output=output,
            n_ctx=self.ctx_spin.value(),
            n_chunks=chunks or None,
        )
        taken = (
            ""
            if output == self.natural_output_path()
            else (
                f" {os.path.basename(self.natural_output_path() or '')} exists and is kept: writing "
                f"{os.path.basename(output)}."
            )
        )
        self._say(f"Computing an importance matrix for {os.path.basename(self._source)}…{taken}")
        show_starting(self.progress)
        self.compute_requested.emit(request)

    def _emit_matrix(self) -> None:
        path = self.matrix_edit.text().strip()
        matrix = path if self.use_check.isChecked() and path else None
        if matrix is not None and not os.path.isfile(matrix):
            self._say(f"✗ No importance matrix at {matrix}: compute one or choose a file.")
            matrix = None
        if matrix != self._matrix:
            self._matrix = matrix
            self.matrix_changed.emit(matrix)

    def set_matrix(self, path: str | None) -> None:
        """Use `path` (None: none)."""
        blocked = self.use_check.blockSignals(True)
        self.matrix_edit.setText(path or "")
        self.use_check.setChecked(path is not None)
        self.use_check.blockSignals(blocked)
        self._emit_matrix()

    # ---- results -----------------------------------------------------------------------------
    def on_progress(self, p: ChunkProgress) -> None:
        self.progress.setRange(0, max(p.n_chunks, 1))
        self.progress.setValue(p.chunk)
        self.progress.setFormat(f"chunk {p.chunk} of {p.n_chunks} · PPL {p.ppl:.1f}")
        self._say(f"Computing: {p.tokens_per_s:.0f} tokens/s")

    def on_finished(self, result: ImatrixResult) -> None:
        show_done(self.progress)
        self._say(
            f"✓ {result.n_entries} tensors over {result.n_chunks} chunks of {result.n_ctx} "
            f"({result.text_name}, PPL {result.ppl:.2f}) in {result.elapsed_s:.1f} s → {result.path}"
        )
        self.set_matrix(result.path)

    def on_failed(self, message: str) -> None:
        show_stopped(self.progress, cancelled="cancel" in message.lower())
        self._say(f"✗ {message}")

    def _on_browse_text(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Calibration text", "", "Text (*.txt *.md *.raw);;All files (*)"
        )
        if path:
            self.text_edit.setText(path)

    def _on_browse_matrix(self) -> None:
        start = os.path.dirname(self.output_path() or "") if self._source else ""
        path, _ = QFileDialog.getOpenFileName(
            self, "Importance matrix", start, "Importance matrix (*.gguf *.dat);;All files (*)"
        )
        if path:
            self.set_matrix(path)


__all__ = ["ImatrixBox"]
