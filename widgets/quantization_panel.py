"""Quantization panel: quantize a GGUF, measure what it costs in quality and speed, compare variants."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.common.formatting import fmt, fmt_bytes
from app.model.model_info import ModelInfo
from app.quality.compare import Comparison, export_comparison
from app.quality.eval_text import DEFAULT_TEXT_NAME
from app.quality.eval_types import ChunkProgress, EvalSettings, KLDivergenceResult, PerplexityResult
from app.quant.plan import (
    QuantizeProgress,
    QuantizeRequest,
    QuantizeResult,
    f16_base_request,
    output_folder_reason,
    user_models_folder,
)
from app.quant.types import QuantType
from widgets.chart import install_chart_behaviour
from widgets.live_plot import cache_axes
from widgets.panel import Panel

_TENSOR_TYPES = ("", "F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K", "Q4_K", "Q4_0")
_BASE_TIP = (
    "Measure the selected model's perplexity and save its log-probabilities "
    "as the reference for KL divergence"
)
_MEASURE_TIP = "Perplexity (and KL divergence against the base, if set) and speed of the selected model"


def _label(text: str = "n/a") -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


class QuantizationPanel(Panel):
    """The third column: Methods, Quality, Comparison, Advanced, Tools.

    A view of the quantization workflow (app.quant.workflow, driven by ui.quality_bridge): it asks
    for a base, a measurement or a quantization, and shows the results, the base and the
    comparison it is told about. What runs next and what the base is are not decided here.
    """

    quantize_requested = Signal(object)  # QuantizeRequest
    base_requested = Signal(str, str, object)  # model, text source, EvalSettings
    measure_requested = Signal(str, str, object)  # model, text source, EvalSettings
    cancel_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Quantization", parent)
        self._source: str | None = None
        self._comparison: Comparison | None = None  # the one on show, for Export
        self._busy = False
        self._taken = ""  # why another panel's work holds the engine; "" when it does not
        self._build_methods_box()
        self._build_quality_box()
        self._build_comparison_box()
        self._build_advanced_box()
        self._update_buttons()

    # ---- construction ------------------------------------------------------------------------
    def _build_methods_box(self) -> None:
        body = QWidget()
        layout = QVBoxLayout(body)
        layout.setContentsMargins(0, 0, 0, 0)
        self.source_label = _label("Select a model in Model Config.")
        self.type_table = QTableWidget(0, 3)
        self.type_table.setObjectName("quantTypeTable")
        self.type_table.setHorizontalHeaderLabels(["type", "bits/w", "what it is"])
        self.type_table.verticalHeader().setVisible(False)
        self.type_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.type_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.type_table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.type_table.horizontalHeader().setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        self.type_table.setMinimumHeight(150)
        self.type_table.setToolTip("Reading the types this llama.cpp build supports…")
        self.output_edit = QLineEdit()
        self.output_edit.setPlaceholderText("beside the source, named after the model and type")
        self.output_edit.setToolTip(
            "Output file; written to a temporary file and renamed into place when complete"
        )
        self.quantize_button = QPushButton("Quantize")
        self.quantize_button.setObjectName("quantizeButton")
        self.quantize_button.setToolTip("Quantize the selected model to the selected type (child process)")
        self.quantize_button.clicked.connect(self.request_quantize)
        self.f16_button = QPushButton("Make F16 base")
        self.f16_button.setToolTip(
            "An F16 copy of a quantized model to quantize other types from. It is a "
            "dequantized copy: it keeps the quantized model's errors."
        )
        self.f16_button.clicked.connect(self.request_f16_base)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop; no partial file is left and the source is untouched")
        self.cancel_button.clicked.connect(self.cancel_requested)
        row_buttons = QHBoxLayout()
        for b in (self.quantize_button, self.f16_button, self.cancel_button):
            row_buttons.addWidget(b)
        self.progress = QProgressBar()
        self.progress.setObjectName("quantProgress")
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status = _label("")
        self.status.setObjectName("quantStatus")
        layout.addWidget(self.source_label)
        layout.addWidget(self.type_table)
        form = QFormLayout()
        form.addRow("Output", self.output_edit)
        layout.addLayout(form)
        layout.addLayout(row_buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        self.add_box("Methods", body)

    def _build_quality_box(self) -> None:
        body = QWidget()
        layout = QVBoxLayout(body)
        layout.setContentsMargins(0, 0, 0, 0)
        form = QFormLayout()
        self.text_edit = QLineEdit(DEFAULT_TEXT_NAME)
        self.text_edit.setToolTip(
            'Evaluation text: a UTF-8 text file, or "default" for the Python '
            "documentation that ships with Python (no download)"
        )
        text_row = QHBoxLayout()
        text_row.addWidget(self.text_edit, 1)
        browse = QPushButton("…")
        browse.setToolTip("Choose a text file")
        browse.clicked.connect(self._on_browse_text)
        text_row.addWidget(browse)
        self.ctx_spin = QSpinBox()
        self.ctx_spin.setRange(8, 32768)
        self.ctx_spin.setSingleStep(64)
        self.ctx_spin.setValue(512)
        self.ctx_spin.setToolTip(
            "Chunk size n_ctx, as llama-perplexity's -c; the second half of each chunk is scored"
        )
        self.chunks_spin = QSpinBox()
        self.chunks_spin.setRange(0, 100000)
        self.chunks_spin.setValue(8)
        self.chunks_spin.setSpecialValueText("all")
        self.chunks_spin.setToolTip(
            "Chunks to evaluate (llama-perplexity's --chunks); 'all' = the whole text"
        )
        form.addRow("Text", text_row)
        form.addRow("Context", self.ctx_spin)
        form.addRow("Chunks", self.chunks_spin)
        layout.addLayout(form)
        self._base_text = "Base: none — measure a higher-precision model with “Set as base”."
        self.base_label = _label(self._base_text)
        self.base_label.setObjectName("baseLabel")
        buttons = QHBoxLayout()
        self.base_button = QPushButton("Set as base")
        self.base_button.setToolTip(_BASE_TIP)
        self.base_button.clicked.connect(self.request_base)
        self.measure_button = QPushButton("Measure")
        self.measure_button.setObjectName("measureButton")
        self.measure_button.setToolTip(_MEASURE_TIP)
        self.measure_button.clicked.connect(self.request_measure)
        buttons.addWidget(self.base_button)
        buttons.addWidget(self.measure_button)
        self.quality_status = _label("")
        self.quality_status.setObjectName("qualityStatus")
        self.ppl_plot = pg.PlotWidget(background=None)
        cache_axes(self.ppl_plot.getPlotItem())  # redrawn live while work runs
        self.ppl_plot.setMinimumHeight(110)
        self.ppl_plot.setLabel("left", "PPL")
        self.ppl_plot.setLabel("bottom", "chunk")
        self.ppl_curve = self.ppl_plot.plot([], [], pen=pg.mkPen(width=1), symbol="o", symbolSize=4)
        install_chart_behaviour(self.ppl_plot, integer_x=True)  # the wheel scrolls the panel (widgets/chart.py)
        self._ppl_points: list[float] = []
        self.quality_result = _label("Perplexity: n/a")
        self.quality_result.setObjectName("qualityResult")
        layout.addWidget(self.base_label)
        layout.addLayout(buttons)
        layout.addWidget(self.quality_status)
        layout.addWidget(self.ppl_plot)
        layout.addWidget(self.quality_result)
        self.add_box("Quality", body)

    def _build_comparison_box(self) -> None:
        body = QWidget()
        layout = QVBoxLayout(body)
        layout.setContentsMargins(0, 0, 0, 0)
        self.size_label = _label("Original n/a · quantized n/a")
        self.compare_table = QTableWidget(0, len(Comparison.COLUMNS))
        self.compare_table.setObjectName("quantCompareTable")
        self.compare_table.setHorizontalHeaderLabels([title for _, title in Comparison.COLUMNS])
        self.compare_table.verticalHeader().setVisible(False)
        self.compare_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.compare_table.setMinimumHeight(110)
        self.compare_table.setToolTip(
            "Quality score = 100 × exp(−mean KLD against the base); n/a when not measured"
        )
        self.chart = pg.PlotWidget(background=None)
        self.chart.setMinimumHeight(140)
        self.chart.setLabel("bottom", "file size (MiB)")
        self.chart.setLabel("left", "mean KLD vs base")
        self.chart.setToolTip("Each variant: size against quality loss, labelled with its generation speed")
        self.scatter = pg.ScatterPlotItem(size=8)
        self.chart.addItem(self.scatter)
        install_chart_behaviour(self.chart)  # the wheel scrolls the panel (widgets/chart.py)
        self._chart_labels: list[pg.TextItem] = []
        self.export_button = QPushButton("Export…")
        self.export_button.setToolTip("Save the comparison as CSV, JSON or markdown")
        self.export_button.clicked.connect(self._on_export)
        layout.addWidget(self.size_label)
        layout.addWidget(self.compare_table)
        layout.addWidget(self.chart)
        layout.addWidget(self.export_button)
        self.add_box("Comparison", body)

    def _build_advanced_box(self) -> None:
        body = QWidget()
        form = QFormLayout(body)
        form.setContentsMargins(0, 0, 0, 0)
        self.requantize_check = QCheckBox("Allow requantize")
        self.requantize_check.setToolTip("Quantize an already-quantized model: quality is lost twice")
        self.pure_check = QCheckBox("Pure (no K-quant mix)")
        self.pure_check.setToolTip(
            "Every tensor in the main type instead of llama.cpp's S/M/L per-tensor mix"
        )
        self.leave_output_check = QCheckBox("Leave output tensor")
        self.leave_output_check.setToolTip("Keep output.weight unquantized (bigger, slightly better quality)")
        self.output_type_combo = QComboBox()
        self.embed_type_combo = QComboBox()
        for combo in (self.output_type_combo, self.embed_type_combo):
            for name in _TENSOR_TYPES:
                combo.addItem(name or "default", name or None)
        self.output_type_combo.setToolTip(
            "Per-tensor override: the output tensor's type (--output-tensor-type)"
        )
        self.embed_type_combo.setToolTip(
            "Per-tensor override: token embeddings' type (--token-embedding-type)"
        )
        self.threads_spin = QSpinBox()
        self.threads_spin.setRange(0, 1024)
        self.threads_spin.setSpecialValueText("all")
        self.threads_spin.setToolTip("Quantizer threads; 'all' = every hardware thread")
        note = _label(
            "Importance-matrix (imatrix) quantization is not available through llama-cpp-python: "
            "IQ types that need one are listed but disabled."
        )
        note.setEnabled(False)
        form.addRow(self.requantize_check)
        form.addRow(self.pure_check)
        form.addRow(self.leave_output_check)
        form.addRow("Output tensor", self.output_type_combo)
        form.addRow("Token embedding", self.embed_type_combo)
        form.addRow("Threads", self.threads_spin)
        form.addRow(note)
        self.add_box("Advanced", body)

    # ---- state from outside ------------------------------------------------------------------
    def set_quant_types(self, types: Sequence[QuantType]) -> None:
        """The quantization types the installed llama.cpp supports (read off the GUI thread)."""
        self.type_table.setToolTip("")
        self.type_table.setRowCount(len(types))
        for row, qtype in enumerate(types):
            cells = (qtype.name, f"{qtype.bits_per_weight:.2f}", qtype.description)
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setData(Qt.ItemDataRole.UserRole, qtype.name)
                if qtype.needs_imatrix:
                    item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEnabled)
                    item.setToolTip(qtype.refusal_reason or "")
                else:
                    item.setToolTip(qtype.description)
                self.type_table.setItem(row, col, item)
        default = next((r for r, t in enumerate(types) if t.name == "Q4_K_M"), 0)
        self.type_table.selectRow(default)
        first = self.type_table.item(default, 0)
        if first is not None:  # None when the build offers no type at all
            self.type_table.scrollToItem(first)

    def set_source(self, info: ModelInfo | None) -> None:
        """The model selected in Model Config: what quantize, measure and base act on."""
        self._source = info.path if info is not None else None
        if info is None:
            self.source_label.setText("Select a loadable model in Model Config.")
        else:
            self.source_label.setText(
                f"Source: <b>{info.display_name}</b> · {info.file_type_label} · "
                f"{fmt_bytes(info.file_size_bytes)}"
            )
            self.output_edit.clear()
        self._show_output_folder(info.path if info is not None else None)
        self._update_buttons()

    def _show_output_folder(self, source: str | None) -> None:
        """Say where an output with no name given goes: beside the source, or LlamaScope's user
        data folder when the source's folder is not writable or belongs to an installed package."""
        if source is None:
            self.output_edit.setPlaceholderText("beside the source, named after the model and type")
            return
        reason = output_folder_reason(source)
        folder = user_models_folder() if reason else os.path.dirname(os.path.abspath(source))
        self.output_edit.setPlaceholderText(os.path.join(folder, "MODEL.TYPE.gguf"))
        where = f"Outputs with no name given go to {folder}" + (f", because {reason}" if reason else "")
        self.output_edit.setToolTip(
            f"{where}. A file is written to a temporary name and renamed into place when complete."
        )

    @property
    def source(self) -> str | None:
        """The model that quantize, measure and base act on."""
        return self._source

    def set_busy(self, busy: bool) -> None:
        """This panel's own work (a quantization, a measurement) runs or ended."""
        self._busy = busy
        self._update_buttons()

    def set_engine_taken(self, reason: str) -> None:
        """Another panel's work holds the engine (`reason` says which), or not (""). Measuring
        needs the engine; quantizing runs in a process of its own and does not."""
        self._taken = reason
        self._update_buttons()

    def _update_buttons(self) -> None:
        ready = self._source is not None and not self._busy
        for b in (self.quantize_button, self.f16_button):
            b.setEnabled(ready)
        for b, tip in ((self.base_button, _BASE_TIP), (self.measure_button, _MEASURE_TIP)):
            b.setEnabled(ready and not self._taken)
            b.setToolTip(self._taken or tip)
        self.cancel_button.setEnabled(self._busy)

    # ---- requests ----------------------------------------------------------------------------
    def selected_type(self) -> str | None:
        rows = self.type_table.selectionModel().selectedRows()
        item = self.type_table.item(rows[0].row(), 0) if rows else None
        return None if item is None else item.data(Qt.ItemDataRole.UserRole)

    def eval_settings(self) -> EvalSettings:
        chunks = self.chunks_spin.value()
        return EvalSettings(n_ctx=self.ctx_spin.value(), n_chunks=chunks or None)

    def request_quantize(self) -> None:
        type_name = self.selected_type()
        if self._source is None or type_name is None:
            self.status.setText("✗ Select a source model and a type first.")
            return
        request = QuantizeRequest(
            source=self._source,
            type_name=type_name,
            output=self.output_edit.text().strip() or None,
            allow_requantize=self.requantize_check.isChecked(),
            pure=self.pure_check.isChecked(),
            leave_output_tensor=self.leave_output_check.isChecked(),
            output_tensor_type=self.output_type_combo.currentData(),
            token_embedding_type=self.embed_type_combo.currentData(),
            n_threads=self.threads_spin.value() or None,
        )
        self._start_quantize(request, f"Quantizing to {type_name}…")

    def request_f16_base(self) -> None:
        if self._source is not None:
            request = f16_base_request(
                self._source,
                self.output_edit.text().strip() or None,
                n_threads=self.threads_spin.value() or None,
            )
            self._start_quantize(request, "Writing an F16 copy (dequantized)…")

    def _start_quantize(self, request: QuantizeRequest, text: str) -> None:
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status.setText(text)
        self.quantize_requested.emit(request)

    def request_base(self) -> None:
        if self._source is None:
            return
        self._start_eval(f"Measuring the base {os.path.basename(self._source)}…")
        self.base_requested.emit(self._source, self.text_edit.text().strip(), self.eval_settings())

    def request_measure(self) -> None:
        if self._source is None:
            return
        self._start_eval(f"Measuring {os.path.basename(self._source)}…")
        self.measure_requested.emit(self._source, self.text_edit.text().strip(), self.eval_settings())

    def _start_eval(self, text: str) -> None:
        self._ppl_points = []
        self.ppl_curve.setData([], [])
        self.quality_status.setText(text)

    # ---- results -----------------------------------------------------------------------------
    def on_quantize_progressed(self, progress: QuantizeProgress) -> None:
        self.progress.setRange(0, max(progress.n_tensors, 1))
        self.progress.setValue(progress.tensor_index)
        self.status.setText(f"Tensor {progress.tensor_index}/{progress.n_tensors}: {progress.tensor_name}")

    def on_quantize_finished(self, result: QuantizeResult) -> None:
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        warnings = (" · " + " ".join(result.warnings)) if result.warnings else ""
        self.status.setText(
            f"✓ {result.label}: {fmt_bytes(result.output_bytes)} ({result.bits_per_weight:.2f} bits/weight, "
            f"{result.size_change}) in {result.elapsed_s:.1f} s → "
            f"{result.output_path}{warnings}"
        )
        self.size_label.setText(
            f"Original {fmt_bytes(result.source_bytes)} · quantized {fmt_bytes(result.output_bytes)}"
        )

    def on_failed(self, operation: str, message: str) -> None:
        if operation == "quantize":
            self.progress.setValue(0)
            self.status.setText(f"✗ {message}")
        else:
            self.quality_status.setText(f"✗ {message}")

    def on_eval_progressed(self, progress: Any) -> None:
        if isinstance(progress, ChunkProgress):
            self._ppl_points.append(progress.ppl)
            self.ppl_curve.setData(list(range(1, len(self._ppl_points) + 1)), self._ppl_points)
            kld = f", mean KLD {progress.mean_kld:.4f}" if progress.mean_kld is not None else ""
            self.quality_status.setText(
                f"{progress.phase}: chunk {progress.chunk}/{progress.n_chunks}, PPL {progress.ppl:.3f}{kld} "
                f"({progress.tokens_per_s:.0f} tokens/s)"
            )
        else:
            self.quality_status.setText(
                f"speed: {progress.phase} {progress.repetition}/{progress.repetitions}"
            )

    def on_eval_finished(self, kind: str, result: Any) -> None:
        if isinstance(result, PerplexityResult):
            unc = f" ± {result.ppl_uncertainty:.4f}" if result.ppl_uncertainty is not None else ""
            self.quality_result.setText(
                f"Perplexity {result.ppl:.4f}{unc} over {result.n_chunks} chunks "
                f"of {result.n_ctx} ({result.tokens_per_s:.0f} tokens/s)"
            )
        elif isinstance(result, KLDivergenceResult):
            self.quality_result.setText(
                f"PPL(Q) {result.ppl:.4f} vs PPL(base) {result.ppl_base:.4f} · mean KLD {result.kld_mean:.5f}"
                f" · KLD 99% {result.kld_p99:.4f} · same top p {fmt(result.same_top_p * 100, '.1f', ' %')}"
            )

    def on_base_changed(self, result: PerplexityResult) -> None:
        self._base_text = (
            f"Base: {os.path.basename(result.model_path)} (PPL {result.ppl:.4f}); "
            f"log-probabilities saved for KL divergence"
        )
        self.base_label.setText(self._base_text)

    def on_base_noted(self, note: str) -> None:
        """What happened to the base since it was measured (moved, deleted, its cache cleaned)."""
        self.base_label.setText(self._base_text + (f"\n⚠ {note}" if note else ""))

    def on_measurements_finished(self, model_path: str) -> None:
        self.quality_status.setText(f"✓ measured {os.path.basename(model_path)}")

    def on_comparison_changed(self, comparison: Comparison) -> None:
        self._comparison = comparison
        rows = comparison.rows
        self.compare_table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, (name, _title) in enumerate(Comparison.COLUMNS):
                self.compare_table.setItem(r, c, QTableWidgetItem(_cell(name, getattr(row, name))))
        for label in self._chart_labels:
            self.chart.removeItem(label)
        self._chart_labels = []
        points = [(row.file_bytes / 2**20, row.mean_kld, row) for row in rows if row.mean_kld is not None]
        self.scatter.setData([x for x, _, _ in points], [y for _, y, _ in points])
        for x, y, row in points:
            speed = f", tg {row.tg_tokens_per_s:.0f} t/s" if row.tg_tokens_per_s is not None else ""
            text = pg.TextItem(f"{row.type_name or row.label}{speed}", anchor=(0, 1))
            text.setPos(x, y)
            self.chart.addItem(text)
            self._chart_labels.append(text)

    def _on_export(self) -> None:
        if self._comparison is None:
            self.status.setText("Measure at least one model first: there is nothing to export.")
            return
        path, _ = QFileDialog.getSaveFileName(
            self, "Export comparison", "quantization.md", "Markdown (*.md);;CSV (*.csv);;JSON (*.json)"
        )
        if path:
            try:
                written = export_comparison(self._comparison, path)
            except (OSError, ValueError) as exc:
                self.status.setText(f"✗ {exc}")
                return
            self.status.setText(f"Exported to {written}")

    def _on_browse_text(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Evaluation text", "", "Text (*.txt *.md *.raw);;All files (*)"
        )
        if path:
            self.text_edit.setText(path)


def _cell(name: str, value: Any) -> str:
    if value is None:
        return "n/a"
    if name == "file_bytes":
        return fmt_bytes(value)
    if isinstance(value, float):
        return f"{value:.4f}" if name in ("mean_kld",) else f"{value:.2f}"
    return str(value)
