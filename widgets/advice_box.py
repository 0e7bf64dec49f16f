"""The Quantization panel's "Recommend a type" box: the advisor's form, its progress, and its answer.

It asks (`advise_requested`, an AdviceRequest; `cancel_requested`) and shows what ui.advice_bridge
reports: the candidates in a compact table (every figure in "Show table…"), a size x KLD chart with
the Pareto frontier marked, and the pick in plain words, or why nothing meets the constraints.
"Add to model list" hands the kept file of the pick to the model list (`add_model_requested`).
"""

from __future__ import annotations

import os
from typing import Any

import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.common.formatting import fmt_bytes
from app.model.model_info import ModelInfo
from app.quality.compare import SpeedProgress
from app.quality.eval_text import DEFAULT_TEXT_NAME
from app.quality.eval_types import ChunkProgress, EvalSettings
from app.quant.advisor import (
    ADVICE_COLUMNS,
    DEFAULT_TYPES,
    IMATRIX_TYPES,
    Advice,
    AdviceProgress,
    AdviceRequest,
    CandidateRow,
    candidate_cells,
    requantization_note,
)
from app.quant.plan import default_output_folder
from widgets.chart import ViewRange, install_chart_behaviour, labelled_points_range, set_view
from widgets.job_row import add_job_row, selectable_label, show_done, show_starting, show_stopped
from widgets.table_fit import show_table_whole

MIB = 1 << 20
_COMPACT = ("", "Type", "Size", "KLD", "tg t/s")
_FULL = ADVICE_COLUMNS

_RECOMMEND_TIP = (
    "Quantize the selected model to each candidate, measure its size, KL divergence against it "
    "and speed on this machine, and pick the best quality within the limits. Figures measured "
    "before on this machine are reused from the history."
)


def pick_in_words(row: CandidateRow) -> str:
    """ "Q4_K_M with the importance matrix: 79 MiB, KLD 0.021, tg 180 t/s"."""
    f = row.figures
    what = f"{f.type_name} with the importance matrix" if f.with_imatrix else f.type_name
    return (
        f"{what}: {fmt_bytes(f.file_bytes)}, KLD {f.mean_kld:.4f}, tg {f.tg_tokens_per_s:.0f} t/s "
        f"(needs {fmt_bytes(row.memory_bytes)} at the chosen context)"
    )


def _row_cells(advice: Advice, row: CandidateRow, full: bool) -> list[str]:
    f = row.figures
    mark = "→" if row is advice.pick else ("•" if row.on_frontier else "")
    if not full:
        return [mark, row.label, fmt_bytes(f.file_bytes), f"{f.mean_kld:.4f}", f"{f.tg_tokens_per_s:.0f}"]
    return candidate_cells(row, mark, frontier="yes")


def _row_tip(advice: Advice, row: CandidateRow) -> str:
    cells = _row_cells(advice, row, full=True)
    lines = [f"<b>{row.label}</b>" + (" (from the history)" if row.from_history else "")]
    lines += [f"{title}: {value or '—'}" for title, value in zip(_FULL[2:], cells[2:], strict=True)]
    return "<br>".join(lines)


def _fill(table: QTableWidget, advice: Advice, full: bool) -> None:
    rows = sorted(advice.rows, key=lambda r: r.figures.file_bytes)
    table.setRowCount(len(rows))
    for r, row in enumerate(rows):
        tip = _row_tip(advice, row)
        for c, text in enumerate(_row_cells(advice, row, full)):
            item = QTableWidgetItem(text)
            item.setToolTip(tip)
            if c >= 2 and not (full and c == len(_FULL) - 1):
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            table.setItem(r, c, item)


def _table(columns: tuple[str, ...]) -> QTableWidget:
    table = QTableWidget(0, len(columns))
    table.setHorizontalHeaderLabels(list(columns))
    table.verticalHeader().setVisible(False)
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.setWordWrap(False)
    table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
    return table


