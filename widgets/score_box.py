"""The Performance panel's LocalScore box: run Mozilla LocalScore's tests, show the score and its parts."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.bench.localscore import (
    LOCALSCORE_TESTS,
    SOURCE,
    ScorePlan,
    ScoreRun,
    ShapeResult,
    formula_text,
    headline,
)
from app.common.formatting import fmt
from app.model.settings import LoadSettings

PlanSource = Callable[[], tuple[str | None, LoadSettings]]  # (selected model, Model Config's load settings)

_RUN_TIP = (
    "Run Mozilla LocalScore's nine prompt/generation tests on the selected model with LocalScore's own "
    "settings, and its score; nothing else runs meanwhile"
)


class ScoreBox(QWidget):
    """Quick or full run, progress, the score (or why there is none) and each test's figures."""

    score_requested = Signal(object)  # ScorePlan
    stop_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._plan_source: PlanSource | None = None
        self.quick = QCheckBox("Quick")
        self.quick.setToolTip("1 repetition per test (LocalScore's own default) instead of 3")
        self.run_button = QPushButton("Run LocalScore")
        self.run_button.setObjectName("scoreRun")
        self.run_button.setToolTip(_RUN_TIP)
        self.run_button.clicked.connect(self._on_run)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop; the tests that finished are kept, but there is no score")
        self.stop_button.setEnabled(False)
        self.stop_button.clicked.connect(self.stop_requested)
        buttons = QHBoxLayout()
        buttons.addWidget(self.quick)
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.stop_button)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.score_label = QLabel("No score yet.")
        self.score_label.setObjectName("scoreHeadline")
        self.score_label.setWordWrap(True)
        font = self.score_label.font()
        font.setPointSizeF(font.pointSizeF() * 1.3)
        font.setBold(True)
        self.score_label.setFont(font)
        self.parts_label = QLabel("")
        self.parts_label.setObjectName("scoreParts")
        self.parts_label.setWordWrap(True)
        self.parts_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.table = QTableWidget(0, 4)
        self.table.setObjectName("scoreTests")
        self.table.setHorizontalHeaderLabels(["test", "prompt t/s", "gen t/s", "TTFT ms"])
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.setMinimumHeight(110)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.score_label)
        layout.addWidget(self.parts_label)
        layout.addWidget(self.table)

    def set_plan_source(self, source: PlanSource) -> None:
        self._plan_source = source

    def set_busy(self, busy: bool, reason: str = "") -> None:
        """The engine is busy (`reason`: why, when another panel's work holds it) or free."""
        self.run_button.setEnabled(not busy)
        self.run_button.setToolTip(reason or _RUN_TIP)

    def build_plan(self) -> ScorePlan:
        """LocalScore on the model selected in Model Config, with its thread count."""
        model, settings = self._plan_source() if self._plan_source is not None else (None, None)
        if not model or settings is None:
            raise ValueError("Select a model in Model Config first.")
        if self.quick.isChecked():
            return ScorePlan.quick_plan(model, n_threads=settings.n_threads)
        return ScorePlan(model, n_threads=settings.n_threads)

    def _on_run(self) -> None:
        if not self.run_button.isEnabled():
            return
        try:
            plan = self.build_plan()
        except ValueError as exc:
            self.status.setText(f"✗ {exc}")
            return
        self.table.setRowCount(0)
        self.score_label.setText("Running…")
        self.parts_label.setText("")
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status.setText(f"Starting {len(LOCALSCORE_TESTS)} tests, {plan.repetitions} repetition(s) each…")
        self.stop_button.setEnabled(True)
        self.score_requested.emit(plan)

    # ---- results, on the GUI thread ------------------------------------------------------------
    def on_progress(self, done: int, total: int, what: str) -> None:
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)
        self.status.setText(what)

    def on_test(self, result: ShapeResult) -> None:
        row = self.table.rowCount()
        self.table.setRowCount(row + 1)
        name = result.shape.name + (" (capped)" if result.shape.capped else "")
        texts = (name, f"{result.prompt_tps:.1f}", f"{result.gen_tps:.1f}", f"{result.ttft_ms:.1f}")
        tip = (
            f"{result.repetitions} repetition(s): prompt {result.prompt_tps:.2f} ± "
            f"{result.prompt_tps_stddev:.2f} t/s, generation {result.gen_tps:.2f} ± "
            f"{result.gen_tps_stddev:.2f} t/s, TTFT {result.ttft_ms:.2f} ms\n"
            f"power {fmt(result.mean_power_watts, '.1f', ' W')}; t/s per watt: prompt "
            f"{fmt(result.prompt_tps_per_watt, '.2f')}, generation {fmt(result.gen_tps_per_watt, '.2f')}"
            + (f"\ncapped from LocalScore's {result.shape.requested_name}" if result.shape.capped else "")
        )
        for col, text in enumerate(texts):
            item = QTableWidgetItem(text)
            item.setToolTip(tip)
            self.table.setItem(row, col, item)

    def on_finished(self, outcome: tuple[ScoreRun, int | None]) -> None:
        run, run_id = outcome
        self.stop_button.setEnabled(False)
        self.show_run(run)
        stored = f", stored as run {run_id}" if run_id is not None else ""
        self.status.setText(("Stopped" if run.stopped else "Done") + stored)

    def show_run(self, run: ScoreRun) -> None:
        """The score in words (a LocalScore only when nothing was capped) and its three parts."""
        self.score_label.setText(headline(run))
        summary = run.summary
        if summary is None:
            self.parts_label.setText("")
            self.parts_label.setToolTip("")
            return
        watts = [s.gen_tps_per_watt for s in run.shapes if s.gen_tps_per_watt is not None]
        efficiency = (
            f"generation t/s per watt {min(watts):.2f}–{max(watts):.2f}"
            if watts
            else "t/s per watt: n/a (power not measured)"
        )
        self.parts_label.setText(
            f"prompt {summary.avg_prompt_tps:.2f} t/s · generation {summary.avg_gen_tps:.2f} t/s · "
            f"TTFT {summary.avg_ttft_ms:.2f} ms · {efficiency}"
        )
        self.parts_label.setToolTip(
            f"{formula_text(summary)}\nMeans over the tests are arithmetic, as in {SOURCE} "
            "(localscore.cpp getResultsSummary); LocalScore shows the score truncated to a whole number."
        )

    def on_failed(self, message: str) -> None:
        self.stop_button.setEnabled(False)
        self.status.setText(f"✗ {message}")
        self.score_label.setText("No score.")
