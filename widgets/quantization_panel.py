"""Quantization panel: quantize a GGUF, measure what it costs in quality and speed, compare variants."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
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
from app.quality.compare import Comparison, ComparisonRow, SpeedProgress, export_comparison
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
from app.quant.workflow import QueueItem, QueueState
from widgets.advice_box import AdviceBox
from widgets.chart import ViewRange, install_chart_behaviour, labelled_points_range, set_view
from widgets.imatrix_box import ImatrixBox
from widgets.live_plot import cache_axes
from widgets.panel import Panel
from widgets.table_fit import show_table_whole

_TENSOR_TYPES = ("", "F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K", "Q4_K", "Q4_0")
_BASE_TIP = (
    "Measure the selected model's perplexity and save its log-probabilities "
    "as the reference for KL divergence"
)
_MEASURE_TIP = "Perplexity (and KL divergence against the base, if set) and speed of the selected model"
# The start of plan_quantization's refusal of a quantized source without --allow-requantize: the
# panel adds where that option is in the window.
_REQUANTIZE_REFUSAL = "The source is already quantized"
_REQUANTIZE_HINT = "To quantize it anyway, tick “Allow requantize” in the Advanced box below."
# The comparison columns shown in the panel's narrow column; the others are in each row's tooltip
# and in "Show all columns…".
_COMPACT_COLUMNS = (
    ("label", "Variant"),
    ("file_bytes", "Size"),
    ("mean_kld", "KLD"),
    ("quality_score", "Score"),
    ("tg_tokens_per_s", "tg t/s"),
)
_QUEUE_COLUMNS = ("Type", "Progress", "State")


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

    quantize_requested = Signal(object)  # tuple[QuantizeRequest, ...]: quantized one after another
    base_requested = Signal(str, str, object)  # model, text source, EvalSettings
    measure_requested = Signal(str, str, object)  # model, text source, EvalSettings
    cancel_requested = Signal()  # stop the quantization queue (the Methods box's Cancel)
    measure_cancel_requested = Signal()  # stop the measurement (the Quality box's Cancel)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Quantization", parent)
        self._source: str | None = None
        self._comparison: Comparison | None = None  # the one on show, for Export
        self._busy = False
        self._quantizing = False  # the quantization queue has an item waiting or running
        self._measuring = False
        self._queue: tuple[QueueItem, ...] = ()
        self._taken = ""  # why another panel's work holds the engine; "" when it does not
        self._imatrix: str | None = None  # the importance matrix the quantize queue passes on
        self._types: tuple[QuantType, ...] = ()
        self._build_methods_box()
        self.imatrix_box = ImatrixBox()  # issue 18: widgets/imatrix_box.py, driven by ui.advice_bridge
        self.imatrix_box.matrix_changed.connect(self.set_imatrix)
        _collapsible(self.add_box("Importance matrix", self.imatrix_box), self.imatrix_box)
        self._build_quality_box()
        self._build_comparison_box()
        self.advice_box = AdviceBox()  # widgets/advice_box.py: the advisor's form and answer
        _collapsible(self.add_box("Recommend a type", self.advice_box), self.advice_box)
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
        self.type_table.itemChanged.connect(self._update_quantize_label)
        self.type_table.itemSelectionChanged.connect(self._update_quantize_label)
        self.output_edit = QLineEdit()
        self.output_edit.setPlaceholderText("beside the source, named after the model and type")
        self.output_edit.setToolTip(
            "Output file; written to a temporary file and renamed into place when complete"
        )
        self.quantize_button = QPushButton("Quantize")
        self.quantize_button.setObjectName("quantizeButton")
        self.quantize_button.setToolTip(
            "Quantize the selected model to each ticked type, one after another (the highlighted "
            "type when none is ticked); each runs in a child process"
        )
        self.quantize_button.clicked.connect(self.request_quantize)
        self.f16_button = QPushButton("Make F16 base")
        self.f16_button.setToolTip(
            "An F16 copy of a quantized model to quantize other types from. It is a "
            "dequantized copy: it keeps the quantized model's errors."
        )
        self.f16_button.clicked.connect(self.request_f16_base)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setObjectName("quantCancelButton")
        self.cancel_button.setToolTip(
            "Stop the running quantization and the rest of the queue; no partial file is left and "
            "the source is untouched"
        )
        self.cancel_button.clicked.connect(self.cancel_requested)
        row_buttons = QHBoxLayout()
        for b in (self.quantize_button, self.f16_button, self.cancel_button):
            row_buttons.addWidget(b)
        self.queue_table = QTableWidget(0, len(_QUEUE_COLUMNS))
        self.queue_table.setObjectName("quantQueueTable")
        self.queue_table.setHorizontalHeaderLabels(list(_QUEUE_COLUMNS))
        self.queue_table.verticalHeader().setVisible(False)
        self.queue_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.queue_table.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.queue_table.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        header = self.queue_table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.ResizeToContents)
        self.queue_table.setToolTip("The quantizations asked for, run one after another")
        self.queue_table.setVisible(False)
        self.status = _label("")
        self.status.setObjectName("quantStatus")
        layout.addWidget(self.source_label)
        layout.addWidget(self.type_table)
        form = QFormLayout()
        form.addRow("Output", self.output_edit)
        layout.addLayout(form)
        layout.addLayout(row_buttons)
        layout.addWidget(self.queue_table)
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
        self.measure_progress = QProgressBar()
        self.measure_progress.setObjectName("measureProgress")
        self.measure_progress.setRange(0, 1)
        self.measure_progress.setValue(0)
        self.measure_progress.setFormat("")
        self.measure_progress.setTextVisible(True)
        self.measure_cancel_button = QPushButton("Cancel")
        self.measure_cancel_button.setObjectName("measureCancelButton")
        self.measure_cancel_button.setToolTip("Stop the measurement; what was measured before is kept")
        self.measure_cancel_button.clicked.connect(self.measure_cancel_requested)
        progress_row = QHBoxLayout()
        progress_row.addWidget(self.measure_progress, 1)
        progress_row.addWidget(self.measure_cancel_button)
        self.quality_status = _label("")
        self.quality_status.setObjectName("qualityStatus")
        self.ppl_plot = pg.PlotWidget(background=None)
        cache_axes(self.ppl_plot.getPlotItem())  # redrawn live while work runs
        self.ppl_plot.setMinimumHeight(110)
        self.ppl_plot.setLabel("left", "PPL")
        self.ppl_plot.setLabel("bottom", "chunk")
        self.ppl_curve = self.ppl_plot.plot([], [], pen=pg.mkPen(width=1), symbol="o", symbolSize=4)
        install_chart_behaviour(
            self.ppl_plot, integer_x=True
        )  # the wheel scrolls the panel (widgets/chart.py)
        self._ppl_points: list[float] = []
        self.quality_result = _label("Perplexity: n/a")
        self.quality_result.setObjectName("qualityResult")
        layout.addWidget(self.base_label)
        layout.addLayout(buttons)
        layout.addLayout(progress_row)
        layout.addWidget(self.quality_status)
        layout.addWidget(self.ppl_plot)
        layout.addWidget(self.quality_result)
        self.add_box("Quality", body)

    def _build_comparison_box(self) -> None:
        body = QWidget()
        layout = QVBoxLayout(body)
        layout.setContentsMargins(0, 0, 0, 0)
        self.size_label = _label("Original n/a · quantized n/a")
        self.compare_table = _comparison_table(_COMPACT_COLUMNS)
        self.compare_table.setObjectName("quantCompareTable")
        self.compare_table.setMinimumHeight(110)
        self.all_columns_button = QPushButton("Show all columns…")
        self.all_columns_button.setToolTip("The whole comparison: every figure of every file, in a window")
        self.all_columns_button.clicked.connect(self.show_all_columns)
        self.chart = pg.PlotWidget(background=None)
        self.chart.setMinimumHeight(140)
        self.chart.setLabel("bottom", "file size (MiB)")
        self.chart.setLabel("left", "mean KLD vs base")
        self.chart.setToolTip("Each variant: size against quality loss, labelled with its generation speed")
        self.scatter = pg.ScatterPlotItem(size=8)
        self.chart.addItem(self.scatter)
        # The wheel scrolls the panel (widgets/chart.py); Reset zoom fits the points and their labels.
        self._chart_range: ViewRange | None = None
        self._chart_behaviour = install_chart_behaviour(self.chart, on_reset=self._fit_chart)
        self._chart_labels: list[pg.TextItem] = []
        self.export_button = QPushButton("Export…")
        self.export_button.setToolTip("Save the comparison as CSV, JSON or markdown")
        self.export_button.clicked.connect(self._on_export)
        self.all_columns_dialog: QDialog | None = None
        layout.addWidget(self.size_label)
        layout.addWidget(self.compare_table)
        layout.addWidget(self.chart)
        comparison_buttons = QHBoxLayout()
        comparison_buttons.addWidget(self.all_columns_button)
        comparison_buttons.addWidget(self.export_button)
        comparison_buttons.addStretch(1)
        layout.addLayout(comparison_buttons)
        self.add_box("Comparison", body)

    def _build_advanced_box(self) -> None:
        body = QWidget()
        form = QFormLayout(body)
        form.setContentsMargins(0, 0, 0, 0)
        self.requantize_check = QCheckBox("Allow requantize")
        self.requantize_check.setObjectName("requantizeCheck")
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
            "The i-quants and Q2_K_S need an importance matrix: compute or choose one in the "
            "Importance matrix box; the queue then quantizes every type with it."
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
        self.type_table.setToolTip("Tick the types to make, or highlight one")
        blocked = self.type_table.blockSignals(True)
        self._types = tuple(types)
        self.type_table.setRowCount(len(types))
        for row, qtype in enumerate(types):
            cells = (qtype.name, f"{qtype.bits_per_weight:.2f}", qtype.description)
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setData(Qt.ItemDataRole.UserRole, qtype.name)
                self.type_table.setItem(row, col, item)
        self.type_table.blockSignals(blocked)
        self._apply_imatrix_to_types()
        self.type_table.resizeColumnToContents(0)
        default = next((r for r, t in enumerate(types) if t.name == "Q4_K_M"), 0)
        self.type_table.selectRow(default)
        self._update_quantize_label()
        first = self.type_table.item(default, 0)
        if first is not None:  # None when the build offers no type at all
            self.type_table.scrollToItem(first)

    def set_imatrix(self, path: str | None) -> None:
        """The importance matrix to quantize with (the Importance matrix box's), or None."""
        self._imatrix = path
        self._apply_imatrix_to_types()
        self.advice_box.set_imatrix(path)

    def _apply_imatrix_to_types(self) -> None:
        """The types that need a matrix (i-quants, Q2_K_S) are selectable only with one; without,
        their tooltip says why they are refused."""
        has = self._imatrix is not None
        blocked = self.type_table.blockSignals(True)
        for row, qtype in enumerate(self._types):
            refused = qtype.refusal_reason_for(has_imatrix=has)
            for col in range(3):
                item = self.type_table.item(row, col)
                if item is None:
                    continue
                if refused:
                    off = Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsUserCheckable
                    item.setFlags(item.flags() & ~off)
                    item.setToolTip(refused)
                else:
                    item.setFlags(item.flags() | Qt.ItemFlag.ItemIsEnabled)
                    item.setToolTip(qtype.description)
                if col == 0:  # tick several types to queue them
                    if refused:
                        item.setData(Qt.ItemDataRole.CheckStateRole, None)
                    else:
                        item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
                        if item.data(Qt.ItemDataRole.CheckStateRole) is None:
                            item.setCheckState(Qt.CheckState.Unchecked)
        self.type_table.blockSignals(blocked)
        self._update_quantize_label()

    def set_source(self, info: ModelInfo | None) -> None:
        """The model selected in Model Config: what quantize, measure and base act on."""
        self._source = info.path if info is not None else None
        self.imatrix_box.set_source(self._source)
        self.advice_box.set_source(self._source, info)
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

    def set_measuring(self, measuring: bool) -> None:
        """A measurement (perplexity, KL divergence, speed) runs or ended: its own Cancel."""
        self._measuring = measuring
        self._update_buttons()

    def _update_buttons(self) -> None:
        # Between two items of a queue the bridge is briefly not busy; the queue still is.
        ready = self._source is not None and not self._busy and not self._quantizing
        for b in (self.quantize_button, self.f16_button):
            b.setEnabled(ready)
        for b, tip in ((self.base_button, _BASE_TIP), (self.measure_button, _MEASURE_TIP)):
            b.setEnabled(ready and not self._taken)
            b.setToolTip(self._taken or tip)
        self.cancel_button.setEnabled(self._quantizing)
        self.measure_cancel_button.setEnabled(self._measuring)

    def _update_quantize_label(self) -> None:
        checked = self.checked_types()
        if len(checked) > 1:
            self.quantize_button.setText(f"Quantize {len(checked)} types")
        else:
            self.quantize_button.setText("Quantize")

    # ---- requests ----------------------------------------------------------------------------
    def selected_type(self) -> str | None:
        """The highlighted type."""
        rows = self.type_table.selectionModel().selectedRows()
        item = self.type_table.item(rows[0].row(), 0) if rows else None
        return None if item is None else item.data(Qt.ItemDataRole.UserRole)

    def checked_types(self) -> list[str]:
        """The ticked types, in the table's order."""
        names = []
        for row in range(self.type_table.rowCount()):
            item = self.type_table.item(row, 0)
            if item is not None and item.checkState() == Qt.CheckState.Checked:
                names.append(item.data(Qt.ItemDataRole.UserRole))
        return names

    def set_checked_types(self, names: Sequence[str]) -> None:
        """Tick exactly these types (the others are unticked)."""
        for row in range(self.type_table.rowCount()):
            item = self.type_table.item(row, 0)
            if item is not None and item.flags() & Qt.ItemFlag.ItemIsUserCheckable:
                ticked = item.data(Qt.ItemDataRole.UserRole) in names
                item.setCheckState(Qt.CheckState.Checked if ticked else Qt.CheckState.Unchecked)

    def chosen_types(self) -> list[str]:
        """What Quantize makes: the ticked types, or the highlighted one when none is ticked."""
        checked = self.checked_types()
        if checked:
            return checked
        selected = self.selected_type()
        return [selected] if selected is not None else []

    def eval_settings(self) -> EvalSettings:
        chunks = self.chunks_spin.value()
        return EvalSettings(n_ctx=self.ctx_spin.value(), n_chunks=chunks or None)

    def request_quantize(self) -> None:
        types = self.chosen_types()
        if self._source is None or not types:
            self.status.setText("✗ Select a source model and tick or highlight a type first.")
            return
        output = self.output_edit.text().strip() or None
        if output is not None and len(types) > 1:
            self.status.setText(
                f"✗ {len(types)} types are ticked but Output names one file: clear Output to name each "
                "file after the model and its type, or tick one type."
            )
            return
        requests = tuple(
            QuantizeRequest(
                source=self._source,
                type_name=type_name,
                output=output,
                allow_requantize=self.requantize_check.isChecked(),
                pure=self.pure_check.isChecked(),
                leave_output_tensor=self.leave_output_check.isChecked(),
                output_tensor_type=self.output_type_combo.currentData(),
                token_embedding_type=self.embed_type_combo.currentData(),
                n_threads=self.threads_spin.value() or None,
                imatrix=self._imatrix,
            )
            for type_name in types
        )
        self._start_quantize(requests, f"Quantizing to {', '.join(types)}…")

    def request_f16_base(self) -> None:
        if self._source is not None:
            request = f16_base_request(
                self._source,
                self.output_edit.text().strip() or None,
                n_threads=self.threads_spin.value() or None,
            )
            self._start_quantize((request,), "Writing an F16 copy (dequantized)…")

    def _start_quantize(self, requests: tuple[QuantizeRequest, ...], text: str) -> None:
        self.status.setText(text)
        self.quantize_requested.emit(requests)

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
        self.measure_progress.setRange(0, 1)
        self.measure_progress.setValue(0)
        self.measure_progress.setFormat("starting…")

    # ---- results -----------------------------------------------------------------------------
    def on_queue_changed(self, items: tuple[QueueItem, ...]) -> None:
        """The quantization queue and each item's state (ui.quality_bridge's queue_changed)."""
        table = self.queue_table
        same_queue = len(items) == len(self._queue) and all(
            a.request is b.request for a, b in zip(items, self._queue, strict=True)
        )
        if not same_queue:  # a new queue: no bar keeps the last queue's progress
            table.setRowCount(0)
        self._queue = items
        self._quantizing = any(i.state in (QueueState.QUEUED, QueueState.RUNNING) for i in items)
        table.setRowCount(len(items))
        for row, item in enumerate(items):
            type_cell = QTableWidgetItem(item.request.type_name)
            type_cell.setToolTip(item.request.output or "named after the model and type")
            table.setItem(row, 0, type_cell)
            bar = table.cellWidget(row, 1)
            if not isinstance(bar, QProgressBar):
                bar = QProgressBar()
                bar.setObjectName(f"queueProgress{row}")
                bar.setMaximumHeight(table.verticalHeader().defaultSectionSize() - 4)
                table.setCellWidget(row, 1, bar)
            text, tip = _queue_state_text(item)
            if item.state is QueueState.DONE:
                bar.setRange(0, 1)
                bar.setValue(1)
                bar.setFormat("100 %")
            elif item.state is QueueState.QUEUED:
                bar.setRange(0, 1)
                bar.setValue(0)
                bar.setFormat("")
            elif item.state is QueueState.RUNNING and bar.maximum() <= 1 and bar.value() == 0:
                bar.setRange(0, 0)  # busy until the first tensor reports (planning, starting the child)
            elif item.state in (QueueState.FAILED, QueueState.CANCELLED):
                bar.setRange(0, max(bar.maximum(), 1))  # keeps how far it got
                bar.setFormat("%v/%m" if bar.value() else "")
            state = QTableWidgetItem(text)
            state.setToolTip(tip)
            table.setItem(row, 2, state)
        rows_shown = min(max(len(items), 1), 6)
        header_h = table.horizontalHeader().sizeHint().height()
        table.setFixedHeight(header_h + rows_shown * table.verticalHeader().defaultSectionSize() + 4)
        table.setVisible(bool(items))
        self._update_buttons()

    def _queue_summary(self) -> str:
        """A line over the last item's message once a queue of several has ended; "" otherwise."""
        items = self._queue
        if len(items) < 2 or self._quantizing:
            return ""
        done = sum(i.state is QueueState.DONE for i in items)
        mark = "✓" if done == len(items) else "✗"
        return (
            f"{mark} {done} of {len(items)} done; the new files are in the model list and the source "
            "stays selected.\n"
        )

    def on_quantize_progressed(self, progress: QuantizeProgress) -> None:
        row = next((r for r, i in enumerate(self._queue) if i.state is QueueState.RUNNING), None)
        bar = self.queue_table.cellWidget(row, 1) if row is not None else None
        if isinstance(bar, QProgressBar):
            bar.setRange(0, max(progress.n_tensors, 1))
            bar.setValue(progress.tensor_index)
            bar.setFormat("%v/%m tensors")
            bar.setToolTip(progress.tensor_name)

    def on_quantize_finished(self, result: QuantizeResult) -> None:
        warnings = (" · " + " ".join(result.warnings)) if result.warnings else ""
        # The source stays selected; a float copy is made to quantize from, which needs selecting.
        then = (
            " Select it in Model Config to quantize other types from it."
            if result.type_name
            in (
                "F32",
                "F16",
                "BF16",
            )
            else ""
        )
        self.status.setText(
            f"{self._queue_summary()}✓ {result.label}: {fmt_bytes(result.output_bytes)} "
            f"({result.bits_per_weight:.2f} bits/weight, {result.size_change}) in {result.elapsed_s:.1f} s → "
            f"{result.output_path}{warnings}{then}"
        )
        self.size_label.setText(
            f"Original {fmt_bytes(result.source_bytes)} · quantized {fmt_bytes(result.output_bytes)}"
        )

    def on_failed(self, operation: str, message: str) -> None:
        if operation in ("quantize", "refused"):
            hint = f" {_REQUANTIZE_HINT}" if message.startswith(_REQUANTIZE_REFUSAL) else ""
            self.status.setText(f"{self._queue_summary()}✗ {message}{hint}")
        else:
            self.quality_status.setText(f"✗ {message}")
            self.measure_progress.setRange(0, 1)
            self.measure_progress.setFormat("stopped" if "cancel" in message.lower() else "failed")

    def on_eval_progressed(self, progress: Any) -> None:
        if isinstance(progress, ChunkProgress):
            self.measure_progress.setRange(0, max(progress.n_chunks, 1))
            self.measure_progress.setValue(progress.chunk)
            self.measure_progress.setFormat(f"{progress.phase} chunk {progress.chunk}/{progress.n_chunks}")
            self._ppl_points.append(progress.ppl)
            self.ppl_curve.setData(list(range(1, len(self._ppl_points) + 1)), self._ppl_points)
            kld = f", mean KLD {progress.mean_kld:.4f}" if progress.mean_kld is not None else ""
            self.quality_status.setText(
                f"{progress.phase}: chunk {progress.chunk}/{progress.n_chunks}, PPL {progress.ppl:.3f}{kld} "
                f"({progress.tokens_per_s:.0f} tokens/s)"
            )
        elif isinstance(progress, SpeedProgress):
            # A warm-up, then pp and tg once per repetition.
            done = 0 if progress.phase == "warm-up" else 2 * progress.repetition - (progress.phase == "pp")
            self.measure_progress.setRange(0, 1 + 2 * progress.repetitions)
            self.measure_progress.setValue(done)
            text = (
                "speed warm-up"
                if progress.phase == "warm-up"
                else f"speed {progress.phase} {progress.repetition}/{progress.repetitions}"
            )
            self.measure_progress.setFormat(text)
            self.quality_status.setText(f"{text} of {os.path.basename(self._source or '')}")

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
        self.measure_progress.setRange(0, 1)
        self.measure_progress.setValue(1)
        self.measure_progress.setFormat("done")

    def on_comparison_changed(self, comparison: Comparison) -> None:
        self._comparison = comparison
        rows = comparison.rows
        _fill_comparison_table(self.compare_table, _COMPACT_COLUMNS, rows)
        if self.all_columns_dialog is not None and self.all_columns_dialog.isVisible():
            self.show_all_columns()
        for label in self._chart_labels:
            self.chart.removeItem(label)
        self._chart_labels = []
        points = [(row.file_bytes / 2**20, row.mean_kld, row) for row in rows if row.mean_kld is not None]
        self.scatter.setData([x for x, _, _ in points], [y for _, y, _ in points])
        if not points:
            return
        xs, ys = [x for x, _, _ in points], [y for _, y, _ in points]
        x_mid, y_mid = (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2
        for x, y, row in points:
            speed = f" · {row.tg_tokens_per_s:.0f} t/s" if row.tg_tokens_per_s is not None else ""
            # Each label points into the plot (left of a point in the right half, below a point in the
            # upper half) so that none runs past the plot's edge and is cut off.
            anchor = (
                1.0 if len(points) > 1 and x > x_mid else 0.0,
                0.0 if len(points) > 1 and y > y_mid else 1.0,
            )
            # In the window's text colour: pyqtgraph's default light grey is for a dark background.
            text = pg.TextItem(
                f"{row.type_name or row.label}{speed}",
                anchor=anchor,
                color=self.palette().color(QPalette.ColorRole.WindowText),
            )
            text.setPos(x, y)
            self.chart.addItem(text)
            self._chart_labels.append(text)
        self._chart_range = labelled_points_range(xs, ys)
        if not self._chart_behaviour.zoomed:
            self._fit_chart()

    def _fit_chart(self) -> None:
        set_view(self.chart, self._chart_range)

    def show_all_columns(self) -> None:
        """The whole comparison in a window of its own, every column wide enough for its figures."""
        if self.all_columns_dialog is None:
            dialog = QDialog(self)
            dialog.setWindowTitle("Quantization comparison")
            dialog.setObjectName("allColumnsDialog")
            layout = QVBoxLayout(dialog)
            self.all_columns_table = _comparison_table(Comparison.COLUMNS, stretch_label=False)
            self.all_columns_table.setObjectName("allColumnsTable")
            layout.addWidget(self.all_columns_table)
            note = _label(
                "Quality score = 100 × exp(−mean KLD against the base); the base against itself has "
                "KLD 0 and scores 100 by definition. n/a = not measured."
            )
            layout.addWidget(note)
            buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
            buttons.rejected.connect(dialog.close)
            layout.addWidget(buttons)
            self.all_columns_dialog = dialog
        dialog, table = self.all_columns_dialog, self.all_columns_table
        _fill_comparison_table(table, Comparison.COLUMNS, self._comparison.rows if self._comparison else ())
        show_table_whole(dialog, table, self)

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


def _collapsible(box: QGroupBox, body: QWidget) -> None:
    """A box that folds away (its title's tick) so the panel stays short on a small screen."""
    box.setCheckable(True)
    box.setChecked(True)
    box.toggled.connect(body.setVisible)


def _cell(name: str, value: Any) -> str:
    if value is None:
        return "n/a"
    if name == "file_bytes":
        return fmt_bytes(value)
    if name == "compression" and isinstance(value, float):
        return f"{value:.2f}×"
    if name == "quality_score" and isinstance(value, float):
        return f"{value:.1f}"
    if name == "delta_ppl_percent" and isinstance(value, float):
        return f"{value:+.2f}"
    if isinstance(value, float):
        return f"{value:.4f}" if name in ("mean_kld",) else f"{value:.2f}"
    return str(value)


def _comparison_table(columns: Sequence[tuple[str, str]], *, stretch_label: bool = True) -> QTableWidget:
    """A read-only table of comparison rows. Figures keep the width they need and their headers
    are never squeezed; the variant's name takes the rest (and is elided when it must be)."""
    table = QTableWidget(0, len(columns))
    table.setHorizontalHeaderLabels([title for _, title in columns])
    table.verticalHeader().setVisible(False)
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.setWordWrap(False)
    table.setTextElideMode(Qt.TextElideMode.ElideRight)
    header = table.horizontalHeader()
    header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
    if stretch_label:
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setMinimumSectionSize(40)
    for c, (name, title) in enumerate(columns):
        header_item = table.horizontalHeaderItem(c)
        if header_item is not None:
            header_item.setToolTip(_COLUMN_TIPS.get(name, title))
    return table


def _fill_comparison_table(
    table: QTableWidget, columns: Sequence[tuple[str, str]], rows: Sequence[ComparisonRow]
) -> None:
    table.setRowCount(len(rows))
    for r, row in enumerate(rows):
        tip = _row_tooltip(row)
        for c, (name, _title) in enumerate(columns):
            item = QTableWidgetItem(_cell(name, getattr(row, name)))
            item.setToolTip(tip)
            if name != "label":
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            table.setItem(r, c, item)


def _row_tooltip(row: ComparisonRow) -> str:
    """Every figure of a row, for the columns the panel leaves out."""
    lines = [f"<b>{row.label}</b>{' (base)' if row.is_base else ''}", row.path]
    for name, title in Comparison.COLUMNS[1:]:
        value = _cell(name, getattr(row, name))
        if name == "ppl" and row.ppl_uncertainty is not None and row.ppl is not None:
            value += f" ± {row.ppl_uncertainty:.4f}"
        lines.append(f"{title}: {value}")
    if row.is_base and row.mean_kld == 0.0:
        lines.append("The base against itself: KLD 0 and score 100 by definition.")
    return "<br>".join(lines)


def _queue_state_text(item: QueueItem) -> tuple[str, str]:
    """The state column of a queue row, and its tooltip (the whole reason, the output path)."""
    if item.state is QueueState.DONE and item.result is not None:
        return f"done · {fmt_bytes(item.result.output_bytes)}", item.result.output_path
    if item.state is QueueState.FAILED:
        return "failed", item.reason
    if item.state is QueueState.CANCELLED:
        return "cancelled", item.reason or "Cancelled before it started."
    return item.state.value, ""


_COLUMN_TIPS = {
    "label": "The file: its type, and where it came from when LlamaScope knows",
    "file_bytes": "File size",
    "mean_kld": "Mean KL divergence from the base, nats per token (0 = predicts exactly like the base)",
    "quality_score": "Quality score = 100 × exp(−mean KLD against the base); the base scores 100",
    "tg_tokens_per_s": "Generation speed, tokens per second (llama-bench style, on this machine)",
    "pp_tokens_per_s": "Prompt processing speed, tokens per second",
    "same_top_p_percent": "How often the file's most likely next token is the base's, in per cent",
    "delta_ppl_percent": "Perplexity against the base's, in per cent, over the same tokens",
}