class AdviceBox(QWidget):
    advise_requested = Signal(object)  # AdviceRequest
    cancel_requested = Signal()
    add_model_requested = Signal(str)  # the kept file of the pick

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._source: str | None = None
        self._imatrix: str | None = None
        self._busy = False
        self._taken = ""
        self._advice: Advice | None = None
        self.table_dialog: QDialog | None = None
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        form = QFormLayout()
        self.memory_spin = QSpinBox()
        self.memory_spin.setObjectName("adviceMaxMemory")
        self.memory_spin.setRange(0, 16 * 1024 * 1024)
        self.memory_spin.setSingleStep(256)
        self.memory_spin.setSuffix(" MiB")
        self.memory_spin.setSpecialValueText("no limit")
        self.memory_spin.setToolTip(
            "The most memory the model may take: Model Config's estimate (weights, KV cache, compute "
            "buffers) at the context below. 1 MiB = 1,048,576 bytes."
        )
        self.tg_spin = QDoubleSpinBox()
        self.tg_spin.setObjectName("adviceMinTg")
        self.tg_spin.setRange(0, 100000)
        self.tg_spin.setDecimals(1)
        self.tg_spin.setSuffix(" t/s")
        self.tg_spin.setSpecialValueText("no floor")
        self.tg_spin.setToolTip("The slowest generation speed you accept, measured on this machine")
        limits = QHBoxLayout()
        limits.addWidget(self.memory_spin, 1)
        limits.addWidget(QLabel("tg ≥"))
        limits.addWidget(self.tg_spin, 1)
        self.ctx_spin = QSpinBox()
        self.ctx_spin.setRange(16, 1 << 20)
        self.ctx_spin.setSingleStep(512)
        self.ctx_spin.setValue(4096)
        self.ctx_spin.setToolTip("The context the memory estimate is made for (Model Config's n_ctx)")
        self.chunks_spin = QSpinBox()
        self.chunks_spin.setRange(1, 10000)
        self.chunks_spin.setValue(8)
        self.chunks_spin.setToolTip(
            "Chunks of 256 tokens of the evaluation text each candidate's KL divergence is measured on"
        )
        sizes = QHBoxLayout()
        sizes.addWidget(self.ctx_spin, 1)
        sizes.addWidget(QLabel("Chunks"))
        sizes.addWidget(self.chunks_spin, 1)
        self.text_edit = QLineEdit(DEFAULT_TEXT_NAME)
        self.text_edit.setObjectName("adviceText")
        self.text_edit.setToolTip(
            'Evaluation text: a UTF-8 text file, or "default" for the Python documentation that ships '
            "with Python; never the calibration text"
        )
        browse = QPushButton("…")
        browse.setToolTip("Choose an evaluation text file")
        browse.clicked.connect(self._on_browse_text)
        text_row = QHBoxLayout()
        text_row.addWidget(self.text_edit, 1)
        text_row.addWidget(browse)
        self.types_edit = QLineEdit()
        self.types_edit.setObjectName("adviceTypes")
        self.types_edit.setPlaceholderText("default: " + ", ".join(DEFAULT_TYPES[:4]) + "…")
        self.types_edit.setToolTip(
            f"Candidate types, separated by commas. Empty: {', '.join(DEFAULT_TYPES)}, and with a matrix "
            f"each also made with it, plus {', '.join(IMATRIX_TYPES)}"
        )
        self.imatrix_check = QCheckBox("With the importance matrix")
        self.imatrix_check.setObjectName("adviceUseImatrix")
        self.imatrix_check.setEnabled(False)
        self.imatrix_check.setToolTip("Choose or compute a matrix in the Importance matrix box first")
        # Above the form: what an advice on this source measures against, before Recommend is pressed.
        self.source_note = selectable_label("")
        self.source_note.setObjectName("adviceSourceNote")
        self.source_note.setVisible(False)
        layout.addWidget(self.source_note)
        form.addRow("Max memory", limits)
        form.addRow("Context", sizes)
        form.addRow("Text", text_row)
        form.addRow("Types", self.types_edit)
        form.addRow(self.imatrix_check)
        layout.addLayout(form)
        self.recommend_button = QPushButton("Recommend")
        self.recommend_button.setObjectName("recommendButton")
        self.recommend_button.setToolTip(_RECOMMEND_TIP)
        self.recommend_button.clicked.connect(self.request_advice)
        job = add_job_row(
            layout,
            self.recommend_button,
            prefix="advice",
            cancel_tip="Stop the advice; its temporary files are deleted",
        )
        self.progress, self.cancel_button, self.status = job.progress, job.cancel_button, job.status
        self.cancel_button.clicked.connect(self.cancel_requested)
        self.verdict = selectable_label("")
        self.verdict.setObjectName("adviceVerdict")
        font = self.verdict.font()
        font.setBold(True)
        self.verdict.setFont(font)
        self.verdict.setVisible(False)  # shown with an answer: an empty line would leave a gap
        layout.addWidget(self.verdict)
        self.table = _table(_COMPACT)
        self.table.setObjectName("adviceTable")
        self.table.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.table.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.table.setToolTip("→ the pick, • on the frontier; each row's tooltip has every figure")
        self.table.setVisible(False)
        layout.addWidget(self.table)
        self.chart = pg.PlotWidget(background=None)
        self.chart.setObjectName("adviceChart")
        self.chart.setMinimumHeight(150)
        # Capped, so that on a 768-pixel screen the verdict, the table and the chart show together.
        self.chart.setMaximumHeight(230)
        self.chart.setLabel("bottom", "file size (MiB)")
        self.chart.setLabel("left", "mean KLD")
        self.chart.getAxis("left").enableAutoSIPrefix(False)  # KLD in nats, not "(x0.001)"
        self.chart.setToolTip(
            "Each candidate's size against its KL divergence; the Pareto frontier (no other is smaller, "
            "closer to the base and faster at once) is joined by a line, the pick is the star"
        )
        self.others = pg.ScatterPlotItem(size=7, brush=pg.mkBrush(150, 150, 150), pen=None)
        self.frontier_line = pg.PlotDataItem(pen=pg.mkPen((40, 110, 200), width=1.5))
        self.frontier = pg.ScatterPlotItem(size=9, brush=pg.mkBrush(40, 110, 200), pen=None)
        self.pick_item = pg.ScatterPlotItem(size=16, symbol="star", brush=pg.mkBrush(230, 150, 0), pen=None)
        for item in (self.others, self.frontier_line, self.frontier, self.pick_item):
            self.chart.addItem(item)
        self._labels: list[pg.TextItem] = []
        self._range: ViewRange | None = None
        self._chart_behaviour = install_chart_behaviour(self.chart, on_reset=self._fit_chart)
        self.chart.setVisible(False)
        layout.addWidget(self.chart)
        self.show_table_button = QPushButton("Show table…")
        self.show_table_button.setToolTip("Every figure of every candidate, in a window")
        self.show_table_button.clicked.connect(self.show_table)
        self.add_button = QPushButton("Add to model list")
        self.add_button.setObjectName("adviceAddButton")
        self.add_button.setToolTip(
            "List the recommended file in Model Config (it is kept in the models folder)"
        )
        self.add_button.clicked.connect(self._on_add)
        buttons = QHBoxLayout()
        buttons.addWidget(self.show_table_button)
        buttons.addWidget(self.add_button)
        buttons.addStretch(1)
        layout.addLayout(buttons)
        self._update_buttons()

    # ---- state from outside ------------------------------------------------------------------
    def set_source(self, path: str | None, info: ModelInfo | None = None) -> None:
        """The model to advise on; `info` (its header, read by the inspector) says whether it is
        already quantized, which the box says before an advice measures against it."""
        self._source = path
        note = requantization_note(info) if info is not None and path is not None else None
        self.source_note.setText(f"⚠ {note}" if note else "")
        self.source_note.setVisible(note is not None)
        self._update_buttons()

    def set_imatrix(self, path: str | None) -> None:
        self._imatrix = path
        self.imatrix_check.setEnabled(path is not None)
        self.imatrix_check.setChecked(path is not None)
        self.imatrix_check.setToolTip(
            f"Also measure each type made with {os.path.basename(path)}"
            if path
            else "Choose or compute a matrix in the Importance matrix box first"
        )

    def set_busy(self, busy: bool) -> None:
        self._busy = busy
        self._update_buttons()

    def set_engine_taken(self, reason: str) -> None:
        """Other work holds the engine (`reason` says which), or not (""): the button is off and
        says why, rather than pressed into the engine's "busy" refusal."""
        self._taken = reason
        self._update_buttons()

    @property
    def advice(self) -> Advice | None:
        return self._advice

    def _update_buttons(self) -> None:
        self.recommend_button.setEnabled(self._source is not None and not self._busy and not self._taken)
        self.recommend_button.setToolTip(self._taken if self._taken and not self._busy else _RECOMMEND_TIP)
        self.cancel_button.setEnabled(self._busy)
        has = self._advice is not None
        self.show_table_button.setEnabled(has)
        kept = self._advice.kept_path if self._advice is not None else None
        self.add_button.setEnabled(kept is not None and not self._busy)

    # ---- requests ----------------------------------------------------------------------------
    def request_advice(self) -> None:
        if self._source is None:
            self.status.setText("✗ Select a model in Model Config first.")
            return
        names = tuple(
            n.strip().upper() for n in self.types_edit.text().replace(";", ",").split(",") if n.strip()
        )
        memory = self.memory_spin.value()
        tg = self.tg_spin.value()
        imatrix = self._imatrix if self.imatrix_check.isChecked() else None
        request = AdviceRequest(
            source=self._source,
            text_source=self.text_edit.text().strip() or DEFAULT_TEXT_NAME,
            imatrix=imatrix,
            types=names or None,
            max_memory_bytes=memory * MIB if memory else None,
            min_tg=tg or None,
            n_ctx=self.ctx_spin.value(),
            settings=EvalSettings(n_ctx=256, n_chunks=self.chunks_spin.value()),
            allow_requantize=True,  # the advice's files are temporary; the kept pick says its origin
            keep_folder=default_output_folder(self._source),
        )
        self.status.setText(f"Advising on {os.path.basename(self._source)}…")
        self.verdict.setText("")
        self.verdict.setVisible(False)
        show_starting(self.progress)
        self.advise_requested.emit(request)

    def _on_add(self) -> None:
        if self._advice is not None and self._advice.kept_path:
            self.add_model_requested.emit(self._advice.kept_path)
            self.status.setText(f"Added {os.path.basename(self._advice.kept_path)} to the model list.")

    # ---- results -----------------------------------------------------------------------------
    def on_progress(self, p: AdviceProgress) -> None:
        if p.total:
            self.progress.setRange(0, p.total)
            self.progress.setValue(max(p.index - 1, 0))
        self.progress.setFormat(f"{p.index} of {p.total} · {p.phase}" if p.index else p.phase)
        self.status.setText(p.text)

    def on_eval_progress(self, p: Any) -> None:
        if isinstance(p, ChunkProgress):
            self.progress.setFormat(f"{self.progress.value() + 1} of {self.progress.maximum()} · "
                                    f"{p.phase} chunk {p.chunk}/{p.n_chunks}")  # fmt: skip
        elif isinstance(p, SpeedProgress):
            self.progress.setFormat(f"{self.progress.value() + 1} of {self.progress.maximum()} · "
                                    f"speed {p.phase} {p.repetition}/{p.repetitions}")  # fmt: skip

    def on_failed(self, message: str) -> None:
        show_stopped(self.progress, cancelled=message.startswith("Cancelled"))
        self.status.setText(f"✗ {message}")

    def on_finished(self, advice: Advice) -> None:
        self._advice = advice
        show_done(self.progress)
        self.status.setText(
            f"{advice.measured} measured now, {advice.reused} from the history."
            + ("".join(f" {n}" for n in advice.notes))
        )
        self.verdict.setVisible(True)
        if advice.pick is not None:
            self.verdict.setText("Pick: " + pick_in_words(advice.pick))
            self.verdict.setToolTip(advice.verdict)
        else:
            self.verdict.setText(advice.verdict)
            self.verdict.setToolTip("")
        _fill(self.table, advice, full=False)
        header_h = self.table.horizontalHeader().sizeHint().height()
        rows = min(max(len(advice.rows), 1), 8)
        self.table.setFixedHeight(header_h + rows * self.table.verticalHeader().defaultSectionSize() + 4)
        self.table.setVisible(True)
        self._draw(advice)
        if self.table_dialog is not None and self.table_dialog.isVisible():
            self.show_table()
        self._update_buttons()

    def _draw(self, advice: Advice) -> None:
        for label in self._labels:
            self.chart.removeItem(label)
        self._labels = []
        pts = [(r.figures.file_bytes / MIB, r.figures.mean_kld, r) for r in advice.rows]
        self.chart.setVisible(bool(pts))
        if not pts:
            return
        self.others.setData(
            [x for x, _, r in pts if not r.on_frontier], [y for _, y, r in pts if not r.on_frontier]
        )
        front = sorted((x, y) for x, y, r in pts if r.on_frontier)
        self.frontier.setData([x for x, _ in front], [y for _, y in front])
        self.frontier_line.setData([x for x, _ in front], [y for _, y in front])
        pick = advice.pick
        self.pick_item.setData(
            [pick.figures.file_bytes / MIB] if pick else [], [pick.figures.mean_kld] if pick else []
        )
        xs, ys = [x for x, _, _ in pts], [y for _, y, _ in pts]
        x_mid, y_mid = (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2
        color = self.palette().color(QPalette.ColorRole.WindowText)
        x_span = (max(xs) - min(xs)) or 1.0
        for i, (x, y, row) in enumerate(pts):
            # Pointing into the plot, so that no label runs past its edge.
            anchor = (1.0 if len(pts) > 1 and x > x_mid else 0.0, 0.0 if len(pts) > 1 and y > y_mid else 1.0)
            # Two types of (nearly) one size, e.g. a type with and without the matrix: the label of
            # the higher KLD goes above its point, the lower one's below, so they do not overprint.
            twin = [q for j, q in enumerate(pts) if j != i and abs(q[0] - x) < 0.04 * x_span]
            if twin:
                anchor = (anchor[0], 1.0 if all(y >= q[1] for q in twin) else 0.0)
            text = pg.TextItem(row.label, anchor=anchor, color=color)
            text.setPos(x, y)
            self.chart.addItem(text)
            self._labels.append(text)
        self._range = labelled_points_range(xs, ys)
        if not self._chart_behaviour.zoomed:
            self._fit_chart()

    def _fit_chart(self) -> None:
        set_view(self.chart, self._range)

    def show_table(self) -> None:
        """Every figure of every candidate, in a window of its own."""
        if self._advice is None:
            return
        if self.table_dialog is None:
            dialog = QDialog(self)
            dialog.setWindowTitle("Quantization advice")
            dialog.setObjectName("adviceTableDialog")
            dlayout = QVBoxLayout(dialog)
            self.full_table = _table(_FULL)
            self.full_table.setObjectName("adviceFullTable")
            dlayout.addWidget(self.full_table)
            self.dialog_verdict = selectable_label("")
            dlayout.addWidget(self.dialog_verdict)
            buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
            buttons.rejected.connect(dialog.close)
            dlayout.addWidget(buttons)
            self.table_dialog = dialog
        dialog, table = self.table_dialog, self.full_table
        _fill(table, self._advice, full=True)
        self.dialog_verdict.setText(
            self._advice.verdict + "\n→ the pick · yes/• on the size × KLD × tg frontier."
        )
        show_table_whole(dialog, table, self)

    def _on_browse_text(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Evaluation text", "", "Text (*.txt *.md *.raw);;All files (*)"
        )
        if path:
            self.text_edit.setText(path)


__all__ = ["AdviceBox", "pick_in_words"]
